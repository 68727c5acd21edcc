//! memfd-backed shared memory segments.
//!
//! A segment is an anonymous memfd, sealed against growing and shrinking, mapped
//! `MAP_SHARED`. It has no name under /dev/shm: other processes get it by
//! inheriting or receiving the fd, and the kernel frees the memory when the last
//! fd and mapping are gone, even if every holder was SIGKILLed.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// Seals every segment carries once created: its size can never change, so a
/// mapping in another process can never be truncated under it (no SIGBUS).
const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;

/// A mapped memfd segment.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all concurrent access to it goes
// through atomics or through regions handed over by those atomics (see ring.rs).
unsafe impl Send for Segment {}
// SAFETY: as above, `&Segment` only exposes the base pointer and length.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes, sealed and mapped.
    /// With `populate` the pages are faulted in now rather than on first touch.
    pub fn create(name: &str, len: usize, populate: bool) -> Result<Self> {
        if len == 0 {
            return Err(Error::InvalidArgument("segment length must be > 0".into()));
        }
        let cname = CString::new(name)
            .map_err(|_| Error::InvalidArgument("segment name contains a NUL byte".into()))?;
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        let raw = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(Error::last_os("memfd_create"));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len)
            .map_err(|_| Error::InvalidArgument(format!("segment length {len} too large")))?;
        // Owner-only, like a private file: other users cannot open it through
        // /proc even where the process's fds would let them try.
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) } != 0 {
            return Err(Error::last_os("fchmod"));
        }
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(Error::last_os("ftruncate"));
        }
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS) } != 0 {
            return Err(Error::last_os("fcntl(F_ADD_SEALS)"));
        }
        Self::map(fd, len, populate)
    }

    /// Maps a segment received from another process. Checks that it is sealed
    /// against resizing, so the mapping stays valid whatever the sender does.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        // SAFETY: plain syscall on an fd we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(Error::last_os("fcntl(F_GET_SEALS)"));
        }
        if seals & (libc::F_SEAL_GROW | libc::F_SEAL_SHRINK)
            != (libc::F_SEAL_GROW | libc::F_SEAL_SHRINK)
        {
            return Err(Error::InvalidSegment(
                "segment is not sealed against resizing".into(),
            ));
        }
        // SAFETY: `stat` is plain old data; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out-pointer for the call.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::last_os("fstat"));
        }
        let len = usize::try_from(st.st_size)
            .map_err(|_| Error::InvalidSegment("negative segment size".into()))?;
        if len == 0 {
            return Err(Error::InvalidSegment("empty segment".into()));
        }
        Self::map(fd, len, false)
    }

    /// Duplicates `fd` (which the caller keeps) and maps the duplicate.
    pub fn from_borrowed_fd(fd: BorrowedFd<'_>) -> Result<Self> {
        let owned = fd
            .try_clone_to_owned()
            .map_err(|source| Error::Os { op: "dup", source })?;
        Self::from_fd(owned)
    }

    fn map(fd: OwnedFd, len: usize, populate: bool) -> Result<Self> {
        let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: a fresh mapping of `len` bytes of a file at least that long
        // (sealed, so it cannot shrink); the kernel chooses the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::last_os("mmap"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::last_os("mmap"))?;
        Ok(Segment { fd, ptr, len })
    }

    /// Base address of the mapping in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: segments have a positive length.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw fd, to pass to a child process.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`; no references
        // into it outlive `self` (callers borrow from `&self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
