//! `Client`: what one process does per task when it calls `Flow.process`,
//! over the core's [`ClientCore`] (keys, pushing, backlogs, answers,
//! deadlines, cancels, the blocks tasks hold — shared with the HTTP server).
//!
//! This binding adds what is Python's: classifying task classes (once per
//! class), the priority and deadline fields, picking the first step whose
//! `handle_condition` holds, pickling (the C pickler, or a task's
//! `__dict__` as a `KIND_STATE` body), asyncio futures and the loop's
//! timer, and copying finished fields onto the caller's task. What involves
//! shared memory or cloudpickle is asked of the Python half
//! (`aqueduct._client`): `encode`, `discard`, `result`, `error`,
//! `unwanted`, `corrupt`. Each task's path is decided here, once.

mod event_loop;
mod settle;
mod submit;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use aqueduct_core::ClientCore;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use self::event_loop::{timeout_error, Loop};
use self::settle::resolve;

/// Answers taken from the queue per pass before the doorbell is re-armed.
const DRAIN_LIMIT: usize = 4096;

/// What the client knows of a task class.
struct ClassInfo {
    /// Kept alive, so its address (the map's key) is not reused.
    _class: Py<PyType>,
    /// Its `classify` bits (`CLASS_*` of the core's wire module).
    bits: u32,
    /// For `CLASS_STATE` classes, the prefix of their `KIND_STATE` payloads.
    prefix: Option<Vec<u8>>,
}

/// A task in flight: what waits for it and where its results go.
pub(crate) struct Entry {
    future: Py<PyAny>,
    task: Py<PyAny>,
    /// Results are copied field by field into the task's `__dict__`;
    /// otherwise `task.update(finished)` is called.
    plain: bool,
    timeout_s: f64,
    /// A streamed task's parts go to `sink().put(part)` (a weak reference
    /// to `Flow.stream`'s iterator).
    sink: Option<Py<PyAny>>,
}

struct State {
    core: ClientCore<Entry>,
    /// type pointer -> what `classify` said of it
    classes: HashMap<usize, ClassInfo>,
    /// future address -> task key, to cancel by future in O(1)
    keys: HashMap<usize, u64>,
    event_loop: Option<Loop>,
}

impl State {
    /// Forgets the key of a task that left the core.
    fn forget(&mut self, entry: &Entry) {
        self.keys.remove(&(entry.future.as_ptr() as usize));
    }
}

/// One process's side of a flow (see the module docs).
#[pyclass(module = "aqueduct._core", frozen)]
pub(crate) struct Client {
    /// Every step's `handle_condition`, in order.
    conditions: Vec<Py<PyAny>>,
    /// `operator.truth`, to test a task's truth without calling it.
    truth: Py<PyAny>,
    priorities: u32,
    /// The steps' names and the queues' bound, for `QueueFullError`.
    step_names: Vec<String>,
    queue_size: Option<u64>,
    classify: Py<PyAny>,
    /// The Python half (see the module docs).
    slow: Py<PyAny>,
    state: Mutex<State>,
}

impl Client {
    fn state(&self) -> PyResult<MutexGuard<'_, State>> {
        // Every method runs with the GIL held and never calls Python while
        // holding the lock, so it is only ever contended by a bug.
        self.state
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("aqueduct client state is in use"))
    }
}

