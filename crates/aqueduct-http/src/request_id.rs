//! Request ids: every request has one — its `X-Request-ID` when the client
//! sent a usable one (`http_wire::usable_request_id`), a fresh UUID
//! otherwise. It goes to the workers with the request's headers, comes back
//! on the answer, in the access log line and in every JSON error body the
//! front makes while it handles the request (through [`scope`]); the scope
//! also says whether its errors take the OpenAI-compatible API's shape.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use aqueduct_core::http_wire::{usable_request_id, REQUEST_ID_HEADER};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// The request being handled.
struct Current {
    id: HeaderValue,
    /// Its route speaks the OpenAI-compatible API.
    openai: Cell<bool>,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// The header's name, as hyper keeps it.
pub fn header() -> HeaderName {
    HeaderName::from_static(REQUEST_ID_HEADER)
}

/// The id of a request with these headers, and whether it was made here
/// (then it is not among them yet).
pub fn of(headers: &HeaderMap) -> (HeaderValue, bool) {
    match headers.get(REQUEST_ID_HEADER) {
        Some(id) if usable_request_id(id.as_bytes()) => (id.clone(), false),
        _ => (made(), true),
    }
}

/// A fresh id: a random UUID, or (when the kernel gives no random bytes)
/// the process id and a counter.
fn made() -> HeaderValue {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let text = aqueduct_core::ids::uuid4().unwrap_or_else(|| {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", std::process::id())
    });
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Runs `handling` with `id` as the request id its errors name.
pub async fn scope<F: Future>(id: HeaderValue, handling: F) -> F::Output {
    let current = Current {
        id,
        openai: Cell::new(false),
    };
    CURRENT.scope(current, handling).await
}

/// The current request's id (empty outside [`scope`]).
pub fn current() -> String {
    CURRENT
        .try_with(|c| c.id.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// The current request's errors take the OpenAI-compatible API's shape.
pub fn speak_openai() {
    let _ = CURRENT.try_with(|c| c.openai.set(true));
}

/// Whether they do.
pub fn speaks_openai() -> bool {
    CURRENT.try_with(|c| c.openai.get()).unwrap_or(false)
}

/// `body`, a JSON object, with the current request's id as its first
/// member `"request_id"` (as it is outside [`scope`], or when the body is
/// not an object).
pub fn named(body: Vec<u8>) -> Vec<u8> {
    let opens = body.first().is_some_and(|&b| b == b'{');
    let Ok(Some(id)) = CURRENT.try_with(|c| opens.then(|| c.id.clone())) else {
        return body;
    };
    // a usable id, or one made here, needs no escaping (see `of`)
    let mut out = Vec::with_capacity(body.len() + id.len() + 18);
    out.extend_from_slice(b"{\"request_id\": \"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\"");
    if body
        .get(1..)
        .is_some_and(|rest| rest.iter().any(|b| !b.is_ascii_whitespace() && *b != b'}'))
    {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(&body[1..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_id_is_kept_and_any_other_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(header(), HeaderValue::from_static("abc-1"));
        assert_eq!(of(&headers), (HeaderValue::from_static("abc-1"), false));
        headers.insert(header(), HeaderValue::from_static("a \"quoted\" id"));
        let (id, made) = of(&headers);
        assert!(made);
        assert_eq!(id.len(), 36, "{id:?}");
        let (other, _) = of(&HeaderMap::new());
        assert_ne!(id, other);
    }

    #[tokio::test]
    async fn error_bodies_name_the_request_within_its_scope_only() {
        let body = br#"{"error": "x", "type": "Y"}"#.to_vec();
        assert_eq!(named(body.clone()), body);
        let id = HeaderValue::from_static("r-7");
        let inside = scope(id.clone(), async { named(body.clone()) }).await;
        assert_eq!(
            inside,
            br#"{"request_id": "r-7", "error": "x", "type": "Y"}"#.to_vec()
        );
        let empty = scope(id.clone(), async { named(b"{}".to_vec()) }).await;
        assert_eq!(empty, br#"{"request_id": "r-7"}"#.to_vec());
        let list = scope(id, async { named(b"[1]".to_vec()) }).await;
        assert_eq!(list, b"[1]".to_vec());
    }
}
