//! Binding of the arena: `SharedArena` and `ShmView` (a buffer-protocol view
//! of a block that numpy, memoryview and pickle consume without copying).

use std::collections::HashMap;
use std::os::raw::c_int;
use std::sync::{Arc, Mutex, PoisonError};

use aqueduct_core::{Arena, Error};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::{dup_fd, to_py_err};

/// An arena mapped in this process plus, where this process decides when
/// blocks die (the parent), the count of views and tasks holding each block.
struct ArenaState {
    arena: Arena,
    /// block offset -> (live views in this process, tasks in flight)
    holds: Option<Mutex<HashMap<u64, (u32, u32)>>>,
}

impl ArenaState {
    /// Applies `change` to a block's `(views, tasks)` holds and frees the
    /// block when none is left. `change` returns false, changing nothing,
    /// when the count would leave its range: then nothing is freed either.
    fn adjust(&self, block: u64, change: impl FnOnce(&mut (u32, u32)) -> bool) -> bool {
        let Some(holds) = &self.holds else {
            return true;
        };
        let mut holds = holds.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = holds.entry(block).or_insert((0, 0));
        let in_range = change(entry);
        if *entry == (0, 0) {
            holds.remove(&block);
            if in_range {
                self.arena.free(block);
            }
        }
        in_range
    }
}

/// Below this, one thread copies; above, the copy is split across cores
/// (one core rarely saturates memory bandwidth on its own).
const PARALLEL_COPY_MIN: usize = 4 << 20;

/// Copies `len` bytes from `src` to `dst` (addresses as integers, so the
/// chunks can cross into scoped threads).
fn copy_in_parallel(src: usize, dst: usize, len: usize) {
    let threads = if len < PARALLEL_COPY_MIN {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    };
    let chunk = len.div_ceil(threads).div_ceil(64) * 64;
    std::thread::scope(|scope| {
        for start in (0..len).step_by(chunk.max(1)).skip(1) {
            let n = chunk.min(len - start);
            scope.spawn(move || {
                // SAFETY: disjoint sub-ranges of the source buffer (alive and
                // unchanged for the whole call) and of a block no one else uses.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (src + start) as *const u8,
                        (dst + start) as *mut u8,
                        n,
                    )
                };
            });
        }
        // SAFETY: as above, for the first chunk, on this thread.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, chunk.min(len)) };
    });
}

