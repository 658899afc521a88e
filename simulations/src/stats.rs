//! A fixed-size log-bucketed latency histogram: constant memory however long the run.

/// Smallest latency told apart, seconds.
const MIN: f64 = 1e-4;
/// Bucket growth factor: 1 % relative resolution.
const GROWTH: f64 = 1.01;
/// Buckets from 0.1 ms to about 1000 s.
const BUCKETS: usize = 1_620;

/// Weighted latency histogram.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<f64>,
    total: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0.0; BUCKETS],
            total: 0.0,
        }
    }

    fn bucket(latency: f64) -> usize {
        if latency <= MIN {
            return 0;
        }
        ((latency / MIN).ln() / GROWTH.ln())
            .ceil()
            .clamp(0.0, (BUCKETS - 1) as f64) as usize
    }

    /// Adds `weight` requests of `latency` seconds.
    pub fn add(&mut self, latency: f64, weight: f64) {
        if weight > 0.0 && latency.is_finite() {
            self.counts[Self::bucket(latency)] += weight;
            self.total += weight;
        }
    }

    /// The `q` quantile in seconds (the upper bound of its bucket), 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let mut acc = 0.0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= q * self.total {
                return MIN * GROWTH.powi(i as i32);
            }
        }
        MIN * GROWTH.powi(BUCKETS as i32 - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_one_percent() {
        let mut h = Histogram::new();
        h.add(0.010, 98.0);
        h.add(0.500, 2.0);
        assert!((h.quantile(0.5) - 0.010).abs() / 0.010 < 0.011);
        assert!((h.quantile(0.99) - 0.500).abs() / 0.500 < 0.011);
        assert_eq!(Histogram::new().quantile(0.5), 0.0);
    }
}
