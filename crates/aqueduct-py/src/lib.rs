//! `aqueduct._core`: the thin PyO3 binding of `aqueduct-core`.
//!
//! It converts arguments and errors and nothing else. Every call that can block
//! releases the GIL and wakes at least every 100 ms to run Python's signal
//! handlers, so Ctrl-C and SIGTERM handlers work in workers waiting for tasks.

use std::os::fd::{BorrowedFd, OwnedFd};

use aqueduct_core::{monotonic_ns, wire, Error};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

mod calls;
mod client;
mod control;
mod http_server;
mod http_wire;
mod message;
mod pickle;
mod queue;
mod shm;
mod state;
mod tensors;
mod worker;

/// Raises the public exception for a core error (the core's one map).
pub(crate) fn to_py_err(err: Error) -> PyErr {
    let (name, _status) = err.kind();
    if name == "ValueError" {
        return PyValueError::new_err(err.to_string());
    }
    Python::attach(|py| match exception(py, name) {
        Ok(ty) => PyErr::from_type(ty, err.to_string()),
        Err(import_error) => import_error,
    })
}

/// The class `name` of `aqueduct.exceptions` (looked up once).
pub(crate) fn exception<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    static CLASSES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let module = CLASSES.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("aqueduct.exceptions")?.into_any().unbind())
    })?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// True when `err` is `SharedMemoryCorruptError`: the process must stop
/// reading the flow's shared memory.
pub(crate) fn is_corrupt(py: Python<'_>, err: &PyErr) -> bool {
    exception(py, "SharedMemoryCorruptError").is_ok_and(|ty| err.is_instance(py, &ty))
}

/// Runs Python signal handlers from inside a GIL-released wait; a raised
/// exception is kept to be re-raised once the wait returns.
pub(crate) fn signal_checker(pending: &mut Option<PyErr>) -> impl FnMut() -> bool + '_ {
    move || {
        if pending.is_some() {
            return true;
        }
        match Python::attach(|py| py.check_signals()) {
            Ok(()) => false,
            Err(e) => {
                *pending = Some(e);
                true
            }
        }
    }
}

pub(crate) fn deadline_after(timeout_s: Option<f64>) -> PyResult<Option<u64>> {
    match timeout_s {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(PyValueError::new_err("timeout must be >= 0")),
        Some(t) => Ok(Some(
            monotonic_ns().saturating_add((t.min(1e9) * 1e9) as u64),
        )),
    }
}
pub(crate) fn dup_fd(fd: i32) -> PyResult<OwnedFd> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!("invalid fd {fd}")));
    }
    // SAFETY: the caller passes an fd open in this process; we only borrow it
    // long enough to duplicate it, and never close the original.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed
        .try_clone_to_owned()
        .map_err(|source| to_py_err(Error::Os { op: "dup", source }))
}
/// A random UUID as text, as `str(uuid.uuid4())`, without a system call
/// per id; None when the kernel gives no random bytes.
#[pyfunction]
fn uuid4() -> Option<String> {
    aqueduct_core::ids::uuid4()
}

/// The fields a `KIND_STATE` body holds, as a dict (for the Python paths).
#[pyfunction]
fn state_fields<'py>(py: Python<'py>, body: &[u8]) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    state::decode(py, body)
}

/// `(arena, block, offset, length)` of a shared-memory reference.
type Ref = (u32, u64, u64, u64);

/// The refs prefix of a `FLAG_REFS` payload (the layout is the core's).
#[pyfunction]
fn encode_refs<'py>(py: Python<'py>, refs: Vec<Ref>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let refs: Vec<wire::ArenaRef> = refs
        .into_iter()
        .map(|(arena, block, offset, len)| wire::ArenaRef {
            arena,
            block,
            offset,
            len,
        })
        .collect();
    let mut out = Vec::with_capacity(4 + refs.len() * wire::REF_BYTES);
    wire::encode_refs(&refs, &mut out).ok_or_else(|| PyValueError::new_err("too many refs"))?;
    Ok(pyo3::types::PyBytes::new(py, &out))
}

/// A `FLAG_REFS` payload's refs and where what follows them starts;
/// ValueError when it is not well-formed.
#[pyfunction]
fn split_refs(payload: &[u8]) -> PyResult<(Vec<Ref>, usize)> {
    let (refs, rest) = wire::split_refs(payload)
        .ok_or_else(|| PyValueError::new_err("a payload without its refs"))?;
    let refs = refs
        .into_iter()
        .map(|r| (r.arena, r.block, r.offset, r.len))
        .collect();
    Ok((refs, payload.len() - rest.len()))
}

/// A `KIND_STATE` payload's class name (`module`, NUL, `qualname`) and
/// where its body starts; ValueError when it is not well-formed.
#[pyfunction]
fn split_state(payload: &[u8]) -> PyResult<(Vec<u8>, usize)> {
    let (name, body) = wire::split_state(payload)
        .ok_or_else(|| PyValueError::new_err("a task state without its class"))?;
    Ok((name.to_vec(), payload.len() - body.len()))
}

/// The chunk a streamed part is sent as over HTTP: bytes as they are,
/// anything else as one Server-Sent Event (what the Rust server sends).
#[pyfunction]
fn part_chunk<'py>(
    py: Python<'py>,
    part: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    Ok(pyo3::types::PyBytes::new(py, &worker::chunk(part)?))
}

/// The Server-Sent Event that ends a stream whose task failed.
#[pyfunction]
fn error_event<'py>(
    py: Python<'py>,
    message: &str,
    kind: &str,
) -> Bound<'py, pyo3::types::PyBytes> {
    pyo3::types::PyBytes::new(py, &aqueduct_core::http_wire::error_event(message, kind))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<message::PyMessage>()?;
    m.add_class::<queue::Queue>()?;
    m.add_class::<queue::Doorbell>()?;
    m.add_class::<control::PyControl>()?;
    m.add_class::<client::Client>()?;
    m.add_class::<worker::StepWorker>()?;
    m.add_class::<shm::SharedArena>()?;
    m.add_class::<shm::ShmView>()?;
    m.add_class::<http_server::HttpServer>()?;
    m.add_function(wrap_pyfunction!(uuid4, m)?)?;
    m.add_function(wrap_pyfunction!(part_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(error_event, m)?)?;
    m.add_function(wrap_pyfunction!(state_fields, m)?)?;
    m.add_function(wrap_pyfunction!(encode_refs, m)?)?;
    m.add_function(wrap_pyfunction!(split_refs, m)?)?;
    m.add_function(wrap_pyfunction!(split_state, m)?)?;
    m.add_function(wrap_pyfunction!(http_wire::error_prefix, m)?)?;
    m.add_function(wrap_pyfunction!(http_wire::error_rest, m)?)?;
    m.add_function(wrap_pyfunction!(http_wire::step_times, m)?)?;
    m.add_function(wrap_pyfunction!(http_wire::openai_summary, m)?)?;
    m.add_function(wrap_pyfunction!(http_wire::openai_vectors, m)?)?;
    m.add_function(wrap_pyfunction!(tensors::read_tensor_table, m)?)?;
    m.add_function(wrap_pyfunction!(tensors::write_tensor_table, m)?)?;
    // the constants and limits, each defined once in the core
    for (name, value) in aqueduct_core::exported::NUMBERS {
        m.add(name, value)?;
    }
    for (name, names) in aqueduct_core::exported::NAMES {
        m.add(name, names)?;
    }
    for (name, text) in aqueduct_core::exported::TEXTS {
        m.add(name, text)?;
    }
    Ok(())
}
