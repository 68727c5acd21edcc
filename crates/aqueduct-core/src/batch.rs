//! Batch assembly for a step's worker.
//!
//! The rules users rely on (same as upstream aqueduct):
//! 1. block until the first task arrives;
//! 2. take whatever else is already queued, up to `batch_size`;
//! 3. only when `batch_timeout > 0`, wait for more until `first + batch_timeout`.
//!
//! Tasks whose deadline has passed are dropped here, before the handler sees
//! them, and counted so the caller can report them.

use std::time::Duration;

use crate::control::Control;
use crate::error::Result;
use crate::notify::monotonic_ns;
use crate::queue::{Message, TaskQueue, Wait};

/// How a step batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchPolicy {
    /// Most tasks per batch, >= 1.
    pub size: usize,
    /// How long to keep collecting after the first task; zero = never wait.
    pub timeout: Duration,
}

/// What one call to [`BatchAssembler::next_batch`] produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// Live tasks, in queue order (higher priority first).
    pub messages: Vec<Message>,
    /// Tasks taken from the queue but dropped: their deadline passed or
    /// their caller cancelled them.
    pub expired: Vec<Message>,
    /// The queue is closed and drained: the worker should exit.
    pub closed: bool,
}

/// Where a worker records the tasks it takes, learns of cancelled ones, and
/// records its step's queue and batch metrics.
#[derive(Debug, Clone, Copy)]
pub struct Claims<'a> {
    pub control: &'a Control,
    pub slot: usize,
    pub step: usize,
}

/// Collects batches from one queue according to a [`BatchPolicy`].
#[derive(Debug)]
pub struct BatchAssembler {
    policy: BatchPolicy,
}

impl BatchAssembler {
    pub fn new(policy: BatchPolicy) -> Self {
        BatchAssembler {
            policy: BatchPolicy {
                size: policy.size.max(1),
                timeout: policy.timeout,
            },
        }
    }

