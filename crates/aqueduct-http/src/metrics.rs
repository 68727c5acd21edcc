//! `GET /metrics`: the flow's metrics in the Prometheus text format, with
//! the names, labels and meaning of the Python exporter
//! (`aqueduct.metrics.prometheus`), read from the control block by Rust.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use aqueduct_core::metrics::HistogramSnapshot;
use aqueduct_core::{Control, TaskQueue};

/// How requests ended, as the Python exporter's `aqueduct_tasks{outcome}`.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub timeout: AtomicU64,
    /// Requests whose client closed the connection before the end (their
    /// tasks were cancelled).
    pub left: AtomicU64,
}

/// What the page names: the flow, each metrics slot of the control block
/// (the steps, then `main_process`), and the processes whose memory it
/// reports (label, pid).
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub flow: String,
    pub steps: Vec<String>,
    pub processes: Vec<(String, u32)>,
}

const HISTOGRAMS: [(&str, &str, f64); 4] = [
    ("handle_seconds", "time handlers spent in handle()", 1e-6),
    ("batch_seconds", "time to assemble a batch", 1e-6),
    ("transfer_seconds", "time tasks waited in a queue", 1e-6),
    ("batch_size", "tasks per batch", 1.0),
];

/// The page. `queues[i]` is the queue of metrics slot `i` (its size).
pub fn render(
    names: &Names,
    control: &Control,
    queues: &[&TaskQueue],
    outcomes: &Outcomes,
) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let steps: Vec<(&str, aqueduct_core::metrics::StepSnapshot)> = names
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, name)| Some((name.as_str(), control.metrics(i)?.snapshot())))
        .collect();
    let flow = escape(&names.flow);
    for (index, (name, doc, scale)) in HISTOGRAMS.iter().enumerate() {
        header(&mut out, name, doc, "histogram");
        for (step, snapshot) in &steps {
            let h = match index {
                0 => &snapshot.handle_us,
                1 => &snapshot.batch_us,
                2 => &snapshot.transfer_us,
                _ => &snapshot.batch_size,
            };
            if index == 0 && h.count == 0 {
                continue; // as the Python exporter: no handle times, no series
            }
            histogram(&mut out, name, &flow, &escape(step), h, *scale);
        }
    }
    header(
        &mut out,
        "tasks_dropped",
        "tasks workers skipped",
        "counter",
    );
    for (step, s) in &steps {
        let reasons = [
            ("expired", s.expired),
            ("cancelled", s.cancelled),
            ("rejected", s.rejected),
        ];
        for (reason, value) in reasons {
            let step = escape(step);
            line(
                &mut out,
                "tasks_dropped_total",
                &format!("flow=\"{flow}\",step=\"{step}\",reason=\"{reason}\""),
                value as f64,
            );
        }
    }
    header(&mut out, "tasks_handled", "tasks handled", "counter");
    for (step, s) in &steps {
        let labels = format!("flow=\"{flow}\",step=\"{}\"", escape(step));
        line(&mut out, "tasks_handled_total", &labels, s.handled as f64);
    }
    header(&mut out, "queue_size", "tasks waiting in a queue", "gauge");
    for (index, (step, _)) in steps.iter().enumerate() {
        let size = queues.get(index).map_or(0, |q| q.len());
        let labels = format!("flow=\"{flow}\",step=\"{}\"", escape(step));
        line(&mut out, "queue_size", &labels, size as f64);
    }
    header(&mut out, "workers", "worker processes of a step", "gauge");
    for (step, s) in &steps[..steps.len().saturating_sub(1)] {
        for (state, value) in s.gauges() {
            let state = state.trim_start_matches("workers_");
            let labels = format!(
                "flow=\"{flow}\",step=\"{}\",state=\"{state}\"",
                escape(step)
            );
            line(&mut out, "workers", &labels, value as f64);
        }
    }
    header(
        &mut out,
        "tasks",
        "how tasks given to process() ended",
        "counter",
    );
    for (outcome, value) in [
        ("done", &outcomes.done),
        ("failed", &outcomes.failed),
        ("timeout", &outcomes.timeout),
        ("cancelled", &outcomes.left),
    ] {
        let labels = format!("flow=\"{flow}\",outcome=\"{outcome}\"");
        line(
            &mut out,
            "tasks_total",
            &labels,
            value.load(Ordering::Relaxed) as f64,
        );
    }
    header(
        &mut out,
        "memory_bytes",
        "resident memory per process",
        "gauge",
    );
    for (process, pid) in &names.processes {
        let labels = format!("flow=\"{flow}\",process=\"{}\"", escape(process));
        line(&mut out, "memory_bytes", &labels, rss_bytes(*pid) as f64);
    }
    out
}

