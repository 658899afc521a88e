//! `gofe sim tune`: searches the HPA settings a user can set and recommends the cheapest one
//! that meets the SLO, chosen on one part of the trace and reported on another.
//!
//! ```text
//!  scenario (autoscaling = baseline) + tune: section / flags
//!        │
//!        ▼
//!  space (dimensions: target, tolerance, windows, policies, forecast…)   split (train | held-out)
//!        │                                                                  │
//!        ▼                                                                  ▼
//!  search: Latin hypercube → coordinate refinement ──► pool: one whole run per candidate,
//!        ▲   (ranked on train only)                    every core, rows tallied per part
//!        └───────────────────────────────────────────────┘
//!        ▼
//!  report: recommendation vs the default HPA on train and held-out; OVERFITTING when the
//!          held-out part disagrees
//! ```
//!
//! Every candidate is simulated over the whole run (the HPA's state carries from train time
//! into held-out time, as it would in production), and each step counts in the part its time
//! falls in; candidates are ranked on the train part only. "Meets the SLO" on a part means at
//! most `slo_budget` of its seconds violate the scenario's SLO and no more than the default
//! HPA's do. The default HPA is the scenario's autoscaling section (its metrics, targets and
//! replica bounds) with Kubernetes' default `behavior`, the default tolerance and no forecast.
//!
//! What it does not do: tune the service, the pipeline or the balancer (the balancer is the
//! tuned policy's), or search policies other than the HPA's settings that exist today; a new
//! setting is one more entry in [`space::KINDS`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::engine::{self, RunError};
use crate::scenario::{self, Autoscaling, Policy, Problem, Scenario};

pub mod cli;
pub mod pool;
pub mod render;
pub mod search;
pub mod space;
pub mod split;

pub use self::search::{Candidate, Eval, Objective, Origin};
pub use self::space::{DimSpec, Scalar, Space};
pub use self::split::{Part, Split, SplitMode};

/// The `tune:` section of a scenario: what `gofe sim tune` searches and how it judges. Every
/// field is optional; the command line overrides them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneConfig {
    /// The policy whose autoscaling is tuned (default: the first); its autoscaling section,
    /// or the scenario's, is the baseline.
    #[serde(default)]
    pub policy: Option<String>,
    /// Fraction of the run held out, in [0.05, 0.95] (default 0.3).
    #[serde(default)]
    pub holdout: Option<f64>,
    /// How the run is split (default `auto`: whole days for a run of two days or more, else
    /// the last `holdout` of it).
    #[serde(default)]
    pub split: Option<SplitMode>,
    /// Evaluations at most, 1..=100000 (default 120; the two reference runs come on top).
    #[serde(default)]
    pub budget: Option<usize>,
    /// Fraction of a part's seconds allowed to violate the SLO, in [0, 1] (default 0.001).
    #[serde(default)]
    pub slo_budget: Option<f64>,
    /// How much of the cost advantage may be lost on held-out before it is called
    /// overfitting, as a fraction of the default HPA's cost, in [0, 1] (default 0.05).
    #[serde(default)]
    pub overfit_margin: Option<f64>,
    /// The dimensions searched and their ranges (absent: every dimension that applies, with
    /// its default range; see `simulations/README.md`).
    #[serde(default)]
    pub dimensions: Option<BTreeMap<String, DimSpec>>,
}

/// Default `holdout`.
pub const DEFAULT_HOLDOUT: f64 = 0.3;
/// Default `budget`.
pub const DEFAULT_BUDGET: usize = 120;
/// Default `slo_budget`.
pub const DEFAULT_SLO_BUDGET: f64 = 0.001;
/// Default `overfit_margin`.
pub const DEFAULT_OVERFIT_MARGIN: f64 = 0.05;

/// Why a tune could not run.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The settings are wrong (every problem, each with its field or flag).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Settings(Vec<Problem>),
    /// A reference run failed (a bad trace, say): every candidate would.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Everything a tune needs beyond the scenario, resolved from its `tune:` section and the
