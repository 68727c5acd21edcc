//! Model checks of the ring protocol: loom runs every interleaving (within
//! its bounds) of the threads below on the very push/pop/recovery code the
//! shared-memory rings run. `make loom` (or
//! `RUSTFLAGS="--cfg loom" cargo test -p aqueduct-core --release --all-features --test loom_ring`).
#![cfg(loom)]

use std::sync::Arc;

use aqueduct_core::ring::model::ModelSlots;
use aqueduct_core::ring::{Ring, RingLayout};
use loom::thread;

/// A ring of `capacity` slots of 16 bytes: a message of up to 8 bytes takes
/// one slot, up to 24 bytes two.
fn ring(capacity: u64) -> Arc<Ring<ModelSlots>> {
    let layout = RingLayout::new(capacity, 16).expect("layout");
    let ring = Ring::over(ModelSlots::new(layout), layout);
    ring.reset();
    Arc::new(ring)
}

/// Pops until `count` messages came, yielding while none is ready.
fn pop_all(ring: &Ring<ModelSlots>, count: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < count {
        match ring.pop().expect("an intact ring") {
            Some(message) => got.push(message),
            None => thread::yield_now(),
        }
    }
    got
}

/// Pushes, yielding while the ring is full.
fn push(ring: &Ring<ModelSlots>, message: &[u8]) {
    loop {
        match ring.push(&[message]) {
            Ok(()) => return,
            Err(aqueduct_core::Error::Full) => thread::yield_now(),
            Err(other) => panic!("push failed: {other}"),
        }
    }
}

#[test]
fn concurrent_producers_of_different_sizes_lose_and_mix_nothing() {
    loom::model(|| {
        let ring = ring(4);
        let small = {
            let ring = ring.clone();
            thread::spawn(move || push(&ring, &[1; 4])) // one slot
        };
        let large = {
            let ring = ring.clone();
            thread::spawn(move || push(&ring, &[2; 12])) // two slots
        };
        let mut got = pop_all(&ring, 2);
        small.join().expect("small producer");
        large.join().expect("large producer");
        got.sort();
        assert_eq!(got, vec![vec![1; 4], vec![2; 12]]);
        assert!(ring.pop().expect("an intact ring").is_none());
    });
}

#[test]
fn a_full_ring_wraps_around_in_order() {
    loom::model(|| {
        let ring = ring(2); // one two-slot message fills it
        let producer = {
            let ring = ring.clone();
            thread::spawn(move || {
                push(&ring, &[1; 3]);
                push(&ring, &[2; 3]);
                push(&ring, &[3; 3]); // needs a slot the consumer frees
            })
        };
        let got = pop_all(&ring, 3);
        producer.join().expect("producer");
        assert_eq!(got, vec![vec![1; 3], vec![2; 3], vec![3; 3]]);
    });
}

#[test]
fn two_consumers_take_each_message_once() {
    loom::model(|| {
        let ring = ring(4);
        push(&ring, &[1; 4]);
        push(&ring, &[2; 12]);
        let other = {
            let ring = ring.clone();
            thread::spawn(move || ring.pop().expect("an intact ring"))
        };
        let mine = ring.pop().expect("an intact ring");
        let theirs = other.join().expect("consumer");
        let mut got: Vec<Vec<u8>> = [mine, theirs].into_iter().flatten().collect();
        got.extend(ring.pop().expect("an intact ring"));
        got.sort();
        assert_eq!(got, vec![vec![1; 4], vec![2; 12]]);
    });
}

/// A producer died between claiming its slot and publishing it. Recovery
/// (what `Flow`'s monitor does once the head stayed unpublished for two
/// ticks, long after any live producer would have published) fills it with
/// a message to skip, while a consumer and a later producer run: nothing is
/// lost, nothing wedges, and the ring serves the next lap.
#[cfg(feature = "fault-injection")]
#[test]
fn a_message_abandoned_mid_push_is_skipped_while_others_run() {
    loom::model(|| {
        let ring = ring(4);
        ring.claim_and_abandon(4).expect("claim"); // the dead producer's slot 0
        let head = ring.unpublished_head().expect("an unpublished head");
        let producer = {
            let ring = ring.clone();
            thread::spawn(move || push(&ring, &[7; 4]))
        };
        let healer = {
            let ring = ring.clone();
            thread::spawn(move || assert!(ring.fill_abandoned(head, &[0xFF])))
        };
        healer.join().expect("healer");
        let got = pop_all(&ring, 2);
        producer.join().expect("producer");
        assert_eq!(
            got[0][0], 0xFF,
            "the filler comes first, in the dead producer's place"
        );
        assert_eq!(got[1], vec![7; 4]);
        for lap in 0..2u8 {
            push(&ring, &[lap; 12]);
            assert_eq!(ring.pop().expect("an intact ring"), Some(vec![lap; 12]));
        }
    });
}
