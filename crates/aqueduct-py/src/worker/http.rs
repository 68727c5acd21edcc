//! Tasks from the Rust HTTP server, in the worker: the first step's worker
//! makes a `KIND_HTTP_REQUEST` message a task with its route's
//! `task_from_request` (raising: a 400 for the server), and the worker that
//! finishes the task makes its `KIND_HTTP_RESPONSE` with the route's
//! `response_from_task` — both here, so an HTTP task costs no Python frame
//! of aqueduct's in the worker. The message's `kind` carries the route.

use aqueduct_core::http_wire::{self, Body, BodyRef};
use aqueduct_core::wire::{http_route, FLAG_BODY, FLAG_HTTP, FLAG_STREAM, INLINE_LIMIT};
use aqueduct_core::Message;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyString};
use pyo3::{PyTraverseError, PyVisit};

use super::{Load, StepWorker};
use crate::calls::call1;
use crate::http_wire::latin1;
use crate::shm::SharedArena;
use crate::to_py_err;

/// The HTTP server's ends of a flow, as a worker gets them from its
/// Python half: `(routes, Request, Response, arenas)` — per route its
/// `(task_from_request, response_from_task)`, the classes
/// `aqueduct.http.Request` and `Response`, and the flow's arenas (a big
/// request body lies in the server's). A streaming route's third function
/// makes the bytes of a part's chunk (None: bytes as they are, anything
/// else as a Server-Sent Event).
#[derive(FromPyObject)]
pub(crate) struct HttpEnds(
    Vec<RouteEnds>,
    Py<PyAny>,
    Py<PyAny>,
    Vec<Py<SharedArena>>,
    /// Which of the arenas is this worker's (where big answers go).
    usize,
);

/// An answer or part for the server: its payload, and with `FLAG_BODY`, the
/// block of this worker's arena its body was placed in (the server frees
/// it once written; the worker does if it is never sent).
pub(super) struct Outgoing {
    pub(super) payload: Vec<u8>,
    pub(super) placed: Option<u64>,
}

impl Outgoing {
    /// `head` followed by `body`: inline, or placed in the arena when it is
    /// too big for the result queue's ring.
    fn of(ends: &HttpEnds, py: Python<'_>, mut head: Vec<u8>, body: &[u8]) -> PyResult<Self> {
        if body.len() <= INLINE_LIMIT {
            head.extend_from_slice(body);
            return Ok(Outgoing {
                payload: head,
                placed: None,
            });
        }
        let r = ends.place(py, body)?;
        http_wire::encode_body_ref(&mut head, r);
        Ok(Outgoing {
            payload: head,
            placed: Some(r.block),
        })
    }

    /// The message kind flag it needs.
    pub(super) fn flag(&self) -> u32 {
        if self.placed.is_some() {
            FLAG_BODY
        } else {
            0
        }
    }
}

/// A route's `(task_from_request, response_from_task, part_to_bytes,
/// borrow)`; `borrow`: a body in the server's arena reaches
/// `task_from_request` as a view of it, not as a copy (the server holds
/// its block until the request is answered).
type RouteEnds = (Py<PyAny>, Py<PyAny>, Option<Py<PyAny>>, bool);

/// The lowest and highest status a response may have.
const STATUSES: std::ops::RangeInclusive<i64> = 100..=599;

impl HttpEnds {
    fn route(&self, kind: u32) -> PyResult<&RouteEnds> {
        let route = http_route(kind);
        self.0
            .get(usize::from(route))
            .ok_or_else(|| PyValueError::new_err(format!("the server has no route {route}")))
    }

