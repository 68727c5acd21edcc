//! The server: an accept loop and connections on a tokio runtime of its own,
//! and a reader thread that hands answers from the result queue to the
//! requests waiting for them.

use aqueduct_core::monotonic_ns;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::connection;
use crate::delivered::Delivered;
use crate::metrics::{Names, Outcomes};
use crate::readiness::{Phase, Readiness};
use crate::shared::{client_of, Shared, Target, Waiter};
use crate::trace::Traces;

/// How long `stop` lets connections write the ends it gave their requests.
const LAST_WRITES: Duration = Duration::from_millis(500);
/// How often the reader thread looks at `stopping` while no answer comes.
const READER_TICK: Duration = Duration::from_millis(100);

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
