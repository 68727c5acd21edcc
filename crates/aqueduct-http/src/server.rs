//! The server: an accept loop and connections on a tokio runtime of its own,
//! and a reader thread that hands answers from the result queue to the
//! requests waiting for them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aqueduct_core::http_wire::{
    encode_request_head, BodyRef, HEALTH_PATH, LIVE_PATH, METRICS_PATH, OPENAPI_PATH, READY_PATH,
};
use aqueduct_core::kserve::{self, Repository};
use aqueduct_core::wire::{
    http_route_bits, is_part, FLAG_HTTP, FLAG_STREAM, INLINE_LIMIT, KIND_HTTP_REQUEST,
    MAX_PRIORITIES,
};
use aqueduct_core::{
    monotonic_ns, ClientConfig, ClientCore, ClientQueues, Control, Error, MessageHeader, Outbound,
    TaskQueue, TrackedArena,
};
use bytes::Bytes;
use http_body_util::Either;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot, watch};

use crate::access_log::{AccessLog, Destination};
use crate::answer::{self, Body};
use crate::auth::ApiKeys;
use crate::connection;
use crate::delivered::Delivered;
use crate::kserve_route;
use crate::metrics::{self, Names, Outcomes};
use crate::openai_route::{self, Protocol};
use crate::readiness::{Phase, Readiness};
use crate::request_id;
use crate::stream::{End, PartBody};
use crate::trace::Traces;

/// Header a request may set to its own timeout, in seconds.
const TIMEOUT_HEADER: &str = "x-aqueduct-timeout";
/// Header a request may set to its priority (clamped to the flow's levels).
const PRIORITY_HEADER: &str = "x-aqueduct-priority";
/// How long `stop` lets connections write the ends it gave their requests.
const LAST_WRITES: Duration = Duration::from_millis(500);
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
    /// How long a client may take to send a request's head, from its
    /// first byte (or from connecting): a connection that has not sent it
    /// by then is closed.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may stay idle after an answer
    /// before it is closed.
    pub idle_timeout: Duration,
    /// How long writing an answer may wait for the client to read before
    /// the connection is closed.
    pub write_timeout: Duration,
    /// Where a line per answered request goes (None: nowhere).
    pub access_log: Option<Destination>,
    /// The keys a request must carry one of (none: no key is needed);
    /// `/health` never needs one.
    pub api_keys: ApiKeys,
    /// `/metrics` needs no key even when the others do.
    pub open_metrics: bool,
    /// What `GET /openapi.json` answers (None: 404).
    pub openapi: Option<Bytes>,
    /// Most connections open at once (beyond: they wait to be accepted).
    pub max_connections: usize,
    /// How long a request's body may take to come (408 beyond).
    pub body_timeout: Duration,
    /// Per route (as `paths`): the content type of its streamed responses,
    /// or None for a route that answers once (see `stream`).
    pub streams: Vec<Option<String>>,
    /// Listen with `SO_REUSEPORT`: another server (a new version) may
    /// listen on the same port while this one drains.
    pub reuse_port: bool,
    /// Keep what each answered request's spans need (see `trace`).
    pub trace: bool,
    /// Per route (as `paths`): the API it speaks (none: all plain).
    pub protocols: Vec<Protocol>,
    /// The model the OpenAI-compatible routes serve (`/v1/models` lists it).
    pub model: Option<String>,
    /// How often an idle OpenAI-compatible stream gets a `: ping` comment.
    pub ping: Duration,
    /// The models served over the Open Inference Protocol (`/v2/...`).
    pub kserve: Repository,
}

/// What a request waits for (dropped: there is no answer): the answer's
/// message, or, for a streaming route, every part and then the answer.
enum Waiter {
    Once(oneshot::Sender<Delivered>),
    Stream(mpsc::UnboundedSender<Delivered>),
}

impl Waiter {
    fn deliver(self, message: Delivered) {
        let _ = match self {
            Waiter::Once(tx) => tx.send(message).map_err(drop),
            Waiter::Stream(tx) => tx.send(message).map_err(drop),
        };
    }
}

