//! What every connection of a server shares: its client of the flow (the
//! requests waiting for answers), its readiness, its outcomes and names.

use aqueduct_core::{ClientConfig, ClientCore, ClientQueues, Control, TaskQueue, TrackedArena};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::delivered::Delivered;
use crate::metrics::{Names, Outcomes};
use crate::readiness::Readiness;
use crate::trace::Traces;

/// What a request waits for (dropped: there is no answer): the answer's
/// message, or, for a streaming route, every part and then the answer.
pub(crate) enum Waiter {
    Once(oneshot::Sender<Delivered>),
    Stream(mpsc::UnboundedSender<Delivered>),
}

impl Waiter {
    pub(crate) fn deliver(self, message: Delivered) {
        let _ = match self {
            Waiter::Once(tx) => tx.send(message).map_err(drop),
            Waiter::Stream(tx) => tx.send(message).map_err(drop),
        };
    }
}

/// How a request waits (see [`Waiter`]).
pub(crate) enum Awaited {
    Once(oneshot::Receiver<Delivered>),
    Stream(mpsc::UnboundedReceiver<Delivered>),
}

/// The segments of the flow the server feeds, as this server's client
/// slot sees them: they change when the flow heals onto fresh ones (see
/// [`crate::Server::retarget`]).
pub struct Target {
    /// Every step's queue (the first is where requests go).
    pub steps: Vec<Arc<TaskQueue>>,
    /// The server's result queue.
    pub results: Arc<TaskQueue>,
    pub control: Arc<Control>,
    /// The server slot's arena, for request bodies too big for a queue.
    pub arena: Arc<TrackedArena>,
    /// Every arena of the flow, by index: where workers place big answers.
    pub arenas: Vec<Arc<TrackedArena>>,
    /// The server's client slot.
    pub client: u32,
}

/// The server's client of the flow: requests in, answers out (one core
/// with the binding's client: keys, cancels, the body blocks a request
/// holds until a worker is done with them).
pub(crate) type Client = ClientCore<Waiter>;

pub(crate) fn client_of(target: Target) -> std::io::Result<Client> {
    if target.steps.is_empty() {
        return Err(std::io::Error::other("a flow without steps"));
    }
    let config = ClientConfig {
        slot: target.client,
        reject_when_full: true, // a fast 503: HTTP clients retry
        eager: true,
        spin: Duration::ZERO,
        metrics_step: None,
    };
    let queues = ClientQueues {
        steps: target.steps,
        results: target.results,
        doorbell: None,
        control: target.control,
        arena: Some(target.arena),
    };
    ClientCore::new(config, queues).map_err(|e| std::io::Error::other(e.to_string()))
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) client: Mutex<Client>,
    pub(crate) names: Mutex<Names>,
    pub(crate) outcomes: Outcomes,
    /// Why the flow cannot serve now (503s, `/health`), if it cannot.
    pub(crate) failure: Mutex<Option<String>>,
    /// Why the reader stopped reading the result queue (it is corrupt).
    pub(crate) corrupt: Mutex<Option<String>>,
    pub(crate) stopping: AtomicBool,
    /// The flow's arenas (they change when it heals), where big answers are.
    pub(crate) arenas: Mutex<Arc<[Arc<TrackedArena>]>>,
    pub(crate) readiness: Readiness,
    pub(crate) connections: AtomicUsize,
    pub(crate) access_log: Option<AccessLog>,
    /// What traced requests leave for the exporter (None: not traced).
    pub(crate) traces: Option<Arc<Traces>>,
}

impl Shared {
    pub(crate) fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends every request waiting (with no answer: they get 503).
    pub(crate) fn settle_all(&self) {
        drop(self.client().fail_all());
    }

    /// Why requests get 503 now, if they do.
    pub(crate) fn failure(&self) -> Option<String> {
        let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.clone().or_else(|| self.corruption())
    }

    /// This server found the flow's shared memory corrupt: it answers 503
    /// from now on and the flow heals (see `Server::corruption`).
    pub(crate) fn found_corrupt(&self, why: &str) {
        let mut corrupt = self.corrupt.lock().unwrap_or_else(PoisonError::into_inner);
        corrupt.get_or_insert_with(|| why.to_owned());
    }

    pub(crate) fn corruption(&self) -> Option<String> {
        self.corrupt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
