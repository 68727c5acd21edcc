//! An HTTP/1.1 front for a flow, with no Python per request.
//!
//! Each request's bytes go straight into the first step's queue as one
//! message (`KIND_HTTP_REQUEST`, see `aqueduct_core::http_wire`); the
//! workers make a task of it, handle it, and answer through this server's
//! result queue (`KIND_HTTP_RESPONSE`, or an error report whose summary
//! gives the status). A reader thread hands each answer to the request
//! waiting for it. The server only needs the fds of those two queues and of
//! the control block (to cancel requests that timed out).

mod answer;
mod json_errors;
mod metrics;
mod server;

pub use metrics::Names;
pub use server::{Config, Server, Target};

/// Where the server puts request bodies too big to travel through the ring
/// (the flow's arena of the server's client slot).
pub trait BodyArena: Send + Sync {
    /// The arena's index among the flow's arenas.
    fn index(&self) -> u32;
    /// Copies `bytes` into a new block for task `key`; the block's offset,
    /// or None when the arena has no room for them now.
    fn place(&self, bytes: &[u8], key: u64) -> Option<u64>;
    /// The block at `offset` is no longer needed.
    fn free(&self, offset: u64);
}
