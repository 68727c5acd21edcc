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

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use aqueduct_core::spin::machine_is_crowded;
use aqueduct_core::wire::{
    base_kind, split_state, state_prefix, FLAG_REFS, INLINE_LIMIT, KIND_DROPPED, KIND_ERROR,
    KIND_STATE, KIND_TASK,
};
use aqueduct_core::{monotonic_ns, Message, MessageHeader, Pending};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyDictMethods, PyFloat, PyInt, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::calls::{call1, call_method1, instance_dict, set_instance_dict};
use crate::control::PyControl;
use crate::queue::{Doorbell, Queue};
use crate::{pickle, state};

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

/// A finished task as it came back: an object, or a `KIND_STATE` body.
enum Finished<'py, 'a> {
    Object(Bound<'py, PyAny>),
    State(&'a [u8]),
}

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

/// The event loop this client's futures belong to, and its callbacks.
struct Loop {
    create_future: Py<PyAny>,
    /// `{"loop": loop}` when `create_future` is asyncio's own: futures are
    /// then made as `asyncio.Future(loop=loop)`, with no Python frame.
    future_kwargs: Option<Py<PyDict>>,
    call_at: Py<PyAny>,
    call_soon: Py<PyAny>,
    time: Py<PyAny>,
    /// `client.expire` and `client.flush`, bound once.
    expire: Py<PyAny>,
    flush: Py<PyAny>,
    timer: Option<Py<PyAny>>,
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
    classify: Py<PyAny>,
    /// The Python half: `result(kind, payload)`, `error(payload)`,
    /// `release(key)`, `unwanted(payload)`.
    slow: Py<PyAny>,
    spin: Duration,
    state: Mutex<State>,
}

fn exception_type<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyType>> {
    cell.import(py, "aqueduct.exceptions", name)
}

fn future_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static FUTURE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    FUTURE.import(py, "asyncio", "Future")
}

fn timeout_error(py: Python<'_>, timeout_s: f64) -> PyResult<Bound<'_, PyAny>> {
    static TIMEOUT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let message = format!("Task timeout error: not done in {timeout_s} s");
    exception_type(py, &TIMEOUT, "TaskTimeoutError")?.call1((message,))
}

impl Client {
    fn state(&self) -> PyResult<std::sync::MutexGuard<'_, State>> {
        // Every method runs with the GIL held and never calls Python while
        // holding the lock, so it is only ever contended by a bug.
        self.state
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("aqueduct client state is in use"))
    }

    /// The `classify` bits of the task's class and its `KIND_STATE` prefix.
    fn class_of(&self, task: &Bound<'_, PyAny>) -> PyResult<(u32, Option<Vec<u8>>)> {
        let ty = task.get_type();
        let id = ty.as_ptr() as usize;
        if let Some(info) = self.state()?.classes.get(&id) {
            return Ok((info.bits, info.prefix.clone()));
        }
        let py = task.py();
        let bits: u32 = self.classify.bind(py).call1((&ty,))?.extract()?;
        let prefix = if bits & CLASS_STATE != 0 {
            let module: String = ty.getattr(intern!(py, "__module__"))?.extract()?;
            let qualname: String = ty.getattr(intern!(py, "__qualname__"))?.extract()?;
            state_prefix(format!("{module}\0{qualname}").as_bytes())
        } else {
            None
        };
        let bits = if prefix.is_none() {
            bits & !CLASS_STATE
        } else {
            bits
        };
        let info = ClassInfo {
            _class: ty.unbind(),
            bits,
            prefix: prefix.clone(),
        };
        self.state()?.classes.insert(id, info);
        Ok((bits, prefix))
    }