    pub(super) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for (request, response, part, _) in &self.0 {
            visit.call(request)?;
            visit.call(response)?;
            if let Some(part) = part {
                visit.call(part)?;
            }
        }
        visit.call(&self.1)?;
        visit.call(&self.2)
    }

    /// The `Request` a request message describes (its body a view of the
    /// arena when it lies in one and the route borrows).
    fn request<'py>(
        &self,
        py: Python<'py>,
        payload: &[u8],
        borrow: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = http_wire::decode_request(payload).ok_or_else(|| {
            PyValueError::new_err("an HTTP request message that is not well-formed")
        })?;
        let headers = PyDict::new(py);
        for (name, value) in &request.headers {
            headers.set_item(latin1(py, name), latin1(py, value))?;
        }
        let body = match request.body {
            Body::Inline(bytes) => PyBytes::new(py, bytes).into_any(),
            Body::Arena(r) => {
                let arena = self.3.get(r.arena as usize).ok_or_else(|| {
                    PyValueError::new_err(format!("a request body in arena {}", r.arena))
                })?;
                if borrow {
                    let view = arena.get().make_view(r.block, r.offset, r.len)?;
                    Bound::new(py, view)?.into_any()
                } else {
                    let arena = arena.get().inner.arena();
                    let at = arena
                        .ptr_at(r.offset, r.len)
                        .ok_or_else(|| PyValueError::new_err("a request body outside its arena"))?;
                    // SAFETY: `at..at+len` lies inside the arena's mapping
                    // (checked by `ptr_at`); the server holds the block until an
                    // answer about this request comes back, so nothing reuses it
                    // while it is copied here.
                    let bytes = unsafe { std::slice::from_raw_parts(at, r.len as usize) };
                    PyBytes::new(py, bytes).into_any()
                }
            }
        };
        let args = (
            latin1(py, request.method),
            latin1(py, request.path),
            latin1(py, request.query),
            headers,
            body,
        );
        self.1.bind(py).call1(args)
    }

    /// The `KIND_HTTP_RESPONSE` payload for a finished HTTP task (whose
    /// message `kind` names its route). A streamed task's response is its
    /// last chunk: what `response_from_task` made, as a part (None, or an
    /// empty body: nothing more).
    pub(super) fn respond(&self, task: &Bound<'_, PyAny>, kind: u32) -> PyResult<Outgoing> {
        let py = task.py();
        let made = call1(self.route(kind)?.1.bind(py), task)?;
        if kind & FLAG_STREAM != 0 {
            let last = if made.is_instance(self.2.bind(py))? {
                made.getattr(intern!(py, "body"))?
            } else {
                made
            };
            let body = if last.is_none() {
                BodyBytes::Made(Vec::new())
            } else {
                self.part(&last, kind)?
            };
            let mut head = Vec::with_capacity(16 + body.len().min(INLINE_LIMIT));
            http_wire::encode_response(&mut head, 200, &[], &[])
                .ok_or_else(|| PyValueError::new_err("a response too large to encode"))?;
            return Outgoing::of(self, py, head, &body);
        }
        let (body, status, headers) = if made.is_instance(self.2.bind(py))? {
            let status = made.getattr(intern!(py, "status"))?;
            let status: i64 = status.extract().map_err(|_| {
                PyValueError::new_err(format!("a response status must be an int, not {status}"))
            })?;
            if !STATUSES.contains(&status) {
                return Err(PyValueError::new_err(format!(
                    "a response status must be in 100..599, not {status}"
                )));
            }
            let headers = header_pairs(&made.getattr(intern!(py, "headers"))?)?;
            (made.getattr(intern!(py, "body"))?, status as u16, headers)
        } else {
            (made, 200, Vec::new())
        };
        let (body, content_type) = body_of(&body)?;
        let mut pairs: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        if !pairs.iter().any(|(name, _)| *name == b"content-type") {
            pairs.push((b"content-type", content_type));
        }
        let mut head = Vec::with_capacity(64 + body.len().min(INLINE_LIMIT));
        http_wire::encode_response(&mut head, status, &pairs, &[])
            .ok_or_else(|| PyValueError::new_err("a response too large to encode"))?;
        Outgoing::of(self, py, head, &body)
    }

    /// A streamed part's message payload (see [`Outgoing`]).
    pub(super) fn part_payload(&self, part: &Bound<'_, PyAny>, kind: u32) -> PyResult<Outgoing> {
        let chunk = self.part(part, kind)?;
        Outgoing::of(self, part.py(), Vec::new(), &chunk)
    }

    /// Copies `body` into a new block of this worker's arena (GIL released).
    fn place(&self, py: Python<'_>, body: &[u8]) -> PyResult<BodyRef> {
        let own = self.4;
        let arena = self
            .3
            .get(own)
            .ok_or_else(|| PyRuntimeError::new_err(format!("no arena {own} for this worker")))?;
        let arena = arena.get().inner.arena();
        // key 0: no task's, so a dead worker's blocks freed by task key never
        // include an answer the server has yet to write
        let block = arena.alloc(body.len() as u64, 0).map_err(to_py_err)?;
        let Some(at) = arena.ptr_at(block.offset, body.len() as u64) else {
            arena.free(block.offset);
            return Err(PyRuntimeError::new_err("an arena block outside its arena"));
        };
        // SAFETY: `at..at+len` lies inside the arena's mapping (checked by
        // `ptr_at`) and in a block just allocated to this process: no other
        // process reads or writes it until its reference is sent.
        let dst = unsafe { std::slice::from_raw_parts_mut(at, body.len()) };
        py.detach(|| dst.copy_from_slice(body));
        Ok(BodyRef {
            arena: u32::try_from(own).unwrap_or(u32::MAX),
            block: block.offset,
            offset: block.offset,
            len: body.len() as u64,
        })
    }

    /// Frees the block of an answer that was never sent.
    pub(super) fn unplace(&self, outgoing: &Outgoing) {
        if let (Some(block), Some(arena)) = (outgoing.placed, self.3.get(self.4)) {
            arena.get().inner.arena().free(block);
        }
    }
}

