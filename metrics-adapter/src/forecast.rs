//! Holt's linear trend (double exponential smoothing): the value `lead` ahead of a series.
//!
//! For observations `x_0..x_n` spaced `step` apart:
//!
//! ```text
//! level_0 = x_0            trend_0 = x_1 - x_0
//! level_t = α·x_t + (1-α)·(level_{t-1} + trend_{t-1})
//! trend_t = β·(level_t - level_{t-1}) + (1-β)·trend_{t-1}
//! forecast(h steps) = level_n + h·trend_n          h = lead / step
//! ```
//!
//! The forecast is never below `min(0, smallest observation)`: a falling ramp extrapolated into
//! negative requests per second would make the HPA scale to its minimum on a number that
//! cannot happen.

/// Smoothing factors, both in (0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Holt {
    /// Level smoothing α. Higher follows the latest value more closely.
    pub alpha: f64,
    /// Trend smoothing β. Higher follows changes of slope more quickly.
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
    /// The value `steps_ahead` steps after the last observation, or `None` when there are no
    /// (finite) observations. One observation forecasts itself.
    pub fn forecast(&self, observations: &[f64], steps_ahead: f64) -> Option<f64> {
        let xs: Vec<f64> = observations
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        let (&first, rest) = xs.split_first()?;
        let floor = xs.iter().copied().fold(0.0_f64, f64::min);
        let Some(&second) = rest.first() else {
            return Some(first);
        };
        let mut level = first;
        let mut trend = second - first;
        for &x in rest {
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
    }
}
