//! `Message`: the one shape a queue message has in Python, whichever way it
//! crosses the binding (pushed, drained, handed to a worker's Python half).

use aqueduct_core::MessageHeader;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A queue message: the task `key`, its `kind` word (kind and flags, see the
/// wire constants), `priority`, the caller's deadline (`deadline_ns` on the
/// monotonic clock, 0 = none) and the `payload` bytes.
#[pyclass(module = "aqueduct._core", name = "Message", frozen)]
pub(crate) struct PyMessage {
    #[pyo3(get)]
    key: u64,
    #[pyo3(get)]
    kind: u32,
    #[pyo3(get)]
    priority: u32,
    #[pyo3(get)]
    deadline_ns: u64,
    #[pyo3(get)]
    payload: Py<PyBytes>,
}

impl PyMessage {
    /// A Python message of a message taken from a queue.
    pub(crate) fn of(py: Python<'_>, m: &aqueduct_core::Message) -> Self {
        PyMessage {
            key: m.header.key,
            kind: m.header.kind,
            priority: m.header.priority,
            deadline_ns: m.header.deadline_ns,
            payload: PyBytes::new(py, m.payload()).unbind(),
        }
    }

    /// The header it is pushed with (the queue stamps the enqueue time).
    pub(crate) fn header(&self) -> MessageHeader {
        MessageHeader {
            key: self.key,
            deadline_ns: self.deadline_ns,
            kind: self.kind,
            priority: self.priority,
            enqueued_ns: 0,
            entered_ns: 0,
        }
    }

    pub(crate) fn payload<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        self.payload.bind(py).as_bytes()
    }
}

#[pymethods]
impl PyMessage {
    #[new]
    #[pyo3(signature = (key, kind, payload, priority=0, deadline_ns=0))]
    fn new(key: u64, kind: u32, payload: Py<PyBytes>, priority: u32, deadline_ns: u64) -> Self {
        PyMessage {
            key,
            kind,
            priority,
            deadline_ns,
            payload,
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Message(key={}, kind={:#x}, payload=<{} bytes>, priority={}, deadline_ns={})",
            self.key,
            self.kind,
            self.payload.bind(py).as_bytes().len(),
            self.priority,
            self.deadline_ns
        )
    }
}
