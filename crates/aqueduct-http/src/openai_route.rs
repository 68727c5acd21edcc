//! The OpenAI-compatible routes: `/v1/chat/completions` and
//! `/v1/completions` (the request checked by `aqueduct_core::openai`
//! before a worker sees it; streamed or not as the request asks), and the
//! models the server answers itself. The workers get the request as any
//! other route's and answer with text parts and a summary; the objects and
//! chunks of the API are made here.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aqueduct_core::openai::{self, ApiError, Endpoint, Framer, Summary};
use aqueduct_core::openai_embeddings::{self, Vectors};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::answer::{self, Body};
use crate::awaiting::{answered, on_end, streamed, submit_and_wait, First, Reply};
use crate::config::{Config, Protocol};
use crate::delivered::Delivered;
use crate::dispatch::Sending;
use crate::frames::Frames;
use crate::request_id;
use crate::shared::Shared;
use crate::stream::PartBody;

/// Where the models are listed.
const MODELS_PATH: &str = "/v1/models";
const EVENT_STREAM: &str = "text/event-stream";

/// What the route at `path` speaks (`/v1/models` speaks the API too when
/// a model is served).
pub fn protocol_of(config: &Config, path: &str) -> Protocol {
    if config.model.is_some() && path.starts_with(MODELS_PATH) {
        return Protocol::OpenAi(Endpoint::Chat);
    }
    config
        .paths
        .iter()
        .position(|p| p == path)
        .and_then(|route| config.protocols.get(route).copied())
        .unwrap_or(Protocol::Plain)
}

/// `GET /v1/models` and `/v1/models/{id}` when the server has a model.
pub fn models_page(config: &Config, path: &str) -> Option<Response<Body>> {
    let model = config.model.as_deref()?;
    let rest = path.strip_prefix(MODELS_PATH)?;
    let created = started_at();
    if rest.is_empty() || rest == "/" {
        return Some(json(StatusCode::OK, openai::models(model, created)));
    }
    let asked = rest.strip_prefix('/')?;
    if asked == model {
        let body = openai::model_object(model, created).into_bytes();
        return Some(json(StatusCode::OK, body));
    }
    let error = ApiError {
        status: 404,
        message: format!("The model `{asked}` does not exist"),
        kind: "invalid_request_error",
        param: Some("model"),
        code: Some("model_not_found"),
    };
    Some(api_error(&error))
}

/// Serves a generation request whose body was read.
pub async fn serve(
    shared: &Arc<Shared>,
    parts: &hyper::http::request::Parts,
    body: &[u8],
    sending: Sending,
    endpoint: Endpoint,
) -> Response<Reply> {
    let model = shared.config.model.clone().unwrap_or_default();
    let params = match openai::parse_request(endpoint, body, &model) {
        Ok(params) => params,
        Err(error) => return api_error(&error).map(Either::Left),
    };
    let sending = Sending {
        stream: params.stream,
        ..sending
    };
    let started = tokio::time::Instant::now();
    let (key, first) = match submit_and_wait(shared, parts, &body, &sending).await {
        Ok(sent) => sent,
        Err(response) => return (*response).map(Either::Left),
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut framer = Framer::new(endpoint, &request_id::current(), created, &model);
    let timeout = sending.timeout;
    let first = match first {
        First::Part(message, messages) => {
            let deadline = Box::pin(tokio::time::sleep_until(started + timeout));
            let frames = Frames::OpenAi {
                framer: Box::new(framer),
                include_usage: params.include_usage,
            };
            let body = PartBody::new(message, messages, deadline, on_end(shared, key))
                .framed(frames, Some(shared.config.ping));
            return streamed(body, EVENT_STREAM);
        }
        First::End(first) => first,
    };
    let make = |delivered: Delivered| match summary_of(&delivered) {
        Some(summary) if params.stream => {
            // a stream with no part: its role, its end
            let mut response = json(StatusCode::OK, framer.end(&summary, params.include_usage));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        Some(summary) => json(StatusCode::OK, framer.completion(&summary)),
        None => answer::from_message(delivered), // an error, in the API's shape
    };
    answered(shared, key, first, timeout, make).map(Either::Left)
}

/// Serves an embeddings request whose body was read: the worker answers
/// with the vectors ([`Vectors`]), made the API's list object here.
pub async fn embeddings(
    shared: &Arc<Shared>,
    parts: &hyper::http::request::Parts,
    body: &[u8],
    sending: Sending,
) -> Response<Reply> {
    let model = shared.config.model.clone().unwrap_or_default();
    let asked = match openai_embeddings::parse_request(body, &model) {
        Ok(asked) => asked,
        Err(error) => return api_error(&error).map(Either::Left),
    };
    let sending = Sending {
        stream: false,
        ..sending
    };
    let (key, first) = match submit_and_wait(shared, parts, &body, &sending).await {
        Ok(sent) => sent,
        Err(response) => return (*response).map(Either::Left),
    };
    let first = first.once();
    let make = |delivered: Delivered| {
        let vectors = delivered
            .read_body(|bytes| Vectors::decode(bytes).map(|v| v.object(&model, asked.base64)));
        match vectors {
            Some(object) => json(StatusCode::OK, object),
            None => answer::from_message(delivered), // an error, in the API's shape
        }
    };
    answered(shared, key, first, sending.timeout, make).map(Either::Left)
}

/// The summary a worker answered with (None: an error, or not a summary).
fn summary_of(delivered: &Delivered) -> Option<Summary> {
    delivered.read_body(Summary::decode)
}

/// The API's error, with its status.
fn api_error(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    json(status, request_id::named(error.json()))
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// When this process first listed its model, in seconds since the epoch
/// (the model's `created`: the same in every listing).
fn started_at() -> u64 {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// How often idle streams are pinged unless the server says otherwise.
pub const DEFAULT_PING: Duration = Duration::from_secs(15);
