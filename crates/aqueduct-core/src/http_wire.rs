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
//! in a request, the body. An error report (`KIND_ERROR`): `u16` HTTP status,
//! `u32` length of a JSON object `{"error", "type"}`, that object, then what
//! the Python half reads (a pickle).

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
            out.extend_from_slice(&r.arena.to_le_bytes());
            for word in [r.block, r.offset, r.len] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
    }
    Some(())
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
        [1] => Body::Arena(BodyRef {
            arena: u32::from_le_bytes(r.array()?),
            block: u64::from_le_bytes(r.array()?),
            offset: u64::from_le_bytes(r.array()?),
            len: u64::from_le_bytes(r.array()?),
        }),
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
/// the blank line that ends the event (how a streamed part is sent).
pub fn server_sent_event(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
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
    let mut out = String::with_capacity(message.len() + kind.len() + 24);
    out.push_str("{\"error\": ");
    push_json_string(&mut out, message);
    out.push_str(", \"type\": ");
    push_json_string(&mut out, kind);
    out.push('}');
    out.into_bytes()
}

fn push_json_string(out: &mut String, text: &str) {
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
            error_event("x", "E"),
            b"event: error\ndata: {\"error\": \"x\", \"type\": \"E\"}\n\n"
        );
    }

    use super::*;

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
