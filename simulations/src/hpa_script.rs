//! `gofe sim hpa`: the HPA model as a JSON-lines filter, for checking it against Kubernetes.
//!
//! Each input line is one self-contained HPA sync (schema in `simulations/README.md`); each
//! output line is the desired replica count [`gofe_core::hpa::reconcile`] computes for it, or
//! with `--explain` ([`explain_line`]) a JSON object with the per-metric proposals, the
//! recommendation before and after stabilization, the limit that applied, the conditions and
//! the updated history (in the input's shape, ages as of this sync, so a sequence of syncs can
//! be replayed by feeding it back with the time between syncs added to the ages). Empty
//! lines and lines starting with `#` are skipped. A line that does not parse stops the run with
//! an error naming the input, the line, the field path and the column.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use gofe_core::hpa::{
    Behavior, ControllerConfig, Fallback, History, HpaSpec, KedaOptions, MetricKind, MetricSpec,
    MetricTarget, Milli, Observation, PodInfo, PodPhase, PodSample, PolicyKind, Reading,
    ReadyCondition, Recommendation, ScaleEvent, ScalingPolicy, ScalingRules, SelectPolicy,
};
use serde::Deserialize;

/// Why an input line was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// Reading the input failed.
    #[error("{source_name}: {source}")]
    Io {
        /// The input's name.
        source_name: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a valid HPA case.
    #[error("{source_name}:{line}:{column}: {field}: {message}")]
    Invalid {
        /// The input's name.
        source_name: String,
        /// 1-based line.
        line: usize,
        /// 1-based column within the line.
        column: usize,
        /// Field path, e.g. `spec.metrics[0].external.target.averageValue`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

// === quantities ===

/// A Kubernetes quantity (`"1500m"`, `"1.5"`, `"2k"`, `"1Gi"`, or a JSON number) in milli-units,
/// rounded up as `Quantity::MilliValue` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity(pub Milli);

/// Parses a quantity into milli-units ([`gofe_core::quantity::parse_milli`]: exact, every
/// Kubernetes suffix and exponent, rounded up as `MilliValue` does).
pub fn parse_quantity(text: &str) -> Result<Milli, String> {
    gofe_core::quantity::parse_milli(text).map_err(|e| e.to_string())
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => parse_quantity(&n.to_string()).map(Quantity),
            Raw::Text(s) => parse_quantity(&s).map(Quantity),
        }
        .map_err(serde::de::Error::custom)
    }
}

// === the schema, mirroring autoscaling/v2 ===

/// One line: an HPA and what one sync observes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    /// The HPA spec.
    pub spec: SpecJson,
    /// `scale.spec.replicas`.
    pub spec_replicas: i32,
    /// `scale.status.replicas` (default: `specReplicas`).
    #[serde(default)]
    pub status_replicas: Option<i32>,
    /// The pods the selector matches (default: `statusReplicas` ready, running pods `pod-0`…).
    #[serde(default)]
    pub pods: Option<Vec<PodJson>>,
    /// One reading per entry of `spec.metrics`.
    pub metrics: Vec<ReadingJson>,
    /// Past recommendations.
    #[serde(default)]
    pub recommendations: Vec<RecJson>,
    /// Past scale-ups.
    #[serde(default)]
    pub scale_up_events: Vec<EventJson>,
    /// Past scale-downs.
    #[serde(default)]
    pub scale_down_events: Vec<EventJson>,
    /// kube-controller-manager flags.
    #[serde(default)]
    pub controller: ControllerJson,
}

/// `spec` of the HPA.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecJson {
    /// Default 1.
    #[serde(default = "one")]
    pub min_replicas: i32,
    /// Required.
    pub max_replicas: i32,
    /// `spec.metrics`.
    pub metrics: Vec<MetricJson>,
    /// `spec.behavior`; absent selects the behavior-less controller path.
    #[serde(default)]
    pub behavior: Option<BehaviorJson>,
    /// KEDA-style options.
    #[serde(default)]
    pub keda: Option<KedaJson>,
}

fn one() -> i32 {
    1
}

/// `spec.metrics[]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricJson {
    /// `Resource`, `ContainerResource`, `Pods`, `Object` or `External`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For Resource.
    #[serde(default)]
    pub resource: Option<SourceJson>,
    /// For ContainerResource.
    #[serde(default)]
    pub container_resource: Option<SourceJson>,
    /// For Pods.
    #[serde(default)]
    pub pods: Option<SourceJson>,
    /// For Object.
    #[serde(default)]
    pub object: Option<SourceJson>,
    /// For External.
    #[serde(default)]
    pub external: Option<SourceJson>,
}

