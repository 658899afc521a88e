//! The search space of `gofe sim tune`: a list of dimensions, each a setting of the HPA a
//! user can set, with its range, and how a value is written into a scenario.
//!
//! A dimension is one entry of [`KINDS`]: its name, its unit, the range searched when the
//! `tune:` section gives none, and the function that writes a value into the autoscaling
//! section. Adding a setting (another engineer's policy choice, say) is adding an entry; a
//! choice among names is a [`Domain::Choice`], its value the index of the option.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

use crate::hpa_script::{BehaviorJson, PolicyJson, Quantity, RulesJson};
use crate::scenario::{Autoscaling, Dur, Forecast, Problem, SimMetric};

/// A value written in a `tune.dimensions` entry: a number, a duration (`"30s"`) or a switch.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Number(f64),
    /// Text: a duration such as `"30s"`, or the name of a choice.
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Number(n) => write!(f, "{n}"),
            Scalar::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// One dimension as a `tune:` section writes it: a range (`{ min: 40, max: 120 }`, durations as
/// text: `{ min: 0s, max: 10m }`) or the values to try (`{ values: [false, true] }`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DimSpec {
    /// Lower bound (inclusive).
    #[serde(default)]
    pub min: Option<Scalar>,
    /// Upper bound (inclusive).
    #[serde(default)]
    pub max: Option<Scalar>,
    /// The values to try, for a switch (`[false, true]`) or a choice.
    #[serde(default)]
    pub values: Option<Vec<Scalar>>,
}

/// The unit of a dimension's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A real number (kept to 3 significant digits).
    Number,
    /// A whole number.
    Integer,
    /// Whole seconds, written as durations.
    Seconds,
    /// Off (0) or on (1).
    Switch,
}

/// The values a dimension takes.
#[derive(Clone, Debug, PartialEq)]
pub enum Domain {
    /// From `lo` to `hi` inclusive, in `unit`.
    Range {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
        /// Unit (and rounding).
        unit: Unit,
    },
    /// One of these options, by index (a switch is `["off", "on"]`).
    Choice(Vec<String>),
}

impl Domain {
    /// The value at `u` in [0, 1] of the domain, rounded to the unit.
    pub fn at(&self, u: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        match self {
            Domain::Range { lo, hi, unit } => {
                let v = lo + u * (hi - lo);
                match unit {
                    Unit::Integer | Unit::Seconds => v.round().clamp(lo.ceil(), hi.floor()),
                    Unit::Number => round3(v).clamp(*lo, *hi),
                    Unit::Switch => (v >= 0.5) as u8 as f64,
                }
            }
            Domain::Choice(options) => ((u * options.len() as f64).floor() as usize)
                .min(options.len().saturating_sub(1)) as f64,
        }
    }

    /// Where `v` lies in the domain, in [0, 1] (the inverse of [`Domain::at`]).
    pub fn position(&self, v: f64) -> f64 {
        match self {
            Domain::Range { lo, hi, .. } if hi > lo => ((v - lo) / (hi - lo)).clamp(0.0, 1.0),
            Domain::Range { .. } => 0.5,
            Domain::Choice(options) => (v + 0.5) / options.len().max(1) as f64,
        }
    }

    /// How many distinct values the domain has, if few (choices, short integer ranges).
    pub fn distinct(&self) -> Option<usize> {
        match self {
            Domain::Range {
                lo,
                hi,
                unit: Unit::Integer | Unit::Seconds,
            } => Some((hi.floor() - lo.ceil()).max(0.0) as usize + 1).filter(|&n| n <= 64),
            Domain::Range {
                unit: Unit::Switch, ..
            } => Some(2),
            Domain::Range { lo, hi, .. } if lo == hi => Some(1),
            Domain::Range { .. } => None,
            Domain::Choice(o) => Some(o.len()),
        }
    }
}

/// `v` to 3 significant digits.
fn round3(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    // Through decimal text, so 87.345 becomes 87.3 exactly as written, not 87.30000000000001.
    format!("{v:.2e}").parse().unwrap_or(v)
}

