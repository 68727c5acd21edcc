//! The two clocks of a connection between requests: how long a client may
//! take to send a request's head once it started one (or once it
//! connected), and how long a keep-alive connection may sit idle after its
//! last answer. hyper's own header timer starts as soon as it waits for a
//! head, so it cannot tell an idle connection from a slow head; this
//! wrapper of the socket can, because the service tells it when a request
//! is in progress ([`Activity`]). While one is, neither clock runs (the
//! body and the answer have their own timeouts).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// While a request is in progress, how often a pending read looks again
/// whether it still is (its end may come while hyper's read is pending).
const BUSY_RECHECK: Duration = Duration::from_millis(500);

/// Requests of one connection begun and ended (their responses sent, or
/// dropped): the service's side of the clocks.
#[derive(Debug, Default)]
pub struct Activity {
    begun: AtomicUsize,
    ended: AtomicUsize,
    /// The ordinal (1-based) of a head refused by the connection's framing,
    /// or 0.
    refused: AtomicUsize,
}

impl Activity {
    /// A request's head was read: until the guard drops, no clock runs.
    pub fn begin(self: &Arc<Self>) -> InProgress {
        self.begun.fetch_add(1, Ordering::AcqRel);
        InProgress(Arc::clone(self))
    }

    /// Requests whose heads were read and handed to the service.
    pub fn begun(&self) -> usize {
        self.begun.load(Ordering::Acquire)
    }

    /// Head number `ordinal` (1-based) is refused: it gets a 400, and the
    /// connection closes.
    pub fn refuse(&self, ordinal: usize) {
        self.refused.store(ordinal, Ordering::Release);
    }

    /// Whether head number `ordinal` was refused.
    pub fn refused(&self, ordinal: usize) -> bool {
        self.refused.load(Ordering::Acquire) == ordinal
    }

    /// (begun, ended): a request is in progress while they differ.
    fn counts(&self) -> (usize, usize) {
        let ended = self.ended.load(Ordering::Acquire);
        (self.begun.load(Ordering::Acquire), ended)
    }
}

/// A request in progress; dropped when its response is done.
#[derive(Debug)]
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::AcqRel);
    }
}

/// The clocks' lengths.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For a request's head, from its first byte (or from connecting).
    pub header_timeout: Duration,
    /// For the next request after an answer.
    pub idle_timeout: Duration,
    /// For the client to take bytes of an answer (a write that cannot go
    /// on for this long ends the connection).
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a head: the header clock runs.
    Head,
    /// Between requests: the idle clock runs.
    Idle,
    /// A request is in progress.
    Busy,
}

/// A socket whose reads fail with `TimedOut` when a clock runs out (hyper
/// then closes the connection).
pub struct TimedConnection<T> {
    inner: T,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// How long a write may wait for the client to read.
    write_timeout: Duration,
    /// Running while a write waits (the client reads nothing).
    write_timer: Option<Pin<Box<Sleep>>>,
    phase: Phase,
    /// `ended` when last looked at: a request may begin and end between
    /// two reads.
    seen_ended: usize,
    timer: Pin<Box<Sleep>>,
}

impl<T> TimedConnection<T> {
    /// A fresh connection: it has `header_timeout` to send its first head.
    pub fn new(inner: T, activity: Arc<Activity>, limits: Limits) -> Self {
        let Limits {
            header_timeout,
            idle_timeout,
            write_timeout,
        } = limits;
        TimedConnection {
            inner,
            activity,
            header_timeout,
            idle_timeout,
            write_timeout,
            write_timer: None,
            phase: Phase::Head,
            seen_ended: 0,
            timer: Box::pin(tokio::time::sleep(header_timeout)),
        }
    }

