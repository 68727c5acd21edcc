//! A streamed response body: the parts a worker emits for one request,
//! written as chunks as they come, until the task's final message (its
//! response's body, if any, is the last chunk) or its deadline.
//!
//! After the first chunk the status is sent; an error later (the handler
//! raised, the deadline passed, the flow stopped) ends the stream with one
//! Server-Sent Event of type `error` whose data is the usual JSON error.
//! A body dropped before its end — the client closed the connection — runs
//! its `on_drop` (the server cancels the task there: workers stop
//! producing for it).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

use aqueduct_core::http_wire::{decode_response, split_error};
use aqueduct_core::openai::PING;
use aqueduct_core::wire::{base_kind, KIND_ERROR, KIND_HTTP_PART, KIND_HTTP_RESPONSE};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, Sleep};

use crate::delivered::Delivered;
use crate::frames::Frames;

/// Parts already there when one is written go out with it, up to this size.
const COALESCE_BYTES: usize = 64 * 1024;

/// How a stream ended, for the server's outcome counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Done,
    Failed,
    Timeout,
    /// The client left before the end.
    Left,
}

/// The body of a streamed response (see the module docs).
pub struct PartBody {
    first: Option<Delivered>,
    messages: UnboundedReceiver<Delivered>,
    deadline: Pin<Box<Sleep>>,
    ended: bool,
    /// Called once, with how the stream ended.
    on_end: Option<Box<dyn FnOnce(End) + Send + Sync>>,
    frames: Frames,
    /// How often an idle stream gets a comment, and when the next is due.
    ping: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl PartBody {
    /// A body that starts with the part `first`, then takes what comes
    /// through `messages` until the final message or `deadline`.
    pub fn new(
        first: Delivered,
        messages: UnboundedReceiver<Delivered>,
        deadline: Pin<Box<Sleep>>,
        on_end: Box<dyn FnOnce(End) + Send + Sync>,
    ) -> Self {
        PartBody {
            first: Some(first),
            messages,
            deadline,
            ended: false,
            on_end: Some(on_end),
            frames: Frames::Raw,
            ping: None,
        }
    }

    /// The body framing its chunks with `frames`, and, for frames that
    /// have them, a comment every `ping` the stream is idle.
    pub fn framed(mut self, frames: Frames, ping: Option<Duration>) -> Self {
        self.ping = ping
            .filter(|_| frames.pings())
            .map(|every| (every, Box::pin(tokio::time::sleep(every))));
        self.frames = frames;
        self
    }

    fn end(&mut self, how: End) {
        self.ended = true;
        if let Some(on_end) = self.on_end.take() {
            on_end(how);
        }
    }

    /// `first` and the frames of what else has come by now, as one chunk
    /// (at most [`COALESCE_BYTES`]): a burst of parts is one write.
    fn with_ready(&mut self, first: Bytes) -> Bytes {
        let mut out: Option<Vec<u8>> = None;
        while !self.ended && out.as_ref().map_or(first.len(), Vec::len) < COALESCE_BYTES {
            let Ok(message) = self.messages.try_recv() else {
                break;
            };
            if let Some(more) = self.frame_of(message) {
                out.get_or_insert_with(|| first.to_vec())
                    .extend_from_slice(&more);
            }
        }
        out.map_or(first, Bytes::from)
    }

    /// The frame a message makes (None: the stream is over with nothing
    /// more to write).
    fn frame_of(&mut self, delivered: Delivered) -> Option<Bytes> {
        let Delivered { message, placed } = delivered;
        let payload = message.payload();
        let part = |frames: &mut Frames, bytes: Bytes| match frames.part(&bytes) {
            Some(framed) => Bytes::from(framed),
            None => bytes,
        };
        match (base_kind(message.header.kind), placed) {
            (_, Some(Err(why))) => {
                self.end(End::Failed);
                let what = format!("the worker's part is not well-formed: {why}");
                Some(Bytes::from(self.frames.error(&what, "FlowError")))
            }
            // from the worker's arena
            (KIND_HTTP_PART, Some(Ok(placed))) => Some(part(&mut self.frames, placed)),
            (KIND_HTTP_PART, None) => Some(part(&mut self.frames, Bytes::copy_from_slice(payload))),
            (KIND_HTTP_RESPONSE, placed) => {
                self.end(End::Done);
                let body = match placed {
                    Some(Ok(placed)) => placed,
                    _ => decode_response(payload)
                        .map_or_else(Bytes::new, |r| Bytes::copy_from_slice(r.body)),
                };
                match &mut self.frames {
                    Frames::Raw => Some(body).filter(|body| !body.is_empty()),
                    frames => Some(Bytes::from(frames.last(&body))),
                }
            }
            (KIND_ERROR, None) => {
                self.end(End::Failed);
                let event = split_error(payload).map_or_else(
                    || {
                        self.frames
                            .error("the task failed in a worker", "FlowError")
                    },
                    |s| self.frames.failed(s.json, s.status),
                );
                Some(Bytes::from(event))
            }
            _ => {
                self.end(End::Failed);
                let what = "the flow answered what a stream cannot";
                Some(Bytes::from(self.frames.error(what, "FlowError")))
            }
        }
    }
}

impl PartBody {
    /// Nothing came: a comment when the stream has been idle long enough
    /// (`Pending` otherwise).
    fn poll_ping(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some((every, next)) = &mut self.ping else {
            return Poll::Pending;
        };
        if next.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        next.as_mut().reset(Instant::now() + *every);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(PING)))))
    }
}

