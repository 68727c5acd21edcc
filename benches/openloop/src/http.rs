//! One HTTP/1.1 exchange on a kept-alive connection: the request is bytes
//! made once; the response is read up to the end of its body
//! (Content-Length or chunked), which is all a load generator needs.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request's bytes: `method path`, `headers`, `body`.
pub fn request(host: &str, path: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n");
    for header in headers {
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The status of the response and whether the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub keep_alive: bool,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Sends `request` on `stream` and reads the whole response.
pub async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<Response> {
    stream.write_all(request).await?;
    buf.clear();
    let head_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let (mut length, mut chunked, mut keep_alive) = (None, false, true);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if chunked {
        while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
            read_more(stream, buf).await?;
        }
    } else {
        let want = head_end + length.unwrap_or(0);
        while buf.len() < want {
            read_more(stream, buf).await?;
        }
    }
    Ok(Response { status, keep_alive })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn a_request_carries_its_headers_and_length() {
        let bytes = request("h:1", "/p", &["X-A: 1".into()], b"{}");
        assert_eq!(
            bytes,
            b"POST /p HTTP/1.1\r\nHost: h:1\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn responses_are_read_to_the_end_of_their_body() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await?;
            let mut request = [0u8; 1]; // each request is one byte
            socket.read_exact(&mut request).await?;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel")
                .await?;
            socket.write_all(b"lo").await?;
            socket.read_exact(&mut request).await?;
            socket
                .write_all(b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nab\r\n0\r\n\r\n")
                .await?;
            io::Result::Ok(())
        });
        let mut stream = TcpStream::connect(addr).await?;
        let mut buf = Vec::new();
        let first = exchange(&mut stream, b"x", &mut buf).await?;
        assert_eq!(
            first,
            Response {
                status: 200,
                keep_alive: true
            }
        );
        let second = exchange(&mut stream, b"y", &mut buf).await?;
        assert_eq!(
            second,
            Response {
                status: 429,
                keep_alive: false
            }
        );
        server.await.map_err(io::Error::other)?
    }
}
