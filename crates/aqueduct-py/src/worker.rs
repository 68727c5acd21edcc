//! `StepWorker`: a worker process's per-task path, with no Python frame.
//!
//! The worker's loop (`aqueduct._worker`) waits for work (GIL released),
//! then takes batches one after the other as long as some are queued, up to
//! `burst` of them, without waiting again: each batch is what is queued when
//! the one before is done, so a slow handler still gets full batches. It
//! gets each batch as a list of tasks, calls the handler, and hands the
//! batch back to be sent on. Each task's path is decided here once:
//! unpickling (or building a `KIND_STATE` task, or a task from an HTTP
//! request with the route's `task_from_request`), routing by the later
//! steps' `handle_condition`, encoding (or the route's `response_from_task`
//! for an HTTP task that is done), pushing, and the wake-ups (one per queue
//! per burst). The Python half of the worker (`slow`) is asked only for
//! what involves shared memory or cloudpickle and for error reports:
//! `load(message)` returns `(task, refs)` or the error report of a task it
//! cannot load; `encode(task, key, by_value)` returns `(kind, payload,
//! refs)`; `discard(refs)`, `retire(refs, kept)` free blocks;
//! `drop(messages)` lets dropped tasks' blocks go; `report(exc, status)`
//! describes an exception; `resolve(name)` finds a `KIND_STATE` class.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aqueduct_core::wire::{base_kind, FLAG_REFS, KIND_HTTP_REQUEST, KIND_STATE, KIND_TASK};
use aqueduct_core::{BatchPolicy, ConsumerConfig, Message, StepConsumer};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::control::PyControl;
use crate::message::PyMessage;
use crate::queue::{message_list, Doorbell, Queue};
use crate::{deadline_after, pickle, signal_checker, to_py_err};

mod http;
mod stream;
mod tasks;

pub(crate) use self::http::{chunk, HttpEnds};

/// A batch whose handler took this long sends its results on at once instead
/// of with the rest of its burst.
const SLOW_BATCH_NS: u64 = 50_000;

/// The class a `KIND_STATE` task came as, and its payloads' prefix.
struct StateClass {
    class: Py<PyAny>,
    prefix: std::sync::Arc<[u8]>,
}

impl StateClass {
    fn clone_ref(&self, py: Python<'_>) -> Self {
        StateClass {
            class: self.class.clone_ref(py),
            prefix: self.prefix.clone(),
        }
    }
}

/// A task in the handler's hands: its message, object, shared-memory refs
/// (from the Python half) and, for a `KIND_STATE` one, its class.
struct Held {
    message: Message,
    task: Py<PyAny>,
    refs: Option<Py<PyAny>>,
    class: Option<StateClass>,
    /// Continuous batching: `task.finish()` was called, so it leaves the
    /// active set after this iteration.
    finished: bool,
}

/// The current batch of a burst (or the active set of a continuous step),
/// as the Python side holds it.
#[derive(Default)]
struct Burst {
    /// Messages taken from the queue and not loaded yet.
    fresh: Vec<Message>,
    /// The tasks handed to the handler.
    held: Vec<Held>,
    /// The current batch was handed out.
    handed: bool,
    /// Continuous batching: tasks the last iteration sent on (the next
    /// admission may wait for as many to take their places).
    retired: usize,
    /// A signal handler raised while tasks were in hand: raised on the next
    /// call, after they are done.
    deferred: Option<PyErr>,
}

impl Burst {
    /// The held task `task` is.
    fn find(&mut self, task: &Bound<'_, PyAny>) -> Option<&mut Held> {
        self.held
            .iter_mut()
            .find(|h| h.task.as_ptr() == task.as_ptr())
    }
}

