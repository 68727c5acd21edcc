//! `aqueduct._core`: the thin PyO3 binding of `aqueduct-core`.
//!
//! It converts arguments and errors and nothing else. Every call that can block
//! releases the GIL and wakes at least every 100 ms to run Python's signal
//! handlers, so Ctrl-C and SIGTERM handlers work in workers waiting for tasks.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use aqueduct_core::batch::Claims;
use aqueduct_core::{
    monotonic_ns, BatchAssembler, BatchPolicy, Control, Error, EventFd, MessageHeader, QueueConfig,
    TaskQueue, Wait,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple, PyType};

mod shm;

/// Raises the public exception from `aqueduct.exceptions` for a core error.
pub(crate) fn to_py_err(err: Error) -> PyErr {
    static FULL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static TOO_LARGE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static CLOSED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static SHARED_MEMORY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static ARENA_FULL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    Python::attach(|py| {
        let (cell, name) = match &err {
            Error::Full => (&FULL, "QueueFullError"),
            Error::TooLarge { .. } => (&TOO_LARGE, "TaskTooLargeError"),
            Error::Closed => (&CLOSED, "NotRunningError"),
            Error::InvalidArgument(_) => return PyValueError::new_err(err.to_string()),
            Error::ArenaFull { .. } => (&ARENA_FULL, "SharedMemoryFullError"),
            Error::Os { .. } | Error::InvalidSegment(_) => (&SHARED_MEMORY, "SharedMemoryError"),
        };
        match cell.import(py, "aqueduct.exceptions", name) {
            Ok(ty) => PyErr::from_type(ty.clone(), err.to_string()),
            Err(import_error) => import_error,
        }
    })
}

/// Runs Python signal handlers from inside a GIL-released wait; a raised
/// exception is kept to be re-raised once the wait returns.
fn signal_checker(pending: &mut Option<PyErr>) -> impl FnMut() -> bool + '_ {
    move || {
        if pending.is_some() {
            return true;
        }
        match Python::attach(|py| py.check_signals()) {
            Ok(()) => false,
            Err(e) => {
                *pending = Some(e);
                true
            }
        }
    }
}

fn deadline_after(timeout_s: Option<f64>) -> PyResult<Option<u64>> {
    match timeout_s {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(PyValueError::new_err("timeout must be >= 0")),
        Some(t) => Ok(Some(
            monotonic_ns().saturating_add((t.min(1e9) * 1e9) as u64),
        )),
    }
}

/// The flow's doorbell: an eventfd the parent's event loop watches.
#[pyclass(module = "aqueduct._core", frozen)]
struct Doorbell {
    inner: EventFd,
}

#[pymethods]
impl Doorbell {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Doorbell {
            inner: EventFd::new().map_err(to_py_err)?,
        })
    }

    /// Wraps a duplicate of an inherited eventfd.
    #[staticmethod]
    fn open(fd: i32) -> PyResult<Self> {
        Ok(Doorbell {
            inner: EventFd::from_fd(dup_fd(fd)?),
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

pub(crate) fn dup_fd(fd: i32) -> PyResult<OwnedFd> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!("invalid fd {fd}")));
    }
    // SAFETY: the caller passes an fd open in this process; we only borrow it
    // long enough to duplicate it, and never close the original.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed
        .try_clone_to_owned()
        .map_err(|source| to_py_err(Error::Os { op: "dup", source }))
}

/// A step's input queue (or the result queue) in a shared memfd segment.
#[pyclass(module = "aqueduct._core", frozen)]
struct Queue {
    inner: TaskQueue,
}

type PyMessage<'py> = Bound<'py, PyTuple>;

fn message_tuple<'py>(py: Python<'py>, m: &aqueduct_core::Message) -> PyResult<PyMessage<'py>> {
    PyTuple::new(
        py,
        [
            m.header.key.into_pyobject(py)?.into_any(),
            m.header.kind.into_pyobject(py)?.into_any(),
            m.header.priority.into_pyobject(py)?.into_any(),
            m.header.deadline_ns.into_pyobject(py)?.into_any(),
            PyBytes::new(py, m.payload()).into_any(),
        ],
    )
}