/// The body of one metric source; only `name`/`metric.name` and `target` are used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceJson {
    /// Resource name (`cpu`, `memory`).
    #[serde(default)]
    pub name: Option<String>,
    /// `metric: {name}`.
    #[serde(default)]
    pub metric: Option<NameJson>,
    /// The target.
    pub target: TargetJson,
}

/// `{name: ...}`.
#[derive(Debug, Deserialize)]
pub struct NameJson {
    /// The metric name.
    pub name: String,
}

/// `target`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetJson {
    /// `Utilization`, `AverageValue` or `Value`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For Utilization, percent.
    #[serde(default)]
    pub average_utilization: Option<i32>,
    /// For AverageValue.
    #[serde(default)]
    pub average_value: Option<Quantity>,
    /// For Value.
    #[serde(default)]
    pub value: Option<Quantity>,
}

/// `behavior`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BehaviorJson {
    /// `scaleUp`.
    #[serde(default)]
    pub scale_up: Option<RulesJson>,
    /// `scaleDown`.
    #[serde(default)]
    pub scale_down: Option<RulesJson>,
}

/// `behavior.scaleUp` / `scaleDown`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RulesJson {
    /// Seconds.
    #[serde(default)]
    pub stabilization_window_seconds: Option<i32>,
    /// `Max`, `Min` or `Disabled`.
    #[serde(default)]
    pub select_policy: Option<String>,
    /// Policies.
    #[serde(default)]
    pub policies: Option<Vec<PolicyJson>>,
    /// Per-direction tolerance (a quantity, e.g. `"0.05"`).
    #[serde(default)]
    pub tolerance: Option<Quantity>,
}

/// One policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyJson {
    /// `Pods` or `Percent`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Amount.
    pub value: i32,
    /// Period, seconds.
    pub period_seconds: i32,
}

/// KEDA options.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KedaJson {
    /// Activation threshold (quantity).
    #[serde(default)]
    pub activation_threshold: Option<Quantity>,
    /// Cooldown before scaling to zero, seconds (default 300).
    #[serde(default = "cooldown")]
    pub cooldown_period: i64,
    /// `{failureThreshold, replicas}`.
    #[serde(default)]
    pub fallback: Option<FallbackJson>,
    /// Consecutive failed syncs so far, per metric (the fallback counter).
    #[serde(default)]
    pub failures: Vec<u32>,
    /// Seconds since the workload was last active.
    #[serde(default)]
    pub last_active_age: Option<f64>,
}

fn cooldown() -> i64 {
    300
}

/// KEDA `fallback`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FallbackJson {
    /// Consecutive failures before the fallback applies.
    pub failure_threshold: u32,
    /// Replicas while failing.
    pub replicas: i32,
}

/// A pod.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodJson {
    /// Name (the key of per-pod readings).
    pub name: String,
    /// `Pending`, `Running` (default), `Succeeded`, `Failed`, `Unknown`.
    #[serde(default)]
    pub phase: Option<String>,
    /// The Ready condition's status (default true); `null` for no condition.
    #[serde(default = "some_true")]
    pub ready: Option<bool>,
    /// Seconds since the Ready condition's last transition (default 3600).
    #[serde(default = "hour")]
    pub ready_transition_age: f64,
    /// Seconds since the pod started (default 3600); `null` for no start time.
    #[serde(default = "some_hour")]
    pub start_age: Option<f64>,
    /// A deletion timestamp is set.
    #[serde(default)]
    pub deleting: bool,
}

fn some_true() -> Option<bool> {
    Some(true)
}
fn hour() -> f64 {
    3600.0
}
fn some_hour() -> Option<f64> {
    Some(3600.0)
}

/// One metric's reading.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadingJson {
    /// Per-pod samples by pod name: a quantity or `{value, age, window}`.
    #[serde(default)]
    pub pods: Option<BTreeMap<String, SampleJson>>,
    /// Per-pod requests of the resource (Utilization targets).
    #[serde(default)]
    pub requests: Option<BTreeMap<String, Quantity>>,
    /// The value of an Object metric, or the series of an External metric (summed).
    #[serde(default)]
    pub values: Option<Vec<Quantity>>,
    /// The fetch failed.
    #[serde(default)]
    pub unavailable: bool,
}

/// A per-pod sample.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SampleJson {
    /// Just the value (age 0, window 30 s).
    Plain(Quantity),
    /// With timing.
    Full {
        /// The value.
        value: Quantity,
        /// Seconds since the sample's timestamp.
        #[serde(default)]
        age: f64,
        /// The sample window, seconds (default 30).
        #[serde(default = "thirty")]
        window: f64,
    },
}