/// One worker's side of its step (see the module docs).
#[pyclass(module = "aqueduct._core", frozen)]
pub(crate) struct StepWorker {
    /// The core's side of the step: batches in, pushes out, wake-ups.
    consumer: Mutex<StepConsumer>,
    input: Py<Queue>,
    /// `(queue index, handle_condition)` of the steps after this one.
    later: Vec<(usize, Py<PyAny>)>,
    /// This step's own `handle_condition` (a task from an HTTP request it
    /// declines goes on without the handler).
    own: Py<PyAny>,
    /// The HTTP server's functions, when the flow is served by it.
    http: Option<HttpEnds>,
    /// `operator.truth`, to test a task's truth without calling it.
    truth: Py<PyAny>,
    slow: Py<PyAny>,
    burst: Mutex<Burst>,
    /// Continuous batching: the handler keeps an active set of at most
    /// `batch_size` tasks and finishes each when it is done.
    continuous: bool,
    batch_size: usize,
    /// `KIND_STATE` class names (module NUL qualname) -> classes.
    classes: Mutex<HashMap<Vec<u8>, StateClass>>,
}

impl StepWorker {
    fn burst(&self) -> PyResult<MutexGuard<'_, Burst>> {
        // only the worker's loop calls in, one call at a time, and never
        // while another call holds the lock across Python code
        self.burst
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("aqueduct worker state is in use"))
    }

    fn classes(&self) -> PyResult<MutexGuard<'_, HashMap<Vec<u8>, StateClass>>> {
        self.classes
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("aqueduct worker state is in use"))
    }

    fn consumer(&self) -> PyResult<MutexGuard<'_, StepConsumer>> {
        self.consumer
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("aqueduct worker state is in use"))
    }

    /// Lets dropped (expired or cancelled) tasks' blocks go: the Python
    /// half frees those of workers' arenas and tells the clients whose
    /// blocks they held; a client whose request body is in its arena (the
    /// HTTP server) is told here.
    fn drop_messages(&self, py: Python<'_>, messages: &[Message]) -> PyResult<()> {
        let list = message_list(
            py,
            messages.iter().filter(|m| m.header.kind & FLAG_REFS != 0),
        )?;
        if !list.is_empty() {
            self.slow
                .bind(py)
                .call_method1(intern!(py, "drop"), (list,))?;
        }
        for message in messages {
            if base_kind(message.header.kind) == KIND_HTTP_REQUEST && http::body_in_arena(message) {
                let mut consumer = self.consumer()?;
                let c = &mut *consumer;
                let to = waiting(py, |interrupt| c.send_dropped(message, interrupt))?;
                c.notify(to);
            }
        }
        Ok(())
    }

    /// Refuses tasks that can no longer make their latency objective: their
    /// blocks let go as a dropped task's, their callers told at once with an
    /// `OverloadedError` (429 over HTTP).
    fn reject_late(&self, py: Python<'_>, messages: &[Message]) -> PyResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        self.drop_messages(py, messages)?;
        let class = py
            .import(intern!(py, "aqueduct.exceptions"))?
            .getattr(intern!(py, "OverloadedError"))?;
        let why = "the task can no longer make its latency objective: refused before any work";
        for message in messages {
            let error = PyErr::from_value(class.call1((why,))?);
            let to = self.fail_task(py, message, error, 429)?;
            self.consumer()?.notify(to);
        }
        Ok(())
    }
}

/// Runs `f` — a push that may wait for room — with the GIL released, running
/// Python's signal handlers meanwhile (what they raise ends the wait, and
/// is raised here); a queue found corrupt raises `SharedMemoryCorruptError`.
pub(super) fn waiting<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut dyn FnMut() -> bool) -> aqueduct_core::Result<T> + Send,
) -> PyResult<T> {
    let mut pending = None;
    let done = py.detach(|| f(&mut signal_checker(&mut pending)));
    if let Some(e) = pending {
        return Err(e);
    }
    done.map_err(to_py_err)
}

/// What became of a message of a batch.
enum Load<'py> {
    /// A task for the handler, its shared-memory refs (from the Python
    /// half) and, for a `KIND_STATE` one, its class.
    Task(Bound<'py, PyAny>, Option<Py<PyAny>>, Option<StateClass>),
    /// It went to queue `.0` already: its error report, or the task
    /// itself when this step's condition declines it.
    Sent(usize),
}