/// command line.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// The tuned policy's index in the scenario.
    pub policy: usize,
    /// Fraction held out.
    pub holdout: f64,
    /// The split mode.
    pub split: SplitMode,
    /// Evaluations at most.
    pub budget: usize,
    /// Fraction of seconds allowed to violate the SLO.
    pub slo_budget: f64,
    /// See [`TuneConfig::overfit_margin`].
    pub overfit_margin: f64,
    /// The dimensions (`None`: the defaults).
    pub dimensions: Option<BTreeMap<String, DimSpec>>,
    /// Threads (at least 1).
    pub jobs: usize,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
}

/// Command-line overrides of a `tune:` section (`None`: the section's value or the default).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--policy`.
    pub policy: Option<String>,
    /// `--holdout`.
    pub holdout: Option<f64>,
    /// `--split`.
    pub split: Option<SplitMode>,
    /// `--budget`.
    pub budget: Option<usize>,
    /// `--slo-budget`.
    pub slo_budget: Option<f64>,
    /// `--overfit-margin`.
    pub overfit_margin: Option<f64>,
    /// `--dim NAME=MIN..MAX` (or `NAME=A,B` for values), in order; a later one replaces an
    /// earlier one and the section's; with any, only the dimensions named are searched.
    pub dims: Vec<String>,
    /// `--jobs` (default: every core).
    pub jobs: Option<usize>,
}

/// Problems of a `tune:` section (under `tune.`) that need the rest of the scenario.
pub fn validate(t: &TuneConfig, s: &Scenario) -> Vec<Problem> {
    let mut p = Vec::new();
    check_settings(
        &mut p,
        &[
            ("tune.holdout", t.holdout),
            ("tune.slo_budget", t.slo_budget),
            ("tune.overfit_margin", t.overfit_margin),
        ],
        t.budget.map(|b| ("tune.budget", b)),
    );
    match baseline_of(s, t.policy.as_deref(), "tune.policy") {
        Ok((_, a)) => {
            if let Err(list) = Space::new(t.dimensions.as_ref(), a, "tune.dimensions") {
                p.extend(list);
            }
        }
        Err(e) => p.push(e),
    }
    p
}

fn problem(field: &str, message: impl Into<String>) -> Problem {
    Problem {
        line: None,
        column: None,
        field: field.to_owned(),
        message: message.into(),
    }
}

fn check_settings(
    p: &mut Vec<Problem>,
    fractions: &[(&str, Option<f64>)],
    budget: Option<(&str, usize)>,
) {
    for &(field, v) in fractions {
        let Some(v) = v else { continue };
        let (lo, hi) = if field.ends_with("holdout") {
            (0.05, 0.95)
        } else {
            (0.0, 1.0)
        };
        if !(lo..=hi).contains(&v) {
            p.push(problem(field, format!("must be in [{lo}, {hi}]")));
        }
    }
    if let Some((field, b)) = budget {
        if !(1..=100_000).contains(&b) {
            p.push(problem(field, "must be in 1..=100000"));
        }
    }
}

/// The tuned policy (by name, or the first) and its autoscaling section, or why there is none.
fn baseline_of<'a>(
    s: &'a Scenario,
    policy: Option<&str>,
    field: &str,
) -> Result<(usize, &'a Autoscaling), Problem> {
    let i = match policy {
        Some(name) => s
            .policies
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| problem(field, format!("no policy named {name:?}")))?,
        None => 0,
    };
    let Some(pol) = s.policies.get(i) else {
        return Err(problem("policies", "at least one policy"));
    };
    if pol.fixed_replicas {
        return Err(problem(
            field,
            format!(
                "policy {:?} runs with fixed replicas: nothing to tune",
                pol.name
            ),
        ));
    }
    match pol.autoscaling.as_ref().or(s.autoscaling.as_ref()) {
        Some(a) => Ok((i, a)),
        None => Err(problem(
            field,
            format!(
                "policy {:?} has no autoscaling section (nor has the scenario): nothing to tune",
                pol.name
            ),
        )),
    }
}

