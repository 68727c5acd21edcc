//! The server: an accept loop and connections on a tokio runtime of its own,
//! and a reader thread that hands answers from the result queue to the
//! requests waiting for them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aqueduct_core::http_wire::{encode_request_head, BodyRef};
use aqueduct_core::wire::{
    http_route_bits, CLIENT_SHIFT, FLAG_HTTP, INLINE_LIMIT, KIND_HTTP_REQUEST,
};
use aqueduct_core::{monotonic_ns, Control, Error, Message, MessageHeader, TaskQueue};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{oneshot, watch};

use crate::answer::{self, Body};
use crate::json_errors::JsonErrors;
use crate::metrics::{self, Names, Outcomes};
use crate::BodyArena;

/// Header a request may set to its own timeout, in seconds.
const TIMEOUT_HEADER: &str = "x-aqueduct-timeout";
/// Header a request may set to its priority (clamped to the flow's levels).
const PRIORITY_HEADER: &str = "x-aqueduct-priority";
/// How often the reader thread looks at `stopping` while no answer comes.
const READER_TICK: Duration = Duration::from_millis(100);

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// The paths requests for the flow are sent to, one per route: a
    /// request tells the workers which by its index (`/health` and
    /// `/metrics` are the server's).
    pub paths: Vec<String>,
    /// A request's default timeout (the header can set its own).
    pub timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub body_limit: usize,
    /// Threads of the runtime that runs connections.
    pub threads: usize,
    /// The flow's client slot this server answers through.
    pub client: u32,
}

/// What a request waits for: the answer's message (dropped: there is none),
/// and the arena block its body is in, if it is in one.
type Waiter = (oneshot::Sender<Message>, Option<(Arc<Target>, u64)>);

/// The segments of the flow the server feeds: they change when the flow
/// heals onto fresh ones (see [`Server::retarget`]).
pub struct Target {
    /// Every step's queue (the first is where requests go).
    steps: Vec<TaskQueue>,
    results: TaskQueue,
    control: Control,
    arena: Option<Box<dyn BodyArena>>,
}