impl HttpEnds {
    /// The bytes of the chunk a streamed part of an HTTP task (whose
    /// message `kind` names its route) is written as: the route's part
    /// function's, or bytes as they are and anything else as one
    /// Server-Sent Event (`data: <text or JSON>`, a `data:` line per line).
    pub(super) fn part<'py>(
        &self,
        part: &Bound<'py, PyAny>,
        kind: u32,
    ) -> PyResult<BodyBytes<'py>> {
        let py = part.py();
        match &self.route(kind)?.2 {
            Some(encode) => chunk(&call1(encode.bind(py), part)?),
            None => chunk(part),
        }
    }
}

/// The chunk a streamed part is sent as: bytes as they are, anything else
/// as one Server-Sent Event of its text (JSON for what is not text).
pub(crate) fn chunk<'py>(part: &Bound<'py, PyAny>) -> PyResult<BodyBytes<'py>> {
    let (bytes, content_type) = body_of(part)?;
    if content_type == BYTES {
        return Ok(bytes);
    }
    Ok(BodyBytes::Made(http_wire::server_sent_event(&bytes)))
}

/// A response's headers as `(lower-case name, value)` pairs: from a dict,
/// or from a list of pairs (a name may repeat: two `Set-Cookie`).
fn header_pairs(headers: &Bound<'_, PyAny>) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let items = match headers.cast::<PyDict>() {
        Ok(dict) => dict.items().into_any(),
        Err(_) => headers.clone(),
    };
    let mut out = Vec::new();
    for item in items.try_iter()? {
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
        let name = name.str()?.to_str()?.to_ascii_lowercase();
        out.push((name.into_bytes(), encode_latin1(&value.str()?)?));
    }
    Ok(out)
}

/// Header text as HTTP/1.1 sends it (ISO-8859-1).
fn encode_latin1(text: &Bound<'_, PyString>) -> PyResult<Vec<u8>> {
    text.to_str()?
        .chars()
        .map(|c| {
            u8::try_from(u32::from(c)).map_err(|_| {
                PyValueError::new_err(format!("a header value must be ISO-8859-1 text: {text}"))
            })
        })
        .collect()
}

const JSON: &[u8] = b"application/json";
const BYTES: &[u8] = b"application/octet-stream";
const TEXT: &[u8] = b"text/plain; charset=utf-8";

/// A body's bytes: borrowed from the Python object that holds them (bytes,
/// or a buffer such as a numpy array's), or made here.
pub(crate) enum BodyBytes<'py> {
    Made(Vec<u8>),
    Bytes(Bound<'py, PyBytes>),
    Buffer(PyUntypedBuffer),
}

