//! The front's one state of readiness, which `/live`, `/ready`, the
//! signals and the CLI read and move: serving → draining (`/ready` 503,
//! still accepting, every answer closes its connection so that clients
//! come back through the load balancer) → closing (not accepting, finishing
//! what is in flight) → stopped. It only moves forward.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};

/// Where a server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving = 0,
    Draining = 1,
    Closing = 2,
    Stopped = 3,
}

impl Phase {
    fn of(value: u8) -> Phase {
        match value {
            0 => Phase::Serving,
            1 => Phase::Draining,
            2 => Phase::Closing,
            _ => Phase::Stopped,
        }
    }

    /// As `/ready` and the CLI name it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Closing => "closing",
            Phase::Stopped => "stopped",
        }
    }
}

/// A server's phase, and why its flow is not ready while it serves.
#[derive(Debug, Default)]
pub struct Readiness {
    phase: AtomicU8,
    /// Per step, why it lacks workers now (starting, respawning), if it does.
    unready: Mutex<Vec<Option<String>>>,
}

impl Readiness {
    pub fn phase(&self) -> Phase {
        Phase::of(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase` unless the server is past it already.
    pub fn advance(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }

    /// Whether answers should close their connections (the server drains).
    pub fn closes_connections(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Why each step is not ready (None: it has its workers).
    pub fn set_unready(&self, reasons: Vec<Option<String>>) {
        *self.unready.lock().unwrap_or_else(PoisonError::into_inner) = reasons;
    }

    /// `Ok` if the server should get traffic; else why not.
    pub fn ready(&self) -> Result<(), String> {
        self.steps_ready(None)
    }

    /// `Ok` if the server serves and `steps` (None: every step) have
    /// their workers; else why not.
    pub fn steps_ready(&self, steps: Option<&[usize]>) -> Result<(), String> {
        match self.phase() {
            Phase::Serving => {
                let unready = self.unready.lock().unwrap_or_else(PoisonError::into_inner);
                let reason = unready
                    .iter()
                    .enumerate()
                    .filter(|(step, _)| steps.map_or(true, |s| s.contains(step)))
                    .find_map(|(_, reason)| reason.clone());
                reason.map_or(Ok(()), Err)
            }
            phase => Err(format!("the server is {}", phase.name())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Phase, Readiness};

    #[test]
    fn the_phase_only_moves_forward_and_only_serving_with_all_workers_is_ready() {
        let readiness = Readiness::default();
        assert_eq!(readiness.ready(), Ok(()));
        readiness.set_unready(vec![None, Some("1 of 2 workers of step1 run".into())]);
        assert_eq!(readiness.ready(), Err("1 of 2 workers of step1 run".into()));
        assert_eq!(readiness.steps_ready(Some(&[0])), Ok(()));
        assert!(readiness.steps_ready(Some(&[0, 1])).is_err());
        readiness.set_unready(vec![None, None]);
        readiness.advance(Phase::Closing);
        readiness.advance(Phase::Draining);
        assert_eq!(readiness.phase(), Phase::Closing);
        assert_eq!(readiness.ready(), Err("the server is closing".into()));
        assert!(readiness.closes_connections());
    }
}