/// One kind of dimension: a setting of the autoscaling section.
pub struct Kind {
    /// Its name in `tune.dimensions` and in reports.
    pub name: &'static str,
    /// The unit of its values.
    pub unit: Unit,
    /// What it sets, for `--help` and errors.
    pub about: &'static str,
    /// Values allowed at all (the API server's or the adapter's limits), inclusive.
    pub limits: (f64, f64),
    /// Only meaningful while the forecast is on.
    pub needs_forecast: bool,
    /// The range searched when the section gives none, or `None` when the dimension is not
    /// searched by default (or does not apply to `a`).
    pub default: fn(&Autoscaling) -> Option<Domain>,
    /// Why the dimension cannot apply to `a`, if it cannot.
    pub applies: fn(&Autoscaling) -> Result<(), String>,
    /// The value `a` has (for reports; Kubernetes' default where `a` leaves it unset).
    pub baseline: fn(&Autoscaling) -> f64,
    /// Writes `value` into `a`.
    pub apply: fn(&mut Autoscaling, f64),
}

/// Every dimension the tuner knows, in the order they are applied and reported.
pub const KINDS: &[Kind] = &[
    Kind {
        name: "target",
        unit: Unit::Number,
        about:
            "the target of every metric (req/s per pod, total req/s for a `value`, percent for cpu)",
        limits: (0.001, 1e12),
        needs_forecast: false,
        default: |a| {
            let t = targets(a);
            let first = *t.first()?;
            let same = t.iter().all(|&x| x == first) && !mixed_units(a);
            same.then(|| range(first * 0.5, first * 1.5, unit_of_target(a)))
        },
        applies: |a| {
            if mixed_units(a) {
                Err("the metrics mix rates and cpu: use target_scale".into())
            } else {
                Ok(())
            }
        },
        baseline: |a| targets(a).first().copied().unwrap_or(0.0),
        apply: |a, v| {
            for m in &mut a.metrics {
                set_target(m, |_| v);
            }
        },
    },
    Kind {
        name: "target_scale",
        unit: Unit::Number,
        about: "every metric's target × this factor (keeps mixed metrics in proportion)",
        limits: (0.001, 1000.0),
        needs_forecast: false,
        default: |a| {
            let t = targets(a);
            let first = *t.first()?;
            let same = t.iter().all(|&x| x == first) && !mixed_units(a);
            (!same).then(|| range(0.5, 1.5, Unit::Number))
        },
        applies: |_| Ok(()),
        baseline: |_| 1.0,
        apply: |a, v| {
            for m in &mut a.metrics {
                set_target(m, |t| t * v);
            }
        },
    },
    Kind {
        name: "tolerance",
        unit: Unit::Number,
        about: "the controller's tolerance (both directions)",
        limits: (0.0, 0.99),
        needs_forecast: false,
        default: |_| Some(range(0.02, 0.2, Unit::Number)),
        applies: |_| Ok(()),
        baseline: |a| a.tolerance,
        apply: |a, v| a.tolerance = v,
    },
    Kind {
        name: "scale_up_window",
        unit: Unit::Seconds,
        about: "behavior.scaleUp.stabilizationWindowSeconds",
        limits: (0.0, 3600.0),
        needs_forecast: false,
        default: |_| Some(range(0.0, 120.0, Unit::Seconds)),
        applies: |_| Ok(()),
        baseline: |a| window_of(a, true),
        apply: |a, v| rules(a, true).stabilization_window_seconds = Some(v as i32),
    },
    Kind {
        name: "scale_down_window",
        unit: Unit::Seconds,
        about: "behavior.scaleDown.stabilizationWindowSeconds",
        limits: (0.0, 3600.0),
        needs_forecast: false,
        default: |_| Some(range(0.0, 600.0, Unit::Seconds)),
        applies: |_| Ok(()),
        baseline: |a| window_of(a, false),
        apply: |a, v| rules(a, false).stabilization_window_seconds = Some(v as i32),
    },
    Kind {
        name: "scale_up_percent",
        unit: Unit::Integer,
        about: "the value of scaleUp's Percent policy (added when absent)",
        limits: (1.0, 10_000.0),
        needs_forecast: false,
        default: |_| Some(range(50.0, 400.0, Unit::Integer)),
        applies: |_| Ok(()),
        baseline: |a| policy_value(a, true, "Percent"),
        apply: |a, v| set_policy(a, true, "Percent", v as i32),
    },
    Kind {
        name: "scale_up_pods",
        unit: Unit::Integer,
        about: "the value of scaleUp's Pods policy (added when absent)",
        limits: (1.0, 10_000.0),
        needs_forecast: false,
        default: |_| Some(range(1.0, 20.0, Unit::Integer)),
        applies: |_| Ok(()),
        baseline: |a| policy_value(a, true, "Pods"),
        apply: |a, v| set_policy(a, true, "Pods", v as i32),
    },
    Kind {
        name: "scale_up_period",
        unit: Unit::Seconds,
        about: "periodSeconds of every scaleUp policy",
        limits: (1.0, 1800.0),
        needs_forecast: false,
        default: |_| Some(range(15.0, 60.0, Unit::Seconds)),
        applies: |_| Ok(()),
        baseline: |a| policy_period(a, true),
        apply: |a, v| set_period(a, true, v as i32),
    },
    Kind {
        name: "scale_down_percent",
        unit: Unit::Integer,
        about: "the value of scaleDown's Percent policy (added when absent)",
        limits: (1.0, 100.0),
        needs_forecast: false,
        default: |_| Some(range(5.0, 100.0, Unit::Integer)),
        applies: |_| Ok(()),
        baseline: |a| policy_value(a, false, "Percent"),
        apply: |a, v| set_policy(a, false, "Percent", v as i32),
    },
    Kind {
        name: "scale_down_period",
        unit: Unit::Seconds,
        about: "periodSeconds of every scaleDown policy",
        limits: (1.0, 1800.0),
        needs_forecast: false,
        default: |_| Some(range(15.0, 120.0, Unit::Seconds)),
        applies: |_| Ok(()),
        baseline: |a| policy_period(a, false),
        apply: |a, v| set_period(a, false, v as i32),
    },
    Kind {
        name: "forecast",
        unit: Unit::Switch,
        about: "external_rps on the adapter's Holt forecast (on) or on the current rate (off)",
        limits: (0.0, 1.0),
        needs_forecast: false,
        default: |a| has_external(a).then(|| range(0.0, 1.0, Unit::Switch)),
        applies: |a| {
            if has_external(a) {
                Ok(())
            } else {
                Err("only external_rps metrics have a forecast".into())
            }
        },
        baseline: |a| f64::from(u8::from(forecast_of(a).is_some())),
        apply: |a, v| {
            let on = v >= 0.5;
            let base = forecast_of(a).unwrap_or_else(default_forecast);
            for m in &mut a.metrics {
                if let SimMetric::ExternalRps { forecast, .. } = m {
                    *forecast = on.then(|| base.clone());
                }
            }
        },
    },
    Kind {
        name: "forecast_lead",
        unit: Unit::Seconds,
        about: "forecast.lead: how far ahead the served rate looks",
        limits: (1.0, 3600.0),
        needs_forecast: true,
        default: |a| has_external(a).then(|| range(15.0, 300.0, Unit::Seconds)),
        applies: applies_forecast,
        baseline: |a| forecast_of(a).unwrap_or_else(default_forecast).lead.secs(),
        apply: |a, v| with_forecast(a, |f| f.lead = Dur(Duration::from_secs_f64(v))),
    },
    Kind {
        name: "forecast_alpha",
        unit: Unit::Number,
        about: "forecast.alpha: Holt's level smoothing",
        limits: (0.001, 1.0),
        needs_forecast: true,
        default: |a| has_external(a).then(|| range(0.1, 1.0, Unit::Number)),
        applies: applies_forecast,
        baseline: |a| {
            forecast_of(a)
                .and_then(|f| f.alpha)
                .unwrap_or(gofe_core::forecast::Holt::default().alpha)
        },
        apply: |a, v| with_forecast(a, |f| f.alpha = Some(v)),
    },
    Kind {
        name: "forecast_beta",
        unit: Unit::Number,
        about: "forecast.beta: Holt's trend smoothing",
        limits: (0.001, 1.0),
        needs_forecast: true,
        default: |a| has_external(a).then(|| range(0.05, 1.0, Unit::Number)),
        applies: applies_forecast,
        baseline: |a| {
            forecast_of(a)
                .and_then(|f| f.beta)
                .unwrap_or(gofe_core::forecast::Holt::default().beta)
        },
        apply: |a, v| with_forecast(a, |f| f.beta = Some(v)),
    },
];

