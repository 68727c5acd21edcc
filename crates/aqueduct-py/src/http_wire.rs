//! The HTTP message layouts of the core (`aqueduct_core::http_wire`) for
//! Python: the summary every error report starts with, and header text.

use aqueduct_core::http_wire;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// Text as HTTP/1.1 allows in a request head (ISO-8859-1: every byte is a
/// character).
pub(crate) fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(bytes) {
        Ok(text) if bytes.is_ascii() => PyString::new(py, text),
        _ => PyString::new(
            py,
            &bytes.iter().map(|&b| char::from(b)).collect::<String>(),
        ),
    }
}

/// The start of an error report: its HTTP status and `{"error", "type"}`
/// (and `"detail"`, JSON text, when given).
#[pyfunction]
#[pyo3(signature = (status, message, kind, detail=None))]
pub fn error_prefix<'py>(
    py: Python<'py>,
    status: u16,
    message: &str,
    kind: &str,
    detail: Option<&str>,
) -> PyResult<Bound<'py, PyBytes>> {
    let json = http_wire::error_json_with(message, kind, detail);
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

/// The step-times header of a traced answer: `(step, started_ns,
/// ended_ns)` per step the task went through.
#[pyfunction]
pub fn step_times(times: Vec<(u32, u64, u64)>) -> String {
    let times: Vec<http_wire::StepTime> = times
        .into_iter()
        .map(|(step, started_ns, ended_ns)| http_wire::StepTime {
            step,
            started_ns,
            ended_ns,
        })
        .collect();
    http_wire::encode_step_times(&times)
}

/// The summary of a finished generation on an OpenAI-compatible route
/// (`text` only when the request did not stream).
#[pyfunction]
#[pyo3(signature = (text, finish_reason, prompt_tokens, completion_tokens))]
pub fn openai_summary<'py>(
    py: Python<'py>,
    text: Option<String>,
    finish_reason: String,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> Bound<'py, PyBytes> {
    let summary = aqueduct_core::openai::Summary {
        text,
        finish_reason,
        prompt_tokens,
        completion_tokens,
    };
    PyBytes::new(py, &summary.encode())
}

/// The answer of an embeddings route: `rows` vectors of `dimensions`
/// little-endian `f32`s (`values`, any buffer of those bytes), and the
/// tokens the inputs counted.
#[pyfunction]
#[pyo3(signature = (values, rows, dimensions, prompt_tokens))]
pub fn openai_vectors<'py>(
    py: Python<'py>,
    values: &[u8],
    rows: u32,
    dimensions: u32,
    prompt_tokens: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    use aqueduct_core::openai_embeddings::{Vectors, HEAD};
    let expected = (rows as usize)
        .checked_mul(dimensions as usize)
        .and_then(|n| n.checked_mul(4));
    if expected != Some(values.len()) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{rows} vectors of {dimensions} float32s are not {} bytes",
            values.len()
        )));
    }
    let head = Vectors::head(rows, dimensions, prompt_tokens);
    PyBytes::new_with(py, HEAD + values.len(), |out| {
        out[..HEAD].copy_from_slice(&head);
        out[HEAD..].copy_from_slice(values);
        Ok(())
    })
}