fn header(out: &mut String, name: &str, doc: &str, kind: &str) {
    let _ = writeln!(out, "# HELP aqueduct_{name} {doc}");
    let _ = writeln!(out, "# TYPE aqueduct_{name} {kind}");
}

fn line(out: &mut String, name: &str, labels: &str, value: f64) {
    let _ = writeln!(out, "aqueduct_{name}{{{labels}}} {}", number(value));
}

fn histogram(
    out: &mut String,
    name: &str,
    flow: &str,
    step: &str,
    h: &HistogramSnapshot,
    scale: f64,
) {
    let labels = format!("flow=\"{flow}\",step=\"{step}\"");
    let mut cumulative = 0u64;
    let mut bound = scale;
    for n in &h.buckets {
        cumulative += n;
        let bucket = format!("{labels},le=\"{}\"", number(bound));
        line(out, &format!("{name}_bucket"), &bucket, cumulative as f64);
        bound *= 2.0;
    }
    line(
        out,
        &format!("{name}_bucket"),
        &format!("{labels},le=\"+Inf\""),
        h.count as f64,
    );
    line(out, &format!("{name}_count"), &labels, h.count as f64);
    line(out, &format!("{name}_sum"), &labels, h.sum as f64 * scale);
}

/// A number as Prometheus clients write it (`1.0`, `2e-06`).
fn number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{value:.1}")
    } else {
        format!("{value:e}")
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn rss_bytes(pid: u32) -> u64 {
    let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/statm")) else {
        return 0;
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let resident: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    resident * u64::try_from(page).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_step_as_the_python_exporter_does() {
        let control = Control::create(1, 2).expect("control");
        if let Some(m) = control.metrics(0) {
            m.handle_us.record(3);
            m.handled.fetch_add(2, Ordering::Relaxed);
            m.set_workers([2, 1, 0]);
        }
        let names = Names {
            flow: "flow".into(),
            steps: vec!["step1_A".into(), "main_process".into()],
            processes: vec![("main_process".into(), std::process::id())],
        };
        let outcomes = Outcomes::default();
        outcomes.done.fetch_add(5, Ordering::Relaxed);
        let page = render(&names, &control, &[], &outcomes);
        for wanted in [
            "# TYPE aqueduct_handle_seconds histogram",
            "aqueduct_handle_seconds_count{flow=\"flow\",step=\"step1_A\"} 1.0",
            "aqueduct_handle_seconds_bucket{flow=\"flow\",step=\"step1_A\",le=\"+Inf\"} 1.0",
            "aqueduct_tasks_handled_total{flow=\"flow\",step=\"step1_A\"} 2.0",
            "aqueduct_tasks_total{flow=\"flow\",outcome=\"done\"} 5.0",
            "aqueduct_queue_size{flow=\"flow\",step=\"main_process\"} 0.0",
            "aqueduct_batch_size_count{flow=\"flow\",step=\"main_process\"} 0.0",
            "aqueduct_workers{flow=\"flow\",step=\"step1_A\",state=\"running\"} 2.0",
            "aqueduct_workers{flow=\"flow\",step=\"step1_A\",state=\"starting\"} 1.0",
        ] {
            assert!(page.contains(wanted), "{wanted} not in\n{page}");
        }
        assert!(
            !page.contains("aqueduct_handle_seconds_count{flow=\"flow\",step=\"main_process\"}"),
            "no handle times of a step that handled nothing"
        );
        assert!(!page.contains("aqueduct_workers{flow=\"flow\",step=\"main_process\""));
        assert!(page.contains("aqueduct_memory_bytes{flow=\"flow\",process=\"main_process\"}"));
    }
}
