//! Where each request of a connection begins and ends, read from the raw
//! bytes before hyper sees them, so that a head whose body length a proxy in
//! front could read differently from us (RFC 9112 §6.1: both
//! `Content-Length` and `Transfer-Encoding`) is refused. hyper cannot be
//! asked: it keeps `Transfer-Encoding` and drops `Content-Length` from the
//! header map it hands over. A refused head is the last thing hyper reads
//! on its connection: what the client sends after it is read and thrown
//! away, the service answers 400 and the connection closes.
//!
//! Heads are parsed with `httparse`, as hyper parses them; bodies are
//! followed by their `Content-Length` or through their chunks. Where the
//! bytes stop making sense (hyper refuses them too, and closes), nothing
//! after them reaches hyper either.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::timed_connection::Activity;

/// At most this many headers in a head (hyper's own limit).
const MAX_HEADERS: usize = 100;
/// A head still unfinished at this size is one hyper refuses (431).
const MAX_HEAD: usize = 1 << 20;

/// What the bytes read so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A head, begun or not yet.
    Head,
    /// So many more bytes of a `Content-Length` body.
    Sized(u64),
    /// A chunked body, at this point of its framing.
    Chunked(Chunk),
    /// Nothing more reaches hyper: a head was refused, or the framing lost.
    Closed,
}

/// Where a chunked body's reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The chunk size line (its hex digits so far, and whether its
    /// extension has begun).
    Size { size: u64, digits: bool, rest: bool },
    /// So many bytes of chunk data, then its line end.
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// The trailer section, at the start of a line or not.
    Trailer { line_start: bool },
}

/// How a head frames the body after it.
enum Body {
    Sized(u64),
    Chunked,
    /// Both lengths, or a `Transfer-Encoding` hyper would not take.
    Refused,
    /// Framing this module does not follow (hyper refuses it or upgrades).
    Lost,
}

/// The framing of one connection's requests.
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// A head begun but not yet ended.
    head: Vec<u8>,
    /// Heads ended so far.
    heads: usize,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head,
            head: Vec::new(),
            heads: 0,
        }
    }
}

/// What [`Framing::feed`] made of some bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// All may go to hyper.
    All,
    /// Only the first so many may; head number `.1` (1-based) is refused
    /// if `.1` is not 0.
    Upto(usize, usize),
}

impl Framing {
    /// Whether nothing more reaches hyper.
    pub fn closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Follows `bytes`, the next read of the connection.
    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Head => match self.head_end(&bytes[at..]) {
                    None => return Fed::All,
                    Some((end, body)) => {
                        at += end;
                        self.heads += 1;
                        self.state = match body {
                            Body::Sized(0) => State::Head,
                            Body::Sized(n) => State::Sized(n),
                            Body::Chunked => State::Chunked(Chunk::Size {
                                size: 0,
                                digits: false,
                                rest: false,
                            }),
                            Body::Refused => {
                                self.state = State::Closed;
                                return Fed::Upto(at, self.heads);
                            }
                            Body::Lost => State::Closed,
                        };
                    }
                },
                State::Sized(left) => {
                    let take = left.min((bytes.len() - at) as u64);
                    at += take as usize; // at most bytes.len()
                    self.state = match left - take {
                        0 => State::Head,
                        n => State::Sized(n),
                    };
                }
                State::Chunked(chunk) => {
                    let (used, next) = chunk.step(&bytes[at..]);
                    at += used;
                    self.state = next;
                }
                State::Closed => return Fed::Upto(at, 0),
            }
        }
        Fed::All
    }

    /// Where in `bytes` the head being read ends (counted from the start of
    /// `bytes`) and how it frames its body; `None` if it does not end there.
    fn head_end(&mut self, bytes: &[u8]) -> Option<(usize, Body)> {
        let earlier = self.head.len();
        let whole: &[u8] = if earlier == 0 {
            bytes
        } else {
            self.head.extend_from_slice(bytes);
            &self.head
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = match request.parse(whole) {
            Ok(httparse::Status::Complete(n)) => Some((n - earlier, framing_of(&request))),
            Ok(httparse::Status::Partial) if whole.len() < MAX_HEAD => {
                if earlier == 0 {
                    self.head.extend_from_slice(bytes);
                }
                return None;
            }
            // hyper refuses it too (and closes the connection)
            Ok(httparse::Status::Partial) | Err(_) => Some((bytes.len(), Body::Lost)),
        };
        self.head.clear();
        parsed
    }
}

