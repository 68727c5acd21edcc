//! The HTTP message layouts of the core (`aqueduct_core::http_wire`) for
//! workers' Python: reading a request, writing a response, and the summary
//! every error report starts with.

use aqueduct_core::http_wire;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

/// Where a request's body lies in an arena: `(arena, block, offset, length)`.
type BodyRef = (u32, u64, u64, u64);

/// Text as HTTP/1.1 allows in a request head (ISO-8859-1: every byte is a
/// character).
fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(bytes) {
        Ok(text) if bytes.is_ascii() => PyString::new(py, text),
        _ => PyString::new(
            py,
            &bytes.iter().map(|&b| char::from(b)).collect::<String>(),
        ),
    }
}

/// `(method, path, query, headers, body, body_ref)` of a `KIND_HTTP_REQUEST`
/// payload, as text (headers a dict, names lower-case as the server got
/// them): `body` is the bytes when they came inline, `body_ref` where they
/// lie when they came through an arena. Raises ValueError for a payload that
/// is not well-formed.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn decode_http_request<'py>(
    py: Python<'py>,
    payload: &[u8],
) -> PyResult<(
    Bound<'py, PyString>,
    Bound<'py, PyString>,
    Bound<'py, PyString>,
    Bound<'py, PyDict>,
    Option<Bound<'py, PyBytes>>,
    Option<BodyRef>,
)> {
    let request = http_wire::decode_request(payload)
        .ok_or_else(|| PyValueError::new_err("an HTTP request message that is not well-formed"))?;
    let headers = PyDict::new(py);
    for (name, value) in &request.headers {
        headers.set_item(latin1(py, name), latin1(py, value))?;
    }
    let (body, body_ref) = match request.body {
        http_wire::Body::Inline(bytes) => (Some(PyBytes::new(py, bytes)), None),
        http_wire::Body::Arena(r) => (None, Some((r.arena, r.block, r.offset, r.len))),
    };
    Ok((
        latin1(py, request.method),
        latin1(py, request.path),
        latin1(py, request.query),
        headers,
        body,
        body_ref,
    ))
}

/// A `KIND_HTTP_RESPONSE` payload.
#[pyfunction]
pub fn encode_http_response<'py>(
    py: Python<'py>,
    status: u16,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let borrowed: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    let mut out = Vec::with_capacity(body.len() + 64);
    http_wire::encode_response(&mut out, status, &borrowed, body)
        .ok_or_else(|| PyValueError::new_err("an HTTP response too large to encode"))?;
    Ok(PyBytes::new(py, &out))
}

/// The start of an error report: its HTTP status and `{"error", "type"}`.
#[pyfunction]
pub fn error_prefix<'py>(
    py: Python<'py>,
    status: u16,
    message: &str,
    kind: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let json = http_wire::error_json(message, kind);
    let prefix = http_wire::error_prefix(status, &json)
        .ok_or_else(|| PyValueError::new_err("an error message too large to encode"))?;
    Ok(PyBytes::new(py, &prefix))
}

/// What follows an error report's summary (raises ValueError when the
/// payload does not start with one).
#[pyfunction]
pub fn error_rest<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let summary = http_wire::split_error(payload)
        .ok_or_else(|| PyValueError::new_err("an error report without its summary"))?;
    Ok(PyBytes::new(py, summary.rest))
}
