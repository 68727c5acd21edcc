//! Calls into CPython's C pickler on the per-task path, so pickling a task
//! costs no Python frame, and the checks that send a task down the Python
//! path instead (buffers for shared memory, pickles too big for a queue).

use std::sync::atomic::{AtomicBool, Ordering};

use aqueduct_core::wire::{BUFFER_THRESHOLD, PICKLE_PROTOCOL};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};

/// pickle's `buffer_callback` on the fast path: buffers smaller than
/// [`BUFFER_THRESHOLD`] stay in the pickle; a bigger one (a numpy array for
/// shared memory) is noted, and the pickle is thrown away for the Python path.
#[pyclass(module = "aqueduct._core", frozen)]
pub(crate) struct BufferProbe {
    saw_big: AtomicBool,
}

#[pymethods]
impl BufferProbe {
    fn __call__(&self, buffer: &Bound<'_, PyAny>) -> bool {
        let small = PyUntypedBuffer::get(buffer).is_ok_and(|b| b.len_bytes() < BUFFER_THRESHOLD);
        if !small {
            self.saw_big.store(true, Ordering::Relaxed);
        }
        small
    }
}

struct Pickle {
    dumps: Py<PyAny>,
    loads: Py<PyAny>,
    probe: Py<BufferProbe>,
    /// `{"buffer_callback": probe}`, made once.
    kwargs: Py<PyDict>,
}

static PICKLE: PyOnceLock<Pickle> = PyOnceLock::new();

fn pickle(py: Python<'_>) -> PyResult<&Pickle> {
    PICKLE.get_or_try_init(py, || {
        let module = py.import("pickle")?;
        let probe = Py::new(
            py,
            BufferProbe {
                saw_big: AtomicBool::new(false),
            },
        )?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("buffer_callback", &probe)?;
        Ok(Pickle {
            dumps: module.getattr("dumps")?.unbind(),
            loads: module.getattr("loads")?.unbind(),
            probe,
            kwargs: kwargs.unbind(),
        })
    })
}

/// Pickles `obj` with protocol 5; `None` when it holds a buffer big enough
/// for shared memory (the Python path places those).
pub(crate) fn dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let p = pickle(py)?;
    let probe = p.probe.get();
    probe.saw_big.store(false, Ordering::Relaxed);
    let out = p
        .dumps
        .bind(py)
        .call((obj, PICKLE_PROTOCOL), Some(p.kwargs.bind(py)))?;
    if probe.saw_big.load(Ordering::Relaxed) {
        return Ok(None);
    }
    Ok(Some(out.cast_into::<PyBytes>()?))
}

/// Unpickles a payload taken from a queue (copied into `bytes`, so the
/// unpickler can keep nothing of ours alive).
pub(crate) fn loads<'py>(
    py: Python<'py>,
    payload: &Bound<'py, PyBytes>,
) -> PyResult<Bound<'py, PyAny>> {
    crate::calls::call1(pickle(py)?.loads.bind(py), payload)
}

/// True when one of `fields` (a task's `__dict__`) is a bytes-like object
/// or a torch CPU tensor big enough to go through shared memory (the
/// Python path places those; see `_ipc/tensors.py`).
pub(crate) fn has_big_bytes(fields: &Bound<'_, PyDict>) -> bool {
    let py = fields.py();
    let mut tensor = None;
    fields.iter().any(|(_, value)| {
        let len = if let Ok(b) = value.cast_exact::<PyBytes>() {
            b.as_bytes().len()
        } else if let Ok(b) = value.cast_exact::<PyByteArray>() {
            b.len()
        } else if value.is_exact_instance_of::<PyMemoryView>() {
            PyUntypedBuffer::get(&value).map_or(0, |b| b.len_bytes())
        } else {
            let tensor = tensor.get_or_insert_with(|| tensor_type(py));
            return tensor
                .as_ref()
                .is_some_and(|t| is_big_cpu_tensor(&value, t));
        };
        len >= BUFFER_THRESHOLD
    })
}

/// `torch.Tensor`, once something in this process imported torch.
fn tensor_type(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    static TENSOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static MODULES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    if let Some(t) = TENSOR.get(py) {
        return Some(t.bind(py).clone());
    }
    let modules = MODULES
        .get_or_try_init(py, || {
            let modules = py.import("sys")?.getattr("modules")?;
            PyResult::Ok(modules.cast_into::<PyDict>()?.unbind())
        })
        .ok()?;
    let torch = modules.bind(py).get_item("torch").ok()??;
    let tensor = torch.getattr("Tensor").ok()?;
    Some(TENSOR.get_or_init(py, || tensor.unbind()).bind(py).clone())
}

fn is_big_cpu_tensor(value: &Bound<'_, PyAny>, tensor: &Bound<'_, PyAny>) -> bool {
    let attr = |name: &str| value.getattr(name).ok();
    value.is_instance(tensor).unwrap_or(false)
        && attr("is_cpu").is_some_and(|cpu| cpu.is_truthy().unwrap_or(false))
        && attr("nbytes")
            .and_then(|n| n.extract::<usize>().ok())
            .is_some_and(|n| n >= BUFFER_THRESHOLD)
}
