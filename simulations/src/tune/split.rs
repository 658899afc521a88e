//! The train / held-out split of a run by time, and what each part adds up to.
//!
//! A run is simulated whole (the HPA's state carries over from one part to the next, as it
//! would in production); each step's row is counted in the part its time falls in. The
//! tuner chooses on the train part only and reports both.

use serde::Deserialize;

use crate::engine::StepRow;
use crate::scenario::Slo;
use crate::stats::Histogram;

/// How the run is cut into train and held-out time.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SplitMode {
    /// `days` for a run of at least two days, else `tail`.
    #[default]
    Auto,
    /// The last `holdout` fraction of the run is held out.
    Tail,
    /// Whole days (from the start) are held out, spread evenly, `holdout` of them: both parts
    /// see the daily cycle (a last partial day counts as a day).
    Days,
}

const DAY: f64 = 86_400.0;

/// A split of `[0, seconds)`: which times are held out.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// The mode in force (never `Auto`).
    pub mode: SplitMode,
    /// The fraction held out asked for.
    pub holdout: f64,
    /// The run's length, seconds.
    pub seconds: f64,
    /// Held-out intervals `[from, to)`, in order, disjoint.
    pub held_out: Vec<(f64, f64)>,
}

impl Split {
    /// The split of a run of `seconds` holding out `holdout` (in (0, 1)) by `mode`.
    pub fn new(mode: SplitMode, holdout: f64, seconds: f64) -> Split {
        let mode = match mode {
            SplitMode::Auto if seconds >= 2.0 * DAY => SplitMode::Days,
            SplitMode::Auto => SplitMode::Tail,
            m => m,
        };
        let held_out = match mode {
            SplitMode::Days => {
                let days = (seconds / DAY).ceil().max(1.0) as usize;
                // Day d is held out when the running count of held-out days steps up there:
                // `holdout × days` of them, evenly spread, the first never (training sees the
                // start).
                (0..days)
                    .filter(|&d| ((d + 1) as f64 * holdout).floor() > (d as f64 * holdout).floor())
                    .map(|d| (d as f64 * DAY, ((d + 1) as f64 * DAY).min(seconds)))
                    .collect()
            }
            _ => vec![(seconds * (1.0 - holdout), seconds)],
        };
        Split {
            mode,
            holdout,
            seconds,
            held_out,
        }
    }

    /// Whether time `t` (seconds from the start) is held out.
    pub fn is_held_out(&self, t: f64) -> bool {
        self.held_out.iter().any(|&(a, b)| t >= a && t < b)
    }

    /// Held-out seconds.
    pub fn held_out_seconds(&self) -> f64 {
        self.held_out.iter().map(|(a, b)| b - a).sum()
    }

    /// The intervals as text (`6d–7d`, `16h48m–24h`).
    pub fn describe(&self) -> String {
        let t =
            |s: f64| gofe_yaml::duration::format(std::time::Duration::from_secs(s.round() as u64));
        self.held_out
            .iter()
            .map(|&(a, b)| format!("{}..{}", t(a), t(b)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What one part of a run adds up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Part {
    /// Simulated seconds in the part.
    pub seconds: f64,
    /// Requests offered.
    pub requests: f64,
    /// Requests failed.
    pub failed: f64,
    /// Seconds in steps whose p99 or failure ratio broke the SLO (the rule of
    /// [`crate::engine::Summary::slo_violation_seconds`]).
    pub slo_violation_seconds: f64,
    /// Σ pods × seconds, the pods that exist at the end of each step (the per-step CSV's
    /// `pods`; `gofe sim run`'s summary counts them before the step's scaling, which differs
    /// by the pods started and stopped).
    pub pod_seconds: f64,
    /// The requests-weighted 99th percentile of the steps' p99, ms (an upper bound of the
    /// part's request p99: a step's requests are counted at its p99).
    pub p99_ms: f64,
}

impl Part {
    /// Failed requests / requests (0 without requests).
    pub fn error_fraction(&self) -> f64 {
        if self.requests > 0.0 {
            self.failed / self.requests
        } else {
            0.0
        }
    }
}

/// Counts rows into the train and held-out [`Part`]s.
pub struct Tally<'a> {
    split: &'a Split,
    slo: &'a Slo,
    dt: f64,
    parts: [Part; 2],
    hist: [Histogram; 2],
}

impl<'a> Tally<'a> {
    /// A tally of steps of `dt` seconds against `slo`.
    pub fn new(split: &'a Split, slo: &'a Slo, dt: f64) -> Self {
        Tally {
            split,
            slo,
            dt,
            parts: [Part::default(), Part::default()],
            hist: [Histogram::new(), Histogram::new()],
        }
    }

    /// Counts one step.
    pub fn push(&mut self, row: &StepRow) {
        let i = usize::from(self.split.is_held_out(row.t));
        let p = &mut self.parts[i];
        p.seconds += self.dt;
        p.requests += row.requests;
        p.failed += row.failed;
        p.pod_seconds += row.pods as f64 * self.dt;
        let p99 = row.p99_ms / 1000.0;
        if p99 > self.slo.p99.secs()
            || (row.requests > 0.0 && row.failed / row.requests > self.slo.errors)
        {
            p.slo_violation_seconds += self.dt;
        }
        if row.requests > 0.0 {
            self.hist[i].add(p99, row.requests);
        }
    }

    /// The train and held-out parts.
    pub fn finish(self) -> (Part, Part) {
        let [mut train, mut held] = self.parts;
        train.p99_ms = self.hist[0].quantile(0.99) * 1000.0;
        held.p99_ms = self.hist[1].quantile(0.99) * 1000.0;
        (train, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_days_hold_out_three_spread_days() {
        let s = Split::new(SplitMode::Auto, 0.3, 10.0 * DAY);
        assert_eq!(s.mode, SplitMode::Days);
        let days: Vec<f64> = s.held_out.iter().map(|(a, _)| a / DAY).collect();
        assert_eq!(days, [3.0, 6.0, 9.0]);
        let s = Split::new(SplitMode::Auto, 0.3, DAY);
        assert_eq!(s.mode, SplitMode::Tail);
        assert_eq!(s.held_out, [(0.7 * DAY, DAY)]);
    }
}