/// Parses one `--dim` value: `NAME=MIN..MAX` or `NAME=A,B` (values, for a switch).
fn parse_dim(spec: &str) -> Result<(String, DimSpec), Problem> {
    let field = format!("--dim {spec}");
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| problem(&field, "expected NAME=MIN..MAX or NAME=A,B"))?;
    let scalar = |s: &str| -> Scalar {
        match s {
            "true" | "on" => Scalar::Bool(true),
            "false" | "off" => Scalar::Bool(false),
            _ => s
                .parse::<f64>()
                .map_or_else(|_| Scalar::Text(s.to_owned()), Scalar::Number),
        }
    };
    let d = match rest.split_once("..") {
        Some((lo, hi)) => DimSpec {
            min: Some(scalar(lo)),
            max: Some(scalar(hi)),
            values: None,
        },
        None => DimSpec {
            min: None,
            max: None,
            values: Some(rest.split(',').map(scalar).collect()),
        },
    };
    Ok((name.to_owned(), d))
}

/// The options of a tune of `s`: its `tune:` section (already validated with the scenario)
/// under the command line's `o`; every problem of the flags, each naming its flag.
pub fn resolve(s: &Scenario, o: &Overrides) -> Result<TuneOptions, TuneError> {
    let t = s.tune.clone().unwrap_or_default();
    let mut p = Vec::new();
    check_settings(
        &mut p,
        &[
            ("--holdout", o.holdout),
            ("--slo-budget", o.slo_budget),
            ("--overfit-margin", o.overfit_margin),
        ],
        o.budget.map(|b| ("--budget", b)),
    );
    if o.jobs == Some(0) {
        p.push(problem("--jobs", "must be at least 1"));
    }
    let (field, policy) = match &o.policy {
        Some(name) => ("--policy", Some(name.as_str())),
        None => ("tune.policy", t.policy.as_deref()),
    };
    let mut dimensions = t.dimensions.clone();
    if !o.dims.is_empty() {
        let mut map = BTreeMap::new();
        for d in &o.dims {
            match parse_dim(d) {
                Ok((name, spec)) => {
                    map.insert(name, spec);
                }
                Err(e) => p.push(e),
            }
        }
        dimensions = Some(map);
    }
    let policy = match baseline_of(s, policy, field) {
        Ok((i, a)) => {
            let dim_field = if o.dims.is_empty() {
                "tune.dimensions"
            } else {
                "--dim"
            };
            if let Err(list) = Space::new(dimensions.as_ref(), a, dim_field) {
                p.extend(list);
            }
            i
        }
        Err(e) => {
            p.push(e);
            0
        }
    };
    if !p.is_empty() {
        return Err(TuneError::Settings(p));
    }
    Ok(TuneOptions {
        policy,
        holdout: o.holdout.or(t.holdout).unwrap_or(DEFAULT_HOLDOUT),
        split: o.split.or(t.split).unwrap_or_default(),
        budget: o.budget.or(t.budget).unwrap_or(DEFAULT_BUDGET),
        slo_budget: o.slo_budget.or(t.slo_budget).unwrap_or(DEFAULT_SLO_BUDGET),
        overfit_margin: o
            .overfit_margin
            .or(t.overfit_margin)
            .unwrap_or(DEFAULT_OVERFIT_MARGIN),
        dimensions,
        jobs: o.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
        progress: true,
    })
}

// === the tune ===

/// The verdict on the recommendation.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// It meets the SLO on train and on held-out, with its advantage within the margin.
    Holds,
    /// It wins on train but not on held-out: the reasons.
    Overfitting(Vec<String>),
    /// No candidate meets the SLO on train; the recommendation is the least violating.
    NoneMeets,
}