#[pymethods]
impl Client {
    /// `steps`: every step's input queue; `results`, `doorbell`, `arena`:
    /// this client's; `metrics_step`: where the time answers waited goes
    /// (None: off).
    #[new]
    #[pyo3(signature = (slot, steps, results, doorbell, control, arena, conditions, classify, slow, *, priorities=1, reject_when_full=false, step_names=Vec::new(), queue_size=None, metrics_step=None, spin_us=0, first_batch_size=1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        slot: u32,
        steps: Vec<PyRef<'_, crate::queue::Queue>>,
        results: PyRef<'_, crate::queue::Queue>,
        doorbell: PyRef<'_, crate::queue::Doorbell>,
        control: PyRef<'_, crate::control::PyControl>,
        arena: PyRef<'_, crate::shm::SharedArena>,
        conditions: Vec<Py<PyAny>>,
        classify: Py<PyAny>,
        slow: Py<PyAny>,
        priorities: u32,
        reject_when_full: bool,
        step_names: Vec<String>,
        queue_size: Option<u64>,
        metrics_step: Option<usize>,
        spin_us: u64,
        first_batch_size: usize,
    ) -> PyResult<Self> {
        use std::sync::Arc;
        let config = aqueduct_core::ClientConfig {
            slot,
            reject_when_full,
            eager: first_batch_size <= 1,
            spin: std::time::Duration::from_micros(spin_us),
            metrics_step,
        };
        let queues = aqueduct_core::ClientQueues {
            steps: steps.iter().map(|q| Arc::clone(&q.inner)).collect(),
            results: Arc::clone(&results.inner),
            doorbell: Some(Arc::clone(&doorbell.inner)),
            control: Arc::clone(&control.inner),
            arena: Some(Arc::clone(&arena.inner)),
        };
        let core = ClientCore::new(config, queues).map_err(crate::to_py_err)?;
        Ok(Client {
            conditions,
            truth: py.import("operator")?.getattr("truth")?.unbind(),
            priorities: priorities.max(1),
            step_names,
            queue_size,
            classify,
            slow,
            state: Mutex::new(State {
                core,
                classes: HashMap::new(),
                keys: HashMap::new(),
                event_loop: None,
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
        let next = {
            let mut state = this.state()?;
            state.event_loop = Some(new);
            state.core.next_deadline()
        };
        if let Some(at) = next {
            this.arm_timer(py, at)?;
        }
        Ok(())
    }

    /// Sends `task` to the flow and returns its future, resolved once the
    /// handlers' fields are set on `task` (or failed with the flow's
    /// error); None when no step's condition holds for it. With a `sink`
    /// (a weak reference), the task is streamed: each part a handler emits
    /// is given to `sink().put(part)` as it comes, before the future is
    /// resolved.
    #[pyo3(signature = (task, timeout_sec, sink=None))]
    fn submit<'py>(
        &self,
        task: &Bound<'py, PyAny>,
        timeout_sec: f64,
        sink: Option<Py<PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.submit_task(task, timeout_sec, sink)
    }

    /// The doorbell rang: settles every ready answer, then sends what
    /// waits for room in a full queue.
    fn resolve(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(bell) = &self.state()?.core.queues().doorbell {
            bell.drain();
        }
        let settled = self.resolve_ready(py);
        let failed = {
            let mut state = self.state()?;
            if state.core.has_backlog() {
                let failed = state.core.push_backlogs();
                for (entry, _) in &failed {
                    state.forget(entry);
                }
                failed
            } else {
                Vec::new()
            }
        };
        for (entry, error) in failed {
            resolve(
                entry.future.bind(py),
                Err(crate::to_py_err(error)
                    .into_value(py)
                    .into_bound(py)
                    .into_any()),
            )?;
        }
        settled
    }

    /// The loop timer fired: fails the tasks whose timeout passed.
    fn expire(&self, py: Python<'_>) -> PyResult<()> {
        let (due, next) = {
            let mut state = self.state()?;
            if let Some(event_loop) = state.event_loop.as_mut() {
                event_loop.timer = None;
            }
            let (due, next) = state.core.expire(aqueduct_core::monotonic_ns());
            for (_, entry) in &due {
                state.forget(entry);
            }
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
        let lone = self.state()?.core.flush();
        if lone {
            self.spin_for_result(py)?; // one task in flight: as in `submit`
        }
        Ok(())
    }

    /// The caller waiting on `future` gave up: workers skip its task.
    fn cancel(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut state = self.state()?;
        if let Some(key) = state.keys.remove(&(future.as_ptr() as usize)) {
            state.core.cancel(key);
        }
        Ok(())
    }

    /// Fails every task in flight with `exc`.
    fn fail_all(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let entries = {
            let mut state = self.state()?;
            state.keys.clear();
            state.core.fail_all()
        };
        let mut failure = None;
        for (_, entry) in entries {
            if let Err(e) = resolve(entry.future.bind(py), Err(exc.clone())) {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// The futures of the tasks in flight.
    fn futures(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        Ok(self
            .state()?
            .core
            .waiters()
            .map(|e| e.future.clone_ref(py))
            .collect())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.state()?.core.len())
    }

    /// How the tasks given to this client ended.
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let counts = self.state()?.core.counts();
        let out = PyDict::new(py);
        out.set_item("done", counts.done)?;
        out.set_item("failed", counts.failed)?;
        out.set_item("timeout", counts.timeout)?;
        out.set_item("cancelled", counts.cancelled)?;
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
        for condition in &self.conditions {
            visit.call(condition)?;
        }
        if let Ok(state) = self.state.try_lock() {
            if let Some(l) = &state.event_loop {
                for obj in l.objects() {
                    visit.call(obj)?;
                }
            }
            for entry in state.core.waiters() {
                visit.call(&entry.future)?;
                visit.call(&entry.task)?;
                if let Some(sink) = &entry.sink {
                    visit.call(sink)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        if let Ok(mut state) = self.state.try_lock() {
            state.event_loop = None;
            state.classes.clear();
            state.keys.clear();
            drop(state.core.fail_all());
        }
    }
}
