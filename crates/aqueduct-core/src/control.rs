//! Per-flow control block in shared memory: which tasks each worker holds
//! (so the parent can fail them if the worker dies) and which tasks were
//! cancelled (so workers skip them before `handle`).
//!
//! * claim slots: one per worker process; the worker's batcher records each
//!   key as it takes the message off the queue and clears the slot when it
//!   asks for the next batch. A worker killed in between leaves its keys
//!   there for the parent to read.
//! * cancel set: one bit per task key (modulo its size), set by the parent
//!   when the caller gave up, cleared when the key is submitted.
//! * orders: a word per worker slot through which the parent tells its
//!   worker to wait before taking tasks ([`HOLD`]: a replacement whose
//!   siblings are still starting) or to take no more and exit once what it
//!   holds is done ([`RETIRE`]: replaced, or an elastic step shrinking).
//! * per step: its metrics ([`StepMetrics`]) and its schedule
//!   ([`Schedule`]: latency objective and learned cost).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::admission::Schedule;
use crate::error::{Error, Result};
use crate::metrics::StepMetrics;
use crate::notify::{futex_wait, futex_wake};
use crate::segment::Segment;

const MAGIC: u64 = 0x6171_7565_6463_746c; // "aquedctl"
/// Most keys one claim slot records (larger batches record their first ones).
pub const MAX_CLAIMS: usize = 4096;
/// More worker slots (or steps) than any flow has: a header saying more was
/// scribbled on.
const MAX_SLOTS: usize = 1 << 16;
/// Bits in the cancel set; keys wrap around it.
const CANCEL_BITS: u64 = 1 << 20;

/// An order bit: the worker of the slot takes no task until it is cleared.
pub const HOLD: u32 = 1;
/// An order bit: the worker of the slot takes no more tasks; it finishes
/// those it holds and exits.
pub const RETIRE: u32 = 2;

#[repr(C)]
struct Header {
    magic: u64,
    slots: u64,
    steps: u64,
    /// Non-zero: the steps' metrics are recorded (their area exists).
    metered: u64,
    /// Client slots handed out (processes submitting tasks).
    clients: AtomicU64,
}

#[repr(C)]
struct ClaimSlot {
    count: AtomicU32,
    /// [`HOLD`] and [`RETIRE`] bits, written by the parent.
    orders: AtomicU32,
    keys: [AtomicU64; MAX_CLAIMS],
}

/// What a per-step area of the block holds.
///
/// # Safety
///
/// Only atomics (valid when zero-filled, shared between processes), and a
/// size that is a multiple of 8.
unsafe trait StepArea {}

// SAFETY: histograms and counters of atomics (`metrics.rs`), 8-byte words.
unsafe impl StepArea for StepMetrics {}
// SAFETY: atomics only (`admission.rs`), 8-byte words.
unsafe impl StepArea for Schedule {}
const _: () = assert!(std::mem::size_of::<StepMetrics>() % 8 == 0);
const _: () = assert!(std::mem::size_of::<Schedule>() % 8 == 0);

/// The control block of one flow.
#[derive(Debug)]
pub struct Control {
    segment: Segment,
    slots: usize,
    steps: usize,
    metered: bool,
}

/// Where each area of the block starts, and where the block ends.
struct Offsets {
    cancel: usize,
    claims: usize,
    metrics: usize,
    schedules: usize,
    end: usize,
}

fn offsets(slots: usize, steps: usize, metered: bool) -> Offsets {
    let cancel = std::mem::size_of::<Header>().div_ceil(8) * 8;
    let claims = cancel + (CANCEL_BITS / 8) as usize;
    let metrics = claims + slots * std::mem::size_of::<ClaimSlot>();
    let metered_steps = if metered { steps } else { 0 };
    let schedules = metrics + metered_steps * std::mem::size_of::<StepMetrics>();
    let end = schedules + steps * std::mem::size_of::<Schedule>();
    Offsets {
        cancel,
        claims,
        metrics,
        schedules,
        end,
    }
}

impl Control {
    /// A control block with `slots` claim slots (one per worker process) and
    /// metrics and schedules for `steps` steps (the flow's steps plus one
    /// for results).
    pub fn create(slots: usize, steps: usize) -> Result<Self> {
        Self::create_metered(slots, steps, true)
    }