/// The names of every dimension, for errors.
pub fn names() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

fn range(lo: f64, hi: f64, unit: Unit) -> Domain {
    let (lo, hi) = match unit {
        Unit::Number => (round3(lo), round3(hi)),
        _ => (lo.round(), hi.round()),
    };
    Domain::Range { lo, hi, unit }
}

fn applies_forecast(a: &Autoscaling) -> Result<(), String> {
    if has_external(a) {
        Ok(())
    } else {
        Err("only external_rps metrics have a forecast".into())
    }
}

// === reading and writing an autoscaling section ===

fn has_external(a: &Autoscaling) -> bool {
    a.metrics
        .iter()
        .any(|m| matches!(m, SimMetric::ExternalRps { .. }))
}

fn mixed_units(a: &Autoscaling) -> bool {
    let cpu = a
        .metrics
        .iter()
        .filter(|m| matches!(m, SimMetric::Cpu { .. }))
        .count();
    cpu != 0 && cpu != a.metrics.len()
}

fn unit_of_target(a: &Autoscaling) -> Unit {
    if a.metrics.iter().all(|m| matches!(m, SimMetric::Cpu { .. })) {
        Unit::Integer
    } else {
        Unit::Number
    }
}

/// Each metric's target: req/s for the rates, percent for cpu.
fn targets(a: &Autoscaling) -> Vec<f64> {
    let milli = |q: &Quantity| q.0 as f64 / 1000.0;
    a.metrics
        .iter()
        .filter_map(|m| match m {
            SimMetric::ExternalRps {
                average_value,
                value,
                ..
            } => average_value.or(*value).as_ref().map(milli),
            SimMetric::PodsRps { average_value } => Some(milli(average_value)),
            SimMetric::Cpu {
                average_utilization,
            } => Some(f64::from(*average_utilization)),
        })
        .collect()
}

