//! Streamed parts and continuous batching, in the worker.
//!
//! `task.emit(part)` sends a part to the task's caller at once, by the
//! same result queue as the final answer (which follows it): pickled
//! (`KIND_PART`, by shared-memory reference when big), or, for a task from
//! the HTTP server, as the bytes of one chunk of its response
//! (`KIND_HTTP_PART`). A task whose caller does not stream (`FLAG_STREAM`
//! unset) sends nothing. The caller's cancel bit (and the task's deadline)
//! is checked on each part: a caller who left gets nothing more, and the
//! handler learns it from `emit`'s False.
//!
//! Continuous batching: the active set is the held tasks of the burst;
//! before each iteration the tasks queued by now join it (never waiting
//! while it is not empty) and those no longer wanted leave it; after each,
//! the finished ones are sent on (see `forward`).

use aqueduct_core::wire::{
    BUFFER_THRESHOLD, FLAGS, FLAG_HTTP, FLAG_STREAM, INLINE_LIMIT, KIND_HTTP_PART, KIND_PART,
};
use aqueduct_core::MessageHeader;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::{Held, StepWorker};
use crate::{pickle, signal_checker};

impl StepWorker {
    /// See `StepWorker.emit`.
    pub(super) fn emit_part(
        &self,
        task: &Bound<'_, PyAny>,
        part: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let py = task.py();
        let header = self.held_task(task, |held| held.message.header)?;
        if self.consumer()?.unwanted(&header, false) {
            return Ok(false);
        }
        if header.kind & FLAG_STREAM == 0 {
            return Ok(true); // the caller takes the final answer only
        }
        let slow = self.slow.bind(py);
        let mut placed = None;
        let (kind, payload, refs) = if header.kind & FLAG_HTTP != 0 {
            let Some(ends) = &self.http else {
                return Err(PyRuntimeError::new_err(
                    "an HTTP task in a flow not served over HTTP",
                ));
            };
            let mut outgoing = ends.part_payload(part, header.kind)?;
            let kind = KIND_HTTP_PART | outgoing.flag();
            let payload = std::mem::take(&mut outgoing.payload);
            placed = Some((ends, outgoing));
            (kind, payload, None)
        } else if let Some(pickled) = pickle_inline(part)? {
            (KIND_PART, pickled, None)
        } else {
            let (kind, payload, refs): (u32, Bound<'_, PyBytes>, Bound<'_, PyAny>) = slow
                .call_method1(intern!(py, "encode_part"), (part, header.key))?
                .extract()?;
            (
                KIND_PART | (kind & FLAGS),
                payload.as_bytes().to_vec(),
                Some(refs),
            )
        };
        let to = self.consumer()?.results_of(header.key);
        let out = MessageHeader {
            kind,
            enqueued_ns: 0,
            ..header
        };
        if !self.push(py, to, &out, &[&payload])? {
            if let Some(refs) = refs {
                slow.call_method1(intern!(py, "discard"), (refs,))?;
            }
            if let Some((ends, outgoing)) = placed {
                ends.unplace(&outgoing);
            }
            return Ok(false); // still full at its deadline, or the flow closed
        }
        self.consumer()?.notify(to); // at once: a part is for now
        Ok(true)
    }

    /// See `StepWorker.active`.
    pub(super) fn next_iteration<'py>(
        &self,
        py: Python<'py>,
        idle_timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let holding: Vec<u64> = {
            let burst = self.burst()?;
            burst.held.iter().map(|h| h.message.header.key).collect()
        };
        if holding.is_empty() {
            match self.wait_for_work(py, idle_timeout)? {
                None => return Ok(None),
                Some(false) => return Ok(Some(PyList::empty(py))),
                Some(true) => {}
            }
        } else if holding.len() < self.batch_size {
            let room = self.batch_size - holding.len();
            let left = std::mem::take(&mut self.burst()?.retired);
            let mut consumer = self.consumer()?;
            let c = &mut *consumer;
            let mut pending = None;
            let batch =
                py.detach(|| c.admit(room, &holding, left, &mut signal_checker(&mut pending)));
            drop(consumer);
            let batch = batch.map_err(crate::to_py_err)?;
            self.drop_messages(py, &batch.expired)?;
            if let Some(e) = pending {
                self.burst()?.deferred = Some(e); // raised once the set is done
            }
            self.burst()?.fresh = batch.messages;
        }
        let joined = self.load_fresh(py)?;
        self.burst()?.held.extend(joined);
        self.leave_unwanted(py)?;
        let burst = self.burst()?;
        Ok(Some(PyList::new(
            py,
            burst.held.iter().map(|h| h.task.bind(py)),
        )?))
    }

    /// Takes the tasks no longer wanted (cancelled, or past their
    /// deadline) out of the active set; their blocks are let go.
    fn leave_unwanted(&self, py: Python<'_>) -> PyResult<()> {
        let gone: Vec<Held> = {
            let consumer = self.consumer()?;
            let mut burst = self.burst()?;
            let (gone, kept) = std::mem::take(&mut burst.held)
                .into_iter()
                .partition(|h| consumer.unwanted(&h.message.header, true));
            burst.held = kept;
            gone
        };
        if gone.is_empty() {
            return Ok(());
        }
        let messages: Vec<_> = gone.into_iter().map(|h| h.message).collect();
        self.drop_messages(py, &messages)
    }
}

/// `part` pickled by the C pickler when it is small and refers to no big
/// buffer; None when the Python half must encode it (shared memory).
fn pickle_inline(part: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
    let py = part.py();
    if let Ok(bytes) = part.cast_exact::<PyBytes>() {
        if bytes.as_bytes().len() >= BUFFER_THRESHOLD {
            return Ok(None);
        }
    }
    Ok(match pickle::dumps(py, part) {
        Ok(Some(p)) if p.as_bytes().len() <= INLINE_LIMIT => Some(p.as_bytes().to_vec()),
        _ => None, // big buffers, or what only cloudpickle can pickle
    })
}
