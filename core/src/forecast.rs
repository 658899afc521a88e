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
//! Beside Holt: [`HoltWinters`] (an additive season, e.g. a day, on top of level and trend;
//! formula in [`seasonal`]) and the spike-aware fast path [`SpikeGuard`] (serve
//! `max(latest, forecast)` when the latest value is a robust outlier above the model's
//! expectation; formula in [`spike`]).
//!
//! [`ForecastConfig`] is the one configuration of all of them, as a rules file of the metrics
//! adapter (`forecast:` of a rule) and a simulator scenario (`external_rps.forecast`) both write
//! it; [`ForecastConfig::resolve`] checks it and fills in the defaults, and
//! [`ForecastPolicy::serve`] is the function both run on the history, so the simulator models
//! exactly what the adapter serves.

use std::time::Duration;

pub mod seasonal;
pub mod spike;

pub use seasonal::HoltWinters;
pub use spike::SpikeGuard;

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

    /// The one-step residuals of the fit (each finite observation after the first minus
    /// `level + trend` just before it), oldest first.
    pub fn residuals(&self, observations: &[f64]) -> Vec<f64> {
        let mut finite = observations.iter().copied().filter(|x| x.is_finite());
        let Some(first) = finite.next() else {
            return Vec::new();
        };
        let Some(second) = finite.clone().next() else {
            return Vec::new();
        };
        let mut level = first;
        let mut trend = second - first;
        let mut out = Vec::new();
        for x in finite {
            out.push(x - (level + trend));
            let previous = level;
            level = self.alpha * x + (1.0 - self.alpha) * (level + trend);
            trend = self.beta * (level - previous) + (1.0 - self.beta) * trend;
        }
        out
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

// === configuration, shared by the adapter and the simulator ===

/// Why no forecast could be made of a history.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForecastError {
    /// Fewer samples than the method needs (Holt-Winters: one season and one more).
    #[error("the history holds {have} samples; the method needs at least {need} (one period and one step)")]
    TooShort {
        /// Samples needed.
        need: usize,
        /// Samples given.
        have: usize,
    },
    /// No finite sample (or, for Holt-Winters, none in the first season).
    #[error("no finite sample in the history")]
    NoData,
}

/// The forecasting methods, as configuration names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum MethodName {
    /// Holt's linear trend (the default).
    #[default]
    Holt,
    /// Holt-Winters, additive season of `period`.
    HoltWinters,
}

/// What Holt-Winters serves while the history is shorter than a period and a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Fallback {
    /// Holt's forecast over the history there is, with the same α and β (the default).
    #[default]
    Holt,
    /// Nothing: the value is unavailable ([`ForecastError::TooShort`]).
    None,
}

/// Whether the served value may be below the latest observation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Floor {
    /// Serve `max(latest, forecast)`: the forecast may lead the current value, never lag it,
    /// so the HPA never scales later than on the current value alone (the default; predictive
    /// autoscalers such as Google Compute Engine's use the higher of the two for the same
    /// reason).
    #[default]
    Latest,
    /// Serve the forecast as it is, also below the latest value (it can scale down ahead of a
    /// falling curve, and lags a spike or a level shift by the model's smoothing).
    None,
}