fn set_target(m: &mut SimMetric, f: impl Fn(f64) -> f64) {
    let milli = |q: &Quantity| q.0 as f64 / 1000.0;
    let quantity = |v: f64| Quantity(((v * 1000.0).round() as i64).max(1));
    match m {
        SimMetric::ExternalRps {
            average_value,
            value,
            ..
        } => {
            for q in [average_value, value].into_iter().flatten() {
                *q = quantity(f(milli(q)));
            }
        }
        SimMetric::PodsRps { average_value } => *average_value = quantity(f(milli(average_value))),
        SimMetric::Cpu {
            average_utilization,
        } => {
            *average_utilization = (f(f64::from(*average_utilization)).round() as i32).max(1);
        }
    }
}

fn default_forecast() -> Forecast {
    Forecast {
        lead: Dur(Duration::from_secs(60)),
        method: gofe_core::forecast::MethodName::Holt,
        window: Some(Dur(Duration::from_secs(600))),
        step: Some(Dur(Duration::from_secs(15))),
        alpha: Some(gofe_core::forecast::Holt::default().alpha),
        beta: Some(gofe_core::forecast::Holt::default().beta),
        gamma: None,
        period: None,
        fallback: None,
        spike: None,
        floor: None,
    }
}

fn forecast_of(a: &Autoscaling) -> Option<Forecast> {
    a.metrics.iter().find_map(|m| match m {
        SimMetric::ExternalRps { forecast, .. } => forecast.clone(),
        _ => None,
    })
}

fn with_forecast(a: &mut Autoscaling, f: impl Fn(&mut Forecast)) {
    for m in &mut a.metrics {
        if let SimMetric::ExternalRps {
            forecast: Some(fc), ..
        } = m
        {
            f(fc);
        }
    }
}

fn rules(a: &mut Autoscaling, up: bool) -> &mut RulesJson {
    let b = a.behavior.get_or_insert_with(BehaviorJson::default);
    let r = if up {
        &mut b.scale_up
    } else {
        &mut b.scale_down
    };
    r.get_or_insert_with(RulesJson::default)
}

fn rules_of(a: &Autoscaling, up: bool) -> Option<&RulesJson> {
    let b = a.behavior.as_ref()?;
    if up {
        b.scale_up.as_ref()
    } else {
        b.scale_down.as_ref()
    }
}