impl Target {
    /// The flow's step queues, this server's result queue, the control
    /// block (their fds are duplicated) and the arena for big bodies.
    pub fn open(
        steps: &[BorrowedFd<'_>],
        results: BorrowedFd<'_>,
        control: BorrowedFd<'_>,
        arena: Option<Box<dyn BodyArena>>,
    ) -> std::io::Result<Target> {
        let io = |e: Error| std::io::Error::other(e.to_string());
        if steps.is_empty() {
            return Err(std::io::Error::other("a flow without steps"));
        }
        Ok(Target {
            steps: steps
                .iter()
                .map(|fd| TaskQueue::open_borrowed(*fd).map_err(io))
                .collect::<std::io::Result<_>>()?,
            results: TaskQueue::open_borrowed(results).map_err(io)?,
            control: Control::open(control.try_clone_to_owned()?).map_err(io)?,
            arena,
        })
    }
}

impl Target {
    fn first(&self) -> &TaskQueue {
        &self.steps[0] // never empty (see `open`)
    }
}

struct Shared {
    config: Config,
    target: Mutex<Arc<Target>>,
    names: Mutex<Names>,
    outcomes: Outcomes,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_key: AtomicU64,
    /// Why the flow cannot serve now (503s, `/health`), if it cannot.
    failure: Mutex<Option<String>>,
    /// Why the reader stopped reading the result queue (it is corrupt).
    corrupt: Mutex<Option<String>>,
    stopping: AtomicBool,
    connections: AtomicUsize,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn target(&self) -> Arc<Target> {
        Arc::clone(&self.target.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Ends what request `key` waits for; its body's block is freed.
    fn settle(&self, key: u64) -> Option<oneshot::Sender<Message>> {
        let (waiter, block) = self.pending().remove(&key)?;
        if let Some((target, block)) = block {
            if let Some(arena) = &target.arena {
                arena.free(block);
            }
        }
        Some(waiter)
    }

    /// Ends every request waiting (with no answer: they get 503).
    fn settle_all(&self) {
        let keys: Vec<u64> = self.pending().keys().copied().collect();
        for key in keys {
            self.settle(key);
        }
    }

    /// Why requests get 503 now, if they do.
    fn failure(&self) -> Option<String> {
        let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.clone().or_else(|| self.corruption())
    }

    fn corruption(&self) -> Option<String> {
        self.corrupt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A running server; `stop` it (dropping it stops it too, without grace).
pub struct Server {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: watch::Sender<bool>,
    reader: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl Server {
    /// Listens on `config.addr` and serves: requests go into the queue of
    /// `first`, answers come from `results`. The fds are duplicated.
    pub fn start(config: Config, target: Target) -> std::io::Result<Server> {
        let listener = std::net::TcpListener::bind(config.addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: Mutex::new(Arc::new(target)),
            names: Mutex::new(Names::default()),
            outcomes: Outcomes::default(),
            pending: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            failure: Mutex::new(None),
            corrupt: Mutex::new(None),
            stopping: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            config,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(shared.config.threads.max(1))
            .thread_name("aqueduct-http")
            .enable_all()
            .build()?;
        let (shutdown, watching) = watch::channel(false);
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(accept(listener, Arc::clone(&shared), watching));
        let reader = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("aqueduct-http-answers".into())
                .spawn(move || read_answers(&shared))?
        };
        Ok(Server {
            shared,
            runtime: Some(runtime),
            shutdown,
            reader: Some(reader),
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Why the flow cannot serve (`None`: it can): `/health` says so and
    /// requests get 503 at once.
    pub fn set_failure(&self, reason: Option<String>) {
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = reason;
    }

    /// What `/metrics` names: the flow, its metrics slots, its processes.
    pub fn set_names(&self, names: Names) {
        *self
            .shared
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = names;
    }

    /// The flow moved to fresh segments (it healed): requests go there from
    /// now on; those waiting on the old ones end (503).
    pub fn retarget(&self, target: Target) {
        *self
            .shared
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(target);
        *self
            .shared
            .corrupt
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.shared.settle_all();
    }

    /// Why the server stopped reading its result queue (it found it
    /// corrupt), if it did: the flow should heal.
    pub fn corruption(&self) -> Option<String> {
        self.shared.corruption()
    }

    /// Stops accepting, lets requests in flight finish for at most `grace`,
    /// then ends every connection and the reader thread.
    pub fn stop(&mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let until = Instant::now() + grace;
        while self.shared.connections.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_millis(100));
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.shared.settle_all();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue, // out of fds and the like: the next may work
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::AcqRel);
        let shared = Arc::clone(&shared);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let made = Arc::new(AtomicUsize::new(0));
            let service = {
                let (shared, made) = (Arc::clone(&shared), Arc::clone(&made));
                service_fn(move |request| {
                    let (shared, made) = (Arc::clone(&shared), Arc::clone(&made));
                    async move {
                        let response = handle(&shared, request).await;
                        made.fetch_add(1, Ordering::Release);
                        Ok::<_, Infallible>(response)
                    }
                })
            };
            let io = TokioIo::new(JsonErrors::new(stream, made));
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.changed() => {
                    // finish the request in flight, then close
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/metrics" {
        return metrics_page(shared);
    }
    if path == "/health" {
        return match shared.failure() {
            None => ok_json(br#"{"status": "ok"}"#),
            Some(reason) => answer::error(StatusCode::SERVICE_UNAVAILABLE, &reason, "FlowError"),
        };
    }
    let Some(route) = shared.config.paths.iter().position(|p| *p == path) else {
        let message = format!("no route for {path}");
        return answer::error(StatusCode::NOT_FOUND, &message, "NotFound");
    };
    let route = u16::try_from(route).unwrap_or(u16::MAX);
    if let Some(reason) = shared.failure() {
        return answer::error(StatusCode::SERVICE_UNAVAILABLE, &reason, "FlowError");
    }
    let timeout = header_f64(&request, TIMEOUT_HEADER)
        .filter(|t| t.is_finite() && *t > 0.0)
        .map_or(shared.config.timeout, |t| {
            Duration::from_secs_f64(t.min(1e6))
        });
    let priority = header_f64(&request, PRIORITY_HEADER).map_or(0, |p| p.clamp(0.0, 63.0) as u32);
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, shared.config.body_limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            let message = format!("the body is over {} bytes", shared.config.body_limit);
            return answer::error(StatusCode::PAYLOAD_TOO_LARGE, &message, "PayloadTooLarge");
        }
        Err(e) => return answer::error(StatusCode::BAD_REQUEST, &e.to_string(), "BadRequest"),
    };
    let headers: Vec<(&[u8], &[u8])> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .collect();
    let key = (u64::from(shared.config.client) << CLIENT_SHIFT)
        | shared.next_key.fetch_add(1, Ordering::Relaxed);
    let target = shared.target();
    // a big body goes into the arena, so the ring carries only its place
    let in_arena = match &target.arena {
        Some(arena) if body.len() > INLINE_LIMIT => match arena.place(&body, key) {
            Some(block) => Some(BodyRef {
                arena: arena.index(),
                block,
                offset: block,
                len: body.len() as u64,
            }),
            None => {
                let message = "no room in shared memory for the body now";
                return answer::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    message,
                    "SharedMemoryFullError",
                );
            }
        },
        _ => None,
    };
    let mut head = Vec::with_capacity(256);
    let query = parts.uri.query().unwrap_or("");
    let method = parts.method.as_str().as_bytes();
    let (path, query) = (path.as_bytes(), query.as_bytes());
    if encode_request_head(&mut head, method, path, query, &headers, in_arena).is_none() {
        if let (Some(arena), Some(r)) = (&target.arena, in_arena) {
            arena.free(r.block);
        }
        return answer::error(StatusCode::BAD_REQUEST, "headers too large", "BadRequest");
    }
    let inline: &[u8] = if in_arena.is_some() { &[] } else { &body };
    let header = MessageHeader {
        key,
        deadline_ns: monotonic_ns().saturating_add(timeout.as_nanos() as u64),
        kind: KIND_HTTP_REQUEST | FLAG_HTTP | http_route_bits(route),
        priority,
        enqueued_ns: 0,
    };
    let (waiter, answer) = oneshot::channel();
    let block = in_arena.map(|r| (Arc::clone(&target), r.block));
    shared.pending().insert(key, (waiter, block));
    target.control.uncancel(key);
    if let Err(e) = target.first().push_parts(&header, &[&head, inline]) {
        shared.settle(key);
        return refused(e);
    }
    target.first().notify(None);
    let response = match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(message)) => answer::from_message(&message),
        Ok(Err(_)) => answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the flow stopped or restarted before it answered",
            "FlowError",
        ),
        Err(_) => {
            shared.settle(key);
            target.control.cancel(key); // workers skip it
            let message = format!("not done in {} s", timeout.as_secs_f64());
            answer::error(StatusCode::GATEWAY_TIMEOUT, &message, "TaskTimeoutError")
        }
    };
    let outcome = match response.status() {
        s if s.is_success() => &shared.outcomes.done,
        StatusCode::GATEWAY_TIMEOUT => &shared.outcomes.timeout,
        _ => &shared.outcomes.failed,
    };
    outcome.fetch_add(1, Ordering::Relaxed);
    response
}

fn metrics_page(shared: &Shared) -> Response<Body> {
    let target = shared.target();
    let names = shared
        .names
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    // the metrics slots are the steps, then the result queue's
    let queues: Vec<&TaskQueue> = target.steps.iter().chain([&target.results]).collect();
    let page = metrics::render(&names, &target.control, &queues, &shared.outcomes);
    let mut response = Response::new(Full::new(Bytes::from(page)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The response to a request the first queue did not take.
fn refused(error: Error) -> Response<Body> {
    let (status, kind) = match error {
        Error::Full => (StatusCode::SERVICE_UNAVAILABLE, "QueueFullError"),
        Error::Closed => (StatusCode::SERVICE_UNAVAILABLE, "NotRunningError"),
        Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "TaskTooLargeError"),
        Error::Corrupt(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "SharedMemoryCorruptError",
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "FlowError"),
    };
    answer::error(status, &error.to_string(), kind)
}

fn ok_json(body: &'static [u8]) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn header_f64(request: &Request<Incoming>, name: &str) -> Option<f64> {
    request
        .headers()
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The reader thread: every answer in the result queue goes to the request
/// waiting for it (one whose caller gave up is dropped).
fn read_answers(shared: &Shared) {
    let stopping = || shared.stopping.load(Ordering::Acquire);
    while !stopping() {
        let target = shared.target(); // it changes when the flow heals
        let results = &target.results;
        let until = monotonic_ns() + READER_TICK.as_nanos() as u64;
        let _ = results.wait_ready(Some(until), &mut || stopping());
        let mut drained = false;
        loop {
            match results.try_pop() {
                Ok(Some(message)) => {
                    drained = true;
                    if let Some(waiter) = shared.settle(message.header.key) {
                        let _ = waiter.send(message);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // nothing more is read from it: every waiting request
                    // ends (503), and so do later ones until `retarget`
                    *shared
                        .corrupt
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                    shared.settle_all();
                    while !stopping() && Arc::ptr_eq(&shared.target(), &target) {
                        std::thread::sleep(READER_TICK);
                    }
                    break;
                }
            }
        }
        if drained {
            results.released(&[]);
        }
    }
}