    fn enter(&mut self, phase: Phase) {
        let wait = match phase {
            Phase::Head => self.header_timeout,
            Phase::Idle => self.idle_timeout,
            Phase::Busy => BUSY_RECHECK,
        };
        self.phase = phase;
        self.timer.as_mut().reset(Instant::now() + wait);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedConnection<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let (begun, ended) = self.activity.counts();
            if begun != ended {
                if self.phase != Phase::Busy {
                    self.enter(Phase::Busy);
                }
            } else if self.phase == Phase::Busy || ended != self.seen_ended {
                self.enter(Phase::Idle); // the last request is done
            }
            self.seen_ended = ended;
            let before = buf.filled().len();
            let read = Pin::new(&mut self.inner).poll_read(cx, buf);
            if read.is_ready() {
                if self.phase == Phase::Idle && buf.filled().len() > before {
                    self.enter(Phase::Head); // a new request starts
                }
                return read;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match self.phase {
                Phase::Busy => self.enter(Phase::Busy), // look again, later
                Phase::Head => return Poll::Ready(Err(timed_out("a request's head"))),
                Phase::Idle => return Poll::Ready(Err(timed_out("the next request"))),
            }
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} did not come in time"),
    )
}

impl<T> TimedConnection<T> {
    /// `polled`, a write's or a flush's outcome, unless the client has let
    /// writes wait for longer than the write timeout.
    fn unless_stalled<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.write_timer = None;
            return polled;
        }
        let wait = self.write_timeout;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(timed_out("the client's reading of its answer"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedConnection<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.unless_stalled(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.unless_stalled(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.unless_stalled(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn timed(
        activity: &Arc<Activity>,
    ) -> (
        TimedConnection<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (server, client) = tokio::io::duplex(1024);
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(20),
        };
        (
            TimedConnection::new(server, Arc::clone(activity), limits),
            client,
        )
    }

    async fn read_some(conn: &mut TimedConnection<tokio::io::DuplexStream>) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        conn.read(&mut buf).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_has_the_header_timeout_and_a_quiet_connection_the_idle_one() {
        let activity = Arc::new(Activity::default());
        let (mut conn, mut client) = timed(&activity);
        client.write_all(b"GET / HT").await.expect("written");
        assert_eq!(read_some(&mut conn).await.expect("read"), 8);
        let start = Instant::now();
        let err = read_some(&mut conn).await.expect_err("the head never ends");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed().as_secs(), 10, "the header timeout");

        let (mut conn, mut client) = timed(&activity);
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("written");
        read_some(&mut conn).await.expect("the head");
        let request = activity.begin();
        let start = Instant::now();
        let reading = tokio::spawn(async move { (read_some(&mut conn).await, start.elapsed()) });
        tokio::time::sleep(Duration::from_secs(100)).await; // a long request: no clock
        drop(request);
        let (read, took) = reading.await.expect("joined");
        assert_eq!(read.expect_err("idle").kind(), io::ErrorKind::TimedOut);
        // noticed within the recheck, then idle for its own timeout
        assert!((130..=131).contains(&took.as_secs()), "{took:?}");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_request_starts_the_header_clock_again() {
        let activity = Arc::new(Activity::default());
        let (mut conn, mut client) = timed(&activity);
        drop(activity.begin()); // one request done: idle
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(25)).await;
            client.write_all(b"GET").await.expect("written");
            client
        });
        assert_eq!(
            read_some(&mut conn).await.expect("within the idle timeout"),
            3
        );
        let start = Instant::now();
        let err = read_some(&mut conn).await.expect_err("the head never ends");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed().as_secs(), 10);
        drop(writer.await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_cut_at_the_write_timeout() {
        let activity = Arc::new(Activity::default());
        let (mut conn, _client) = timed(&activity);
        let _request = activity.begin();
        conn.write_all(&[b'x'; 1024])
            .await
            .expect("room for a buffer's worth");
        let start = Instant::now();
        let err = conn.write_all(b"more").await.expect_err("nobody reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed().as_secs(), 20);

        // a slow reader that keeps reading is not cut
        let (mut conn, mut slow) = timed(&activity);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut got = 0;
            while got < 8192 {
                tokio::time::sleep(Duration::from_secs(15)).await;
                got += slow.read(&mut buf).await.expect("read");
            }
            got
        });
        conn.write_all(&[b'y'; 8192])
            .await
            .expect("read slowly, but read");
        assert!(reader.await.expect("joined") >= 8192);
    }
}
