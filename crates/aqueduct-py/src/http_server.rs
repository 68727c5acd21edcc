//! `HttpServer`: the Rust HTTP front of a flow (`aqueduct_http`), for
//! `aqueduct.http`. Everything per request happens without the GIL.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aqueduct_core::kserve::Repository;
use aqueduct_core::openai::Endpoint;
use aqueduct_http::{ApiKeys, Config, Destination, Names, Protocol, Server, Target, Traces};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::control::PyControl;
use crate::queue::Queue;
use crate::shm::SharedArena;

/// A traced request, as `take_traces` hands it to Python.
type FinishedTuple = (
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    u16,
    u64,
    u64,
    Vec<(u32, u64, u64)>,
);

#[pyclass(module = "aqueduct._core", frozen)]
pub struct HttpServer {
    server: Mutex<Option<Server>>,
    port: u16,
    /// Where answered requests wait for the exporter (kept past `stop`).
    traces: Option<Arc<Traces>>,
}

#[pymethods]
impl HttpServer {
    #[new]
    #[pyo3(signature = (*, host, port, paths, steps, results, control, arena, arenas, client, timeout, body_limit, threads, streams=Vec::new(), header_timeout=10.0, max_connections=10_000, body_timeout=30.0, idle_timeout=30.0, write_timeout=30.0, access_log=None, api_keys=Vec::new(), open_metrics=false, openapi=None, reuse_port=false, trace=false, protocols=Vec::new(), model=None, ping=15.0, kserve=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: &str,
        port: u16,
        paths: Vec<String>,
        steps: Vec<PyRef<'_, Queue>>,
        results: &Queue,
        control: &PyControl,
        arena: &SharedArena,
        arenas: Vec<PyRef<'_, SharedArena>>,
        client: u32,
        timeout: f64,
        body_limit: usize,
        threads: usize,
        streams: Vec<Option<String>>,
        header_timeout: f64,
        max_connections: usize,
        body_timeout: f64,
        idle_timeout: f64,
        write_timeout: f64,
        access_log: Option<String>,
        api_keys: Vec<String>,
        open_metrics: bool,
        openapi: Option<Vec<u8>>,
        reuse_port: bool,
        trace: bool,
        protocols: Vec<String>,
        model: Option<String>,
        ping: f64,
        kserve: Option<Vec<u8>>,
    ) -> PyResult<Self> {
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
        if !protocols.is_empty() && protocols.len() != paths.len() {
            return Err(PyValueError::new_err("protocols: one per route, or none"));
        }
        let protocols = protocols
            .iter()
            .map(|name| protocol(name))
            .collect::<PyResult<Vec<_>>>()?;
        let config = Config {
            addr,
            paths,
            streams,
            timeout: seconds("timeout", timeout)?,
            body_limit,
            threads,
            header_timeout: seconds("header_timeout", header_timeout)?,
            idle_timeout: seconds("idle_timeout", idle_timeout)?,
            write_timeout: seconds("write_timeout", write_timeout)?,
            max_connections: max_connections.max(1),
            body_timeout: seconds("body_timeout", body_timeout)?,
            access_log: access_log.as_deref().map(Destination::parse),
            api_keys: ApiKeys::new(api_keys),
            open_metrics,
            openapi: openapi.map(Into::into),
            reuse_port,
            trace,
            protocols,
            model,
            ping: seconds("ping", ping)?,
            kserve: match kserve {
                None => Repository::default(),
                Some(text) => Repository::from_json(&text)
                    .map_err(|e| PyValueError::new_err(format!("kserve models: {e}")))?,
            },
        };
        let target = target(&steps, results, control, arena, &arenas, client);
        let server = Server::start(config, target)
            .map_err(|e| PyOSError::new_err(format!("cannot serve on {addr}: {e}")))?;
        let port = server.local_addr().port();
        Ok(HttpServer {
            traces: server.traces(),
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
        arenas: Vec<PyRef<'_, SharedArena>>,
        client: u32,
    ) -> PyResult<()> {
        let target = target(&steps, results, control, arena, &arenas, client);
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

    /// Per step, why it lacks workers now (None: it has them all):
    /// `/ready` answers 503 while one does.
    fn set_unready(&self, reasons: Vec<Option<String>>) {
        self.with_server(|server| server.set_unready(reasons));
    }

    /// `/ready` answers 503 from now on and every answer closes its
    /// connection; requests are still accepted and served.
    fn drain(&self) {
        self.with_server(Server::drain);
    }

    /// Stops accepting (what the kernel accepted already is served) and
    /// closes each connection once its request in flight is answered.
    fn close(&self) {
        self.with_server(Server::close);
    }

    /// `"serving"`, `"draining"`, `"closing"` or `"stopped"`.
    #[getter]
    fn phase(&self) -> &'static str {
        self.with_server(|server| server.phase().name())
            .unwrap_or("stopped")
    }

    /// The requests answered since the last call, waiting at most
    /// `timeout` seconds for one (GIL released), and how many were dropped
    /// because they were not taken in time: per request `(request_id,
    /// traceparent, tracestate, method, path, status, received_ns,
    /// answered_ns, [(step, started_ns, ended_ns)])`, CLOCK_MONOTONIC
    /// nanoseconds. Nothing when the server does not trace.
    fn take_traces(&self, py: Python<'_>, timeout: f64) -> (Vec<FinishedTuple>, u64) {
        let Some(traces) = self.traces.clone() else {
            return (Vec::new(), 0);
        };
        let timeout = Duration::from_secs_f64(timeout.clamp(0.0, 60.0));
        let (finished, dropped) = py.detach(move || traces.take(timeout));
        let tuples = finished
            .into_iter()
            .map(|f| {
                let steps = f
                    .steps
                    .iter()
                    .map(|t| (t.step, t.started_ns, t.ended_ns))
                    .collect();
                (
                    f.request_id,
                    f.traceparent,
                    f.tracestate,
                    f.method,
                    f.path,
                    f.status,
                    f.received_ns,
                    f.answered_ns,
                    steps,
                )
            })
            .collect();
        (tuples, dropped)
    }

    /// Connections open now.
    #[getter]
    fn connections(&self) -> usize {
        self.with_server(Server::connections).unwrap_or(0)
    }

    /// Closes, lets requests in flight finish for at most `grace` seconds
    /// (GIL released), then ends the rest: an open stream with an error
    /// event, a request still waiting with a 503.
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
    arenas: &[PyRef<'_, SharedArena>],
    client: u32,
) -> Target {
    Target {
        steps: steps.iter().map(|q| Arc::clone(&q.inner)).collect(),
        results: Arc::clone(&results.inner),
        control: Arc::clone(&control.inner),
        arena: Arc::clone(&arena.inner),
        arenas: arenas.iter().map(|a| Arc::clone(&a.inner)).collect(),
        client,
    }
}

/// A route's protocol by its name in `aqueduct.http.Route`.
fn protocol(name: &str) -> PyResult<Protocol> {
    match name {
        // an infer route of the Open Inference Protocol is found by its
        // model (`Config::kserve`), not by its path
        "" | "kserve" => Ok(Protocol::Plain),
        "openai.chat" => Ok(Protocol::OpenAi(Endpoint::Chat)),
        "openai.completions" => Ok(Protocol::OpenAi(Endpoint::Completions)),
        "openai.embeddings" => Ok(Protocol::Embeddings),
        other => Err(PyValueError::new_err(format!("no protocol {other:?}"))),
    }
}

/// A limit given in seconds: finite and above zero (at most 10^6 s).
fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value.min(1e6)))
    } else {
        Err(PyValueError::new_err(format!(
            "{name} must be > 0, got {value}"
        )))
    }
}