#[pymethods]
impl Queue {
    /// Creates a queue: `priorities` rings of `capacity` slots of `slot_bytes`,
    /// holding at most `max_messages` messages (0 = as many as fit).
    #[staticmethod]
    #[pyo3(signature = (priorities=1, capacity=16384, slot_bytes=256, max_messages=0, spin_us=50))]
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
        Ok(Queue { inner })
    }

    /// Maps the queue behind an inherited fd (the fd is duplicated, not taken).
    #[staticmethod]
    #[pyo3(signature = (fd, spin_us=50))]
    fn open(fd: i32, spin_us: u64) -> PyResult<Self> {
        let mut inner = TaskQueue::open(dup_fd(fd)?).map_err(to_py_err)?;
        inner.set_spin(Duration::from_micros(spin_us));
        Ok(Queue { inner })
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.inner.raw_fd()
    }

    #[getter]
    fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }

    #[getter]
    fn priorities(&self) -> u32 {
        self.inner.priorities()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn __len__(&self) -> usize {
        self.inner.len() as usize
    }

    /// Appends a message; raises `QueueFullError`, `TaskTooLargeError` or
    /// `NotRunningError` (closed). Wakes nobody: call `notify` after a burst.
    #[pyo3(signature = (key, deadline_ns, kind, priority, payload))]
    fn push(
        &self,
        key: u64,
        deadline_ns: u64,
        kind: u32,
        priority: u32,
        payload: &[u8],
    ) -> PyResult<()> {
        let header = MessageHeader {
            key,
            deadline_ns,
            kind,
            priority,
            enqueued_ns: 0, // set by push
        };
        self.inner.push(&header, payload).map_err(to_py_err)
    }

    /// Wakes a sleeping consumer; rings `doorbell` if its owner armed it.
    #[pyo3(signature = (doorbell=None))]
    fn notify(&self, doorbell: Option<&Doorbell>) {
        self.inner.notify(doorbell.map(|d| &d.inner));
    }

    /// Tells waiting producers that room was freed (after a burst of pops);
    /// `doorbells[i]` is rung if client `i` asked for room.
    #[pyo3(signature = (doorbells=Vec::new()))]
    fn released(&self, doorbells: Vec<Py<Doorbell>>) {
        let bells: Vec<&EventFd> = doorbells.iter().map(|d| &d.get().inner).collect();
        self.inner.released(&bells);
    }

    /// Client `client` met a full queue and asks to be rung when room frees.
    #[pyo3(signature = (client=0))]
    fn want_space(&self, client: u32) {
        self.inner.want_space(client);
    }

    /// An event-loop consumer arms the doorbell before idling; True means a
    /// message is already ready and it should drain again.
    fn arm_doorbell(&self) -> bool {
        self.inner.arm_doorbell()
    }

    /// Takes up to `limit` ready messages without waiting, as
    /// `(key, kind, priority, deadline_ns, payload)` tuples; with `control`,
    /// records their time in the queue as step `step`'s transfer time.
    #[pyo3(signature = (limit, control=None, step=0))]
    fn drain<'py>(
        &self,
        py: Python<'py>,
        limit: usize,
        control: Option<&PyControl>,
        step: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        let metrics = control.and_then(|c| c.inner.metrics(step));
        let now = monotonic_ns();
        for _ in 0..limit {
            let Some(m) = self.inner.try_pop() else { break };
            if let Some(metrics) = metrics {
                metrics
                    .transfer_us
                    .record(now.saturating_sub(m.header.enqueued_ns) / 1000);
            }
            list.append(message_tuple(py, &m)?)?;
        }
        Ok(list)
    }

    /// Blocks (GIL released) until a consumer frees room, the queue closes or
    /// `timeout` seconds pass. True when it is worth retrying the push.
    fn wait_space(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let deadline = deadline_after(Some(timeout))?;
        let mut pending = None;
        let outcome = py.detach(|| {
            self.inner
                .wait_space(deadline, &mut signal_checker(&mut pending))
        });
        if let Some(e) = pending {
            return Err(e);
        }
        Ok(outcome == Wait::Ready)
    }

    /// Spins (GIL released, no syscalls) up to `budget_us` microseconds for a
    /// message to become ready; True if one is.
    fn spin_ready(&self, py: Python<'_>, budget_us: u64) -> bool {
        py.detach(|| {
            self.inner
                .spin_until_ready(Duration::from_micros(budget_us))
        })
    }

    /// Fault injection for tests: leaves an unfinished message, as a producer
    /// killed mid-push would.
    fn _abandon_push(&self, payload_len: usize) -> PyResult<()> {
        self.inner.abandon_push(payload_len).map_err(to_py_err)
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

/// A flow's control block: claim slots of the workers and the cancel set.
#[pyclass(module = "aqueduct._core", name = "Control", frozen)]
struct PyControl {
    inner: Control,
}

#[pymethods]
impl PyControl {
    /// `slots` worker claim slots; metrics for `steps` steps.
    #[staticmethod]
    #[pyo3(signature = (slots, steps=1))]
    fn create(slots: usize, steps: usize) -> PyResult<Self> {
        Ok(PyControl {
            inner: Control::create(slots, steps).map_err(to_py_err)?,
        })
    }

    #[staticmethod]
    fn open(fd: i32) -> PyResult<Self> {
        Ok(PyControl {
            inner: Control::open(dup_fd(fd)?).map_err(to_py_err)?,
        })
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.inner.raw_fd()
    }

    /// Marks task `key` cancelled: workers drop it instead of handling it.
    fn cancel(&self, key: u64) {
        self.inner.cancel(key);
    }

    fn uncancel(&self, key: u64) {
        self.inner.uncancel(key);
    }

    fn is_cancelled(&self, key: u64) -> bool {
        self.inner.is_cancelled(key)
    }

    /// The next client slot (each process submitting tasks takes one).
    fn claim_client(&self) -> u64 {
        self.inner.claim_client()
    }

    /// Keys of the tasks the worker of `slot` holds right now.
    fn claims(&self, slot: usize) -> Vec<u64> {
        self.inner.claims(slot)
    }

    fn clear_claims(&self, slot: usize) {
        self.inner.clear_claims(slot);
    }

    /// A step's handler ran a batch of `tasks` tasks in `micros` µs.
    fn record_handle(&self, step: usize, micros: u64, tasks: u64) {
        if let Some(m) = self.inner.metrics(step) {
            m.handle_us.record(micros);
            m.batch_size.record(tasks);
            m.handled
                .fetch_add(tasks, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Step `step`'s metrics: counters, and histograms as
    /// `(count, sum, buckets)` where bucket `i` counts values below `2**i`.
    fn metrics<'py>(&self, py: Python<'py>, step: usize) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(m) = self.inner.metrics(step) else {
            return Ok(None);
        };
        let snap = m.snapshot();
        let d = PyDict::new(py);
        for (name, h) in [
            ("handle_us", &snap.handle_us),
            ("batch_us", &snap.batch_us),
            ("batch_size", &snap.batch_size),
            ("transfer_us", &snap.transfer_us),
        ] {
            d.set_item(name, (h.count, h.sum, h.buckets.clone()))?;
        }
        d.set_item("handled", snap.handled)?;
        d.set_item("expired", snap.expired)?;
        d.set_item("cancelled", snap.cancelled)?;
        Ok(Some(d))
    }
}

/// Assembles batches for one worker from its step's queue.
#[pyclass(module = "aqueduct._core", frozen)]
struct Batcher {
    assembler: BatchAssembler,
    /// An exception a signal handler raised while tasks were already in hand:
    /// the tasks are delivered first, the exception on the next call.
    deferred: Mutex<Option<PyErr>>,
}

#[pymethods]
impl Batcher {
    #[new]
    #[pyo3(signature = (batch_size=1, batch_timeout=0.0))]
    fn new(batch_size: usize, batch_timeout: f64) -> PyResult<Self> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be >= 1"));
        }
        if batch_timeout.is_nan() || batch_timeout < 0.0 {
            return Err(PyValueError::new_err("batch_timeout must be >= 0"));
        }
        Ok(Batcher {
            assembler: BatchAssembler::new(BatchPolicy {
                size: batch_size,
                timeout: Duration::from_secs_f64(batch_timeout.min(1e6)),
            }),
            deferred: Mutex::new(None),
        })
    }

    /// Waits (GIL released) for the next batch from `queue`.
    ///
    /// Returns `None` once the queue is closed and drained; otherwise
    /// `(messages, expired)` where `messages` are `(key, kind, priority,
    /// deadline_ns, payload)` tuples — empty when `idle_timeout` passed with nothing to do.
    /// Frees the taken room (ringing the `doorbells` of clients waiting for it).
    #[pyo3(signature = (queue, idle_timeout, doorbells=Vec::new(), control=None, slot=0, step=0))]
    #[allow(clippy::too_many_arguments)]
    fn next<'py>(
        &self,
        py: Python<'py>,
        queue: &Queue,
        idle_timeout: Option<f64>,
        doorbells: Vec<Py<Doorbell>>,
        control: Option<&PyControl>,
        slot: usize,
        step: usize,
    ) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>)>> {
        if let Some(e) = self.deferred.lock().ok().and_then(|mut d| d.take()) {
            return Err(e);
        }
        let deadline = deadline_after(idle_timeout)?;
        let mut pending = None;
        let batch = py.detach(|| {
            let claims = control.map(|c| Claims {
                control: &c.inner,
                slot,
                step,
            });
            let batch = self.assembler.next_batch_claimed(
                &queue.inner,
                deadline,
                &mut signal_checker(&mut pending),
                claims,
            );
            if !batch.messages.is_empty() || !batch.expired.is_empty() {
                let bells: Vec<&EventFd> = doorbells.iter().map(|d| &d.get().inner).collect();
                queue.inner.released(&bells);
            }
            batch
        });
        let list = PyList::empty(py);
        for m in &batch.messages {
            list.append(message_tuple(py, m)?)?;
        }
        let expired = PyList::empty(py);
        for m in &batch.expired {
            expired.append(message_tuple(py, m)?)?;
        }
        if let Some(e) = pending {
            if batch.messages.is_empty() {
                return Err(e);
            }
            if let Ok(mut deferred) = self.deferred.lock() {
                *deferred = Some(e);
            }
        }
        if batch.closed && batch.messages.is_empty() {
            return Ok(None);
        }
        Ok(Some((list, expired)))
    }
}

/// Nanoseconds of CLOCK_MONOTONIC (the clock of task deadlines).
#[pyfunction]
fn monotonic_ns_now() -> u64 {
    monotonic_ns()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Queue>()?;
    m.add_class::<Doorbell>()?;
    m.add_class::<Batcher>()?;
    m.add_class::<PyControl>()?;
    m.add_class::<shm::SharedArena>()?;
    m.add_class::<shm::ShmView>()?;
    m.add_function(wrap_pyfunction!(monotonic_ns_now, m)?)?;
    Ok(())
}
