//! `openloop`: an open-loop HTTP load generator, for `make bench-slo`.
//!
//! Requests are sent at Poisson arrival times at `--rate` per second,
//! whether or not earlier ones were answered: each scheduled request takes
//! an idle kept-alive connection or opens a new one (up to
//! `--connections`; past that it waits for one, and the wait counts), and
//! its latency is measured from its *scheduled* send time, so a server that
//! stalls cannot hide its queue behind a generator that waits for it (no
//! coordinated omission, as in wrk2). One thread, on a current-thread tokio
//! runtime: on a 2-core machine it leaves the other core to the server.
//! Timer wake-ups are about 1 ms apart, so requests due in between go out
//! together at the next one — their latency still counts from their
//! scheduled time, against the server.
//!
//! ```text
//! openloop --url http://127.0.0.1:8000/inference --body '[1,2]' \
//!     --header 'Content-Type: application/json' --rate 2000 --duration 5 \
//!     --warmup 1 --objective-ms 50
//! ```
//!
//! Prints one JSON object (see `report.rs`) for the requests scheduled after
//! the warm-up.

mod arrivals;
mod http;
mod report;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use arrivals::Arrivals;
use report::{Outcome, Tally};

#[derive(Debug)]
struct Args {
    addr: String,
    path: String,
    headers: Vec<String>,
    body: Vec<u8>,
    rate: f64,
    duration: f64,
    warmup: f64,
    objective_ns: u64,
    connections: usize,
    timeout: Duration,
    seed: u64,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        addr: String::new(),
        path: String::new(),
        headers: Vec::new(),
        body: Vec::new(),
        rate: 0.0,
        duration: 5.0,
        warmup: 1.0,
        objective_ns: 50_000_000,
        connections: 4096,
        timeout: Duration::from_secs(10),
        seed: 1,
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--url" => {
                let rest = value
                    .strip_prefix("http://")
                    .ok_or("--url: only http:// is supported")?;
                let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
                args.addr = addr.to_owned();
                args.path = format!("/{path}");
            }
            "--header" => args.headers.push(value),
            "--body" => args.body = value.into_bytes(),
            "--body-file" => {
                args.body =
                    std::fs::read(&value).map_err(|e| format!("--body-file {value}: {e}"))?;
            }
            "--rate" => args.rate = number(&value)?,
            "--duration" => args.duration = number(&value)?,
            "--warmup" => args.warmup = number(&value)?,
            "--objective-ms" => args.objective_ns = (number(&value)? * 1e6) as u64,
            "--connections" => args.connections = number(&value)?.max(1.0) as usize,
            "--timeout" => args.timeout = Duration::from_secs_f64(number(&value)?.max(0.001)),
            "--seed" => args.seed = number(&value)? as u64,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if args.addr.is_empty() || !positive(args.rate) || !positive(args.duration) || args.warmup < 0.0
    {
        return Err("need --url, --rate > 0, --duration > 0 (and --warmup >= 0)".into());
    }
    Ok(args)
}

/// Idle kept-alive connections, shared by the requests of the one thread.
type Pool = Rc<RefCell<Vec<TcpStream>>>;

/// One request, scheduled at `due`: what became of it and how long after
/// `due` it ended.
async fn one(
    args: Rc<Args>,
    request: Rc<Vec<u8>>,
    pool: Pool,
    permits: Rc<Semaphore>,
    due: Instant,
) -> (Outcome, u64) {
    let outcome = tokio::time::timeout_at(due + args.timeout, async {
        let Ok(_permit) = permits.acquire().await else {
            return Outcome::Failed;
        };
        let idle = pool.borrow_mut().pop();
        let mut stream = match idle {
            Some(stream) => stream,
            None => match TcpStream::connect(&args.addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(_) => return Outcome::Failed,
            },
        };
        let mut buf = Vec::with_capacity(1024);
        match http::exchange(&mut stream, &request, &mut buf).await {
            Ok(response) => {
                if response.keep_alive {
                    pool.borrow_mut().push(stream);
                }
                match response.status {
                    200..=299 => Outcome::Answered,
                    429 | 503 => Outcome::Rejected,
                    _ => Outcome::Failed,
                }
            }
            Err(_) => Outcome::Failed,
        }
    })
    .await
    .unwrap_or(Outcome::Failed);
    (outcome, due.elapsed().as_nanos() as u64)
}

async fn run(args: Args) -> String {
    let args = Rc::new(args);
    let request = Rc::new(http::request(
        &args.addr,
        &args.path,
        &args.headers,
        &args.body,
    ));
    let pool: Pool = Rc::default();
    let permits = Rc::new(Semaphore::new(args.connections));
    let tally = Rc::new(RefCell::new(Tally::default()));
    let mut arrivals = Arrivals::new(args.rate, args.seed);
    let warmup_ns = (args.warmup * 1e9) as u64;
    let end_ns = warmup_ns + (args.duration * 1e9) as u64;
    let start = Instant::now();
    let mut lag = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while arrivals.peek() < end_ns {
        let next = start + Duration::from_nanos(arrivals.peek());
        tokio::time::sleep_until(next).await;
        let now_ns = start.elapsed().as_nanos() as u64;
        // everything due by now goes out, each timed from its own schedule
        while arrivals.peek() <= now_ns && arrivals.peek() < end_ns {
            let at = arrivals.take();
            if at >= warmup_ns {
                lag = lag.max(now_ns - at);
            }
            let due = start + Duration::from_nanos(at);
            let (args, request, pool, permits, tally) = (
                Rc::clone(&args),
                Rc::clone(&request),
                Rc::clone(&pool),
                Rc::clone(&permits),
                Rc::clone(&tally),
            );
            tasks.spawn_local(async move {
                let (outcome, latency) = one(args, request, pool, permits, due).await;
                if at >= warmup_ns {
                    tally.borrow_mut().record(outcome, latency);
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let window_s = args.duration;
    let json = tally
        .borrow_mut()
        .json(args.rate, window_s, args.objective_ns, lag);
    json
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            eprintln!("openloop: {why}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("openloop: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let json = local.block_on(&runtime, run(args));
    println!("{json}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split(' ').map(str::to_owned)
    }

    #[test]
    fn flags_are_parsed_and_bad_ones_refused() {
        let args = parse(argv(
            "--url http://127.0.0.1:80/v2/x --rate 10 --objective-ms 20",
        ))
        .expect("parsed");
        assert_eq!(
            (args.addr.as_str(), args.path.as_str()),
            ("127.0.0.1:80", "/v2/x")
        );
        assert_eq!(args.objective_ns, 20_000_000);
        assert!(parse(argv("--url http://h:1/ --rate 0")).is_err());
        assert!(parse(argv("--url https://h:1/ --rate 1")).is_err());
        assert!(parse(argv("--rate")).is_err());
        assert!(parse(argv("--bogus 1")).is_err());
    }
}
