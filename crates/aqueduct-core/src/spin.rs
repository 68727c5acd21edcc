//! When a waiter spins before it sleeps.
//!
//! A wake-up through the kernel costs tens of microseconds on a VM, so a
//! waiter that expects what it waits for within microseconds spins on shared
//! memory first. Spinning burns a core, so it is done only while it pays:
//! a [`SpinPolicy`] stops spinning after a few spins in a row that caught
//! nothing (the other side is slower than a spin is long) and then only
//! probes now and then; and nobody spins while the machine has no core to
//! spare ([`machine_is_crowded`]: more runnable threads than cores), since a
//! spinner would then steal the time of the very process it waits for.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::notify::monotonic_ns;

/// Default spin budget of a worker waiting for tasks (µs).
pub const DEFAULT_SPIN_US: u64 = 100;
/// After this many spins in a row that caught nothing, stop spinning...
const MISS_LIMIT: u32 = 4;
/// ... but for one wait in this many, to notice when spinning pays again.
const PROBE_EVERY: u32 = 16;
/// How often the load of the machine is read again.
const LOAD_CHECK_NS: u64 = 50_000_000;

/// A waiter's spin budget, adapted to what its spins achieve.
#[derive(Debug)]
pub struct SpinPolicy {
    max: Duration,
    misses: AtomicU32,
    waits: AtomicU32,
}

impl SpinPolicy {
    /// Spins of up to `max` (zero: never spin).
    pub fn new(max: Duration) -> Self {
        SpinPolicy {
            max,
            misses: AtomicU32::new(0),
            waits: AtomicU32::new(0),
        }
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// How long the next wait should spin before it sleeps.
    pub fn budget(&self) -> Duration {
        if self.max.is_zero() {
            return Duration::ZERO;
        }
        let waits = self.waits.fetch_add(1, Ordering::Relaxed);
        let missing = self.misses.load(Ordering::Relaxed) >= MISS_LIMIT;
        if (missing && waits % PROBE_EVERY != 0) || machine_is_crowded() {
            return Duration::ZERO;
        }
        self.max
    }

    /// What the spin of a wait achieved: it caught what it waited for (`hit`)
    /// or the waiter went to sleep.
    pub fn record(&self, hit: bool) {
        if hit {
            self.misses.store(0, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
    }
}

static CROWDED: AtomicBool = AtomicBool::new(false);
static CHECKED_NS: AtomicU64 = AtomicU64::new(0);

/// True when the machine has more runnable threads than cores (read from
/// `/proc/loadavg` at most every 50 ms).
pub fn machine_is_crowded() -> bool {
    let now = monotonic_ns();
    let checked = CHECKED_NS.load(Ordering::Relaxed);
    if now.saturating_sub(checked) >= LOAD_CHECK_NS
        && CHECKED_NS
            .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let crowded = match (runnable_threads(), cores()) {
            (Some(runnable), cores) => runnable > cores,
            (None, _) => false,
        };
        CROWDED.store(crowded, Ordering::Relaxed);
    }
    CROWDED.load(Ordering::Relaxed)
}

/// Threads runnable right now: the numerator of `/proc/loadavg`'s fourth
/// field ("running/total").
fn runnable_threads() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    parse_runnable(&text)
}

fn parse_runnable(loadavg: &str) -> Option<u64> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

fn cores() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_runnable_count_of_loadavg() {
        assert_eq!(parse_runnable("0.52 0.41 0.30 3/187 12345\n"), Some(3));
        assert_eq!(parse_runnable("garbage"), None);
    }

    #[test]
    fn stops_spinning_after_misses_and_probes_now_and_then() {
        let policy = SpinPolicy::new(Duration::from_micros(100));
        for _ in 0..MISS_LIMIT {
            policy.record(false);
        }
        let spins = (0..PROBE_EVERY * 4)
            .filter(|_| !policy.budget().is_zero())
            .count();
        // at most the probes spin (none when the test machine is crowded)
        assert!(spins <= 4, "{spins} spins after {MISS_LIMIT} misses");
        policy.record(true);
        let spins = (0..8).filter(|_| !policy.budget().is_zero()).count();
        assert!(
            spins == 8 || machine_is_crowded(),
            "a hit re-enables spinning"
        );
    }

    #[test]
    fn a_zero_budget_never_spins() {
        let policy = SpinPolicy::new(Duration::ZERO);
        assert!(policy.budget().is_zero());
    }
}