fn thirty() -> f64 {
    30.0
}

/// A past recommendation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecJson {
    /// Seconds ago.
    pub age: f64,
    /// Replicas recommended.
    pub replicas: i32,
}

/// A past scale event.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventJson {
    /// Seconds ago.
    pub age: f64,
    /// Replicas added (scale-up) or removed (scale-down), positive.
    pub change: i32,
}

/// Controller flags.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerJson {
    /// Default 0.1.
    #[serde(default = "tolerance")]
    pub tolerance: f64,
    /// Seconds, default 300.
    #[serde(default = "three_hundred")]
    pub downscale_stabilization: f64,
    /// Seconds, default 300.
    #[serde(default = "three_hundred")]
    pub cpu_initialization_period: f64,
    /// Seconds, default 30.
    #[serde(default = "thirty")]
    pub initial_readiness_delay: f64,
}

impl Default for ControllerJson {
    fn default() -> Self {
        ControllerJson {
            tolerance: tolerance(),
            downscale_stabilization: 300.0,
            cpu_initialization_period: 300.0,
            initial_readiness_delay: 30.0,
        }
    }
}

fn tolerance() -> f64 {
    gofe_core::hpa::DEFAULT_TOLERANCE
}
fn three_hundred() -> f64 {
    300.0
}

fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

// === conversion ===

/// A converted case, ready for [`gofe_core::hpa::reconcile`].
pub struct Prepared {
    /// The spec.
    pub spec: HpaSpec,
    /// Controller flags.
    pub config: ControllerConfig,
    /// Pods.
    pub pods: Vec<PodInfo>,
    /// Readings.
    pub readings: Vec<Reading>,
    /// History (timestamps relative to now = 0).
    pub history: History,
    /// Spec replicas.
    pub spec_replicas: i32,
    /// Status replicas.
    pub status_replicas: i32,
}

/// Converts an `autoscaling/v2` metric spec; `Err((field, message))` when invalid.
pub fn convert_metric(m: &MetricJson, index: usize) -> Result<MetricSpec, (String, String)> {
    let at = |f: &str| format!("spec.metrics[{index}].{f}");
    let (source, field, kind) = match m.kind.as_str() {
        "Resource" => (&m.resource, "resource", None),
        "ContainerResource" => (&m.container_resource, "containerResource", None),
        "Pods" => (&m.pods, "pods", Some(MetricKind::Pods)),
        "Object" => (&m.object, "object", Some(MetricKind::Object)),
        "External" => (&m.external, "external", Some(MetricKind::External)),
        other => {
            return Err((
                at("type"),
                format!("unknown metric type {other:?} (Resource, ContainerResource, Pods, Object, External)"),
            ))
        }
    };
    let source = source
        .as_ref()
        .ok_or_else(|| (at(field), format!("required for type {}", m.kind)))?;
    let name = source
        .name
        .clone()
        .or_else(|| source.metric.as_ref().map(|n| n.name.clone()))
        .unwrap_or_else(|| format!("metric{index}"));
    let kind = kind.unwrap_or(MetricKind::Resource { cpu: name == "cpu" });
    let t = &source.target;
    let tf = |f: &str| at(&format!("{field}.target.{f}"));
    let target = match t.kind.as_str() {
        "Utilization" => MetricTarget::Utilization(
            t.average_utilization
                .filter(|&u| u > 0)
                .ok_or_else(|| (tf("averageUtilization"), "required, > 0".to_owned()))?,
        ),
        "AverageValue" => MetricTarget::AverageValue(
            t.average_value
                .filter(|q| q.0 > 0)
                .ok_or_else(|| (tf("averageValue"), "required, > 0".to_owned()))?
                .0,
        ),
        "Value" => MetricTarget::Value(
            t.value
                .filter(|q| q.0 > 0)
                .ok_or_else(|| (tf("value"), "required, > 0".to_owned()))?
                .0,
        ),
        other => {
            return Err((
                tf("type"),
                format!("unknown target type {other:?} (Utilization, AverageValue, Value)"),
            ))
        }
    };
    let fits = match (kind, target) {
        (MetricKind::Resource { .. }, MetricTarget::Value(_)) => false,
        (MetricKind::Resource { .. }, _) => true,
        (MetricKind::Pods, MetricTarget::AverageValue(_)) => true,
        (MetricKind::Object | MetricKind::External, MetricTarget::Utilization(_)) => false,
        (MetricKind::Object | MetricKind::External, _) => true,
        _ => false,
    };
    if !fits {
        return Err((
            tf("type"),
            format!("target type {} is not valid for {} metrics", t.kind, m.kind),
        ));
    }
    Ok(MetricSpec { name, kind, target })
}

