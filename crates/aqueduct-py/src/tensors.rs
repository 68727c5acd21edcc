//! Tensor tables (`aqueduct_core::tensor_table`) for `aqueduct.kserve`:
//! a worker reads a request's inputs from one (over the arena, without a
//! copy) and writes its outputs as one.

use aqueduct_core::tensor_table::{self, Datatype, Table, Tensor};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A table's tensor, as Python gets it: name, datatype, shape, and where
/// its bytes are in the table (offset, length).
type EntryTuple = (String, &'static str, Vec<u64>, usize, usize);

/// The bytes of a C-contiguous buffer, while `buffer` lives.
fn bytes_of(buffer: &PyUntypedBuffer) -> PyResult<&[u8]> {
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "a tensor buffer must be C-contiguous",
        ));
    }
    // SAFETY: the buffer is C-contiguous (checked above), so its
    // `len_bytes` bytes from `buf_ptr` are its data; the `PyUntypedBuffer`
    // keeps its object's buffer exported, alive and unmoved, for as long
    // as the returned slice borrows it.
    Ok(unsafe { std::slice::from_raw_parts(buffer.buf_ptr().cast::<u8>(), buffer.len_bytes()) })
}

/// The meta and the tensors of `table` (any buffer: bytes, or a view of
/// the arena); raises ValueError for one that is not well-formed.
#[pyfunction]
pub fn read_tensor_table<'py>(
    py: Python<'py>,
    table: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyBytes>, Vec<EntryTuple>)> {
    let buffer = PyUntypedBuffer::get(table)?;
    let bytes = bytes_of(&buffer)?;
    let read = Table::read(bytes).map_err(PyValueError::new_err)?;
    let entries = read
        .tensors
        .iter()
        .map(|t| {
            let name = t.name.to_owned();
            (name, t.datatype.name(), t.shape.clone(), t.offset, t.len)
        })
        .collect();
    Ok((PyBytes::new(py, read.meta), entries))
}

/// `tensors` — `(name, datatype, shape, buffer)`, the buffer C-contiguous
/// with the tensor's bytes (`BYTES`: each element's u32 length, then its
/// bytes) — as a table with `meta`; ValueError names a tensor whose bytes
/// do not fit its shape.
#[pyfunction]
pub fn write_tensor_table<'py>(
    py: Python<'py>,
    meta: &[u8],
    tensors: Vec<(String, String, Vec<u64>, Bound<'py, PyAny>)>,
) -> PyResult<Bound<'py, PyBytes>> {
    let buffers = tensors
        .iter()
        .map(|(_, _, _, data)| PyUntypedBuffer::get(data))
        .collect::<PyResult<Vec<_>>>()?;
    let mut made = Vec::with_capacity(tensors.len());
    for ((name, datatype, shape, _), buffer) in tensors.iter().zip(&buffers) {
        let datatype = Datatype::from_name(datatype)
            .ok_or_else(|| PyValueError::new_err(format!("no datatype {datatype}")))?;
        made.push(Tensor {
            name,
            datatype,
            shape,
            data: bytes_of(buffer)?,
        });
    }
    let len = tensor_table::table_len(meta, &made);
    PyBytes::new_with(py, len, |out| {
        tensor_table::write_into(out, meta, &made).map_err(PyValueError::new_err)
    })
}