/// How a request waits (see [`Waiter`]).
pub(crate) enum Awaited {
    Once(oneshot::Receiver<Delivered>),
    Stream(mpsc::UnboundedReceiver<Delivered>),
}

/// A response's body: whole, or streamed.
pub type Reply = Either<Body, PartBody>;

/// Cancels a request's task when the request is dropped before it ended
/// (its client closed the connection): workers skip it or stop producing
/// for it.
struct CancelOnDrop<'a> {
    shared: &'a Shared,
    key: Option<u64>,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if self.shared.client().cancel(key).is_some() {
                self.shared.outcomes.left.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The segments of the flow the server feeds, as this server's client
/// slot sees them: they change when the flow heals onto fresh ones (see
/// [`Server::retarget`]).
pub struct Target {
    /// Every step's queue (the first is where requests go).
    pub steps: Vec<Arc<TaskQueue>>,
    /// The server's result queue.
    pub results: Arc<TaskQueue>,
    pub control: Arc<Control>,
    /// The server slot's arena, for request bodies too big for a queue.
    pub arena: Arc<TrackedArena>,
    /// Every arena of the flow, by index: where workers place big answers.
    pub arenas: Vec<Arc<TrackedArena>>,
    /// The server's client slot.
    pub client: u32,
}

/// The server's client of the flow: requests in, answers out (one core
/// with the binding's client: keys, cancels, the body blocks a request
/// holds until a worker is done with them).
type Client = ClientCore<Waiter>;

fn client_of(target: Target) -> std::io::Result<Client> {
    if target.steps.is_empty() {
        return Err(std::io::Error::other("a flow without steps"));
    }
    let config = ClientConfig {
        slot: target.client,
        reject_when_full: true, // a fast 503: HTTP clients retry
        eager: true,
        spin: Duration::ZERO,
        metrics_step: None,
    };
    let queues = ClientQueues {
        steps: target.steps,
        results: target.results,
        doorbell: None,
        control: target.control,
        arena: Some(target.arena),
    };
    ClientCore::new(config, queues).map_err(|e| std::io::Error::other(e.to_string()))
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    client: Mutex<Client>,
    names: Mutex<Names>,
    outcomes: Outcomes,
    /// Why the flow cannot serve now (503s, `/health`), if it cannot.
    failure: Mutex<Option<String>>,
    /// Why the reader stopped reading the result queue (it is corrupt).
    corrupt: Mutex<Option<String>>,
    stopping: AtomicBool,
    /// The flow's arenas (they change when it heals), where big answers are.
    arenas: Mutex<Arc<[Arc<TrackedArena>]>>,
    pub(crate) readiness: Readiness,
    pub(crate) connections: AtomicUsize,
    pub(crate) access_log: Option<AccessLog>,
    /// What traced requests leave for the exporter (None: not traced).
    pub(crate) traces: Option<Arc<Traces>>,
}

impl Shared {
    fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends every request waiting (with no answer: they get 503).
    fn settle_all(&self) {
        drop(self.client().fail_all());
    }

    /// Why requests get 503 now, if they do.
    pub(crate) fn failure(&self) -> Option<String> {
        let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.clone().or_else(|| self.corruption())
    }

    /// This server found the flow's shared memory corrupt: it answers 503
    /// from now on and the flow heals (see `Server::corruption`).
    fn found_corrupt(&self, why: &str) {
        let mut corrupt = self.corrupt.lock().unwrap_or_else(PoisonError::into_inner);
        corrupt.get_or_insert_with(|| why.to_owned());
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

/// Connections the kernel completes before the server accepts them (it
/// caps this at `net.core.somaxconn`): a burst of new clients, or those
/// beyond `max_connections`, wait there instead of retrying their SYN.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Server {
    /// Listens on `config.addr` and serves: requests go into the queue of
    /// `first`, answers come from `results`. The fds are duplicated.
    pub fn start(config: Config, target: Target) -> std::io::Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("aqueduct-http")
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            listen(config.addr, config.reuse_port)?
        };
        let local_addr = listener.local_addr()?;
        let access_log = config
            .access_log
            .as_ref()
            .map(AccessLog::open)
            .transpose()?;
        let arenas = Mutex::new(Arc::from(target.arenas.as_slice()));
        let shared = Arc::new(Shared {
            arenas,
            client: Mutex::new(client_of(target)?),
            names: Mutex::new(Names::default()),
            outcomes: Outcomes::default(),
            failure: Mutex::new(None),
            corrupt: Mutex::new(None),
            stopping: AtomicBool::new(false),
            readiness: Readiness::default(),
            connections: AtomicUsize::new(0),
            access_log,
            traces: config.trace.then(Arc::default),
            config,
        });
        let (shutdown, watching) = watch::channel(false);
        runtime.spawn(connection::accept(listener, Arc::clone(&shared), watching));
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
    pub fn retarget(&self, target: Target) -> std::io::Result<()> {
        let arenas = Arc::from(target.arenas.as_slice());
        let fresh = client_of(target)?;
        *self
            .shared
            .arenas
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = arenas;
        let mut old = std::mem::replace(&mut *self.shared.client(), fresh);
        *self
            .shared
            .corrupt
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        drop(old.fail_all());
        Ok(())
    }

    /// Why the server stopped reading its result queue (it found it
    /// corrupt), if it did: the flow should heal.
    pub fn corruption(&self) -> Option<String> {
        self.shared.corruption()
    }

    /// Where the server is in its life (see `readiness`).
    pub fn phase(&self) -> Phase {
        self.shared.readiness.phase()
    }

    /// Per step, why it lacks workers now (`None`: it has them all):
    /// `/ready` answers 503 while one does (a model of the Open Inference
    /// Protocol is not ready while one of its steps does).
    pub fn set_unready(&self, reasons: Vec<Option<String>>) {
        self.shared.readiness.set_unready(reasons);
    }

    /// Starts draining: `/ready` answers 503 from now on, and every answer
    /// closes its connection; requests are still accepted and served.
    pub fn drain(&self) {
        self.shared.readiness.advance(Phase::Draining);
    }

    /// Stops accepting (what waits in the listen backlog is accepted and
    /// served first) and closes each connection once its request in flight
    /// is answered; `stop` ends the rest.
    pub fn close(&self) {
        self.shared.readiness.advance(Phase::Closing);
        let _ = self.shutdown.send(true);
    }

    /// Where answered requests wait for the exporter (None: the server
    /// does not trace).
    pub fn traces(&self) -> Option<Arc<Traces>> {
        self.shared.traces.clone()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// Closes (see `close`), lets requests in flight finish for at most
    /// `grace`, then ends the rest — an open stream with an error event, a
    /// request still waiting with a 503 — and the reader thread.
    pub fn stop(&mut self, grace: Duration) {
        self.close();
        self.wait_connections(Instant::now() + grace);
        self.shared.settle_all();
        self.wait_connections(Instant::now() + LAST_WRITES);
        self.shared.readiness.advance(Phase::Stopped);
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_millis(100));
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.shared.settle_all();
    }

    fn wait_connections(&self, until: Instant) {
        while self.connections() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

pub(crate) async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Reply> {
    let path = request.uri().path().to_owned();
    if path == LIVE_PATH {
        return ok_json(br#"{"status": "live"}"#).map(Either::Left);
    }
    if path == READY_PATH {
        let ready = shared
            .readiness
            .ready()
            .and_then(|()| match shared.failure() {
                Some(reason) => Err(reason),
                None => Ok(()),
            });
        return match ready {
            Ok(()) => ok_json(br#"{"status": "ready"}"#),
            Err(reason) => answer::error(StatusCode::SERVICE_UNAVAILABLE, &reason, "NotReady"),
        }
        .map(Either::Left);
    }
    if path == HEALTH_PATH {
        return match shared.failure() {
            None => ok_json(br#"{"status": "ok"}"#),
            Some(reason) => answer::error(StatusCode::SERVICE_UNAVAILABLE, &reason, "FlowError"),
        }
        .map(Either::Left);
    }
    let config = &shared.config;
    if !config.kserve.models.is_empty() {
        if let Some(page) = kserve::page_of(&path) {
            return kserve_route::serve(shared, request, page).await;
        }
    }
    let open = path == METRICS_PATH && config.open_metrics;
    let protocol = openai_route::protocol_of(config, &path);
    if protocol != Protocol::Plain {
        request_id::speak_openai(); // its errors take the API's shape
    }
    if !open && !config.api_keys.admits(request.headers()) {
        return unauthorized().map(Either::Left);
    }
    if let Some(page) = openai_route::models_page(config, &path) {
        return page.map(Either::Left);
    }
    if path == METRICS_PATH {
        return metrics_page(shared).map(Either::Left);
    }
    if let (true, Some(doc)) = (path == OPENAPI_PATH, &config.openapi) {
        let mut response = Response::new(Full::new(doc.clone()));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return response.map(Either::Left);
    }
    let Some(route) = shared.config.paths.iter().position(|p| *p == path) else {
        let message = format!("no route for {path}");
        return answer::error(StatusCode::NOT_FOUND, &message, "NotFound").map(Either::Left);
    };
    let stream = shared.config.streams.get(route).cloned().flatten();
    let route = u16::try_from(route).unwrap_or(u16::MAX);
    if let Some(reason) = shared.failure() {
        return answer::error(StatusCode::SERVICE_UNAVAILABLE, &reason, "FlowError")
            .map(Either::Left);
    }
    let sending = Sending::asked(shared, &request, route, stream.is_some());
    let timeout = sending.timeout;
    let (parts, body) = request.into_parts();
    let body = match read_body(shared, body).await {
        Ok(body) => body,
        Err(response) => return response.map(Either::Left),
    };
    match protocol {
        Protocol::OpenAi(endpoint) => {
            return openai_route::serve(shared, &parts, &body, sending, endpoint).await;
        }
        Protocol::Embeddings => {
            return openai_route::embeddings(shared, &parts, &body, sending).await
        }
        Protocol::Plain => {}
    }
    let started = tokio::time::Instant::now();
    let (key, first) = match submit_and_wait(shared, &parts, &&body[..], &sending).await {
        Ok(sent) => sent,
        Err(response) => return (*response).map(Either::Left),
    };
    let first = match first {
        First::Part(message, messages) => {
            let content_type = stream.unwrap_or_default();
            let deadline = Box::pin(tokio::time::sleep_until(started + timeout));
            let body = PartBody::new(message, messages, deadline, on_end(shared, key));
            return streamed(body, &content_type);
        }
        First::End(first) => first,
    };
    let response = answered(shared, key, first, timeout, answer::from_message);
    response.map(Either::Left)
}

/// What came first for a sent request.
pub(crate) enum First {
    /// A streamed part; the rest of the stream follows on the receiver.
    Part(Delivered, mpsc::UnboundedReceiver<Delivered>),
    /// Its answer, or nothing (the flow stopped), or its timeout passed.
    End(Result<Option<Delivered>, tokio::time::error::Elapsed>),
}

impl First {
    /// What came first for a request whose route does not stream (a part
    /// was not asked for: answered as lost).
    pub(crate) fn once(self) -> Result<Option<Delivered>, tokio::time::error::Elapsed> {
        match self {
            First::End(first) => first,
            First::Part(..) => Ok(None),
        }
    }
}

/// Sends a request as a task (see [`submit`]) and waits at most its
/// timeout for its first message: its key and what came, or the response
/// to a request the flow refused. A request dropped while it waits (its
/// client left) cancels its task; once this returns, a streamed body or
/// [`answered`] does.
pub(crate) async fn submit_and_wait(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    body: &(dyn Outgoing + Sync),
    sending: &Sending,
) -> Result<(u64, First), Box<Response<Body>>> {
    let (awaited, key) = submit(shared, parts, body, sending)?;
    let mut guard = CancelOnDrop {
        shared,
        key: Some(key),
    };
    let first = first_of(awaited, sending.timeout).await;
    guard.key = None;
    Ok((key, first))
}

/// Waits at most `timeout` for the first message of a sent request.
async fn first_of(awaited: Awaited, timeout: Duration) -> First {
    match awaited {
        Awaited::Once(answer) => {
            First::End(tokio::time::timeout(timeout, answer).await.map(Result::ok))
        }
        Awaited::Stream(mut messages) => {
            match tokio::time::timeout(timeout, messages.recv()).await {
                Ok(Some(message)) if is_part(message.message.header.kind) => {
                    First::Part(message, messages)
                }
                waited => First::End(waited),
            }
        }
    }
}

/// The response to a request whose first message came (`made` makes it),
/// or did not (the flow stopped; or its timeout passed: it is cancelled);
/// counted in the outcomes.
pub(crate) fn answered(
    shared: &Shared,
    key: u64,
    first: Result<Option<Delivered>, tokio::time::error::Elapsed>,
    timeout: Duration,
    made: impl FnOnce(Delivered) -> Response<Body>,
) -> Response<Body> {
    let response = match first {
        Ok(Some(message)) => made(message),
        Ok(None) => answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the flow stopped or restarted before it answered",
            "FlowError",
        ),
        Err(_) => {
            shared.client().cancel(key); // workers skip it
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

/// A request's body, read within the body timeout and limit (or the
/// error response).
pub(crate) async fn read_body(shared: &Shared, body: Incoming) -> Result<Bytes, Response<Body>> {
    let reading = Limited::new(body, shared.config.body_limit).collect();
    let Ok(read) = tokio::time::timeout(shared.config.body_timeout, reading).await else {
        let message = format!(
            "the body did not come within {} s",
            shared.config.body_timeout.as_secs_f64()
        );
        let mut response = answer::error(StatusCode::REQUEST_TIMEOUT, &message, "RequestTimeout");
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return Err(response);
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            let message = format!("the body is over {} bytes", shared.config.body_limit);
            Err(answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &message,
                "PayloadTooLarge",
            ))
        }
        Err(e) => Err(answer::error(
            StatusCode::BAD_REQUEST,
            &e.to_string(),
            "BadRequest",
        )),
    }
}

/// Sends a request as a task (see [`send`]): what it waits on and its key,
/// or the response to a request the flow refused.
fn submit(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    body: &(dyn Outgoing + Sync),
    sending: &Sending,
) -> Result<(Awaited, u64), Box<Response<Body>>> {
    let headers: Vec<(&[u8], &[u8])> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .collect();
    let mut client = shared.client();
    let key = client.next_key();
    let head = RequestHead {
        method: parts.method.as_str().as_bytes(),
        path: parts.uri.path().as_bytes(),
        query: parts.uri.query().unwrap_or("").as_bytes(),
        headers: &headers,
    };
    match send(&mut client, key, &head, body, sending) {
        Ok(awaited) => Ok((awaited, key)),
        Err(Refused::Answer(response)) => Err(response),
        Err(Refused::Flow(e)) => {
            if let Error::Corrupt(why) = &e {
                shared.found_corrupt(why); // the flow heals, the server follows
            }
            Err(Box::new(refused(e)))
        }
    }
}

/// What a stream does when it ends: counts how, and cancels the task of a
/// client that left or a stream past its deadline.
pub(crate) fn on_end(shared: &Arc<Shared>, key: u64) -> Box<dyn FnOnce(End) + Send + Sync> {
    let shared = Arc::clone(shared);
    Box::new(move |how: End| {
        let outcomes = &shared.outcomes;
        let counter = match how {
            End::Done => &outcomes.done,
            End::Failed => &outcomes.failed,
            End::Timeout => &outcomes.timeout,
            End::Left => &outcomes.left,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if matches!(how, End::Timeout | End::Left) {
            shared.client().cancel(key); // workers stop producing for it
        }
    })
}

/// The response of a streaming route whose first part came: 200, then the
/// parts as chunks (see `stream`); a client that leaves cancels the task.
pub(crate) fn streamed(body: PartBody, content_type: &str) -> Response<Reply> {
    let mut response = Response::new(Either::Right(body));
    let headers = response.headers_mut();
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        headers.insert(hyper::header::CONTENT_TYPE, value);
    }
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// How a request is sent: to which route, at which priority, until when,
/// and whether its parts are streamed back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sending {
    pub(crate) route: u16,
    pub(crate) priority: u32,
    pub(crate) timeout: Duration,
    pub(crate) stream: bool,
}

impl Sending {
    /// How a request to `route` is sent: at the priority and with the
    /// timeout its headers ask for, or the server's.
    pub(crate) fn asked(
        shared: &Shared,
        request: &Request<Incoming>,
        route: u16,
        stream: bool,
    ) -> Sending {
        let timeout = header_f64(request, TIMEOUT_HEADER)
            .filter(|t| t.is_finite() && *t > 0.0)
            .map_or(shared.config.timeout, |t| {
                Duration::from_secs_f64(t.min(1e6))
            });
        let priority = header_f64(request, PRIORITY_HEADER)
            .map_or(0, |p| p.clamp(0.0, f64::from(MAX_PRIORITIES - 1)) as u32);
        Sending {
            route,
            priority,
            timeout,
            stream,
        }
    }
}

/// A request's body as it goes to the workers: bytes as they came, or made
/// by `write` where they go (a big one straight into the server's arena,
/// so that its bytes are copied once).
pub(crate) trait Outgoing {
    fn len(&self) -> usize;
    /// Writes the body into `out`, of [`Outgoing::len`] bytes.
    fn write(&self, out: &mut [u8]) -> Result<(), String>;
    /// The body, if it is bytes already.
    fn bytes(&self) -> Option<&[u8]> {
        None
    }
}

impl Outgoing for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn write(&self, out: &mut [u8]) -> Result<(), String> {
        out.copy_from_slice(self);
        Ok(())
    }

    fn bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// A request's head, as it goes to the workers.
struct RequestHead<'a> {
    method: &'a [u8],
    path: &'a [u8],
    query: &'a [u8],
    headers: &'a [(&'a [u8], &'a [u8])],
}

/// Why a request was not sent.
enum Refused {
    /// The request cannot be a task: this is its answer.
    Answer(Box<Response<Body>>),
    /// The flow refused it (full, closed, its shared memory corrupt).
    Flow(Error),
}

/// Sends a request to the first step as task `key`: its head and body in
/// the message, or a big body in the server's arena (held until a worker
/// is done with it). The receiver gets the answer.
fn send(
    client: &mut Client,
    key: u64,
    head: &RequestHead<'_>,
    body: &(dyn Outgoing + Sync),
    sending: &Sending,
) -> Result<Awaited, Refused> {
    let arena = client.queues().arena.clone();
    let len = body.len();
    let in_arena = match &arena {
        Some(arena) if len > INLINE_LIMIT => {
            let placed = match body.bytes() {
                Some(bytes) => arena.place(bytes, key),
                None => arena.place_with(len, key, |out| body.write(out)),
            };
            match placed {
                Ok(block) => Some(BodyRef {
                    arena: client.slot(),
                    block: block.offset,
                    offset: block.offset,
                    len: len as u64,
                }),
                Err(e) => return Err(Refused::Flow(e)),
            }
        }
        _ => None,
    };
    let discard = |placed: Option<BodyRef>| {
        if let (Some(arena), Some(r)) = (&arena, placed) {
            arena.arena().free(r.block);
        }
    };
    let mut encoded = Vec::with_capacity(256);
    let (method, path, query) = (head.method, head.path, head.query);
    if encode_request_head(&mut encoded, method, path, query, head.headers, in_arena).is_none() {
        discard(in_arena);
        return Err(Refused::Answer(Box::new(answer::error(
            StatusCode::BAD_REQUEST,
            "headers too large",
            "BadRequest",
        ))));
    }
    let made;
    let inline: &[u8] = match (in_arena, body.bytes()) {
        (Some(_), _) => &[],
        (None, Some(bytes)) => bytes,
        (None, None) => {
            let mut out = vec![0; len];
            if let Err(why) = body.write(&mut out) {
                return Err(Refused::Answer(Box::new(answer::error(
                    StatusCode::BAD_REQUEST,
                    &why,
                    "BadRequest",
                ))));
            }
            made = out;
            &made
        }
    };
    let deadline_ns = monotonic_ns().saturating_add(sending.timeout.as_nanos() as u64);
    let streamed = if sending.stream { FLAG_STREAM } else { 0 };
    let header = MessageHeader {
        key,
        deadline_ns,
        kind: KIND_HTTP_REQUEST | FLAG_HTTP | streamed | http_route_bits(sending.route),
        priority: sending.priority,
        enqueued_ns: 0,
    };
    let (waiter, awaited) = if sending.stream {
        let (tx, rx) = mpsc::unbounded_channel();
        (Waiter::Stream(tx), Awaited::Stream(rx))
    } else {
        let (tx, rx) = oneshot::channel();
        (Waiter::Once(tx), Awaited::Once(rx))
    };
    let out = Outbound {
        step: 0,
        header,
        parts: &[&encoded, inline],
        blocks: in_arena.map(|r| r.block).into_iter().collect(),
    };
    if let Err(e) = client.submit(out, waiter, deadline_ns, false) {
        discard(in_arena);
        return Err(Refused::Flow(e));
    }
    Ok(awaited)
}

fn metrics_page(shared: &Shared) -> Response<Body> {
    let segments = shared.client().queues().clone();
    let names = shared
        .names
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    // the metrics slots are the steps, then the result queue's
    let queues: Vec<&TaskQueue> = segments
        .steps
        .iter()
        .chain([&segments.results])
        .map(AsRef::as_ref)
        .collect();
    let page = metrics::render(&names, &segments.control, &queues, &shared.outcomes);
    let mut response = Response::new(Full::new(Bytes::from(page)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The response to a request the first queue did not take.
/// 401: the request carries none of the server's API keys.
pub(crate) fn unauthorized() -> Response<Body> {
    let message = "a valid API key is needed (Authorization: Bearer <key>, or X-API-Key)";
    let mut response = answer::error(StatusCode::UNAUTHORIZED, message, "Unauthorized");
    response.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    response
}

fn refused(error: Error) -> Response<Body> {
    let (kind, status) = error.kind();
    if matches!(error, Error::Full) && request_id::speaks_openai() {
        // the API's clients retry a 429 after Retry-After (a 503 at once)
        let mut response = answer::error(StatusCode::TOO_MANY_REQUESTS, &error.to_string(), kind);
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
        return response;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    answer::error(status, &error.to_string(), kind)
}

pub(crate) fn ok_json(body: &'static [u8]) -> Response<Body> {
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

/// Answers taken from the result queue per pass.
const DRAIN_LIMIT: usize = 1024;

/// The reader thread: every answer in the result queue goes to the request
/// waiting for it (one whose caller gave up is dropped).
fn read_answers(shared: &Shared) {
    let stopping = || shared.stopping.load(Ordering::Acquire);
    while !stopping() {
        let results = Arc::clone(&shared.client().queues().results); // it changes when the flow heals
        let until = monotonic_ns() + READER_TICK.as_nanos() as u64;
        let _ = results.wait_ready(Some(until), &mut || stopping());
        loop {
            let drained = {
                let mut client = shared.client();
                if !Arc::ptr_eq(&client.queues().results, &results) {
                    break; // retargeted meanwhile
                }
                let drained = client.drain_streams(DRAIN_LIMIT, |waiter| match waiter {
                    Waiter::Stream(tx) => Some(tx.clone()),
                    Waiter::Once(_) => None,
                });
                for answer in &drained.answers {
                    client.release(&answer.blocks); // the worker is done with the body
                }
                drained
            };
            let taken = drained.answers.len();
            let arenas = Arc::clone(&shared.arenas.lock().unwrap_or_else(PoisonError::into_inner));
            for answer in drained.answers {
                // a placed body is freed when this is dropped, delivered or not
                let delivered = Delivered::new(answer.message, &arenas);
                if let Some(sink) = answer.sink {
                    let _ = sink.send(delivered); // a part
                } else if let Some(waiter) = answer.waiter {
                    waiter.deliver(delivered);
                }
            }
            if taken > 0 {
                results.released(&[]);
            }
            if let Some(e) = drained.corrupt {
                // nothing more is read from it: every waiting request
                // ends (503), and so do later ones until `retarget`
                shared.found_corrupt(&e.to_string());
                shared.settle_all();
                while !stopping() && Arc::ptr_eq(&shared.client().queues().results, &results) {
                    std::thread::sleep(READER_TICK);
                }
                break;
            }
            if taken < DRAIN_LIMIT {
                break;
            }
        }
    }
}
