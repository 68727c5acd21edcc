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

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Bytes of the length prefix stored at the start of every message's first slot.
const LEN_PREFIX: usize = 8;

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

/// A view of one ring living at some address of a mapped segment.
#[derive(Debug)]
pub struct Ring {
    base: *mut u8,
    layout: RingLayout,
}

// SAFETY: `Ring` is a view into shared memory designed for concurrent use by
// many processes (hence many threads): every shared word is an atomic, and the
// data of a slot is only touched by the one party that owns it through the
// sequence protocol described in the module docs.
unsafe impl Send for Ring {}
// SAFETY: see `Send`.
unsafe impl Sync for Ring {}

impl Ring {
    /// Initialises a ring in zeroed memory at `base`.
    ///
    /// # Safety
    /// `base` must be 64-byte aligned, point to `layout.size()` writable bytes
    /// that stay mapped for the life of every `Ring` built on them, and no other
    /// process may use the ring before `init` returns.
    pub unsafe fn init(base: *mut u8, layout: RingLayout) -> Ring {
        // SAFETY: the caller guarantees exclusive, valid memory.
        let ring = unsafe { Ring::attach(base, layout) };
        for i in 0..layout.capacity {
            ring.seq(i).store(i, Ordering::Relaxed);
        }
        ring.header().tail.0.store(0, Ordering::Relaxed);
        ring.header().head.0.store(0, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        ring
    }

    /// Views a ring that `init` set up (possibly in another process).
    ///
    /// # Safety
    /// As for [`Ring::init`], except that the memory already holds an
    /// initialised ring with this `layout`.
    pub unsafe fn attach(base: *mut u8, layout: RingLayout) -> Ring {
        Ring { base, layout }
    }

    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: `base` points to an initialised, suitably aligned header for
        // the life of `self` (contract of `init`/`attach`).
        unsafe { &*self.base.cast::<RingHeader>() }
    }

    fn seq(&self, pos: u64) -> &AtomicU64 {
        let index = (pos & (self.layout.capacity - 1)) as usize;
        // SAFETY: `index < capacity`, so the word lies inside the sequence array,
        // which is 8-byte aligned (the header is 128 bytes).
        unsafe {
            &*self
                .base
                .add(RingLayout::seqs_offset() + index * 8)
                .cast::<AtomicU64>()
        }
    }

    fn slot_ptr(&self, pos: u64) -> *mut u8 {
        let index = (pos & (self.layout.capacity - 1)) as usize;
        // SAFETY: inside the data area by construction of `index`.
        unsafe {
            self.base
                .add(self.layout.data_offset() + index * self.layout.slot_bytes as usize)
        }
    }

    fn len_word(&self, pos: u64) -> &AtomicU64 {
        // SAFETY: every slot starts 8-byte aligned (slot_bytes % 8 == 0 and the
        // data area is 8-byte aligned), so its first 8 bytes can hold an atomic.
        unsafe { &*self.slot_ptr(pos).cast::<AtomicU64>() }
    }