    /// As [`Control::create`]; `metered` false: no metrics are recorded
    /// ([`Control::metrics`] is None), the schedules are there all the same.
    pub fn create_metered(slots: usize, steps: usize, metered: bool) -> Result<Self> {
        let slots = slots.max(1);
        let size = offsets(slots, steps, metered).end;
        let segment = Segment::create("aqueduct-control", size, false)?;
        // SAFETY: fresh zero-filled segment, page aligned, not shared yet.
        unsafe {
            let h = segment.as_ptr().cast::<Header>();
            (*h).slots = slots as u64;
            (*h).steps = steps as u64;
            (*h).metered = u64::from(metered);
            std::sync::atomic::fence(Ordering::Release);
            (*h).magic = MAGIC;
        }
        Ok(Control {
            segment,
            slots,
            steps,
            metered,
        })
    }

    /// Maps a control block received from another process.
    pub fn open(fd: OwnedFd) -> Result<Self> {
        let segment = Segment::from_fd(fd)?;
        if segment.len() < std::mem::size_of::<Header>() {
            return Err(Error::InvalidSegment(
                "too small for a control block".into(),
            ));
        }
        // SAFETY: at least a header long; written before `magic`.
        let (magic, slots, steps, metered) = unsafe {
            let h = &*segment.as_ptr().cast::<Header>();
            let magic = std::ptr::read_volatile(&h.magic);
            std::sync::atomic::fence(Ordering::Acquire);
            (magic, h.slots as usize, h.steps as usize, h.metered != 0)
        };
        // Bounded before the layout is computed from them, so no
        // arithmetic on scribbled values can overflow.
        let sane = slots <= MAX_SLOTS && steps <= MAX_SLOTS;
        if magic != MAGIC || !sane || segment.len() < offsets(slots, steps, metered).end {
            return Err(Error::InvalidSegment(
                "not an aqueduct control block".into(),
            ));
        }
        Ok(Control {
            segment,
            slots,
            steps,
            metered,
        })
    }

