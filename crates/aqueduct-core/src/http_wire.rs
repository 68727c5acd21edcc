//! How HTTP requests and responses travel in queue messages, and the summary
//! every error report starts with — defined here once: the Rust HTTP server
//! writes requests and reads responses, the binding lets workers read
//! requests and write responses.
//!
//! All integers are little-endian. A request (`KIND_HTTP_REQUEST`):
//! `u16` method length, method, `u32` path length, path, `u32` query length,
//! query, `u32` header count, then per header `u32` name length, name, `u32`
//! value length, value; then a `u8`: 0 when the body is the rest of the
//! payload, 1 when it lies in an arena, followed by the block's `u32` arena
//! index, `u64` block, `u64` offset and `u64` length. A response
//! (`KIND_HTTP_RESPONSE`): `u16` status, `u32` header count, the headers as
//! in a request, the body. With `FLAG_BODY`, a response's body — or a
//! streamed part's (`KIND_HTTP_PART`) whole payload — is instead a
//! reference to where the worker placed it in its arena (the block's `u32`
//! arena index, `u64` block, `u64` offset, `u64` length: [`BODY_REF_BYTES`]);
//! the server writes it from there and frees the block. An error report (`KIND_ERROR`): `u16` HTTP status,
//! `u32` length of a JSON object `{"error", "type"}`, that object, then what
//! the Python half reads (a pickle).

/// The paths the HTTP server answers itself: health, metrics, the API's
/// description. No route may take them.
pub const HEALTH_PATH: &str = "/health";
pub const METRICS_PATH: &str = "/metrics";
pub const OPENAPI_PATH: &str = "/openapi.json";
/// 200 while the process serves at all (a liveness probe).
pub const LIVE_PATH: &str = "/live";
/// 200 while the flow has all its workers and the server is not draining
/// (a readiness probe); 503 otherwise.
pub const READY_PATH: &str = "/ready";
pub const RESERVED_PATHS: [&str; 5] = [
    HEALTH_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    LIVE_PATH,
    READY_PATH,
];

/// The header a request's id travels in: taken from the client when it
/// is usable (see [`usable_request_id`]), made by the front otherwise;
/// forwarded to the workers, echoed in the answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a client (a longer one is replaced).
pub const MAX_REQUEST_ID: usize = 200;
/// The header of a traced answer that carries, from the last worker to the
/// front, when each step handled the task ([`encode_step_times`]); the
/// front takes it off the answer.
pub const STEP_TIMES_HEADER: &str = "x-aqueduct-step-times";
/// Most steps a step-times header describes (the rest are left out).
pub const MAX_STEP_TIMES: usize = 64;

/// True for a request id the front passes on as it is: 1 to
/// [`MAX_REQUEST_ID`] visible ASCII characters, none of which needs
/// escaping in JSON text or a log line (no `"` or `\\`).
pub fn usable_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// When a step handled a task (CLOCK_MONOTONIC nanoseconds, the same in
/// every process of the machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTime {
    pub step: u32,
    pub started_ns: u64,
    pub ended_ns: u64,
}

/// `step:started:ended` per step, joined by `;` (at most
/// [`MAX_STEP_TIMES`]).
pub fn encode_step_times(times: &[StepTime]) -> String {
    let mut out = String::with_capacity(times.len().min(MAX_STEP_TIMES) * 40);
    for (i, t) in times.iter().take(MAX_STEP_TIMES).enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(&format!("{}:{}:{}", t.step, t.started_ns, t.ended_ns));
    }
    out
}