impl Verdict {
    /// The process exit status `gofe sim tune` ends with: 0, 3 for overfitting, 4 when no
    /// candidate meets the SLO.
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Holds => 0,
            Verdict::Overfitting(_) => 3,
            Verdict::NoneMeets => 4,
        }
    }
}

/// A tune's outcome.
#[derive(Clone, Debug)]
pub struct TuneReport {
    /// The scenario's name.
    pub scenario: String,
    /// The tuned policy's name.
    pub policy: String,
    /// The seed (of the runs and of the sample).
    pub seed: u64,
    /// The options in force.
    pub options: TuneOptions,
    /// The split.
    pub split: Split,
    /// The space searched.
    pub space: Space,
    /// The baseline's value of each dimension.
    pub baseline_point: space::Point,
    /// The default HPA's scores.
    pub default_hpa: Eval,
    /// The scenario's own setting's scores.
    pub baseline: Eval,
    /// Every candidate evaluated, in evaluation order.
    pub candidates: Vec<Candidate>,
    /// Index of the recommendation in `candidates`.
    pub best: usize,
    /// Whether the recommendation meets the SLO on train and on held-out.
    pub meets: (bool, bool),
    /// The verdict.
    pub verdict: Verdict,
    /// Notes on the held-out part that are not overfitting.
    pub notes: Vec<String>,
    /// The recommended autoscaling section (the baseline with the recommendation written in).
    pub recommended_autoscaling: Autoscaling,
    /// Wall time of the tune, seconds.
    pub wall_seconds: f64,
}

impl TuneReport {
    /// The recommended candidate.
    pub fn recommendation(&self) -> &Candidate {
        &self.candidates[self.best]
    }

    /// The recommendation's scores.
    pub fn recommended(&self) -> &Eval {
        match &self.recommendation().eval {
            Ok(e) => e,
            // The recommendation is always a candidate that ran: `best` ranks failures last and
            // a tune with no candidate that ran is an error.
            Err(_) => &self.default_hpa,
        }
    }
}

/// Kubernetes' default HPA for the baseline `a`: its metrics, targets and replica bounds with
/// the default behavior, the default tolerance and no forecast.
pub fn default_hpa(a: &Autoscaling) -> Autoscaling {
    let mut d = a.clone();
    d.behavior = Some(Default::default());
    d.tolerance = gofe_core::hpa::DEFAULT_TOLERANCE;
    for m in &mut d.metrics {
        if let scenario::SimMetric::ExternalRps { forecast, .. } = m {
            *forecast = None;
        }
    }
    d
}

/// What a candidate runs: the scenario with `a` as its autoscaling, and the one policy.
fn scenario_with(s: &Scenario, policy: &Policy, a: Autoscaling) -> Scenario {
    let mut sc = s.clone();
    sc.autoscaling = Some(a);
    let mut p = policy.clone();
    p.autoscaling = None;
    sc.policies = vec![p];
    sc.tune = None;
    sc
}

/// Runs one candidate over the whole scenario, tallying its rows into the split's parts.
fn evaluate(sc: &Scenario, base: &Path, split: &Split) -> Result<Eval, RunError> {
    let problems = scenario::validate(sc);
    if let Some(p) = problems.first() {
        return Err(RunError::Policy {
            policy: sc.policies[0].name.clone(),
            message: p.to_string(),
        });
    }
    let mut tally = split::Tally::new(split, &sc.slo, sc.step.secs());
    engine::run(
        sc,
        &sc.policies[0],
        base,
        &mut |row| tally.push(row),
        &mut |_| {},
    )?;
    let (train, held_out) = tally.finish();
    Ok(Eval { train, held_out })
}

