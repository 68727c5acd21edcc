//! A bounded lock-free MPMC ring of variable-size messages in shared memory.
//!
//! The algorithm is Vyukov's bounded queue with per-slot sequence numbers,
//! extended so that one message may occupy several consecutive slots:
//!
//! * slot `i` of lap `pos` is *free* when `seq[i] == pos`, *published* when
//!   `seq[i] == pos + 1`;
//! * a producer checks that all `n` slots from `tail` are free, claims them with
//!   one CAS on `tail`, copies the message in, and publishes by storing
//!   `seq[first] = pos + 1` (Release) — only the first slot's sequence is read
//!   by consumers;
//! * a consumer sees `seq[head] == head + 1`, reads the length, claims the `n`
//!   slots with one CAS on `head`, copies out, and frees each slot for the next
//!   lap with `seq = pos + capacity`.
//!
//! There is no lock anywhere, so a process killed mid-operation cannot block the
//! others behind a mutex. The data of consecutive slots is contiguous (the
//! sequence numbers live in their own array), so a message is copied with at
//! most two `memcpy`s (one if it does not wrap).
//!
//! The protocol runs on [`Slots`]: the words and bytes of a ring. In a flow
//! they live in shared memory ([`ShmSlots`]); built with `--cfg loom`, the
//! same code runs on loom's atomics (`model::ModelSlots`, built with `--cfg loom`) so its tests
//! check every interleaving of producers, consumers and a producer that
//! dies mid-push (tests/loom_ring.rs).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Bytes of the length prefix stored at the start of every message's first slot.
const LEN_PREFIX: usize = 8;
/// The length word holds the message's length in its low bits and, above
/// them, the low bits of the position it was written for: recovery can tell
/// the length a producer wrote before it died from a stale one of an older lap.
const LEN_BITS: u32 = 40;
const LEN_MASK: u64 = (1 << LEN_BITS) - 1;

fn length_word(pos: u64, len: usize) -> u64 {
    (pos << LEN_BITS) | (len as u64 & LEN_MASK)
}

/// The bits of position `pos` a length word carries.
fn tag(pos: u64) -> u64 {
    pos & (u64::MAX >> LEN_BITS)
}

/// Positions only grow, one per slot: no ring reaches this one in centuries,
/// so a larger `head` or `tail` was scribbled — and arithmetic on it could
/// overflow.
const MAX_POSITION: u64 = 1 << 62;

fn check_position(pos: u64, name: &str) -> Result<()> {
    if pos < MAX_POSITION {
        Ok(())
    } else {
        Err(Error::Corrupt(format!("the ring's {name} is {pos:#x}")))
    }
}

/// A cache line, to keep `head` and `tail` from sharing one.
#[repr(C, align(64))]
#[derive(Debug)]
struct CachePadded<T>(T);

/// The shared part of a ring: indices. Followed in memory by the sequence array
/// and the data area (see [`RingLayout`]).
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    tail: CachePadded<AtomicU64>,
    head: CachePadded<AtomicU64>,
}

/// Sizes and offsets of one ring inside a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Number of slots, a power of two.
    pub capacity: u64,
    /// Bytes per slot, a multiple of 8.
    pub slot_bytes: u64,
}

impl RingLayout {
    pub fn new(capacity: u64, slot_bytes: u64) -> Result<Self> {
        if capacity < 2 || !capacity.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "ring capacity must be a power of two >= 2, got {capacity}"
            )));
        }
        if slot_bytes < 16 || slot_bytes % 8 != 0 {
            return Err(Error::InvalidArgument(format!(
                "slot size must be a multiple of 8 and >= 16, got {slot_bytes}"
            )));
        }
        Ok(RingLayout {
            capacity,
            slot_bytes,
        })
    }

    fn seqs_offset() -> usize {
        std::mem::size_of::<RingHeader>()
    }

    fn data_offset(&self) -> usize {
        Self::seqs_offset() + self.capacity as usize * 8
    }

    /// Total bytes the ring needs, rounded up to a cache line.
    pub fn size(&self) -> usize {
        let end = self.data_offset() + (self.capacity * self.slot_bytes) as usize;
        end.div_ceil(64) * 64
    }

    /// Largest message (payload bytes) the ring accepts: half its data area, so
    /// one huge message can never starve all others.
    pub fn max_message(&self) -> usize {
        (self.capacity / 2 * self.slot_bytes) as usize - LEN_PREFIX
    }

    fn slots_for(&self, payload: usize) -> u64 {
        ((payload + LEN_PREFIX) as u64).div_ceil(self.slot_bytes)
    }
}