fn k8s_default(up: bool) -> gofe_core::hpa::ResolvedRules {
    if up {
        gofe_core::hpa::default_scale_up()
    } else {
        gofe_core::hpa::default_scale_down()
    }
}

fn window_of(a: &Autoscaling, up: bool) -> f64 {
    f64::from(
        rules_of(a, up)
            .and_then(|r| r.stabilization_window_seconds)
            .unwrap_or(k8s_default(up).stabilization_window_seconds),
    )
}

/// The direction's policies as written, else Kubernetes' defaults.
fn policies_of(a: &Autoscaling, up: bool) -> Vec<PolicyJson> {
    if let Some(p) = rules_of(a, up).and_then(|r| r.policies.clone()) {
        return p;
    }
    k8s_default(up)
        .policies
        .iter()
        .map(|p| PolicyJson {
            kind: match p.kind {
                gofe_core::hpa::PolicyKind::Pods => "Pods".into(),
                gofe_core::hpa::PolicyKind::Percent => "Percent".into(),
            },
            value: p.value,
            period_seconds: p.period_seconds,
        })
        .collect()
}

fn policy_value(a: &Autoscaling, up: bool, kind: &str) -> f64 {
    policies_of(a, up)
        .iter()
        .find(|p| p.kind == kind)
        .map_or(f64::NAN, |p| f64::from(p.value))
}

fn policy_period(a: &Autoscaling, up: bool) -> f64 {
    policies_of(a, up)
        .first()
        .map_or(15.0, |p| f64::from(p.period_seconds))
}

fn set_policy(a: &mut Autoscaling, up: bool, kind: &str, value: i32) {
    let mut policies = policies_of(a, up);
    match policies.iter_mut().find(|p| p.kind == kind) {
        Some(p) => p.value = value,
        None => {
            let period = policies.first().map_or(15, |p| p.period_seconds);
            policies.push(PolicyJson {
                kind: kind.into(),
                value,
                period_seconds: period,
            });
        }
    }
    rules(a, up).policies = Some(policies);
}

fn set_period(a: &mut Autoscaling, up: bool, period: i32) {
    let mut policies = policies_of(a, up);
    for p in &mut policies {
        p.period_seconds = period;
    }
    rules(a, up).policies = Some(policies);
}

// === the space ===

/// A searched dimension: its kind (an index into [`KINDS`]) and its domain.
#[derive(Clone, Debug, PartialEq)]
pub struct Dim {
    /// Index into [`KINDS`].
    pub kind: usize,
    /// The values searched.
    pub domain: Domain,
}

impl Dim {
    /// The dimension's kind.
    pub fn kind(&self) -> &'static Kind {
        &KINDS[self.kind]
    }
}

/// The dimensions searched, in [`KINDS`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    /// The dimensions.
    pub dims: Vec<Dim>,
    /// Index of the `forecast` switch among `dims`, if searched.
    forecast_switch: Option<usize>,
    /// Whether the baseline has a forecast (the forecast's own dimensions apply without the
    /// switch).
    baseline_forecast: bool,
}

/// A point of the space: one value per dimension, in units (seconds, req/s, 0/1).
pub type Point = Vec<f64>;