/// Tunes the autoscaling of `options.policy` in `s` (trace paths relative to `base`).
pub fn tune(s: &Scenario, base: &Path, options: &TuneOptions) -> Result<TuneReport, TuneError> {
    let policy = &s.policies[options.policy];
    let (_, a) =
        baseline_of(s, Some(&policy.name), "--policy").map_err(|e| TuneError::Settings(vec![e]))?;
    let space = Space::new(options.dimensions.as_ref(), a, "tune.dimensions")
        .map_err(TuneError::Settings)?;
    let seconds = match s.duration {
        Some(d) => d.secs(),
        None => engine::run_length(s, base)?,
    };
    let steps = (seconds / s.step.secs()).round();
    let split = Split::new(options.split, options.holdout, steps * s.step.secs());
    let progress = pool::Progress::new(
        &format!("tune {}", s.name),
        options.budget + 2,
        options.progress,
    );

    // The reference runs: the default HPA and the scenario as written.
    let refs = [default_hpa(a), a.clone()];
    let mut ref_evals = pool::map(&refs, options.jobs, &progress, |a| {
        evaluate(&scenario_with(s, policy, a.clone()), base, &split)
    })
    .into_iter();
    let default_eval = ref_evals.next().unwrap_or_else(unreachable_run)?;
    let baseline_eval = ref_evals.next().unwrap_or_else(unreachable_run)?;

    let objective = Objective {
        reference: &default_eval.train,
        slo_budget: options.slo_budget,
    };
    let baseline_point = space.baseline(a);
    let plan = search::Plan {
        budget: options.budget,
        seed: s.seed,
    };
    let mut evaluate_batch = |points: &[space::Point]| {
        pool::map(points, options.jobs, &progress, |p| {
            evaluate(&scenario_with(s, policy, space.apply(a, p)), base, &split)
                .map_err(|e| e.to_string())
        })
    };
    let candidates = search::run(
        &space,
        &baseline_point,
        plan,
        &objective,
        &mut evaluate_batch,
    );
    progress.finish();
    let best = search::recommend(&candidates, &objective, &space, &baseline_point)
        .filter(|&b| candidates[b].eval.is_ok())
        .ok_or_else(|| {
            TuneError::Settings(vec![problem(
                "tune",
                match candidates.first().map(|c| &c.eval) {
                    Some(Err(e)) => format!("no candidate could run: {e}"),
                    _ => "no candidate could run".to_owned(),
                },
            )])
        })?;
    let rec = match &candidates[best].eval {
        Ok(e) => e.clone(),
        Err(_) => default_eval.clone(),
    };
    let held_objective = Objective {
        reference: &default_eval.held_out,
        slo_budget: options.slo_budget,
    };
    let meets = (
        objective.meets(&rec.train),
        held_objective.meets(&rec.held_out),
    );
    let (verdict, notes) = judge(
        &rec,
        &default_eval,
        meets,
        options.slo_budget,
        options.overfit_margin,
    );
    let recommended_autoscaling = space.apply(a, &candidates[best].point);
    Ok(TuneReport {
        scenario: s.name.clone(),
        policy: policy.name.clone(),
        seed: s.seed,
        options: options.clone(),
        split,
        space,
        baseline_point,
        default_hpa: default_eval,
        baseline: baseline_eval,
        candidates,
        best,
        meets,
        verdict,
        notes,
        recommended_autoscaling,
        wall_seconds: progress.elapsed(),
    })
}

/// `pool::map` returns one result per item; this stands for the impossible other case.
fn unreachable_run() -> Result<Eval, RunError> {
    Err(RunError::Policy {
        policy: String::new(),
        message: "a reference run gave no result".into(),
    })
}

