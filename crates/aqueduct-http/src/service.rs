//! What a request is answered with: the pages the server answers itself
//! (`/live`, `/ready`, `/health`, `/metrics`, `/openapi.json`), the
//! protocols' routes, or the flow's answer on a plain route.

use aqueduct_core::http_wire::{HEALTH_PATH, LIVE_PATH, METRICS_PATH, OPENAPI_PATH, READY_PATH};
use aqueduct_core::kserve::{self};
use aqueduct_core::TaskQueue;
use bytes::Bytes;
use http_body_util::Either;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::sync::{Arc, PoisonError};

use crate::answer::{self, ok_json, unauthorized, Body};
use crate::awaiting::{answered, on_end, streamed, submit_and_wait, First, Reply};
use crate::config::Protocol;
use crate::dispatch::{read_body, Sending};
use crate::kserve_route;
use crate::metrics;
use crate::openai_route;
use crate::request_id;
use crate::shared::Shared;
use crate::stream::PartBody;

pub(crate) async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Reply> {
    let path = request.uri().path().to_owned();
    if path == LIVE_PATH {
        return ok_json(br#"{"status": "live"}"#).map(Either::Left);
    }
    if path == READY_PATH {
        let ready = shared
            .readiness
            .ready()
            .and_then(|()| match shared.failure() {
                Some(reason) => Err(reason),
                None => Ok(()),
            });
        return match ready {
            Ok(()) => ok_json(br#"{"status": "ready"}"#),
            Err(reason) => answer::error(StatusCode::SERVICE_UNAVAILABLE, &reason, "NotReady"),
        }
        .map(Either::Left);
    }
    if path == HEALTH_PATH {
        return match shared.failure() {
            None => ok_json(br#"{"status": "ok"}"#),
            Some(reason) => answer::error(StatusCode::SERVICE_UNAVAILABLE, &reason, "FlowError"),
        }
        .map(Either::Left);
    }
    let config = &shared.config;
    if !config.kserve.models.is_empty() {
        if let Some(page) = kserve::page_of(&path) {
            return kserve_route::serve(shared, request, page).await;
        }
    }
    let open = path == METRICS_PATH && config.open_metrics;
    let protocol = openai_route::protocol_of(config, &path);
    if protocol != Protocol::Plain {
        request_id::speak_openai(); // its errors take the API's shape
    }
    if !open && !config.api_keys.admits(request.headers()) {
        return unauthorized().map(Either::Left);
    }
    if let Some(page) = openai_route::models_page(config, &path) {
        return page.map(Either::Left);
    }
    if path == METRICS_PATH {
        return metrics_page(shared).map(Either::Left);
    }
    if let (true, Some(doc)) = (path == OPENAPI_PATH, &config.openapi) {
        let mut response = Response::new(Full::new(doc.clone()));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return response.map(Either::Left);
    }
    let Some(route) = shared.config.paths.iter().position(|p| *p == path) else {
        let message = format!("no route for {path}");
        return answer::error(StatusCode::NOT_FOUND, &message, "NotFound").map(Either::Left);
    };
    let stream = shared.config.streams.get(route).cloned().flatten();
    let route = u16::try_from(route).unwrap_or(u16::MAX);
    if let Some(reason) = shared.failure() {
        return answer::error(StatusCode::SERVICE_UNAVAILABLE, &reason, "FlowError")
            .map(Either::Left);
    }
    let sending = Sending::asked(shared, &request, route, stream.is_some());
    let timeout = sending.timeout;
    let (parts, body) = request.into_parts();
    let body = match read_body(shared, body).await {
        Ok(body) => body,
        Err(response) => return response.map(Either::Left),
    };
    match protocol {
        Protocol::OpenAi(endpoint) => {
            return openai_route::serve(shared, &parts, &body, sending, endpoint).await;
        }
        Protocol::Embeddings => {
            return openai_route::embeddings(shared, &parts, &body, sending).await
        }
        Protocol::Plain => {}
    }
    let started = tokio::time::Instant::now();
    let (key, first) = match submit_and_wait(shared, &parts, &&body[..], &sending).await {
        Ok(sent) => sent,
        Err(response) => return (*response).map(Either::Left),
    };
    let first = match first {
        First::Part(message, messages) => {
            let content_type = stream.unwrap_or_default();
            let deadline = Box::pin(tokio::time::sleep_until(started + timeout));
            let body = PartBody::new(message, messages, deadline, on_end(shared, key));
            return streamed(body, &content_type);
        }
        First::End(first) => first,
    };
    let response = answered(shared, key, first, timeout, answer::from_message);
    response.map(Either::Left)
}

fn metrics_page(shared: &Shared) -> Response<Body> {
    let segments = shared.client().queues().clone();
    let names = shared
        .names
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    // the metrics slots are the steps, then the result queue's
    let queues: Vec<&TaskQueue> = segments
        .steps
        .iter()
        .chain([&segments.results])
        .map(AsRef::as_ref)
        .collect();
    let page = metrics::render(&names, &segments.control, &queues, &shared.outcomes);
    let mut response = Response::new(Full::new(Bytes::from(page)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
