//! Whether a new task can still make its step's latency objective, decided
//! when it is pushed — before it waits in a queue it cannot leave in time.
//!
//! A step with an objective keeps a [`Schedule`] in its flow's control
//! block: the objective and batch size its workers declare when they start,
//! and the cost of a batch their [`crate::cost::CostModel`] learned, which
//! they publish after every batch, and when the batch a worker took last
//! should be done. A client (the binding's or the HTTP front's) reads it at
//! push: with `queued` tasks ahead and `workers` workers taking batches of
//! `batch`, the new task leaves the step after [`predicted_ns`]; more than
//! what its objective leaves it (less a tenth, [`HEADROOM`]), and the task is refused at
//! once ([`crate::Error::Overloaded`]) instead of being rejected by a worker
//! a whole objective later. A worker still checks at pop (the prediction
//! leaves out what it cannot know), so the two together bound every
//! answered task's time and every refused one's wait.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cost::Cost;

/// The part of the objective (1 / this) a task is admitted without: what
/// its time outside the step costs (the caller's or the front's way in and
/// the answer's way back, the network) and what the prediction misses.
pub const HEADROOM: u64 = 10;

/// A step's objective and learned cost, shared by its workers (writers) and
/// its clients (readers). All zero: no objective, nothing learned.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Schedule {
    objective_ns: AtomicU64,
    batch: AtomicU64,
    /// `f64` bits of [`Cost::fixed_ns`] and [`Cost::per_task_ns`].
    fixed: AtomicU64,
    per_task: AtomicU64,
    /// Non-zero once a cost was published.
    learned: AtomicU64,
    /// When the batch a worker took last should be done (monotonic ns).
    busy_until: AtomicU64,
    /// The step's workers taking tasks, as the flow's parent counts them.
    workers: AtomicU64,
}

/// What a client reads to decide: the objective, the batch size, the cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Known {
    pub objective_ns: u64,
    pub batch: usize,
    pub cost: Cost,
    pub busy_until_ns: u64,
    /// Workers taking tasks (at least 1).
    pub workers: u64,
}

impl Schedule {
    /// A worker of the step starts: its objective and batch size.
    pub fn declare(&self, objective_ns: u64, batch: usize) {
        self.batch.store(batch.max(1) as u64, Ordering::Relaxed);
        self.objective_ns.store(objective_ns, Ordering::Release);
    }

    /// A worker learned `cost` (the last writer wins: a step's workers
    /// run the same handler).
    pub fn publish(&self, cost: Cost) {
        self.fixed.store(cost.fixed_ns.to_bits(), Ordering::Relaxed);
        self.per_task
            .store(cost.per_task_ns.to_bits(), Ordering::Relaxed);
        self.learned.store(1, Ordering::Release);
    }

    /// The flow's parent counted `running` workers taking the step's tasks.
    pub fn set_workers(&self, running: u64) {
        self.workers.store(running, Ordering::Relaxed);
    }

    /// A worker took a batch of `tasks` at `now_ns`: it should be done
    /// once the learned cost of such a batch has passed.
    pub fn started(&self, now_ns: u64, tasks: usize) {
        if let Some(known) = self.known() {
            let ends = now_ns.saturating_add(known.cost.of(tasks));
            self.busy_until.store(ends, Ordering::Relaxed);
        }
    }

    /// The objective, batch size and cost, once a worker declared the one
    /// and published the other (None: admit everything).
    pub fn known(&self) -> Option<Known> {
        let objective_ns = self.objective_ns.load(Ordering::Acquire);
        if objective_ns == 0 || self.learned.load(Ordering::Acquire) == 0 {
            return None;
        }
        let cost = Cost {
            fixed_ns: f64::from_bits(self.fixed.load(Ordering::Relaxed)),
            per_task_ns: f64::from_bits(self.per_task.load(Ordering::Relaxed)),
        };
        if !(cost.fixed_ns.is_finite() && cost.per_task_ns.is_finite()) {
            return None; // not what a worker writes: trust nothing
        }
        Some(Known {
            objective_ns,
            batch: self.batch.load(Ordering::Relaxed).max(1) as usize,
            cost,
            busy_until_ns: self.busy_until.load(Ordering::Relaxed),
            workers: self.workers.load(Ordering::Relaxed).max(1),
        })
    }
}

