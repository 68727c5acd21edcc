//! An arena as one process uses it: placing buffers in it (a big copy split
//! across cores) and, in a process that decides when its blocks die (a
//! client: the caller of `Flow.process`, the HTTP server), counting what
//! holds each block — views of it in this process and tasks in flight that
//! refer to it — so that a block is freed exactly when neither is left.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::arena::{Arena, Block};
use crate::error::{Error, Result};

/// Below this, one thread copies; above, the copy is split across cores
/// (one core rarely saturates memory bandwidth on its own).
const PARALLEL_COPY_MIN: usize = 4 << 20;
/// Most threads one copy is split across.
const COPY_THREADS: usize = 4;

/// A mapped arena and, when tracked, the holds on its blocks.
#[derive(Debug)]
pub struct TrackedArena {
    arena: Arena,
    /// block offset -> (live views in this process, tasks in flight)
    holds: Option<Mutex<HashMap<u64, (u32, u32)>>>,
}

impl TrackedArena {
    /// `arena`, its blocks' holds counted when `track` (a block is then
    /// freed when its last hold goes).
    pub fn new(arena: Arena, track: bool) -> Self {
        TrackedArena {
            arena,
            holds: track.then(|| Mutex::new(HashMap::new())),
        }
    }

    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// Copies `bytes` into a new block for task `key` (owner only).
    pub fn place(&self, bytes: &[u8], key: u64) -> Result<Block> {
        let len = bytes.len() as u64;
        let block = self.arena.alloc(len, key)?;
        let Some(dst) = self.arena.ptr_at(block.offset, len) else {
            self.arena.free(block.offset);
            return Err(Error::InvalidArgument(format!(
                "a block of {len} bytes outside the arena"
            )));
        };
        // SAFETY: `dst..dst+len` lies inside a block allocated just now for
        // this call alone (no other process or thread has its offset yet),
        // and `bytes` is a live slice that cannot overlap the mapping's
        // fresh block.
        unsafe { copy_in_parallel(bytes, dst) };
        Ok(block)
    }

    /// A new block of `len` bytes for task `key`, filled by `write` (which
    /// gets the whole block); freed again when `write` fails.
    pub fn place_with(
        &self,
        len: usize,
        key: u64,
        write: impl FnOnce(&mut [u8]) -> std::result::Result<(), String>,
    ) -> Result<Block> {
        let block = self.arena.alloc(len as u64, key)?;
        let Some(dst) = self.arena.ptr_at(block.offset, len as u64) else {
            self.arena.free(block.offset);
            return Err(Error::InvalidArgument(format!(
                "a block of {len} bytes outside the arena"
            )));
        };
        // SAFETY: `dst..dst+len` lies inside the arena's mapping (checked by
        // `ptr_at`) in a block allocated just now for this call alone: no
        // other process or thread has its offset yet, so nothing else reads
        // or writes it while `write` has it.
        let out = unsafe { std::slice::from_raw_parts_mut(dst, len) };
        if let Err(why) = write(out) {
            self.arena.free(block.offset);
            return Err(Error::InvalidArgument(why));
        }
        Ok(block)
    }

    /// A view of `block` was made in this process.
    pub fn view_opened(&self, block: u64) {
        self.adjust(block, |h| {
            h.0 += 1;
            true
        });
    }

    /// A view of `block` is gone.
    pub fn view_closed(&self, block: u64) {
        self.adjust(block, |h| {
            h.0 = h.0.saturating_sub(1);
            true
        });
    }

    /// A task in flight now refers to `block`.
    pub fn retain(&self, block: u64) {
        self.adjust(block, |h| {
            h.1 += 1;
            true
        });
    }

    /// A task that referred to `block` is over; false (and nothing freed)
    /// for a block no task holds: freeing it then could hand memory that
    /// someone still reads to the next task.
    pub fn release(&self, block: u64) -> bool {
        self.adjust(block, |h| {
            let held = h.1 > 0;
            h.1 = h.1.saturating_sub(1);
            held
        })
    }

    /// Applies `change` to a block's `(views, tasks)` and frees the block
    /// when both are 0. `change` returns false, changing nothing, when a
    /// count would leave its range: nothing is freed then either. An
    /// untracked arena counts nothing (its blocks are freed by whoever
    /// passes them on).
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

/// Copies `src` to `dst`, split across up to `COPY_THREADS` threads when
/// it is big.
///
/// # Safety
/// `dst..dst + src.len()` must be writable memory that nothing else reads
/// or writes during the call and that does not overlap `src`.
pub unsafe fn copy_in_parallel(src: &[u8], dst: *mut u8) {
    let len = src.len();
    let threads = if len < PARALLEL_COPY_MIN {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(COPY_THREADS))
    };
    let chunk = (len.div_ceil(threads).div_ceil(64) * 64).max(1);
    // addresses as integers, so the chunks can cross into scoped threads
    let dst = dst as usize;
    std::thread::scope(|scope| {
        for (i, part) in src.chunks(chunk).enumerate().skip(1) {
            let at = dst + i * chunk;
            scope.spawn(move || {
                // SAFETY: a disjoint sub-range of `dst`, per the caller's promise.
                unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), at as *mut u8, part.len()) };
            });
        }
        if let Some(first) = src.chunks(chunk).next() {
            // SAFETY: as above, for the first chunk, on this thread.
            unsafe { std::ptr::copy_nonoverlapping(first.as_ptr(), dst as *mut u8, first.len()) };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_lives_while_a_view_or_a_task_holds_it() {
        let arena = TrackedArena::new(Arena::create(1 << 20).expect("arena"), true);
        let block = arena.place(b"payload", 1).expect("place").offset;
        arena.retain(block);
        arena.view_opened(block);
        assert!(arena.release(block));
        assert!(arena.arena().used() > 0, "a view still holds it");
        arena.view_closed(block);
        assert_eq!(arena.arena().used(), 0, "freed with its last hold");
    }

    #[test]
    fn releasing_a_block_no_task_holds_frees_nothing() {
        let arena = TrackedArena::new(Arena::create(1 << 20).expect("arena"), true);
        let block = arena.place(b"payload", 1).expect("place").offset;
        arena.view_opened(block);
        assert!(!arena.release(block));
        assert!(arena.arena().used() > 0);
    }

    #[test]
    fn a_big_copy_lands_whole() {
        let arena = TrackedArena::new(Arena::create(64 << 20).expect("arena"), false);
        let bytes: Vec<u8> = (0..(9 << 20)).map(|i: usize| (i % 251) as u8).collect();
        let block = arena.place(&bytes, 1).expect("place");
        let at = arena
            .arena()
            .ptr_at(block.offset, bytes.len() as u64)
            .expect("inside");
        // SAFETY: the block was just filled and nobody else uses it.
        let copied = unsafe { std::slice::from_raw_parts(at, bytes.len()) };
        assert!(copied == bytes.as_slice());
    }
}
