//! Submitting a task: its class, priority, deadline and first step, its
//! encoding (here, or by the Python half for shared memory and classes
//! pickled by value), the push and the wake-ups.

use aqueduct_core::wire::{
    state_prefix, CLASS_NAMED, CLASS_PLAIN, CLASS_STATE, CLASS_TIMEOUT, FLAG_STREAM, INLINE_LIMIT,
    KIND_STATE, KIND_TASK,
};
use aqueduct_core::{monotonic_ns, Error, MessageHeader, Outbound};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt};

use super::event_loop::future_type;
use super::{ClassInfo, Client, Entry};
use crate::calls::{call1, instance_dict};
use crate::{pickle, state, to_py_err};

/// A task's message body: made here, or by the Python half (which may
/// have placed buffers in shared memory: `refs`, to discard if unsent).
enum Payload<'py> {
    Owned(Vec<u8>),
    Pickled(Bound<'py, PyBytes>),
    Encoded {
        payload: Bound<'py, PyBytes>,
        refs: Bound<'py, PyAny>,
    },
}

impl Payload<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Owned(v) => v,
            Payload::Pickled(b) | Payload::Encoded { payload: b, .. } => b.as_bytes(),
        }
    }
}

impl Client {
    /// The `classify` bits of the task's class and its `KIND_STATE` prefix.
    fn class_of(&self, task: &Bound<'_, PyAny>) -> PyResult<(u32, Option<Vec<u8>>)> {
        let ty = task.get_type();
        let id = ty.as_ptr() as usize;
        if let Some(info) = self.state()?.classes.get(&id) {
            return Ok((info.bits, info.prefix.clone()));
        }
        let py = task.py();
        let mut bits: u32 = self.classify.bind(py).call1((&ty,))?.extract()?;
        let prefix = if bits & CLASS_STATE != 0 {
            let module: String = ty.getattr(intern!(py, "__module__"))?.extract()?;
            let qualname: String = ty.getattr(intern!(py, "__qualname__"))?.extract()?;
            state_prefix(format!("{module}\0{qualname}").as_bytes())
        } else {
            None
        };
        if prefix.is_none() {
            bits &= !CLASS_STATE;
        }
        let info = ClassInfo {
            _class: ty.unbind(),
            bits,
            prefix: prefix.clone(),
        };
        self.state()?.classes.insert(id, info);
        Ok((bits, prefix))
    }