impl StepWorker {
    /// A message of the batch as a task for the handler (see [`Load`]).
    fn load<'py>(&self, py: Python<'py>, message: &Message) -> PyResult<Load<'py>> {
        let (header, payload) = (message.header, message.payload());
        if header.kind & FLAG_REFS == 0 {
            let fast = match base_kind(header.kind) {
                KIND_STATE => self.load_state(py, payload)?.map(|(t, c)| (t, Some(c))),
                KIND_TASK => pickle::loads(py, &PyBytes::new(py, payload))
                    .ok()
                    .map(|t| (t, None)),
                KIND_HTTP_REQUEST => return self.load_request(py, message),
                _ => None,
            };
            if let Some((task, class)) = fast {
                return Ok(Load::Task(task, None, class));
            }
        }
        let got = self
            .slow
            .bind(py)
            .call_method1(intern!(py, "load"), (PyMessage::of(py, message),))?;
        if let Ok(report) = got.cast::<PyBytes>() {
            let to = self.send_error(py, header.key, header.priority, report.as_bytes())?;
            return Ok(Load::Sent(to));
        }
        let (task, refs): (Bound<'py, PyAny>, Py<PyAny>) = got.extract()?;
        Ok(Load::Task(task, Some(refs), None))
    }
}

#[pymethods]
impl StepWorker {
    /// `conditions`: every step's `handle_condition`, in order; `http`:
    /// the HTTP server's ends (see `HttpEnds`), when it serves the flow.
    #[new]
    #[pyo3(signature = (step, slot, queues, doorbells, control, conditions, slow, batch_size=1, batch_timeout=0.0, burst=1, http=None, continuous=false, objective=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        step: usize,
        slot: usize,
        queues: Vec<Py<Queue>>,
        doorbells: Vec<Py<Doorbell>>,
        control: Py<PyControl>,
        conditions: Vec<Py<PyAny>>,
        slow: Py<PyAny>,
        batch_size: usize,
        batch_timeout: f64,
        burst: usize,
        http: Option<HttpEnds>,
        continuous: bool,
        objective: Option<f64>,
    ) -> PyResult<Self> {
        if batch_size == 0 || burst == 0 {
            return Err(PyValueError::new_err("batch_size and burst must be >= 1"));
        }
        if batch_timeout.is_nan() || batch_timeout < 0.0 {
            return Err(PyValueError::new_err("batch_timeout must be >= 0"));
        }
        if objective.is_some_and(|o| !(o.is_finite() && o > 0.0)) {
            return Err(PyValueError::new_err(
                "objective must be a number of seconds > 0",
            ));
        }
        if conditions.len() + doorbells.len() != queues.len() || step >= conditions.len() {
            return Err(PyValueError::new_err(
                "step, conditions and queues do not fit",
            ));
        }
        let config = ConsumerConfig {
            step,
            slot,
            batch: BatchPolicy {
                size: batch_size,
                timeout: Duration::from_secs_f64(batch_timeout.min(1e6)),
                objective: objective.map(|o| Duration::from_secs_f64(o.min(1e6))),
            },
            burst,
        };
        let consumer = StepConsumer::new(
            config,
            queues.iter().map(|q| Arc::clone(&q.get().inner)).collect(),
            doorbells
                .iter()
                .map(|d| Arc::clone(&d.get().inner))
                .collect(),
            Arc::clone(&control.get().inner),
        )
        .map_err(to_py_err)?;
        let own = conditions[step].clone_ref(py);
        let later = conditions.into_iter().enumerate().skip(step + 1).collect();
        Ok(StepWorker {
            consumer: Mutex::new(consumer),
            input: queues[step].clone_ref(py),
            later,
            own,
            http,
            truth: py.import("operator")?.getattr("truth")?.unbind(),
            slow,
            burst: Mutex::new(Burst::default()),
            continuous,
            batch_size,
            classes: Mutex::new(HashMap::new()),
        })
    }

    /// Waits (GIL released) for work: True when a batch is ready, False
    /// when `idle_timeout` passed with nothing to do, None once the queue is
    /// closed and drained.
    fn next(&self, py: Python<'_>, idle_timeout: Option<f64>) -> PyResult<Option<bool>> {
        self.wait_for_work(py, idle_timeout)
    }

    /// The tasks of the next batch, unpickled: the one `next` waited for,
    /// then, up to the burst's limit, whatever is queued by now (empty when
    /// nothing is: the burst is over).
    fn batch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let take_more = std::mem::replace(&mut self.burst()?.handed, true);
        if take_more {
            let Some(batch) = self.consumer()?.next_in_burst().map_err(to_py_err)? else {
                return Ok(PyList::empty(py)); // the burst took its most batches
            };
            self.drop_messages(py, &batch.expired)?;
            self.reject_late(py, &batch.late)?;
            self.burst()?.fresh = batch.messages;
        }
        let held = self.load_fresh(py)?;
        let tasks = PyList::new(py, held.iter().map(|h| h.task.bind(py)))?;
        self.burst()?.held = held;
        Ok(tasks)
    }

    /// Continuous batching: the active set for the handler's next
    /// iteration — the tasks it holds, joined by what is queued now (up to
    /// `batch_size` in all), less those cancelled or expired meanwhile.
    /// Waits (as `next`) only while it holds none: an empty list when
    /// `idle_timeout` passed, None once the queue is closed and drained.
    fn active<'py>(
        &self,
        py: Python<'py>,
        idle_timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        self.next_iteration(py, idle_timeout)
    }

    /// Sends the handled tasks of the current batch on: to the next step
    /// whose condition holds, or back to their clients (continuous
    /// batching: the finished ones only; the rest stay active). `took_ns`:
    /// how long the handler took (recorded in the step's metrics); a batch
    /// that took [`SLOW_BATCH_NS`] or more wakes the next consumers at once
    /// instead of with the rest of its burst.
    #[pyo3(signature = (took_ns=0))]
    fn forward(&self, py: Python<'_>, took_ns: u64) -> PyResult<()> {
        let (work, handled) = {
            let mut burst = self.burst()?;
            let handled = burst.held.len();
            let work = if self.continuous {
                let (done, active): (Vec<Held>, Vec<Held>) = std::mem::take(&mut burst.held)
                    .into_iter()
                    .partition(|h| h.finished);
                burst.held = active;
                burst.retired = done.len();
                done
            } else {
                std::mem::take(&mut burst.held)
            };
            (work, handled)
        };
        self.consumer()?.record_handled(took_ns, handled);
        for held in work {
            let task = held.task.into_bound(py);
            self.forward_one(&task, &held.message, held.refs, held.class.as_ref())?;
        }
        if took_ns >= SLOW_BATCH_NS {
            self.flush()?; // a wake-up costs far less than the wait
        }
        Ok(())
    }

    /// The handler raised on the current batch (continuous batching: the
    /// active set): each of its tasks fails with the error report `payload`.
    fn fail(&self, py: Python<'_>, payload: &[u8]) -> PyResult<()> {
        let held = std::mem::take(&mut self.burst()?.held);
        for h in held {
            self.retire(py, h.refs.as_ref(), None)?;
            let header = h.message.header;
            self.send_error(py, header.key, header.priority, payload)?;
        }
        Ok(())
    }

    /// Sends `part` to the caller of `task` (one of the tasks in the
    /// handler's hands) at once; False when the caller no longer wants it
    /// (cancelled, or its timeout passed): stop producing for it.
    fn emit(&self, task: &Bound<'_, PyAny>, part: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.emit_part(task, part)
    }

    /// Continuous batching: `task` is done; it leaves the active set (and
    /// is sent on) after this iteration.
    fn finish(&self, task: &Bound<'_, PyAny>) -> PyResult<()> {
        self.held_task(task, |held| held.finished = true)
    }

    /// True when the caller of `task` no longer wants it.
    fn is_cancelled(&self, task: &Bound<'_, PyAny>) -> PyResult<bool> {
        let header = self.held_task(task, |held| held.message.header)?;
        Ok(self.consumer()?.unwanted(&header, false))
    }

    /// Wakes the consumer of every queue this burst pushed to, once.
    fn flush(&self) -> PyResult<()> {
        self.consumer()?.flush();
        Ok(())
    }

    /// The queue this worker takes its tasks from.
    #[getter]
    fn input(&self, py: Python<'_>) -> Py<Queue> {
        self.input.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.slow)?;
        visit.call(&self.own)?;
        for (_, condition) in &self.later {
            visit.call(condition)?;
        }
        if let Some(http) = &self.http {
            http.traverse(&visit)?;
        }
        Ok(())
    }
}