/// Nanoseconds until a task pushed behind `queued` others leaves a step
/// whose `workers` take batches of at most `batch` costing `cost`: what is
/// left of the batch in hand (`busy_ns`), the full rounds of batches ahead
/// of it, then its own batch.
pub fn predicted_ns(cost: Cost, batch: usize, queued: u64, workers: u64, busy_ns: u64) -> u64 {
    let batch = batch.max(1) as u64;
    let round = batch.saturating_mul(workers.max(1));
    let rounds = queued / round;
    let own = (queued + 1).min(batch) as usize;
    let full = cost.of(batch as usize);
    busy_ns
        .saturating_add(rounds.saturating_mul(full))
        .saturating_add(cost.of(own))
}

impl Known {
    /// True when a task pushed at `now_ns`, `waited_ns` after it entered
    /// its flow, behind `queued` others, can leave the step within the
    /// objective.
    pub fn admits(&self, now_ns: u64, waited_ns: u64, queued: u64) -> bool {
        let workers = self.workers;
        let headroom = self.objective_ns / HEADROOM;
        let left = self.objective_ns.saturating_sub(waited_ns + headroom);
        let busy = self.busy_until_ns.saturating_sub(now_ns);
        predicted_ns(self.cost, self.batch, queued, workers, busy) <= left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    /// The bench's model emulator: 2 ms + 0.2 ms per task.
    const EMULATOR: Cost = Cost {
        fixed_ns: 2.0 * MS,
        per_task_ns: 0.2 * MS,
    };

    #[test]
    fn nothing_known_until_declared_and_learned() {
        let s = Schedule::default();
        assert_eq!(s.known(), None);
        s.declare(50_000_000, 32);
        assert_eq!(s.known(), None, "no cost yet: admit everything");
        s.publish(EMULATOR);
        let known = s.known().expect("declared and learned");
        assert_eq!((known.objective_ns, known.batch), (50_000_000, 32));
        assert_eq!(known.cost, EMULATOR);
        assert_eq!(
            (known.busy_until_ns, known.workers),
            (0, 1),
            "no batch taken yet"
        );
        s.set_workers(3);
        assert_eq!(s.known().map(|k| k.workers), Some(3));
        s.started(1_000, 32);
        assert_eq!(s.known().map(|k| k.busy_until_ns), Some(8_401_000));
    }

    #[test]
    fn a_scribbled_cost_admits_everything() {
        let s = Schedule::default();
        s.declare(50_000_000, 32);
        s.publish(Cost {
            fixed_ns: f64::NAN,
            per_task_ns: 1.0,
        });
        assert_eq!(s.known(), None);
    }

    #[test]
    fn an_empty_queue_costs_one_task() {
        assert_eq!(predicted_ns(EMULATOR, 32, 0, 1, 0), 2_200_000);
    }

    #[test]
    fn full_rounds_ahead_count_whole_batches() {
        // 64 ahead on one worker, 1 ms left of the batch in hand: two full
        // batches, then its own full one
        let full = 8_400_000;
        assert_eq!(
            predicted_ns(EMULATOR, 32, 64, 1, 1_000_000),
            1_000_000 + 3 * full
        );
        // two workers share the rounds
        assert_eq!(predicted_ns(EMULATOR, 32, 64, 2, 0), 2 * full);
    }

    #[test]
    fn refuses_what_cannot_make_the_objective() {
        let known = Known {
            objective_ns: 50_000_000,
            batch: 32,
            cost: EMULATOR,
            busy_until_ns: 10_000_000,
            workers: 1,
        };
        assert!(known.admits(0, 0, 0));
        assert!(
            known.admits(0, 0, 100),
            "10 ms in hand + 3 rounds + own: 43.6 ms"
        );
        assert!(!known.admits(0, 0, 200), "6 rounds ahead: 70.4 ms");
        let two = Known {
            workers: 2,
            ..known
        };
        assert!(two.admits(0, 0, 200), "two workers halve the rounds");
        assert!(
            !known.admits(0, 0, 130),
            "10 ms in hand + 4 rounds + own: 52 ms"
        );
        assert!(
            known.admits(9_000_000, 0, 130),
            "the same with 1 ms in hand: 43 ms"
        );
        assert!(!known.admits(0, 49_000_000, 0), "1 ms left, 2.2 ms of work");
    }
}
