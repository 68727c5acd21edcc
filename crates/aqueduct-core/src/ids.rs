//! Random (version 4) UUIDs for task ids, without a system call per id.
//!
//! `str(uuid.uuid4())` asks the kernel for 16 random bytes every time; a
//! web server making a task per request pays that syscall per request. Here
//! random bytes are fetched from the kernel 4 KiB at a time into a page
//! mapped with `MADV_WIPEONFORK`: a forked child finds the page zeroed, its
//! "filled" mark gone, and fetches fresh bytes, so parent and child never hand
//! out the same id. Without `MADV_WIPEONFORK` (Linux < 4.14) every id asks
//! the kernel, as `uuid.uuid4` does.

use std::sync::{Mutex, OnceLock};

const PAGE: usize = 4096;
/// Bytes of the page before the random ones: the filled mark and position.
const HEADER: usize = 16;
const ID_BYTES: usize = 16;

/// The pool page: `[filled: u64][position: u64][random bytes...]`.
struct Pool(*mut u8);

// SAFETY: the page is only touched through the `Mutex` around the pool.
unsafe impl Send for Pool {}

fn pool() -> &'static Mutex<Option<Pool>> {
    static POOL: OnceLock<Mutex<Option<Pool>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(map_pool()))
}

fn map_pool() -> Option<Pool> {
    // SAFETY: a fresh anonymous private mapping; checked for failure below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `page` is the mapping just made, `PAGE` bytes long.
    if unsafe { libc::madvise(page, PAGE, libc::MADV_WIPEONFORK) } != 0 {
        // SAFETY: unmaps the mapping made above, used by nothing else.
        unsafe { libc::munmap(page, PAGE) };
        return None;
    }
    Some(Pool(page.cast()))
}

/// Fills `buf` from the kernel's random pool.
fn getrandom(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most `buf.len() - filled` bytes into `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        filled += n as usize;
    }
    true
}

/// 16 random bytes, from the pool when there is one.
fn random_bytes() -> Option<[u8; ID_BYTES]> {
    let mut out = [0u8; ID_BYTES];
    let Ok(mut guard) = pool().lock() else {
        return getrandom(&mut out).then_some(out);
    };
    let Some(pool) = guard.as_mut() else {
        return getrandom(&mut out).then_some(out);
    };
    // SAFETY: the page is `PAGE` bytes, 8-byte aligned (page aligned), ours
    // under the lock; the header words and the random area lie inside it.
    unsafe {
        let filled = pool.0.cast::<u64>();
        let position = pool.0.add(8).cast::<u64>();
        let area = std::slice::from_raw_parts_mut(pool.0.add(HEADER), PAGE - HEADER);
        if *filled == 0 || *position as usize + ID_BYTES > area.len() {
            if !getrandom(area) {
                *filled = 0;
                drop(guard);
                return getrandom(&mut out).then_some(out);
            }
            *filled = 1;
            *position = 0;
        }
        let at = *position as usize;
        out.copy_from_slice(&area[at..at + ID_BYTES]);
        area[at..at + ID_BYTES].fill(0); // handed out once
        *position += ID_BYTES as u64;
    }
    Some(out)
}

/// A random UUID in its canonical text form, as `str(uuid.uuid4())`.
/// `None` only when the kernel gives no random bytes.
pub fn uuid4() -> Option<String> {
    let mut bytes = random_bytes()?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(HEX[usize::from(byte >> 4)] as char);
        text.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_look_like_uuid4_and_do_not_repeat() {
        let ids: HashSet<String> = (0..10_000).filter_map(|_| uuid4()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.len(), 36);
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts[2].starts_with('4'), "version 4: {id}");
            assert!("89ab".contains(&parts[3][..1]), "RFC 4122 variant: {id}");
        }
    }
}