impl StepWorker {
    /// Queues the Python half pushed to (bit `i`: queue `i`), woken at `flush`.
    fn touch(&self, touched: u128) -> PyResult<()> {
        let mut consumer = self.consumer()?;
        (0..128)
            .filter(|i| touched & (1 << i) != 0)
            .for_each(|i| consumer.touch(i));
        Ok(())
    }

    /// See `next`.
    fn wait_for_work(&self, py: Python<'_>, idle_timeout: Option<f64>) -> PyResult<Option<bool>> {
        let mut burst = self.burst()?;
        if let Some(e) = burst.deferred.take() {
            return Err(e);
        }
        *burst = Burst::default();
        drop(burst);
        let deadline = deadline_after(idle_timeout)?;
        let mut consumer = self.consumer()?;
        let c = &mut *consumer;
        let mut pending = None;
        let batch = py.detach(|| c.wait(deadline, &mut signal_checker(&mut pending)));
        drop(consumer);
        // corrupt shared memory: the worker must stop reading it (its
        // Python half exits; the tasks it claimed are failed by the parent)
        let batch = batch.map_err(to_py_err)?;
        // dropped tasks are let go before anything else can fail
        self.drop_messages(py, &batch.expired)?;
        self.reject_late(py, &batch.late)?;
        if let Some(e) = pending {
            if batch.messages.is_empty() {
                return Err(e);
            }
            self.burst()?.deferred = Some(e);
        }
        if batch.closed && batch.messages.is_empty() {
            return Ok(None);
        }
        let ready = !batch.messages.is_empty();
        self.burst()?.fresh = batch.messages;
        Ok(Some(ready))
    }

