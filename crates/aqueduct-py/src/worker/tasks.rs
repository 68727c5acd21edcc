//! A worker's tasks in and out of queue messages: building `KIND_STATE`
//! tasks, routing handled ones, pushing them on (waiting for room).

use aqueduct_core::queue::PUSH_WAIT_NO_DEADLINE;
use aqueduct_core::wire::{
    split_state, state_prefix, INLINE_LIMIT, KIND_ERROR, KIND_STATE, KIND_TASK,
};
use aqueduct_core::{monotonic_ns, Message, MessageHeader};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{StateClass, StepWorker};
use crate::calls::{call1, instance_dict, new_instance, set_instance_dict};
use crate::{pickle, signal_checker, state, to_py_err};

impl StepWorker {
    /// Index of the next step whose condition holds for `task`, or of the
    /// task's result queue.
    pub(super) fn route(&self, task: &Bound<'_, PyAny>, key: u64) -> PyResult<usize> {
        let py = task.py();
        for (index, condition) in &self.later {
            let holds = if condition.bind(py).is(self.truth.bind(py)) {
                task.is_truthy()?
            } else {
                call1(condition.bind(py), task)?.is_truthy()?
            };
            if holds {
                return Ok(*index);
            }
        }
        Ok(self.results_of(key))
    }

    /// Pushes one message into queue `index`, waiting (GIL released) while
    /// the queue is full and the task still wanted; false when it gave up.
    /// Raises `SharedMemoryCorruptError` for a queue found scribbled on: the
    /// worker must stop.
    pub(super) fn push(
        &self,
        py: Python<'_>,
        index: usize,
        header: &MessageHeader,
        parts: &[&[u8]],
    ) -> PyResult<bool> {
        let queue = &self.queues[index].get().inner;
        match queue.push_parts(header, parts) {
            Err(aqueduct_core::Error::Full) => {}
            Err(e @ aqueduct_core::Error::Corrupt(_)) => return Err(to_py_err(e)),
            done => return Ok(done.is_ok()),
        }
        let give_up = if header.deadline_ns == 0 {
            monotonic_ns() + PUSH_WAIT_NO_DEADLINE.as_nanos() as u64
        } else {
            header.deadline_ns
        };
        let mut pending = None;
        let pushed = py.detach(|| {
            queue.push_waiting(
                header,
                parts,
                Some(give_up),
                &mut signal_checker(&mut pending),
            )
        });
        match pushed {
            Err(e @ aqueduct_core::Error::Corrupt(_)) => Err(to_py_err(e)),
            pushed => Ok(pushed.is_ok()),
        }
    }

    /// Sends one handled task on; returns the queue it went to, or `None`
    /// when the Python half must do it. `class` is the task's class and
    /// `KIND_STATE` prefix when it came as one.
    pub(super) fn forward_fast(
        &self,
        task: &Bound<'_, PyAny>,
        message: &Message,
        class: Option<&StateClass>,
    ) -> PyResult<Option<usize>> {
        let py = task.py();
        let header = &message.header;
        let Ok(fields) = instance_dict(task) else {
            return Ok(None);
        };
        let prefix = match (header.kind, class) {
            // still of the class it came as: its dict is all there is to send
            (KIND_STATE, Some(c)) if task.get_type().is(c.class.bind(py)) => Some(&c.prefix),
            (KIND_TASK, _) if !pickle::has_big_bytes(&fields) => None,
            _ => return Ok(None),
        };
        let index = self.route(task, header.key)?;
        let out = MessageHeader {
            enqueued_ns: 0,
            ..*header
        };
        let payload = match prefix {
            Some(prefix) => {
                let mut payload = prefix.to_vec();
                if !state::encode(&fields, &mut payload).unwrap_or(false) {
                    return Ok(None);
                }
                payload
            }
            None => match pickle::dumps(py, task) {
                Ok(Some(pickled)) if pickled.as_bytes().len() <= INLINE_LIMIT => {
                    pickled.as_bytes().to_vec()
                }
                _ => return Ok(None), // the Python half reports why
            },
        };
        if !self.push(py, index, &out, &[&payload])? {
            return Ok(None); // still full, or closed: the Python half decides
        }
        Ok(Some(index))
    }

    /// Builds a `KIND_STATE` task: an object of its class with the dict as
    /// its `__dict__`; `None` when the Python half must.
    pub(super) fn load_state<'py>(
        &self,
        py: Python<'py>,
        payload: &[u8],
    ) -> PyResult<Option<(Bound<'py, PyAny>, StateClass)>> {
        let Some((name, body)) = split_state(payload) else {
            return Ok(None);
        };
        let known = self.classes()?.get(name).map(|c| c.clone_ref(py));
        let class = match known {
            Some(class) => class,
            None => {
                let Ok(class) = self
                    .slow
                    .bind(py)
                    .call_method1(intern!(py, "resolve"), (PyBytes::new(py, name),))
                else {
                    return Ok(None); // the Python half says why
                };
                let class = StateClass {
                    class: class.unbind(),
                    prefix: state_prefix(name).unwrap_or_default().into(),
                };
                self.classes()?.insert(name.to_vec(), class.clone_ref(py));
                class
            }
        };
        let Ok(state) = state::decode(py, body) else {
            return Ok(None); // the Python half says why
        };
        let task = new_instance(class.class.bind(py))?;
        set_instance_dict(&task, &state)?;
        Ok(Some((task, class)))
    }

    /// Pushes a worker's error report for `key` to its client.
    pub(super) fn send_error(
        &self,
        py: Python<'_>,
        key: u64,
        priority: u32,
        payload: &[u8],
    ) -> PyResult<usize> {
        let index = self.results_of(key);
        let header = MessageHeader {
            key,
            deadline_ns: 0,
            kind: KIND_ERROR,
            priority,
            enqueued_ns: 0,
        };
        self.push(py, index, &header, &[payload])?;
        Ok(index)
    }
}