impl std::ops::Deref for BodyBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            BodyBytes::Made(bytes) => bytes,
            BodyBytes::Bytes(bytes) => bytes.as_bytes(),
            // SAFETY: only C-contiguous buffers are kept (checked in
            // `body_of`), and the `PyUntypedBuffer` keeps its object's
            // buffer exported, so alive and unmoved, while it lives.
            BodyBytes::Buffer(buffer) => unsafe {
                std::slice::from_raw_parts(buffer.buf_ptr().cast::<u8>(), buffer.len_bytes())
            },
        }
    }
}

/// The bytes of a response body, and the content type they are: bytes as
/// they are (a numpy array's too), text as UTF-8, anything else as JSON.
fn body_of<'py>(value: &Bound<'py, PyAny>) -> PyResult<(BodyBytes<'py>, &'static [u8])> {
    let py = value.py();
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Ok((BodyBytes::Bytes(bytes.clone()), BYTES));
    }
    if let Ok(bytes) = value.cast::<PyByteArray>() {
        return Ok((BodyBytes::Made(bytes.to_vec()), BYTES));
    }
    if value.is_instance_of::<PyMemoryView>() {
        let bytes = PyBytes::new(py, &[]).get_type().call1((value,))?;
        return Ok((BodyBytes::Bytes(bytes.cast_into::<PyBytes>()?), BYTES));
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok((BodyBytes::Made(text.to_str()?.as_bytes().to_vec()), TEXT));
    }
    if !value.is_instance_of::<PyDict>() && !value.is_instance_of::<PyList>() {
        // a numpy array, or anything else with C-contiguous bytes: as they are
        if let Ok(buffer) = PyUntypedBuffer::get(value) {
            if buffer.is_c_contiguous() {
                return Ok((BodyBytes::Buffer(buffer), BYTES));
            }
        }
    }
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let dumps = DUMPS.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("json")?.getattr("dumps")?.unbind())
    })?;
    let text = call1(dumps.bind(py), value)?;
    Ok((
        BodyBytes::Made(text.cast_into::<PyString>()?.to_str()?.as_bytes().to_vec()),
        JSON,
    ))
}

/// True when a request message's body lies in an arena (whose owner must
/// be told when the request is dropped).
pub(super) fn body_in_arena(message: &Message) -> bool {
    http_wire::decode_request(message.payload())
        .is_some_and(|request| matches!(request.body, Body::Arena(_)))
}

impl StepWorker {
    /// A task made from a request message by its route's
    /// `task_from_request`: for the handler, or sent on at once when this
    /// step's condition declines it; a request it raised on gets a 400.
    pub(super) fn load_request<'py>(
        &self,
        py: Python<'py>,
        message: &Message,
    ) -> PyResult<Load<'py>> {
        let header = message.header;
        let made = match &self.http {
            None => Err(PyRuntimeError::new_err(
                "the flow was not started by aqueduct.http.serve",
            )),
            Some(ends) => ends.route(header.kind).and_then(|(make, _, _, borrow)| {
                let request = ends.request(py, message.payload(), *borrow)?;
                let task = call1(make.bind(py), &request)?;
                let id = intern!(py, "request_id");
                // the handler sees which request its task is (a task that
                // takes no attributes does without)
                let _ = task.setattr(id, request.getattr(id)?);
                Ok(task)
            }),
        };
        let task = match made {
            Ok(task) => task,
            Err(e) => return Ok(Load::Sent(self.fail_task(py, message, e, 400)?)),
        };
        debug_assert!(header.kind & FLAG_HTTP != 0);
        let own = self.own.bind(py);
        let holds = if own.is(self.truth.bind(py)) {
            task.is_truthy()
        } else {
            call1(own, &task).and_then(|held| held.is_truthy())
        };
        let holds = match holds {
            Ok(holds) => holds,
            Err(e) => return Ok(Load::Sent(self.fail_task(py, message, e, 500)?)),
        };
        if !holds {
            return Ok(Load::Sent(self.forward_one(&task, message, None, None)?));
        }
        Ok(Load::Task(task, None, None))
    }
}
