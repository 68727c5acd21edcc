//! Task ids across fork, in a test binary of its own: forking while another
//! test thread holds the id pool's lock would hang the child.

use aqueduct_core::ids::uuid4;

#[test]
fn a_forked_child_does_not_repeat_its_parents_ids() {
    let before = uuid4(); // fills the pool in the parent
    assert!(before.is_some());
    let mut pipe = [0i32; 2];
    // SAFETY: `pipe` has room for two fds.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child only computes an id, writes it and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let id = uuid4().unwrap_or_default();
        // SAFETY: writes the id's bytes to the pipe, then exits at once.
        unsafe {
            libc::write(pipe[1], id.as_ptr().cast(), id.len());
            libc::_exit(0);
        }
    }
    let parent = uuid4().unwrap_or_default();
    let mut buf = [0u8; 36];
    // SAFETY: reads at most 36 bytes into `buf`; waits for the child.
    let n = unsafe {
        let n = libc::read(pipe[0], buf.as_mut_ptr().cast(), 36);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::close(pipe[0]);
        libc::close(pipe[1]);
        n
    };
    assert_eq!(n, 36);
    assert_ne!(
        String::from_utf8_lossy(&buf),
        parent,
        "the child repeated the parent's next id"
    );
}
