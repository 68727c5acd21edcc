//! `Client`: what one process does per task when it calls `Flow.process`.
//!
//! The per-task path runs here, with no Python frame: pickling the task,
//! allocating its key, pushing it into the first step's queue, creating its
//! future, keeping its deadline, and, when results come back, unpickling them
//! onto the caller's task objects and resolving their futures, all the ready
//! ones in one call. What is rare or big goes through the Python half of the
//! client (`aqueduct._client`): tasks with buffers for shared memory, task
//! classes with their own `update` or `__setattr__`, a full queue, worker
//! errors.
//!
//! Wake-ups: tasks pushed during an event-loop iteration only mark their
//! queue; one notice at the start of the next iteration wakes the workers for
//! all of them, so a burst of requests costs one wake-up, not one each. A
//! lone task (a caller waiting for one task at a time) wakes them at once and
//! is waited for by spinning on the result queue for a few tens of
//! microseconds (GIL released) before going back to the loop, while that pays.

mod event_loop;
mod settle;
mod submit;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use aqueduct_core::{monotonic_ns, Pending};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use self::event_loop::{timeout_error, Loop};
use self::settle::resolve;
use crate::control::PyControl;
use crate::queue::{Doorbell, Queue};

/// Results taken from the queue per pass before the doorbell is re-armed.
const DRAIN_LIMIT: usize = 4096;
/// After this many spins in a row that saw no result, spin only on every
/// `SPIN_PROBE_EVERY`-th lone task (the handler is slower than a spin pays).
const SPIN_MISS_LIMIT: u32 = 4;
const SPIN_PROBE_EVERY: u32 = 32;

/// `classify(cls)` bit: tasks of the class may take the fast path (found by
/// name, fields in `__dict__`, BaseTask's `update`, `set_timeout` and
/// attribute setting).
pub(crate) const CLASS_FAST: u32 = 1;
/// `classify(cls)` bit: the class pickles as nothing but its `__dict__`
/// (no `__reduce__`, `__getstate__`, `__setstate__`, `__slots__`...), so its
/// tasks travel as [`KIND_STATE`] messages.
pub(crate) const CLASS_STATE: u32 = 4;

/// What `submit` returns when the task must take the Python path.
pub(crate) const SUBMIT_SLOW: u8 = 1;

/// What the client knows of a task class.
struct ClassInfo {
    /// Kept alive, so its address (the map's key) is not reused.
    _class: Py<PyType>,
    bits: u32,
    /// For `CLASS_STATE` classes, the prefix of their `KIND_STATE` payloads.
    prefix: Option<Vec<u8>>,
}

/// A task in flight: what waits for it and where its results go.
struct Entry {
    future: Py<PyAny>,
    task: Py<PyAny>,
    /// Results are copied field by field into the task's `__dict__`;
    /// otherwise `task.update(finished)` is called.
    plain: bool,
    timeout_s: f64,
}

#[derive(Default)]
struct Counts {
    done: u64,
    failed: u64,
    timeout: u64,
    cancelled: u64,
}

struct State {
    pending: Pending<Entry>,
    /// type pointer -> the type (kept alive), its `classify` bits and, for
    /// `CLASS_STATE` classes, the prefix of their `KIND_STATE` payloads
    classes: HashMap<usize, ClassInfo>,
    /// Keys whose shared-memory blocks the Python half holds.
    held: HashSet<u64>,
    /// Bit `i`: step `i` has tasks waiting in the Python half's backlog;
    /// new ones go behind them.
    backlogged: u64,
    /// Bit `i`: step `i`'s queue got tasks since its workers were woken.
    deferred: u64,
    flush_scheduled: bool,
    event_loop: Option<Loop>,
    counts: Counts,
    spin_calls: u32,
    spin_misses: u32,
    /// Results the last pass of `resolve_ready` settled: a caller that
    /// waits for one task at a time leaves one; a burst of callers, many.
    last_settled: usize,
}

/// One process's side of a flow (see the module docs).
#[pyclass(module = "aqueduct._core", frozen)]
pub(crate) struct Client {
    steps: Vec<Py<Queue>>,
    results: Py<Queue>,
    doorbell: Py<Doorbell>,
    control: Py<PyControl>,
    /// Step whose metrics record the time results waited (None: metrics off).
    metrics_step: Option<usize>,
    priorities: u32,
    first_condition: Py<PyAny>,
    /// `first_condition` is `operator.truth`: test the task's truth directly.
    condition_is_truth: bool,
    /// The first step takes one task per batch: a lone task wakes its
    /// workers at once (a batching step's waits for the iteration's end).
    eager: bool,
    classify: Py<PyAny>,
    /// The Python half: `result(kind, payload)`, `error(payload)`,
    /// `release(key)`, `unwanted(payload)`.
    slow: Py<PyAny>,
    spin: Duration,
    state: Mutex<State>,
}