/// An atomic 64-bit word, as the ring protocol uses it.
pub trait Word {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> std::result::Result<u64, u64>;
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> std::result::Result<u64, u64>;
}

macro_rules! impl_word {
    ($atomic:ty) => {
        impl Word for $atomic {
            fn load(&self, order: Ordering) -> u64 {
                <$atomic>::load(self, order)
            }
            fn store(&self, value: u64, order: Ordering) {
                <$atomic>::store(self, value, order)
            }
            fn compare_exchange(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> std::result::Result<u64, u64> {
                <$atomic>::compare_exchange(self, current, new, success, failure)
            }
            fn compare_exchange_weak(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> std::result::Result<u64, u64> {
                <$atomic>::compare_exchange_weak(self, current, new, success, failure)
            }
        }
    };
}

impl_word!(AtomicU64);
#[cfg(loom)]
impl_word!(loom::sync::atomic::AtomicU64);

/// Where a ring's words and bytes live.
pub trait Slots {
    type Word: Word;
    fn tail(&self) -> &Self::Word;
    fn head(&self) -> &Self::Word;
    /// The sequence word of slot `index` (`index < capacity`).
    fn seq(&self, index: usize) -> &Self::Word;
    /// The length word of slot `index`: where a message starting there
    /// keeps its length.
    fn len_word(&self, index: usize) -> &Self::Word;
    /// Start of the data area: `capacity * slot_bytes` bytes, each slot's
    /// first `LEN_PREFIX` bytes reserved for its length word.
    fn data(&self) -> *mut u8;
}

/// A ring's words and bytes in a mapped segment (see [`RingLayout`]).
#[derive(Debug)]
pub struct ShmSlots {
    base: *mut u8,
    layout: RingLayout,
}

impl Slots for ShmSlots {
    type Word = AtomicU64;

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: `base` points to an initialised, suitably aligned header for
        // the life of `self` (contract of `Ring::init`/`Ring::attach`).
        unsafe { &(*self.base.cast::<RingHeader>()).tail.0 }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: as in `tail`.
        unsafe { &(*self.base.cast::<RingHeader>()).head.0 }
    }

    fn seq(&self, index: usize) -> &AtomicU64 {
        // SAFETY: `index < capacity` (callers mask positions), so the word
        // lies inside the sequence array, which is 8-byte aligned (the header
        // is 128 bytes).
        unsafe {
            &*self
                .base
                .add(RingLayout::seqs_offset() + index * 8)
                .cast::<AtomicU64>()
        }
    }

    fn len_word(&self, index: usize) -> &AtomicU64 {
        // SAFETY: slot `index` lies inside the data area; every slot starts
        // 8-byte aligned (slot_bytes % 8 == 0 and the data area is 8-byte
        // aligned), so its first 8 bytes can hold an atomic.
        unsafe {
            &*self
                .data()
                .add(index * self.layout.slot_bytes as usize)
                .cast::<AtomicU64>()
        }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area starts inside the ring's memory.
        unsafe { self.base.add(self.layout.data_offset()) }
    }
}

/// A ring: its layout and where its words and bytes live.
#[derive(Debug)]
pub struct Ring<M = ShmSlots> {
    mem: M,
    layout: RingLayout,
}

// SAFETY: a `Ring` over shared memory is designed for concurrent use by many
// processes (hence many threads): every shared word is an atomic, and the
// data of a slot is only touched by the one party that owns it through the
// sequence protocol described in the module docs.
unsafe impl Send for Ring<ShmSlots> {}
// SAFETY: see `Send`.
unsafe impl Sync for Ring<ShmSlots> {}

impl Ring<ShmSlots> {
    /// Initialises a ring in zeroed memory at `base`.
    ///
    /// # Safety
    /// `base` must be 64-byte aligned, point to `layout.size()` writable bytes
    /// that stay mapped for the life of every `Ring` built on them, and no other
    /// process may use the ring before `init` returns.
    pub unsafe fn init(base: *mut u8, layout: RingLayout) -> Ring {
        // SAFETY: the caller guarantees exclusive, valid memory.
        let ring = unsafe { Ring::attach(base, layout) };
        ring.reset();
        std::sync::atomic::fence(Ordering::Release);
        ring
    }

    /// Views a ring that `init` set up (possibly in another process).
    ///
    /// # Safety
    /// As for [`Ring::init`], except that the memory already holds an
    /// initialised ring with this `layout`.
    pub unsafe fn attach(base: *mut u8, layout: RingLayout) -> Ring {
        Ring {
            mem: ShmSlots { base, layout },
            layout,
        }
    }
}

impl<M: Slots> Ring<M> {
    /// A ring over `mem`, which must hold `layout`'s slots; `reset` it
    /// before first use.
    pub fn over(mem: M, layout: RingLayout) -> Ring<M> {
        Ring { mem, layout }
    }

    /// Every slot free for lap 0, nothing claimed.
    pub fn reset(&self) {
        for i in 0..self.layout.capacity {
            self.seq(i).store(i, Ordering::Relaxed);
        }
        self.mem.tail().store(0, Ordering::Relaxed);
        self.mem.head().store(0, Ordering::Relaxed);
    }

    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    fn index(&self, pos: u64) -> usize {
        (pos & (self.layout.capacity - 1)) as usize
    }

    fn seq(&self, pos: u64) -> &M::Word {
        self.mem.seq(self.index(pos))
    }

    fn slot_ptr(&self, pos: u64) -> *mut u8 {
        // SAFETY: inside the data area by construction of `index`.
        unsafe {
            self.mem
                .data()
                .add(self.index(pos) * self.layout.slot_bytes as usize)
        }
    }

    fn len_word(&self, pos: u64) -> &M::Word {
        self.mem.len_word(self.index(pos))
    }

    /// Copies the `len`-byte message at slot `pos` (after the length prefix)
    /// into `buf`, handling the wrap-around.
    ///
    /// # Safety
    /// The caller owns slots `pos..pos + slots_for(len)` (claimed by CAS) and
    /// `buf` has room for `len` bytes.
    unsafe fn copy_out(&self, pos: u64, buf: *mut u8, len: usize) {
        let area = (self.layout.capacity * self.layout.slot_bytes) as usize;
        let start = self.index(pos) * self.layout.slot_bytes as usize + LEN_PREFIX;
        let first = len.min(area - start);
        // SAFETY: both ranges are inside the data area (first part up to its end,
        // second part from its start) and inside `buf`; the slots are owned by us.
        unsafe {
            let ring_first = self.mem.data().add(start);
            let ring_second = self.mem.data();
            std::ptr::copy_nonoverlapping(ring_first, buf, first);
            std::ptr::copy_nonoverlapping(ring_second, buf.add(first), len - first);
        }
    }

    /// Appends one message made of `parts` (concatenated).
    /// `Err(Full)` when there is no room now; `Err(TooLarge)` when there never will be.
    pub fn push(&self, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.layout.max_message() {
            return Err(Error::TooLarge {
                size: len,
                limit: self.layout.max_message(),
            });
        }
        let n = self.layout.slots_for(len);
        let tail = self.mem.tail();
        let mut pos = tail.load(Ordering::Relaxed);
        'claim: loop {
            check_position(pos, "tail")?;
            for i in 0..n {
                let want = pos + i;
                let seq = self.seq(want).load(Ordering::Acquire);
                if seq != want {
                    let now = tail.load(Ordering::Relaxed);
                    if now != pos {
                        // Others claimed since we looked: look again.
                        pos = now;
                        continue 'claim;
                    }
                    // `tail` did not move, so the slot is either still
                    // held for the previous lap (the ring is full) or
                    // holds what no producer or consumer writes.
                    if !self.plausible_behind_tail(seq, want) {
                        return Err(self.corrupt(want, seq));
                    }
                    return Err(Error::Full);
                }
            }
            match tail.compare_exchange_weak(pos, pos + n, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => pos = now,
            }
        }
        // We own slots pos..pos+n now.
        self.len_word(pos)
            .store(length_word(pos, len), Ordering::Relaxed);
        let mut offset = 0usize;
        let area = (self.layout.capacity * self.layout.slot_bytes) as usize;
        let start = self.index(pos) * self.layout.slot_bytes as usize + LEN_PREFIX;
        let data = self.mem.data();
        for part in parts {
            // Copy each part, splitting at the end of the data area if needed.
            let at = (start + offset) % area;
            let first = part.len().min(area - at);
            // SAFETY: the destination lies inside the data area (see
            // `copy_out`) in slots we own; sources are live slices.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), data.add(at), first);
                std::ptr::copy_nonoverlapping(part.as_ptr().add(first), data, part.len() - first);
            }
            offset += part.len();
        }
        self.seq(pos).store(pos + 1, Ordering::Release);
        Ok(())
    }

    /// True when the next message is published and can be popped now.
    pub fn has_ready(&self) -> bool {
        let head = self.mem.head().load(Ordering::Acquire);
        self.seq(head).load(Ordering::Acquire) == head + 1
    }

    /// Takes the next message, if one is published: `Ok(None)` when empty,
    /// `Err(Corrupt)` when the ring's words say what no process writes (the
    /// ring is then left as it is: nothing is read past a bad value).
    pub fn pop(&self) -> Result<Option<Vec<u8>>> {
        let head = self.mem.head();
        let mut pos = head.load(Ordering::Relaxed);
        loop {
            check_position(pos, "head")?;
            let seq = self.seq(pos).load(Ordering::Acquire);
            if seq == pos + 1 {
                let word = self.len_word(pos).load(Ordering::Relaxed);
                let len = (word & LEN_MASK) as usize;
                if word >> LEN_BITS != tag(pos) || len > self.layout.max_message() {
                    // The message may have been taken, and its slot reused,
                    // since we read its sequence; if not, its length is bad.
                    let now = head.load(Ordering::Relaxed);
                    if now == pos {
                        return Err(Error::Corrupt(format!(
                            "the length word of the message at position {pos} is {word:#x}"
                        )));
                    }
                    pos = now;
                    continue;
                }
                let n = self.layout.slots_for(len);
                match head.compare_exchange_weak(pos, pos + n, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => {
                        let mut out = Vec::with_capacity(len);
                        // SAFETY: we own slots pos..pos+n; `out` has room for `len`.
                        unsafe {
                            self.copy_out(pos, out.as_mut_ptr(), len);
                            out.set_len(len);
                        }
                        for i in 0..n {
                            self.seq(pos + i)
                                .store(pos + i + self.layout.capacity, Ordering::Release);
                        }
                        return Ok(Some(out));
                    }
                    Err(now) => pos = now,
                }
            } else if seq < pos + 1 {
                // Empty, or a stale view of `head`: either way the slot's
                // sequence is at most one lap behind (sequences only grow).
                if pos - seq > self.layout.capacity {
                    return Err(self.corrupt(pos, seq));
                }
                return Ok(None);
            } else {
                // A later lap: others took this message since we looked.
                let now = head.load(Ordering::Relaxed);
                if now == pos {
                    return Err(self.corrupt(pos, seq));
                }
                pos = now;
            }
        }
    }

    /// Whether `seq` can be the sequence of the slot at position `want`,
    /// at or past a `tail` that did not move: free for this lap (`want`), or
    /// still held for the previous one (`want - capacity`, published
    /// `want - capacity + 1`).
    fn plausible_behind_tail(&self, seq: u64, want: u64) -> bool {
        seq <= want && want - seq <= self.layout.capacity
    }

    fn corrupt(&self, pos: u64, seq: u64) -> Error {
        Error::Corrupt(format!(
            "slot {} holds sequence {seq} at position {pos}",
            self.index(pos)
        ))
    }

    /// Claims room for a message of `len` bytes and never publishes it: what
    /// a producer killed mid-push leaves behind. For tests of the recovery.
    #[cfg(feature = "fault-injection")]
    pub fn claim_and_abandon(&self, len: usize) -> Result<()> {
        let n = self.layout.slots_for(len);
        let tail = self.mem.tail();
        let pos = tail.load(Ordering::Relaxed);
        for i in 0..n {
            if self.seq(pos + i).load(Ordering::Acquire) != pos + i {
                return Err(Error::Full);
            }
        }
        tail.compare_exchange(pos, pos + n, Ordering::Relaxed, Ordering::Relaxed)
            .map_err(|_| Error::Full)?;
        // killed while copying the message in: its length is written
        self.len_word(pos)
            .store(length_word(pos, len), Ordering::Relaxed);
        Ok(())
    }

    /// The head position if it is claimed by a producer but not published
    /// (a producer is writing it — or died doing so).
    pub fn unpublished_head(&self) -> Option<u64> {
        let head = self.mem.head().load(Ordering::Acquire);
        let tail = self.mem.tail().load(Ordering::Acquire);
        (tail > head && tail < MAX_POSITION && self.seq(head).load(Ordering::Acquire) == head)
            .then_some(head)
    }

    /// Publishes, in place of the message a dead producer claimed at `head`,
    /// a message made of `filler` (which must say it is to be skipped and
    /// fit in one slot) spanning the dead message's slots: as many as the
    /// length it wrote says, or one slot when it died before writing it (a
    /// message of several slots is then skipped a slot at a time). Slots
    /// claimed after it, by producers still writing, are never touched. Only
    /// for a head that `unpublished_head` returned and that stayed
    /// unpublished far longer than any live producer takes; false if that is
    /// not so any more.
    pub fn fill_abandoned(&self, head: u64, filler: &[u8]) -> bool {
        if self.mem.head().load(Ordering::Acquire) != head
            || self.seq(head).load(Ordering::Acquire) != head
        {
            return false;
        }
        let tail = self.mem.tail().load(Ordering::Acquire);
        if tail >= MAX_POSITION {
            return false;
        }
        let word = self.len_word(head).load(Ordering::Relaxed);
        let written = (word >> LEN_BITS) == tag(head)
            && (word & LEN_MASK) as usize <= self.layout.max_message();
        let slots = if written {
            self.layout.slots_for((word & LEN_MASK) as usize)
        } else {
            1
        };
        if head + slots > tail {
            return false; // not all claimed: not what a producer leaves
        }
        let len = (slots * self.layout.slot_bytes) as usize - LEN_PREFIX;
        if filler.len() > len {
            return false;
        }
        self.len_word(head)
            .store(length_word(head, len), Ordering::Relaxed);
        let start = self.slot_ptr(head) as usize + LEN_PREFIX;
        let area_end =
            self.mem.data() as usize + (self.layout.capacity * self.layout.slot_bytes) as usize;
        let first = filler.len().min(area_end - start);
        // SAFETY: the slots head..next were claimed by a producer that is gone;
        // no one else writes them, and the copy stays inside the data area
        // (split at its end like any message).
        unsafe {
            std::ptr::copy_nonoverlapping(filler.as_ptr(), start as *mut u8, first);
            std::ptr::copy_nonoverlapping(
                filler.as_ptr().add(first),
                self.mem.data(),
                filler.len() - first,
            );
        }
        self.seq(head).store(head + 1, Ordering::Release);
        true
    }

    /// Number of slots claimed by producers and not yet freed (approximate
    /// while others are active).
    pub fn used_slots(&self) -> u64 {
        let tail = self.mem.tail().load(Ordering::Relaxed);
        let head = self.mem.head().load(Ordering::Relaxed);
        tail.saturating_sub(head)
    }
}

