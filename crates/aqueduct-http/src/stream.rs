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

use aqueduct_core::http_wire::{decode_response, error_event, server_sent_event, split_error};
use aqueduct_core::wire::{base_kind, KIND_ERROR, KIND_HTTP_PART, KIND_HTTP_RESPONSE};
use aqueduct_core::Message;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Sleep;

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
    first: Option<Message>,
    messages: UnboundedReceiver<Message>,
    deadline: Pin<Box<Sleep>>,
    ended: bool,
    /// Called once, with how the stream ended.
    on_end: Option<Box<dyn FnOnce(End) + Send + Sync>>,
}

impl PartBody {
    /// A body that starts with the part `first`, then takes what comes
    /// through `messages` until the final message or `deadline`.
    pub fn new(
        first: Message,
        messages: UnboundedReceiver<Message>,
        deadline: Pin<Box<Sleep>>,
        on_end: Box<dyn FnOnce(End) + Send + Sync>,
    ) -> Self {
        PartBody {
            first: Some(first),
            messages,
            deadline,
            ended: false,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, how: End) {
        self.ended = true;
        if let Some(on_end) = self.on_end.take() {
            on_end(how);
        }
    }

    /// The frame a message makes (None: the stream is over with nothing
    /// more to write).
    fn frame_of(&mut self, message: &Message) -> Option<Bytes> {
        let payload = message.payload();
        match base_kind(message.header.kind) {
            KIND_HTTP_PART => Some(Bytes::copy_from_slice(payload)),
            KIND_HTTP_RESPONSE => {
                self.end(End::Done);
                decode_response(payload)
                    .map(|r| r.body)
                    .filter(|body| !body.is_empty())
                    .map(Bytes::copy_from_slice)
            }
            KIND_ERROR => {
                self.end(End::Failed);
                let event = split_error(payload).map_or_else(
                    || error_event("the task failed in a worker", "FlowError"),
                    |s| {
                        let mut out = b"event: error\n".to_vec();
                        out.extend_from_slice(&server_sent_event(s.json));
                        out
                    },
                );
                Some(Bytes::from(event))
            }
            _ => {
                self.end(End::Failed);
                let event = error_event("the flow answered what a stream cannot", "FlowError");
                Some(Bytes::from(event))
            }
        }
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
                        let event =
                            error_event("the flow stopped before the task ended", "FlowError");
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
                    }
                    Poll::Pending => {
                        if this.deadline.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        this.end(End::Timeout);
                        let event = error_event("not done in time", "TaskTimeoutError");
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
                    }
                },
            };
            if let Some(bytes) = this.frame_of(&message) {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
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
