//! The sampling decision: parent-based, else Envoy's three percentages.
//!
//! Percentages become integer thresholds when the sampler is built; a decision is one random
//! `u32` compared with one of them (two with `overall_sampling` below 100 %).

/// A probability as a threshold out of 2³² (2³² itself: always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold(u64);

impl Threshold {
    /// `percent` (clamped to 0–100) of draws pass.
    pub fn percent(percent: f64) -> Self {
        let p = if percent.is_nan() {
            0.0
        } else {
            percent.clamp(0.0, 100.0)
        };
        Threshold(((p / 100.0) * (1u64 << 32) as f64).round() as u64)
    }

    /// Whether a random draw passes.
    pub fn pass(self) -> bool {
        match self.0 {
            0 => false,
            t if t >= 1 << 32 => true,
            t => u64::from(fastrand::u32(..)) < t,
        }
    }
}

/// Decides whether a request is traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// New traces of requests with `x-client-trace-id` (Envoy's `client_sampling`).
    pub client: Threshold,
    /// Other new traces (Envoy's `random_sampling`).
    pub random: Threshold,
    /// Cap on new traces (Envoy's `overall_sampling`).
    pub overall: Threshold,
}

impl Sampler {
    /// A sampler of Envoy's percentages.
    pub fn new(client: f64, random: f64, overall: f64) -> Self {
        Sampler {
            client: Threshold::percent(client),
            random: Threshold::percent(random),
            overall: Threshold::percent(overall),
        }
    }

    /// The decision for a request: the caller's when it sent one, else a draw.
    pub fn sample(&self, parent: Option<bool>, client_trace_id: bool) -> bool {
        if let Some(sampled) = parent {
            return sampled;
        }
        let first = if client_trace_id {
            self.client
        } else {
            self.random
        };
        first.pass() && self.overall.pass()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_decision_wins_and_the_extremes_are_exact() {
        let none = Sampler::new(0.0, 0.0, 0.0);
        let all = Sampler::new(100.0, 100.0, 100.0);
        for _ in 0..1000 {
            assert!(none.sample(Some(true), false));
            assert!(!all.sample(Some(false), false));
            assert!(!none.sample(None, false));
            assert!(all.sample(None, true));
        }
        assert_eq!(Threshold::percent(f64::NAN), Threshold(0));
        assert_eq!(Threshold::percent(250.0), Threshold(1 << 32));
    }

    #[test]
    fn a_rate_is_kept_within_six_sigma() {
        // 10 % of n = 100 000 draws: binomial σ = √(n p (1-p)) ≈ 94.9; 6 σ ≈ 569, so a
        // correct sampler fails this about once in 500 million runs.
        let s = Sampler::new(100.0, 10.0, 100.0);
        let n = 100_000u32;
        let hits = (0..n).filter(|_| s.sample(None, false)).count() as f64;
        let (mean, sigma) = (f64::from(n) * 0.1, (f64::from(n) * 0.1 * 0.9).sqrt());
        assert!((hits - mean).abs() < 6.0 * sigma, "{hits} of {n}");
        // overall_sampling multiplies: 50 % × 20 % = 10 %.
        let s = Sampler::new(100.0, 50.0, 20.0);
        let hits = (0..n).filter(|_| s.sample(None, false)).count() as f64;
        assert!((hits - mean).abs() < 6.0 * sigma, "{hits} of {n}");
    }
}