/// A ring's words on loom's atomics, for model-checking the protocol
/// (`RUSTFLAGS="--cfg loom" cargo test -p aqueduct-core --test loom_ring`).
#[cfg(loom)]
pub mod model {
    use loom::sync::atomic::AtomicU64;

    use super::{Ring, RingLayout, Slots};

    /// Words as loom atomics; the data area in ordinary memory.
    #[derive(Debug)]
    pub struct ModelSlots {
        tail: AtomicU64,
        head: AtomicU64,
        seqs: Vec<AtomicU64>,
        lens: Vec<AtomicU64>,
        data: *mut u8,
        bytes: usize,
    }

    impl ModelSlots {
        pub fn new(layout: RingLayout) -> Self {
            let bytes = (layout.capacity * layout.slot_bytes) as usize;
            let words = || (0..layout.capacity).map(|_| AtomicU64::new(0)).collect();
            ModelSlots {
                tail: AtomicU64::new(0),
                head: AtomicU64::new(0),
                seqs: words(),
                lens: words(),
                data: Box::into_raw(vec![0u8; bytes].into_boxed_slice()).cast::<u8>(),
                bytes,
            }
        }
    }

    impl Drop for ModelSlots {
        fn drop(&mut self) {
            // SAFETY: `data` came from `Box::into_raw` of a slice of `bytes`
            // bytes and is freed once, here.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.data, self.bytes))
            });
        }
    }

    impl Slots for ModelSlots {
        type Word = AtomicU64;

        fn tail(&self) -> &AtomicU64 {
            &self.tail
        }

        fn head(&self) -> &AtomicU64 {
            &self.head
        }

        fn seq(&self, index: usize) -> &AtomicU64 {
            &self.seqs[index]
        }

        fn len_word(&self, index: usize) -> &AtomicU64 {
            &self.lens[index]
        }

        fn data(&self) -> *mut u8 {
            self.data
        }
    }

    // SAFETY: as for the shared-memory ring: the words are atomics and the
    // data of a slot is touched only by the party the protocol gives it to.
    unsafe impl Send for Ring<ModelSlots> {}
    // SAFETY: see `Send`.
    unsafe impl Sync for Ring<ModelSlots> {}
}