impl Client {
    fn state(&self) -> PyResult<std::sync::MutexGuard<'_, State>> {
        // Every method runs with the GIL held and never calls Python while
        // holding the lock, so it is only ever contended by a bug.
        self.state
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("aqueduct client state is in use"))
    }
}

#[pymethods]
impl Client {
    /// `steps`: every step's input queue; `results`, `doorbell`: this
    /// client's; `metrics_step`: where result transfer times go (None: off).
    #[new]
    #[pyo3(signature = (client, steps, results, doorbell, control, priorities, first_condition, classify, slow, metrics_step=None, spin_us=0, first_batch_size=1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        client: u32,
        steps: Vec<Py<Queue>>,
        results: Py<Queue>,
        doorbell: Py<Doorbell>,
        control: Py<PyControl>,
        priorities: u32,
        first_condition: Py<PyAny>,
        classify: Py<PyAny>,
        slow: Py<PyAny>,
        metrics_step: Option<usize>,
        spin_us: u64,
        first_batch_size: usize,
    ) -> PyResult<Self> {
        if steps.len() > 64 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "a flow has at most 64 steps",
            ));
        }
        let truth = py.import("operator")?.getattr("truth")?;
        Ok(Client {
            steps,
            results,
            doorbell,
            control,
            metrics_step,
            priorities: priorities.max(1),
            condition_is_truth: first_condition.bind(py).is(&truth),
            eager: first_batch_size <= 1,
            first_condition,
            classify,
            slow,
            spin: Duration::from_micros(spin_us),
            state: Mutex::new(State {
                pending: Pending::new(client),
                classes: HashMap::new(),
                held: HashSet::new(),
                backlogged: 0,
                deferred: 0,
                flush_scheduled: false,
                event_loop: None,
                counts: Counts::default(),
                spin_calls: 0,
                spin_misses: 0,
                last_settled: 0,
            }),
        })
    }

    /// Binds the client to `event_loop`: its futures and timers are made
    /// there from now on.
    fn attach(slf: &Bound<'_, Self>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let old = this.state()?.event_loop.take();
        if let Some(timer) = old.and_then(|l| l.timer) {
            timer.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        let new = Loop::new(slf, event_loop)?;
        let mut state = this.state()?;
        state.event_loop = Some(new);
        state.flush_scheduled = false;
        let next = state.pending.expire(0).1;
        drop(state);
        if let Some(at) = next {
            this.arm_timer(py, at)?;
        }
        Ok(())
    }

    /// Sends `task` to the flow and returns `(key, future)`; the future is
    /// resolved once the handlers' fields are set on `task` (or fails with
    /// the flow's error). Returns `SUBMIT_SLOW` (an int) when the task must
    /// take the Python path.
    fn submit<'py>(
        &self,
        task: &Bound<'py, PyAny>,
        timeout_sec: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = task.py();
        match self.submit_fast(task, timeout_sec)? {
            Some(future) => Ok(future),
            None => Ok(SUBMIT_SLOW.into_pyobject(py)?.into_any()),
        }
    }

    /// A key for a task the Python half sends.
    fn new_key(&self) -> PyResult<u64> {
        let key = self.state()?.pending.next_key();
        self.control.get().inner.uncancel(key);
        Ok(key)
    }

    /// Registers a task the Python half sends (it pushes the message itself).
    #[pyo3(signature = (key, task, timeout_sec, plain))]
    fn register<'py>(
        &self,
        key: u64,
        task: &Bound<'py, PyAny>,
        timeout_sec: f64,
        plain: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.register_entry(task.py(), key, task, timeout_sec, plain)
    }

    /// The Python half holds shared-memory blocks for `key` until a message
    /// about it comes back (`release(key)` is called then).
    fn hold(&self, key: u64) -> PyResult<()> {
        self.state()?.held.insert(key);
        Ok(())
    }

    /// Forgets a hold the Python half released itself (a task never sent).
    fn unhold(&self, key: u64) -> PyResult<()> {
        self.state()?.held.remove(&key);
        Ok(())
    }

    /// Whether step `step` has a backlog in the Python half.
    fn set_backlogged(&self, step: usize, backlogged: bool) -> PyResult<()> {
        let mut state = self.state()?;
        if backlogged {
            state.backlogged |= 1 << step;
        } else {
            state.backlogged &= !(1 << step);
        }
        Ok(())
    }

    /// The doorbell rang: settles every ready result.
    fn resolve(&self, py: Python<'_>) -> PyResult<()> {
        self.doorbell.get().inner.drain();
        self.resolve_ready(py)
    }

    /// The loop timer fired: fails the tasks whose timeout passed.
    fn expire(&self, py: Python<'_>) -> PyResult<()> {
        let (due, next) = {
            let mut state = self.state()?;
            if let Some(event_loop) = state.event_loop.as_mut() {
                event_loop.timer = None;
            }
            let (due, next) = state.pending.expire(monotonic_ns());
            state.counts.timeout += due.len() as u64;
            (due, next)
        };
        let mut failure = None;
        for (_, entry) in due {
            let failed = timeout_error(py, entry.timeout_s)
                .and_then(|exc| resolve(entry.future.bind(py), Err(exc)));
            if let Err(e) = failed {
                failure.get_or_insert(e);
            }
        }
        if let Some(at) = next {
            self.arm_timer(py, at)?;
        }
        failure.map_or(Ok(()), Err)
    }

    /// Wakes the workers of every step that got tasks since they were woken.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let (deferred, lone) = {
            let mut state = self.state()?;
            state.flush_scheduled = false;
            (
                std::mem::take(&mut state.deferred),
                state.pending.len() == 1,
            )
        };
        for (step, queue) in self.steps.iter().enumerate() {
            if deferred & (1 << step) != 0 {
                queue.get().inner.notify(None);
            }
        }
        if lone && deferred != 0 {
            self.spin_for_result(py)?; // one task in flight: as in `submit`
        }
        Ok(())
    }

    /// The caller waiting on `future` gave up: workers skip its task.
    fn cancel(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let entry = {
            let mut state = self.state()?;
            state.counts.cancelled += 1;
            let key = state
                .pending
                .iter()
                .find(|(_, e)| e.future.is(future))
                .map(|(key, _)| key);
            key.and_then(|key| state.pending.remove(key).map(|entry| (key, entry)))
        };
        if let Some((key, _)) = entry {
            self.control.get().inner.cancel(key);
        }
        Ok(())
    }

    /// Takes task `key` out: the Python half could not send it (the caller
    /// gets that error instead).
    fn forget(&self, key: u64) -> PyResult<()> {
        let mut state = self.state()?;
        if state.pending.remove(key).is_some() {
            state.counts.failed += 1;
        }
        Ok(())
    }

    /// Fails every task in flight with `exc`.
    fn fail_all(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let entries = {
            let mut state = self.state()?;
            let entries = state.pending.drain();
            state.counts.failed += entries.len() as u64;
            entries
        };
        Self::fail(py, entries, exc)
    }

    /// The futures of the tasks in flight.
    fn futures(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        Ok(self
            .state()?
            .pending
            .values()
            .map(|e| e.future.clone_ref(py))
            .collect())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.state()?.pending.len())
    }

    /// How the tasks given to this client ended.
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        let state = self.state()?;
        out.set_item("done", state.counts.done)?;
        out.set_item("failed", state.counts.failed)?;
        out.set_item("timeout", state.counts.timeout)?;
        out.set_item("cancelled", state.counts.cancelled)?;
        Ok(out)
    }

    /// Forgets the event loop (its timer is cancelled) and the classes seen.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let event_loop = {
            let mut state = self.state()?;
            state.classes.clear();
            state.event_loop.take()
        };
        if let Some(timer) = event_loop.and_then(|l| l.timer) {
            timer.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.slow)?;
        visit.call(&self.classify)?;
        visit.call(&self.first_condition)?;
        if let Ok(state) = self.state.try_lock() {
            if let Some(l) = &state.event_loop {
                for obj in [
                    &l.create_future,
                    &l.call_at,
                    &l.call_soon,
                    &l.time,
                    &l.expire,
                    &l.flush,
                ] {
                    visit.call(obj)?;
                }
            }
            for entry in state.pending.values() {
                visit.call(&entry.future)?;
                visit.call(&entry.task)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut state) = self.state.try_lock() {
            state.event_loop = None;
            state.classes.clear();
            drop(state.pending.drain());
        }
    }
}