/// The `forecast` option of an adapter rule and of a simulated External rate, as written
/// (`D` is how the file writes a duration). Every field is optional but `lead`; see
/// [`ForecastConfig::resolve`] for the defaults and limits.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct ForecastConfig<D> {
    /// How far ahead the served value looks (required), e.g. `60s`.
    pub lead: D,
    /// `holt` (default) or `holt-winters`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub method: MethodName,
    /// History fitted. Default `10m` for Holt, two periods for Holt-Winters.
    #[cfg_attr(feature = "serde", serde(default))]
    pub window: Option<D>,
    /// Spacing of the history samples, at least `1s`; the window must hold 2 to 11,000 of
    /// them. Default `15s` for Holt; for Holt-Winters the smallest whole number of seconds, at
    /// least 15, that divides the period and fits the window in 11,000 steps (`16s` for two
    /// days of `24h`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub step: Option<D>,
    /// Level smoothing α in (0, 1]. Default 0.5.
    #[cfg_attr(feature = "serde", serde(default))]
    pub alpha: Option<f64>,
    /// Trend smoothing β in (0, 1]. Default 0.3.
    #[cfg_attr(feature = "serde", serde(default))]
    pub beta: Option<f64>,
    /// Holt-Winters only: season smoothing γ in (0, 1]. Default 0.3.
    #[cfg_attr(feature = "serde", serde(default))]
    pub gamma: Option<f64>,
    /// Holt-Winters only (required there): the season's length, e.g. `24h`; a whole number of
    /// steps, at least two.
    #[cfg_attr(feature = "serde", serde(default))]
    pub period: Option<D>,
    /// Holt-Winters only: what to serve before a period and a step of history exist. Default
    /// `holt`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub fallback: Option<Fallback>,
    /// The spike-aware fast path. Default: off.
    #[cfg_attr(feature = "serde", serde(default))]
    pub spike: Option<SpikeConfig<D>>,
    /// `latest` (default): never serve less than the latest observation; `none`: serve the
    /// forecast as it is.
    #[cfg_attr(feature = "serde", serde(default))]
    pub floor: Option<Floor>,
}

/// The spike-aware fast path as written: `spike: {}` turns it on with the defaults.
#[derive(Clone, Debug, PartialEq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct SpikeConfig<D> {
    /// Band width in robust standard deviations of the one-step residuals, > 0. Default 4.
    #[cfg_attr(feature = "serde", serde(default))]
    pub k: Option<f64>,
    /// How much of the latest residuals the band is computed over: at least two steps, at
    /// most the forecast's window. Default the smaller of `30m` and the window.
    #[cfg_attr(feature = "serde", serde(default))]
    pub window: Option<D>,
}

/// A checked forecast: what the adapter queries and how it turns the history into the served
/// value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForecastPolicy {
    /// How far ahead the served value looks.
    pub lead: Duration,
    /// History fetched.
    pub window: Duration,
    /// Spacing of the history samples.
    pub step: Duration,
    /// The model.
    pub method: Method,
    /// The fast path, when on.
    pub spike: Option<SpikeGuard>,
    /// Whether the latest observation bounds the served value from below.
    pub floor: Floor,
}

/// A checked model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Holt's linear trend.
    Holt(Holt),
    /// Holt-Winters and its fallback while the history is short.
    HoltWinters(HoltWinters, Fallback),
}

/// What [`ForecastPolicy::serve`] serves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Served {
    /// The value.
    pub value: f64,
    /// Whether the fast path decided it (`max(latest, forecast)`).
    pub spike: bool,
    /// Whether Holt-Winters' history was short and Holt's forecast was served.
    pub fell_back: bool,
}