    /// Loads the fresh messages of the burst: the tasks for the handler
    /// (those it cannot load, or that its condition declines, are sent on
    /// at once).
    fn load_fresh(&self, py: Python<'_>) -> PyResult<Vec<Held>> {
        // the messages leave the burst while Python code runs on them
        let fresh = std::mem::take(&mut self.burst()?.fresh);
        let mut held = Vec::with_capacity(fresh.len());
        let mut touched = 0u128;
        for message in fresh {
            match self.load(py, &message)? {
                Load::Task(task, refs, class) => held.push(Held {
                    message,
                    task: task.unbind(),
                    refs,
                    class,
                    finished: false,
                }),
                Load::Sent(to) => touched |= 1 << to, // reported, or on without the handler
            }
        }
        self.touch(touched)?;
        Ok(held)
    }

    /// Runs `f` on the held task `task`; a task the handler does not hold
    /// (this worker's) raises.
    fn held_task<T>(&self, task: &Bound<'_, PyAny>, f: impl FnOnce(&mut Held) -> T) -> PyResult<T> {
        let mut burst = self.burst()?;
        burst.find(task).map(f).ok_or_else(|| {
            PyRuntimeError::new_err(
                "this task is not one the handler of this worker is handling \
                 (emit, finish and is_cancelled work inside handle)",
            )
        })
    }
}
