//! A memfd arena for large buffers (arrays, bytes) shared by every process of
//! a flow.
//!
//! Each process that produces large buffers *owns* one arena and is the only
//! one that allocates in it, so allocation needs no cross-process lock: the
//! owner keeps its free runs in process-local memory. Any process may *free* a
//! block by flipping its state in the shared block table to `FREED`; the owner
//! folds freed blocks back into its free runs when it next needs room. Freed
//! pages are reused lowest-address first, so a steady workload keeps touching
//! the same, already faulted pages. The segment is sparse: pages cost memory
//! only once written, and the kernel frees everything with the last process
//! that maps it, even after SIGKILL.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::segment::Segment;

const MAGIC: u64 = 0x6171_7565_6475_6172; // "aqueduar"
const VERSION: u32 = 1;

const FREE: u32 = 0;
const ALLOCATED: u32 = 1;
const FREED: u32 = 2;

/// Allocation granularity: blocks are whole pages of this size.
pub const PAGE: u64 = 64 * 1024;

#[repr(C)]
#[derive(Debug)]
struct Header {
    magic: u64,
    version: u32,
    _pad: u32,
    pages: u64,
    data_offset: u64,
    /// Bumped by every free, so the owner knows when reclaiming is worth a scan.
    frees: AtomicU64,
}

/// One entry per page. For the first page of a block, `pages` is the block
/// length and `state` its state; every page of a block records `start`.
#[repr(C)]
#[derive(Debug)]
struct Entry {
    state: AtomicU32,
    start: AtomicU32,
    pages: AtomicU32,
    _pad: u32,
    /// The task the block was allocated for (diagnostics and cleanup).
    key: AtomicU64,
}

/// A block handed out by [`Arena::alloc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Byte offset of the block's data from the start of the data region.
    pub offset: u64,
    /// Usable bytes (whole pages).
    pub capacity: u64,
}

/// A mapped arena; `owner` arenas can allocate.
#[derive(Debug)]
pub struct Arena {
    segment: Segment,
    pages: u64,
    data_offset: u64,
    /// Free runs `start page -> pages`, only in the owning process, and the
    /// value of `frees` when they were last brought up to date.
    free: Option<Mutex<(BTreeMap<u64, u64>, u64)>>,
}

fn layout(capacity: u64) -> Result<(u64, u64, usize)> {
    let pages = capacity.div_ceil(PAGE).max(1);
    if pages > u64::from(u32::MAX) {
        return Err(Error::InvalidArgument(format!(
            "arena of {capacity} bytes is too large"
        )));
    }
    let table = std::mem::size_of::<Header>() as u64 + pages * std::mem::size_of::<Entry>() as u64;
    let data_offset = table.div_ceil(PAGE) * PAGE;
    let total = usize::try_from(data_offset + pages * PAGE)
        .map_err(|_| Error::InvalidArgument(format!("arena of {capacity} bytes is too large")))?;
    Ok((pages, data_offset, total))
}

impl Arena {
    /// Creates an arena able to hold `capacity` bytes of blocks, owned by the caller.
    pub fn create(capacity: u64) -> Result<Self> {
        let (pages, data_offset, total) = layout(capacity)?;
        let segment = Segment::create("aqueduct-arena", total, false)?;
        // SAFETY: fresh zero-filled segment, not shared yet; the header sits at
        // offset 0 (page aligned) and the zeroed table already means "all FREE".
        unsafe {
            let h = segment.as_ptr().cast::<Header>();
            (*h).version = VERSION;
            (*h).pages = pages;
            (*h).data_offset = data_offset;
            std::sync::atomic::fence(Ordering::Release);
            (*h).magic = MAGIC;
        }
        let mut arena = Self::from_segment(segment)?;
        arena.take_ownership();
        Ok(arena)
    }

    /// Maps an arena received from another process (not owned: cannot allocate).
    pub fn open(fd: OwnedFd) -> Result<Self> {
        Self::from_segment(Segment::from_fd(fd)?)
    }