fn convert_rules(r: &RulesJson, field: &str) -> Result<ScalingRules, (String, String)> {
    let select_policy = match r.select_policy.as_deref() {
        None => None,
        Some("Max") => Some(SelectPolicy::Max),
        Some("Min") => Some(SelectPolicy::Min),
        Some("Disabled") => Some(SelectPolicy::Disabled),
        Some(other) => {
            return Err((
                format!("{field}.selectPolicy"),
                format!("unknown {other:?} (Max, Min, Disabled)"),
            ))
        }
    };
    let policies = match &r.policies {
        None => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    let kind = match p.kind.as_str() {
                        "Pods" => PolicyKind::Pods,
                        "Percent" => PolicyKind::Percent,
                        other => {
                            return Err((
                                format!("{field}.policies[{i}].type"),
                                format!("unknown {other:?} (Pods, Percent)"),
                            ))
                        }
                    };
                    if p.value <= 0 || p.period_seconds <= 0 || p.period_seconds > 1800 {
                        return Err((
                            format!("{field}.policies[{i}]"),
                            "value must be > 0 and periodSeconds in 1..=1800".to_owned(),
                        ));
                    }
                    Ok(ScalingPolicy {
                        kind,
                        value: p.value,
                        period_seconds: p.period_seconds,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    if let Some(w) = r.stabilization_window_seconds {
        if !(0..=3600).contains(&w) {
            return Err((
                format!("{field}.stabilizationWindowSeconds"),
                "must be in 0..=3600".to_owned(),
            ));
        }
    }
    Ok(ScalingRules {
        stabilization_window_seconds: r.stabilization_window_seconds,
        select_policy,
        policies,
        tolerance: r.tolerance.map(|q| q.0 as f64 / 1000.0),
    })
}

/// Converts `behavior`; `Err((field, message))` when invalid.
pub fn convert_behavior(b: &BehaviorJson) -> Result<Behavior, (String, String)> {
    Ok(Behavior {
        scale_up: b
            .scale_up
            .as_ref()
            .map(|r| convert_rules(r, "spec.behavior.scaleUp"))
            .transpose()?,
        scale_down: b
            .scale_down
            .as_ref()
            .map(|r| convert_rules(r, "spec.behavior.scaleDown"))
            .transpose()?,
    })
}

/// Converts the KEDA options.
pub fn convert_keda(k: &KedaJson) -> KedaOptions {
    KedaOptions {
        activation_threshold: k.activation_threshold.map(|q| q.0),
        cooldown_seconds: k.cooldown_period,
        fallback: k.fallback.as_ref().map(|f| Fallback {
            failure_threshold: f.failure_threshold,
            replicas: f.replicas,
        }),
    }
}

/// Converts the HPA spec part; `Err((field, message))` when invalid.
pub fn convert_spec(s: &SpecJson) -> Result<HpaSpec, (String, String)> {
    if s.min_replicas < 0 || s.max_replicas < 1 || s.max_replicas < s.min_replicas {
        return Err((
            "spec.maxReplicas".into(),
            "need 0 <= minReplicas <= maxReplicas and maxReplicas >= 1".into(),
        ));
    }
    if s.metrics.is_empty() {
        return Err(("spec.metrics".into(), "at least one metric".into()));
    }
    let metrics = s
        .metrics
        .iter()
        .enumerate()
        .map(|(i, m)| convert_metric(m, i))
        .collect::<Result<Vec<_>, _>>()?;
    let behavior = s.behavior.as_ref().map(convert_behavior).transpose()?;
    let keda = s.keda.as_ref().map(convert_keda);
    Ok(HpaSpec {
        min_replicas: s.min_replicas,
        max_replicas: s.max_replicas,
        metrics,
        behavior,
        keda,
    })
}

fn phase(p: Option<&str>, i: usize) -> Result<PodPhase, (String, String)> {
    Ok(match p {
        None | Some("Running") => PodPhase::Running,
        Some("Pending") => PodPhase::Pending,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Unknown") => PodPhase::Unknown,
        Some(other) => {
            return Err((
                format!("pods[{i}].phase"),
                format!("unknown phase {other:?}"),
            ))
        }
    })
}

/// The most pods listed by default (`pods` absent: `statusReplicas` ready pods); more would
/// only exhaust memory (a line with `"specReplicas": 2000000000` is refused, not allocated).
pub const MAX_DEFAULT_PODS: i32 = 100_000;

/// Converts a parsed line.
pub fn prepare(case: &Case) -> Result<Prepared, (String, String)> {
    let spec = convert_spec(&case.spec)?;
    if case.metrics.len() != spec.metrics.len() {
        return Err((
            "metrics".into(),
            format!(
                "{} readings for {} metrics in spec.metrics",
                case.metrics.len(),
                spec.metrics.len()
            ),
        ));
    }
    let status_replicas = case.status_replicas.unwrap_or(case.spec_replicas);
    if case.pods.is_none() && status_replicas > MAX_DEFAULT_PODS {
        return Err((
            "statusReplicas".into(),
            format!(
                "{status_replicas} default pods would be listed (at most {MAX_DEFAULT_PODS}): give `pods` explicitly"
            ),
        ));
    }
    let pods = match &case.pods {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, p)| -> Result<PodInfo, (String, String)> {
                Ok(PodInfo {
                    name: p.name.clone(),
                    phase: phase(p.phase.as_deref(), i)?,
                    deleted: p.deleting,
                    ready: p.ready.map(|ready| ReadyCondition {
                        ready,
                        transition_age_ms: ms(p.ready_transition_age),
                    }),
                    start_age_ms: p.start_age.map(ms),
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..status_replicas.max(0))
            .map(|i| PodInfo {
                name: format!("pod-{i}"),
                phase: PodPhase::Running,
                deleted: false,
                ready: Some(ReadyCondition {
                    ready: true,
                    transition_age_ms: 3_600_000,
                }),
                start_age_ms: Some(3_600_000),
            })
            .collect(),
    };
    let mut readings = Vec::new();
    for (i, (r, m)) in case.metrics.iter().zip(&spec.metrics).enumerate() {
        let field = format!("metrics[{i}]");
        let per_pod = matches!(m.kind, MetricKind::Resource { .. } | MetricKind::Pods);
        let reading = if r.unavailable {
            Reading::Unavailable
        } else if per_pod {
            let samples = r.pods.as_ref().ok_or_else(|| {
                (
                    format!("{field}.pods"),
                    format!("required for {} (or unavailable: true)", m.name),
                )
            })?;
            Reading::PerPod {
                samples: samples
                    .iter()
                    .map(|(name, s)| {
                        let sample = match s {
                            SampleJson::Plain(q) => PodSample {
                                value: q.0,
                                age_ms: 0,
                                window_ms: 30_000,
                            },
                            SampleJson::Full { value, age, window } => PodSample {
                                value: value.0,
                                age_ms: ms(*age),
                                window_ms: ms(*window),
                            },
                        };
                        (name.clone(), sample)
                    })
                    .collect(),
                requests: r
                    .requests
                    .as_ref()
                    .map(|m| m.iter().map(|(k, q)| (k.clone(), q.0)).collect())
                    .unwrap_or_default(),
            }
        } else {
            let values = r.values.as_ref().ok_or_else(|| {
                (
                    format!("{field}.values"),
                    format!("required for {} (or unavailable: true)", m.name),
                )
            })?;
            Reading::Values(values.iter().map(|q| q.0).collect())
        };
        readings.push(reading);
    }
    let history = History {
        recommendations: case
            .recommendations
            .iter()
            .map(|r| Recommendation {
                at_ms: ms(r.age).saturating_neg(),
                replicas: r.replicas,
            })
            .collect(),
        scale_up_events: events(&case.scale_up_events),
        scale_down_events: events(&case.scale_down_events),
        failures: case
            .spec
            .keda
            .as_ref()
            .map(|k| k.failures.clone())
            .unwrap_or_default(),
        last_active_ms: case
            .spec
            .keda
            .as_ref()
            .and_then(|k| k.last_active_age)
            .map(|a| ms(a).saturating_neg()),
    };
    let c = &case.controller;
    Ok(Prepared {
        spec,
        config: ControllerConfig {
            tolerance: c.tolerance,
            downscale_stabilization_ms: ms(c.downscale_stabilization),
            cpu_initialization_period_ms: ms(c.cpu_initialization_period),
            initial_readiness_delay_ms: ms(c.initial_readiness_delay),
        },
        pods,
        readings,
        history,
        spec_replicas: case.spec_replicas,
        status_replicas,
    })
}

fn events(list: &[EventJson]) -> Vec<ScaleEvent> {
    list.iter()
        .map(|e| ScaleEvent {
            at_ms: ms(e.age).saturating_neg(),
            change: e.change,
            outdated: false,
        })
        .collect()
}

/// Parses one JSON line; `Err((field, column, message))` when it is not a valid case.
fn parse_line(text: &str) -> Result<Prepared, (String, usize, String)> {
    let mut de = serde_json::Deserializer::from_str(text);
    let case: Case = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        (
            if path == "." { String::new() } else { path },
            inner.column(),
            strip_position(&inner.to_string()),
        )
    })?;
    de.end()
        .map_err(|e| (String::new(), e.column(), strip_position(&e.to_string())))?;
    prepare(&case).map_err(|(f, m)| (f, 1, m))
}

/// Evaluates one JSON line; `Err((field, column, message))` when it is not a valid case.
pub fn evaluate_line(text: &str) -> Result<i32, (String, usize, String)> {
    let mut p = parse_line(text)?;
    let obs = Observation {
        spec_replicas: p.spec_replicas,
        status_replicas: p.status_replicas,
        pods: &p.pods,
        readings: &p.readings,
    };
    Ok(gofe_core::hpa::reconcile(&p.spec, &p.config, &obs, &mut p.history, 0).desired)
}

/// Evaluates one JSON line and explains it: `desired`, each metric's `proposals` (replicas or
/// error), `recommended` (their maximum), `stabilized`, `limit`, `conditions` and the updated
/// `history` (`recommendations`, `scaleUpEvents`, `scaleDownEvents` with ages in seconds as of
/// this sync, the input's shape).
pub fn explain_line(text: &str) -> Result<serde_json::Value, (String, usize, String)> {
    use serde_json::json;
    let mut p = parse_line(text)?;
    let obs = Observation {
        spec_replicas: p.spec_replicas,
        status_replicas: p.status_replicas,
        pods: &p.pods,
        readings: &p.readings,
    };
    let tol = p.spec.tolerances(&p.config);
    let proposals: Vec<serde_json::Value> = p
        .spec
        .metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let reading = obs.readings.get(i).unwrap_or(&Reading::Unavailable);
            match gofe_core::hpa::metric_proposal(m, reading, &obs, tol, &p.config) {
                Ok(r) => json!({"metric": m.name, "replicas": r}),
                Err(e) => json!({"metric": m.name, "error": e.to_string()}),
            }
        })
        .collect();
    let out = gofe_core::hpa::reconcile(&p.spec, &p.config, &obs, &mut p.history, 0);
    let age = |at_ms: i64| (-(at_ms as f64)) / 1000.0;
    let events = |list: &[ScaleEvent]| -> Vec<serde_json::Value> {
        list.iter()
            .filter(|e| !e.outdated)
            .map(|e| json!({"age": age(e.at_ms), "change": e.change}))
            .collect()
    };
    let conditions: Vec<serde_json::Value> = out
        .conditions(&p.spec)
        .into_iter()
        .map(|c| {
            json!({"type": c.kind, "status": if c.status { "True" } else { "False" }, "reason": c.reason})
        })
        .collect();
    Ok(json!({
        "desired": out.desired,
        "proposals": proposals,
        "recommended": out.recommended,
        "stabilized": out.stabilized,
        "limit": format!("{:?}", out.limit),
        "error": out.error.map(|e| e.to_string()),
        "conditions": conditions,
        "history": {
            "recommendations": p.history.recommendations.iter()
                .map(|r| json!({"age": age(r.at_ms), "replicas": r.replicas}))
                .collect::<Vec<_>>(),
            "scaleUpEvents": events(&p.history.scale_up_events),
            "scaleDownEvents": events(&p.history.scale_down_events),
        },
    }))
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Runs the filter: one desired replica count per case line of `input`, written to `output`.
pub fn run(
    source_name: &str,
    input: impl BufRead,
    output: impl Write,
) -> Result<usize, ScriptError> {
    run_with(source_name, input, output, false)
}

/// [`run`], or with `explain` one [`explain_line`] JSON object per case line.
pub fn run_with(
    source_name: &str,
    input: impl BufRead,
    mut output: impl Write,
    explain: bool,
) -> Result<usize, ScriptError> {
    let io = |source| ScriptError::Io {
        source_name: source_name.to_owned(),
        source,
    };
    let mut cases = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(io)?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let result = if explain {
            explain_line(trimmed).map(|v| v.to_string())
        } else {
            evaluate_line(trimmed).map(|d| d.to_string())
        };
        let desired = result.map_err(|(field, column, message)| ScriptError::Invalid {
            source_name: source_name.to_owned(),
            line: i + 1,
            column,
            field: if field.is_empty() {
                "(line)".into()
            } else {
                field
            },
            message,
        })?;
        writeln!(output, "{desired}").map_err(io)?;
        cases += 1;
    }
    output.flush().map_err(io)?;
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(line: &str) -> i32 {
        evaluate_line(line).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1000m").unwrap(), 1000);
        assert_eq!(parse_quantity("1.5").unwrap(), 1500);
        assert_eq!(parse_quantity("2k").unwrap(), 2_000_000);
        assert_eq!(parse_quantity("1Ki").unwrap(), 1_024_000);
        assert!(parse_quantity("1x").is_err());
        assert!(parse_quantity("").is_err());
    }

    #[test]
    fn explain_shows_each_stage_and_a_history_that_replays() {
        // 12.5 req/s at 1 per pod wants 13 pods; a scale-up rule of one pod per minute allows 3.
        let spec = r#"{"minReplicas":2,"maxReplicas":50,"metrics":[{"type":"External","external":{"metric":{"name":"rps"},"target":{"type":"AverageValue","averageValue":"1000m"}}}],"behavior":{"scaleUp":{"stabilizationWindowSeconds":0,"policies":[{"type":"Pods","value":1,"periodSeconds":60}]}}}"#;
        let first =
            format!(r#"{{"spec":{spec},"specReplicas":2,"metrics":[{{"values":["12500m"]}}]}}"#);
        let e = explain_line(&first).unwrap();
        assert_eq!(e["desired"], 3);
        assert_eq!(e["proposals"][0]["replicas"], 13, "ceil(12.5 / 1)");
        assert_eq!(
            (e["recommended"].as_i64(), e["stabilized"].as_i64()),
            (Some(13), Some(13))
        );
        assert_eq!(e["limit"], "ScaleUpLimit");
        let reasons: Vec<&str> = e["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["reason"].as_str().unwrap())
            .collect();
        assert_eq!(
            reasons,
            ["ReadyForNewScale", "ValidMetricFound", "ScaleUpLimit"]
        );
        assert_eq!(e["history"]["scaleUpEvents"][0]["change"], 1);
        // Fed back 30 s later (ages + 30): the minute's budget is spent, so it stays at 3.
        let mut history = e["history"].clone();
        for list in ["recommendations", "scaleUpEvents", "scaleDownEvents"] {
            for item in history[list].as_array_mut().unwrap() {
                item["age"] = serde_json::json!(item["age"].as_f64().unwrap() + 30.0);
            }
        }
        let second = format!(
            r#"{{"spec":{spec},"specReplicas":3,"metrics":[{{"values":["12500m"]}}],"recommendations":{},"scaleUpEvents":{}}}"#,
            history["recommendations"], history["scaleUpEvents"]
        );
        let e2 = explain_line(&second).unwrap();
        assert_eq!(e2["desired"], 3, "{e2}");
        assert_eq!(e2["limit"], "ScaleUpLimit");
        assert_eq!(
            evaluate_line(&second).unwrap(),
            3,
            "the plain filter agrees"
        );
        // A metric that cannot be read: the error, ScalingActive False, nothing changes.
        let down =
            format!(r#"{{"spec":{spec},"specReplicas":3,"metrics":[{{"unavailable":true}}]}}"#);
        let e3 = explain_line(&down).unwrap();
        assert_eq!(e3["desired"], 3);
        assert!(e3["proposals"][0]["error"].is_string());
        assert_eq!(e3["conditions"][1]["reason"], "FailedGetExternalMetric");
        assert_eq!(e3["conditions"][1]["status"], "False");
    }

    #[test]
    fn external_average_value_from_the_sample_hpa() {
        // /work/shared/hpa-sample.yaml: External, AverageValue 1000m; 12.5 req/s over 5 pods.
        let line = r#"{"spec":{"minReplicas":2,"maxReplicas":50,"metrics":[{"type":"External","external":{"metric":{"name":"http_requests_per_second"},"target":{"type":"AverageValue","averageValue":"1000m"}}}]},"specReplicas":5,"metrics":[{"values":["12500m"]}]}"#;
        assert_eq!(
            eval(line),
            10,
            "behavior absent: at most max(2 × 5, 4) = 10"
        );
        let with_behavior =
            line.replace(r#"]},"specReplicas""#, r#"],"behavior":{}},"specReplicas""#);
        assert_eq!(eval(&with_behavior), 10, "defaults: max(5 + 4, 2 × 5) = 10");
    }

    #[test]
    fn every_metric_type_parses() {
        // CPU at 200% of a 50% target proposes 8, but without `behavior` one sync may at most
        // reach max(2 × 2, 4) = 4.
        let cases = [
            (
                r#"{"spec":{"maxReplicas":10,"metrics":[{"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":50}}}]},"specReplicas":2,"metrics":[{"pods":{"pod-0":"200m","pod-1":"200m"},"requests":{"pod-0":"100m","pod-1":"100m"}}]}"#,
                4,
            ),
            (
                r#"{"spec":{"maxReplicas":10,"metrics":[{"type":"Pods","pods":{"metric":{"name":"rps"},"target":{"type":"AverageValue","averageValue":"10"}}}]},"specReplicas":2,"metrics":[{"pods":{"pod-0":30,"pod-1":{"value":"30"}}}]}"#,
                4,
            ),
            (
                r#"{"spec":{"maxReplicas":10,"metrics":[{"type":"Object","object":{"metric":{"name":"hits"},"target":{"type":"Value","value":"100"}}}]},"specReplicas":3,"metrics":[{"values":[200]}]}"#,
                6,
            ),
            (
                r#"{"spec":{"maxReplicas":10,"metrics":[{"type":"External","external":{"metric":{"name":"q"},"target":{"type":"Value","value":"100"}}}]},"specReplicas":3,"metrics":[{"values":[50,50,100]}]}"#,
                6,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(eval(line), want, "{line}");
        }
    }

    #[test]
    fn history_is_used() {
        // A recommendation of 8 made 100 s ago holds a scale-down (default 300 s window).
        let line = r#"{"spec":{"maxReplicas":10,"metrics":[{"type":"External","external":{"metric":{"name":"q"},"target":{"type":"AverageValue","averageValue":"1"}}}],"behavior":{}},"specReplicas":8,"metrics":[{"values":["2"]}],"recommendations":[{"age":100,"replicas":8}]}"#;
        assert_eq!(eval(line), 8);
        let line = line.replace(r#""age":100"#, r#""age":301"#);
        assert_eq!(eval(&line), 2);
    }

    #[test]
    fn errors_name_line_and_field() {
        let input = "# comment\n\n{\"spec\":{\"maxReplicas\":10,\"metrics\":[{\"type\":\"Pods\",\"pods\":{\"metric\":{\"name\":\"x\"},\"target\":{\"type\":\"AverageValue\",\"averageValue\":\"ten\"}}}]},\"specReplicas\":1,\"metrics\":[{}]}\n";
        let e = run("cases.jsonl", input.as_bytes(), Vec::new()).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("cases.jsonl:3:"), "{text}");
        assert!(
            text.contains("spec.metrics[0].pods.target.averageValue"),
            "{text}"
        );
        let e = run("c", &b"{\"specReplicas\":1}\n"[..], Vec::new()).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
        let e = run(
            "c",
            &br#"{"spec":{"maxReplicas":10,"metrics":[{"type":"Pods","pods":{"metric":{"name":"x"},"target":{"type":"Value","value":"1"}}}]},"specReplicas":1,"metrics":[{}]}"#[..],
            Vec::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("spec.metrics[0].pods.target.type"),
            "{e}"
        );
    }

    proptest::proptest! {
        #[test]
        fn malformed_lines_never_panic(line in "\\PC{0,200}") {
            let _ = evaluate_line(&line);
        }

        #[test]
        fn valid_lines_with_extreme_numbers_never_panic(
            spec_replicas in proptest::prelude::any::<i32>(),
            max in proptest::prelude::any::<i32>(),
            value in proptest::prelude::any::<i64>(),
            age in proptest::prelude::any::<f64>(),
        ) {
            let line = format!(
                r#"{{"spec":{{"maxReplicas":{max},"metrics":[{{"type":"External","external":{{"metric":{{"name":"q"}},"target":{{"type":"AverageValue","averageValue":"1"}}}}}}],"behavior":{{}}}},"specReplicas":{spec_replicas},"metrics":[{{"values":[{value}]}}],"recommendations":[{{"age":{age:e},"replicas":3}}]}}"#
            );
            let _ = evaluate_line(&line);
        }
    }

    #[test]
    fn a_huge_default_pod_list_is_refused_not_allocated() {
        let line = r#"{"spec":{"maxReplicas":10,"metrics":[{"type":"External","external":{"metric":{"name":"q"},"target":{"type":"AverageValue","averageValue":"1"}}}]},"specReplicas":2000000000,"metrics":[{"values":[1]}]}"#;
        let (field, _, message) = evaluate_line(line).unwrap_err();
        assert_eq!(field, "statusReplicas");
        assert!(message.contains("give `pods` explicitly"), "{message}");
    }

    #[test]
    fn runs_line_by_line() {
        let line = r#"{"spec":{"maxReplicas":10,"metrics":[{"type":"Object","object":{"metric":{"name":"hits"},"target":{"type":"Value","value":"100"}}}]},"specReplicas":3,"metrics":[{"values":[200]}]}"#;
        let input = format!("{line}\n{line}\n");
        let mut out = Vec::new();
        assert_eq!(run("x", input.as_bytes(), &mut out).unwrap(), 2);
        assert_eq!(String::from_utf8(out).unwrap(), "6\n6\n");
    }
}
