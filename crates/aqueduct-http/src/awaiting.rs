//! A sent request waiting for what comes back: its first message within its
//! timeout, the response made of it (counted in the outcomes), a stream
//! that follows, and the cancel when its client leaves.

use aqueduct_core::wire::is_part;
use http_body_util::Either;
use hyper::{Response, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::answer::{self, Body};
use crate::delivered::Delivered;
use crate::dispatch::{submit, Outgoing, Sending};
use crate::shared::{Awaited, Shared};
use crate::stream::{End, PartBody};

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
