//! hyper answers a request it cannot parse by itself — a 4xx with an empty
//! body, then it closes the connection — before any service sees it. Every
//! other error of this server is JSON `{"error", "type"}`; this connection
//! wrapper makes those JSON too. It compares the requests the service was
//! given (the connection's `Activity`) with the response heads written: a
//! head written beyond them is hyper's own, and a bodiless 4xx one is
//! rewritten.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aqueduct_core::http_wire::error_json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::timed_connection::Activity;

/// A connection whose bodiless 4xx responses become JSON ones.
pub struct JsonErrors<T> {
    inner: T,
    /// Requests the service was given on this connection.
    activity: Arc<Activity>,
    /// Response heads written on it.
    heads: usize,
    /// A rewritten response, and how much of it was written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> JsonErrors<T> {
    /// Wraps `inner`, the socket of the connection whose requests
    /// `activity` counts.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        JsonErrors {
            inner,
            activity,
            heads: 0,
            pending: None,
        }
    }
}

/// The JSON response for hyper's own bodiless 4xx `head`, if it is one.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let status_line = text.strip_prefix("HTTP/1.1 4")?.split("\r\n").next()?;
    if !text
        .to_ascii_lowercase()
        .contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let (code, reason) = status_line.split_once(' ')?;
    let body = error_json(&format!("malformed request: {reason}"), "BadRequest");
    let mut out = format!(
        "HTTP/1.1 4{code} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes what is left of a rewritten response.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    if *written == bytes.len() {
                        self.pending = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        let head = buf.starts_with(b"HTTP/1.1 ");
        let hypers = head && self.heads >= self.activity.begun();
        if let Some(json) = hypers.then(|| rewrite(buf)).flatten() {
            self.heads += 1;
            self.pending = Some((json, 0));
            let _ = self.drain(cx)?; // the rest goes on the next write or flush
            return Poll::Ready(Ok(buf.len()));
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if head && matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.heads += 1; // counted once written: a write may be retried
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn hypers_bodiless_4xx_become_json() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let json = String::from_utf8(rewrite(hyper).expect("rewritten")).expect("utf-8");
        assert!(json.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{json}");
        assert!(
            json.ends_with(r#"{"error": "malformed request: Bad Request", "type": "BadRequest"}"#)
        );
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-length: 40\r\n\r\n";
        assert!(
            rewrite(ours).is_none(),
            "responses with a body are left alone"
        );
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
