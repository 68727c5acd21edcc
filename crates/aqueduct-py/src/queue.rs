//! Binding of the queues: `Queue` (a step's input or a client's result
//! queue) and `Doorbell` (the eventfd an event loop watches).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

use aqueduct_core::queue::{DEFAULT_RING_SLOTS, DEFAULT_SLOT_BYTES, PUSH_WAIT_NO_DEADLINE};
use aqueduct_core::spin::DEFAULT_SPIN_US;
use aqueduct_core::{Error, EventFd, QueueConfig, TaskQueue};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::message::PyMessage;
use crate::{deadline_after, dup_fd, signal_checker, to_py_err};

/// The flow's doorbell: an eventfd the parent's event loop watches.
#[pyclass(module = "aqueduct._core", frozen)]
pub(crate) struct Doorbell {
    pub(crate) inner: Arc<EventFd>,
}

#[pymethods]
impl Doorbell {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Doorbell {
            inner: Arc::new(EventFd::new().map_err(to_py_err)?),
        })
    }

    /// Wraps a duplicate of an inherited eventfd.
    #[staticmethod]
    fn open(fd: i32) -> PyResult<Self> {
        Ok(Doorbell {
            inner: Arc::new(EventFd::from_fd(dup_fd(fd)?)),
        })
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.inner.as_fd().as_raw_fd()
    }

    fn signal(&self) {
        self.inner.signal();
    }

    /// Clears the doorbell; returns the number of rings since the last drain.
    fn drain(&self) -> u64 {
        self.inner.drain()
    }
}

/// A step's input queue (or the result queue) in a shared memfd segment.
#[pyclass(module = "aqueduct._core", frozen)]
pub(crate) struct Queue {
    pub(crate) inner: Arc<TaskQueue>,
}

/// Messages taken from a queue, as a Python list of `Message`.
pub(crate) fn message_list<'py, 'm>(
    py: Python<'py>,
    messages: impl IntoIterator<Item = &'m aqueduct_core::Message>,
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for m in messages {
        list.append(PyMessage::of(py, m))?;
    }
    Ok(list)
}

#[pymethods]
impl Queue {
    /// Creates a queue: `priorities` rings of `capacity` slots of `slot_bytes`,
    /// holding at most `max_messages` messages (0 = as many as fit).
    #[staticmethod]
    #[pyo3(signature = (priorities=1, capacity=DEFAULT_RING_SLOTS, slot_bytes=DEFAULT_SLOT_BYTES, max_messages=0, spin_us=DEFAULT_SPIN_US))]
    fn create(
        priorities: u32,
        capacity: u64,
        slot_bytes: u64,
        max_messages: u64,
        spin_us: u64,
    ) -> PyResult<Self> {
        let mut inner = TaskQueue::create(QueueConfig {
            priorities,
            capacity,
            slot_bytes,
            max_messages,
        })
        .map_err(to_py_err)?;
        inner.set_spin(Duration::from_micros(spin_us));
        Ok(Queue {
            inner: Arc::new(inner),
        })
    }

    /// Maps the queue behind an inherited fd (the fd is duplicated, not taken).
    #[staticmethod]
    #[pyo3(signature = (fd, spin_us=DEFAULT_SPIN_US))]
    fn open(fd: i32, spin_us: u64) -> PyResult<Self> {
        let mut inner = TaskQueue::open(dup_fd(fd)?).map_err(to_py_err)?;
        inner.set_spin(Duration::from_micros(spin_us));
        Ok(Queue {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.inner.raw_fd()
    }

    fn __len__(&self) -> usize {
        self.inner.len() as usize
    }

    /// Appends a message if there is room: False when the queue is full.
    /// Raises `TaskTooLargeError` (it can never fit) or `NotRunningError`
    /// (closed). Wakes nobody: call `notify` after a burst.
    fn try_push(&self, py: Python<'_>, message: &PyMessage) -> PyResult<bool> {
        match self.inner.push(&message.header(), message.payload(py)) {
            Ok(()) => Ok(true),
            Err(Error::Full) => Ok(false),
            Err(err) => Err(to_py_err(err)),
        }
    }

    /// Appends a message, waiting (GIL released) while the queue is full
    /// and waking its consumers so they make room, until the message's
    /// deadline or, without one, `timeout` seconds (default: the core's
    /// `PUSH_WAIT_NO_DEADLINE`). False when it gave up or
    /// the queue closed; raises `TaskTooLargeError` for a message that can
    /// never fit, and what a signal handler raised meanwhile.
    #[pyo3(signature = (message, timeout=PUSH_WAIT_NO_DEADLINE.as_secs_f64()))]
    fn push_waiting(&self, py: Python<'_>, message: &PyMessage, timeout: f64) -> PyResult<bool> {
        let header = message.header();
        let give_up = if header.deadline_ns == 0 {
            deadline_after(Some(timeout))?
        } else {
            Some(header.deadline_ns)
        };
        let payload = message.payload(py);
        let mut pending = None;
        let outcome = py.detach(|| {
            self.inner.push_waiting(
                &header,
                &[payload],
                give_up,
                &mut signal_checker(&mut pending),
            )
        });
        if let Some(e) = pending {
            return Err(e);
        }
        match outcome {
            Ok(()) => Ok(true),
            Err(Error::Full | Error::Closed) => Ok(false),
            Err(err) => Err(to_py_err(err)),
        }
    }

    /// Wakes a sleeping consumer; rings `doorbell` if its owner armed it.
    #[pyo3(signature = (doorbell=None))]
    fn notify(&self, doorbell: Option<&Doorbell>) {
        self.inner.notify(doorbell.map(|d| &*d.inner));
    }

    /// A test's consumer: takes up to `limit` ready messages without
    /// waiting, as `Message`s, and tells producers waiting for room.
    #[cfg(feature = "fault-injection")]
    fn drain<'py>(&self, py: Python<'py>, limit: usize) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for _ in 0..limit {
            let Some(m) = self.inner.try_pop().map_err(to_py_err)? else {
                break;
            };
            list.append(PyMessage::of(py, &m))?;
        }
        self.inner.released(&[]);
        Ok(list)
    }

    /// Fault injection for tests: leaves an unfinished message, as a producer
    /// killed mid-push would.
    #[cfg(feature = "fault-injection")]
    fn abandon_push(&self, payload_len: usize) -> PyResult<()> {
        self.inner.abandon_push(payload_len).map_err(to_py_err)
    }

    /// A test's probe: processes asleep waiting for a message, and for room.
    #[cfg(feature = "fault-injection")]
    fn sleepers(&self) -> (u32, u32) {
        self.inner.sleepers()
    }

    /// `(ring, head)` of rings whose head is claimed but not published: a
    /// producer is mid-push, or died there.
    fn unpublished_heads(&self) -> Vec<(usize, u64)> {
        self.inner.unpublished_heads()
    }

    /// Turns the message a dead producer left unfinished at `head` of `ring`
    /// into one consumers skip; false if it was published meanwhile.
    fn skip_abandoned(&self, ring: usize, head: u64) -> bool {
        self.inner.skip_abandoned(ring, head)
    }

    /// Closes the queue and wakes everyone waiting on it.
    fn close(&self) {
        self.inner.close();
    }
}
