//! Submitting a task: the fast path of `Client.submit` and its wake-ups.

use aqueduct_core::spin::machine_is_crowded;
use aqueduct_core::wire::{state_prefix, INLINE_LIMIT, KIND_STATE, KIND_TASK};
use aqueduct_core::{monotonic_ns, MessageHeader};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt};

use super::event_loop::future_type;
use super::{ClassInfo, Client, Entry, CLASS_FAST, CLASS_STATE, SPIN_MISS_LIMIT, SPIN_PROBE_EVERY};
use crate::calls::{call1, instance_dict};
use crate::{pickle, state};

impl Client {
    /// The `classify` bits of the task's class and its `KIND_STATE` prefix.
    pub(super) fn class_of(&self, task: &Bound<'_, PyAny>) -> PyResult<(u32, Option<Vec<u8>>)> {
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
    pub(super) fn submit_fast<'py>(
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
        if !first {
            return Ok(None);
        }
        // a task that cannot be pickled fails on the Python path, which says why
        let (kind, payload) = match prefix {
            Some(mut payload) => match state::encode(&fields, &mut payload) {
                Ok(true) => (KIND_STATE, payload),
                _ => return Ok(None),
            },
            None if pickle::has_big_bytes(&fields) => return Ok(None),
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
        // a lone task of a batching step waits for the iteration's end too:
        // siblings sent in the same iteration then share its batch
        let now = lone && self.eager;
        self.wake(py, 0, now)?;
        if now {
            self.spin_for_result(py)?;
        }
        Ok(Some(future))
    }

    /// The task's priority level, clamped (and set back) when the flow has
    /// levels; `None` for a value only the Python path understands.
    pub(super) fn priority(&self, fields: &Bound<'_, PyDict>) -> PyResult<Option<u32>> {
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

    pub(super) fn register_entry<'py>(
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

    /// Wakes step `step`'s workers: `now`, or once for every task the
    /// loop's current iteration sends (see the module docs).
    pub(super) fn wake(&self, py: Python<'_>, step: usize, now: bool) -> PyResult<()> {
        if now {
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
    pub(super) fn spin_for_result(&self, py: Python<'_>) -> PyResult<()> {
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
}
