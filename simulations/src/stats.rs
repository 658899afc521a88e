//! A fixed-size log-bucketed latency histogram: constant memory however long the run.
//!
//! Buckets follow the binary layout of `f64` (as HDR histograms do): the exponent and the top
//! six mantissa bits, i.e. 64 buckets per power of two (at most 1.1 % relative error), from
//! about 61 µs to about 4,000 s — integer operations only, no logarithm per sample.

/// Mantissa bits kept below the exponent.
const SUB_BITS: u32 = 6;
const SHIFT: u32 = 52 - SUB_BITS;
/// 2^-14 s ≈ 61 µs: the first bucket's lower edge.
const LOW: u64 = (1023 - 14) << SUB_BITS;
/// 2^12 s ≈ 4096 s: the last bucket's upper edge.
const HIGH: u64 = (1023 + 12) << SUB_BITS;
const BUCKETS: usize = (HIGH - LOW) as usize;

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
        let key = latency.to_bits() >> SHIFT;
        (key.clamp(LOW, HIGH - 1) - LOW) as usize
    }

    /// Adds `weight` requests of `latency` seconds (non-negative).
    pub fn add(&mut self, latency: f64, weight: f64) {
        if weight > 0.0 && latency.is_finite() && latency >= 0.0 {
            self.counts[Self::bucket(latency)] += weight;
            self.total += weight;
        }
    }

    /// The `q` quantile in seconds (the middle of its bucket, within 0.8 %), 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let mut acc = 0.0;
        let mut index = BUCKETS - 1;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= q * self.total {
                index = i;
                break;
            }
        }
        let lower = f64::from_bits((index as u64 + LOW) << SHIFT);
        let upper = f64::from_bits((index as u64 + LOW + 1) << SHIFT);
        (lower + upper) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_two_percent() {
        let mut h = Histogram::new();
        h.add(0.010, 98.0);
        h.add(0.500, 2.0);
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.02;
        assert!(close(h.quantile(0.5), 0.010), "{}", h.quantile(0.5));
        assert!(close(h.quantile(0.99), 0.500), "{}", h.quantile(0.99));
        assert_eq!(Histogram::new().quantile(0.5), 0.0);
    }

    #[test]
    fn extremes_are_clamped_not_lost() {
        let mut h = Histogram::new();
        h.add(0.0, 1.0);
        h.add(1e9, 1.0);
        assert!(h.quantile(0.0) > 0.0 && h.quantile(0.0) < 1e-4);
        assert!(h.quantile(1.0) >= 4000.0);
    }
}
