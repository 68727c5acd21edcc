//! Binding of a flow's control block: claims, the cancel set, metrics.

use std::sync::Arc;

use aqueduct_core::control::{HOLD, RETIRE};
use aqueduct_core::Control;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{dup_fd, to_py_err};

/// A flow's control block: claim slots of the workers and the cancel set.
#[pyclass(module = "aqueduct._core", name = "Control", frozen)]
pub(crate) struct PyControl {
    pub(crate) inner: Arc<Control>,
}

#[pymethods]
impl PyControl {
    /// `slots` worker claim slots; schedules for `steps` steps, and their
    /// metrics when `metered`.
    #[staticmethod]
    #[pyo3(signature = (slots, steps=1, metered=true))]
    fn create(slots: usize, steps: usize, metered: bool) -> PyResult<Self> {
        let control = Control::create_metered(slots, steps, metered).map_err(to_py_err)?;
        Ok(PyControl {
            inner: Arc::new(control),
        })
    }

    #[staticmethod]
    fn open(fd: i32) -> PyResult<Self> {
        Ok(PyControl {
            inner: Arc::new(Control::open(dup_fd(fd)?).map_err(to_py_err)?),
        })
    }

    #[getter]
    fn fd(&self) -> i32 {
        self.inner.raw_fd()
    }

    /// Marks task `key` cancelled: workers drop it instead of handling it.
    fn cancel(&self, key: u64) {
        self.inner.cancel(key);
    }

    /// The next client slot (each process submitting tasks takes one).
    fn claim_client(&self) -> u64 {
        self.inner.claim_client()
    }

    /// How many client slots were handed out.
    fn clients_claimed(&self) -> u64 {
        self.inner.clients_claimed()
    }

    /// Slots `0..count` are taken already: later claims get the ones after.
    fn reserve_clients(&self, count: u64) {
        self.inner.reserve_clients(count);
    }

    /// Keys of the tasks the worker of `slot` holds right now.
    fn claims(&self, slot: usize) -> Vec<u64> {
        self.inner.claims(slot)
    }

    fn clear_claims(&self, slot: usize) {
        self.inner.clear_claims(slot);
    }

    /// Step `step`'s workers by state (see `STEP_GAUGES`), for metrics and
    /// for admission at push (the running ones).
    fn set_workers(&self, step: usize, running: u64, starting: u64, retiring: u64) {
        if let Some(schedule) = self.inner.schedule(step) {
            schedule.set_workers(running);
        }
        if let Some(m) = self.inner.metrics(step) {
            m.set_workers([running, starting, retiring]);
        }
    }

    /// Whether the worker of `slot` is working on a batch right now.
    fn busy(&self, slot: usize) -> bool {
        self.inner.claim_count(slot) > 0
    }

    /// The worker started in `slot` from now on waits before taking tasks
    /// (until `release`); a slot being reused starts with no claims.
    fn hold(&self, slot: usize) {
        self.inner.clear_claims(slot);
        self.inner.set_orders(slot, HOLD);
    }

    /// The worker of `slot` takes tasks (at once, or once started).
    fn release(&self, slot: usize) {
        self.inner.clear_claims(slot);
        self.inner.set_orders(slot, 0);
    }

    /// The worker of `slot` takes no more tasks, finishes those it holds
    /// and exits.
    fn retire(&self, slot: usize) {
        self.inner.add_orders(slot, RETIRE);
    }

    /// Whether the worker of `slot` was told to retire.
    fn retired(&self, slot: usize) -> bool {
        self.inner.orders(slot) & RETIRE != 0
    }

    /// Step `step`'s metrics: counters, and histograms as
    /// `(count, sum, buckets)` where bucket `i` counts values below `2**i`.
    fn metrics<'py>(&self, py: Python<'py>, step: usize) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(m) = self.inner.metrics(step) else {
            return Ok(None);
        };
        let snap = m.snapshot();
        let d = PyDict::new(py);
        for (name, h) in snap.histograms() {
            d.set_item(name, (h.count, h.sum, h.buckets.clone()))?;
        }
        for (name, value) in snap.counters().into_iter().chain(snap.gauges()) {
            d.set_item(name, value)?;
        }
        Ok(Some(d))
    }
}
