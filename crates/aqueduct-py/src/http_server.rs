//! `HttpServer`: the Rust HTTP front of a flow (`aqueduct_http`), for
//! `aqueduct.http`. Everything per request happens without the GIL.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aqueduct_http::{Config, Names, Server, Target};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::control::PyControl;
use crate::queue::Queue;
use crate::shm::SharedArena;

#[pyclass(module = "aqueduct._core", frozen)]
pub struct HttpServer {
    server: Mutex<Option<Server>>,
    port: u16,
}

#[pymethods]
impl HttpServer {
    #[new]
    #[pyo3(signature = (*, host, port, paths, steps, results, control, arena, client, timeout, body_limit, threads, streams=Vec::new(), header_timeout=10.0, max_connections=10_000, body_timeout=30.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: &str,
        port: u16,
        paths: Vec<String>,
        steps: Vec<PyRef<'_, Queue>>,
        results: &Queue,
        control: &PyControl,
        arena: &SharedArena,
        client: u32,
        timeout: f64,
        body_limit: usize,
        threads: usize,
        streams: Vec<Option<String>>,
        header_timeout: f64,
        max_connections: usize,
        body_timeout: f64,
    ) -> PyResult<Self> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(PyValueError::new_err("timeout must be > 0"));
        }
        if !(header_timeout.is_finite() && header_timeout > 0.0) {
            return Err(PyValueError::new_err("header_timeout must be > 0"));
        }
        if !(body_timeout.is_finite() && body_timeout > 0.0) {
            return Err(PyValueError::new_err("body_timeout must be > 0"));
        }
        let addr: SocketAddr = (host, port)
            .to_socket_addrs()
            .map_err(|e| PyOSError::new_err(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| PyOSError::new_err(format!("{host} has no address")))?;
        if paths.is_empty() || paths.len() > usize::from(u16::MAX) {
            return Err(PyValueError::new_err("a server needs 1 to 65535 routes"));
        }
        if !streams.is_empty() && streams.len() != paths.len() {
            return Err(PyValueError::new_err("streams: one per route, or none"));
        }
        let config = Config {
            addr,
            paths,
            streams,
            timeout: Duration::from_secs_f64(timeout.min(1e6)),
            body_limit,
            threads,
            header_timeout: Duration::from_secs_f64(header_timeout.min(1e6)),
            max_connections: max_connections.max(1),
            body_timeout: Duration::from_secs_f64(body_timeout.min(1e6)),
        };
        let target = target(&steps, results, control, arena, client);
        let server = Server::start(config, target)
            .map_err(|e| PyOSError::new_err(format!("cannot serve on {addr}: {e}")))?;
        let port = server.local_addr().port();
        Ok(HttpServer {
            server: Mutex::new(Some(server)),
            port,
        })
    }

    /// The port it listens on (the one asked for, or the one the system
    /// picked for 0).
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Why the flow cannot serve (None: it can).
    fn set_failure(&self, reason: Option<String>) {
        self.with_server(|server| server.set_failure(reason));
    }

    /// The flow healed onto fresh segments: requests go there from now on.
    fn retarget(
        &self,
        steps: Vec<PyRef<'_, Queue>>,
        results: &Queue,
        control: &PyControl,
        arena: &SharedArena,
        client: u32,
    ) -> PyResult<()> {
        let target = target(&steps, results, control, arena, client);
        self.with_server(|server| server.retarget(target))
            .transpose()
            .map_err(|e| PyOSError::new_err(format!("cannot follow the flow: {e}")))?;
        Ok(())
    }

    /// What `/metrics` names: the flow, its metrics slots (the steps, then
    /// `main_process`) and its processes, `(label, pid)`.
    fn set_names(&self, flow: String, steps: Vec<String>, processes: Vec<(String, u32)>) {
        self.with_server(|server| {
            server.set_names(Names {
                flow,
                steps,
                processes,
            });
        });
    }

    /// Why the server stopped reading its result queue (it found it
    /// corrupt), or None.
    fn corruption(&self) -> Option<String> {
        self.with_server(Server::corruption).flatten()
    }

    /// Stops accepting, lets requests in flight finish for at most `grace`
    /// seconds (GIL released), then closes every connection.
    fn stop(&self, py: Python<'_>, grace: f64) {
        let taken = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut server) = taken {
            let grace = Duration::from_secs_f64(grace.clamp(0.0, 3600.0));
            py.detach(move || server.stop(grace));
        }
    }
}

impl HttpServer {
    /// `f` of the server while it runs (None once stopped).
    fn with_server<T>(&self, f: impl FnOnce(&Server) -> T) -> Option<T> {
        self.server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(f)
    }
}

fn target(
    steps: &[PyRef<'_, Queue>],
    results: &Queue,
    control: &PyControl,
    arena: &SharedArena,
    client: u32,
) -> Target {
    Target {
        steps: steps.iter().map(|q| Arc::clone(&q.inner)).collect(),
        results: Arc::clone(&results.inner),
        control: Arc::clone(&control.inner),
        arena: Arc::clone(&arena.inner),
        client,
    }
}
