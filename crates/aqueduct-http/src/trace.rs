//! What a traced server keeps of each request it answered, for the Python
//! side to make OpenTelemetry spans of (`aqueduct.tracing`): the request's
//! id and W3C trace context, when it came and was answered, and when each
//! step handled its task (the step-times header the last worker put on the
//! answer, taken off it here). An untraced server keeps nothing and pays
//! nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use aqueduct_core::http_wire::{decode_step_times, StepTime, STEP_TIMES_HEADER};
use aqueduct_core::monotonic_ns;
use hyper::header::HeaderMap;
use hyper::Request;

/// Requests kept for the exporter before new ones are dropped (counted).
const BACKLOG: usize = 65_536;

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub request_id: String,
    /// The request's `traceparent` and `tracestate` headers, as sent.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// CLOCK_MONOTONIC nanoseconds (as the step times).
    pub received_ns: u64,
    pub answered_ns: u64,
    pub steps: Vec<StepTime>,
}

/// A request being traced: what is known of it before it is handled.
pub struct Begun {
    traceparent: Option<String>,
    tracestate: Option<String>,
    method: String,
    path: String,
    received_ns: u64,
}

impl Begun {
    pub fn of<B>(request: &Request<B>) -> Begun {
        let text = |name: &str| {
            let value = request.headers().get(name)?;
            value.to_str().ok().map(str::to_owned)
        };
        Begun {
            traceparent: text("traceparent"),
            tracestate: text("tracestate"),
            method: request.method().as_str().to_owned(),
            path: request.uri().path().to_owned(),
            received_ns: monotonic_ns(),
        }
    }

    /// The request answered with `status` and these headers, from which the
    /// step times are taken.
    pub fn finish(self, request_id: &str, status: u16, headers: &mut HeaderMap) -> Finished {
        let steps = headers
            .remove(STEP_TIMES_HEADER)
            .and_then(|value| decode_step_times(value.as_bytes()))
            .unwrap_or_default();
        Finished {
            request_id: request_id.to_owned(),
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            method: self.method,
            path: self.path,
            status,
            received_ns: self.received_ns,
            answered_ns: monotonic_ns(),
            steps,
        }
    }
}

/// The requests answered and not yet taken by the exporter.
#[derive(Default)]
pub struct Traces {
    finished: Mutex<VecDeque<Finished>>,
    came: Condvar,
    dropped: AtomicU64,
}

impl Traces {
    pub fn record(&self, finished: Finished) {
        let mut queue = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= BACKLOG {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push_back(finished);
        drop(queue);
        self.came.notify_one();
    }

    /// Every request kept, waiting at most `timeout` for one; and how many
    /// were dropped since the last call (the exporter fell behind).
    pub fn take(&self, timeout: Duration) -> (Vec<Finished>, u64) {
        let queue = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut queue, _) = self
            .came
            .wait_timeout_while(queue, timeout, |q| q.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        let taken = queue.drain(..).collect();
        (taken, self.dropped.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn a_finished_request_has_its_context_and_the_steps_taken_off_its_answer() {
        let request = Request::builder()
            .method("POST")
            .uri("/predict?x=1")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .expect("a request");
        let begun = Begun::of(&request);
        let mut headers = HeaderMap::new();
        headers.insert(STEP_TIMES_HEADER, HeaderValue::from_static("0:5:9;1:11:12"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let finished = begun.finish("r-1", 200, &mut headers);
        assert_eq!(finished.path, "/predict");
        assert_eq!(finished.method, "POST");
        assert!(finished
            .traceparent
            .as_deref()
            .is_some_and(|t| t.starts_with("00-0af7")));
        assert_eq!(finished.tracestate, None);
        assert_eq!(finished.steps.len(), 2);
        assert!(finished.answered_ns >= finished.received_ns);
        assert!(
            !headers.contains_key(STEP_TIMES_HEADER),
            "the client never sees it"
        );
        assert!(headers.contains_key("content-type"));
    }

    #[test]
    fn take_waits_for_a_request_and_counts_what_overflowed() {
        let traces = Traces::default();
        assert_eq!(traces.take(Duration::from_millis(5)), (Vec::new(), 0));
        let request = Request::builder().uri("/").body(()).expect("a request");
        let finished = Begun::of(&request).finish("r", 200, &mut HeaderMap::new());
        for _ in 0..=BACKLOG {
            traces.record(finished.clone());
        }
        let (taken, dropped) = traces.take(Duration::ZERO);
        assert_eq!((taken.len(), dropped), (BACKLOG, 1));
    }
}