    /// Maps an arena through a duplicate of a borrowed fd.
    pub fn open_borrowed(fd: BorrowedFd<'_>) -> Result<Self> {
        Self::from_segment(Segment::from_borrowed_fd(fd)?)
    }

    fn from_segment(segment: Segment) -> Result<Self> {
        if segment.len() < std::mem::size_of::<Header>() {
            return Err(Error::InvalidSegment("too small for an arena".into()));
        }
        // SAFETY: at least a header long; fields are written before `magic`.
        let (magic, version, pages, data_offset) = unsafe {
            let h = &*segment.as_ptr().cast::<Header>();
            let magic = std::ptr::read_volatile(&h.magic);
            std::sync::atomic::fence(Ordering::Acquire);
            (magic, h.version, h.pages, h.data_offset)
        };
        if magic != MAGIC || version != VERSION {
            return Err(Error::InvalidSegment("not an aqueduct arena".into()));
        }
        let truncated = || Error::InvalidSegment("arena segment is truncated".into());
        let expected =
            layout(pages.checked_mul(PAGE).ok_or_else(truncated)?).map_err(|_| truncated())?;
        if expected.1 != data_offset || segment.len() < expected.2 {
            return Err(Error::InvalidSegment("arena segment is truncated".into()));
        }
        Ok(Arena {
            segment,
            pages,
            data_offset,
            free: None,
        })
    }

    /// Makes this process the owner (the only allocator): rebuilds the free
    /// runs from the shared table, so a respawned owner resumes where the dead
    /// one left off.
    pub fn take_ownership(&mut self) {
        // Free runs are the gaps between allocated blocks. Pages in a gap are
        // reset to FREE, so a FREED block there is not reclaimed a second time.
        let mut runs = BTreeMap::new();
        let mut gaps = Vec::new();
        let mut next = 0;
        for (page, len, _) in self.allocated() {
            gaps.push((next, page));
            next = page + len;
        }
        gaps.push((next, self.pages));
        for (start, end) in gaps.into_iter().filter(|(start, end)| end > start) {
            for page in start..end {
                self.entry(page).state.store(FREE, Ordering::Release);
            }
            runs.insert(start, end - start);
        }
        let seen = self.header().frees.load(Ordering::Acquire);
        self.free = Some(Mutex::new((runs, seen)));
    }

    fn header(&self) -> &Header {
        // SAFETY: validated in `from_segment`; lives as long as the segment.
        unsafe { &*self.segment.as_ptr().cast::<Header>() }
    }

    fn entry(&self, page: u64) -> &Entry {
        debug_assert!(page < self.pages);
        // SAFETY: `page < pages`, so the entry lies inside the table, which
        // follows the 8-byte aligned header; entries are 24 bytes (8-aligned).
        unsafe {
            &*self
                .segment
                .as_ptr()
                .add(std::mem::size_of::<Header>() + page as usize * std::mem::size_of::<Entry>())
                .cast::<Entry>()
        }
    }

    /// Bytes of block space.
    pub fn capacity(&self) -> u64 {
        self.pages * PAGE
    }

    /// Start of the data region in this process.
    pub fn data_ptr(&self) -> *mut u8 {
        // SAFETY: `data_offset` lies inside the segment (checked on open).
        unsafe { self.segment.as_ptr().add(self.data_offset as usize) }
    }