/// What [`encode_step_times`] made (None: something else).
pub fn decode_step_times(text: &[u8]) -> Option<Vec<StepTime>> {
    let text = std::str::from_utf8(text).ok()?;
    if text.is_empty() {
        return Some(Vec::new());
    }
    let mut times = Vec::new();
    for item in text.split(';') {
        if times.len() == MAX_STEP_TIMES {
            return None;
        }
        let mut fields = item.split(':');
        let time = StepTime {
            step: fields.next()?.parse().ok()?,
            started_ns: fields.next()?.parse().ok()?,
            ended_ns: fields.next()?.parse().ok()?,
        };
        if fields.next().is_some() || time.ended_ns < time.started_ns {
            return None;
        }
        times.push(time);
    }
    Some(times)
}

/// A request's parts, borrowed from a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub query: &'a [u8],
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub body: Body<'a>,
}

/// Where a request's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// The rest of the payload.
    Inline(&'a [u8]),
    /// A block of an arena (a big body: it is not copied through the ring).
    Arena(BodyRef),
}

/// A body in an arena: which arena, its block, and the bytes within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRef {
    pub arena: u32,
    pub block: u64,
    pub offset: u64,
    pub len: u64,
}

/// A response's parts, borrowed from a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub body: &'a [u8],
}

/// An error report's summary, borrowed from a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorSummary<'a> {
    /// The HTTP status the error stands for (500 unless the worker knew better).
    pub status: u16,
    /// A JSON object `{"error": message, "type": exception class}`.
    pub json: &'a [u8],
    /// The rest: the Python half's description of the exception.
    pub rest: &'a [u8],
}

/// Appends the encoded request (without an inline body) to `out`: an
/// inline body follows as the message's last part, so it is copied once,
/// into the ring; `in_arena` says where a big body was put instead.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &[u8],
    path: &[u8],
    query: &[u8],
    headers: &[(&[u8], &[u8])],
    in_arena: Option<BodyRef>,
) -> Option<()> {
    out.extend_from_slice(&u16::try_from(method.len()).ok()?.to_le_bytes());
    out.extend_from_slice(method);
    put_bytes(out, path)?;
    put_bytes(out, query)?;
    put_headers(out, headers)?;
    match in_arena {
        None => out.push(0),
        Some(r) => {
            out.push(1);
            encode_body_ref(out, r);
        }
    }
    Some(())
}

/// Bytes of an encoded [`BodyRef`].
pub const BODY_REF_BYTES: usize = 4 + 3 * 8;

/// Appends `r` to `out` ([`BODY_REF_BYTES`] bytes).
pub fn encode_body_ref(out: &mut Vec<u8>, r: BodyRef) {
    out.extend_from_slice(&r.arena.to_le_bytes());
    for word in [r.block, r.offset, r.len] {
        out.extend_from_slice(&word.to_le_bytes());
    }
}

/// The reference `bytes` is exactly (None: it is not one).
pub fn decode_body_ref(bytes: &[u8]) -> Option<BodyRef> {
    if bytes.len() != BODY_REF_BYTES {
        return None;
    }
    read_body_ref(&mut Reader(bytes))
}

fn read_body_ref(r: &mut Reader<'_>) -> Option<BodyRef> {
    Some(BodyRef {
        arena: u32::from_le_bytes(r.array()?),
        block: u64::from_le_bytes(r.array()?),
        offset: u64::from_le_bytes(r.array()?),
        len: u64::from_le_bytes(r.array()?),
    })
}

pub fn decode_request(payload: &[u8]) -> Option<Request<'_>> {
    let mut r = Reader(payload);
    let method_len = usize::from(u16::from_le_bytes(r.array()?));
    let method = r.take(method_len)?;
    let path = r.bytes()?;
    let query = r.bytes()?;
    let headers = r.headers()?;
    let body = match r.array::<1>()? {
        [0] => Body::Inline(r.0),
        [1] => Body::Arena(read_body_ref(&mut r)?),
        _ => return None,
    };
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// Appends an encoded response to `out`.
pub fn encode_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&[u8], &[u8])],
    body: &[u8],
) -> Option<()> {
    out.extend_from_slice(&status.to_le_bytes());
    put_headers(out, headers)?;
    out.extend_from_slice(body);
    Some(())
}