#[cfg(test)]
mod tests {
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    use super::*;

    /// A ring in heap memory laid out as in a segment.
    struct Heap {
        ptr: *mut u8,
        layout: Layout,
        ring: Ring,
    }

    impl Heap {
        fn new(capacity: u64, slot_bytes: u64) -> Heap {
            let ring_layout = RingLayout::new(capacity, slot_bytes).expect("layout");
            let layout = Layout::from_size_align(ring_layout.size(), 64).expect("alloc layout");
            // SAFETY: a non-zero size; the memory is freed in `drop`.
            let ptr = unsafe { alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            // SAFETY: 64-byte aligned, `size()` zeroed bytes, ours alone.
            let ring = unsafe { Ring::init(ptr, ring_layout) };
            Heap { ptr, layout, ring }
        }
    }

    impl Drop for Heap {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.ptr, self.layout) };
        }
    }

    #[test]
    fn a_producer_dead_before_writing_its_length_is_skipped_a_slot_at_a_time() {
        let heap = Heap::new(8, 32);
        let ring = &heap.ring;
        // claims three slots and dies before storing the length word
        ring.mem.tail().store(3, Ordering::Relaxed);
        ring.push(&[b"after"]).expect("push");
        for slot in 0..3 {
            assert_eq!(ring.unpublished_head(), Some(slot));
            assert!(ring.fill_abandoned(slot, b"skip"));
            assert!(!ring.fill_abandoned(slot, b"skip"), "only once");
            let filler = ring.pop().expect("an intact ring").expect("the filler");
            assert_eq!(&filler[..4], b"skip");
            assert_eq!(filler.len(), 32 - LEN_PREFIX, "one slot");
        }
        assert_eq!(
            ring.pop().expect("an intact ring").as_deref(),
            Some(&b"after"[..])
        );
        assert_eq!(ring.used_slots(), 0);
    }

    #[test]
    fn a_stale_length_of_an_older_lap_is_not_taken_for_the_dead_producer_s() {
        let heap = Heap::new(4, 32);
        let ring = &heap.ring;
        ring.push(&[&[1u8; 40]]).expect("two slots at 0");
        ring.push(&[&[2u8; 40]]).expect("two slots at 2");
        assert!(
            ring.pop().expect("an intact ring").is_some()
                && ring.pop().expect("an intact ring").is_some()
        );
        // lap 1: a producer claims slot 4 (index 0) and dies before its
        // length: the word still holds lap 0's
        ring.mem.tail().store(5, Ordering::Relaxed);
        assert_eq!(ring.unpublished_head(), Some(4));
        assert!(ring.fill_abandoned(4, b"skip"));
        assert_eq!(
            ring.pop().expect("an intact ring").map(|m| m.len()),
            Some(32 - LEN_PREFIX)
        );
        assert_eq!(ring.used_slots(), 0);
    }

    fn is_corrupt<T: std::fmt::Debug>(result: Result<T>) -> bool {
        matches!(result, Err(Error::Corrupt(_)))
    }

    /// A ring after `laps` full laps of one-slot messages.
    fn lapped(laps: u64) -> Heap {
        let heap = Heap::new(4, 32);
        for _ in 0..laps * 4 {
            heap.ring.push(&[b"x"]).expect("push");
            heap.ring.pop().expect("an intact ring").expect("a message");
        }
        heap
    }

    #[test]
    fn a_sequence_from_a_lap_to_come_is_corruption_not_a_livelock() {
        let heap = lapped(2);
        let ring = &heap.ring;
        ring.seq(8).store(8 + 5 * 4, Ordering::Relaxed);
        assert!(is_corrupt(ring.pop()), "the consumer");
        assert!(is_corrupt(ring.push(&[b"y"])), "the producer");
    }

    #[test]
    fn a_sequence_laps_behind_is_corruption_not_an_empty_ring() {
        let heap = lapped(3);
        let ring = &heap.ring;
        ring.seq(12).store(0, Ordering::Relaxed); // zeroed memory
        assert!(is_corrupt(ring.pop()));
        assert!(is_corrupt(ring.push(&[b"y"])));
    }

    #[test]
    fn a_published_message_with_a_bad_length_is_corruption() {
        for word in [length_word(9, 10), length_word(8, 1 << 30), u64::MAX] {
            let heap = lapped(2);
            let ring = &heap.ring;
            ring.push(&[b"message"]).expect("push");
            ring.len_word(8).store(word, Ordering::Relaxed);
            assert!(is_corrupt(ring.pop()), "{word:#x}");
        }
    }

    #[test]
    fn positions_no_ring_reaches_are_corruption() {
        let heap = lapped(1);
        let ring = &heap.ring;
        ring.mem.head().store(u64::MAX - 1, Ordering::Relaxed);
        assert!(is_corrupt(ring.pop()));
        ring.mem.tail().store(u64::MAX, Ordering::Relaxed);
        assert!(is_corrupt(ring.push(&[b"y"])));
        assert_eq!(ring.unpublished_head(), None);
    }

    #[test]
    fn a_full_ring_is_full_not_corrupt() {
        let heap = lapped(1);
        let ring = &heap.ring;
        for _ in 0..4 {
            ring.push(&[b"x"]).expect("room");
        }
        assert!(matches!(ring.push(&[b"y"]), Err(Error::Full)));
        ring.pop().expect("an intact ring").expect("a message");
        ring.push(&[b"y"]).expect("room again");
    }

    mod fuzz {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;

        use super::*;
        use crate::fuzzing::bytes;

        proptest! {
            /// Whatever another process wrote over the ring's memory (its
            /// words or its data), popping and pushing return messages that
            /// fit, `Full`, or `Corrupt`: nothing is read or written outside
            /// the ring, nothing panics, nothing loops.
            #[test]
            fn a_scribbled_ring_pops_what_fits_or_says_corrupt(
                messages in vec(bytes(100), 0..12),
                popped in 0usize..12,
                words in vec((any::<Index>(), any::<u64>()), 0..6),
                noise in vec((any::<Index>(), any::<u8>()), 0..16),
            ) {
                let heap = Heap::new(16, 32);
                let ring = &heap.ring;
                for m in &messages {
                    let _ = ring.push(&[m]);
                }
                for _ in 0..popped {
                    let _ = ring.pop();
                }
                let size = ring.layout().size();
                for (at, word) in words {
                    let at = at.index(size / 8) * 8;
                    // SAFETY: an aligned word inside the ring's allocation,
                    // which this test alone uses.
                    unsafe { heap.ptr.add(at).cast::<u64>().write(word) };
                }
                for (at, byte) in noise {
                    // SAFETY: a byte inside the ring's allocation.
                    unsafe { heap.ptr.add(at.index(size)).write(byte) };
                }
                for _ in 0..40 {
                    match ring.pop() {
                        Ok(Some(m)) => prop_assert!(m.len() <= ring.layout().max_message()),
                        Ok(None) => break,
                        Err(e) => {
                            prop_assert!(matches!(e, Error::Corrupt(_)), "{e:?}");
                            break;
                        }
                    }
                }
                for m in &messages {
                    match ring.push(&[m]) {
                        Ok(()) | Err(Error::Full | Error::Corrupt(_)) => {}
                        Err(e) => prop_assert!(false, "push: {e:?}"),
                    }
                }
            }
        }
    }
}
