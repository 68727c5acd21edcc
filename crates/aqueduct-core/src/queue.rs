//! `TaskQueue`: the input queue of one flow step (or the flow's result queue).
//!
//! One memfd segment holds a header and one [`Ring`] per priority level. The
//! header carries the wake-up words: consumers sleep on the `ready` futex, a
//! producer that finds the queue full sleeps on the `space` futex, and an asyncio
//! consumer (the parent process) is rung through an eventfd "doorbell" that is
//! only written when the consumer armed it — one write per drain, not per message.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::notify::{futex_wait, futex_wake, monotonic_ns, EventFd};
use crate::ring::{Ring, RingLayout};
use crate::segment::Segment;
use crate::spin::{SpinPolicy, DEFAULT_SPIN_US};
use crate::wire::{MAX_CLIENTS, MAX_PRIORITIES};

const MAGIC: u64 = 0x6171_7565_6475_6374; // "aqueduct"
const VERSION: u32 = 2;
/// Values of the header's `closed` word; any other was scribbled.
const OPEN: u32 = 0;
const CLOSED: u32 = 1;
/// Longest single futex sleep, so callers can check signals and deadlines.
pub const WAIT_SLICE: Duration = Duration::from_millis(100);

/// What every message carries before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageHeader {
    /// Identifies the task to the parent (its future).
    pub key: u64,
    /// `CLOCK_MONOTONIC` nanoseconds after which the task is useless; 0 = never.
    pub deadline_ns: u64,
    /// Free for the layer above (task, result, error, ...).
    pub kind: u32,
    /// Priority level, `0..priorities`; higher is served first.
    pub priority: u32,
    /// `CLOCK_MONOTONIC` nanoseconds when the message was queued (set by
    /// `push`), for the time it waited in the queue.
    pub enqueued_ns: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when the task entered its flow (set by
    /// the first `push`, kept from step to step): what a latency objective
    /// counts from.
    pub entered_ns: u64,
}

const HEADER_BYTES: usize = 48;
/// Kind of the filler that replaces a message a dead producer never finished.
pub const SKIPPED: u32 = u32::MAX;

impl MessageHeader {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..8].copy_from_slice(&self.key.to_le_bytes());
        out[8..16].copy_from_slice(&self.deadline_ns.to_le_bytes());
        out[16..20].copy_from_slice(&self.kind.to_le_bytes());
        out[20..24].copy_from_slice(&self.priority.to_le_bytes());
        out[24..32].copy_from_slice(&self.enqueued_ns.to_le_bytes());
        out[32..40].copy_from_slice(&self.entered_ns.to_le_bytes());
        out[40..48].copy_from_slice(&self.check().to_le_bytes());
        out
    }

    /// The header of a message as a consumer found it; `Err(Corrupt)` when
    /// it is too short or its check word does not match its fields (its
    /// bytes were scribbled on).
    fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || Error::Corrupt(format!("a message header of {} bytes", bytes.len()));
        let field = |at: usize| -> Result<[u8; 8]> {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(corrupt)
        };
        let kinds = field(16)?;
        let header = MessageHeader {
            key: u64::from_le_bytes(field(0)?),
            deadline_ns: u64::from_le_bytes(field(8)?),
            kind: u32::from_le_bytes([kinds[0], kinds[1], kinds[2], kinds[3]]),
            priority: u32::from_le_bytes([kinds[4], kinds[5], kinds[6], kinds[7]]),
            enqueued_ns: u64::from_le_bytes(field(24)?),
            entered_ns: u64::from_le_bytes(field(32)?),
        };
        if u64::from_le_bytes(field(40)?) != header.check() {
            return Err(Error::Corrupt(format!(
                "the header of message {:#x} fails its check",
                header.key
            )));
        }
        Ok(header)
    }

    /// A hash of the fields, so that a header scribbled on is told from one
    /// a producer wrote: a few multiplies, nothing per payload byte. Never 0,
    /// so zeroed memory does not pass either.
    fn check(&self) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let words = [
            self.key,
            self.deadline_ns,
            u64::from(self.kind) | (u64::from(self.priority) << 32),
            self.enqueued_ns,
            self.entered_ns,
        ];
        let mixed = words.iter().fold(0x6171_7565_6475_6374_u64, |h, &w| {
            (h ^ w).wrapping_mul(K).rotate_left(29)
        });
        (mixed ^ (mixed >> 32)) | 1
    }

    /// True when the deadline is set and `now_ns` is at or past it.
    pub fn is_expired(&self, now_ns: u64) -> bool {
        self.deadline_ns != 0 && now_ns >= self.deadline_ns
    }
}

