//! What became of the measured requests, as one JSON object per run.

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Answered,
    /// 429 or 503: the server refused it (overloaded).
    Rejected,
    /// Any other status, a connection error or no answer in time.
    Failed,
}

/// The requests scheduled inside the measured window, by outcome, with
/// their latencies from their scheduled send time (ns).
#[derive(Debug, Default)]
pub struct Tally {
    answered: Vec<u64>,
    rejected: Vec<u64>,
    failed: u64,
}

impl Tally {
    pub fn record(&mut self, outcome: Outcome, latency_ns: u64) {
        match outcome {
            Outcome::Answered => self.answered.push(latency_ns),
            Outcome::Rejected => self.rejected.push(latency_ns),
            Outcome::Failed => self.failed += 1,
        }
    }

    /// The run's figures as JSON: counts, goodput (answered within the
    /// objective per second of the window), percentiles in ms.
    pub fn json(&mut self, rate: f64, window_s: f64, objective_ns: u64, lag_ns: u64) -> String {
        self.answered.sort_unstable();
        self.rejected.sort_unstable();
        let within = self.answered.partition_point(|&t| t <= objective_ns);
        let sent = self.answered.len() + self.rejected.len() + self.failed as usize;
        let ms = |sorted: &[u64], q: f64| -> String {
            percentile(sorted, q)
                .map_or_else(|| "null".into(), |t| format!("{:.3}", t as f64 / 1e6))
        };
        format!(
            concat!(
                "{{\"rate\": {rate:.1}, \"window_s\": {window:.3}, \"sent\": {sent}, ",
                "\"answered\": {answered}, \"within\": {within}, \"late\": {late}, ",
                "\"rejected\": {rejected}, \"failed\": {failed}, \"goodput\": {goodput:.1}, ",
                "\"within_share\": {share:.5}, \"p50_ms\": {p50}, \"p99_ms\": {p99}, ",
                "\"p999_ms\": {p999}, \"reject_p99_ms\": {reject_p99}, \"max_lag_ms\": {lag:.3}}}"
            ),
            rate = rate,
            window = window_s,
            sent = sent,
            answered = self.answered.len(),
            within = within,
            late = self.answered.len() - within,
            rejected = self.rejected.len(),
            failed = self.failed,
            goodput = within as f64 / window_s.max(1e-9),
            share = within as f64 / sent.max(1) as f64,
            p50 = ms(&self.answered, 0.5),
            p99 = ms(&self.answered, 0.99),
            p999 = ms(&self.answered, 0.999),
            reject_p99 = ms(&self.rejected, 0.99),
            lag = lag_ns as f64 / 1e6,
        )
    }
}

/// The `q` quantile of `sorted` (nearest rank), None when empty.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&values, 0.5), Some(500));
        assert_eq!(percentile(&values, 0.99), Some(990));
        assert_eq!(percentile(&values, 0.999), Some(999));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn goodput_counts_only_answers_within_the_objective() {
        let mut tally = Tally::default();
        for ms in [10, 20, 60] {
            tally.record(Outcome::Answered, ms * 1_000_000);
        }
        tally.record(Outcome::Rejected, 1_000_000);
        tally.record(Outcome::Failed, 0);
        let json = tally.json(100.0, 2.0, 50_000_000, 0);
        for part in [
            "\"sent\": 5",
            "\"answered\": 3",
            "\"within\": 2",
            "\"late\": 1",
            "\"rejected\": 1",
            "\"failed\": 1",
            "\"goodput\": 1.0",
            "\"within_share\": 0.40000",
            "\"reject_p99_ms\": 1.000",
        ] {
            assert!(json.contains(part), "{part} in {json}");
        }
    }
}