impl Space {
    /// The space of `dims` (a `tune.dimensions` section, in any order; `None`: the defaults)
    /// over the baseline `a`, or every problem, each under `field` + the dimension's name.
    pub fn new(
        dims: Option<&BTreeMap<String, DimSpec>>,
        a: &Autoscaling,
        field: &str,
    ) -> Result<Space, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut bad = |f: String, m: String| {
            problems.push(Problem {
                line: None,
                column: None,
                field: f,
                message: m,
            })
        };
        let mut out = Vec::new();
        match dims {
            None => {
                for (i, k) in KINDS.iter().enumerate() {
                    if let Some(domain) = (k.default)(a) {
                        out.push(Dim { kind: i, domain });
                    }
                }
            }
            Some(map) => {
                for (name, spec) in map {
                    let f = join(field, name);
                    let Some(i) = KINDS.iter().position(|k| k.name == name) else {
                        bad(f, format!("unknown dimension (one of {})", names()));
                        continue;
                    };
                    let k = &KINDS[i];
                    if let Err(m) = (k.applies)(a) {
                        bad(f.clone(), m);
                    }
                    match domain_of(k, spec, &f) {
                        Ok(domain) => out.push(Dim { kind: i, domain }),
                        Err(list) => {
                            for (f, m) in list {
                                bad(f, m);
                            }
                        }
                    }
                }
                out.sort_by_key(|d| d.kind);
            }
        }
        let forecast_switch = out.iter().position(|d| d.kind().name == "forecast");
        let baseline_forecast = forecast_of(a).is_some();
        if forecast_switch.is_none() && !baseline_forecast {
            for d in out.iter().filter(|d| d.kind().needs_forecast) {
                bad(
                    join(field, d.kind().name),
                    "the baseline has no forecast: add a forecast to the metric or search the `forecast` dimension".into(),
                );
            }
        }
        if out.is_empty() && problems.is_empty() {
            problems.push(Problem {
                line: None,
                column: None,
                field: field.to_owned(),
                message: "no dimension to search".into(),
            });
        }
        if problems.is_empty() {
            Ok(Space {
                dims: out,
                forecast_switch,
                baseline_forecast,
            })
        } else {
            Err(problems)
        }
    }

    /// The point at `u` (one coordinate in [0, 1] per dimension).
    pub fn at(&self, u: &[f64]) -> Point {
        self.dims
            .iter()
            .zip(u)
            .map(|(d, &x)| d.domain.at(x))
            .collect()
    }

    /// Where `p` lies, one coordinate in [0, 1] per dimension.
    pub fn position(&self, p: &[f64]) -> Vec<f64> {
        self.dims
            .iter()
            .zip(p)
            .map(|(d, &v)| d.domain.position(v))
            .collect()
    }

    /// Whether dimension `i` matters at `p` (the forecast's settings do not while it is off).
    pub fn active(&self, p: &[f64], i: usize) -> bool {
        if !self.dims[i].kind().needs_forecast {
            return true;
        }
        match self.forecast_switch {
            Some(s) => p[s] >= 0.5,
            None => self.baseline_forecast,
        }
    }

    /// A key naming the setting `p` stands for: points that differ only in settings that do
    /// not matter have the same key.
    pub fn key(&self, p: &[f64]) -> String {
        let mut k = String::new();
        for (i, d) in self.dims.iter().enumerate() {
            if self.active(p, i) {
                let _ = write!(
                    k,
                    "{}={} ",
                    d.kind().name,
                    format_value(d.kind().unit, p[i])
                );
            }
        }
        k.trim_end().to_owned()
    }

    /// The dimensions' values at `p`, by name, as the report shows them (`null` for a setting
    /// that does not matter there).
    pub fn describe(&self, p: &[f64]) -> Vec<(&'static str, Option<String>)> {
        self.dims
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let k = d.kind();
                (
                    k.name,
                    self.active(p, i).then(|| format_value(k.unit, p[i])),
                )
            })
            .collect()
    }

    /// The baseline's value of every dimension.
    pub fn baseline(&self, a: &Autoscaling) -> Point {
        self.dims.iter().map(|d| (d.kind().baseline)(a)).collect()
    }

    /// `a` with the setting `p` written into it.
    pub fn apply(&self, a: &Autoscaling, p: &[f64]) -> Autoscaling {
        let mut a = a.clone();
        for (i, d) in self.dims.iter().enumerate() {
            if self.active(p, i) {
                (d.kind().apply)(&mut a, p[i]);
            }
        }
        a
    }
}

/// `field.name`, or `--flag name` for a command-line flag.
fn join(field: &str, name: &str) -> String {
    if field.starts_with("--") {
        format!("{field} {name}")
    } else {
        format!("{field}.{name}")
    }
}

/// A value as reports write it: durations as text, switches as on/off.
pub fn format_value(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Seconds => gofe_yaml::duration::format(Duration::from_secs_f64(v.max(0.0))),
        Unit::Switch => if v >= 0.5 { "on" } else { "off" }.into(),
        Unit::Integer => format!("{v:.0}"),
        Unit::Number => {
            let s = format!("{v:.6}");
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
    }
}

