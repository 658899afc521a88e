//! Holt's linear trend (double exponential smoothing): where a series will be some steps on.
//!
//! For observations `x_0..x_n`, evenly spaced `step` apart:
//!
//! ```text
//! level_0 = x_0            trend_0 = x_1 - x_0
//! level_t = α·x_t + (1-α)·(level_{t-1} + trend_{t-1})
//! trend_t = β·(level_t - level_{t-1}) + (1-β)·trend_{t-1}
//! forecast(h steps) = level_n + h·trend_n          h = lead / step
//! ```
//!
//! Non-finite observations (a gap in a Prometheus range, a NaN rate) are skipped. The forecast
//! is never below `min(0, smallest observation)`: a falling ramp extrapolated into negative
//! requests per second would make the HPA scale to its minimum on a number that cannot happen.
//!
//! The metrics adapter runs it on a Prometheus range query (`forecast:` of a rule); the
//! simulator runs it on its simulated pipeline (`external_rps.forecast`), with the same
//! parameters and limits.

use std::time::Duration;

/// The shortest spacing of the history the adapter accepts: 1 s.
pub const MIN_STEP: Duration = Duration::from_secs(1);

/// The most history samples a forecast may ask for (Prometheus refuses range queries of more
/// than 11,000 points per series).
pub const MAX_POINTS: f64 = 11_000.0;

/// The fewest history samples a forecast may ask for: a trend needs two.
pub const MIN_POINTS: f64 = 2.0;

/// Whether a history `window` sampled every `step` holds between [`MIN_POINTS`] and
/// [`MAX_POINTS`] samples.
pub fn history_fits(window: Duration, step: Duration) -> bool {
    let points = window.as_secs_f64() / step.as_secs_f64();
    (MIN_POINTS..=MAX_POINTS).contains(&points)
}

/// How many `step`s ahead `lead` is.
pub fn steps_ahead(lead: Duration, step: Duration) -> f64 {
    lead.as_secs_f64() / step.as_secs_f64()
}

/// Smoothing factors, both in (0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Holt {
    /// Level smoothing α (default 0.5). Higher follows the latest value more closely.
    pub alpha: f64,
    /// Trend smoothing β (default 0.3). Higher follows changes of slope more quickly.
    pub beta: f64,
}

impl Default for Holt {
    /// α = 0.5, β = 0.3: responsive to a ramp within a few samples.
    fn default() -> Self {
        Holt {
            alpha: 0.5,
            beta: 0.3,
        }
    }
}

impl Holt {
    /// Whether both factors are in (0, 1].
    pub fn is_valid(&self) -> bool {
        [self.alpha, self.beta]
            .iter()
            .all(|v| *v > 0.0 && *v <= 1.0)
    }

    /// The value `steps_ahead` steps after the last observation, or `None` when there are no
    /// finite observations. One observation forecasts itself.
    pub fn forecast(&self, observations: &[f64], steps_ahead: f64) -> Option<f64> {
        let mut finite = observations.iter().copied().filter(|x| x.is_finite());
        let first = finite.next()?;
        let floor = std::iter::once(first)
            .chain(finite.clone())
            .fold(0.0_f64, f64::min);
        let Some(second) = finite.clone().next() else {
            return Some(first);
        };
        let mut level = first;
        let mut trend = second - first;
        for x in finite {
            let previous = level;
            level = self.alpha * x + (1.0 - self.alpha) * (level + trend);
            trend = self.beta * (level - previous) + (1.0 - self.beta) * trend;
        }
        Some((level + steps_ahead * trend).max(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_straight_line_is_extrapolated_exactly() {
        let xs: Vec<f64> = (0..20).map(|i| 100.0 + 2.0 * i as f64).collect();
        let f = Holt::default().forecast(&xs, 4.0).unwrap();
        assert!((f - (138.0 + 8.0)).abs() < 1e-9, "{f}");
    }

    #[test]
    fn a_flat_series_stays_flat() {
        let f = Holt::default().forecast(&[7.0; 10], 10.0).unwrap();
        assert!((f - 7.0).abs() < 1e-12);
    }

    #[test]
    fn a_ramp_after_a_plateau_is_anticipated() {
        let mut xs = vec![10.0; 10];
        xs.extend((1..=5).map(|i| 10.0 + 5.0 * i as f64));
        let last = *xs.last().unwrap();
        let f = Holt::default().forecast(&xs, 4.0).unwrap();
        assert!(f > last, "{f} should be above {last}");
    }

    #[test]
    fn never_forecasts_impossible_negatives() {
        let xs: Vec<f64> = (0..10).map(|i| 50.0 - 5.0 * i as f64).collect();
        assert_eq!(Holt::default().forecast(&xs, 100.0), Some(0.0));
        // A series that is itself negative may go down to its own lowest value.
        let xs = [-1.0, -2.0, -3.0];
        assert_eq!(Holt::default().forecast(&xs, 100.0), Some(-3.0));
    }

    #[test]
    fn edge_cases() {
        assert_eq!(Holt::default().forecast(&[], 3.0), None);
        assert_eq!(Holt::default().forecast(&[f64::NAN], 3.0), None);
        assert_eq!(Holt::default().forecast(&[4.0], 3.0), Some(4.0));
        assert_eq!(
            Holt::default()
                .forecast(&[4.0, f64::NAN, 6.0], 0.0)
                .map(|f| f > 4.0),
            Some(true)
        );
        // Gaps are skipped, not read as zeros.
        assert_eq!(
            Holt::default().forecast(&[4.0, f64::NAN, 6.0, f64::INFINITY], 1.0),
            Holt::default().forecast(&[4.0, 6.0], 1.0)
        );
    }

    #[test]
    fn limits_are_the_adapters() {
        let s = Duration::from_secs;
        assert!(history_fits(s(600), s(15)));
        assert!(history_fits(s(30), s(15)));
        assert!(!history_fits(s(15), s(15)), "one point has no trend");
        assert!(!history_fits(s(11_001), s(1)));
        assert_eq!(steps_ahead(s(60), s(15)), 4.0);
        assert!(Holt::default().is_valid());
        assert!(!Holt {
            alpha: 0.0,
            beta: 0.3
        }
        .is_valid());
        assert!(!Holt {
            alpha: 0.5,
            beta: 1.5
        }
        .is_valid());
    }
}