    /// Allocates a block of at least `len` bytes for task `key` (owner only).
    pub fn alloc(&self, len: u64, key: u64) -> Result<Block> {
        let Some(free) = &self.free else {
            return Err(Error::InvalidArgument(
                "only the owning process allocates in an arena".into(),
            ));
        };
        let want = len.div_ceil(PAGE).max(1);
        if want > self.pages {
            return Err(Error::ArenaFull {
                size: len,
                capacity: self.capacity(),
                free: 0,
            });
        }
        // A thread that panicked while holding the lock left the map whole
        // (each change is one insert or remove), so the arena keeps serving.
        let mut guard = free.lock().unwrap_or_else(PoisonError::into_inner);
        let (runs, seen) = &mut *guard;
        // Take back what others freed first: the lowest (already faulted)
        // pages are then the ones reused.
        let frees = self.header().frees.load(Ordering::Acquire);
        if frees != *seen {
            // still unseen after an error: a corrupt table stays corrupt
            self.reclaim(runs)?;
            *seen = frees;
        }
        let start = Self::first_fit(runs, want).ok_or_else(|| Error::ArenaFull {
            size: len,
            capacity: self.capacity(),
            free: runs.values().sum::<u64>() * PAGE,
        })?;
        let run = runs.remove(&start).unwrap_or(want);
        if run > want {
            runs.insert(start + want, run - want);
        }
        drop(guard);
        for page in start..start + want {
            self.entry(page)
                .start
                .store(start as u32, Ordering::Relaxed);
        }
        let head = self.entry(start);
        head.pages.store(want as u32, Ordering::Relaxed);
        head.key.store(key, Ordering::Relaxed);
        head.state.store(ALLOCATED, Ordering::Release);
        Ok(Block {
            offset: start * PAGE,
            capacity: want * PAGE,
        })
    }

    fn first_fit(runs: &BTreeMap<u64, u64>, want: u64) -> Option<u64> {
        runs.iter()
            .find(|(_, &len)| len >= want)
            .map(|(&start, _)| start)
    }