/// A message taken from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: MessageHeader,
    raw: Vec<u8>,
}

impl Message {
    /// The payload bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.raw[HEADER_BYTES..]
    }
}

/// Slots per priority ring of a flow's queues (x [`DEFAULT_SLOT_BYTES`] =
/// 4 MiB a ring); a message may take up to half a ring.
pub const DEFAULT_RING_SLOTS: u64 = 16_384;
/// Bytes per ring slot of a flow's queues.
pub const DEFAULT_SLOT_BYTES: u64 = 256;

/// How long a worker waits for room in a full queue to pass on a task that
/// has no deadline (a task with one waits until its deadline).
pub const PUSH_WAIT_NO_DEADLINE: Duration = Duration::from_secs(60);

/// Shape of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Priority levels (rings), >= 1.
    pub priorities: u32,
    /// Slots per ring; rounded up to a power of two.
    pub capacity: u64,
    /// Bytes per slot; rounded up to a multiple of 8.
    pub slot_bytes: u64,
    /// Most messages held at once over all rings; 0 = bounded by the rings only.
    pub max_messages: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            priorities: 1,
            capacity: DEFAULT_RING_SLOTS,
            slot_bytes: DEFAULT_SLOT_BYTES,
            max_messages: 0,
        }
    }
}

#[repr(C, align(64))]
#[derive(Debug)]
struct Notice {
    /// Bumped on every event; the futex word sleepers wait on.
    epoch: AtomicU32,
    /// Processes currently asleep (or about to be) on `epoch`.
    sleepers: AtomicU32,
}

#[repr(C, align(64))]
#[derive(Debug)]
struct Counter(AtomicU64);

#[repr(C)]
#[derive(Debug)]
struct QueueHeader {
    magic: u64,
    version: u32,
    priorities: u32,
    capacity: u64,
    slot_bytes: u64,
    max_messages: u64,
    ready: Notice,
    space: Notice,
    count: Counter,
    closed: AtomicU32,
    /// Set by the asyncio consumer before it goes idle; producers that swap it
    /// back to 0 ring the doorbell.
    doorbell_armed: AtomicU32,
    /// Bit `i` set by client `i` when it met a full queue and waits on its doorbell.
    space_wanted: AtomicU32,
}

fn header_size() -> usize {
    std::mem::size_of::<QueueHeader>().div_ceil(64) * 64
}

/// Outcome of a bounded wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The condition holds (a message is ready / there may be space).
    Ready,
    /// The deadline passed first.
    Timeout,
    /// The queue was closed.
    Closed,
    /// The interrupt callback asked to stop waiting.
    Interrupted,
}

/// One step's input queue, shared by every process that maps its segment.
#[derive(Debug)]
pub struct TaskQueue {
    segment: Segment,
    rings: Vec<Ring>,
    spin: SpinPolicy,
}

impl TaskQueue {
    /// Creates a queue in a new sealed memfd segment.
    pub fn create(config: QueueConfig) -> Result<Self> {
        if config.priorities == 0 || config.priorities > MAX_PRIORITIES {
            return Err(Error::InvalidArgument(format!(
                "priorities must be in 1..={MAX_PRIORITIES}, got {}",
                config.priorities
            )));
        }
        let capacity = config.capacity.max(2).next_power_of_two();
        let slot_bytes = config.slot_bytes.max(16).div_ceil(8) * 8;
        let layout = RingLayout::new(capacity, slot_bytes)?;
        let size = header_size() + layout.size() * config.priorities as usize;
        let segment = Segment::create("aqueduct-queue", size, true)?;
        // SAFETY: the segment is fresh, zero-filled, at least `size` bytes and
        // not yet visible to any other process; the header is at offset 0, which
        // mmap aligns to a page.
        unsafe {
            let header = segment.as_ptr().cast::<QueueHeader>();
            (*header).version = VERSION;
            (*header).priorities = config.priorities;
            (*header).capacity = capacity;
            (*header).slot_bytes = slot_bytes;
            (*header).max_messages = config.max_messages;
            for p in 0..config.priorities as usize {
                Ring::init(
                    segment.as_ptr().add(header_size() + p * layout.size()),
                    layout,
                );
            }
            std::sync::atomic::fence(Ordering::Release);
            (*header).magic = MAGIC;
        }
        Self::from_segment(segment)
    }