/// One problem of a [`ForecastConfig`]: the field under `forecast` (`step`, `spike.k`) and
/// what is wrong.
pub type ConfigProblem = (&'static str, String);

/// Default Holt window.
const HOLT_WINDOW: Duration = Duration::from_secs(600);
/// Default Holt step, and the smallest Holt-Winters step chosen.
const DEFAULT_STEP: Duration = Duration::from_secs(15);
/// Default spike window.
const SPIKE_WINDOW: Duration = Duration::from_secs(1800);
/// Default season smoothing.
pub const DEFAULT_GAMMA: f64 = 0.3;
/// Default spike band, in robust standard deviations.
pub const DEFAULT_SPIKE_K: f64 = 4.0;

/// The smallest whole-second step of at least `from` that divides `period` and keeps `window`
/// within [`MAX_POINTS`] steps.
pub fn seasonal_step(period: Duration, window: Duration, from: Duration) -> Option<Duration> {
    let period_ms = period.as_millis();
    let need = (window.as_secs_f64() / MAX_POINTS).ceil() as u64;
    let first = need.max(from.as_secs().max(1));
    (first..=period.as_secs() / 2)
        .map(Duration::from_secs)
        .find(|s| period_ms.is_multiple_of(s.as_millis()))
}

impl<D: Copy + Into<Duration>> ForecastConfig<D> {
    /// The checked policy with its defaults, or every problem (field under `forecast`,
    /// message).
    pub fn resolve(&self) -> Result<ForecastPolicy, Vec<ConfigProblem>> {
        let mut problems: Vec<ConfigProblem> = Vec::new();
        let d = |x: Option<D>| x.map(Into::into);
        let default = Holt::default();
        let holt = Holt {
            alpha: self.alpha.unwrap_or(default.alpha),
            beta: self.beta.unwrap_or(default.beta),
        };
        for (name, v) in [("alpha", holt.alpha), ("beta", holt.beta)] {
            if !(v > 0.0 && v <= 1.0) {
                problems.push((name, "must be in (0, 1]".into()));
            }
        }
        let lead: Duration = self.lead.into();
        let (window, step, method) = match self.method {
            MethodName::Holt => {
                for (name, given) in [
                    ("gamma", self.gamma.is_some()),
                    ("period", self.period.is_some()),
                    ("fallback", self.fallback.is_some()),
                ] {
                    if given {
                        problems.push((name, "only method holt-winters has it".into()));
                    }
                }
                let window = d(self.window).unwrap_or(HOLT_WINDOW);
                let step = d(self.step).unwrap_or(DEFAULT_STEP);
                if step < MIN_STEP {
                    problems.push(("step", "must be at least 1s".into()));
                } else if !history_fits(window, step) {
                    problems.push((
                        "window",
                        "window must hold between 2 and 11000 steps".into(),
                    ));
                }
                (window, step, Method::Holt(holt))
            }
            MethodName::HoltWinters => {
                let gamma = self.gamma.unwrap_or(DEFAULT_GAMMA);
                if !(gamma > 0.0 && gamma <= 1.0) {
                    problems.push(("gamma", "must be in (0, 1]".into()));
                }
                let Some(period) = d(self.period) else {
                    problems.push((
                        "period",
                        "method holt-winters needs a period, e.g. 24h".into(),
                    ));
                    return Err(problems);
                };
                let window = d(self.window).unwrap_or(period * 2);
                let step = match d(self.step) {
                    Some(s) => s,
                    None => match seasonal_step(period, window, DEFAULT_STEP) {
                        Some(s) => s,
                        None => {
                            problems.push((
                                "step",
                                format!("no whole number of seconds from 15s up divides the period {} and keeps the window {} within 11000 steps: give one", fmt_d(period), fmt_d(window)),
                            ));
                            return Err(problems);
                        }
                    },
                };
                if step < MIN_STEP {
                    problems.push(("step", "must be at least 1s".into()));
                    return Err(problems);
                }
                if period.as_nanos() % step.as_nanos() != 0 || period < step * 2 {
                    problems.push((
                        "period",
                        format!(
                            "must be a whole number of steps, at least two (period {}, step {})",
                            fmt_d(period),
                            fmt_d(step)
                        ),
                    ));
                }
                if window < period {
                    problems.push((
                        "window",
                        format!("holt-winters needs at least one period of history ({}), and two to initialise its trend", fmt_d(period)),
                    ));
                } else if window.as_secs_f64() / step.as_secs_f64() > MAX_POINTS {
                    let hint = seasonal_step(period, window, step)
                        .map_or_else(String::new, |s| format!(": use step {} or more", fmt_d(s)));
                    problems.push((
                        if self.step.is_some() { "step" } else { "window" },
                        format!(
                            "a window of {} at step {} is {:.0} steps; Prometheus answers at most 11000{hint}",
                            fmt_d(window),
                            fmt_d(step),
                            window.as_secs_f64() / step.as_secs_f64()
                        ),
                    ));
                }
                let season = (period.as_nanos() / step.as_nanos().max(1)) as usize;
                (
                    window,
                    step,
                    Method::HoltWinters(
                        HoltWinters {
                            alpha: holt.alpha,
                            beta: holt.beta,
                            gamma,
                            season,
                        },
                        self.fallback.unwrap_or_default(),
                    ),
                )
            }
        };
        let spike = self.spike.as_ref().map(|s| {
            let k = s.k.unwrap_or(DEFAULT_SPIKE_K);
            if !(k.is_finite() && k > 0.0) {
                problems.push(("spike.k", "must be a number above 0".into()));
            }
            let span = d(s.window).unwrap_or(SPIKE_WINDOW.min(window));
            if span > window {
                problems.push((
                    "spike.window",
                    "must not exceed the forecast's window".into(),
                ));
            }
            let residuals = (span.as_secs_f64() / step.as_secs_f64().max(1e-9)).floor() as usize;
            if residuals < 2 {
                problems.push(("spike.window", "must hold at least two steps".into()));
            }
            SpikeGuard { k, residuals }
        });
        if problems.is_empty() {
            Ok(ForecastPolicy {
                lead,
                window,
                step,
                method,
                spike,
                floor: self.floor.unwrap_or_default(),
            })
        } else {
            Err(problems)
        }
    }
}

fn fmt_d(d: Duration) -> String {
    let s = d.as_secs_f64();
    match d.as_secs() {
        _ if d.subsec_nanos() != 0 => format!("{s}s"),
        n if n % 3600 == 0 => format!("{}h", n / 3600),
        n if n % 60 == 0 => format!("{}m", n / 60),
        n => format!("{n}s"),
    }
}

impl ForecastPolicy {
    /// How many steps ahead the served value is.
    pub fn steps_ahead(&self) -> f64 {
        steps_ahead(self.lead, self.step)
    }

    /// Samples a range query over `[now - window, now]` at `step` returns.
    pub fn points(&self) -> usize {
        (self.window.as_secs_f64() / self.step.as_secs_f64()).floor() as usize + 1
    }

    /// The served value of `history` (evenly spaced `step` apart, oldest first, gaps as NaN;
    /// leading gaps are not history): the method's forecast `lead` ahead, or on a spike
    /// `max(latest, forecast)`.
    pub fn serve(&self, history: &[f64]) -> Result<Served, ForecastError> {
        let h = self.steps_ahead();
        let (value, residuals, fell_back) = match self.method {
            Method::Holt(holt) => {
                let value = holt.forecast(history, h).ok_or(ForecastError::NoData)?;
                let residuals = match self.spike {
                    Some(_) => holt.residuals(history),
                    None => Vec::new(),
                };
                (value, residuals, false)
            }
            // A season's phases count from the first sample of the series: gaps before it are
            // not history (a series that began an hour ago has an hour, not a day of gaps).
            Method::HoltWinters(hw, fallback) => match hw.fit(
                &history[history
                    .iter()
                    .position(|x| x.is_finite())
                    .unwrap_or(history.len())..],
            ) {
                Ok(fit) => (fit.ahead(h), fit.residuals, false),
                Err(ForecastError::TooShort { .. }) if fallback == Fallback::Holt => {
                    let holt = Holt {
                        alpha: hw.alpha,
                        beta: hw.beta,
                    };
                    let value = holt.forecast(history, h).ok_or(ForecastError::NoData)?;
                    (value, holt.residuals(history), true)
                }
                Err(e) => return Err(e),
            },
        };
        let latest = history.iter().rev().copied().find(|x| x.is_finite());
        let spike = match (self.spike, latest) {
            (Some(guard), Some(_)) => guard.is_spike(&residuals),
            _ => false,
        };
        let value = match latest {
            Some(latest) if spike || self.floor == Floor::Latest => value.max(latest),
            _ => value,
        };
        Ok(Served {
            value,
            spike,
            fell_back,
        })
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

    type Config = ForecastConfig<Duration>;

    fn config(method: MethodName) -> Config {
        ForecastConfig {
            lead: Duration::from_secs(60),
            method,
            window: None,
            step: None,
            alpha: None,
            beta: None,
            gamma: None,
            period: None,
            fallback: None,
            spike: None,
            floor: None,
        }
    }

    fn fields(c: &Config) -> Vec<&'static str> {
        c.resolve()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.0)
            .collect()
    }

    #[test]
    fn holt_defaults_are_the_adapters_old_ones() {
        let p = config(MethodName::Holt).resolve().unwrap();
        assert_eq!((p.window, p.step), (HOLT_WINDOW, DEFAULT_STEP));
        assert_eq!(p.method, Method::Holt(Holt::default()));
        assert_eq!(p.points(), 41);
        assert_eq!(p.steps_ahead(), 4.0);
    }

    #[test]
    fn a_daily_season_chooses_a_step_within_prometheus_limit() {
        let day = Duration::from_secs(86_400);
        let c = Config {
            period: Some(day),
            ..config(MethodName::HoltWinters)
        };
        let p = c.resolve().unwrap();
        assert_eq!(p.window, day * 2);
        assert_eq!(p.step, Duration::from_secs(16));
        assert!(p.window.as_secs_f64() / p.step.as_secs_f64() <= MAX_POINTS);
        let Method::HoltWinters(hw, Fallback::Holt) = p.method else {
            panic!("{:?}", p.method)
        };
        assert_eq!(hw.season, 5_400);
        assert_eq!(hw.gamma, DEFAULT_GAMMA);
        // Given a step too fine for two days, the problem names the step and one that fits.
        let c = Config {
            step: Some(Duration::from_secs(15)),
            ..c
        };
        let problems = c.resolve().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "step");
        assert!(
            problems[0].1.contains("11520") && problems[0].1.contains("16s"),
            "{problems:?}"
        );
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let hw = Config {
            period: Some(Duration::from_secs(3_600)),
            step: Some(Duration::from_secs(7)),
            window: Some(Duration::from_secs(1_800)),
            gamma: Some(0.0),
            alpha: Some(2.0),
            spike: Some(SpikeConfig {
                k: Some(-1.0),
                window: Some(Duration::from_secs(7_200)),
            }),
            ..config(MethodName::HoltWinters)
        };
        let mut got = fields(&hw);
        got.sort();
        assert_eq!(
            got,
            [
                "alpha",
                "gamma",
                "period",
                "spike.k",
                "spike.window",
                "window"
            ]
        );
        assert_eq!(fields(&config(MethodName::HoltWinters)), ["period"]);
        let holt = Config {
            gamma: Some(0.3),
            period: Some(Duration::from_secs(60)),
            fallback: Some(Fallback::None),
            ..config(MethodName::Holt)
        };
        assert_eq!(fields(&holt), ["gamma", "period", "fallback"]);
        let fine = Config {
            step: Some(Duration::from_millis(500)),
            ..config(MethodName::Holt)
        };
        assert_eq!(fields(&fine), ["step"]);
    }

    fn seasonal(fallback: Fallback, spike: bool) -> ForecastPolicy {
        Config {
            lead: Duration::from_secs(4),
            // Slow smoothing, as a season wants: it lags a sudden change.
            alpha: Some(0.2),
            beta: Some(0.05),
            period: Some(Duration::from_secs(24)),
            step: Some(Duration::from_secs(1)),
            fallback: Some(fallback),
            spike: spike.then(SpikeConfig::default),
            floor: Some(Floor::None),
            ..config(MethodName::HoltWinters)
        }
        .resolve()
        .unwrap()
    }

    #[test]
    fn a_short_history_falls_back_to_holt_or_is_refused() {
        let xs = [10.0, 12.0, 14.0];
        let s = seasonal(Fallback::Holt, false).serve(&xs).unwrap();
        assert!(s.fell_back);
        let same = Holt {
            alpha: 0.2,
            beta: 0.05,
        };
        assert_eq!(Some(s.value), same.forecast(&xs, 4.0));
        assert_eq!(
            seasonal(Fallback::None, false).serve(&xs),
            Err(ForecastError::TooShort { need: 25, have: 3 })
        );
    }

    #[test]
    fn a_spike_serves_the_latest_value_at_once() {
        // Two days of a wave with a little noise, then a jump to three times the level.
        let mut xs: Vec<f64> = (0..48)
            .map(|t| {
                100.0
                    + 30.0 * (2.0 * std::f64::consts::PI * t as f64 / 24.0).sin()
                    + ((t * 37) % 5) as f64
            })
            .collect();
        xs.push(300.0);
        let smooth = seasonal(Fallback::Holt, false).serve(&xs).unwrap();
        let fast = seasonal(Fallback::Holt, true).serve(&xs).unwrap();
        assert!(!smooth.spike && fast.spike);
        assert!(smooth.value < 200.0, "the smoothing lags: {}", smooth.value);
        assert_eq!(fast.value, 300.0);
        // Without the jump the fast path changes nothing.
        xs.pop();
        assert_eq!(
            seasonal(Fallback::Holt, true).serve(&xs).unwrap().value,
            seasonal(Fallback::Holt, false).serve(&xs).unwrap().value
        );
    }

    #[test]
    fn by_default_the_forecast_leads_the_latest_value_but_never_lags_it() {
        // A falling ramp: Holt forecasts below the latest value; the floor serves the latest.
        let falling: Vec<f64> = (0..20).map(|i| 200.0 - 5.0 * i as f64).collect();
        let latest = *falling.last().unwrap();
        let p = config(MethodName::Holt).resolve().unwrap();
        assert_eq!(p.floor, Floor::Latest);
        assert_eq!(p.serve(&falling).unwrap().value, latest);
        let bare = ForecastPolicy {
            floor: Floor::None,
            ..p
        };
        assert!(bare.serve(&falling).unwrap().value < latest);
        // A rising ramp: the forecast is ahead of the latest value and is served as it is.
        let rising: Vec<f64> = (0..20).map(|i| 100.0 + 5.0 * i as f64).collect();
        let ahead = p.serve(&rising).unwrap().value;
        assert!(ahead > *rising.last().unwrap());
        assert_eq!(ahead, bare.serve(&rising).unwrap().value);
    }

    #[test]
    fn holt_residuals_are_one_step_errors() {
        let xs: Vec<f64> = (0..10).map(|i| 3.0 * i as f64).collect();
        assert!(Holt::default()
            .residuals(&xs)
            .iter()
            .all(|r| r.abs() < 1e-9));
        let r = Holt::default().residuals(&[1.0, f64::NAN, 2.0, 10.0]);
        assert_eq!(r.len(), 2, "gaps are skipped: {r:?}");
        assert_eq!(r[1], 10.0 - 3.0);
    }

    proptest::proptest! {
        #[test]
        fn the_served_value_is_never_below_the_floor_nor_below_the_smoothing(
            xs in proptest::collection::vec(0.0..1e5f64, 0..80),
            lead in 0u64..30,
            spike in proptest::bool::ANY,
            floor in proptest::bool::ANY,
        ) {
            let mut c = config(MethodName::HoltWinters);
            c.lead = Duration::from_secs(lead);
            c.period = Some(Duration::from_secs(12));
            c.step = Some(Duration::from_secs(1));
            c.spike = spike.then(SpikeConfig::default);
            c.floor = floor.then_some(Floor::Latest).or(Some(Floor::None));
            let p = c.resolve().unwrap();
            let plain = ForecastPolicy { spike: None, floor: Floor::None, ..p };
            let latest = xs.last().copied();
            match (p.serve(&xs), plain.serve(&xs)) {
                (Ok(s), Ok(q)) => {
                    proptest::prop_assert!(s.value >= 0.0 && s.value.is_finite());
                    proptest::prop_assert!(s.value >= q.value);
                    if floor {
                        proptest::prop_assert!(s.value >= latest.unwrap_or(0.0));
                        proptest::prop_assert_eq!(s.value, q.value.max(latest.unwrap_or(0.0)));
                    } else {
                        proptest::prop_assert!(s.spike || s.value == q.value);
                    }
                }
                (Err(e), Err(f)) => proptest::prop_assert_eq!(e, f),
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }
}
