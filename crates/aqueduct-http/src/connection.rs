//! Accepting connections and serving each: the connection cap, the clocks
//! of a connection between requests (`timed_connection`), where each
//! request begins and ends (`framing`, which refuses smuggling), hyper's own
//! errors made JSON (`json_errors`), and the access log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Either;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::access_log::Entry;
use crate::answer;
use crate::awaiting::Reply;
use crate::framing::Framed;
use crate::json_errors::JsonErrors;
use crate::request_id;
use crate::service::handle;
use crate::shared::Shared;
use crate::timed_connection::{Activity, InProgress, Limits, TimedConnection};
use crate::trace;

/// How long a connection that has sent no request yet gets to send its
/// first once the server closes.
const FIRST_REQUEST_LINGER: Duration = Duration::from_millis(500);
/// How long the accept loop waits after a failed accept (out of fds).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Accepts connections until `shutdown`: at most `max_connections` open at
/// once (beyond, they wait in the listen backlog).
pub(crate) async fn accept(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    // out of fds and the like: the next may work, later
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        spawn_serve(stream, peer, &shared, &shutdown, Some(permit));
    }
    // Closing the listener would reset what the kernel already accepted
    // for it: those connections are served (their answers close them).
    let Ok(listener) = listener.into_std() else {
        return;
    };
    while let Ok((stream, peer)) = listener.accept() {
        let stream = stream.set_nonblocking(true).map(|()| stream);
        if let Ok(stream) = stream.and_then(tokio::net::TcpStream::from_std) {
            spawn_serve(stream, peer, &shared, &shutdown, None);
        }
    }
}

/// Serves a connection accepted (counted in `connections` until it ends).
fn spawn_serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    shared.connections.fetch_add(1, Ordering::AcqRel);
    let shared = Arc::clone(shared);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        serve(stream, peer, &shared, shutdown).await;
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        drop(permit);
    });
}

async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::default());
    let service = {
        let (shared, activity) = (Arc::clone(shared), Arc::clone(&activity));
        service_fn(move |mut request: Request<Incoming>| {
            let shared = Arc::clone(&shared);
            let in_progress = activity.begin();
            let smuggled = activity.refused(activity.begun());
            async move {
                let (id, made) = request_id::of(request.headers());
                if made {
                    // the workers see it as if the client had sent it
                    request
                        .headers_mut()
                        .insert(request_id::header(), id.clone());
                }
                let line = shared.access_log.as_ref().map(|_| Line::of(&request, peer));
                let begun = shared.traces.as_ref().map(|_| trace::Begun::of(&request));
                let mut response = if smuggled {
                    request_id::scope(id.clone(), async { smuggling() })
                        .await
                        .map(Either::Left)
                } else {
                    request_id::scope(id.clone(), handle(&shared, request)).await
                };
                let id_text = id.to_str().unwrap_or("-").to_owned();
                if let (Some(traces), Some(begun)) = (&shared.traces, begun) {
                    let status = response.status().as_u16();
                    traces.record(begun.finish(&id_text, status, response.headers_mut()));
                }
                let headers = response.headers_mut();
                headers.insert(request_id::header(), id);
                if shared.readiness.closes_connections() {
                    // draining: the client's next request goes elsewhere
                    headers.insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                if let (Some(log), Some(line)) = (&shared.access_log, line) {
                    log.record(&line.entry(&response, &id_text));
                }
                Ok::<_, Infallible>(response.map(|body| UntilSent {
                    body,
                    _in_progress: in_progress,
                }))
            }
        })
    };
    let config = &shared.config;
    let limits = Limits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        write_timeout: config.write_timeout,
    };
    let timed = TimedConnection::new(stream, Arc::clone(&activity), limits);
    let framed = Framed::new(timed, Arc::clone(&activity));
    let io = TokioIo::new(JsonErrors::new(framed, Arc::clone(&activity)));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None) // the timed connection's clocks instead
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.changed() => {
            // a connection that has sent nothing yet may have its first
            // request on the way: it is served (its answer closes it)
            let until = Instant::now() + FIRST_REQUEST_LINGER;
            while activity.begun() == 0 && Instant::now() < until {
                let tick = tokio::time::sleep(Duration::from_millis(5));
                tokio::select! {
                    _ = connection.as_mut() => return,
                    () = tick => {}
                }
            }
            // finish the request in flight, then close
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The 400 (and the connection closed) for a request whose length a proxy
/// in front could read differently from us (RFC 9112 §6.1): both
/// `Content-Length` and `Transfer-Encoding`, seen by the framing. (hyper
/// itself refuses `Content-Length`s that disagree, with a 400 too.)
fn smuggling() -> Response<answer::Body> {
    use hyper::header::{HeaderValue, CONNECTION};
    let message = "a request with both Content-Length and Transfer-Encoding";
    let mut response = answer::error(StatusCode::BAD_REQUEST, message, "BadRequest");
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What the access log says of a request, taken before it is handled.
struct Line {
    peer: SocketAddr,
    method: hyper::Method,
    target: String,
    version: hyper::Version,
    start: Instant,
}

impl Line {
    fn of(request: &Request<Incoming>, peer: SocketAddr) -> Line {
        Line {
            peer,
            method: request.method().clone(),
            target: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), ToString::to_string),
            version: request.version(),
            start: Instant::now(),
        }
    }

    fn entry<'a>(&'a self, response: &Response<Reply>, request_id: &'a str) -> Entry<'a> {
        Entry {
            request_id,
            peer: self.peer,
            method: self.method.as_str(),
            target: &self.target,
            version: match self.version {
                hyper::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            status: response.status().as_u16(),
            bytes: response.body().size_hint().exact(),
            took: self.start.elapsed(),
        }
    }
}

/// A response body that keeps its request in progress (no connection
/// clock runs) until it is sent or dropped.
struct UntilSent<B> {
    body: B,
    _in_progress: InProgress,
}

impl<B: Body + Unpin> Body for UntilSent<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