/// How the head `request` frames its body, as hyper reads it.
fn framing_of(request: &httparse::Request<'_, '_>) -> Body {
    let mut length: Option<u64> = None;
    let mut lengths = false;
    let mut encodings = false;
    let mut chunked = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            encodings = true;
            let last = header.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if header.name.eq_ignore_ascii_case("content-length") {
            lengths = true;
            let value = std::str::from_utf8(header.value).ok();
            match (value.and_then(|v| v.trim().parse::<u64>().ok()), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(seen)) if n == seen => {}
                _ => return Body::Lost, // hyper refuses it
            }
        }
    }
    if encodings && (lengths || !chunked || request.version != Some(1)) {
        return Body::Refused;
    }
    if request.method == Some("CONNECT") {
        return Body::Lost;
    }
    if chunked {
        return Body::Chunked;
    }
    Body::Sized(length.unwrap_or(0))
}

impl Chunk {
    /// Reads `bytes` from this point: how many it used, and the state after.
    fn step(self, bytes: &[u8]) -> (usize, State) {
        let mut chunk = self;
        let mut i = 0;
        while i < bytes.len() {
            if let Chunk::Data(left) = chunk {
                // the rest of this chunk's data is skipped at once
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize; // at most bytes.len()
                chunk = match left - take {
                    0 => Chunk::DataEnd,
                    n => Chunk::Data(n),
                };
                continue;
            }
            let byte = bytes[i];
            i += 1;
            chunk = match chunk {
                Chunk::Size { size, digits, rest } => {
                    if byte == b'\n' {
                        match (digits, size) {
                            (false, _) => return (i, State::Closed),
                            (true, 0) => Chunk::Trailer { line_start: true },
                            (true, n) => Chunk::Data(n),
                        }
                    } else if rest {
                        chunk
                    } else if let Some(digit) = (byte as char).to_digit(16) {
                        let Some(size) = size.checked_mul(16).map(|s| s + u64::from(digit)) else {
                            return (i, State::Closed);
                        };
                        Chunk::Size {
                            size,
                            digits: true,
                            rest: false,
                        }
                    } else {
                        Chunk::Size {
                            size,
                            digits,
                            rest: true,
                        }
                    }
                }
                Chunk::DataEnd if byte == b'\n' => Chunk::Size {
                    size: 0,
                    digits: false,
                    rest: false,
                },
                Chunk::Data(_) | Chunk::DataEnd => chunk,
                Chunk::Trailer { line_start: true } if byte == b'\n' => return (i, State::Head),
                Chunk::Trailer { line_start } => Chunk::Trailer {
                    line_start: byte == b'\n' || (line_start && byte == b'\r'),
                },
            };
        }
        (bytes.len(), State::Chunked(chunk))
    }
}

/// A connection whose reads pass through a [`Framing`]: a refused head is
/// the last thing read through it, and its ordinal goes to `activity`.
pub struct Framed<T> {
    inner: T,
    framing: Framing,
    activity: Arc<Activity>,
}

impl<T> Framed<T> {
    /// Wraps `inner`, the socket of the connection `activity` counts.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Framed {
            inner,
            framing: Framing::default(),
            activity,
        }
    }
}