impl Body for PartBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let message = match this.first.take() {
                Some(first) => first,
                None => match this.messages.poll_recv(cx) {
                    Poll::Ready(Some(message)) => message,
                    Poll::Ready(None) => {
                        this.end(End::Failed);
                        let what = "the flow stopped before the task ended";
                        let event = this.frames.error(what, "FlowError");
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
                    }
                    Poll::Pending => {
                        if this.deadline.as_mut().poll(cx).is_pending() {
                            return this.poll_ping(cx);
                        }
                        this.end(End::Timeout);
                        let event = this.frames.error("not done in time", "TaskTimeoutError");
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
                    }
                },
            };
            if let Some((every, next)) = &mut this.ping {
                next.as_mut().reset(Instant::now() + *every); // not idle
            }
            if let Some(bytes) = this.frame_of(message) {
                return Poll::Ready(Some(Ok(Frame::data(this.with_ready(bytes)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for PartBody {
    fn drop(&mut self) {
        if !self.ended {
            self.end(End::Left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aqueduct_core::http_wire::encode_response;
    use aqueduct_core::{MessageHeader, QueueConfig, TaskQueue};
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn message(queue: &TaskQueue, kind: u32, payload: &[u8]) -> Delivered {
        let header = MessageHeader {
            kind,
            ..MessageHeader::default()
        };
        queue.push(&header, payload).expect("room");
        Delivered::new(queue.try_pop().expect("intact").expect("a message"), &[])
    }

    #[tokio::test]
    async fn parts_that_came_together_are_one_chunk_and_the_end_is_counted() {
        let queue = TaskQueue::create(QueueConfig::default()).expect("queue");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let first = message(&queue, KIND_HTTP_PART, b"data: 1\n\n");
        tx.send(message(&queue, KIND_HTTP_PART, b"data: 2\n\n"))
            .expect("open");
        let mut response = Vec::new();
        encode_response(&mut response, 200, &[], b"data: end\n\n").expect("encoded");
        tx.send(message(&queue, KIND_HTTP_RESPONSE, &response))
            .expect("open");
        let ended = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&ended);
        let deadline = Box::pin(tokio::time::sleep(Duration::from_secs(5)));
        let on_end = Box::new(move |how| *seen.lock().expect("lock") = Some(how));
        let mut body = PartBody::new(first, rx, deadline, on_end);
        let frame = body.frame().await.expect("a frame").expect("ok");
        let bytes = frame.into_data().expect("data");
        assert_eq!(&bytes[..], b"data: 1\n\ndata: 2\n\ndata: end\n\n");
        assert!(body.frame().await.is_none());
        assert_eq!(*ended.lock().expect("lock"), Some(End::Done));
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_says_the_client_left() {
        let queue = TaskQueue::create(QueueConfig::default()).expect("queue");
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let first = message(&queue, KIND_HTTP_PART, b"data: 1\n\n");
        let ended = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&ended);
        let deadline = Box::pin(tokio::time::sleep(Duration::from_secs(5)));
        let on_end = Box::new(move |how| *seen.lock().expect("lock") = Some(how));
        let mut body = PartBody::new(first, rx, deadline, on_end);
        assert!(body.frame().await.is_some());
        drop(body);
        assert_eq!(*ended.lock().expect("lock"), Some(End::Left));
    }
}
