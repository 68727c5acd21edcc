//! aqueduct-core: the shared-memory data path of aqueduct, free of Python.
//!
//! * [`segment`] — sealed memfd segments shared by fd, never named in /dev/shm;
//! * [`ring`] — a lock-free MPMC ring of variable-size messages in a segment;
//! * [`queue`] — a step's input queue: one ring per priority plus futex and
//!   eventfd wake-ups;
//! * [`arena`] — a memfd arena for large buffers, allocated by its owner,
//!   freed by anyone;
//! * [`tracked_arena`] — an arena as one process uses it: placing buffers,
//!   and the holds (views, tasks in flight) that keep a block alive;
//! * [`batch`] — batch assembly with `batch_size` / `batch_timeout`, or for
//!   a latency objective over [`cost`] (what a batch costs, learned online);
//! * [`admission`] — whether a new task can still make its step's objective
//!   (refused at push when it cannot);
//! * [`client`] — one process's way in and out of a flow: keys, pushing,
//!   answers, deadlines, cancelling (the binding's and the HTTP server's);
//! * [`consumer`] — a worker's side of its step: bursts of batches, pushes
//!   on (waiting for room), one wake-up per fed queue per burst;
//! * [`control`] — per-worker claims, the cancel set, the steps' metrics
//!   and schedules of a flow;
//! * [`ids`] — random task ids without a system call per id;
//! * [`metrics`] — per-step histograms and counters in shared memory;
//! * [`notify`] — futex, eventfd and the monotonic clock;
//! * [`pending`] — a client's tasks in flight: keys and deadlines;
//! * [`spin`] — when a waiter spins before sleeping;
//! * [`state`] — a task's fields as a message body;
//! * [`wire`] — message kinds, flags and key layout;
//! * [`http_wire`] — HTTP requests, answers and streamed parts as messages;
//! * [`openai`], [`openai_embeddings`] — the OpenAI-compatible API's codecs;
//! * [`kserve`] — the Open Inference Protocol's codec, over [`tensor_table`]
//!   (named tensors as one message body);
//! * [`exported`] — every constant the Python package uses, by name.

pub mod admission;
pub mod arena;
pub mod batch;
pub mod client;
pub mod consumer;
pub mod control;
pub mod cost;
pub mod error;
pub mod exported;
#[cfg(test)]
mod fuzzing;
pub mod http_wire;
pub mod ids;
pub mod kserve;
pub mod metrics;
pub mod notify;
pub mod openai;
pub mod openai_embeddings;
pub mod pending;
pub mod queue;
pub mod ring;
pub mod segment;
pub mod spin;
pub mod state;
pub mod tensor_table;
pub mod tracked_arena;
pub mod wire;

pub use arena::{Arena, Block};
pub use batch::{Batch, BatchAssembler, BatchPolicy};
pub use client::{Answer, ClientConfig, ClientCore, ClientQueues, Outbound, Submitted};
pub use consumer::{ConsumerConfig, StepConsumer};
pub use control::Control;
pub use error::{Error, Result};
pub use notify::{monotonic_ns, EventFd};
pub use pending::Pending;
pub use queue::{Message, MessageHeader, QueueConfig, TaskQueue, Wait};
pub use segment::Segment;
pub use tracked_arena::TrackedArena;
