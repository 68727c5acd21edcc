//! The event loop a client's futures belong to: making futures, and the one
//! loop timer that fails tasks whose timeout passed.

use aqueduct_core::monotonic_ns;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use super::Client;

/// The event loop this client's futures belong to, and its callbacks.
pub(super) struct Loop {
    pub(super) create_future: Py<PyAny>,
    /// `{"loop": loop}` when `create_future` is asyncio's own: futures are
    /// then made as `asyncio.Future(loop=loop)`, with no Python frame.
    pub(super) future_kwargs: Option<Py<PyDict>>,
    pub(super) call_at: Py<PyAny>,
    pub(super) call_soon: Py<PyAny>,
    pub(super) time: Py<PyAny>,
    /// `client.expire` and `client.flush`, bound once.
    pub(super) expire: Py<PyAny>,
    pub(super) flush: Py<PyAny>,
    pub(super) timer: Option<Py<PyAny>>,
}

impl Loop {
    /// The callbacks of `event_loop`, for `client`.
    pub(super) fn new(client: &Bound<'_, Client>, event_loop: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = client.py();
        let default = py
            .import("asyncio")?
            .getattr("BaseEventLoop")?
            .getattr("create_future")?;
        let own = event_loop.get_type().getattr("create_future")?;
        let future_kwargs = if own.is(&default) {
            let kwargs = PyDict::new(py);
            kwargs.set_item("loop", event_loop)?;
            Some(kwargs.unbind())
        } else {
            None
        };
        Ok(Loop {
            create_future: event_loop.getattr("create_future")?.unbind(),
            future_kwargs,
            call_at: event_loop.getattr("call_at")?.unbind(),
            call_soon: event_loop.getattr("call_soon")?.unbind(),
            time: event_loop.getattr("time")?.unbind(),
            expire: client.getattr("expire")?.unbind(),
            flush: client.getattr("flush")?.unbind(),
            timer: None,
        })
    }
}

impl Loop {
    /// Every Python object it refers to (for the garbage collector).
    pub(super) fn objects(&self) -> impl Iterator<Item = &Py<PyAny>> {
        [
            &self.create_future,
            &self.call_at,
            &self.call_soon,
            &self.time,
            &self.expire,
            &self.flush,
        ]
        .into_iter()
        .chain(self.future_kwargs.as_ref().map(|k| k.as_any()))
        .chain(self.timer.as_ref())
    }
}

impl Client {
    /// Sets the loop timer to fire at `deadline_ns` (CLOCK_MONOTONIC),
    /// replacing the one set before.
    pub(super) fn arm_timer(&self, py: Python<'_>, deadline_ns: u64) -> PyResult<()> {
        let (time, call_at, expire, old) = {
            let mut state = self.state()?;
            let Some(event_loop) = state.event_loop.as_mut() else {
                return Ok(());
            };
            (
                event_loop.time.clone_ref(py),
                event_loop.call_at.clone_ref(py),
                event_loop.expire.clone_ref(py),
                event_loop.timer.take(),
            )
        };
        if let Some(old) = old {
            old.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        let now: f64 = time.bind(py).call0()?.extract()?;
        let delay = deadline_ns.saturating_sub(monotonic_ns()) as f64 / 1e9;
        let timer = call_at.bind(py).call1((now + delay, expire))?;
        if let Some(event_loop) = self.state()?.event_loop.as_mut() {
            event_loop.timer = Some(timer.unbind());
        }
        Ok(())
    }
}

pub(super) fn future_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static FUTURE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    FUTURE.import(py, "asyncio", "Future")
}

pub(super) fn timeout_error(py: Python<'_>, timeout_s: f64) -> PyResult<Bound<'_, PyAny>> {
    let message = format!("Task timeout error: not done in {timeout_s} s");
    crate::exception(py, "TaskTimeoutError")?.call1((message,))
}
