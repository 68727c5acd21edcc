//! Tasks from the Rust HTTP server, in the worker: the first step's worker
//! makes a `KIND_HTTP_REQUEST` message a task with its route's
//! `task_from_request` (raising: a 400 for the server), and the worker that
//! finishes the task makes its `KIND_HTTP_RESPONSE` with the route's
//! `response_from_task` — both here, so an HTTP task costs no Python frame
//! of aqueduct's in the worker. The message's `kind` carries the route.

use aqueduct_core::http_wire::{self, Body};
use aqueduct_core::wire::{http_route, FLAG_HTTP, FLAG_STREAM};
use aqueduct_core::Message;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString};
use pyo3::{PyTraverseError, PyVisit};

use super::{Load, StepWorker};
use crate::calls::call1;
use crate::http_wire::latin1;
use crate::shm::SharedArena;

/// The HTTP server's ends of a flow, as a worker gets them from its
/// Python half: `(routes, Request, Response, arenas)` — per route its
/// `(task_from_request, response_from_task)`, the classes
/// `aqueduct.http.Request` and `Response`, and the flow's arenas (a big
/// request body lies in the server's). A streaming route's third function
/// makes the bytes of a part's chunk (None: bytes as they are, anything
/// else as a Server-Sent Event).
#[derive(FromPyObject)]
pub(crate) struct HttpEnds(Vec<RouteEnds>, Py<PyAny>, Py<PyAny>, Vec<Py<SharedArena>>);

/// A route's `(task_from_request, response_from_task, part_to_bytes)`.
type RouteEnds = (Py<PyAny>, Py<PyAny>, Option<Py<PyAny>>);

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
        for (request, response, part) in &self.0 {
            visit.call(request)?;
            visit.call(response)?;
            if let Some(part) = part {
                visit.call(part)?;
            }
        }
        visit.call(&self.1)?;
        visit.call(&self.2)
    }

    /// The `Request` a request message describes.
    fn request<'py>(&self, py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let request = http_wire::decode_request(payload).ok_or_else(|| {
            PyValueError::new_err("an HTTP request message that is not well-formed")
        })?;
        let headers = PyDict::new(py);
        for (name, value) in &request.headers {
            headers.set_item(latin1(py, name), latin1(py, value))?;
        }
        let body = match request.body {
            Body::Inline(bytes) => PyBytes::new(py, bytes),
            Body::Arena(r) => {
                let arena = self.3.get(r.arena as usize).ok_or_else(|| {
                    PyValueError::new_err(format!("a request body in arena {}", r.arena))
                })?;
                let arena = arena.get().inner.arena();
                let at = arena
                    .ptr_at(r.offset, r.len)
                    .ok_or_else(|| PyValueError::new_err("a request body outside its arena"))?;
                // SAFETY: `at..at+len` lies inside the arena's mapping
                // (checked by `ptr_at`); the server holds the block until an
                // answer about this request comes back, so nothing reuses it
                // while it is copied here.
                let bytes = unsafe { std::slice::from_raw_parts(at, r.len as usize) };
                PyBytes::new(py, bytes)
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
    pub(super) fn respond(&self, task: &Bound<'_, PyAny>, kind: u32) -> PyResult<Vec<u8>> {
        let py = task.py();
        let made = call1(self.route(kind)?.1.bind(py), task)?;
        if kind & FLAG_STREAM != 0 {
            let last = if made.is_instance(self.2.bind(py))? {
                made.getattr(intern!(py, "body"))?
            } else {
                made
            };
            let body = if last.is_none() {
                Vec::new()
            } else {
                self.part(&last, kind)?
            };
            let mut out = Vec::with_capacity(body.len() + 16);
            http_wire::encode_response(&mut out, 200, &[], &body)
                .ok_or_else(|| PyValueError::new_err("a response too large to encode"))?;
            return Ok(out);
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
        let mut out = Vec::with_capacity(body.len() + 64);
        http_wire::encode_response(&mut out, status, &pairs, &body)
            .ok_or_else(|| PyValueError::new_err("a response too large to encode"))?;
        Ok(out)
    }
}

impl HttpEnds {
    /// The bytes of the chunk a streamed part of an HTTP task (whose
    /// message `kind` names its route) is written as: the route's part
    /// function's, or bytes as they are and anything else as one
    /// Server-Sent Event (`data: <text or JSON>`, a `data:` line per line).
    pub(super) fn part(&self, part: &Bound<'_, PyAny>, kind: u32) -> PyResult<Vec<u8>> {
        let py = part.py();
        match &self.route(kind)?.2 {
            Some(encode) => chunk(&call1(encode.bind(py), part)?),
            None => chunk(part),
        }
    }
}

/// The chunk a streamed part is sent as: bytes as they are, anything else
/// as one Server-Sent Event of its text (JSON for what is not text).
pub(crate) fn chunk(part: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let (bytes, content_type) = body_of(part)?;
    if content_type == BYTES {
        return Ok(bytes);
    }
    Ok(http_wire::server_sent_event(&bytes))
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

/// The bytes of a response body, and the content type they are: bytes as
/// they are, text as UTF-8, anything else as JSON.
fn body_of(value: &Bound<'_, PyAny>) -> PyResult<(Vec<u8>, &'static [u8])> {
    let py = value.py();
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Ok((bytes.as_bytes().to_vec(), BYTES));
    }
    if let Ok(bytes) = value.cast::<PyByteArray>() {
        return Ok((bytes.to_vec(), BYTES));
    }
    if value.is_instance_of::<PyMemoryView>() {
        let bytes = PyBytes::new(py, &[]).get_type().call1((value,))?;
        return Ok((bytes.cast_into::<PyBytes>()?.as_bytes().to_vec(), BYTES));
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok((text.to_str()?.as_bytes().to_vec(), TEXT));
    }
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let dumps = DUMPS.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("json")?.getattr("dumps")?.unbind())
    })?;
    let text = call1(dumps.bind(py), value)?;
    Ok((
        text.cast_into::<PyString>()?.to_str()?.as_bytes().to_vec(),
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
            Some(ends) => ends.route(header.kind).and_then(|(make, _, _)| {
                let request = ends.request(py, message.payload())?;
                call1(make.bind(py), &request)
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
