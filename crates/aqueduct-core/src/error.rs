//! The one error type of the core; the binding maps each variant once.

use std::io;

/// Everything the core can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; `op` names it so the message says what was attempted.
    #[error("{op} failed: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The queue holds as many messages as it may (`queue_size`) or its ring has no room.
    #[error("queue is full")]
    Full,
    /// The step cannot leave the task within its latency objective: it is
    /// refused at push, before it waits (see [`crate::admission`]).
    #[error("{0}")]
    Overloaded(String),
    /// The queue was closed by the flow; nothing more is accepted or delivered.
    #[error("queue is closed")]
    Closed,
    /// A message can never fit in the ring, whatever is consumed.
    #[error("message of {size} bytes exceeds the queue's limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The arena has no run of free pages large enough right now (or ever).
    #[error("shared memory arena full: a buffer of {size} bytes does not fit (capacity {capacity} bytes, {free} bytes free)")]
    ArenaFull { size: u64, capacity: u64, free: u64 },
    /// A segment handed over by another process is not what it claims to be.
    #[error("invalid segment: {0}")]
    InvalidSegment(String),
    /// Shared memory holds what no process of the flow writes: another
    /// process (a worker's native code) scribbled on it. The segment cannot
    /// be trusted any more; the flow retires it.
    #[error("shared memory is corrupt: {0}")]
    Corrupt(String),
    /// Arguments that cannot describe a queue (zero capacity and the like).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The class of `aqueduct.exceptions` a caller gets for it (`ValueError`
    /// for [`Error::InvalidArgument`]: Python's own), and the HTTP status it
    /// stands for — the one map, used by the binding and the HTTP server.
    pub fn kind(&self) -> (&'static str, u16) {
        match self {
            Error::Full => ("QueueFullError", 503),
            Error::Overloaded(_) => ("OverloadedError", 429),
            Error::Closed => ("NotRunningError", 503),
            Error::TooLarge { .. } => ("TaskTooLargeError", 413),
            Error::ArenaFull { .. } => ("SharedMemoryFullError", 503),
            Error::Corrupt(_) => ("SharedMemoryCorruptError", 500),
            Error::Os { .. } | Error::InvalidSegment(_) => ("SharedMemoryError", 500),
            Error::InvalidArgument(_) => ("ValueError", 500),
        }
    }

    /// Wraps the calling thread's `errno` for the system call `op`.
    pub(crate) fn last_os(op: &'static str) -> Self {
        Error::Os {
            op,
            source: io::Error::last_os_error(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