impl<T: AsyncRead + Unpin> Framed<T> {
    /// Reads and throws away what the client sends until it would block,
    /// ends or fails (so that the clocks run and a leaving client is seen).
    fn discard(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Framed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.framing.closed() {
            return self.discard(cx);
        }
        let before = buf.filled().len();
        if let Err(e) = std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf)) {
            return Poll::Ready(Err(e));
        }
        if let Fed::Upto(n, refused) = self.framing.feed(&buf.filled()[before..]) {
            buf.set_filled(before + n);
            if refused != 0 {
                self.activity.refuse(refused);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Framed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{Fed, Framing};

    fn fed_in_pieces(bytes: &[u8], piece: usize) -> (usize, Vec<Fed>) {
        let mut framing = Framing::default();
        let outcomes = bytes.chunks(piece).map(|p| framing.feed(p)).collect();
        (framing.heads, outcomes)
    }

    #[test]
    fn sized_and_chunked_bodies_are_followed_to_the_next_head_in_any_pieces() {
        let requests: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            5;ext=1\r\nGET /\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n\
            GET /b HTTP/1.1\r\n\r\n\r\nGET /c HTTP/1.1\nHost: x\n\n";
        for piece in [1, 2, 3, 7, 64, requests.len()] {
            let (heads, outcomes) = fed_in_pieces(requests, piece);
            assert_eq!(heads, 4, "pieces of {piece}");
            assert!(outcomes.iter().all(|o| *o == Fed::All), "pieces of {piece}");
        }
    }

    #[test]
    fn a_head_with_both_lengths_is_the_last_one_read_whatever_its_body() {
        for head in [
            &b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"[..],
            b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            b"Transfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n",
            b"Transfer-Encoding: gzip\r\n",
            b"Content-Length: 3\nTransfer-Encoding: chunked\n",
        ] {
            let mut sent = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\n".to_vec();
            sent.extend_from_slice(head);
            sent.extend_from_slice(b"\r\n3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
            let blank = sent.windows(4).position(|w| w == b"\r\n3\r");
            let head_end = blank.expect("a blank line") + 2;
            let mut framing = Framing::default();
            let fed = framing.feed(&sent);
            assert_eq!(
                fed,
                Fed::Upto(head_end, 2),
                "{}",
                String::from_utf8_lossy(head)
            );
            assert!(framing.closed());
            assert_eq!(framing.feed(b"GET / HTTP/1.1\r\n\r\n"), Fed::Upto(0, 0));
        }
    }

    #[test]
    fn what_hyper_refuses_ends_the_framing() {
        for sent in [
            &b"NOT HTTP AT ALL\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 8\r\nContent-Length: 9\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let mut framing = Framing::default();
            framing.feed(sent);
            assert!(framing.closed(), "{}", String::from_utf8_lossy(sent));
        }
    }

    proptest::proptest! {
        /// Network bytes never panic the framing, and how they are cut into
        /// reads does not change what it makes of them (past bytes hyper
        /// refuses, what more of them reaches it does not matter).
        #[test]
        fn any_bytes_in_any_pieces_frame_alike(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            piece in 1usize..64,
        ) {
            let mut whole = Framing::default();
            let at_once = whole.feed(&bytes);
            let mut cut = Framing::default();
            let mut passed = 0;
            let mut refused = 0;
            for p in bytes.chunks(piece) {
                match cut.feed(p) {
                    Fed::All => passed += p.len(),
                    Fed::Upto(n, r) => {
                        passed += n;
                        refused = refused.max(r);
                    }
                }
            }
            let expected = match at_once {
                Fed::All => (bytes.len(), 0),
                Fed::Upto(n, r) => (n, r),
            };
            proptest::prop_assert_eq!(refused, expected.1);
            if refused != 0 || !whole.closed() {
                proptest::prop_assert_eq!(passed, expected.0);
            }
            proptest::prop_assert_eq!((whole.heads, whole.closed()), (cut.heads, cut.closed()));
        }
    }
}
