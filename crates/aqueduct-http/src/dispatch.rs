//! A request on its way to the workers: its body read within the limits,
//! its priority and timeout, and its message sent to the first step (a big
//! body placed in the server's arena), or the response to one refused.

use aqueduct_core::http_wire::{encode_request_head, BodyRef};
use aqueduct_core::wire::{
    http_route_bits, FLAG_HTTP, FLAG_STREAM, INLINE_LIMIT, KIND_HTTP_REQUEST, MAX_PRIORITIES,
};
use aqueduct_core::{monotonic_ns, Error, MessageHeader, Outbound};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use crate::answer::{self, Body};
use crate::request_id;
use crate::shared::{Awaited, Client, Shared, Waiter};

/// Header a request may set to its own timeout, in seconds.
const TIMEOUT_HEADER: &str = "x-aqueduct-timeout";
/// Header a request may set to its priority (clamped to the flow's levels).
const PRIORITY_HEADER: &str = "x-aqueduct-priority";

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
pub(crate) fn submit(
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
        entered_ns: 0,
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

/// The response to a request the first queue did not take.
fn refused(error: Error) -> Response<Body> {
    let (kind, status) = error.kind();
    let overloaded = matches!(error, Error::Overloaded(_));
    if overloaded || matches!(error, Error::Full) && request_id::speaks_openai() {
        // clients retry a 429 after Retry-After (the OpenAI API's a 503 at
        // once); a task refused for its objective is one
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
