//! The data path across real process boundaries: a child (this test binary
//! re-executed) maps queues from inherited fds.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use aqueduct_core::{
    monotonic_ns, BatchAssembler, BatchPolicy, EventFd, MessageHeader, QueueConfig, TaskQueue,
};
use common::{child_role, eventually, spawn_child, wait_child};

const MESSAGES: u64 = 10_000;

fn open_inherited(fd: i32) -> TaskQueue {
    // SAFETY: the parent passed this fd for the child to own.
    TaskQueue::open(unsafe { OwnedFd::from_raw_fd(fd) }).expect("open inherited queue")
}

/// Child side: echo every message from queue 0 into queue 1 (blocking on the
/// futex between bursts), ringing the eventfd doorbell; exit when closed.
#[test]
fn child_echo() {
    let Some((role, fds)) = child_role() else {
        return;
    };
    assert_eq!(role, "echo");
    let input = open_inherited(fds[0]);
    let output = open_inherited(fds[1]);
    // SAFETY: inherited eventfd, owned by the child from here on.
    let bell = EventFd::from_fd(unsafe { OwnedFd::from_raw_fd(fds[2]) });
    let assembler = BatchAssembler::new(BatchPolicy {
        size: 16,
        timeout: Duration::ZERO,
        objective: None,
    });
    loop {
        let batch = assembler
            .next_batch(&input, Some(monotonic_ns() + 10_000_000_000), &mut || false)
            .expect("a batch");
        if batch.closed {
            break;
        }
        for m in &batch.messages {
            let mut payload = m.payload().to_vec();
            payload.reverse();
            while output.push(&m.header, &payload).is_err() {
                output.notify(Some(&bell));
                output.wait_space(Some(monotonic_ns() + 1_000_000_000), &mut || false);
            }
        }
        input.released(&[]);
        output.notify(Some(&bell));
    }
}

#[test]
fn messages_cross_to_a_child_process_and_back() {
    if child_role().is_some() {
        return;
    }
    let input = TaskQueue::create(QueueConfig {
        capacity: 256,
        ..QueueConfig::default()
    })
    .expect("queue");
    let output = TaskQueue::create(QueueConfig {
        capacity: 256,
        ..QueueConfig::default()
    })
    .expect("queue");
    let bell = EventFd::new().expect("eventfd");
    let bell_fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&bell));
    let child = spawn_child(
        "child_echo",
        "echo",
        &[input.raw_fd(), output.raw_fd(), bell_fd],
    );

    let mut received = Vec::new();
    let mut next = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while received.len() < MESSAGES as usize {
        assert!(std::time::Instant::now() < deadline, "echo child stalled");
        // Push a burst, as many as fit.
        while next < MESSAGES {
            let payload = next.to_le_bytes();
            let h = MessageHeader {
                key: next,
                ..Default::default()
            };
            if input.push(&h, &payload).is_err() {
                break;
            }
            next += 1;
        }
        input.notify(None);
        // Drain results; sleep on the doorbell when nothing is ready.
        while let Some(m) = output.try_pop().expect("an intact queue") {
            let mut expected = m.header.key.to_le_bytes();
            expected.reverse();
            assert_eq!(m.payload(), expected);
            received.push(m.header.key);
        }
        output.released(&[]);
        if !output.arm_doorbell() && next == MESSAGES {
            bell.wait_readable(Duration::from_millis(100));
            bell.drain();
        }
    }
    input.close();
    let status = wait_child(child, 10);
    assert!(status.success(), "child failed: {status}");
    received.sort_unstable();
    assert_eq!(received, (0..MESSAGES).collect::<Vec<_>>());
}

/// Child side: sleep on the queue (futex) with a long deadline and report how
/// the wait ended through the exit code.
#[test]
fn child_sleeper() {
    let Some((role, fds)) = child_role() else {
        return;
    };
    assert_eq!(role, "sleeper");
    let q = open_inherited(fds[0]);
    let a = BatchAssembler::new(BatchPolicy {
        size: 1,
        timeout: Duration::ZERO,
        objective: None,
    });
    let batch = a
        .next_batch(&q, Some(monotonic_ns() + 30_000_000_000), &mut || false)
        .expect("a batch");
    let code = match batch.messages.first() {
        Some(m) if m.payload() == b"wake" => 0,
        _ => 3,
    };
    std::process::exit(code);
}

#[test]
fn a_push_wakes_a_consumer_asleep_in_another_process() {
    if child_role().is_some() {
        return;
    }
    let q = TaskQueue::create(QueueConfig::default()).expect("queue");
    let child = spawn_child("child_sleeper", "sleeper", &[q.raw_fd()]);
    // past its spin phase, asleep on the futex (the count is in the segment)
    eventually(10, "the child asleep on the queue", || q.sleepers().0 > 0);
    let started = std::time::Instant::now();
    q.push(&MessageHeader::default(), b"wake").expect("push");
    q.notify(None);
    let status = wait_child(child, 10);
    assert!(status.success(), "child exit {status}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