/// The verdict on the recommendation `rec` against the default HPA `def`.
fn judge(
    rec: &Eval,
    def: &Eval,
    meets: (bool, bool),
    slo_budget: f64,
    margin: f64,
) -> (Verdict, Vec<String>) {
    let mut notes = Vec::new();
    if !meets.0 {
        return (Verdict::NoneMeets, notes);
    }
    let mut reasons = Vec::new();
    let h = &rec.held_out;
    let dh = &def.held_out;
    if !meets.1 {
        let default_misses = dh.slo_violation_seconds > slo_budget * dh.seconds + 1e-9;
        if default_misses && h.slo_violation_seconds <= dh.slo_violation_seconds + 1e-9 {
            notes.push(format!(
                "held-out is harder than train: the default HPA misses the SLO budget there too ({:.0} s violating, the recommendation {:.0} s)",
                dh.slo_violation_seconds, h.slo_violation_seconds
            ));
        } else {
            reasons.push(format!(
                "meets the SLO on train but not on held-out: {:.0} s violating (default HPA {:.0} s, budget {:.0} s)",
                h.slo_violation_seconds,
                dh.slo_violation_seconds,
                slo_budget * h.seconds
            ));
        }
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 1.0 };
    let train_ratio = ratio(rec.train.pod_seconds, def.train.pod_seconds);
    let held_ratio = ratio(h.pod_seconds, dh.pod_seconds);
    if held_ratio > train_ratio + margin {
        reasons.push(format!(
            "its cost advantage shrinks on held-out: {:.1} % of the default HPA's pod-seconds on train, {:.1} % on held-out (margin {:.0} points)",
            100.0 * train_ratio,
            100.0 * held_ratio,
            100.0 * margin
        ));
    }
    if reasons.is_empty() {
        (Verdict::Holds, notes)
    } else {
        (Verdict::Overfitting(reasons), notes)
    }
}

// === output ===

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn part_json(p: &Part, reference: &Part) -> serde_json::Value {
    serde_json::json!({
        "seconds": p.seconds,
        "slo_violation_seconds": p.slo_violation_seconds,
        "error_fraction": p.error_fraction(),
        "p99_ms": p.p99_ms,
        "pod_seconds": p.pod_seconds,
        "requests": p.requests,
        "failed": p.failed,
        "ratio_to_default_hpa": {
            "slo_violation_seconds": ratio(p.slo_violation_seconds, reference.slo_violation_seconds),
            "error_fraction": ratio(p.error_fraction(), reference.error_fraction()),
            "p99_ms": ratio(p.p99_ms, reference.p99_ms),
            "pod_seconds": ratio(p.pod_seconds, reference.pod_seconds),
        },
    })
}

fn eval_json(e: &Eval, reference: &Eval) -> serde_json::Value {
    serde_json::json!({
        "train": part_json(&e.train, &reference.train),
        "held_out": part_json(&e.held_out, &reference.held_out),
    })
}

fn setting_json(space: &Space, p: &[f64]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (name, v) in space.describe(p) {
        m.insert(name.into(), v.map_or(serde_json::Value::Null, Into::into));
    }
    m.into()
}