    /// Takes the next batch from `queue`. Waits for the first task until
    /// `idle_deadline_ns` (then returns an empty batch, so the caller can do
    /// housekeeping); `interrupt` is polled while asleep and, when it returns
    /// true, ends the wait early with what was collected so far.
    /// `Err(Corrupt)` when the queue's memory was scribbled on: the worker
    /// must not go on reading it.
    pub fn next_batch(
        &self,
        queue: &TaskQueue,
        idle_deadline_ns: Option<u64>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<Batch> {
        self.next_batch_claimed(queue, idle_deadline_ns, interrupt, None)
    }

    /// As [`BatchAssembler::next_batch`], recording every task taken in the
    /// claim slot (cleared first: the previous batch is done) and dropping
    /// cancelled tasks along with expired ones.
    pub fn next_batch_claimed(
        &self,
        queue: &TaskQueue,
        idle_deadline_ns: Option<u64>,
        interrupt: &mut dyn FnMut() -> bool,
        claims: Option<Claims<'_>>,
    ) -> Result<Batch> {
        if let Some(c) = claims {
            c.control.clear_claims(c.slot);
        }
        let mut batch = Batch::default();
        // 1. the first live task
        loop {
            match queue.wait_ready(idle_deadline_ns, interrupt) {
                Wait::Ready => {}
                Wait::Closed => {
                    batch.closed = true;
                    return Ok(batch);
                }
                Wait::Timeout | Wait::Interrupted => return Ok(batch),
            }
            self.take_ready(queue, &mut batch, claims)?;
            if !batch.messages.is_empty() {
                break;
            }
        }
        let first_ns = monotonic_ns();
        // 2. was taken by take_ready; 3. wait for the rest while allowed
        if self.policy.timeout.is_zero() {
            Self::record_batch(first_ns, claims);
            return Ok(batch);
        }
        let deadline = monotonic_ns() + self.policy.timeout.as_nanos() as u64;
        while batch.messages.len() < self.policy.size {
            match queue.wait_ready(Some(deadline), interrupt) {
                Wait::Ready => self.take_ready(queue, &mut batch, claims)?,
                Wait::Closed | Wait::Timeout | Wait::Interrupted => break,
            }
        }
        Self::record_batch(first_ns, claims);
        Ok(batch)
    }

    /// The next batch of what is queued now, without waiting (empty when
    /// nothing is): a worker that just finished a batch takes the next one
    /// as it is at that moment. Claims are recorded as in
    /// [`BatchAssembler::next_batch_claimed`].
    pub fn next_ready(&self, queue: &TaskQueue, claims: Option<Claims<'_>>) -> Result<Batch> {
        if let Some(c) = claims {
            c.control.clear_claims(c.slot);
        }
        let mut batch = Batch::default();
        let first_ns = monotonic_ns();
        self.take_ready(queue, &mut batch, claims)?;
        if !batch.messages.is_empty() {
            Self::record_batch(first_ns, claims);
        }
        Ok(batch)
    }

    /// Up to `limit` more tasks, without clearing the claim slot: a
    /// continuous batch admits them beside the tasks it holds (whose claims
    /// its caller recorded). Takes what is queued now; then, while fewer
    /// than `hoped` came, waits for more until `until_ns` (None: never
    /// waits), polling `interrupt`.
    pub fn admit(
        &self,
        queue: &TaskQueue,
        limit: usize,
        hoped: usize,
        until_ns: Option<u64>,
        interrupt: &mut dyn FnMut() -> bool,
        claims: Option<Claims<'_>>,
    ) -> Result<Batch> {
        let limit = limit.min(self.policy.size);
        let mut batch = Batch::default();
        self.take_up_to(queue, &mut batch, limit, claims)?;
        if let Some(until) = until_ns {
            while batch.messages.len() < hoped.min(limit) {
                match queue.wait_ready(Some(until), interrupt) {
                    Wait::Ready => self.take_up_to(queue, &mut batch, limit, claims)?,
                    Wait::Closed | Wait::Timeout | Wait::Interrupted => break,
                }
            }
        }
        Ok(batch)
    }

    fn record_batch(first_ns: u64, claims: Option<Claims<'_>>) {
        if let Some(m) = claims.and_then(|c| c.control.metrics(c.step)) {
            m.batch_us
                .record(monotonic_ns().saturating_sub(first_ns) / 1000);
        }
    }

    /// Moves ready messages into the batch until it is full or none is ready.
    fn take_ready(
        &self,
        queue: &TaskQueue,
        batch: &mut Batch,
        claims: Option<Claims<'_>>,
    ) -> Result<()> {
        self.take_up_to(queue, batch, self.policy.size, claims)
    }

    /// Moves ready messages into the batch until it holds `limit` or none
    /// is ready; cancelled and expired ones go to `batch.expired`.
    fn take_up_to(
        &self,
        queue: &TaskQueue,
        batch: &mut Batch,
        limit: usize,
        claims: Option<Claims<'_>>,
    ) -> Result<()> {
        let now = monotonic_ns();
        let metrics = claims.and_then(|c| c.control.metrics(c.step));
        while batch.messages.len() < limit {
            let Some(m) = queue.try_pop()? else { break };
            let cancelled = claims.is_some_and(|c| c.control.is_cancelled(m.header.key));
            if cancelled || m.header.is_expired(now) {
                if let Some(metrics) = metrics {
                    let counter = if cancelled {
                        &metrics.cancelled
                    } else {
                        &metrics.expired
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                batch.expired.push(m);
                continue;
            }
            if let Some(c) = claims {
                c.control.claim(c.slot, m.header.key);
            }
            if let Some(metrics) = metrics {
                metrics
                    .transfer_us
                    .record(now.saturating_sub(m.header.enqueued_ns) / 1000);
            }
            batch.messages.push(m);
        }
        Ok(())
    }
}
