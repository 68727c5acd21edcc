//! Settling results: every ready message of the result queue delivered to
//! its task's future, the handlers' fields copied onto the caller's task.

use aqueduct_core::wire::{
    base_kind, split_state, BOOKKEEPING_FIELDS, FLAG_REFS, KIND_ERROR, KIND_STATE,
};
use aqueduct_core::Message;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDictMethods};

use super::{Client, Entry, DRAIN_LIMIT};
use crate::calls::{call_method1, instance_dict, set_instance_dict};
use crate::{pickle, state};

/// A finished task as it came back: an object, or a `KIND_STATE` body.
pub(super) enum Finished<'py, 'a> {
    Object(Bound<'py, PyAny>),
    State(&'a [u8]),
}

impl Client {
    /// Takes every ready answer and settles its task.
    pub(super) fn resolve_ready(&self, py: Python<'_>) -> PyResult<()> {
        let mut first_failure = None;
        loop {
            let drained = {
                let mut state = self.state()?;
                let drained = state.core.drain_streams(DRAIN_LIMIT, |entry| {
                    entry.sink.as_ref().map(|sink| sink.clone_ref(py))
                });
                for answer in &drained.answers {
                    if let Some(entry) = &answer.waiter {
                        state.forget(entry);
                    }
                }
                drained
            };
            let taken = drained.answers.len();
            // every answer is settled, whatever fails: a future left behind
            // would never be resolved (its entry is gone)
            for answer in drained.answers {
                let done = if answer.part {
                    self.deliver_part(py, &answer.message, answer.sink)
                } else {
                    self.settle(py, &answer.message, answer.waiter)
                };
                // after settling: the views of the result hold what it shares
                self.state()?.core.release(&answer.blocks);
                if let Err(e) = done {
                    first_failure.get_or_insert(e);
                }
            }
            if let Some(e) = drained.corrupt {
                // nothing more is read from this queue: the Python half
                // fails what waits and has the flow retire its memory
                self.slow
                    .bind(py)
                    .call_method1(intern!(py, "corrupt"), (e.to_string(),))?;
                return first_failure.map_or(Ok(()), Err);
            }
            if !self.state()?.core.finish_drain(taken, DRAIN_LIMIT) {
                return first_failure.map_or(Ok(()), Err);
            }
        }
    }

    /// Delivers one message to its task's future.
    pub(super) fn settle(
        &self,
        py: Python<'_>,
        message: &Message,
        entry: Option<Entry>,
    ) -> PyResult<()> {
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
            let finished = if base_kind(kind) == KIND_STATE {
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
        self.state()?.core.settled(outcome.is_ok());
        resolve(entry.future.bind(py), outcome)
    }

    /// Gives a streamed task's part to its sink; a part nobody waits for
    /// (the caller left) lets its blocks go.
    fn deliver_part(
        &self,
        py: Python<'_>,
        message: &Message,
        sink: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let kind = message.header.kind;
        let slow = self.slow.bind(py);
        // the stream is held weakly: gone when its caller left the loop
        let sink = match sink {
            Some(weak) => Some(weak.bind(py).call0()?).filter(|s| !s.is_none()),
            None => None,
        };
        let Some(sink) = sink else {
            if kind & FLAG_REFS != 0 {
                slow.call_method1(intern!(py, "unwanted"), (message.payload(),))?;
            }
            return Ok(());
        };
        let part = if kind & FLAG_REFS == 0 {
            pickle::loads(py, &PyBytes::new(py, message.payload()))
        } else {
            slow.call_method1(intern!(py, "result"), (kind, message.payload()))
        };
        match part {
            Ok(part) => sink.call_method1(intern!(py, "put"), (part,)),
            Err(e) => sink.call_method1(intern!(py, "fail"), (e.into_value(py),)),
        }
        .map(drop)
    }

    /// Copies what the handlers set onto the caller's task.
    pub(super) fn update(
        py: Python<'_>,
        entry: &Entry,
        finished: Finished<'_, '_>,
    ) -> PyResult<()> {
        let task = entry.task.bind(py);
        match finished {
            Finished::Object(object) if !entry.plain => {
                call_method1(task, intern!(py, "update"), &object)?;
            }
            Finished::Object(object) => {
                let state = instance_dict(&object)?.copy()?;
                for name in BOOKKEEPING_FIELDS {
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
}

/// True when `future` is done (resolved or cancelled).
pub(super) fn is_done(future: &Bound<'_, PyAny>) -> PyResult<bool> {
    future
        .call_method0(intern!(future.py(), "done"))?
        .is_truthy()
}

/// Resolves `future` with True or the exception, unless it is done already.
pub(super) fn resolve(
    future: &Bound<'_, PyAny>,
    outcome: Result<(), Bound<'_, PyAny>>,
) -> PyResult<()> {
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