    /// See `Client.submit`.
    pub(super) fn submit_task<'py>(
        &self,
        task: &Bound<'py, PyAny>,
        timeout_s: f64,
        sink: Option<Py<PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = task.py();
        if !(timeout_s.is_finite() && timeout_s > 0.0) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "timeout_sec must be > 0",
            ));
        }
        let (bits, prefix) = self.class_of(task)?;
        let fields = instance_dict(task).ok();
        let priority = self.priority(task, fields.as_ref())?;
        let expires = self.set_deadline(task, fields.as_ref(), bits, timeout_s)?;
        let Some(step) = self.first_step(task)? else {
            return Ok(None); // no step's condition holds: nothing to do
        };
        let key = self.state()?.core.next_key();
        let (kind, payload) = self.encode(task, fields.as_ref(), bits, prefix, key)?;
        let kind = if sink.is_some() {
            kind | FLAG_STREAM
        } else {
            kind
        };
        let blocks = match &payload {
            Payload::Encoded { refs, .. } => self.own_blocks(refs)?,
            _ => Vec::new(),
        };
        let future = self.new_future(py)?;
        let entry = Entry {
            future: future.clone().unbind(),
            task: task.clone().unbind(),
            plain: bits & CLASS_PLAIN != 0,
            timeout_s,
            sink,
        };
        let header = MessageHeader {
            key,
            deadline_ns: (expires * 1e9) as u64,
            kind,
            priority,
            enqueued_ns: 0,
            entered_ns: 0,
        };
        let out = Outbound {
            step,
            header,
            parts: &[payload.bytes()],
            blocks,
        };
        let deadline_ns = monotonic_ns().saturating_add((timeout_s * 1e9) as u64);
        let submitted = {
            let mut state = self.state()?;
            let submitted = state.core.submit(out, entry, deadline_ns, true);
            if submitted.is_ok() {
                state.keys.insert(future.as_ptr() as usize, key);
            }
            submitted
        };
        let submitted = match submitted {
            Ok(submitted) => submitted,
            Err(e) => {
                if let Payload::Encoded { refs, .. } = &payload {
                    self.slow
                        .bind(py)
                        .call_method1(intern!(py, "discard"), (refs,))?;
                }
                return Err(self.refused(e, step));
            }
        };
        if let Some(at) = submitted.timer {
            self.arm_timer(py, at)?;
        }
        if submitted.flush {
            self.schedule_flush(py)?;
        }
        if submitted.spin {
            self.spin_for_result(py)?;
        }
        Ok(Some(future))
    }

    /// The task's priority level, clamped (and set back when that changed
    /// it) to the flow's levels.
    fn priority(
        &self,
        task: &Bound<'_, PyAny>,
        fields: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<u32> {
        let py = task.py();
        let name = intern!(py, "priority");
        let value = match fields.map(|f| f.get_item(name)).transpose()?.flatten() {
            Some(value) => value,
            None => match task.getattr(name) {
                Ok(value) => value,
                Err(_) => return Ok(0), // a duck-typed task without one
            },
        };
        let level: i64 = match value.cast_exact::<PyInt>() {
            Ok(int) => int.extract().unwrap_or(-1),
            Err(_) => value.call_method0(intern!(py, "__int__"))?.extract()?,
        };
        let clamped = level.clamp(0, i64::from(self.priorities) - 1);
        if clamped != level {
            task.setattr(name, clamped)?;
        }
        Ok(clamped as u32)
    }

    /// Sets the task's deadline (`expiration_time`, seconds of the
    /// monotonic clock) and returns it: directly in its `__dict__` for
    /// classes with BaseTask's `set_timeout`, else by calling theirs.
    fn set_deadline(
        &self,
        task: &Bound<'_, PyAny>,
        fields: Option<&Bound<'_, PyDict>>,
        bits: u32,
        timeout_s: f64,
    ) -> PyResult<f64> {
        let py = task.py();
        let name = intern!(py, "expiration_time");
        let now = monotonic_ns() as f64 / 1e9;
        if let (true, Some(fields)) = (bits & CLASS_TIMEOUT != 0, fields) {
            let expires = now + timeout_s;
            fields.set_item(name, PyFloat::new(py, expires))?;
            return Ok(expires);
        }
        task.call_method1(intern!(py, "set_timeout"), (timeout_s,))?;
        Ok(task
            .getattr(name)
            .ok()
            .and_then(|v| v.extract::<f64>().ok())
            .unwrap_or(now + timeout_s))
    }

    /// Index of the first step whose condition holds for `task`.
    fn first_step(&self, task: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
        let py = task.py();
        let truth = self.truth.bind(py);
        for (index, condition) in self.conditions.iter().enumerate() {
            let condition = condition.bind(py);
            let holds = if condition.is(truth) {
                task.is_truthy()?
            } else {
                call1(condition, task)?.is_truthy()?
            };
            if holds {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// The task's message kind and body: its `__dict__` as a `KIND_STATE`
    /// body, or its pickle, when that is all it takes; otherwise the
    /// Python half's (buffers for shared memory, a pickle too big for a
    /// queue, a class that must be pickled by value).
    fn encode<'py>(
        &self,
        task: &Bound<'py, PyAny>,
        fields: Option<&Bound<'py, PyDict>>,
        bits: u32,
        prefix: Option<Vec<u8>>,
        key: u64,
    ) -> PyResult<(u32, Payload<'py>)> {
        let py = task.py();
        if let (Some(fields), true) = (fields, bits & CLASS_NAMED != 0) {
            if let Some(mut payload) = prefix {
                if state::encode(fields, &mut payload).unwrap_or(false) {
                    return Ok((KIND_STATE, Payload::Owned(payload)));
                }
            } else if !pickle::has_big_bytes(fields) {
                if let Ok(Some(pickled)) = pickle::dumps(py, task) {
                    if pickled.as_bytes().len() <= INLINE_LIMIT {
                        return Ok((KIND_TASK, Payload::Pickled(pickled)));
                    }
                }
            }
        }
        let by_value = bits & CLASS_NAMED == 0;
        let encoded = self
            .slow
            .bind(py)
            .call_method1(intern!(py, "encode"), (task, key, by_value))?;
        let (kind, payload, refs): (u32, Bound<'py, PyBytes>, Bound<'py, PyAny>) =
            encoded.extract()?;
        Ok((kind, Payload::Encoded { payload, refs }))
    }

    /// The blocks of this client's arena among a message's refs
    /// (`(arena, block, offset, size)`): held while the task is in flight.
    fn own_blocks(&self, refs: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
        let slot = u64::from(self.state()?.core.slot());
        let mut blocks = Vec::new();
        for item in refs.try_iter()? {
            let (arena, block, _offset, _size): (u64, u64, u64, u64) = item?.extract()?;
            if arena == slot {
                blocks.push(block);
            }
        }
        Ok(blocks)
    }

    /// The error a caller gets for a task its step's queue refused.
    fn refused(&self, error: Error, step: usize) -> PyErr {
        if !matches!(error, Error::Full) {
            return to_py_err(error);
        }
        let name = self.step_names.get(step).map_or("step", String::as_str);
        let bound = self
            .queue_size
            .map_or_else(|| "its ring".to_owned(), |n| n.to_string());
        let message = format!("the queue of {name} is full ({bound} tasks)");
        Python::attach(|py| match crate::exception(py, "QueueFullError") {
            Ok(ty) => PyErr::from_type(ty, message),
            Err(e) => e,
        })
    }

    fn new_future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
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
        match kwargs {
            Some(kwargs) => future_type(py)?.call((), Some(kwargs.bind(py))),
            None => create_future.bind(py).call0(),
        }
    }

    /// Has the loop call `flush` once, at the end of its current iteration.
    fn schedule_flush(&self, py: Python<'_>) -> PyResult<()> {
        let flush = {
            let state = self.state()?;
            state
                .event_loop
                .as_ref()
                .map(|l| (l.call_soon.clone_ref(py), l.flush.clone_ref(py)))
        };
        if let Some((call_soon, flush)) = flush {
            call_soon.bind(py).call1((flush,))?;
        }
        Ok(())
    }

    /// With one task in flight, waits for its answer by spinning on shared
    /// memory (GIL released) instead of a kernel wake-up through the loop,
    /// while that pays (the core's spin policy).
    pub(super) fn spin_for_result(&self, py: Python<'_>) -> PyResult<()> {
        let (budget, results) = {
            let state = self.state()?;
            let results = std::sync::Arc::clone(&state.core.queues().results);
            (state.core.spin_budget(), results)
        };
        if budget.is_zero() {
            return Ok(());
        }
        let ready = py.detach(|| results.spin_until_ready(budget));
        self.state()?.core.record_spin(ready);
        if ready {
            self.resolve_ready(py)?;
        }
        Ok(())
    }
}
