//! Batch assembly for a step's worker.
//!
//! The rules users rely on (same as upstream aqueduct):
//! 1. block until the first task arrives;
//! 2. take whatever else is already queued, up to `batch_size`;
//! 3. only when `batch_timeout > 0`, wait for more until `first + batch_timeout`.
//!
//! With a latency objective (a time from when a task entered its flow to
//! when it should leave this step) and once the step's cost is learned
//! ([`crate::cost`]), step 3 waits instead for as long as the oldest task
//! of the batch can still make its objective with one more task in the
//! batch (and no longer than `batch_timeout` when that is set), and a task
//! that cannot make its objective even alone is not handled: it goes back
//! to its caller as late (the caller is told it was rejected).
//!
//! Tasks whose deadline has passed are dropped here, before the handler sees
//! them, and counted so the caller can report them.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::control::Control;
use crate::cost::{Cost, CostModel};
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
    /// How long after entering its flow a task should be done with this
    /// step (None: no objective, upstream's rules).
    pub objective: Option<Duration>,
}

/// What one call to [`BatchAssembler::next_batch`] produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// Live tasks, in queue order (higher priority first).
    pub messages: Vec<Message>,
    /// Tasks taken from the queue but dropped: their deadline passed or
    /// their caller cancelled them.
    pub expired: Vec<Message>,
    /// Tasks taken from the queue that cannot make their latency objective
    /// any more: to be rejected, not handled.
    pub late: Vec<Message>,
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
    /// What this worker's batches cost, learned from their handle times.
    cost: Mutex<CostModel>,
    /// How far apart the tasks it takes were queued, on average.
    arrivals: Mutex<Arrivals>,
}

/// The gap between the tasks a worker takes, as they were queued: a moving
/// average (each gap weighs [`Arrivals::WEIGHT`]).
#[derive(Debug, Default)]
struct Arrivals {
    last_ns: u64,
    gap_ns: f64,
}

impl Arrivals {
    const WEIGHT: f64 = 0.2;

    fn queued(&mut self, at_ns: u64) {
        if self.last_ns != 0 && at_ns > self.last_ns {
            let gap = (at_ns - self.last_ns) as f64;
            self.gap_ns = if self.gap_ns == 0.0 {
                gap
            } else {
                self.gap_ns + Self::WEIGHT * (gap - self.gap_ns)
            };
        }
        self.last_ns = self.last_ns.max(at_ns);
    }
}

impl BatchAssembler {
    pub fn new(policy: BatchPolicy) -> Self {
        BatchAssembler {
            policy: BatchPolicy {
                size: policy.size.max(1),
                timeout: policy.timeout,
                objective: policy.objective,
            },
            cost: Mutex::default(),
            arrivals: Mutex::default(),
        }
    }

    /// A batch of `tasks` took `took_ns` to handle (learned only by a step
    /// with an objective: no other uses it); the cost learned so far, as
    /// admission reads it ([`CostModel::admission`]).
    pub fn observe(&self, tasks: usize, took_ns: u64) -> Option<Cost> {
        self.policy.objective?;
        let mut cost = self.cost.lock().unwrap_or_else(PoisonError::into_inner);
        cost.observe(tasks, took_ns);
        cost.admission()
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// What a batch costs, as learned so far (None before it is).
    pub fn cost(&self) -> Option<Cost> {
        self.cost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cost()
    }

    /// The objective and the learned cost, when the step has both.
    fn scheduled(&self) -> Option<(u64, Cost)> {
        let objective = self.policy.objective?;
        Some((objective.as_nanos() as u64, self.cost()?))
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
            if !batch.late.is_empty() {
                return Ok(batch); // rejected at once, not when more comes
            }
        }
        let first_ns = monotonic_ns();
        // 2. was taken by take_ready; 3. wait for the rest while allowed
        if let Some((objective, cost)) = self.scheduled() {
            self.fill_for_objective(
                queue, &mut batch, first_ns, objective, cost, interrupt, claims,
            )?;
            Self::record_batch(first_ns, claims);
            return Ok(batch);
        }
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

    /// Step 3 under a latency objective: when tasks come faster than the
    /// batch in hand would handle them ([`KEEP_UP`]; a lone task: faster
    /// than it is handled alone), waits for more while the oldest task of the batch can
    /// still make its objective with one more task in the batch and one
    /// more is likely to come by then (for at most [`PATIENCE`] of the
    /// tasks' usual gaps since the last came), never past `batch_timeout`
    /// when that is set.
    #[allow(clippy::too_many_arguments)]
    fn fill_for_objective(
        &self,
        queue: &TaskQueue,
        batch: &mut Batch,
        first_ns: u64,
        objective: u64,
        cost: Cost,
        interrupt: &mut dyn FnMut() -> bool,
        claims: Option<Claims<'_>>,
    ) -> Result<()> {
        let cap = (!self.policy.timeout.is_zero())
            .then(|| first_ns + self.policy.timeout.as_nanos() as u64);
        // when the last task came, and how many the batch had by then: a
        // wake-up that brings none keeps the patience it had
        let (mut came_ns, mut had) = (first_ns, 0);
        while !batch.messages.is_empty() && batch.messages.len() < self.policy.size {
            let gap = self
                .arrivals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .gap_ns as u64;
            if batch.messages.len() > had {
                (came_ns, had) = (monotonic_ns(), batch.messages.len());
            }
            let oldest = batch
                .messages
                .iter()
                .map(|m| m.header.entered_ns)
                .min()
                .unwrap_or(first_ns);
            let due = oldest.saturating_add(objective);
            let mut until = due.saturating_sub(cost.of(batch.messages.len() + 1));
            if let Some(cap) = cap {
                until = until.min(cap);
            }
            // tasks coming slower than one is handled alone: the worker keeps
            // up without waiting (and a caller waiting for its answer before
            // it sends the next is not kept waiting for itself)
            if gap >= cost.of(1) || came_ns.saturating_add(gap) >= until {
                break; // waiting would be in vain, or make the oldest late
            }
            // a batch that handles tasks faster than they come, with room to
            // spare, goes at once: waiting for a fuller one would only add
            // latency (the queue fills while it runs, so batches grow with
            // the load)
            let n = batch.messages.len() as u128;
            if u128::from(cost.of(n as usize)) * KEEP_UP.0 <= n * u128::from(gap) * KEEP_UP.1 {
                break;
            }
            until = until.min(came_ns.saturating_add(gap.saturating_mul(PATIENCE)));
            if monotonic_ns() >= until {
                break;
            }
            match queue.wait_ready(Some(until), interrupt) {
                Wait::Ready => self.take_ready(queue, batch, claims)?,
                Wait::Closed | Wait::Timeout | Wait::Interrupted => break,
            }
        }
        Ok(())
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
        // a task that cannot be done by its objective even alone is late
        let late_before = self
            .scheduled()
            .map(|(objective, cost)| (now + cost.of(1)).saturating_sub(objective));
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
            if late_before.is_some_and(|before| m.header.entered_ns < before) {
                if let Some(metrics) = metrics {
                    metrics
                        .rejected
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                batch.late.push(m);
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
            if self.policy.objective.is_some() {
                self.arrivals
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .queued(m.header.enqueued_ns);
            }
            batch.messages.push(m);
        }
        Ok(())
    }
}

/// A batch of n goes without waiting once it handles tasks this many
/// times (numerator, denominator) as fast as they come: n / t(n) >= 5/4 of
/// the arrival rate.
pub const KEEP_UP: (u128, u128) = (5, 4);

/// How many of the usual gaps between tasks a batch waits for the next one.
pub const PATIENCE: u64 = 4;