/// The domain a `tune.dimensions` entry gives, or every problem with its field.
fn domain_of(k: &Kind, spec: &DimSpec, f: &str) -> Result<Domain, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let value = |s: &Scalar, field: String, problems: &mut Vec<(String, String)>| -> Option<f64> {
        let v = match (k.unit, s) {
            (Unit::Seconds, Scalar::Text(t)) => match gofe_yaml::duration::parse(t) {
                Ok(d) => Some(d.as_secs_f64()),
                Err(e) => {
                    problems.push((field.clone(), e.to_string()));
                    None
                }
            },
            (Unit::Seconds, _) => {
                problems.push((
                    field.clone(),
                    format!("expected a duration such as \"30s\", got {s}"),
                ));
                None
            }
            (Unit::Switch, Scalar::Bool(b)) => Some(f64::from(u8::from(*b))),
            (Unit::Switch, _) => {
                problems.push((field.clone(), format!("expected true or false, got {s}")));
                None
            }
            (Unit::Number | Unit::Integer, Scalar::Number(n)) => Some(*n),
            (Unit::Number | Unit::Integer, _) => {
                problems.push((field.clone(), format!("expected a number, got {s}")));
                None
            }
        }?;
        if !v.is_finite() || v < k.limits.0 || v > k.limits.1 {
            problems.push((
                field,
                format!(
                    "{} is outside {}..={}",
                    format_value(k.unit, v),
                    format_value(k.unit, k.limits.0),
                    format_value(k.unit, k.limits.1)
                ),
            ));
            return None;
        }
        if k.unit == Unit::Integer && v.fract() != 0.0 {
            problems.push((field, "must be a whole number".into()));
            return None;
        }
        if k.unit == Unit::Seconds && v.fract() != 0.0 {
            problems.push((field, "must be whole seconds".into()));
            return None;
        }
        Some(v)
    };
    if k.unit == Unit::Switch {
        if spec.min.is_some() || spec.max.is_some() {
            problems.push((
                f.to_owned(),
                "a switch takes `values: [false, true]`, not min/max".into(),
            ));
        }
        let Some(values) = &spec.values else {
            if problems.is_empty() {
                problems.push((f.to_owned(), "give `values: [false, true]`".into()));
            }
            return Err(problems);
        };
        let mut seen = Vec::new();
        for (i, s) in values.iter().enumerate() {
            if let Some(v) = value(s, format!("{f}.values[{i}]"), &mut problems) {
                seen.push(v);
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        return match (seen.contains(&0.0), seen.contains(&1.0)) {
            (true, true) => Ok(range(0.0, 1.0, Unit::Switch)),
            (false, true) => Ok(range(1.0, 1.0, Unit::Switch)),
            (true, false) => Ok(range(0.0, 0.0, Unit::Switch)),
            (false, false) => Err(vec![(format!("{f}.values"), "at least one value".into())]),
        };
    }
    if spec.values.is_some() {
        problems.push((
            format!("{f}.values"),
            "a range takes min and max, not values".into(),
        ));
    }
    let lo = match &spec.min {
        Some(s) => value(s, format!("{f}.min"), &mut problems),
        None => {
            problems.push((f.to_owned(), "min is required".into()));
            None
        }
    };
    let hi = match &spec.max {
        Some(s) => value(s, format!("{f}.max"), &mut problems),
        None => {
            problems.push((f.to_owned(), "max is required".into()));
            None
        }
    };
    if let (Some(lo), Some(hi)) = (lo, hi) {
        if lo > hi {
            problems.push((format!("{f}.max"), "must be at least min".into()));
        } else if problems.is_empty() {
            return Ok(Domain::Range {
                lo,
                hi,
                unit: k.unit,
            });
        }
    }
    Err(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn autoscaling(metrics: &str) -> Autoscaling {
        gofe_yaml::from_str(&format!("maxReplicas: 20\nmetrics: {metrics}\n")).unwrap()
    }

    #[test]
    fn defaults_follow_the_baseline() {
        let a = autoscaling("[ { external_rps: { average_value: \"80\" } } ]");
        let s = Space::new(None, &a, "tune.dimensions").unwrap();
        let names: Vec<_> = s.dims.iter().map(|d| d.kind().name).collect();
        assert!(names.contains(&"target") && names.contains(&"forecast_lead"));
        assert!(!names.contains(&"target_scale"));
        assert_eq!(
            s.dims[0].domain,
            Domain::Range {
                lo: 40.0,
                hi: 120.0,
                unit: Unit::Number
            }
        );
        let a = autoscaling(
            "[ { cpu: { average_utilization: 70 } }, { pods_rps: { average_value: \"5\" } } ]",
        );
        let s = Space::new(None, &a, "tune.dimensions").unwrap();
        let names: Vec<_> = s.dims.iter().map(|d| d.kind().name).collect();
        assert!(names.contains(&"target_scale") && !names.contains(&"target"));
        assert!(!names.iter().any(|n| n.starts_with("forecast")));
    }

    #[test]
    fn a_point_is_written_into_the_section_and_inactive_settings_do_not_count() {
        let a = autoscaling("[ { external_rps: { average_value: \"80\" } } ]");
        let s = Space::new(None, &a, "tune.dimensions").unwrap();
        let mut p = s.baseline(&a);
        let set = |p: &mut Point, name: &str, v: f64| {
            let i = s.dims.iter().position(|d| d.kind().name == name).unwrap();
            p[i] = v;
        };
        set(&mut p, "target", 55.0);
        set(&mut p, "scale_down_window", 60.0);
        set(&mut p, "scale_up_pods", 7.0);
        set(&mut p, "forecast", 0.0);
        let key_off = s.key(&p);
        set(&mut p, "forecast_lead", 200.0);
        assert_eq!(
            s.key(&p),
            key_off,
            "lead does not matter with the forecast off"
        );
        let b = s.apply(&a, &p);
        let SimMetric::ExternalRps {
            average_value,
            forecast,
            ..
        } = &b.metrics[0]
        else {
            panic!()
        };
        assert_eq!(average_value.unwrap().0, 55_000);
        assert!(forecast.is_none());
        let beh = b.behavior.as_ref().unwrap();
        let down = beh.scale_down.as_ref().unwrap();
        assert_eq!(down.stabilization_window_seconds, Some(60));
        let up = beh.scale_up.as_ref().unwrap().policies.as_ref().unwrap();
        assert!(up.iter().any(|p| p.kind == "Pods" && p.value == 7));
        set(&mut p, "forecast", 1.0);
        assert_ne!(s.key(&p), key_off);
        let b = s.apply(&a, &p);
        let SimMetric::ExternalRps { forecast, .. } = &b.metrics[0] else {
            panic!()
        };
        assert_eq!(forecast.as_ref().unwrap().lead.secs(), 200.0);
    }

    #[test]
    fn every_problem_of_a_dimensions_section_is_named() {
        let a = autoscaling("[ { cpu: { average_utilization: 70 } } ]");
        let mut m = BTreeMap::new();
        m.insert("speed".to_owned(), DimSpec::default());
        m.insert(
            "scale_up_window".to_owned(),
            DimSpec {
                min: Some(Scalar::Number(0.0)),
                max: Some(Scalar::Text("2m".into())),
                values: None,
            },
        );
        m.insert(
            "tolerance".to_owned(),
            DimSpec {
                min: Some(Scalar::Number(0.5)),
                max: Some(Scalar::Number(0.1)),
                values: None,
            },
        );
        m.insert(
            "forecast_lead".to_owned(),
            DimSpec {
                min: Some(Scalar::Text("10s".into())),
                max: Some(Scalar::Text("1m".into())),
                values: None,
            },
        );
        let e = Space::new(Some(&m), &a, "tune.dimensions").unwrap_err();
        let fields: Vec<_> = e.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "tune.dimensions.speed",
            "tune.dimensions.scale_up_window.min",
            "tune.dimensions.tolerance.max",
            "tune.dimensions.forecast_lead",
        ] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
    }

    #[test]
    fn domains_round_to_their_unit() {
        let d = range(0.0, 600.0, Unit::Seconds);
        assert_eq!(d.at(0.3333), 200.0);
        assert_eq!(d.position(300.0), 0.5);
        assert_eq!(range(0.0, 1.0, Unit::Switch).at(0.7), 1.0);
        assert_eq!(round3(87.345), 87.3);
        assert_eq!(format_value(Unit::Seconds, 120.0), "120s");
    }
}
