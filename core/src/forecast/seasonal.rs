//! Holt-Winters: Holt's level and trend plus an additive season of `period` steps (triple
//! exponential smoothing).
//!
//! For observations `x_0..x_n`, evenly spaced `step` apart, and a season of `m` steps:
//!
//! ```text
//! initialisation, from the first k = min(2, ⌊(n+1)/m⌋) full seasons (k ≥ 1 is required):
//!   A_j      = mean of season j's finite observations            j = 0..k-1
//!   trend    = (A_1 - A_0) / m   when k = 2, else 0
//!   s_i      = mean over j of (x_{j·m+i} - A_j - trend·(i - (m-1)/2))
//!                                        i = 0..m-1 (0 when phase i has no finite one)
//!   level    = A_0 + trend·(m-1)/2                                at t = m-1, the end of season 0
//! then for t = m..n (p = t mod m):
//!   level_t  = α·(x_t - s_p) + (1-α)·(level_{t-1} + trend_{t-1})
//!   trend_t  = β·(level_t - level_{t-1}) + (1-β)·trend_{t-1}
//!   s_p      = γ·(x_t - level_t) + (1-γ)·s_p
//! forecast(h steps) = level_n + h·trend_n + s_{(n + round(h)) mod m}
//! ```
//!
//! The adapter is stateless, so the fit starts afresh from the window on every query, from
//! whichever one or two days the window holds: an anomaly in them (yesterday's flash crowd, a
//! level shift this morning) is half learnt as season. Starts robust to that were tried in
//! `gofe sim`'s multi-day scenario — the first season alone, per-season medians with the
//! smaller of two days' deviations — and both did worse there than this plain average (1,821
//! and 2,503 SLO-violating seconds against 1,428 without the floor of
//! [`super::Floor::Latest`]), so the average stays.
//!
//! A non-finite observation (a gap in a Prometheus range, a NaN rate) is not read as a value:
//! the state steps on by its own prediction (`level += trend`, the season kept), so the phase of
//! every later observation stays right. Holt skips gaps outright; a season cannot, its clock
//! would slip. The floor is Holt's: never below `min(0, smallest observation)`.

use super::ForecastError;

/// Smoothing factors and the season's length in steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HoltWinters {
    /// Level smoothing α in (0, 1].
    pub alpha: f64,
    /// Trend smoothing β in (0, 1].
    pub beta: f64,
    /// Season smoothing γ in (0, 1].
    pub gamma: f64,
    /// Steps in one season (at least 2), e.g. 5,400 for a day at 16 s.
    pub season: usize,
}

/// What a fit leaves: the state after the last observation and every one-step residual
/// (observation minus the model's prediction of it made one step earlier).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fit {
    pub(crate) level: f64,
    pub(crate) trend: f64,
    /// The season by phase, and the phase of the last observation.
    pub(crate) seasons: Vec<f64>,
    pub(crate) last_phase: usize,
    pub(crate) floor: f64,
    /// One-step residuals of the finite observations after the initial season(s), oldest first.
    pub(crate) residuals: Vec<f64>,
}

impl Fit {
    /// The value `h` steps after the last observation, floored.
    pub(crate) fn ahead(&self, h: f64) -> f64 {
        let m = self.seasons.len();
        let phase = (self.last_phase + (h.round().max(0.0) as usize % m)) % m;
        (self.level + h * self.trend + self.seasons[phase]).max(self.floor)
    }
}

impl HoltWinters {
    /// Whether the factors are in (0, 1] and the season has at least 2 steps.
    pub fn is_valid(&self) -> bool {
        [self.alpha, self.beta, self.gamma]
            .iter()
            .all(|v| *v > 0.0 && *v <= 1.0)
            && self.season >= 2
    }

    /// The fewest observations a fit needs: one full season and one more.
    pub fn min_points(&self) -> usize {
        self.season + 1
    }

    /// The value `steps_ahead` steps after the last observation.
    ///
    /// Refused with [`ForecastError::TooShort`] when there are fewer than
    /// [`HoltWinters::min_points`] observations, [`ForecastError::NoData`] when the first
    /// season has no finite observation.
    pub fn forecast(&self, observations: &[f64], steps_ahead: f64) -> Result<f64, ForecastError> {
        self.fit(observations).map(|f| f.ahead(steps_ahead))
    }

    pub(crate) fn fit(&self, xs: &[f64]) -> Result<Fit, ForecastError> {
        let m = self.season;
        if m < 2 || xs.len() < self.min_points() {
            return Err(ForecastError::TooShort {
                need: self.min_points(),
                have: xs.len(),
            });
        }
        let floor = xs
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(0.0_f64, f64::min);
        let k = (xs.len() / m).min(2);
        let means: Vec<Option<f64>> = (0..k).map(|j| mean(&xs[j * m..(j + 1) * m])).collect();
        let Some(a0) = means[0] else {
            return Err(ForecastError::NoData);
        };
        let trend = match means.get(1) {
            Some(Some(a1)) => (a1 - a0) / m as f64,
            _ => 0.0,
        };
        let seasons: Vec<f64> = (0..m)
            .map(|i| {
                let devs: Vec<f64> = (0..k)
                    .filter_map(|j| {
                        let x = xs[j * m + i];
                        let a = means[j]? + trend * (i as f64 - (m as f64 - 1.0) / 2.0);
                        x.is_finite().then_some(x - a)
                    })
                    .collect();
                if devs.is_empty() {
                    0.0
                } else {
                    devs.iter().sum::<f64>() / devs.len() as f64
                }
            })
            .collect();
        let mut fit = Fit {
            level: a0 + trend * (m as f64 - 1.0) / 2.0,
            trend,
            seasons,
            last_phase: m - 1,
            floor,
            residuals: Vec::new(),
        };
        for (t, &x) in xs.iter().enumerate().skip(m) {
            let p = t % m;
            let predicted = fit.level + fit.trend;
            if x.is_finite() {
                fit.residuals.push(x - (predicted + fit.seasons[p]));
                let previous = fit.level;
                fit.level = self.alpha * (x - fit.seasons[p]) + (1.0 - self.alpha) * predicted;
                fit.trend = self.beta * (fit.level - previous) + (1.0 - self.beta) * fit.trend;
                fit.seasons[p] = self.gamma * (x - fit.level) + (1.0 - self.gamma) * fit.seasons[p];
            } else {
                fit.level = predicted;
            }
            fit.last_phase = p;
        }
        Ok(fit)
    }
}