    /// Copies the `len`-byte message at slot `pos` (after the length prefix)
    /// into `buf`, handling the wrap-around.
    ///
    /// # Safety
    /// The caller owns slots `pos..pos + slots_for(len)` (claimed by CAS) and
    /// `buf` has room for `len` bytes.
    unsafe fn copy_out(&self, pos: u64, buf: *mut u8, len: usize) {
        let data_start = self.layout.data_offset();
        let area = (self.layout.capacity * self.layout.slot_bytes) as usize;
        let index = (pos & (self.layout.capacity - 1)) as usize;
        let start = index * self.layout.slot_bytes as usize + LEN_PREFIX;
        let first = len.min(area - start);
        // SAFETY: both ranges are inside the data area (first part up to its end,
        // second part from its start) and inside `buf`; the slots are owned by us.
        unsafe {
            let ring_first = self.base.add(data_start + start);
            let ring_second = self.base.add(data_start);
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
        let tail = &self.header().tail.0;
        let mut pos = tail.load(Ordering::Relaxed);
        'claim: loop {
            for i in 0..n {
                let want = pos + i;
                let seq = self.seq(want).load(Ordering::Acquire);
                if seq != want {
                    if seq < want {
                        // The slot still holds a message of the previous lap.
                        let now = tail.load(Ordering::Relaxed);
                        if now == pos {
                            return Err(Error::Full);
                        }
                        pos = now;
                    } else {
                        // Someone claimed past our view of `tail`.
                        pos = tail.load(Ordering::Relaxed);
                    }
                    continue 'claim;
                }
            }
            match tail.compare_exchange_weak(pos, pos + n, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => pos = now,
            }
        }
        // We own slots pos..pos+n now.
        self.len_word(pos).store(len as u64, Ordering::Relaxed);
        let mut offset = 0usize;
        let area = (self.layout.capacity * self.layout.slot_bytes) as usize;
        let index = (pos & (self.layout.capacity - 1)) as usize;
        let start = index * self.layout.slot_bytes as usize + LEN_PREFIX;
        let data = self.layout.data_offset();
        for part in parts {
            // Copy each part, splitting at the end of the data area if needed.
            let at = (start + offset) % area;
            let first = part.len().min(area - at);
            // SAFETY: the destination lies inside the data area (see
            // `copy_out`) in slots we own; sources are live slices.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), self.base.add(data + at), first);
                std::ptr::copy_nonoverlapping(
                    part.as_ptr().add(first),
                    self.base.add(data),
                    part.len() - first,
                );
            }
            offset += part.len();
        }
        self.seq(pos).store(pos + 1, Ordering::Release);
        Ok(())
    }

    /// True when the next message is published and can be popped now.
    pub fn has_ready(&self) -> bool {
        let head = self.header().head.0.load(Ordering::Acquire);
        self.seq(head).load(Ordering::Acquire) == head + 1
    }

    /// Takes the next message, if one is published. `Ok(None)` when empty.
    pub fn pop(&self) -> Option<Vec<u8>> {
        let head = &self.header().head.0;
        let mut pos = head.load(Ordering::Relaxed);
        loop {
            let seq = self.seq(pos).load(Ordering::Acquire);
            if seq == pos + 1 {
                let len = self.len_word(pos).load(Ordering::Relaxed) as usize;
                // A corrupt length (only possible if memory was scribbled on)
                // must not make us read outside the ring.
                let len = len.min(self.layout.max_message());
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
                        return Some(out);
                    }
                    Err(now) => pos = now,
                }
            } else if seq < pos + 1 {
                return None;
            } else {
                pos = head.load(Ordering::Relaxed);
            }
        }
    }

    /// Claims room for a message of `len` bytes and never publishes it: what
    /// a producer killed mid-push leaves behind. For tests of the recovery.
    #[cfg(feature = "fault-injection")]
    pub fn claim_and_abandon(&self, len: usize) -> Result<()> {
        let n = self.layout.slots_for(len);
        let tail = &self.header().tail.0;
        let pos = tail.load(Ordering::Relaxed);
        for i in 0..n {
            if self.seq(pos + i).load(Ordering::Acquire) != pos + i {
                return Err(Error::Full);
            }
        }
        tail.compare_exchange(pos, pos + n, Ordering::Relaxed, Ordering::Relaxed)
            .map(|_| ())
            .map_err(|_| Error::Full)
    }

    /// The head position if it is claimed by a producer but not published
    /// (a producer is writing it — or died doing so).
    pub fn unpublished_head(&self) -> Option<u64> {
        let head = self.header().head.0.load(Ordering::Acquire);
        let tail = self.header().tail.0.load(Ordering::Acquire);
        (tail > head && self.seq(head).load(Ordering::Acquire) == head).then_some(head)
    }

    /// Publishes, in place of the message a dead producer claimed at `head`,
    /// a message made of `filler` (which must say it is to be skipped),
    /// spanning up to the next published message (or the tail). Only for a
    /// head that `unpublished_head` returned and that stayed unpublished far
    /// longer than any live producer takes; false if that is not so any more.
    pub fn fill_abandoned(&self, head: u64, filler: &[u8]) -> bool {
        let header = self.header();
        if header.head.0.load(Ordering::Acquire) != head
            || self.seq(head).load(Ordering::Acquire) != head
        {
            return false;
        }
        let tail = header.tail.0.load(Ordering::Acquire);
        let mut next = head + 1;
        while next < tail && self.seq(next).load(Ordering::Acquire) != next + 1 {
            next += 1;
        }
        let slots = next - head;
        let len = (slots * self.layout.slot_bytes) as usize - LEN_PREFIX;
        if filler.len() > len {
            return false;
        }
        self.len_word(head).store(len as u64, Ordering::Relaxed);
        let start = self.slot_ptr(head) as usize + LEN_PREFIX;
        let area_end = self.base as usize
            + self.layout.data_offset()
            + (self.layout.capacity * self.layout.slot_bytes) as usize;
        let first = filler.len().min(area_end - start);
        // SAFETY: the slots head..next were claimed by a producer that is gone;
        // no one else writes them, and the copy stays inside the data area
        // (split at its end like any message).
        unsafe {
            std::ptr::copy_nonoverlapping(filler.as_ptr(), start as *mut u8, first);
            std::ptr::copy_nonoverlapping(
                filler.as_ptr().add(first),
                self.base.add(self.layout.data_offset()),
                filler.len() - first,
            );
        }
        self.seq(head).store(head + 1, Ordering::Release);
        true
    }

    /// Number of slots claimed by producers and not yet freed (approximate
    /// while others are active).
    pub fn used_slots(&self) -> u64 {
        let tail = self.header().tail.0.load(Ordering::Relaxed);
        let head = self.header().head.0.load(Ordering::Relaxed);
        tail.saturating_sub(head)
    }
}
