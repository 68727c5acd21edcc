//! Wake-ups across processes: futex words in shared memory and eventfds.
//!
//! Futexes here are *shared* (no `FUTEX_PRIVATE_FLAG`): the kernel keys them by
//! the physical page, so processes mapping the same memfd wait on the same word.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use crate::error::{Error, Result};

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock Python's `time.monotonic_ns()`
/// reads on Linux, shared by every process on the machine.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Blocks while `*word == expected`, for at most `timeout` (forever if `None`).
/// Returns on a wake-up, a changed value, a signal or the timeout; callers
/// re-check their condition in every case.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos()),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` points into a live mapping for the duration of the call and
    // is 4-byte aligned (an AtomicU32); `ts_ptr` is null or points to `ts`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `count` processes blocked on `word`.
pub fn futex_wake(word: &AtomicU32, count: i32) {
    // SAFETY: `word` points into a live mapping for the duration of the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// A non-blocking eventfd: the doorbell an asyncio loop watches with `add_reader`.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(Error::last_os("eventfd"));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(EventFd { fd })
    }

    /// Wraps an eventfd received from another process.
    pub fn from_fd(fd: OwnedFd) -> Self {
        EventFd { fd }
    }

    /// Makes the fd readable (adds one to its counter).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. EAGAIN (counter saturated)
        // leaves the fd readable, which is all a doorbell needs.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Resets the counter; returns how many signals were pending (0 if none).
    pub fn drain(&self) -> u64 {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; non-blocking, EAGAIN when unset.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        if n == 8 {
            value
        } else {
            0
        }
    }

    /// Blocks until the fd is readable or `timeout` passes; true if readable.
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
