//! aqueduct-core: the shared-memory data path of aqueduct, free of Python.
//!
//! * [`segment`] — sealed memfd segments shared by fd, never named in /dev/shm;
//! * [`ring`] — a lock-free MPMC ring of variable-size messages in a segment;
//! * [`queue`] — a step's input queue: one ring per priority plus futex and
//!   eventfd wake-ups;
//! * [`arena`] — a memfd arena for large buffers, allocated by its owner,
//!   freed by anyone;
//! * [`batch`] — batch assembly with `batch_size` / `batch_timeout`;
//! * [`control`] — per-worker claims and the cancel set of a flow;
//! * [`metrics`] — per-step histograms and counters in shared memory;
//! * [`notify`] — futex, eventfd and the monotonic clock.

pub mod arena;
pub mod batch;
pub mod control;
pub mod error;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod ring;
pub mod segment;

pub use arena::{Arena, Block};
pub use batch::{Batch, BatchAssembler, BatchPolicy};
pub use control::Control;
pub use error::{Error, Result};
pub use notify::{monotonic_ns, EventFd};
pub use queue::{Message, MessageHeader, QueueConfig, TaskQueue, Wait};
pub use segment::Segment;