    /// The fast path of `submit`: `Ok(None)` when the task needs the Python path.
    fn submit_fast<'py>(
        &self,
        task: &Bound<'py, PyAny>,
        timeout_s: f64,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = task.py();
        if self.steps.is_empty() || self.state()?.backlogged & 1 != 0 {
            return Ok(None);
        }
        let (bits, prefix) = self.class_of(task)?;
        if bits & CLASS_FAST == 0 {
            return Ok(None);
        }
        let fields = instance_dict(task)?;
        let Some(priority) = self.priority(&fields)? else {
            return Ok(None);
        };
        let expires = monotonic_ns() as f64 / 1e9 + timeout_s;
        fields.set_item(intern!(py, "expiration_time"), PyFloat::new(py, expires))?;
        let first = if self.condition_is_truth {
            task.is_truthy()?
        } else {
            call1(self.first_condition.bind(py), task)?.is_truthy()?
        };
        if !first || pickle::has_big_bytes(&fields) {
            return Ok(None);
        }
        // a task that cannot be pickled fails on the Python path, which says why
        let (kind, payload) = match prefix {
            Some(mut payload) => match state::encode(&fields, &mut payload) {
                Ok(true) => (KIND_STATE, payload),
                _ => return Ok(None),
            },
            None => match pickle::dumps(py, task) {
                Ok(Some(pickled)) if pickled.as_bytes().len() <= INLINE_LIMIT => {
                    (KIND_TASK, pickled.as_bytes().to_vec())
                }
                _ => return Ok(None),
            },
        };
        let queue = &self.steps[0].get().inner;
        let (key, lone) = {
            let mut state = self.state()?;
            let key = state.pending.next_key();
            (key, state.pending.is_empty())
        };
        self.control.get().inner.uncancel(key);
        let header = MessageHeader {
            key,
            deadline_ns: (expires * 1e9) as u64,
            kind,
            priority,
            enqueued_ns: 0,
        };
        if queue.push(&header, &payload).is_err() {
            return Ok(None); // full (or closed): the Python path backlogs or raises
        }
        let future = self.register_entry(py, key, task, timeout_s, true)?;
        self.wake(py, 0, lone)?;
        if lone {
            self.spin_for_result(py)?;
        }
        Ok(Some(future))
    }

    /// The task's priority level, clamped (and set back) when the flow has
    /// levels; `None` for a value only the Python path understands.
    fn priority(&self, fields: &Bound<'_, PyDict>) -> PyResult<Option<u32>> {
        let py = fields.py();
        let Some(value) = fields.get_item(intern!(py, "priority"))? else {
            return Ok(Some(0));
        };
        let Ok(value) = value.cast_exact::<PyInt>() else {
            return Ok(None);
        };
        let level: i64 = value.extract().unwrap_or(-1);
        let clamped = level.clamp(0, i64::from(self.priorities) - 1);
        if clamped != level {
            fields.set_item(intern!(py, "priority"), clamped)?;
        }
        Ok(Some(clamped as u32))
    }

    fn register_entry<'py>(
        &self,
        py: Python<'py>,
        key: u64,
        task: &Bound<'py, PyAny>,
        timeout_s: f64,
        plain: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (create_future, kwargs) = {
            let state = self.state()?;
            let Some(event_loop) = &state.event_loop else {
                return Err(PyRuntimeError::new_err("aqueduct client has no event loop"));
            };
            (
                event_loop.create_future.clone_ref(py),
                event_loop.future_kwargs.as_ref().map(|k| k.clone_ref(py)),
            )
        };
        let future = match kwargs {
            Some(kwargs) => future_type(py)?.call((), Some(kwargs.bind(py)))?,
            None => create_future.bind(py).call0()?,
        };
        let deadline_ns = monotonic_ns().saturating_add((timeout_s * 1e9) as u64);
        let arm = self.state()?.pending.insert(
            key,
            Entry {
                future: future.clone().unbind(),
                task: task.clone().unbind(),
                plain,
                timeout_s,
            },
            deadline_ns,
        );
        if let Some(at) = arm {
            self.arm_timer(py, at)?;
        }
        Ok(future)
    }

    /// Sets the loop timer to fire at `deadline_ns` (CLOCK_MONOTONIC),
    /// replacing the one set before.
    fn arm_timer(&self, py: Python<'_>, deadline_ns: u64) -> PyResult<()> {
        let (time, call_at, expire, old) = {
            let mut state = self.state()?;
            let Some(event_loop) = state.event_loop.as_mut() else {
                return Ok(());
            };
            (
                event_loop.time.clone_ref(py),
                event_loop.call_at.clone_ref(py),
                event_loop.expire.clone_ref(py),
                event_loop.timer.take(),
            )
        };
        if let Some(old) = old {
            old.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        let now: f64 = time.bind(py).call0()?.extract()?;
        let delay = deadline_ns.saturating_sub(monotonic_ns()) as f64 / 1e9;
        let timer = call_at.bind(py).call1((now + delay, expire))?;
        if let Some(event_loop) = self.state()?.event_loop.as_mut() {
            event_loop.timer = Some(timer.unbind());
        }
        Ok(())
    }

    /// Wakes step `step`'s workers: at once for a lone task, else once for
    /// every task the loop's current iteration sends (see the module docs).
    fn wake(&self, py: Python<'_>, step: usize, lone: bool) -> PyResult<()> {
        if lone {
            self.steps[step].get().inner.notify(None);
            return Ok(());
        }
        let flush = {
            let mut state = self.state()?;
            state.deferred |= 1 << step;
            if state.flush_scheduled {
                None
            } else {
                state.flush_scheduled = true;
                state
                    .event_loop
                    .as_ref()
                    .map(|l| (l.call_soon.clone_ref(py), l.flush.clone_ref(py)))
            }
        };
        if let Some((call_soon, flush)) = flush {
            call_soon.bind(py).call1((flush,))?;
        }
        Ok(())
    }

    /// With one task in flight, waits for its result by spinning on shared
    /// memory (GIL released) instead of a kernel wake-up through the loop.
    fn spin_for_result(&self, py: Python<'_>) -> PyResult<()> {
        if self.spin.is_zero() {
            return Ok(());
        }
        {
            let mut state = self.state()?;
            // the first task of a burst is alone for an instant: its
            // siblings are about to be submitted, don't hold them up
            if state.last_settled > 1 {
                return Ok(());
            }
            state.spin_calls = state.spin_calls.wrapping_add(1);
            if state.spin_misses >= SPIN_MISS_LIMIT && state.spin_calls % SPIN_PROBE_EVERY != 0 {
                return Ok(());
            }
        }
        if machine_is_crowded() {
            return Ok(());
        }
        let results = &self.results.get().inner;
        let spin = self.spin;
        let ready = py.detach(|| results.spin_until_ready(spin));
        {
            let mut state = self.state()?;
            state.spin_misses = if ready { 0 } else { state.spin_misses + 1 };
        }
        if ready {
            self.resolve_ready(py)?;
        }
        Ok(())
    }

    /// Takes every ready result and settles its task.
    fn resolve_ready(&self, py: Python<'_>) -> PyResult<()> {
        let results = &self.results.get().inner;
        let control = &self.control.get().inner;
        let metrics = self.metrics_step.and_then(|step| control.metrics(step));
        loop {
            let now = monotonic_ns();
            let mut messages: Vec<Message> = Vec::new();
            while messages.len() < DRAIN_LIMIT {
                let Some(m) = results.try_pop() else { break };
                if let Some(metrics) = metrics {
                    metrics
                        .transfer_us
                        .record(now.saturating_sub(m.header.enqueued_ns) / 1000);
                }
                messages.push(m);
            }
            let drained = messages.len();
            if drained > 0 {
                self.state()?.last_settled = drained;
            }
            let settled: Vec<(Message, Option<Entry>, bool)> = {
                let mut state = self.state()?;
                messages
                    .into_iter()
                    .map(|m| {
                        let key = m.header.key;
                        let entry = if base_kind(m.header.kind) == KIND_DROPPED {
                            None
                        } else {
                            state.pending.remove(key)
                        };
                        let held = state.held.remove(&key);
                        (m, entry, held)
                    })
                    .collect()
            };
            // every message is settled, whatever fails: a future left behind
            // would never be resolved (its entry is gone)
            let mut failure = None;
            for (message, entry, held) in settled {
                let released = || {
                    self.slow
                        .bind(py)
                        .call_method1(intern!(py, "release"), (message.header.key,))
                        .map(drop)
                };
                let done = self.settle(py, &message, entry).and_then(|()| {
                    if held {
                        released()
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = done {
                    failure.get_or_insert(e);
                }
            }
            if drained > 0 {
                results.released(&[]);
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if drained < DRAIN_LIMIT && !results.arm_doorbell() {
                return Ok(());
            }
        }
    }

    /// Delivers one message to its task's future.
    fn settle(&self, py: Python<'_>, message: &Message, entry: Option<Entry>) -> PyResult<()> {
        let kind = message.header.kind;
        let slow = self.slow.bind(py);
        let entry = match entry {
            Some(entry) if !is_done(entry.future.bind(py))? => entry,
            _ => {
                if kind & FLAG_REFS != 0 {
                    slow.call_method1(intern!(py, "unwanted"), (message.payload(),))?;
                }
                return Ok(());
            }
        };
        let outcome = if base_kind(kind) == KIND_ERROR {
            slow.call_method1(intern!(py, "error"), (message.payload(),))
                .map_or_else(|e| Err(e.into_value(py).into_bound(py).into_any()), Err)
        } else {
            let finished = if kind == KIND_STATE {
                split_state(message.payload())
                    .map(|(_, body)| Finished::State(body))
                    .ok_or_else(state::corrupt)
            } else if kind & FLAG_REFS == 0 {
                pickle::loads(py, &PyBytes::new(py, message.payload())).map(Finished::Object)
            } else {
                Err(PyRuntimeError::new_err("shared memory"))
            }
            .or_else(|_| {
                // the Python half builds it, or says why not (TaskSerializationError)
                slow.call_method1(intern!(py, "result"), (kind, message.payload()))
                    .map(Finished::Object)
            });
            finished
                .and_then(|f| Self::update(py, &entry, f))
                .map_err(|e| e.into_value(py).into_bound(py).into_any())
        };
        {
            let mut state = self.state()?;
            match outcome {
                Ok(()) => state.counts.done += 1,
                Err(_) => state.counts.failed += 1,
            }
        }
        resolve(entry.future.bind(py), outcome)
    }

    /// Copies what the handlers set onto the caller's task.
    fn update(py: Python<'_>, entry: &Entry, finished: Finished<'_, '_>) -> PyResult<()> {
        let task = entry.task.bind(py);
        match finished {
            Finished::Object(object) if !entry.plain => {
                call_method1(task, intern!(py, "update"), &object)?;
            }
            Finished::Object(object) => {
                let state = instance_dict(&object)?.copy()?;
                for name in [
                    intern!(py, "task_id"),
                    intern!(py, "priority"),
                    intern!(py, "expiration_time"),
                ] {
                    if state.contains(name)? {
                        state.del_item(name)?;
                    }
                }
                instance_dict(task)?.update(state.as_mapping())?;
            }
            Finished::State(body) if entry.plain => state::apply(py, body, &instance_dict(task)?)?,
            Finished::State(body) => {
                let ty = task.get_type();
                let object = call_method1(&ty, intern!(py, "__new__"), &ty)?;
                set_instance_dict(&object, &state::decode(py, body)?)?;
                call_method1(task, intern!(py, "update"), &object)?;
            }
        }
        Ok(())
    }

    /// Fails every one of `entries` with `exc` (each, whatever fails).
    fn fail(py: Python<'_>, entries: Vec<(u64, Entry)>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut failure = None;
        for (_, entry) in entries {
            if let Err(e) = resolve(entry.future.bind(py), Err(exc.clone())) {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// True when `future` is done (resolved or cancelled).
fn is_done(future: &Bound<'_, PyAny>) -> PyResult<bool> {
    future
        .call_method0(intern!(future.py(), "done"))?
        .is_truthy()
}

/// Resolves `future` with True or the exception, unless it is done already.
fn resolve(future: &Bound<'_, PyAny>, outcome: Result<(), Bound<'_, PyAny>>) -> PyResult<()> {
    let py = future.py();
    if is_done(future)? {
        return Ok(());
    }
    match outcome {
        Ok(()) => call_method1(
            future,
            intern!(py, "set_result"),
            PyBool::new(py, true).as_any(),
        ),
        Err(exc) => call_method1(future, intern!(py, "set_exception"), &exc),
    }
    .map(drop)
}

#[pymethods]
impl Client {
    /// `steps`: every step's input queue; `results`, `doorbell`: this
    /// client's; `metrics_step`: where result transfer times go (None: off).
    #[new]
    #[pyo3(signature = (client, steps, results, doorbell, control, priorities, first_condition, classify, slow, metrics_step=None, spin_us=0))]
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
        let default = py
            .import("asyncio")?
            .getattr("BaseEventLoop")?
            .getattr("create_future")?;
        let own = event_loop.get_type().getattr("create_future")?;
        let future_kwargs = if own.is(&default) {
            let kwargs = PyDict::new(py);
            kwargs.set_item("loop", event_loop)?;
            Some(kwargs.unbind())
        } else {
            None
        };
        let new = Loop {
            create_future: event_loop.getattr("create_future")?.unbind(),
            future_kwargs,
            call_at: event_loop.getattr("call_at")?.unbind(),
            call_soon: event_loop.getattr("call_soon")?.unbind(),
            time: event_loop.getattr("time")?.unbind(),
            expire: slf.getattr("expire")?.unbind(),
            flush: slf.getattr("flush")?.unbind(),
            timer: None,
        };
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
    fn flush(&self) -> PyResult<()> {
        let deferred = {
            let mut state = self.state()?;
            state.flush_scheduled = false;
            std::mem::take(&mut state.deferred)
        };
        for (step, queue) in self.steps.iter().enumerate() {
            if deferred & (1 << step) != 0 {
                queue.get().inner.notify(None);
            }
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