    /// Opens a queue whose segment fd came from another process.
    pub fn open(fd: OwnedFd) -> Result<Self> {
        Self::from_segment(Segment::from_fd(fd)?)
    }

    /// Opens a queue through a duplicate of a borrowed fd.
    pub fn open_borrowed(fd: BorrowedFd<'_>) -> Result<Self> {
        Self::from_segment(Segment::from_borrowed_fd(fd)?)
    }

    fn from_segment(segment: Segment) -> Result<Self> {
        if segment.len() < header_size() {
            return Err(Error::InvalidSegment("too small for a queue header".into()));
        }
        // SAFETY: the segment is at least a header long and page aligned; the
        // plain fields are written once before `magic` (Release fence) and never after.
        let (magic, version, priorities, capacity, slot_bytes) = unsafe {
            let h = &*segment.as_ptr().cast::<QueueHeader>();
            let magic = std::ptr::read_volatile(&h.magic);
            std::sync::atomic::fence(Ordering::Acquire);
            (magic, h.version, h.priorities, h.capacity, h.slot_bytes)
        };
        if magic != MAGIC || version != VERSION {
            return Err(Error::InvalidSegment("not an aqueduct queue".into()));
        }
        let layout = RingLayout::new(capacity, slot_bytes)?;
        if priorities == 0 || segment.len() < header_size() + layout.size() * priorities as usize {
            return Err(Error::InvalidSegment("queue segment is truncated".into()));
        }
        let rings = (0..priorities as usize)
            .map(|p| {
                // SAFETY: each ring lies inside the segment (size checked above),
                // 64-byte aligned, initialised by `create` before `magic` was set.
                unsafe {
                    Ring::attach(
                        segment.as_ptr().add(header_size() + p * layout.size()),
                        layout,
                    )
                }
            })
            .collect();
        Ok(TaskQueue {
            segment,
            rings,
            spin: SpinPolicy::new(Duration::from_micros(DEFAULT_SPIN_US)),
        })
    }

    fn header(&self) -> &QueueHeader {
        // SAFETY: validated in `from_segment`; lives as long as `self.segment`.
        unsafe { &*self.segment.as_ptr().cast::<QueueHeader>() }
    }

