//! The Open Inference Protocol's paths (`/v2/...`, see
//! `aqueduct_core::kserve`): health, metadata and readiness answered here;
//! an `infer` request checked against its model's inputs and sent to the
//! workers as a tensor table (into the server's arena when it is big), at
//! the priority and with the timeout its parameters ask for; the table of
//! outputs a worker answers with made the protocol's answer here.

use std::sync::Arc;
use std::time::Duration;

use aqueduct_core::kserve::{self, ModelSpec, Page, Refusal, HEADER_LENGTH};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::answer::{self, Body};
use crate::answer::{ok_json, unauthorized};
use crate::awaiting::{answered, submit_and_wait, Reply};
use crate::delivered::Delivered;
use crate::dispatch::{read_body, Outgoing, Sending};
use crate::shared::Shared;

/// Answers a request for a page of the protocol.
pub async fn serve(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    page: Page,
) -> Response<Reply> {
    let config = &shared.config;
    let models = &config.kserve;
    let probe = matches!(page, Page::Live | Page::Ready);
    if !probe && !config.api_keys.admits(request.headers()) {
        return unauthorized().map(Either::Left); // probes never need a key
    }
    let response = match page {
        Page::Live => ok_json(b"{\"live\":true}"),
        Page::Ready => match ready(shared, None) {
            Ok(()) => ok_json(b"{\"ready\":true}"),
            Err(reason) => not_ready(&reason),
        },
        Page::Server => json(kserve::server_metadata(&models.version)),
        Page::Model(name, version) => match models.find(&name, version.as_deref()) {
            Ok(model) => json(kserve::model_metadata(model)),
            Err(refusal) => refused(&refusal),
        },
        Page::ModelReady(name, version) => match models.find(&name, version.as_deref()) {
            Ok(model) => match ready(shared, Some(&model.steps)) {
                Ok(()) => ok_json(b"{\"ready\":true}"),
                Err(reason) => not_ready(&reason),
            },
            Err(refusal) => refused(&refusal),
        },
        Page::Infer(name, version) => match models.find(&name, version.as_deref()) {
            Ok(model) => return infer(shared, request, model).await,
            Err(refusal) => refused(&refusal),
        },
    };
    response.map(Either::Left)
}

/// Whether the server serves and the steps (None: all) have their workers.
fn ready(shared: &Shared, steps: Option<&[usize]>) -> Result<(), String> {
    shared.readiness.steps_ready(steps)?;
    shared.failure().map_or(Ok(()), Err)
}

async fn infer(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    model: &ModelSpec,
) -> Response<Reply> {
    if request.method() != Method::POST {
        let mut response = answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "infer takes a POST",
            "MethodNotAllowed",
        );
        response
            .headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        return response.map(Either::Left);
    }
    if let Some(reason) = shared.failure() {
        return answer::error(StatusCode::SERVICE_UNAVAILABLE, &reason, "FlowError")
            .map(Either::Left);
    }
    let encoded = request
        .headers()
        .get(CONTENT_ENCODING)
        .filter(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    if let Some(encoding) = encoded {
        let message = format!(
            "Content-Encoding {} is not supported: send the body as it is",
            String::from_utf8_lossy(encoding.as_bytes())
        );
        return refused(&Refusal {
            status: 415,
            message,
        })
        .map(Either::Left);
    }
    let head_len = match request.headers().get(HEADER_LENGTH) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|v| v.trim().parse().ok()) {
            Some(len) => Some(len),
            None => {
                let message = "Inference-Header-Content-Length must be a number of bytes";
                return refused(&Refusal {
                    status: 400,
                    message: message.into(),
                })
                .map(Either::Left);
            }
        },
    };
    let route = u16::try_from(model.route).unwrap_or(u16::MAX);
    let mut sending = Sending::asked(shared, &request, route, false);
    let (parts, body) = request.into_parts();
    let body = match read_body(shared, body).await {
        Ok(body) => body,
        Err(response) => return response.map(Either::Left),
    };
    let asked = match kserve::parse_infer(model, &body, head_len) {
        Ok(asked) => asked,
        Err(refusal) => return refused(&refusal).map(Either::Left),
    };
    if let Some(priority) = asked.priority {
        sending.priority = kserve::aqueduct_priority(priority, model.priority_levels);
    }
    if let Some(us) = asked.timeout_us.filter(|us| *us > 0) {
        sending.timeout = Duration::from_micros(us.min(1 << 40));
    }
    let (key, first) = match submit_and_wait(shared, &parts, &Table(&asked), &sending).await {
        Ok(sent) => sent,
        Err(response) => return (*response).map(Either::Left),
    };
    let make = |delivered: Delivered| {
        match delivered.read_body(|outputs| Some(kserve::answer(model, &asked, outputs))) {
            Some(Ok(made)) => answered_tensors(made),
            Some(Err(refusal)) => refused(&refusal),
            None => answer::from_message(delivered), // an error of the flow's
        }
    };
    answered(shared, key, first.once(), sending.timeout, make).map(Either::Left)
}

/// The inputs' table, written where the workers read it (see [`Outgoing`]).
struct Table<'a>(&'a kserve::Infer<'a>);

impl Outgoing for Table<'_> {
    fn len(&self) -> usize {
        self.0.table_len()
    }

    fn write(&self, out: &mut [u8]) -> Result<(), String> {
        self.0.write_table(out)
    }
}

/// The protocol's answer: JSON, or a JSON head and binary outputs.
fn answered_tensors(made: kserve::Answer) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(made.body)));
    let headers = response.headers_mut();
    match made.head_len {
        Some(len) => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(HEADER_LENGTH, HeaderValue::from(len));
        }
        None => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    response
}

fn json(body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `{"error": ...}` with the refusal's status.
fn refused(refusal: &Refusal) -> Response<Body> {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    let kind = if status.is_server_error() {
        "InferenceError"
    } else {
        "BadRequest"
    };
    answer::error(status, &refusal.message, kind)
}

/// A health or readiness page saying no (503: probes and load balancers
/// take any status other than 200 as no).
fn not_ready(reason: &str) -> Response<Body> {
    answer::error(StatusCode::SERVICE_UNAVAILABLE, reason, "NotReady")
}