/// The report as one JSON document (numbers unrounded; a ratio whose default is 0 is `null`).
pub fn report_json(r: &TuneReport) -> String {
    let rec = r.recommendation();
    let (overfitting, reasons) = match &r.verdict {
        Verdict::Overfitting(reasons) => (true, reasons.clone()),
        _ => (false, Vec::new()),
    };
    let evaluations = r.candidates.len();
    let doc = serde_json::json!({
        "scenario": r.scenario,
        "policy": r.policy,
        "seed": r.seed,
        "split": {
            "mode": match r.split.mode { SplitMode::Days => "days", _ => "tail" },
            "holdout": r.split.holdout,
            "held_out": r.split.held_out.iter().map(|&(a, b)| serde_json::json!([a, b])).collect::<Vec<_>>(),
            "train_seconds": r.split.seconds - r.split.held_out_seconds(),
            "held_out_seconds": r.split.held_out_seconds(),
        },
        "slo_budget": r.options.slo_budget,
        "overfit_margin": r.options.overfit_margin,
        "budget": r.options.budget,
        "evaluations": evaluations,
        "dimensions": r.space.dims.iter().map(|d| {
            let k = d.kind();
            match &d.domain {
                space::Domain::Range { lo, hi, unit } => serde_json::json!({
                    "name": k.name,
                    "min": space::format_value(*unit, *lo),
                    "max": space::format_value(*unit, *hi),
                }),
                space::Domain::Choice(o) => serde_json::json!({ "name": k.name, "values": o }),
            }
        }).collect::<Vec<_>>(),
        "baseline_setting": setting_json(&r.space, &r.baseline_point),
        "recommendation": {
            "setting": setting_json(&r.space, &rec.point),
            "meets_slo": { "train": r.meets.0, "held_out": r.meets.1 },
            "scores": eval_json(r.recommended(), &r.default_hpa),
        },
        "default_hpa": eval_json(&r.default_hpa, &r.default_hpa),
        "baseline": eval_json(&r.baseline, &r.default_hpa),
        "verdict": match &r.verdict {
            Verdict::Holds => "holds",
            Verdict::Overfitting(_) => "overfitting",
            Verdict::NoneMeets => "none_meets_slo",
        },
        "overfitting": overfitting,
        "overfitting_reasons": reasons,
        "notes": r.notes,
        "autoscaling_yaml": render::autoscaling_yaml(&r.recommended_autoscaling),
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

/// The report as text: the setting, a table of the recommendation beside the default HPA and
/// the scenario's own setting on train and held-out, and the verdict.
pub fn report_text(r: &TuneReport) -> String {
    let mut o = String::new();
    let rec = r.recommended();
    let train_s = r.split.seconds - r.split.held_out_seconds();
    let hours = |s: f64| format!("{:.1} h", s / 3600.0);
    let _ = writeln!(o, "scenario: {}", r.scenario);
    let _ = writeln!(o, "policy: {} (seed {})", r.policy, r.seed);
    let _ = writeln!(
        o,
        "split: {} — held out {} ({}), train {}",
        match r.split.mode {
            SplitMode::Days => "whole days",
            _ => "tail",
        },
        hours(r.split.held_out_seconds()),
        r.split.describe(),
        hours(train_s)
    );
    let _ = writeln!(
        o,
        "search: {} dimensions, {} evaluations (budget {}) + 2 reference runs, {} jobs, {:.1} s",
        r.space.dims.len(),
        r.candidates.len(),
        r.options.budget,
        r.options.jobs,
        r.wall_seconds
    );
    let _ = writeln!(
        o,
        "meets the SLO: at most {} % of a part's seconds violating, and no more than the default HPA",
        fmt_num(100.0 * r.options.slo_budget)
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "setting             scenario      recommended");
    let base = r.space.describe(&r.baseline_point);
    let best = r.space.describe(&r.recommendation().point);
    for ((name, b), (_, v)) in base.iter().zip(&best) {
        let b = b.clone().unwrap_or_else(|| "-".into());
        let v = v.clone().unwrap_or_else(|| "-".into());
        let mark = if b != v { "  *" } else { "" };
        let _ = writeln!(o, "{name:<19} {b:<13} {v}{mark}");
    }
    let _ = writeln!(o);
    for (label, pick) in [
        ("train", (|e: &Eval| e.train.clone()) as fn(&Eval) -> Part),
        ("held-out", |e: &Eval| e.held_out.clone()),
    ] {
        let d = pick(&r.default_hpa);
        let b = pick(&r.baseline);
        let c = pick(rec);
        let _ = writeln!(
            o,
            "{label:<22} {:>14} {:>14} {:>14} {:>10}",
            "default HPA", "scenario", "recommended", "rec/default"
        );
        let rows: [Row; 4] = [
            (
                "SLO-violating s",
                |p| p.slo_violation_seconds,
                |v| format!("{v:.0}"),
            ),
            ("error fraction", Part::error_fraction, |v| {
                format!("{v:.5}")
            }),
            ("p99 ms", |p| p.p99_ms, |v| format!("{v:.1}")),
            (
                "pod-hours",
                |p| p.pod_seconds / 3600.0,
                |v| format!("{v:.1}"),
            ),
        ];
        for (name, f, show) in rows {
            let ratio = ratio(f(&c), f(&d)).map_or("-".into(), |x| format!("{x:.3}"));
            let _ = writeln!(
                o,
                "  {name:<20} {:>14} {:>14} {:>14} {:>10}",
                show(f(&d)),
                show(f(&b)),
                show(f(&c)),
                ratio
            );
        }
        let meets = if label == "train" {
            r.meets.0
        } else {
            r.meets.1
        };
        let _ = writeln!(
            o,
            "  {:<20} {:>14} {:>14} {:>14}",
            "meets the SLO",
            "",
            "",
            if meets { "yes" } else { "no" }
        );
    }
    let _ = writeln!(o);
    match &r.verdict {
        Verdict::Holds => {
            let _ = writeln!(
                o,
                "verdict: the recommendation holds on held-out data (cost within {} points of its train advantage)",
                fmt_num(100.0 * r.options.overfit_margin)
            );
        }
        Verdict::Overfitting(reasons) => {
            let _ = writeln!(
                o,
                "OVERFITTING: the recommendation only wins on the data it was tuned on:"
            );
            for reason in reasons {
                let _ = writeln!(o, "  - {reason}");
            }
        }
        Verdict::NoneMeets => {
            let _ = writeln!(
                o,
                "NO SETTING MEETS THE SLO on train: the recommendation is the least violating one; widen the ranges or add capacity"
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(o, "note: {n}");
    }
    let _ = writeln!(o, "\nthe recommended section:\n");
    for line in render::autoscaling_yaml(&r.recommended_autoscaling).lines() {
        let _ = writeln!(o, "    {line}");
    }
    o
}

/// A row of the text table: its label, the value of a part, how it is written.
type Row = (&'static str, fn(&Part) -> f64, fn(f64) -> String);

fn fmt_num(v: f64) -> String {
    space::format_value(space::Unit::Number, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(viol: f64, pods: f64) -> Part {
        Part {
            seconds: 1000.0,
            requests: 1000.0,
            slo_violation_seconds: viol,
            pod_seconds: pods,
            ..Part::default()
        }
    }

    #[test]
    fn the_verdict_names_each_way_of_overfitting() {
        let def = Eval {
            train: part(0.0, 100.0),
            held_out: part(0.0, 100.0),
        };
        let good = Eval {
            train: part(0.0, 80.0),
            held_out: part(0.0, 82.0),
        };
        assert_eq!(
            judge(&good, &def, (true, true), 0.001, 0.05).0,
            Verdict::Holds
        );
        let shrinks = Eval {
            train: part(0.0, 80.0),
            held_out: part(0.0, 95.0),
        };
        let (v, _) = judge(&shrinks, &def, (true, true), 0.001, 0.05);
        assert!(
            matches!(&v, Verdict::Overfitting(r) if r[0].contains("shrinks")),
            "{v:?}"
        );
        let misses = Eval {
            train: part(0.0, 80.0),
            held_out: part(30.0, 80.0),
        };
        let (v, _) = judge(&misses, &def, (true, false), 0.001, 0.05);
        assert!(
            matches!(&v, Verdict::Overfitting(r) if r[0].contains("not on held-out")),
            "{v:?}"
        );
        // Held-out harder for everyone: a note, not overfitting.
        let hard = Eval {
            train: part(0.0, 100.0),
            held_out: part(40.0, 100.0),
        };
        let (v, notes) = judge(&misses, &hard, (true, false), 0.001, 0.05);
        assert_eq!(v, Verdict::Holds);
        assert_eq!(notes.len(), 1);
    }
}
