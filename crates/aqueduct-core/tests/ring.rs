use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aqueduct_core::{Error, MessageHeader, QueueConfig, TaskQueue};

fn queue(capacity: u64, slot_bytes: u64) -> TaskQueue {
    TaskQueue::create(QueueConfig {
        priorities: 1,
        capacity,
        slot_bytes,
        max_messages: 0,
    })
    .expect("queue")
}

/// The next message of a queue nothing scribbled on.
fn pop(q: &TaskQueue) -> Option<aqueduct_core::Message> {
    q.try_pop().expect("an intact queue")
}

fn header(key: u64) -> MessageHeader {
    MessageHeader {
        key,
        ..Default::default()
    }
}

#[test]
fn messages_come_out_in_order_with_their_bytes() {
    let q = queue(16, 64);
    for key in 0..5u64 {
        q.push(&header(key), format!("payload-{key}").as_bytes())
            .expect("push");
    }
    for key in 0..5u64 {
        let m = pop(&q).expect("message");
        assert_eq!(m.header.key, key);
        assert_eq!(m.payload(), format!("payload-{key}").as_bytes());
    }
    assert!(pop(&q).is_none());
}

#[test]
fn variable_size_messages_span_slots_and_wrap_around() {
    let q = queue(16, 32);
    // Sizes chosen so messages straddle the end of the data area many times.
    for round in 0..200u64 {
        let size = (round as usize * 37) % (q.max_payload() + 1);
        let payload: Vec<u8> = (0..size).map(|i| (i as u64 ^ round) as u8).collect();
        q.push(&header(round), &payload).expect("push");
        let m = pop(&q).expect("pop");
        assert_eq!(m.header.key, round);
        assert_eq!(m.payload(), payload.as_slice());
    }
}

#[test]
fn a_full_ring_says_full_and_recovers() {
    let q = queue(4, 64);
    let mut pushed = 0;
    loop {
        match q.push(&header(pushed), b"x") {
            Ok(()) => pushed += 1,
            Err(Error::Full) => break,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(pushed, 4);
    assert_eq!(pop(&q).expect("pop").header.key, 0);
    q.push(&header(99), b"y").expect("room after a pop");
}

#[test]
fn a_message_larger_than_half_the_ring_is_too_large() {
    let q = queue(8, 64);
    let big = vec![0u8; q.max_payload() + 1];
    match q.push(&header(1), &big) {
        Err(Error::TooLarge { size, limit }) => {
            assert_eq!(size, big.len());
            assert_eq!(limit, q.max_payload());
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    q.push(&header(2), &vec![7u8; q.max_payload()])
        .expect("largest allowed fits");
}

#[test]
fn max_messages_bounds_the_queue() {
    let q = TaskQueue::create(QueueConfig {
        priorities: 2,
        capacity: 64,
        slot_bytes: 64,
        max_messages: 3,
    })
    .expect("queue");
    for k in 0..3 {
        q.push(&header(k), b"a").expect("push");
    }
    assert!(matches!(q.push(&header(3), b"a"), Err(Error::Full)));
    pop(&q).expect("pop");
    q.push(&header(4), b"a").expect("room again");
    assert_eq!(q.len(), 3);
}

#[test]
fn higher_priority_is_served_first() {
    let q = TaskQueue::create(QueueConfig {
        priorities: 3,
        ..QueueConfig::default()
    })
    .expect("queue");
    for (key, priority) in [(1, 0), (2, 2), (3, 1), (4, 2), (5, 9)] {
        let h = MessageHeader {
            key,
            priority,
            ..Default::default()
        };
        q.push(&h, b"").expect("push");
    }
    let order: Vec<u64> = std::iter::from_fn(|| pop(&q).map(|m| m.header.key)).collect();
    // priority 9 is clamped to the top level (2)
    assert_eq!(order, vec![2, 4, 5, 3, 1]);
}

#[test]
fn closed_queue_refuses_pushes() {
    let q = queue(8, 64);
    q.close();
    assert!(matches!(q.push(&header(1), b"a"), Err(Error::Closed)));
}

#[test]
fn many_producers_and_consumers_lose_and_duplicate_nothing() {
    const PRODUCERS: u64 = 4;
    const PER_PRODUCER: u64 = 20_000;
    let q = Arc::new(queue(64, 32));
    let taken = Arc::new(AtomicU64::new(0));
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let q = Arc::clone(&q);
            let taken = Arc::clone(&taken);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while taken.load(Ordering::Relaxed) < PRODUCERS * PER_PRODUCER {
                    match pop(&q) {
                        Some(m) => {
                            // payload repeats the key's low byte `key % 50` times
                            let k = m.header.key;
                            assert_eq!(m.payload().len() as u64, k % 50);
                            assert!(m.payload().iter().all(|&b| b == k as u8));
                            seen.push(k);
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                        None => std::thread::yield_now(),
                    }
                }
                seen
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    let key = p * PER_PRODUCER + i;
                    let payload = vec![key as u8; (key % 50) as usize];
                    while q.push(&header(key), &payload).is_err() {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().expect("producer");
    }
    let mut all: Vec<u64> = consumers
        .into_iter()
        .flat_map(|c| c.join().expect("consumer"))
        .collect();
    all.sort_unstable();
    let expected: Vec<u64> = (0..PRODUCERS * PER_PRODUCER).collect();
    assert_eq!(all.len(), expected.len());
    assert_eq!(all, expected);
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_message_abandoned_by_a_dead_producer_can_be_skipped() {
    let q = queue(64, 64);
    q.push(&header(1), b"before").expect("push");
    assert_eq!(pop(&q).expect("first").header.key, 1);
    // a producer dies after claiming room, before publishing
    q.abandon_push(150).expect("claim");
    q.push(&header(2), b"after").expect("push");
    q.push(&header(3), &[7u8; 300]).expect("push");
    assert!(
        pop(&q).is_none(),
        "the queue is stuck behind the abandoned message"
    );
    let stuck = q.unpublished_heads();
    assert_eq!(stuck.len(), 1);
    let (ring, head) = stuck[0];
    assert!(q.skip_abandoned(ring, head));
    assert!(!q.skip_abandoned(ring, head), "only once");
    assert_eq!(pop(&q).expect("after").header.key, 2);
    assert_eq!(pop(&q).expect("big").payload(), &[7u8; 300][..]);
    assert!(pop(&q).is_none());
    assert_eq!(q.len(), 0);
    // the ring keeps working across laps afterwards
    for k in 10..200 {
        q.push(&header(k), &[1u8; 40]).expect("push");
        assert_eq!(pop(&q).expect("pop").header.key, k);
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn an_abandoned_last_message_is_skipped_up_to_the_tail() {
    let q = queue(16, 64);
    q.abandon_push(10).expect("claim");
    let (ring, head) = q.unpublished_heads()[0];
    assert!(q.skip_abandoned(ring, head));
    assert!(pop(&q).is_none());
    q.push(&header(5), b"x").expect("push");
    assert_eq!(pop(&q).expect("pop").header.key, 5);
}