/// A memfd arena for large buffers. The creating (or `own=True`) process
/// allocates; any process may free.
#[pyclass(module = "aqueduct._core", frozen)]
pub struct SharedArena {
    inner: Arc<ArenaState>,
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
        self.inner.arena.raw_fd()
    }

    #[getter]
    fn capacity(&self) -> u64 {
        self.inner.arena.capacity()
    }

    /// Bytes in allocated blocks.
    #[getter]
    fn used(&self) -> u64 {
        self.inner.arena.used()
    }

    /// Copies a C-contiguous buffer into a new block for task `key`; returns
    /// the block (its offset, which is also where the data starts). The copy
    /// runs with the GIL released.
    fn place(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>, key: u64) -> PyResult<u64> {
        let src = buffer_of(buffer)?;
        let len = src.len_bytes();
        let ptr = src.buf_ptr() as usize;
        let arena = &self.inner.arena;
        let block = py.detach(|| -> Result<_, Error> {
            let block = arena.alloc(len as u64, key)?;
            if let Some(dst) = arena.ptr_at(block.offset, len as u64) {
                copy_in_parallel(ptr, dst as usize, len);
            }
            Ok(block)
        });
        Ok(block.map_err(to_py_err)?.offset)
    }

    /// `(block, offset)` if the buffer's memory lies inside this arena.
    fn locate(&self, buffer: &Bound<'_, PyAny>) -> PyResult<Option<(u64, u64)>> {
        let src = PyUntypedBuffer::get(buffer)?;
        Ok(self
            .inner
            .arena
            .locate(src.buf_ptr() as *const u8, src.len_bytes())
            .map(|(offset, block)| (block, offset)))
    }

    /// Allocates a block of `len` bytes for task `key` and returns
    /// `(block, view)`: a writable view of exactly `len` bytes.
    fn alloc(&self, len: u64, key: u64) -> PyResult<(u64, ShmView)> {
        let block = self.inner.arena.alloc(len, key).map_err(to_py_err)?;
        Ok((
            block.offset,
            self.make_view(block.offset, block.offset, len)?,
        ))
    }

    /// A writable view of `len` bytes at `offset` inside block `block`.
    fn view(&self, block: u64, offset: u64, len: u64) -> PyResult<ShmView> {
        self.make_view(block, offset, len)
    }

    /// A task in flight now refers to `block` (tracked arenas only).
    fn retain(&self, block: u64) {
        self.inner.adjust(block, |h| {
            h.1 += 1;
            true
        });
    }

    /// A task that referred to `block` has finished (tracked arenas only).
    /// Raises `BadReferenceCount` for a block no task holds: freeing it then
    /// could hand memory someone still reads to the next task.
    fn release(&self, py: Python<'_>, block: u64) -> PyResult<()> {
        let released = self.inner.adjust(block, |h| {
            let held = h.1 > 0;
            h.1 = h.1.saturating_sub(1);
            held
        });
        if released {
            return Ok(());
        }
        let ty = py
            .import("aqueduct.exceptions")?
            .getattr("BadReferenceCount")?;
        Err(PyErr::from_type(
            ty.cast_into()?,
            format!("block {block} released by more tasks than retained it"),
        ))
    }

    /// Frees every block allocated for one of `keys` (tasks a dead worker
    /// held); returns how many.
    fn free_keys(&self, keys: Vec<u64>) -> usize {
        let keys: std::collections::HashSet<u64> = keys.into_iter().collect();
        self.inner.arena.free_where(&|key| keys.contains(&key))
    }

    /// Frees a block outright (a worker retiring a block only its task used).
    fn free(&self, block: u64) -> bool {
        self.inner.arena.free(block)
    }
}

impl SharedArena {
    fn wrap(arena: Arena, track: bool) -> Self {
        SharedArena {
            inner: Arc::new(ArenaState {
                arena,
                holds: track.then(|| Mutex::new(HashMap::new())),
            }),
        }
    }

    fn make_view(&self, block: u64, offset: u64, len: u64) -> PyResult<ShmView> {
        let ptr = self.inner.arena.ptr_at(offset, len).ok_or_else(|| {
            PyValueError::new_err(format!("range {offset}+{len} is outside the arena"))
        })?;
        self.inner.adjust(block, |h| {
            h.0 += 1;
            true
        });
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
    state: Arc<ArenaState>,
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
        self.state.adjust(self.block, |h| {
            h.0 = h.0.saturating_sub(1);
            true
        });
    }
}

/// The arena of the HTTP server's client slot, where it puts big bodies.
pub(crate) struct ServerArena {
    state: Arc<ArenaState>,
    index: u32,
}

impl SharedArena {
    /// This arena, for the HTTP server of client slot `index`.
    pub(crate) fn for_server(&self, index: u32) -> ServerArena {
        ServerArena {
            state: Arc::clone(&self.inner),
            index,
        }
    }
}

impl aqueduct_http::BodyArena for ServerArena {
    fn index(&self) -> u32 {
        self.index
    }

    fn place(&self, bytes: &[u8], key: u64) -> Option<u64> {
        let arena = &self.state.arena;
        let block = arena.alloc(bytes.len() as u64, key).ok()?;
        let Some(dst) = arena.ptr_at(block.offset, bytes.len() as u64) else {
            arena.free(block.offset);
            return None;
        };
        copy_in_parallel(bytes.as_ptr() as usize, dst as usize, bytes.len());
        Some(block.offset)
    }

    fn free(&self, offset: u64) {
        self.state.arena.free(offset);
    }
}
