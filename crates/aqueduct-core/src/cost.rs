//! What a batch of n tasks costs a step, learned online from the handle
//! times its worker records: `t(n) = fixed + per_task · n`, fitted by least
//! squares over the recent batches (each older batch weighs [`DECAY`] as
//! much as the next), so that a handler whose cost changes is followed
//! within a few dozen batches. One slow batch (a pause, a page fault
//! storm) does not move it much: a time over [`CLAMP`] times the
//! prediction counts as that bound.
//!
//! While the batches have all had about the same size the slope cannot be
//! told from them; the model then assumes the cost is proportional to the
//! batch (no fixed part), which overestimates bigger batches: a batcher
//! that trusts it dispatches early rather than late.

/// Weight of a batch relative to the one after it.
pub const DECAY: f64 = 0.95;
/// A handle time over this many times the prediction counts as that many.
pub const CLAMP: f64 = 4.0;
/// Batches seen before the model predicts anything.
pub const WARM_UP: u32 = 3;
/// Variance of the batch sizes below which the slope is not fitted.
const FLAT: f64 = 0.25;

/// A step's cost of a batch, as one worker learns it.
#[derive(Debug, Clone, Default)]
pub struct CostModel {
    weight: f64,
    sum_n: f64,
    sum_t: f64,
    sum_nn: f64,
    sum_nt: f64,
    seen: u32,
}

/// The fitted cost: `fixed_ns + per_task_ns · n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub fixed_ns: f64,
    pub per_task_ns: f64,
}

impl Cost {
    /// Nanoseconds a batch of `n` is expected to take.
    pub fn of(&self, n: usize) -> u64 {
        (self.fixed_ns + self.per_task_ns * n as f64).max(0.0) as u64
    }
}

impl CostModel {
    /// A batch of `n` tasks took `took_ns`.
    pub fn observe(&mut self, n: usize, took_ns: u64) {
        if n == 0 {
            return;
        }
        let size = n as f64;
        let mut took = took_ns as f64;
        if let Some(cost) = self.cost() {
            took = took.min(CLAMP * cost.of(n).max(1) as f64);
        }
        self.weight = self.weight * DECAY + 1.0;
        self.sum_n = self.sum_n * DECAY + size;
        self.sum_t = self.sum_t * DECAY + took;
        self.sum_nn = self.sum_nn * DECAY + size * size;
        self.sum_nt = self.sum_nt * DECAY + size * took;
        self.seen = self.seen.saturating_add(1);
    }

    /// The cost fitted so far (None before [`WARM_UP`] batches).
    pub fn cost(&self) -> Option<Cost> {
        self.fit(|mean_n, mean_t| Cost {
            fixed_ns: 0.0,
            per_task_ns: mean_t / mean_n.max(1.0),
        })
    }

    /// The cost as admission at push reads it (see [`crate::admission`]):
    /// the fitted one, but while the slope cannot be told, every batch
    /// costs what the batches seen cost — a step whose batches were small
    /// so far is not thought to be unable to take a bigger one, so it is
    /// not refused for it (a worker still rejects what turns out late).
    pub fn admission(&self) -> Option<Cost> {
        self.fit(|_, mean_t| Cost {
            fixed_ns: mean_t,
            per_task_ns: 0.0,
        })
    }

    /// The least-squares line, or `flat(mean_n, mean_t)` while the batch
    /// sizes hardly varied.
    fn fit(&self, flat: impl FnOnce(f64, f64) -> Cost) -> Option<Cost> {
        if self.seen < WARM_UP || self.weight <= 0.0 {
            return None;
        }
        let mean_n = self.sum_n / self.weight;
        let mean_t = self.sum_t / self.weight;
        let var_n = self.sum_nn / self.weight - mean_n * mean_n;
        if var_n < FLAT {
            return Some(flat(mean_n, mean_t));
        }
        let cov = self.sum_nt / self.weight - mean_n * mean_t;
        let per_task_ns = (cov / var_n).max(0.0);
        Some(Cost {
            fixed_ns: (mean_t - per_task_ns * mean_n).max(0.0),
            per_task_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 ms + 0.2 ms per task, the benchmarks' model emulator.
    fn emulator(n: usize) -> u64 {
        2_000_000 + 200_000 * n as u64
    }

    #[test]
    fn it_converges_on_a_handler_of_known_cost() {
        let mut model = CostModel::default();
        assert!(model.cost().is_none(), "nothing before it has seen batches");
        for i in 0..200 {
            let n = 1 + i % 32;
            model.observe(n, emulator(n));
        }
        let cost = model.cost().unwrap();
        assert!((cost.fixed_ns - 2e6).abs() < 1e4, "{cost:?}");
        assert!((cost.per_task_ns - 2e5).abs() < 1e3, "{cost:?}");
        assert!(cost.of(32).abs_diff(emulator(32)) < 50_000);
    }

    #[test]
    fn one_slow_batch_barely_moves_it_and_a_slower_handler_is_followed() {
        let mut model = CostModel::default();
        for i in 0..200 {
            let n = 1 + i % 32;
            model.observe(n, emulator(n));
        }
        let before = model.cost().unwrap().of(16);
        model.observe(16, 1_000_000_000); // a 1 s pause
        let after = model.cost().unwrap().of(16);
        assert!(after < before * 2, "{before} -> {after}");
        for i in 0..200 {
            let n = 1 + i % 32;
            model.observe(n, 3 * emulator(n)); // the handler became 3x slower
        }
        let followed = model.cost().unwrap().of(16);
        assert!(
            followed.abs_diff(3 * emulator(16)) < 3 * emulator(16) / 20,
            "{followed}"
        );
    }

    #[test]
    fn batches_of_one_size_give_a_cost_proportional_to_the_batch() {
        let mut model = CostModel::default();
        for _ in 0..10 {
            model.observe(1, emulator(1));
        }
        let cost = model.cost().unwrap();
        assert_eq!(cost.fixed_ns, 0.0);
        assert_eq!(cost.of(1), emulator(1));
        assert!(cost.of(8) >= emulator(8), "it overestimates bigger batches");
        let admission = model.admission().unwrap();
        assert_eq!(admission.of(8), emulator(1), "admission does not");
    }
}