pub fn decode_response(payload: &[u8]) -> Option<Response<'_>> {
    let mut r = Reader(payload);
    let status = u16::from_le_bytes(r.array()?);
    let headers = r.headers()?;
    Some(Response {
        status,
        headers,
        body: r.0,
    })
}

/// The prefix of an error report: its status and JSON summary.
pub fn error_prefix(status: u16, json: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(6 + json.len());
    out.extend_from_slice(&status.to_le_bytes());
    put_bytes(&mut out, json)?;
    Some(out)
}

pub fn split_error(payload: &[u8]) -> Option<ErrorSummary<'_>> {
    let mut r = Reader(payload);
    let status = u16::from_le_bytes(r.array()?);
    let json = r.bytes()?;
    Some(ErrorSummary {
        status,
        json,
        rest: r.0,
    })
}

/// `data` as one Server-Sent Event: each of its lines after `data: `, then
/// the blank line that ends the event (how a streamed part is sent). A
/// line ends at `\n`, `\r\n` or a lone `\r`, as for the client's parser:
/// a part cannot end its event early or add fields of its own.
pub fn server_sent_event(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    let mut bytes = data.iter().peekable();
    while let Some(&b) = bytes.next() {
        match b {
            b'\r' | b'\n' => {
                if b == b'\r' && bytes.peek() == Some(&&b'\n') {
                    bytes.next();
                }
                out.extend_from_slice(b"\ndata: ");
            }
            b => out.push(b),
        }
    }
    out.extend_from_slice(b"\n\n");
    out
}

/// The Server-Sent Event that ends a stream whose task failed: type
/// `error`, the JSON error ([`error_json`]) as its data.
pub fn error_event(message: &str, kind: &str) -> Vec<u8> {
    let json = error_json(message, kind);
    let mut out = Vec::with_capacity(json.len() + 24);
    out.extend_from_slice(b"event: error\n");
    out.extend_from_slice(&server_sent_event(&json));
    out
}

/// `{"error": message, "type": kind}`, escaped as JSON strings must be.
pub fn error_json(message: &str, kind: &str) -> Vec<u8> {
    error_json_with(message, kind, None)
}

/// [`error_json`] with a `"detail"` member: `detail` is JSON text its
/// caller made (the field errors of a request that failed validation).
pub fn error_json_with(message: &str, kind: &str, detail: Option<&str>) -> Vec<u8> {
    let extra = detail.map_or(0, |d| d.len() + 12);
    let mut out = String::with_capacity(message.len() + kind.len() + 24 + extra);
    out.push_str("{\"error\": ");
    push_json_string(&mut out, message);
    out.push_str(", \"type\": ");
    push_json_string(&mut out, kind);
    if let Some(detail) = detail {
        out.push_str(", \"detail\": ");
        out.push_str(detail);
    }
    out.push('}');
    out.into_bytes()
}

pub(crate) fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_le_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

fn put_headers(out: &mut Vec<u8>, headers: &[(&[u8], &[u8])]) -> Option<()> {
    out.extend_from_slice(&u32::try_from(headers.len()).ok()?.to_le_bytes());
    for (name, value) in headers {
        put_bytes(out, name)?;
        put_bytes(out, value)?;
    }
    Some(())
}