    /// Folds blocks other processes marked `FREED` back into the free runs.
    /// The block table is shared memory: a block is taken back only if its
    /// entries say what `alloc` wrote (every page names the block's first),
    /// so a scribbled table never makes pages in use, or past the arena's
    /// end, look free — `Err(Corrupt)` says so instead.
    fn reclaim(&self, runs: &mut BTreeMap<u64, u64>) -> Result<()> {
        let mut page = 0;
        while page < self.pages {
            let e = self.entry(page);
            let len = u64::from(e.pages.load(Ordering::Acquire)).max(1);
            match e.state.load(Ordering::Acquire) {
                ALLOCATED => page += len,
                FREE => page += 1,
                FREED => {
                    self.check_block(page, len)?;
                    if e.state
                        .compare_exchange(FREED, FREE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        Self::insert_run(runs, page, len);
                        page += len;
                    } else {
                        page += 1;
                    }
                }
                state => {
                    return Err(Error::Corrupt(format!(
                        "arena page {page} is in state {state:#x}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Whether pages `first..first + len` are what `alloc` made of one block.
    fn check_block(&self, first: u64, len: u64) -> Result<()> {
        let fits = first.checked_add(len).is_some_and(|end| end <= self.pages);
        let whole = fits
            && (first..first + len)
                .all(|p| u64::from(self.entry(p).start.load(Ordering::Relaxed)) == first);
        if whole {
            Ok(())
        } else {
            Err(Error::Corrupt(format!(
                "the arena block at page {first} of {len} pages is not one block"
            )))
        }
    }

    fn insert_run(runs: &mut BTreeMap<u64, u64>, start: u64, len: u64) {
        let (mut start, mut len) = (start, len);
        if let Some((&prev, &plen)) = runs.range(..start).next_back() {
            if prev + plen == start {
                runs.remove(&prev);
                start = prev;
                len += plen;
            }
        }
        if let Some(&next_len) = runs.get(&(start + len)) {
            runs.remove(&(start + len));
            len += next_len;
        }
        runs.insert(start, len);
    }

    /// Frees the block starting at `offset` (any process). Returns false if
    /// it was not an allocated block (already freed, or a bad offset).
    pub fn free(&self, offset: u64) -> bool {
        if offset % PAGE != 0 || offset / PAGE >= self.pages {
            return false;
        }
        let freed = self
            .entry(offset / PAGE)
            .state
            .compare_exchange(ALLOCATED, FREED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if freed {
            self.header().frees.fetch_add(1, Ordering::AcqRel);
        }
        freed
    }

    /// `(first page, pages, task key)` of every allocated block, in address order.
    fn allocated(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let mut page = 0;
        std::iter::from_fn(move || {
            while page < self.pages {
                let e = self.entry(page);
                if e.state.load(Ordering::Acquire) == ALLOCATED {
                    let len = u64::from(e.pages.load(Ordering::Acquire)).max(1);
                    let block = (page, len, e.key.load(Ordering::Relaxed));
                    page += len;
                    return Some(block);
                }
                page += 1;
            }
            None
        })
    }

    /// Frees every allocated block whose task key satisfies `dead` (for a
    /// process that died holding blocks); returns how many.
    pub fn free_where(&self, dead: &dyn Fn(u64) -> bool) -> usize {
        let doomed: Vec<u64> = self
            .allocated()
            .filter(|&(_, _, key)| dead(key))
            .map(|(page, _, _)| page)
            .collect();
        doomed
            .into_iter()
            .filter(|&page| self.free(page * PAGE))
            .count()
    }

    /// Bytes in allocated blocks (approximate while others are active).
    pub fn used(&self) -> u64 {
        self.allocated().map(|(_, len, _)| len * PAGE).sum()
    }

    /// If `[ptr, ptr+len)` lies inside this arena's data region, the offset
    /// of `ptr` and the offset of the block that contains it.
    pub fn locate(&self, ptr: *const u8, len: usize) -> Option<(u64, u64)> {
        let base = self.data_ptr() as usize;
        let addr = ptr as usize;
        let end = base + (self.pages * PAGE) as usize;
        if addr < base || addr >= end || addr.checked_add(len)? > end {
            return None;
        }
        let offset = (addr - base) as u64;
        let page = offset / PAGE;
        let start = u64::from(self.entry(page).start.load(Ordering::Relaxed));
        Some((offset, start * PAGE))
    }

    /// Raw pointer to `offset` if `[offset, offset+len)` is inside the data region.
    pub fn ptr_at(&self, offset: u64, len: u64) -> Option<*mut u8> {
        if offset.checked_add(len)? > self.pages * PAGE {
            return None;
        }
        // SAFETY: checked to be inside the data region just above.
        Some(unsafe { self.data_ptr().add(offset as usize) })
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.segment.raw_fd()
    }
}

impl AsFd for Arena {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.segment.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_allocating_does_not_wedge_the_arena() {
        let arena = Arena::create(8 * PAGE).expect("arena");
        std::thread::scope(|s| {
            let joined = s
                .spawn(|| {
                    let _held = arena.free.as_ref().map(|m| m.lock());
                    panic!("a thread dies holding the free list");
                })
                .join();
            assert!(joined.is_err());
        });
        assert!(arena.free.as_ref().is_some_and(Mutex::is_poisoned));
        let block = arena.alloc(PAGE, 1).expect("allocates after the panic");
        assert!(arena.free(block.offset));
    }

    /// An arena whose pages 0..2 were a block, freed by another process.
    fn freed_block() -> Arena {
        let arena = Arena::create(8 * PAGE).expect("arena");
        let block = arena.alloc(2 * PAGE, 1).expect("block");
        arena.alloc(PAGE, 2).expect("another block, in use");
        assert!(arena.free(block.offset));
        arena
    }

    #[test]
    fn a_freed_block_that_claims_pages_in_use_is_not_reused() {
        for pages in [3, u32::MAX] {
            let arena = freed_block();
            arena.entry(0).pages.store(pages, Ordering::Relaxed);
            let wanted = arena.alloc(7 * PAGE, 3);
            assert!(
                matches!(wanted, Err(Error::Corrupt(_))),
                "{pages}: {wanted:?}"
            );
        }
    }

    #[test]
    fn a_page_in_no_state_alloc_writes_is_corruption() {
        let arena = freed_block();
        arena.entry(5).state.store(0xdead, Ordering::Relaxed);
        assert!(matches!(arena.alloc(PAGE, 3), Err(Error::Corrupt(_))));
    }

    #[test]
    fn a_header_whose_size_overflows_is_not_an_arena() {
        let arena = Arena::create(PAGE).expect("arena");
        // SAFETY: the header of a segment this test alone maps.
        unsafe { (*arena.segment.as_ptr().cast::<Header>()).pages = u64::MAX / 2 };
        let opened = Arena::open_borrowed(arena.as_fd());
        assert!(
            matches!(opened, Err(Error::InvalidSegment(_))),
            "{opened:?}"
        );
    }

    #[test]
    fn a_corrupt_table_is_corrupt_for_every_alloc_after() {
        let arena = freed_block();
        arena.entry(5).state.store(0xdead, Ordering::Relaxed);
        for _ in 0..3 {
            assert!(matches!(arena.alloc(PAGE, 3), Err(Error::Corrupt(_))));
        }
    }

    #[test]
    fn an_intact_freed_block_is_reused() {
        let arena = freed_block();
        assert_eq!(arena.alloc(2 * PAGE, 3).expect("reused").offset, 0);
    }

    mod fuzz {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;

        use super::*;

        fn in_data(arena: &Arena, block: Block) -> bool {
            block.offset % PAGE == 0 && block.offset + block.capacity <= arena.pages * PAGE
        }

        proptest! {
            /// Whatever another process wrote over the arena's header and
            /// block table, its owner's calls and a process opening it
            /// (a respawned owner) get blocks inside the data region,
            /// `ArenaFull`, `Corrupt` or an invalid segment: never a panic.
            #[test]
            fn a_scribbled_arena_hands_out_blocks_inside_it_or_says_corrupt(
                sizes in vec(1u64..3 * PAGE, 0..6),
                freed in vec(any::<bool>(), 6),
                words in vec((any::<Index>(), any::<u64>()), 0..6),
                small in vec((any::<Index>(), 0u32..4), 0..6),
                wanted in vec(1u64..4 * PAGE, 1..4),
                offsets in vec(any::<u64>(), 0..4),
            ) {
                let arena = Arena::create(8 * PAGE).expect("arena");
                let blocks: Vec<Block> = sizes.iter().filter_map(|&n| arena.alloc(n, n).ok()).collect();
                for (block, free) in blocks.iter().zip(&freed) {
                    if *free {
                        arena.free(block.offset);
                    }
                }
                let table = arena.data_offset as usize;
                let base = arena.segment.as_ptr();
                for (at, word) in words {
                    // SAFETY: an aligned word of the table, which this test
                    // alone maps; the entries' atomics tolerate any value.
                    unsafe { base.add(at.index(table / 8) * 8).cast::<u64>().write_volatile(word) };
                }
                // states and page counts near the ones alloc writes
                for (at, value) in small {
                    // SAFETY: as above, a 4-byte aligned word of the table.
                    unsafe { base.add(at.index(table / 4) * 4).cast::<u32>().write_volatile(value) };
                }
                let check = |arena: &Arena| -> std::result::Result<(), TestCaseError> {
                    for &len in &wanted {
                        match arena.alloc(len, 1) {
                            Ok(block) => prop_assert!(in_data(arena, block), "{block:?}"),
                            Err(Error::ArenaFull { .. } | Error::Corrupt(_)) => {}
                            Err(e) => prop_assert!(false, "alloc: {e:?}"),
                        }
                    }
                    for &offset in &offsets {
                        arena.free(offset);
                        if let Some(ptr) = arena.ptr_at(offset, 1) {
                            prop_assert!(arena.locate(ptr, 1).is_some());
                        }
                    }
                    arena.free_where(&|key| key % 2 == 0);
                    let _ = arena.used();
                    Ok(())
                };
                check(&arena)?;
                match Arena::open_borrowed(arena.as_fd()) {
                    Ok(mut opened) => {
                        opened.take_ownership();
                        check(&opened)?;
                    }
                    Err(e) => prop_assert!(matches!(e, Error::InvalidSegment(_)), "{e:?}"),
                }
            }
        }
    }
}