    /// How long a consumer waiting for a message may spin on shared memory
    /// before sleeping on the futex (see [`SpinPolicy`]).
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = SpinPolicy::new(spin);
    }

    pub fn priorities(&self) -> u32 {
        self.rings.len() as u32
    }

    /// Largest payload one message may carry.
    pub fn max_payload(&self) -> usize {
        self.rings[0].layout().max_message() - HEADER_BYTES
    }

    /// Messages currently held (approximate while others are active).
    pub fn len(&self) -> u64 {
        self.header().count.0.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a message at `header.priority` (clamped to the top level).
    /// Does not wake anyone: call [`TaskQueue::notify`] once after a burst.
    pub fn push(&self, header: &MessageHeader, payload: &[u8]) -> Result<()> {
        self.push_parts(header, &[payload])
    }

    /// As [`TaskQueue::push`], the payload being `parts` one after the other.
    pub fn push_parts(&self, header: &MessageHeader, parts: &[&[u8]]) -> Result<()> {
        let h = self.header();
        match h.closed.load(Ordering::Relaxed) {
            OPEN => {}
            CLOSED => return Err(Error::Closed),
            other => {
                return Err(Error::Corrupt(format!(
                    "the queue's closed flag is {other:#x}"
                )))
            }
        }
        let size: usize = parts.iter().map(|p| p.len()).sum();
        if size > self.max_payload() {
            return Err(Error::TooLarge {
                size,
                limit: self.max_payload(),
            });
        }
        let previous = h.count.0.fetch_add(1, Ordering::Relaxed);
        if h.max_messages != 0 && previous >= h.max_messages {
            h.count.0.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::Full);
        }
        let level = (header.priority as usize).min(self.rings.len() - 1);
        let mut header = *header;
        header.priority = level as u32;
        header.enqueued_ns = monotonic_ns();
        if header.entered_ns == 0 {
            header.entered_ns = header.enqueued_ns; // its first queue
        }
        let encoded = header.encode();
        let mut all: [&[u8]; 4] = [&encoded, &[], &[], &[]];
        let Some(slots) = all.get_mut(1..=parts.len()) else {
            h.count.0.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::InvalidArgument(
                "a message has at most 3 parts".into(),
            ));
        };
        slots.copy_from_slice(parts);
        match self.rings[level].push(&all[..=parts.len()]) {
            Ok(()) => Ok(()),
            Err(e) => {
                h.count.0.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Pushes, waiting for room while the queue is full: until the message
    /// is in, the queue closes (`Err(Closed)`), `give_up_ns` passes
    /// (`Err(Full)`; `None`: no limit) or `interrupt` returns true
    /// (`Err(Full)`). Consumers are woken while it waits, so they make room.
    pub fn push_waiting(
        &self,
        header: &MessageHeader,
        parts: &[&[u8]],
        give_up_ns: Option<u64>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<()> {
        loop {
            match self.push_parts(header, parts) {
                Err(Error::Full) => {}
                done => return done,
            }
            self.notify(None);
            match self.wait_space(give_up_ns, interrupt) {
                Wait::Ready => {}
                Wait::Closed => return Err(Error::Closed),
                Wait::Timeout | Wait::Interrupted => return Err(Error::Full),
            }
        }
    }

    /// Wakes one sleeping consumer and rings `doorbell` if the consumer armed it.
    pub fn notify(&self, doorbell: Option<&EventFd>) {
        let h = self.header();
        h.ready.epoch.fetch_add(1, Ordering::SeqCst);
        if h.ready.sleepers.load(Ordering::SeqCst) > 0 {
            futex_wake(&h.ready.epoch, 1);
        }
        if let Some(bell) = doorbell {
            if h.doorbell_armed.swap(0, Ordering::SeqCst) == 1 {
                bell.signal();
            }
        }
    }

    /// True when some ring has a published message at its head.
    pub fn has_ready(&self) -> bool {
        self.rings.iter().any(Ring::has_ready)
    }

    /// Takes the next message, highest priority first: `Ok(None)` when
    /// there is none, `Err(Corrupt)` when the queue's memory was scribbled on
    /// (retire the segment: what it holds cannot be trusted).
    /// Call [`TaskQueue::released`] once after a burst of pops.
    pub fn try_pop(&self) -> Result<Option<Message>> {
        for ring in self.rings.iter().rev() {
            while let Some(raw) = ring.pop()? {
                self.header().count.0.fetch_sub(1, Ordering::Relaxed);
                let header = MessageHeader::decode(&raw)?;
                // Fillers for messages a dead producer never finished.
                if header.kind != SKIPPED {
                    return Ok(Some(Message { header, raw }));
                }
            }
        }
        Ok(None)
    }

    /// Tells producers waiting for room that some was freed: wakes futex
    /// sleepers and rings the doorbell of each asyncio producer (client)
    /// that asked for it — `doorbells[i]` is client `i`'s.
    pub fn released(&self, doorbells: &[&EventFd]) {
        let h = self.header();
        h.space.epoch.fetch_add(1, Ordering::SeqCst);
        if h.space.sleepers.load(Ordering::SeqCst) > 0 {
            futex_wake(&h.space.epoch, i32::MAX);
        }
        if doorbells.is_empty() || h.space_wanted.load(Ordering::Relaxed) == 0 {
            return;
        }
        let wanted = h.space_wanted.swap(0, Ordering::SeqCst);
        for (i, bell) in doorbells.iter().enumerate().take(MAX_CLIENTS as usize) {
            if wanted & (1 << i) != 0 {
                bell.signal();
            }
        }
    }

    /// An asyncio producer (client `client`, < 32) that met `Full` calls
    /// this, then retries its push once; if that fails too, it waits for its
    /// doorbell.
    pub fn want_space(&self, client: u32) {
        self.header()
            .space_wanted
            .fetch_or(1 << client.min(MAX_CLIENTS - 1), Ordering::SeqCst);
    }

    /// An asyncio consumer calls this before going idle. Returns true if a
    /// message is already ready (drain again instead of waiting).
    pub fn arm_doorbell(&self) -> bool {
        self.header().doorbell_armed.store(1, Ordering::SeqCst);
        self.has_ready()
    }

    /// Spins on shared memory (no sleeping, no syscalls) for up to `budget`
    /// until a message is ready. For a consumer that expects an answer within
    /// microseconds and would otherwise pay a kernel wake-up.
    pub fn spin_until_ready(&self, budget: Duration) -> bool {
        let until = monotonic_ns() + budget.as_nanos() as u64;
        loop {
            if self.has_ready() {
                return true;
            }
            if monotonic_ns() >= until {
                return false;
            }
            // The producer may share our core: let it run.
            // SAFETY: sched_yield has no preconditions.
            unsafe {
                libc::sched_yield();
            }
        }
    }

    /// Leaves an unfinished message in ring 0, as a producer killed mid-push.
    #[cfg(feature = "fault-injection")]
    pub fn abandon_push(&self, payload_len: usize) -> Result<()> {
        self.header().count.0.fetch_add(1, Ordering::Relaxed);
        self.rings[0].claim_and_abandon(HEADER_BYTES + payload_len)
    }

    /// `(ring, head)` of every ring whose head a producer claimed but has not
    /// published. A live producer publishes within microseconds; a head that
    /// stays so was abandoned by a producer that died mid-push.
    pub fn unpublished_heads(&self) -> Vec<(usize, u64)> {
        self.rings
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.unpublished_head().map(|h| (i, h)))
            .collect()
    }

    /// Unblocks ring `ring` whose head stayed unpublished at `head`: the
    /// abandoned message becomes a skipped one. Returns whether it did.
    pub fn skip_abandoned(&self, ring: usize, head: u64) -> bool {
        let filler = MessageHeader {
            kind: SKIPPED,
            ..MessageHeader::default()
        }
        .encode();
        let done = self
            .rings
            .get(ring)
            .is_some_and(|r| r.fill_abandoned(head, &filler));
        if done {
            self.notify(None);
        }
        done
    }

    /// Closes the queue: pushes fail, waiters return `Closed` once it is drained.
    pub fn close(&self) {
        let h = self.header();
        h.closed.store(CLOSED, Ordering::SeqCst);
        for notice in [&h.ready, &h.space] {
            notice.epoch.fetch_add(1, Ordering::SeqCst);
            futex_wake(&notice.epoch, i32::MAX);
        }
    }

    /// Processes asleep (or about to fall asleep) in [`Self::wait_ready`],
    /// and in [`Self::wait_space`]: what a test waits for before it wakes one.
    pub fn sleepers(&self) -> (u32, u32) {
        let h = self.header();
        (
            h.ready.sleepers.load(Ordering::SeqCst),
            h.space.sleepers.load(Ordering::SeqCst),
        )
    }

    pub fn is_closed(&self) -> bool {
        self.header().closed.load(Ordering::Relaxed) == CLOSED
    }

    /// Waits until a message is ready, the queue is closed and drained, or
    /// `deadline_ns` passes (`None`: no deadline). `interrupt` runs at least
    /// every [`WAIT_SLICE`] while asleep; returning true ends the wait.
    pub fn wait_ready(
        &self,
        deadline_ns: Option<u64>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Wait {
        let h = self.header();
        self.wait_on(&h.ready, deadline_ns, interrupt, true, &|| {
            if self.has_ready() {
                Some(Wait::Ready)
            } else if self.is_closed() {
                Some(Wait::Closed)
            } else {
                None
            }
        })
    }

    /// Waits until a consumer freed room (then retry the push), the queue is
    /// closed, or `deadline_ns` passes.
    pub fn wait_space(
        &self,
        deadline_ns: Option<u64>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Wait {
        let h = self.header();
        let start = h.space.epoch.load(Ordering::SeqCst);
        self.wait_on(&h.space, deadline_ns, interrupt, false, &|| {
            if self.is_closed() {
                Some(Wait::Closed)
            } else if h.space.epoch.load(Ordering::SeqCst) != start || self.has_room() {
                Some(Wait::Ready)
            } else {
                None
            }
        })
    }

    fn has_room(&self) -> bool {
        let h = self.header();
        let max = h.max_messages;
        (max == 0 || h.count.0.load(Ordering::Relaxed) < max)
            && self
                .rings
                .iter()
                .any(|r| r.used_slots() < r.layout().capacity / 2)
    }

    fn wait_on(
        &self,
        notice: &Notice,
        deadline_ns: Option<u64>,
        interrupt: &mut dyn FnMut() -> bool,
        spin: bool,
        check: &dyn Fn() -> Option<Wait>,
    ) -> Wait {
        if let Some(done) = check() {
            return done;
        }
        // Spin while it pays: a wake-up through the kernel costs tens of
        // microseconds. Yielding while spinning hands the core to any other
        // runnable process and returns at once otherwise.
        let budget = if spin {
            self.spin.budget()
        } else {
            Duration::ZERO
        };
        if !budget.is_zero() {
            let spin_until = monotonic_ns() + budget.as_nanos() as u64;
            loop {
                // SAFETY: sched_yield has no preconditions.
                unsafe {
                    libc::sched_yield();
                }
                if let Some(done) = check() {
                    self.spin.record(true);
                    return done;
                }
                if monotonic_ns() >= spin_until {
                    break;
                }
            }
            self.spin.record(false);
        }
        loop {
            let now = monotonic_ns();
            let remaining = match deadline_ns {
                Some(d) if now >= d => return Wait::Timeout,
                Some(d) => Duration::from_nanos(d - now).min(WAIT_SLICE),
                None => WAIT_SLICE,
            };
            let epoch = notice.epoch.load(Ordering::SeqCst);
            notice.sleepers.fetch_add(1, Ordering::SeqCst);
            if let Some(done) = check() {
                notice.sleepers.fetch_sub(1, Ordering::SeqCst);
                return done;
            }
            futex_wait(&notice.epoch, epoch, Some(remaining));
            notice.sleepers.fetch_sub(1, Ordering::SeqCst);
            if let Some(done) = check() {
                return done;
            }
            if interrupt() {
                return Wait::Interrupted;
            }
        }
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.segment.raw_fd()
    }
}

impl AsFd for TaskQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.segment.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scribbled_message_header_fails_its_check() {
        let header = MessageHeader {
            key: 7,
            deadline_ns: 9,
            kind: 4,
            priority: 1,
            enqueued_ns: 11,
            entered_ns: 0,
        };
        let bytes = header.encode();
        assert_eq!(MessageHeader::decode(&bytes).ok(), Some(header));
        for at in [0, 8, 16, 20, 24, 32, 40, 47] {
            let mut scribbled = bytes;
            scribbled[at] ^= 0x10;
            assert!(
                matches!(MessageHeader::decode(&scribbled), Err(Error::Corrupt(_))),
                "byte {at}"
            );
        }
        assert!(MessageHeader::decode(&[0; HEADER_BYTES]).is_err(), "zeroed");
        assert!(MessageHeader::decode(&bytes[..20]).is_err(), "short");
    }

    #[test]
    fn a_task_keeps_the_time_it_entered_its_flow_from_queue_to_queue() {
        let first = TaskQueue::create(QueueConfig::default()).unwrap();
        let second = TaskQueue::create(QueueConfig::default()).unwrap();
        let before = monotonic_ns();
        first.push(&MessageHeader::default(), b"t").unwrap();
        let taken = first.try_pop().unwrap().unwrap().header;
        assert!(taken.entered_ns >= before && taken.entered_ns == taken.enqueued_ns);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let on = MessageHeader {
            enqueued_ns: 0,
            ..taken
        };
        second.push(&on, b"t").unwrap();
        let again = second.try_pop().unwrap().unwrap().header;
        assert_eq!(again.entered_ns, taken.entered_ns, "kept by the next step");
        assert!(
            again.enqueued_ns > taken.enqueued_ns,
            "its own queue's time"
        );
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::fuzzing::bytes;

    fn header() -> impl Strategy<Value = MessageHeader> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(key, deadline_ns, kind, priority, enqueued_ns, entered_ns)| MessageHeader {
                    key,
                    deadline_ns,
                    kind,
                    priority,
                    enqueued_ns,
                    entered_ns,
                },
            )
    }

    proptest! {
        #[test]
        fn a_header_comes_back_as_it_went_and_a_flipped_bit_is_caught(
            header in header(),
            at in any::<Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = header.encode().to_vec();
            bytes.extend_from_slice(b"payload");
            prop_assert_eq!(MessageHeader::decode(&bytes).ok(), Some(header));
            bytes[at.index(HEADER_BYTES)] ^= 1 << bit;
            prop_assert!(matches!(MessageHeader::decode(&bytes), Err(Error::Corrupt(_))));
        }

        #[test]
        fn any_bytes_are_a_header_that_checks_or_corrupt(bytes in bytes(64)) {
            match MessageHeader::decode(&bytes) {
                Ok(header) => prop_assert_eq!(&header.encode()[..], &bytes[..HEADER_BYTES]),
                Err(e) => prop_assert!(matches!(e, Error::Corrupt(_))),
            }
        }
    }
}