/// Reads a payload front to back; every read is bounds-checked (a payload
/// is shared memory: input, not trust).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(u32::from_le_bytes(self.array()?)).ok()?;
        self.take(len)
    }

    fn headers(&mut self) -> Option<Vec<(&'a [u8], &'a [u8])>> {
        let count = u32::from_le_bytes(self.array()?) as usize;
        // each header takes at least 8 bytes: a count beyond that is a lie
        if count > self.0.len() / 8 {
            return None;
        }
        (0..count)
            .map(|_| Some((self.bytes()?, self.bytes()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_sent_events_carry_each_line() {
        assert_eq!(server_sent_event(b"a"), b"data: a\n\n");
        assert_eq!(server_sent_event(b"a\r\nb"), b"data: a\ndata: b\n\n");
        assert_eq!(
            server_sent_event(b"a\revent: x\n\nb"),
            b"data: a\ndata: event: x\ndata: \ndata: b\n\n",
            "a lone CR ends a line too"
        );
        assert_eq!(
            error_event("x", "E"),
            b"event: error\ndata: {\"error\": \"x\", \"type\": \"E\"}\n\n"
        );
    }

    use super::*;

    #[test]
    fn step_times_round_trip_and_refuse_what_is_not_theirs() {
        let times = [
            StepTime {
                step: 0,
                started_ns: 10,
                ended_ns: 25,
            },
            StepTime {
                step: 1,
                started_ns: 30,
                ended_ns: 30,
            },
        ];
        let text = encode_step_times(&times);
        assert_eq!(text, "0:10:25;1:30:30");
        assert_eq!(decode_step_times(text.as_bytes()), Some(times.to_vec()));
        assert_eq!(decode_step_times(b""), Some(Vec::new()));
        for bad in [
            &b"0:10"[..],
            b"0:10:25:1",
            b"0:25:10",
            b"x:1:2",
            b"0:1:2;",
            b"\xff",
        ] {
            assert_eq!(
                decode_step_times(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = vec![
            StepTime {
                step: 0,
                started_ns: 0,
                ended_ns: 0
            };
            MAX_STEP_TIMES + 1
        ];
        assert_eq!(
            decode_step_times(encode_step_times(&many).as_bytes()).map(|t| t.len()),
            Some(MAX_STEP_TIMES)
        );
    }

    #[test]
    fn a_request_id_is_taken_only_when_it_needs_no_escaping() {
        assert!(usable_request_id(b"abc-123_XYZ.~:/"));
        assert!(usable_request_id(&[b'a'; MAX_REQUEST_ID]));
        for bad in [
            &b""[..],
            b"a b",
            b"a\"b",
            b"a\\b",
            b"\x7f",
            b"caf\xc3\xa9",
            &[b'a'; MAX_REQUEST_ID + 1],
        ] {
            assert!(!usable_request_id(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_request_comes_back_as_it_went() {
        let headers: [(&[u8], &[u8]); 2] = [(b"content-type", b"application/json"), (b"x", b"")];
        let mut payload = Vec::new();
        encode_request_head(&mut payload, b"POST", b"/predict", b"a=1", &headers, None)
            .expect("encodes");
        payload.extend_from_slice(b"{\"x\": 1}");
        let request = decode_request(&payload).expect("decodes");
        assert_eq!(request.method, b"POST");
        assert_eq!(request.path, b"/predict");
        assert_eq!(request.query, b"a=1");
        assert_eq!(request.headers, headers.to_vec());
        assert_eq!(request.body, Body::Inline(b"{\"x\": 1}"));
        let big = BodyRef {
            arena: 2,
            block: 65536,
            offset: 65540,
            len: 1 << 23,
        };
        let mut payload = Vec::new();
        encode_request_head(&mut payload, b"PUT", b"/", b"", &[], Some(big)).expect("encodes");
        assert_eq!(
            decode_request(&payload).expect("decodes").body,
            Body::Arena(big)
        );
    }

    #[test]
    fn a_response_comes_back_as_it_went() {
        let mut payload = Vec::new();
        encode_response(&mut payload, 201, &[(b"a", b"b")], b"body").expect("encodes");
        let response = decode_response(&payload).expect("decodes");
        assert_eq!(response.status, 201);
        assert_eq!(response.headers, vec![(&b"a"[..], &b"b"[..])]);
        assert_eq!(response.body, b"body");
    }

    #[test]
    fn truncated_or_lying_payloads_are_refused() {
        let mut payload = Vec::new();
        encode_response(&mut payload, 200, &[(b"name", b"value")], b"").expect("encodes");
        for cut in 0..payload.len() {
            assert!(decode_response(&payload[..cut]).is_none(), "cut at {cut}");
        }
        let mut lying = 200u16.to_le_bytes().to_vec();
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_response(&lying).is_none());
        assert!(decode_request(b"\xff\xff").is_none());
    }

    #[test]
    fn error_reports_start_with_their_summary() {
        let json = error_json("bad \"input\"\n", "ValueError");
        assert_eq!(
            json,
            br#"{"error": "bad \"input\"\n", "type": "ValueError"}"#.to_vec()
        );
        let mut payload = error_prefix(400, &json).expect("prefix");
        payload.extend_from_slice(b"PICKLE");
        let summary = split_error(&payload).expect("splits");
        assert_eq!(
            (summary.status, summary.json, summary.rest),
            (400, &json[..], &b"PICKLE"[..])
        );
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::{bytes, damaged};

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn headers() -> impl Strategy<Value = Headers> {
        vec((bytes(24), bytes(48)), 0..6)
    }

    fn borrowed(headers: &Headers) -> Vec<(&[u8], &[u8])> {
        headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect()
    }

    fn body_ref() -> impl Strategy<Value = Option<BodyRef>> {
        proptest::option::of(
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(arena, block, offset, len)| BodyRef {
                    arena,
                    block,
                    offset,
                    len,
                },
            ),
        )
    }

    #[derive(Debug, Clone)]
    struct Sent {
        method: Vec<u8>,
        path: Vec<u8>,
        query: Vec<u8>,
        headers: Headers,
        in_arena: Option<BodyRef>,
        body: Vec<u8>,
    }

    fn request() -> impl Strategy<Value = Sent> {
        (
            bytes(12),
            bytes(64),
            bytes(32),
            headers(),
            body_ref(),
            bytes(64),
        )
            .prop_map(|(method, path, query, headers, in_arena, body)| Sent {
                method,
                path,
                query,
                headers,
                in_arena,
                body,
            })
    }

    fn encoded(sent: &Sent) -> Vec<u8> {
        let mut out = Vec::new();
        let (method, path, query) = (&sent.method, &sent.path, &sent.query);
        encode_request_head(
            &mut out,
            method,
            path,
            query,
            &borrowed(&sent.headers),
            sent.in_arena,
        )
        .expect("encodes");
        if sent.in_arena.is_none() {
            out.extend_from_slice(&sent.body);
        }
        out
    }

    fn encoded_response() -> impl Strategy<Value = Vec<u8>> {
        (any::<u16>(), headers(), bytes(64)).prop_map(|(status, headers, body)| {
            let mut out = Vec::new();
            encode_response(&mut out, status, &borrowed(&headers), &body).expect("encodes");
            out
        })
    }

    fn encoded_error() -> impl Strategy<Value = Vec<u8>> {
        (any::<u16>(), bytes(64), bytes(32)).prop_map(|(status, json, rest)| {
            let mut out = error_prefix(status, &json).expect("a short summary");
            out.extend_from_slice(&rest);
            out
        })
    }

    /// Every byte a decoded layout borrows lies in the payload, in order:
    /// what it decoded accounts for the whole payload.
    fn request_len(r: &Request<'_>) -> usize {
        let headers: usize = r.headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
        let body = match r.body {
            Body::Inline(b) => b.len(),
            Body::Arena(_) => 28,
        };
        2 + r.method.len() + 4 + r.path.len() + 4 + r.query.len() + 4 + headers + 1 + body
    }

    proptest! {
        /// Header text from anyone: decoding never panics, and what it
        /// decodes encodes back to the same times.
        #[test]
        fn fuzz_step_times(text in vec(any::<u8>(), 0..96)) {
            if let Some(times) = decode_step_times(&text) {
                let again = encode_step_times(&times);
                prop_assert_eq!(decode_step_times(again.as_bytes()), Some(times));
            }
        }

        #[test]
        fn requests_responses_and_errors_come_back_as_they_went(
            sent in request(),
            status in any::<u16>(),
            headers in headers(),
            body in bytes(64),
        ) {
            let payload = encoded(&sent);
            let got = decode_request(&payload).expect("decodes");
            prop_assert_eq!(got.method, &sent.method[..]);
            prop_assert_eq!(got.path, &sent.path[..]);
            prop_assert_eq!(got.query, &sent.query[..]);
            prop_assert_eq!(got.headers, borrowed(&sent.headers));
            let want = sent.in_arena.map_or(Body::Inline(&sent.body), Body::Arena);
            prop_assert_eq!(got.body, want);

            let mut payload = Vec::new();
            encode_response(&mut payload, status, &borrowed(&headers), &body).expect("encodes");
            let got = decode_response(&payload).expect("decodes");
            prop_assert_eq!((got.status, got.headers, got.body), (status, borrowed(&headers), &body[..]));

            let mut payload = error_prefix(status, &body).expect("prefix");
            payload.extend_from_slice(&sent.path);
            let got = split_error(&payload).expect("splits");
            prop_assert_eq!((got.status, got.json, got.rest), (status, &body[..], &sent.path[..]));
        }

        #[test]
        fn any_bytes_decode_to_what_they_hold_or_are_refused(
            payload in prop_oneof![
                bytes(256),
                request().prop_flat_map(|sent| damaged(encoded(&sent))),
                encoded_response().prop_flat_map(damaged),
                encoded_error().prop_flat_map(damaged),
            ],
        ) {
            if let Some(request) = decode_request(&payload) {
                let arena = matches!(request.body, Body::Arena(_));
                let len = request_len(&request);
                // an arena reference may be followed by bytes nobody reads
                prop_assert!(len == payload.len() || (arena && len <= payload.len()));
            }
            if let Some(response) = decode_response(&payload) {
                let headers: usize = response.headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
                prop_assert_eq!(2 + 4 + headers + response.body.len(), payload.len());
            }
            if let Some(error) = split_error(&payload) {
                prop_assert_eq!(2 + 4 + error.json.len() + error.rest.len(), payload.len());
            }
        }

        #[test]
        fn any_text_makes_one_event_and_valid_json(message in ".{0,64}", kind in "[A-Za-z]{0,16}", data in bytes(128)) {
            let json = error_json(&message, &kind);
            let text = String::from_utf8(json).expect("utf-8");
            prop_assert!(!text.contains('\n'), "one line: {}", text);
            let event = server_sent_event(&data);
            // one event of data lines: no CR, every line a data field, and
            // the blank line that ends it only at its end
            prop_assert!(!event.contains(&b'\r'));
            prop_assert!(event.ends_with(b"\n\n"));
            let lines: Vec<&[u8]> = event[..event.len() - 2].split(|&b| b == b'\n').collect();
            prop_assert!(lines.iter().all(|line| line.starts_with(b"data: ")));
        }
    }
}

#[cfg(test)]
mod body_ref_tests {
    use super::{decode_body_ref, encode_body_ref, BodyRef, BODY_REF_BYTES};

    #[test]
    fn a_body_ref_round_trips_and_no_other_length_is_one() {
        let r = BodyRef {
            arena: 3,
            block: 1 << 16,
            offset: (1 << 16) + 8,
            len: 64 << 20,
        };
        let mut out = Vec::new();
        encode_body_ref(&mut out, r);
        assert_eq!(out.len(), BODY_REF_BYTES);
        assert_eq!(decode_body_ref(&out), Some(r));
        assert_eq!(decode_body_ref(&out[1..]), None);
        out.push(0);
        assert_eq!(decode_body_ref(&out), None);
    }
}
