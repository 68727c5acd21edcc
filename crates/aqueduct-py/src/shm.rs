//! Binding of the arena: `SharedArena` and `ShmView` (a buffer-protocol view
//! of a block that numpy, memoryview and pickle consume without copying).

use std::os::raw::c_int;
use std::sync::Arc;

use aqueduct_core::{Arena, TrackedArena};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::{dup_fd, to_py_err};

/// A memfd arena for large buffers. The creating (or `own=True`) process
/// allocates; any process may free.
#[pyclass(module = "aqueduct._core", frozen)]
pub struct SharedArena {
    pub(crate) inner: Arc<TrackedArena>,
}

fn buffer_of(obj: &Bound<'_, PyAny>) -> PyResult<PyUntypedBuffer> {
    let buffer = PyUntypedBuffer::get(obj)?;
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err("buffer is not C-contiguous"));
    }
    Ok(buffer)
}

#[pymethods]
impl SharedArena {
    /// A new arena of `capacity` bytes owned by this process; `track`: this
    /// process frees blocks once no view and no task holds them.
    #[staticmethod]
    #[pyo3(signature = (capacity, track=true))]
    fn create(capacity: u64, track: bool) -> PyResult<Self> {
        let arena = Arena::create(capacity).map_err(to_py_err)?;
        Ok(Self::wrap(arena, track))
    }

    /// Maps an inherited arena; `own`: this process becomes its allocator.
    #[staticmethod]
    #[pyo3(signature = (fd, own=false, track=false))]
    fn open(fd: i32, own: bool, track: bool) -> PyResult<Self> {
        let mut arena = Arena::open(dup_fd(fd)?).map_err(to_py_err)?;
        if own {
            arena.take_ownership();
        }
        Ok(Self::wrap(arena, track))
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.inner.arena().raw_fd()
    }

    #[getter]
    fn capacity(&self) -> u64 {
        self.inner.arena().capacity()
    }

    /// Bytes in allocated blocks.
    #[getter]
    fn used(&self) -> u64 {
        self.inner.arena().used()
    }

    /// Copies a C-contiguous buffer into a new block for task `key`; returns
    /// the block (its offset, which is also where the data starts). The copy
    /// runs with the GIL released.
    fn place(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>, key: u64) -> PyResult<u64> {
        let src = buffer_of(buffer)?;
        // SAFETY: the buffer is C-contiguous (checked), and `src` keeps it
        // exported, so alive and unmoved, until the end of this call.
        let bytes =
            unsafe { std::slice::from_raw_parts(src.buf_ptr().cast::<u8>(), src.len_bytes()) };
        let arena = &self.inner;
        let block = py.detach(|| arena.place(bytes, key));
        Ok(block.map_err(to_py_err)?.offset)
    }

    /// `(block, offset)` if the buffer's memory lies inside this arena.
    fn locate(&self, buffer: &Bound<'_, PyAny>) -> PyResult<Option<(u64, u64)>> {
        let src = PyUntypedBuffer::get(buffer)?;
        Ok(self
            .inner
            .arena()
            .locate(src.buf_ptr() as *const u8, src.len_bytes())
            .map(|(offset, block)| (block, offset)))
    }

    /// Allocates a block of `len` bytes for task `key` and returns
    /// `(block, view)`: a writable view of exactly `len` bytes.
    fn alloc(&self, len: u64, key: u64) -> PyResult<(u64, ShmView)> {
        let block = self.inner.arena().alloc(len, key).map_err(to_py_err)?;
        Ok((
            block.offset,
            self.make_view(block.offset, block.offset, len)?,
        ))
    }

    /// A writable view of `len` bytes at `offset` inside block `block`.
    fn view(&self, block: u64, offset: u64, len: u64) -> PyResult<ShmView> {
        self.make_view(block, offset, len)
    }

    /// Frees every block allocated for one of `keys` (tasks a dead worker
    /// held); returns how many.
    fn free_keys(&self, keys: Vec<u64>) -> usize {
        let keys: std::collections::HashSet<u64> = keys.into_iter().collect();
        self.inner.arena().free_where(&|key| keys.contains(&key))
    }

    /// Frees a block outright (a worker retiring a block only its task used).
    fn free(&self, block: u64) -> bool {
        self.inner.arena().free(block)
    }
}

impl SharedArena {
    fn wrap(arena: Arena, track: bool) -> Self {
        SharedArena {
            inner: Arc::new(TrackedArena::new(arena, track)),
        }
    }

    pub(crate) fn make_view(&self, block: u64, offset: u64, len: u64) -> PyResult<ShmView> {
        let ptr = self.inner.arena().ptr_at(offset, len).ok_or_else(|| {
            PyValueError::new_err(format!("range {offset}+{len} is outside the arena"))
        })?;
        self.inner.view_opened(block);
        Ok(ShmView {
            state: Arc::clone(&self.inner),
            block,
            ptr: ptr as usize,
            len: len as usize,
        })
    }
}

/// A writable view of part of an arena block; supports the buffer protocol.
/// The block stays allocated while a view of it lives (in tracked processes).
#[pyclass(module = "aqueduct._core", frozen)]
pub struct ShmView {
    state: Arc<TrackedArena>,
    block: u64,
    ptr: usize,
    len: usize,
}

#[pymethods]
impl ShmView {
    fn __len__(&self) -> usize {
        self.len
    }

    /// # Safety
    /// Called by CPython with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (ptr, len) = {
            let this = slf.get();
            (this.ptr, this.len)
        };
        let len =
            ffi::Py_ssize_t::try_from(len).map_err(|_| PyValueError::new_err("view too large"))?;
        // SAFETY: `view` is valid per the caller; the memory `ptr..ptr+len`
        // stays mapped while `slf` lives, and PyBuffer_FillInfo stores a new
        // reference to `slf` in the view, keeping it (and the mapping) alive.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                ptr as *mut std::ffi::c_void,
                len,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

impl Drop for ShmView {
    fn drop(&mut self) {
        self.state.view_closed(self.block);
    }
}
