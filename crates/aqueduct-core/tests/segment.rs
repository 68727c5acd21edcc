use std::os::fd::AsFd;

use aqueduct_core::Segment;

#[test]
fn segment_is_an_anonymous_sealed_memfd() {
    let before: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .into_iter()
        .collect();
    let seg = Segment::create("aqueduct-test", 1 << 20, false).expect("create");
    let after: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert_eq!(
        before, after,
        "a memfd segment must not appear under /dev/shm"
    );

    let link = std::fs::read_link(format!("/proc/self/fd/{}", seg.raw_fd())).expect("readlink");
    assert!(
        link.to_string_lossy().starts_with("/memfd:aqueduct-test"),
        "{link:?}"
    );

    let seals = unsafe_fcntl_seals(seg.raw_fd());
    assert_eq!(seals & libc::F_SEAL_GROW, libc::F_SEAL_GROW);
    assert_eq!(seals & libc::F_SEAL_SHRINK, libc::F_SEAL_SHRINK);
    // SAFETY: plain syscall on a live fd.
    let rc = unsafe { libc::ftruncate(seg.raw_fd(), 10) };
    assert_eq!(rc, -1, "a sealed segment cannot shrink");
}

fn unsafe_fcntl_seals(fd: i32) -> i32 {
    // SAFETY: plain syscall on a live fd.
    unsafe { libc::fcntl(fd, libc::F_GET_SEALS) }
}

#[test]
fn a_second_mapping_sees_the_same_bytes() {
    let seg = Segment::create("aqueduct-test", 4096, true).expect("create");
    let other = Segment::from_borrowed_fd(seg.as_fd()).expect("map again");
    assert_eq!(other.len(), 4096);
    // SAFETY: both mappings are live and 4096 bytes long.
    unsafe {
        seg.as_ptr().add(100).write(42);
        assert_eq!(other.as_ptr().add(100).read(), 42);
    }
}

#[test]
fn an_unsealed_fd_is_refused() {
    // SAFETY: plain syscalls; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"plain".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: plain syscall on our fd.
    assert_eq!(unsafe { libc::ftruncate(fd, 4096) }, 0);
    // SAFETY: `fd` is ours and not used elsewhere.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let err = Segment::from_fd(owned).expect_err("unsealed must be refused");
    assert!(err.to_string().contains("sealed"), "{err}");
}

#[test]
fn zero_length_is_an_error_not_a_panic() {
    assert!(Segment::create("x", 0, false).is_err());
}
