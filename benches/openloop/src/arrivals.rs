//! When requests are sent: a Poisson process at a fixed rate (exponential
//! gaps), from a seeded generator so that every framework gets the same
//! schedule.

/// xorshift64*: small, fast, good enough for exponential gaps.
#[derive(Debug, Clone)]
pub struct Arrivals {
    state: u64,
    mean_gap_ns: f64,
    next_ns: f64,
}

impl Arrivals {
    /// Arrivals at `rate` per second, the first one a gap after 0.
    pub fn new(rate: f64, seed: u64) -> Self {
        let mut arrivals = Arrivals {
            state: seed.max(1),
            mean_gap_ns: 1e9 / rate.max(1e-9),
            next_ns: 0.0,
        };
        arrivals.next_ns = arrivals.gap();
        arrivals
    }

    fn uniform(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let bits = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        // in (0, 1]: never 0, so the logarithm is finite
        (bits as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn gap(&mut self) -> f64 {
        -self.uniform().ln() * self.mean_gap_ns
    }

    /// The next scheduled send time, in ns from the start.
    pub fn peek(&self) -> u64 {
        self.next_ns as u64
    }

    /// Takes the next scheduled time and draws the one after it.
    pub fn take(&mut self) -> u64 {
        let now = self.next_ns;
        self.next_ns += self.gap();
        now as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_rate_is_the_rate_asked_for() {
        let mut arrivals = Arrivals::new(2_000.0, 7);
        let mut last = 0;
        for _ in 0..100_000 {
            last = arrivals.take();
        }
        let rate = 100_000.0 / (last as f64 / 1e9);
        assert!((rate - 2_000.0).abs() < 40.0, "{rate}");
    }

    #[test]
    fn gaps_are_exponential_and_the_schedule_repeats_per_seed() {
        let mut arrivals = Arrivals::new(1_000.0, 3);
        let (mut last, mut short) = (0, 0);
        for _ in 0..100_000 {
            let t = arrivals.take();
            // P(gap < mean) = 1 - 1/e for exponential gaps
            short += u32::from(t - last < 1_000_000);
            last = t;
        }
        let share = f64::from(short) / 100_000.0;
        assert!((share - 0.632).abs() < 0.01, "{share}");
        let (mut a, mut b) = (Arrivals::new(500.0, 9), Arrivals::new(500.0, 9));
        assert!((0..1000).all(|_| a.take() == b.take()));
    }
}
