//! Helpers for tests that cross a real process boundary: the test binary
//! re-executes itself, running one `#[test]` as the child, with fds inherited.

// Each test binary that includes this module uses only some of its helpers.
#![allow(dead_code)]

use std::os::fd::RawFd;
use std::process::{Child, Command};

/// Environment variable naming the child role; tests return at once without it.
pub const ROLE: &str = "AQUEDUCT_TEST_CHILD";
/// Comma-separated fd numbers the child inherits.
pub const FDS: &str = "AQUEDUCT_TEST_FDS";

/// Starts this test binary running only `test_name`, as `role`, inheriting `fds`.
pub fn spawn_child(test_name: &str, role: &str, fds: &[RawFd]) -> Child {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().expect("test binary path");
    let fd_list: Vec<String> = fds.iter().map(ToString::to_string).collect();
    let keep: Vec<RawFd> = fds.to_vec();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(FDS, fd_list.join(","));
    // SAFETY: between fork and exec the closure only calls fcntl, which is
    // async-signal-safe, on fds that exist in the parent; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &keep {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn child test process")
}

/// In the child: the role and inherited fds, or None in a normal test run.
pub fn child_role() -> Option<(String, Vec<RawFd>)> {
    let role = std::env::var(ROLE).ok()?;
    let fds = std::env::var(FDS)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("fd number"))
        .collect();
    Some((role, fds))
}

/// Returns once `condition` holds; panics after `secs` seconds.
pub fn eventually(secs: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        std::thread::yield_now();
    }
}

/// Waits for a child with a bound, killing it if it overstays.
pub fn wait_child(mut child: Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("child process did not finish within {secs}s");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