fn mean(xs: &[f64]) -> Option<f64> {
    let (sum, n) = xs
        .iter()
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hw(season: usize) -> HoltWinters {
        HoltWinters {
            alpha: 0.3,
            beta: 0.1,
            gamma: 0.3,
            season,
        }
    }

    /// A daily-like wave: `base + amp·sin(2π t / m)` plus `slope·t`.
    fn wave(n: usize, m: usize, base: f64, amp: f64, slope: f64) -> Vec<f64> {
        (0..n)
            .map(|t| {
                base + amp * (2.0 * std::f64::consts::PI * t as f64 / m as f64).sin()
                    + slope * t as f64
            })
            .collect()
    }

    #[test]
    fn a_pure_season_is_forecast_exactly_a_quarter_period_on() {
        let m = 24;
        let xs = wave(3 * m, m, 100.0, 40.0, 0.0);
        // The last observation is at t = 3m - 1; six steps on is t = 3m + 5, phase 5.
        let f = hw(m).forecast(&xs, 6.0).unwrap();
        let truth = wave(3 * m + 6, m, 100.0, 40.0, 0.0)[3 * m + 5];
        assert!((f - truth).abs() < 1e-6, "{f} vs {truth}");
    }

    #[test]
    fn a_season_on_a_trend_is_followed() {
        let m = 24;
        let xs = wave(4 * m, m, 100.0, 40.0, 0.5);
        let truth = wave(4 * m + 12, m, 100.0, 40.0, 0.5)[4 * m + 11];
        let f = hw(m).forecast(&xs, 12.0).unwrap();
        assert!((f - truth).abs() < 1.0, "{f} vs {truth}");
    }

    #[test]
    fn the_seasonal_forecast_beats_holt_where_the_wave_turns() {
        // Just before the trough turns up, Holt extrapolates the fall; Holt-Winters knows the rise.
        let m = 48;
        let n = 3 * m - m / 4; // at the trough, a quarter of a period before the season ends
        let xs = wave(n, m, 200.0, 100.0, 0.0);
        let h = 12.0;
        let truth = wave(n + 12, m, 200.0, 100.0, 0.0)[n + 11];
        let seasonal = hw(m).forecast(&xs, h).unwrap();
        let holt = crate::forecast::Holt::default().forecast(&xs, h).unwrap();
        assert!(
            (seasonal - truth).abs() * 5.0 < (holt - truth).abs(),
            "holt-winters {seasonal}, holt {holt}, truth {truth}"
        );
    }

    #[test]
    fn refuses_less_than_a_season_and_one_more() {
        let hw = hw(10);
        assert_eq!(
            hw.forecast(&[1.0; 10], 1.0),
            Err(ForecastError::TooShort { need: 11, have: 10 })
        );
        assert!(hw.forecast(&[1.0; 11], 1.0).is_ok());
        let mut xs = vec![f64::NAN; 10];
        xs.push(3.0);
        assert_eq!(hw.forecast(&xs, 1.0), Err(ForecastError::NoData));
    }

    #[test]
    fn a_gap_keeps_the_phase() {
        let m = 12;
        let clean = wave(4 * m, m, 50.0, 20.0, 0.0);
        let mut gappy = clean.clone();
        // After the two seasons that initialise the fit (a gap there changes their means).
        for t in [2 * m + 3, 3 * m + 5, 3 * m + 6] {
            gappy[t] = f64::NAN;
        }
        let (a, b) = (
            hw(m).forecast(&clean, 4.0).unwrap(),
            hw(m).forecast(&gappy, 4.0).unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-6,
            "a gap on a clean wave changes nothing: {a} vs {b}"
        );
    }

    #[test]
    fn never_below_holts_floor() {
        let m = 6;
        let xs: Vec<f64> = (0..30).map(|t| 100.0 - 3.0 * t as f64).collect();
        assert_eq!(hw(m).forecast(&xs, 100.0), Ok(0.0));
    }

    #[test]
    fn validity() {
        assert!(hw(2).is_valid());
        assert!(!hw(1).is_valid());
        assert!(!HoltWinters {
            gamma: 0.0,
            ..hw(4)
        }
        .is_valid());
        assert!(!HoltWinters {
            alpha: 1.1,
            ..hw(4)
        }
        .is_valid());
    }

    proptest! {
        #[test]
        fn finite_and_floored_on_any_history(
            xs in proptest::collection::vec(prop_oneof![9 => 0.0..1e6f64, 1 => Just(f64::NAN)], 0..200),
            season in 2usize..20,
            h in 0.0..50.0f64,
        ) {
            match hw(season).forecast(&xs, h) {
                Ok(f) => {
                    prop_assert!(f.is_finite());
                    prop_assert!(f >= 0.0, "{}", f);
                }
                Err(ForecastError::TooShort { need, have }) => {
                    prop_assert!(have < need);
                    prop_assert_eq!(have, xs.len());
                }
                Err(ForecastError::NoData) => {
                    prop_assert!(xs[..season].iter().all(|x| x.is_nan()));
                }
            }
        }
    }
}
