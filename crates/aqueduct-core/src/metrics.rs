//! Per-step metrics in shared memory, recorded where the events happen.
//!
//! Workers (and the parent, for the result queue) add to lock-free counters
//! and log2 histograms with one atomic add each; the parent reads them when
//! exporting. Histograms have power-of-two buckets: bucket `i` holds values
//! in `[2^(i-1), 2^i)` of the metric's unit (µs for times, tasks for sizes).

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets per histogram: up to 2^39 µs (about 6 days) for times.
pub const BUCKETS: usize = 40;

/// A log2 histogram plus count and sum.
#[repr(C)]
#[derive(Debug)]
pub struct Histogram {
    count: AtomicU64,
    sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// A point-in-time copy of a histogram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum: u64,
    pub buckets: Vec<u64>,
}

/// The bucket a value falls in.
pub fn bucket_of(value: u64) -> usize {
    ((u64::BITS - value.leading_zeros()) as usize).min(BUCKETS - 1)
}

impl Histogram {
    pub fn record(&self, value: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// The names of a step's histograms and counters, in the order
/// [`StepSnapshot::histograms`] and [`StepSnapshot::counters`] give them
/// (the binding and the Python metrics use these names).
pub const STEP_HISTOGRAMS: [&str; 4] = ["handle_us", "batch_us", "batch_size", "transfer_us"];
pub const STEP_COUNTERS: [&str; 4] = ["handled", "expired", "cancelled", "rejected"];
/// A step's worker processes by state, as the parent last counted them
/// (gauges, in the order [`StepSnapshot::gauges`] gives them).
pub const STEP_GAUGES: [&str; 3] = ["workers_running", "workers_starting", "workers_retiring"];

/// What a step records.
#[repr(C)]
#[derive(Debug)]
pub struct StepMetrics {
    /// µs a handler spent in `handle`.
    pub handle_us: Histogram,
    /// µs from the first task of a batch to the batch being complete.
    pub batch_us: Histogram,
    /// Tasks per `handle` call (recorded with the handle time).
    pub batch_size: Histogram,
    /// µs tasks waited in the step's queue.
    pub transfer_us: Histogram,
    /// Tasks handled.
    pub handled: AtomicU64,
    /// Tasks dropped because their deadline had passed.
    pub expired: AtomicU64,
    /// Tasks dropped because their caller cancelled them.
    pub cancelled: AtomicU64,
    /// Tasks refused because they could no longer make their latency objective.
    pub rejected: AtomicU64,
    /// Worker processes serving, starting and retiring (see [`STEP_GAUGES`]).
    pub workers: [AtomicU64; 3],
}

/// A point-in-time copy of a step's metrics.
#[derive(Debug, Clone, Default)]
pub struct StepSnapshot {
    pub handle_us: HistogramSnapshot,
    pub batch_us: HistogramSnapshot,
    pub batch_size: HistogramSnapshot,
    pub transfer_us: HistogramSnapshot,
    pub handled: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub rejected: u64,
    pub workers: [u64; 3],
}

impl StepSnapshot {
    /// Each histogram with its name (see [`STEP_HISTOGRAMS`]).
    pub fn histograms(&self) -> [(&'static str, &HistogramSnapshot); 4] {
        let [handle, batch, size, transfer] = STEP_HISTOGRAMS;
        [
            (handle, &self.handle_us),
            (batch, &self.batch_us),
            (size, &self.batch_size),
            (transfer, &self.transfer_us),
        ]
    }

    /// Each counter with its name (see [`STEP_COUNTERS`]).
    pub fn counters(&self) -> [(&'static str, u64); 4] {
        let [handled, expired, cancelled, rejected] = STEP_COUNTERS;
        [
            (handled, self.handled),
            (expired, self.expired),
            (cancelled, self.cancelled),
            (rejected, self.rejected),
        ]
    }

    /// Each gauge with its name (see [`STEP_GAUGES`]).
    pub fn gauges(&self) -> [(&'static str, u64); 3] {
        let [running, starting, retiring] = STEP_GAUGES;
        [
            (running, self.workers[0]),
            (starting, self.workers[1]),
            (retiring, self.workers[2]),
        ]
    }
}

impl StepMetrics {
    pub fn snapshot(&self) -> StepSnapshot {
        StepSnapshot {
            handle_us: self.handle_us.snapshot(),
            batch_us: self.batch_us.snapshot(),
            batch_size: self.batch_size.snapshot(),
            transfer_us: self.transfer_us.snapshot(),
            handled: self.handled.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            workers: self.workers.each_ref().map(|w| w.load(Ordering::Relaxed)),
        }
    }

    /// The parent counted the step's workers: `[running, starting, retiring]`.
    pub fn set_workers(&self, counts: [u64; 3]) {
        for (gauge, count) in self.workers.iter().zip(counts) {
            gauge.store(count, Ordering::Relaxed);
        }
    }
}
