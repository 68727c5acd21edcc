//! A worker's tasks in and out of queue messages: building `KIND_STATE`
//! tasks, routing and encoding handled ones, pushing them on (waiting for
//! room), error reports.

use aqueduct_core::wire::{
    base_kind, split_state, state_prefix, CARRIED, FLAG_HTTP, INLINE_LIMIT, KIND_HTTP_REQUEST,
    KIND_HTTP_RESPONSE, KIND_STATE, KIND_TASK, KIND_TASK_BY_VALUE,
};
use aqueduct_core::{Message, MessageHeader};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::{waiting, StateClass, StepWorker};
use crate::calls::{call1, instance_dict, new_instance, set_instance_dict};
use crate::{is_corrupt, pickle, state};

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
        Ok(self.consumer()?.results_of(key))
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
        let mut consumer = self.consumer()?;
        let c = &mut *consumer;
        waiting(py, |interrupt| c.push(index, header, parts, interrupt))
    }

    /// Sends one task on — to the next step whose condition holds, or
    /// back to its client (for an HTTP task, as the route's response) —
    /// and returns the queue it went to. What cannot be sent becomes an
    /// error report for its client; only corrupt shared memory is raised
    /// (the worker must stop).
    pub(super) fn forward_one(
        &self,
        task: &Bound<'_, PyAny>,
        message: &Message,
        refs: Option<Py<PyAny>>,
        class: Option<&StateClass>,
    ) -> PyResult<usize> {
        let py = task.py();
        let header = message.header;
        let sent = self.route(task, header.key).and_then(|to| {
            self.send_to(task, message, refs.as_ref(), class, to)
                .map(|()| to)
        });
        match sent {
            Ok(to) => Ok(to),
            Err(e) if is_corrupt(py, &e) => Err(e),
            Err(e) => {
                self.retire(py, refs.as_ref(), None)?;
                self.fail_task(py, message, e, 500)
            }
        }
    }

    fn send_to(
        &self,
        task: &Bound<'_, PyAny>,
        message: &Message,
        refs: Option<&Py<PyAny>>,
        class: Option<&StateClass>,
        to: usize,
    ) -> PyResult<()> {
        let py = task.py();
        let h = message.header;
        // where it came from, and whether its parts are streamed (its
        // client knows both)
        let to_client = to >= self.consumer()?.steps();
        let carried = if to_client { 0 } else { h.kind & CARRIED };
        let header = |kind| MessageHeader {
            kind,
            enqueued_ns: 0,
            ..h
        };
        if h.kind & FLAG_HTTP != 0 && to_client {
            let Some(ends) = &self.http else {
                return Err(PyRuntimeError::new_err(
                    "an HTTP task in a flow not served over HTTP",
                ));
            };
            let response = ends.respond(task, h.kind)?;
            let kind = KIND_HTTP_RESPONSE | response.flag();
            if !self.push(py, to, &header(kind), &[&response.payload])? {
                ends.unplace(&response); // not sent: the flow closed, or the caller gave up
            }
            return self.retire(py, refs, None);
        }
        if refs.is_none() {
            if let Some((kind, payload)) = self.encode_fast(task, message, class)? {
                // not pushed: the flow closed, or the caller gave up
                self.push(py, to, &header(kind | carried), &[&payload])?;
                return Ok(());
            }
        }
        let by_value = base_kind(h.kind) == KIND_TASK_BY_VALUE;
        let slow = self.slow.bind(py);
        let (kind, payload, out): (u32, Bound<'_, PyBytes>, Bound<'_, PyAny>) = slow
            .call_method1(intern!(py, "encode"), (task, h.key, by_value))?
            .extract()?;
        if !self.push(py, to, &header(kind | carried), &[payload.as_bytes()])? {
            slow.call_method1(intern!(py, "discard"), (&out,))?;
        }
        self.retire(py, refs, Some(&out))
    }

    /// The task's message when it takes no shared memory and its class is
    /// found by name: its `__dict__` alone when it came as such and is still
    /// of that class, else its pickle; `None` when the Python half must.
    fn encode_fast(
        &self,
        task: &Bound<'_, PyAny>,
        message: &Message,
        class: Option<&StateClass>,
    ) -> PyResult<Option<(u32, Vec<u8>)>> {
        let py = task.py();
        let Ok(fields) = instance_dict(task) else {
            return Ok(None);
        };
        match (base_kind(message.header.kind), class) {
            // still of the class it came as: its dict is all there is to send
            (KIND_STATE, Some(c)) if task.get_type().is(c.class.bind(py)) => {
                let mut payload = c.prefix.to_vec();
                Ok(state::encode(&fields, &mut payload)
                    .unwrap_or(false)
                    .then_some((KIND_STATE, payload)))
            }
            (KIND_STATE | KIND_TASK | KIND_HTTP_REQUEST, _) if !pickle::has_big_bytes(&fields) => {
                Ok(match pickle::dumps(py, task) {
                    Ok(Some(pickled)) if pickled.as_bytes().len() <= INLINE_LIMIT => {
                        Some((KIND_TASK, pickled.as_bytes().to_vec()))
                    }
                    _ => None, // the Python half reports why
                })
            }
            _ => Ok(None),
        }
    }

    /// Frees the blocks of workers' arenas that `refs` (a task's, from the
    /// Python half) name and `kept` (what it was sent on with) does not.
    pub(super) fn retire(
        &self,
        py: Python<'_>,
        refs: Option<&Py<PyAny>>,
        kept: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if let Some(refs) = refs {
            let kept = match kept {
                Some(kept) => kept.clone(),
                None => PyList::empty(py).into_any(),
            };
            self.slow
                .bind(py)
                .call_method1(intern!(py, "retire"), (refs, kept))?;
        }
        Ok(())
    }

    /// Fails the task of `message` with `error` (described by the Python
    /// half, with the HTTP `status` it stands for); returns the queue its
    /// report went to.
    pub(super) fn fail_task(
        &self,
        py: Python<'_>,
        message: &Message,
        error: PyErr,
        status: u16,
    ) -> PyResult<usize> {
        let report = self
            .slow
            .bind(py)
            .call_method1(intern!(py, "report"), (error.into_value(py), status))?
            .cast_into::<PyBytes>()?;
        let h = message.header;
        self.send_error(py, h.key, h.priority, report.as_bytes())
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

    /// Pushes a worker's error report for `key` to its client; returns the
    /// queue it went to.
    pub(super) fn send_error(
        &self,
        py: Python<'_>,
        key: u64,
        priority: u32,
        report: &[u8],
    ) -> PyResult<usize> {
        let mut consumer = self.consumer()?;
        let c = &mut *consumer;
        waiting(py, |interrupt| {
            c.send_error(key, priority, report, interrupt)
        })
    }
}
