//! The access log: a line per answered request, in the Common Log Format
//! plus the seconds it took, written by a thread of its own — no Python,
//! and a connection never waits for the disk. Lines are flushed whenever
//! the writer has caught up; when it falls too far behind, lines are
//! dropped, and counted in the next line it writes.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines that may wait for the writer before new ones are dropped.
const BACKLOG: usize = 65_536;

/// Where the log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    File(String),
}

impl Destination {
    /// `-` is stderr; anything else a file, appended to.
    pub fn parse(target: &str) -> Destination {
        if target == "-" {
            Destination::Stderr
        } else {
            Destination::File(target.to_owned())
        }
    }
}

/// What one line says about a request.
pub struct Entry<'a> {
    pub peer: SocketAddr,
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    /// The body's length, when known before it is sent (not for streams).
    pub bytes: Option<u64>,
    /// Until the response's head (for a stream: its first part).
    pub took: Duration,
    /// The request's id (`X-Request-ID`), which needs no escaping.
    pub request_id: &'a str,
}

/// The sending half; dropping it ends the writer once it has written all.
pub struct AccessLog {
    lines: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
    writer: Option<JoinHandle<()>>,
}

impl AccessLog {
    pub fn open(destination: &Destination) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match destination {
            Destination::Stderr => Box::new(io::stderr()),
            Destination::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let (lines, received) = sync_channel(BACKLOG);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = std::thread::Builder::new()
            .name("aqueduct-access-log".into())
            .spawn({
                let dropped = Arc::clone(&dropped);
                move || write_lines(&received, BufWriter::new(out), &dropped)
            })?;
        Ok(AccessLog {
            lines: Some(lines),
            dropped,
            writer: Some(writer),
        })
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let Some(lines) = &self.lines else { return };
        match lines.try_send(format_line(entry, SystemTime::now())) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        drop(self.lines.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn write_lines(received: &Receiver<String>, mut out: impl Write, dropped: &AtomicU64) {
    // a failed write is not retried: the log must never stop the server
    while let Ok(line) = received.recv() {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(
                out,
                "# {lost} access log lines dropped: the log fell behind"
            );
        }
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = received.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
}

/// `peer - - [day/Mon/year:HH:MM:SS +0000] "METHOD target VERSION" status bytes seconds request-id`.
pub fn format_line(entry: &Entry<'_>, now: SystemTime) -> String {
    let bytes = entry
        .bytes
        .map_or_else(|| "-".to_owned(), |n| n.to_string());
    format!(
        "{} - - [{}] \"{} {} {}\" {} {} {:.6} {}\n",
        entry.peer.ip(),
        clf_time(now),
        entry.method,
        printable(entry.target),
        entry.version,
        entry.status,
        bytes,
        entry.took.as_secs_f64(),
        printable(entry.request_id),
    )
}

/// The target as one token of the line: what could end it or fake a new
/// one (quotes, controls, spaces) escaped as `\xHH`.
fn printable(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    for b in target.bytes() {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `now` in the Common Log Format, UTC.
fn clf_time(now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize % 12],
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// (year, month 1..=12, day 1..=31) of the `days`-th day after 1970-01-01
/// (Howard Hinnant's days-to-civil, for the proleptic Gregorian calendar).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_the_common_log_format_and_its_seconds() {
        let entry = Entry {
            peer: "127.0.0.1:4242".parse().expect("an address"),
            method: "POST",
            target: "/predict?q=\"a b\"",
            version: "HTTP/1.1",
            status: 200,
            bytes: Some(17),
            took: Duration::from_micros(1500),
            request_id: "r-1",
        };
        // 2026-12-03 11:47:41 UTC
        let now = UNIX_EPOCH + Duration::from_secs(1_796_298_461);
        assert_eq!(
            format_line(&entry, now),
            "127.0.0.1 - - [03/Dec/2026:11:47:41 +0000] \
             \"POST /predict?q=\\x22a\\x20b\\x22 HTTP/1.1\" 200 17 0.001500 r-1\n"
        );
    }

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
    }

    #[test]
    fn every_line_is_written_before_the_log_closes() {
        let path = std::env::temp_dir().join(format!("aqueduct-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::open(&Destination::File(path.display().to_string())).expect("opens");
        for status in [200, 404, 503] {
            log.record(&Entry {
                peer: "[::1]:80".parse().expect("an address"),
                method: "GET",
                target: "/",
                version: "HTTP/1.1",
                status,
                bytes: None,
                took: Duration::ZERO,
                request_id: "-",
            });
        }
        drop(log);
        let text = std::fs::read_to_string(&path).expect("written");
        let _ = std::fs::remove_file(&path);
        let statuses: Vec<&str> = text
            .lines()
            .map(|l| l.split(' ').nth(8).unwrap_or(""))
            .collect();
        assert_eq!(statuses, ["200", "404", "503"], "{text}");
    }
}
