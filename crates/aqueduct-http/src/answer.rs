//! Turning what came back through the result queue (or what went wrong on
//! the way) into an HTTP response.

use aqueduct_core::http_wire::{decode_response, error_json, split_error};
use aqueduct_core::openai;
use aqueduct_core::wire::{base_kind, KIND_DROPPED, KIND_ERROR, KIND_HTTP_RESPONSE};

use crate::delivered::Delivered;
use crate::request_id;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

pub type Body = Full<Bytes>;

/// A JSON error response `{"error", "type"}` (and the request's id), or
/// the OpenAI-compatible API's `{"error": {"message", "type", "param",
/// "code"}}` on its routes.
pub fn error(status: StatusCode, message: &str, kind: &str) -> Response<Body> {
    json(status, error_json(message, kind))
}

/// `body`, aqueduct's JSON error, as the current request's route says.
fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let body = if request_id::speaks_openai() {
        openai::from_report(&body, status.as_u16())
    } else {
        body
    };
    let body = request_id::named(body);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The response for a message of the result queue.
pub fn from_message(delivered: Delivered) -> Response<Body> {
    let Delivered { message, placed } = delivered;
    let payload = message.payload();
    match base_kind(message.header.kind) {
        KIND_HTTP_RESPONSE => match decode_response(payload) {
            Some(answer) => {
                // workers send only statuses in 100..599 (they check)
                let Ok(status) = StatusCode::from_u16(answer.status) else {
                    let message = format!("the worker's response has status {}", answer.status);
                    return error(StatusCode::INTERNAL_SERVER_ERROR, &message, "FlowError");
                };
                let body = match placed {
                    None => Bytes::copy_from_slice(answer.body),
                    Some(Ok(body)) => body, // written from the worker's arena
                    Some(Err(why)) => {
                        let message = format!("the worker's response is not well-formed: {why}");
                        return error(StatusCode::INTERNAL_SERVER_ERROR, &message, "FlowError");
                    }
                };
                let mut response = Response::new(Full::new(body));
                *response.status_mut() = status;
                let headers = response.headers_mut();
                for (name, value) in answer.headers {
                    // a header the handler got wrong is left out, not fatal;
                    // a name may come more than once (two Set-Cookie)
                    if let (Ok(name), Ok(value)) =
                        (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                    {
                        headers.append(name, value);
                    }
                }
                response
            }
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the worker's response is not well-formed",
                "FlowError",
            ),
        },
        KIND_ERROR => match split_error(payload) {
            Some(summary) => {
                let status = StatusCode::from_u16(summary.status)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response = json(status, summary.json.to_vec());
                if status == StatusCode::TOO_MANY_REQUESTS {
                    // refused for its latency objective: come back in a while
                    response
                        .headers_mut()
                        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                response
            }
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the task failed in a worker",
                "FlowError",
            ),
        },
        KIND_DROPPED => error(
            StatusCode::GATEWAY_TIMEOUT,
            "the task timed out before a worker took it",
            "TaskTimeoutError",
        ),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the flow answered with a task, not a response: was it started by aqueduct.http.serve?",
            "FlowError",
        ),
    }
}

/// 401: the request carries none of the server's API keys.
pub(crate) fn unauthorized() -> Response<Body> {
    let message = "a valid API key is needed (Authorization: Bearer <key>, or X-API-Key)";
    let mut response = error(StatusCode::UNAUTHORIZED, message, "Unauthorized");
    response.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// 200 with a JSON body the server has by heart.
pub(crate) fn ok_json(body: &'static [u8]) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod fuzz {
    use aqueduct_core::http_wire::{encode_response, error_prefix};
    use aqueduct_core::wire::{FLAGS, KIND_PART};
    use aqueduct_core::{MessageHeader, QueueConfig, TaskQueue};
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..=max)
    }

    /// Payloads of every kind a result queue carries, well-formed or not.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let response = (any::<u16>(), vec((bytes(16), bytes(32)), 0..4), bytes(32)).prop_map(
            |(status, headers, body)| {
                let headers: Vec<(&[u8], &[u8])> = headers
                    .iter()
                    .map(|(n, v)| (n.as_slice(), v.as_slice()))
                    .collect();
                let mut out = Vec::new();
                encode_response(&mut out, status, &headers, &body).expect("encodes");
                out
            },
        );
        let error = (any::<u16>(), bytes(48), bytes(16)).prop_map(|(status, json, rest)| {
            let mut out = error_prefix(status, &json).expect("short");
            out.extend_from_slice(&rest);
            out
        });
        prop_oneof![bytes(128), response, error]
    }

    proptest! {
        /// Whatever a worker (or memory scribbled on) put in the result
        /// queue, the client gets a response with a status hyper can send.
        #[test]
        fn any_answer_becomes_a_response(
            kind in prop_oneof![0..=KIND_PART, any::<u32>()],
            flags in any::<u32>(),
            payload in payload(),
        ) {
            let queue = TaskQueue::create(QueueConfig::default()).expect("queue");
            let header = MessageHeader { kind: kind | (flags & FLAGS), ..MessageHeader::default() };
            queue.push(&header, &payload).expect("room");
            let message = queue.try_pop().expect("intact").expect("a message");
            let response = from_message(Delivered::new(message, &[]));
            let status = response.status().as_u16();
            prop_assert!((100..=999).contains(&status));
            if base_kind(kind) == KIND_ERROR {
                prop_assert!(status >= 400, "an error is never a success: {status}");
            }
        }
    }
}