    fn cancel_word(&self, key: u64) -> (&AtomicU64, u64) {
        // Keys of different clients differ in their top bits: hash them so
        // that they spread over the whole set.
        let bit = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CANCEL_BITS.trailing_zeros());
        let cancel = offsets(self.slots, self.steps, self.metered).cancel;
        // SAFETY: `bit / 64 < CANCEL_BITS / 64`, inside the cancel set, which
        // starts 8-byte aligned right after the header (`offsets`); the
        // segment is page aligned and as long as `offsets` says (checked
        // by `open`), in every process that maps it.
        let word = unsafe {
            &*self
                .segment
                .as_ptr()
                .add(cancel + (bit / 64) as usize * 8)
                .cast::<AtomicU64>()
        };
        (word, 1 << (bit % 64))
    }

    /// Marks task `key` cancelled.
    pub fn cancel(&self, key: u64) {
        let (word, mask) = self.cancel_word(key);
        word.fetch_or(mask, Ordering::Release);
    }

    /// Clears the mark of `key` (before the key is used).
    pub fn uncancel(&self, key: u64) {
        let (word, mask) = self.cancel_word(key);
        if word.load(Ordering::Relaxed) & mask != 0 {
            word.fetch_and(!mask, Ordering::Release);
        }
    }

    pub fn is_cancelled(&self, key: u64) -> bool {
        let (word, mask) = self.cancel_word(key);
        word.load(Ordering::Acquire) & mask != 0
    }

    fn slot(&self, slot: usize) -> Option<&ClaimSlot> {
        if slot >= self.slots {
            return None;
        }
        let claims = offsets(self.slots, self.steps, self.metered).claims;
        // SAFETY: `slot < slots`, so the slot lies inside the segment; slots
        // are 8-byte aligned (the claims area starts at a multiple of 8).
        Some(unsafe {
            &*self
                .segment
                .as_ptr()
                .add(claims + slot * std::mem::size_of::<ClaimSlot>())
                .cast::<ClaimSlot>()
        })
    }

    /// Records that the worker of `slot` took task `key` (first `MAX_CLAIMS` only).
    pub fn claim(&self, slot: usize, key: u64) {
        if let Some(s) = self.slot(slot) {
            let n = s.count.load(Ordering::Relaxed) as usize;
            if n < MAX_CLAIMS {
                s.keys[n].store(key, Ordering::Relaxed);
                s.count.store(n as u32 + 1, Ordering::Release);
            }
        }
    }

    /// The worker of `slot` is done with every task it took.
    pub fn clear_claims(&self, slot: usize) {
        if let Some(s) = self.slot(slot) {
            s.count.store(0, Ordering::Release);
        }
    }

    /// The keys the worker of `slot` holds now.
    pub fn claims(&self, slot: usize) -> Vec<u64> {
        let Some(s) = self.slot(slot) else {
            return Vec::new();
        };
        let n = (s.count.load(Ordering::Acquire) as usize).min(MAX_CLAIMS);
        s.keys[..n]
            .iter()
            .map(|k| k.load(Ordering::Relaxed))
            .collect()
    }

    /// How many tasks the worker of `slot` holds now (0: between batches).
    pub fn claim_count(&self, slot: usize) -> usize {
        self.slot(slot).map_or(0, |s| {
            (s.count.load(Ordering::Acquire) as usize).min(MAX_CLAIMS)
        })
    }

    /// The orders of the worker of `slot` (0 for a slot that does not exist).
    pub fn orders(&self, slot: usize) -> u32 {
        self.slot(slot)
            .map_or(0, |s| s.orders.load(Ordering::Acquire))
    }

    /// Sets the orders of `slot` to `orders` and wakes its worker if it
    /// waits for them to change. A fresh worker process in a reused slot
    /// starts from the orders set here (`0`: take tasks at once).
    pub fn set_orders(&self, slot: usize, orders: u32) {
        if let Some(s) = self.slot(slot) {
            s.orders.store(orders, Ordering::Release);
            futex_wake(&s.orders, i32::MAX);
        }
    }

    /// Adds the bits of `orders` to those of `slot` (and wakes its worker).
    pub fn add_orders(&self, slot: usize, orders: u32) {
        if let Some(s) = self.slot(slot) {
            s.orders.fetch_or(orders, Ordering::AcqRel);
            futex_wake(&s.orders, i32::MAX);
        }
    }

    /// Blocks while the orders of `slot` are `seen`, at most `timeout`.
    pub fn wait_orders(&self, slot: usize, seen: u32, timeout: std::time::Duration) {
        if let Some(s) = self.slot(slot) {
            futex_wait(&s.orders, seen, Some(timeout));
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    fn header(&self) -> &Header {
        // SAFETY: the header is valid for the life of the segment.
        unsafe { &*self.segment.as_ptr().cast::<Header>() }
    }

    /// Hands out the next client slot (0 for the first caller, ...).
    pub fn claim_client(&self) -> u64 {
        self.header().clients.fetch_add(1, Ordering::AcqRel)
    }

    /// How many client slots were handed out.
    pub fn clients_claimed(&self) -> u64 {
        self.header().clients.load(Ordering::Acquire)
    }

    /// Slots `0..count` are taken already (by processes that follow a flow
    /// onto these segments from older ones): `claim_client` hands out the
    /// ones after them.
    pub fn reserve_clients(&self, count: u64) {
        self.header().clients.fetch_max(count, Ordering::AcqRel);
    }

    /// The metrics of step `step`, if there is such a step.
    pub fn metrics(&self, step: usize) -> Option<&StepMetrics> {
        if !self.metered {
            return None;
        }
        self.per_step(offsets(self.slots, self.steps, self.metered).metrics, step)
    }

    /// The latency objective and learned cost of step `step` (see
    /// [`crate::admission`]), if there is such a step.
    pub fn schedule(&self, step: usize) -> Option<&Schedule> {
        self.per_step(
            offsets(self.slots, self.steps, self.metered).schedules,
            step,
        )
    }

    /// Step `step`'s `T` in the per-step area that starts at `base`.
    fn per_step<T: StepArea>(&self, base: usize, step: usize) -> Option<&T> {
        if step >= self.steps {
            return None;
        }
        // SAFETY: `base` is the start of an area of `steps` `T`s (`offsets`)
        // inside the segment (its length checked on open), 8-byte aligned
        // (every area before it is a multiple of 8 long), and `step <
        // steps`; a `StepArea` is atomics only, valid zero-initialised, so
        // other processes writing it concurrently is sound.
        Some(unsafe {
            &*self
                .segment
                .as_ptr()
                .add(base + step * std::mem::size_of::<T>())
                .cast::<T>()
        })
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.segment.raw_fd()
    }
}

impl AsFd for Control {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.segment.as_fd()
    }
}
