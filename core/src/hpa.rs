//! The Kubernetes HorizontalPodAutoscaler (autoscaling/v2) replica computation, step for step.
//!
//! This follows what the HPA controller in kube-controller-manager does on every sync, so that
//! gofe's simulator, metrics adapter and controller can predict a real cluster's scaling:
//!
//! ```text
//!  per metric: readings ──► proposal (ceil(current × usage / target), tolerance, missing and
//!                            │         not-yet-ready pods handled conservatively)
//!  all metrics ─────────────► largest proposal (skip a scale-down if any metric failed)
//!  min/max out of range ────► clamp straight to the range
//!  behavior absent ─────────► 5-minute rolling-maximum stabilization, scale-up limit max(2×, 4)
//!  behavior present ────────► up/down stabilization windows, Pods/Percent policies over
//!                             periodSeconds, selectPolicy Max/Min/Disabled
//! ```
//!
//! Quantities are integer milli-units ([`Milli`]), as the controller reads them
//! (`Quantity::MilliValue`); averages use integer division where the controller does. Time is
//! milliseconds on a caller-chosen clock; histories (recommendations, scale events) carry their
//! timestamps and [`reconcile`] updates them the way the controller updates its in-memory
//! copies. A fetch failure is a [`Reading::Unavailable`].
//!
//! Also here, as options: KEDA's activation threshold (scale to and from zero) and fallback
//! replicas ([`KedaOptions`]).
//!
//! What it does not do: talk to any API server, or model the HPA's status conditions beyond the
//! [`Limit`] that names why a recommendation was cut.

use std::collections::BTreeMap;

/// A quantity in thousandths (`1000m` = 1).
pub type Milli = i64;

/// The controller's default tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// Why a metric or the whole computation produced no recommendation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpaError {
    /// The metric's readings could not be fetched.
    #[error("metric {0}: readings unavailable")]
    Unavailable(String),
    /// The selector matched no pods.
    #[error("metric {0}: no pods returned by selector")]
    NoPods(String),
    /// Every pod was unready, failed or without a reading.
    #[error("metric {0}: did not receive metrics for targeted pods (pods might be unready)")]
    NoMetrics(String),
    /// A pod has no resource request, so utilization is undefined.
    #[error("metric {metric}: missing request for pod {pod}")]
    MissingRequest {
        /// The metric.
        metric: String,
        /// The pod without a request.
        pod: String,
    },
    /// Requests sum to zero.
    #[error("metric {0}: no metrics returned matched known pods")]
    ZeroRequests(String),
    /// The target type does not fit the metric type (e.g. a `Value` target on a `Pods` metric).
    #[error("metric {0}: target type not valid for this metric type")]
    BadTarget(String),
    /// The HPA has no metrics.
    #[error("no metrics specified")]
    NoMetricSpecs,
}

// === spec ===

/// Where a metric comes from, as in `spec.metrics[].type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A resource of the pods (`cpu`, `memory`); `cpu` switches on the CPU readiness rules.
    Resource {
        /// Whether this is the `cpu` resource (only CPU samples of initializing pods are
        /// discarded).
        cpu: bool,
    },
    /// A per-pod custom metric (`Pods`).
    Pods,
    /// A metric of one Kubernetes object (`Object`).
    Object,
    /// A metric from outside the cluster (`External`), possibly several series, summed.
    External,
}

/// A metric target, as in `spec.metrics[].*.target`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricTarget {
    /// `type: Utilization`, `averageUtilization` in percent of the pods' requests.
    Utilization(i32),
    /// `type: AverageValue`: the value per pod.
    AverageValue(Milli),
    /// `type: Value`: the total value.
    Value(Milli),
}

impl std::fmt::Display for MetricTarget {
    /// As an HPA spec writes it: `averageValue: 25`, `value: 1500m`, `averageUtilization: 80%`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quantity = |f: &mut std::fmt::Formatter<'_>, m: Milli| {
            if m % 1000 == 0 {
                write!(f, "{}", m / 1000)
            } else {
                write!(f, "{m}m")
            }
        };
        match *self {
            MetricTarget::Utilization(p) => write!(f, "averageUtilization: {p}%"),
            MetricTarget::AverageValue(m) => {
                f.write_str("averageValue: ")?;
                quantity(f, m)
            }
            MetricTarget::Value(m) => {
                f.write_str("value: ")?;
                quantity(f, m)
            }
        }
    }
}

/// One entry of `spec.metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSpec {
    /// A name for errors and reports.
    pub name: String,
    /// The metric type.
    pub kind: MetricKind,
    /// The target.
    pub target: MetricTarget,
}

/// `behavior.*.policies[].type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// Change by at most `value` pods per period.
    Pods,
    /// Change by at most `value` percent of the replicas at the start of the period.
    Percent,
}

/// One scaling policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalingPolicy {
    /// Pods or Percent.
    pub kind: PolicyKind,
    /// The amount (pods or percent).
    pub value: i32,
    /// The period over which past changes count, in seconds.
    pub period_seconds: i32,
}

/// `behavior.*.selectPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SelectPolicy {
    /// The policy allowing the largest change (the default).
    #[default]
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// `behavior.scaleUp` or `behavior.scaleDown`; `None` fields take Kubernetes' defaults.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ScalingRules {
    /// `stabilizationWindowSeconds`. Default: 0 s up; the controller's
    /// `--horizontal-pod-autoscaler-downscale-stabilization` (300 s) down.
    pub stabilization_window_seconds: Option<i32>,
    /// `selectPolicy`. Default: Max.
    pub select_policy: Option<SelectPolicy>,
    /// `policies`. Default up: 4 Pods / 15 s and 100 Percent / 15 s; down: 100 Percent / 15 s.
    pub policies: Option<Vec<ScalingPolicy>>,
    /// `tolerance` (per direction). Default: the controller's tolerance (0.1).
    pub tolerance: Option<f64>,
}

/// `spec.behavior`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Behavior {
    /// Scale-up rules (`None` = all defaults).
    pub scale_up: Option<ScalingRules>,
    /// Scale-down rules (`None` = all defaults).
    pub scale_down: Option<ScalingRules>,
}

/// KEDA-style extras: activation (scale to and from zero) and fallback replicas.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct KedaOptions {
    /// With `min_replicas: 0`: the workload is active while any `External`/`Object` metric's
    /// total exceeds this value (milli-units); when none does for `cooldown_seconds`, it is
    /// scaled to zero; from zero it goes to one replica as soon as one does. `None` disables.
    pub activation_threshold: Option<Milli>,
    /// How long the workload must be inactive before scaling to zero, seconds. Default 300.
    pub cooldown_seconds: i64,
    /// After this many consecutive syncs in which a metric could not be read, that metric
    /// proposes `replicas` instead of failing.
    pub fallback: Option<Fallback>,
}

/// KEDA's `fallback`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// `failureThreshold`: consecutive failures before the fallback applies.
    pub failure_threshold: u32,
    /// `replicas`: the proposal while failing.
    pub replicas: i32,
}

/// An HPA spec (the part that decides replicas).
#[derive(Clone, Debug, PartialEq)]
pub struct HpaSpec {
    /// `minReplicas` (default 1; 0 only with the HPAScaleToZero feature).
    pub min_replicas: i32,
    /// `maxReplicas`.
    pub max_replicas: i32,
    /// `metrics`.
    pub metrics: Vec<MetricSpec>,
    /// `behavior`; `None` selects the controller's behavior-less path (see [`reconcile`]).
    pub behavior: Option<Behavior>,
    /// KEDA-style options; `None` is a plain HPA.
    pub keda: Option<KedaOptions>,
}

/// kube-controller-manager flags that change HPA decisions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ControllerConfig {
    /// `--horizontal-pod-autoscaler-tolerance`. Default 0.1.
    pub tolerance: f64,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`, ms. Default 300 000 (5 min).
    pub downscale_stabilization_ms: i64,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`, ms. Default 300 000 (5 min).
    pub cpu_initialization_period_ms: i64,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay`, ms. Default 30 000.
    pub initial_readiness_delay_ms: i64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            tolerance: DEFAULT_TOLERANCE,
            downscale_stabilization_ms: 300_000,
            cpu_initialization_period_ms: 300_000,
            initial_readiness_delay_ms: 30_000,
        }
    }
}

/// Scaling rules with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedRules {
    /// Stabilization window, seconds.
    pub stabilization_window_seconds: i32,
    /// Policy selection.
    pub select_policy: SelectPolicy,
    /// Policies.
    pub policies: Vec<ScalingPolicy>,
    /// Tolerance in this direction.
    pub tolerance: f64,
}

/// Kubernetes' default scale-up rules: no stabilization; 4 pods or 100 % per 15 s, whichever
/// is more.
pub fn default_scale_up() -> ResolvedRules {
    ResolvedRules {
        stabilization_window_seconds: 0,
        select_policy: SelectPolicy::Max,
        policies: vec![
            ScalingPolicy {
                kind: PolicyKind::Pods,
                value: 4,
                period_seconds: 15,
            },
            ScalingPolicy {
                kind: PolicyKind::Percent,
                value: 100,
                period_seconds: 15,
            },
        ],
        tolerance: DEFAULT_TOLERANCE,
    }
}

/// Kubernetes' default scale-down rules: 300 s stabilization; 100 % per 15 s.
pub fn default_scale_down() -> ResolvedRules {
    ResolvedRules {
        stabilization_window_seconds: 300,
        select_policy: SelectPolicy::Max,
        policies: vec![ScalingPolicy {
            kind: PolicyKind::Percent,
            value: 100,
            period_seconds: 15,
        }],
        tolerance: DEFAULT_TOLERANCE,
    }
}

fn resolve(
    rules: Option<&ScalingRules>,
    mut default: ResolvedRules,
    tolerance: f64,
) -> ResolvedRules {
    default.tolerance = tolerance;
    let Some(r) = rules else { return default };
    ResolvedRules {
        stabilization_window_seconds: r
            .stabilization_window_seconds
            .unwrap_or(default.stabilization_window_seconds),
        select_policy: r.select_policy.unwrap_or(default.select_policy),
        policies: r.policies.clone().unwrap_or(default.policies),
        tolerance: r.tolerance.unwrap_or(tolerance),
    }
}

impl Behavior {
    /// Both directions with Kubernetes' defaults filled in (`scaleDown`'s window from
    /// `config.downscale_stabilization_ms` when unset, as the controller does).
    pub fn resolved(&self, config: &ControllerConfig) -> (ResolvedRules, ResolvedRules) {
        let up = resolve(self.scale_up.as_ref(), default_scale_up(), config.tolerance);
        let mut down_default = default_scale_down();
        down_default.stabilization_window_seconds =
            (config.downscale_stabilization_ms / 1000) as i32;
        let down = resolve(self.scale_down.as_ref(), down_default, config.tolerance);
        (up, down)
    }
}

/// Per-direction tolerances: a usage ratio in `[1 - down, 1 + up]` means "no change".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    /// Scale-up tolerance.
    pub scale_up: f64,
    /// Scale-down tolerance.
    pub scale_down: f64,
}

impl Tolerances {
    /// Whether `ratio` is close enough to 1 to skip scaling.
    pub fn is_within(&self, ratio: f64) -> bool {
        1.0 - self.scale_down <= ratio && ratio <= 1.0 + self.scale_up
    }
}

impl HpaSpec {
    /// The tolerances this HPA uses.
    pub fn tolerances(&self, config: &ControllerConfig) -> Tolerances {
        let pick =
            |r: Option<&ScalingRules>| r.and_then(|r| r.tolerance).unwrap_or(config.tolerance);
        let b = self.behavior.as_ref();
        Tolerances {
            scale_up: pick(b.and_then(|b| b.scale_up.as_ref())),
            scale_down: pick(b.and_then(|b| b.scale_down.as_ref())),
        }
    }
}

// === observations ===

/// `status.phase` of a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    /// Not started yet (counted as not ready).
    Pending,
    /// Running.
    Running,
    /// Completed.
    Succeeded,
    /// Failed (ignored).
    Failed,
    /// Unknown.
    Unknown,
}

/// The pod's `Ready` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyCondition {
    /// `status == "True"`.
    pub ready: bool,
    /// Milliseconds since `lastTransitionTime`.
    pub transition_age_ms: i64,
}

/// A pod matched by the HPA's selector.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    /// Pod name (the key of per-pod readings).
    pub name: String,
    /// `status.phase`.
    pub phase: PodPhase,
    /// `metadata.deletionTimestamp` is set (ignored like a failed pod).
    pub deleted: bool,
    /// The `Ready` condition, if the pod has one.
    pub ready: Option<ReadyCondition>,
    /// Milliseconds since `status.startTime`, if set.
    pub start_age_ms: Option<i64>,
}

/// One pod's sample of a per-pod metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodSample {
    /// The value.
    pub value: Milli,
    /// Milliseconds since the sample's timestamp (used by the CPU readiness rule).
    pub age_ms: i64,
    /// The sample's window, ms (used by the CPU readiness rule).
    pub window_ms: i64,
}

/// What the metrics APIs returned for one metric.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// Per-pod samples (`Resource`, `Pods`); `requests` holds each pod's request of the
    /// resource, needed for `Utilization` targets.
    PerPod {
        /// Samples by pod name; a pod of the selector without a sample is "missing".
        samples: BTreeMap<String, PodSample>,
        /// Requests by pod name (milli-units).
        requests: BTreeMap<String, Milli>,
    },
    /// The value(s) of an `Object` metric or the series of an `External` metric (summed).
    Values(Vec<Milli>),
    /// The fetch failed.
    Unavailable,
}

/// Everything one sync reads.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// `scale.spec.replicas`.
    pub spec_replicas: i32,
    /// `scale.status.replicas`.
    pub status_replicas: i32,
    /// The pods the selector matches.
    pub pods: &'a [PodInfo],
    /// One reading per entry of `spec.metrics`, in order.
    pub readings: &'a [Reading],
}

// === per-metric proposals ===

fn ceil_i32(x: f64) -> i32 {
    // Go's int32(math.Ceil(x)); Rust's cast saturates instead of wrapping on overflow.
    x.ceil() as i32
}

fn metric_usage_ratio(metrics: &BTreeMap<&str, Milli>, target: Milli) -> f64 {
    // i128: a sum of i64 readings cannot overflow it.
    let total: i128 = metrics.values().map(|&v| i128::from(v)).sum();
    let current = total / metrics.len().max(1) as i128;
    current as f64 / target as f64
}

fn utilization_ratio(
    metrics: &BTreeMap<&str, Milli>,
    requests: &BTreeMap<String, Milli>,
    target: i32,
) -> Option<f64> {
    let (mut used, mut requested) = (0i128, 0i128);
    for (pod, value) in metrics {
        if let Some(r) = requests.get(*pod) {
            used += i128::from(*value);
            requested += i128::from(*r);
        }
    }
    if requested == 0 {
        return None;
    }
    let utilization =
        (used * 100 / requested).clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as i32;
    Some(f64::from(utilization) / f64::from(target))
}

#[derive(Default)]
struct Groups<'a> {
    ready: usize,
    unready: Vec<&'a str>,
    missing: Vec<&'a str>,
    ignored: Vec<&'a str>,
}

/// The controller's `groupPods`: failed or deleting pods are ignored, pending ones are unready,
/// pods without a sample are missing, and for CPU a pod is unready while it initializes.
fn group_pods<'a>(
    pods: &'a [PodInfo],
    samples: &BTreeMap<String, PodSample>,
    cpu: bool,
    config: &ControllerConfig,
) -> Groups<'a> {
    let mut g = Groups::default();
    for pod in pods {
        if pod.deleted || pod.phase == PodPhase::Failed {
            g.ignored.push(&pod.name);
            continue;
        }
        if pod.phase == PodPhase::Pending {
            g.unready.push(&pod.name);
            continue;
        }
        let Some(sample) = samples.get(&pod.name) else {
            g.missing.push(&pod.name);
            continue;
        };
        if cpu {
            let unready = match (pod.ready, pod.start_age_ms) {
                (Some(cond), Some(start_age)) => {
                    if start_age < config.cpu_initialization_period_ms {
                        // Initializing: the sample must be a full window after the last
                        // readiness transition.
                        !cond.ready
                            || sample.age_ms
                                > cond.transition_age_ms.saturating_sub(sample.window_ms)
                    } else {
                        // Unready and never ready since start (within the readiness delay).
                        !cond.ready
                            && cond
                                .transition_age_ms
                                .saturating_add(config.initial_readiness_delay_ms)
                                > start_age
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.push(&pod.name);
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// `GetResourceReplicas`/`GetMetricReplicas`/`GetRawResourceReplicas`: a per-pod metric.
fn per_pod_replicas(
    spec: &MetricSpec,
    current: i32,
    pods: &[PodInfo],
    samples: &BTreeMap<String, PodSample>,
    requests: &BTreeMap<String, Milli>,
    tol: Tolerances,
    config: &ControllerConfig,
) -> Result<i32, HpaError> {
    let name = || spec.name.clone();
    if pods.is_empty() {
        return Err(HpaError::NoPods(name()));
    }
    let cpu = matches!(spec.kind, MetricKind::Resource { cpu: true });
    let g = group_pods(pods, samples, cpu, config);
    let mut metrics: BTreeMap<&str, Milli> =
        samples.iter().map(|(k, s)| (k.as_str(), s.value)).collect();
    for pod in g.ignored.iter().chain(&g.unready) {
        metrics.remove(pod);
    }
    if metrics.is_empty() {
        return Err(HpaError::NoMetrics(name()));
    }
    let ratio_of = |m: &BTreeMap<&str, Milli>| -> Result<f64, HpaError> {
        match spec.target {
            MetricTarget::Utilization(t) => {
                utilization_ratio(m, requests, t).ok_or_else(|| HpaError::ZeroRequests(name()))
            }
            MetricTarget::AverageValue(t) => Ok(metric_usage_ratio(m, t)),
            MetricTarget::Value(_) => Err(HpaError::BadTarget(name())),
        }
    };
    if let MetricTarget::Utilization(_) = spec.target {
        if let Some(pod) = pods.iter().find(|p| !requests.contains_key(&p.name)) {
            return Err(HpaError::MissingRequest {
                metric: name(),
                pod: pod.name.clone(),
            });
        }
    }
    let ratio = ratio_of(&metrics)?;
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if tol.is_within(ratio) {
            return Ok(current);
        }
        return Ok(ceil_i32(ratio * g.ready as f64));
    }
    if !g.missing.is_empty() {
        for pod in &g.missing {
            let assumed = if ratio < 1.0 {
                // Scale-down: a missing pod is assumed to use the target (for utilization, at
                // least its whole request).
                match spec.target {
                    MetricTarget::Utilization(t) => {
                        requests
                            .get(*pod)
                            .copied()
                            .unwrap_or(0)
                            .saturating_mul(i64::from(t.max(100)))
                            / 100
                    }
                    MetricTarget::AverageValue(t) => t,
                    MetricTarget::Value(_) => 0,
                }
            } else if ratio > 1.0 {
                // Scale-up: a missing pod is idle.
                0
            } else {
                // Exactly on target: current kube-controller-manager leaves missing pods out
                // (for every target type), so the replica count stays.
                continue;
            };
            metrics.insert(pod, assumed);
        }
    }
    if scale_up_with_unready {
        for pod in &g.unready {
            metrics.insert(pod, 0);
        }
    }
    let new_ratio = ratio_of(&metrics)?;
    if tol.is_within(new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(current);
    }
    let proposal = ceil_i32(new_ratio * metrics.len() as f64);
    if (new_ratio < 1.0 && proposal > current) || (new_ratio > 1.0 && proposal < current) {
        return Ok(current);
    }
    Ok(proposal)
}

/// Running pods whose `Ready` condition is true.
fn ready_pod_count(pods: &[PodInfo]) -> usize {
    pods.iter()
        .filter(|p| p.phase == PodPhase::Running && p.ready.is_some_and(|c| c.ready))
        .count()
}

/// `GetObjectMetricReplicas`/`GetExternalMetricReplicas` (`Value`) and the per-pod variants
/// (`AverageValue`).
fn total_value_replicas(
    spec: &MetricSpec,
    obs: &Observation<'_>,
    values: &[Milli],
    tol: Tolerances,
) -> Result<i32, HpaError> {
    let usage: f64 = values.iter().map(|&v| i128::from(v)).sum::<i128>() as f64;
    match spec.target {
        MetricTarget::Value(target) => {
            let ratio = usage / target as f64;
            let current = obs.spec_replicas;
            if current != 0 {
                if tol.is_within(ratio) {
                    return Ok(current);
                }
                if obs.pods.is_empty() {
                    return Err(HpaError::NoPods(spec.name.clone()));
                }
                Ok(ceil_i32(ratio * ready_pod_count(obs.pods) as f64))
            } else {
                Ok(ceil_i32(ratio))
            }
        }
        MetricTarget::AverageValue(per_pod) => {
            let replicas = obs.status_replicas;
            let ratio = usage / (per_pod as f64 * f64::from(replicas));
            if tol.is_within(ratio) {
                Ok(replicas)
            } else {
                Ok(ceil_i32(usage / per_pod as f64))
            }
        }
        MetricTarget::Utilization(_) => Err(HpaError::BadTarget(spec.name.clone())),
    }
}

/// The replica proposal of one metric.
pub fn metric_proposal(
    spec: &MetricSpec,
    reading: &Reading,
    obs: &Observation<'_>,
    tol: Tolerances,
    config: &ControllerConfig,
) -> Result<i32, HpaError> {
    match (spec.kind, reading) {
        (_, Reading::Unavailable) => Err(HpaError::Unavailable(spec.name.clone())),
        (MetricKind::Resource { .. } | MetricKind::Pods, Reading::PerPod { samples, requests }) => {
            if matches!(spec.kind, MetricKind::Pods)
                && !matches!(spec.target, MetricTarget::AverageValue(_))
            {
                return Err(HpaError::BadTarget(spec.name.clone()));
            }
            per_pod_replicas(
                spec,
                obs.spec_replicas,
                obs.pods,
                samples,
                requests,
                tol,
                config,
            )
        }
        (MetricKind::Object | MetricKind::External, Reading::Values(values)) => {
            total_value_replicas(spec, obs, values, tol)
        }
        _ => Err(HpaError::BadTarget(spec.name.clone())),
    }
}

/// `computeReplicasForMetrics`: the largest proposal. Fails when every metric failed, or when
/// some failed and the others would scale down (the controller then does not scale).
/// `fallback` replaces the proposal of a failed metric (KEDA's fallback), when given.
pub fn replicas_for_metrics(
    spec: &HpaSpec,
    obs: &Observation<'_>,
    config: &ControllerConfig,
    fallback: &dyn Fn(usize) -> Option<i32>,
) -> Result<i32, HpaError> {
    if spec.metrics.is_empty() {
        return Err(HpaError::NoMetricSpecs);
    }
    let tol = spec.tolerances(config);
    let mut replicas = 0;
    let mut first_error = None;
    let mut invalid = 0;
    for (i, metric) in spec.metrics.iter().enumerate() {
        let reading = obs.readings.get(i).unwrap_or(&Reading::Unavailable);
        let proposal = match metric_proposal(metric, reading, obs, tol, config) {
            Ok(p) => p,
            Err(e) => match fallback(i) {
                Some(p) => p,
                None => {
                    invalid += 1;
                    first_error.get_or_insert(e);
                    continue;
                }
            },
        };
        if replicas == 0 || proposal > replicas {
            replicas = proposal;
        }
    }
    if let Some(e) = first_error {
        if invalid >= spec.metrics.len() || replicas < obs.spec_replicas {
            return Err(e);
        }
    }
    Ok(replicas)
}

// === history and normalization ===

/// A past recommendation (before normalization), as the controller keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    /// When, ms.
    pub at_ms: i64,
    /// The replica count recommended.
    pub replicas: i32,
}

/// A past scaling, as the controller keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleEvent {
    /// When, ms.
    pub at_ms: i64,
    /// How many replicas were added (or removed), positive.
    pub change: i32,
    /// Older than the longest policy period at the last scaling in this direction.
    pub outdated: bool,
}

/// The controller's memory of one HPA.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Past recommendations.
    pub recommendations: Vec<Recommendation>,
    /// Past scale-ups.
    pub scale_up_events: Vec<ScaleEvent>,
    /// Past scale-downs.
    pub scale_down_events: Vec<ScaleEvent>,
    /// KEDA: consecutive failed syncs per metric.
    pub failures: Vec<u32>,
    /// KEDA: when the workload was last active, ms.
    pub last_active_ms: Option<i64>,
}

/// What limited the result, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The metrics' recommendation went through unchanged.
    None,
    /// Clamped to minReplicas.
    TooFewReplicas,
    /// Clamped to maxReplicas.
    TooManyReplicas,
    /// Held back by a scale-up rate limit.
    ScaleUpLimit,
    /// Held back by a scale-down rate limit.
    ScaleDownLimit,
    /// Held back by a stabilization window.
    Stabilized,
    /// Autoscaling is off: spec replicas are 0 and minReplicas is not.
    Disabled,
    /// The metrics gave no usable recommendation; replicas unchanged.
    MetricsFailed,
    /// KEDA activation scaled to or from zero.
    Activation,
}

impl Limit {
    /// Its name in reports and logs (Kubernetes' `ScalingLimited` reason where it has one).
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::None => "none",
            Limit::TooFewReplicas => "TooFewReplicas",
            Limit::TooManyReplicas => "TooManyReplicas",
            Limit::ScaleUpLimit => "ScaleUpLimit",
            Limit::ScaleDownLimit => "ScaleDownLimit",
            Limit::Stabilized => "Stabilized",
            Limit::Disabled => "Disabled",
            Limit::MetricsFailed => "MetricsFailed",
            Limit::Activation => "Activation",
        }
    }
}

/// The result of one sync.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The replica count the controller sets (equal to spec replicas when it does not scale).
    pub desired: i32,
    /// Before stabilization and rate limits (0 when metrics failed).
    pub recommended: i32,
    /// After the stabilization window, before the rate limits and min/max (equal to
    /// `recommended` without one; 0 when metrics failed).
    pub stabilized: i32,
    /// What changed the recommendation.
    pub limit: Limit,
    /// Why metrics failed, if they did.
    pub error: Option<HpaError>,
}

/// One of the HPA's status conditions, as `kubectl describe hpa` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `AbleToScale`, `ScalingActive` or `ScalingLimited`.
    pub kind: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// Kubernetes' reason (`ReadyForNewScale`, `ScaleDownStabilized`, `ValidMetricFound`,
    /// `FailedGetExternalMetric`, `TooManyReplicas`, `DesiredWithinRange`, ...).
    pub reason: &'static str,
}

impl Outcome {
    /// The conditions the HPA controller sets after this sync (its reasons; the messages are
    /// left out).
    pub fn conditions(&self, spec: &HpaSpec) -> Vec<Condition> {
        let c = |kind, status, reason| Condition {
            kind,
            status,
            reason,
        };
        let able = match self.limit {
            Limit::Stabilized if self.stabilized > self.recommended => {
                c("AbleToScale", true, "ScaleDownStabilized")
            }
            Limit::Stabilized => c("AbleToScale", true, "ScaleUpStabilized"),
            _ => c("AbleToScale", true, "ReadyForNewScale"),
        };
        let active = match (&self.limit, &self.error) {
            (Limit::Disabled, _) => c("ScalingActive", false, "ScalingDisabled"),
            (_, Some(e)) => {
                let kind = match e {
                    HpaError::Unavailable(name) => spec
                        .metrics
                        .iter()
                        .find(|m| &m.name == name)
                        .map_or(MetricKind::External, |m| m.kind),
                    _ => MetricKind::External,
                };
                let reason = match (e, kind) {
                    (HpaError::BadTarget(_) | HpaError::NoMetricSpecs, _) => {
                        "InvalidMetricSourceType"
                    }
                    (_, MetricKind::Resource { .. }) => "FailedGetResourceMetric",
                    (_, MetricKind::Pods) => "FailedGetPodsMetric",
                    (_, MetricKind::Object) => "FailedGetObjectMetric",
                    (_, MetricKind::External) => "FailedGetExternalMetric",
                };
                c("ScalingActive", false, reason)
            }
            _ => c("ScalingActive", true, "ValidMetricFound"),
        };
        let limited = match self.limit {
            Limit::TooFewReplicas => c("ScalingLimited", true, "TooFewReplicas"),
            Limit::TooManyReplicas => c("ScalingLimited", true, "TooManyReplicas"),
            Limit::ScaleUpLimit => c("ScalingLimited", true, "ScaleUpLimit"),
            Limit::ScaleDownLimit => c("ScalingLimited", true, "ScaleDownLimit"),
            _ => c("ScalingLimited", false, "DesiredWithinRange"),
        };
        vec![able, active, limited]
    }
}

fn replicas_change(period_seconds: i32, events: &[ScaleEvent], now_ms: i64) -> i32 {
    let cutoff = now_ms.saturating_sub(i64::from(period_seconds) * 1000);
    events
        .iter()
        .filter(|e| e.at_ms > cutoff)
        .fold(0i32, |acc, e| acc.saturating_add(e.change))
}

/// The highest replica count the scale-up rules allow now.
pub fn scale_up_limit(current: i32, history: &History, rules: &ResolvedRules, now_ms: i64) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MAX, std::cmp::min),
        SelectPolicy::Max => (i32::MIN, std::cmp::max),
    };
    for p in &rules.policies {
        let added = replicas_change(p.period_seconds, &history.scale_up_events, now_ms);
        let removed = replicas_change(p.period_seconds, &history.scale_down_events, now_ms);
        let start = current.saturating_sub(added).saturating_add(removed);
        let proposed = match p.kind {
            PolicyKind::Pods => start.saturating_add(p.value),
            PolicyKind::Percent => ceil_i32(f64::from(start) * (1.0 + f64::from(p.value) / 100.0)),
        };
        result = pick(result, proposed);
    }
    result
}

/// The lowest replica count the scale-down rules allow now.
pub fn scale_down_limit(
    current: i32,
    history: &History,
    rules: &ResolvedRules,
    now_ms: i64,
) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MIN, std::cmp::max),
        SelectPolicy::Max => (i32::MAX, std::cmp::min),
    };
    for p in &rules.policies {
        let added = replicas_change(p.period_seconds, &history.scale_up_events, now_ms);
        let removed = replicas_change(p.period_seconds, &history.scale_down_events, now_ms);
        let start = current.saturating_sub(added).saturating_add(removed);
        let proposed = match p.kind {
            PolicyKind::Pods => start.saturating_sub(p.value),
            // Truncation toward zero, as Go's int32(float64).
            PolicyKind::Percent => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        };
        result = pick(result, proposed);
    }
    result
}

fn record(history: &mut History, replicas: i32, old_cutoff_ms: i64, now_ms: i64) {
    // The controller overwrites the last sample older than the cutoff, else appends.
    let old = history
        .recommendations
        .iter()
        .rposition(|r| r.at_ms < old_cutoff_ms);
    let rec = Recommendation {
        at_ms: now_ms,
        replicas,
    };
    match old {
        Some(i) => history.recommendations[i] = rec,
        None => history.recommendations.push(rec),
    }
}

/// The behavior-less path (`normalizeDesiredReplicas`): the largest recommendation of the
/// downscale-stabilization window, then `[min, max(2 × current, 4)]` capped by maxReplicas.
fn normalize_legacy(
    spec: &HpaSpec,
    config: &ControllerConfig,
    history: &mut History,
    current: i32,
    proposal: i32,
    min: i32,
    now_ms: i64,
) -> (i32, i32, Limit) {
    let cutoff = now_ms.saturating_sub(config.downscale_stabilization_ms);
    let mut stabilized = proposal;
    for r in &history.recommendations {
        if r.at_ms >= cutoff && r.replicas > stabilized {
            stabilized = r.replicas;
        }
    }
    record(history, proposal, cutoff, now_ms);
    let scale_up_limit = ((2.0 * f64::from(current)).max(4.0)) as i32;
    let (max_allowed, max_limit) = if spec.max_replicas > scale_up_limit {
        (scale_up_limit, Limit::ScaleUpLimit)
    } else {
        (spec.max_replicas, Limit::TooManyReplicas)
    };
    if stabilized < min {
        (min, stabilized, Limit::TooFewReplicas)
    } else if stabilized > max_allowed {
        (max_allowed, stabilized, max_limit)
    } else if stabilized != proposal {
        (stabilized, stabilized, Limit::Stabilized)
    } else {
        (stabilized, stabilized, Limit::None)
    }
}

/// `normalizeDesiredReplicasWithBehaviors`: stabilization between the scale-up window's
/// minimum and the scale-down window's maximum, then the policies' rate limits and min/max.
fn normalize_with_behavior(
    spec: &HpaSpec,
    config: &ControllerConfig,
    history: &mut History,
    current: i32,
    proposal: i32,
    min: i32,
    now_ms: i64,
) -> (i32, i32, Limit) {
    let (up, down) = spec.behavior.clone().unwrap_or_default().resolved(config);
    let up_cutoff = now_ms.saturating_sub(i64::from(up.stabilization_window_seconds) * 1000);
    let down_cutoff = now_ms.saturating_sub(i64::from(down.stabilization_window_seconds) * 1000);
    let obsolete_cutoff = now_ms.saturating_sub(
        i64::from(
            up.stabilization_window_seconds
                .max(down.stabilization_window_seconds),
        ) * 1000,
    );
    let (mut up_rec, mut down_rec) = (proposal, proposal);
    for r in &history.recommendations {
        if r.at_ms > up_cutoff {
            up_rec = up_rec.min(r.replicas);
        }
        if r.at_ms > down_cutoff {
            down_rec = down_rec.max(r.replicas);
        }
    }
    let mut stabilized = current;
    if stabilized < up_rec {
        stabilized = up_rec;
    }
    if stabilized > down_rec {
        stabilized = down_rec;
    }
    record(history, proposal, obsolete_cutoff, now_ms);
    let mut limit = if stabilized != proposal {
        Limit::Stabilized
    } else {
        Limit::None
    };
    if stabilized > current {
        let rate = scale_up_limit(current, history, &up, now_ms).max(current);
        let (max_allowed, why) = if spec.max_replicas > rate {
            (rate, Limit::ScaleUpLimit)
        } else {
            (spec.max_replicas, Limit::TooManyReplicas)
        };
        if stabilized > max_allowed {
            return (max_allowed, stabilized, why);
        }
    } else if stabilized < current {
        let rate = scale_down_limit(current, history, &down, now_ms).min(current);
        let (min_allowed, why) = if min < rate {
            (rate, Limit::ScaleDownLimit)
        } else {
            (min, Limit::TooFewReplicas)
        };
        if stabilized < min_allowed {
            return (min_allowed, stabilized, why);
        }
    }
    if stabilized == proposal {
        limit = Limit::None;
    }
    (stabilized, stabilized, limit)
}

fn longest_period(rules: &ResolvedRules) -> i32 {
    rules
        .policies
        .iter()
        .map(|p| p.period_seconds)
        .max()
        .unwrap_or(0)
}

/// `storeScaleEvent`: remembers a scaling for the rate limits (only when `behavior` is set).
fn store_scale_event(
    spec: &HpaSpec,
    config: &ControllerConfig,
    history: &mut History,
    previous: i32,
    new: i32,
    now_ms: i64,
) {
    let Some(behavior) = &spec.behavior else {
        return;
    };
    let (up, down) = behavior.resolved(config);
    let (events, rules, change) = if new > previous {
        (
            &mut history.scale_up_events,
            up,
            new.saturating_sub(previous),
        )
    } else {
        (
            &mut history.scale_down_events,
            down,
            previous.saturating_sub(new),
        )
    };
    let cutoff = now_ms.saturating_sub(i64::from(longest_period(&rules)) * 1000);
    for e in events.iter_mut() {
        if e.at_ms < cutoff {
            e.outdated = true;
        }
    }
    let event = ScaleEvent {
        at_ms: now_ms,
        change,
        outdated: false,
    };
    match events.iter().rposition(|e| e.outdated) {
        Some(i) => events[i] = event,
        None => events.push(event),
    }
}

/// One sync of the HPA controller (`reconcileAutoscaler`): the replica count to set now.
///
/// Updates `history` as the controller does: an initial recommendation (the current replicas)
/// on the first sync, the recommendation of this sync, and a scale event when it scales (only
/// with `behavior`, which is when events are used).
pub fn reconcile(
    spec: &HpaSpec,
    config: &ControllerConfig,
    obs: &Observation<'_>,
    history: &mut History,
    now_ms: i64,
) -> Outcome {
    let current = obs.spec_replicas;
    let min = spec.min_replicas;
    if let Some(outcome) = keda_activation(spec, obs, history, now_ms) {
        return outcome;
    }
    let (desired, recommended, stabilized, limit, error) = if current == 0 && min != 0 {
        return Outcome {
            desired: 0,
            recommended: 0,
            stabilized: 0,
            limit: Limit::Disabled,
            error: None,
        };
    } else if current > spec.max_replicas {
        (spec.max_replicas, 0, 0, Limit::TooManyReplicas, None)
    } else if current < min {
        (min, 0, 0, Limit::TooFewReplicas, None)
    } else {
        let keda = spec.keda.as_ref();
        history.failures.resize(spec.metrics.len(), 0);
        for (i, r) in obs.readings.iter().enumerate().take(spec.metrics.len()) {
            history.failures[i] = if matches!(r, Reading::Unavailable) {
                history.failures[i].saturating_add(1)
            } else {
                0
            };
        }
        let failures = history.failures.clone();
        let fallback = |i: usize| {
            let f = keda?.fallback?;
            (failures.get(i).copied().unwrap_or(0) >= f.failure_threshold).then_some(f.replicas)
        };
        match replicas_for_metrics(spec, obs, config, &fallback) {
            Err(e) => {
                return Outcome {
                    desired: current,
                    recommended: 0,
                    stabilized: 0,
                    limit: Limit::MetricsFailed,
                    error: Some(e),
                }
            }
            Ok(proposal) => {
                if history.recommendations.is_empty() {
                    history.recommendations.push(Recommendation {
                        at_ms: now_ms,
                        replicas: current,
                    });
                }
                let proposal = proposal.max(0);
                let (desired, stabilized, limit) = match &spec.behavior {
                    None => normalize_legacy(spec, config, history, current, proposal, min, now_ms),
                    Some(_) => normalize_with_behavior(
                        spec, config, history, current, proposal, min, now_ms,
                    ),
                };
                (desired, proposal, stabilized, limit, None)
            }
        }
    };
    if desired != current {
        store_scale_event(spec, config, history, current, desired, now_ms);
    }
    Outcome {
        desired,
        recommended,
        stabilized,
        limit,
        error,
    }
}

/// KEDA activation: with `min_replicas: 0` and a threshold, scale from zero to one when any
/// `External`/`Object` metric exceeds it, and to zero after `cooldown_seconds` below it.
fn keda_activation(
    spec: &HpaSpec,
    obs: &Observation<'_>,
    history: &mut History,
    now_ms: i64,
) -> Option<Outcome> {
    let keda = spec.keda.as_ref()?;
    let threshold = keda.activation_threshold?;
    if spec.min_replicas != 0 {
        return None;
    }
    let active = spec.metrics.iter().zip(obs.readings).any(|(m, r)| {
        matches!(m.kind, MetricKind::External | MetricKind::Object)
            && matches!(r, Reading::Values(v)
                if v.iter().map(|&x| i128::from(x)).sum::<i128>() > i128::from(threshold))
    });
    if active {
        history.last_active_ms = Some(now_ms);
    }
    let to = |desired| {
        Some(Outcome {
            desired,
            recommended: desired,
            stabilized: desired,
            limit: Limit::Activation,
            error: None,
        })
    };
    if obs.spec_replicas == 0 {
        return if active { to(1) } else { to(0) };
    }
    let idle_for = now_ms.saturating_sub(history.last_active_ms.unwrap_or(i64::MIN / 2));
    if !active && idle_for >= keda.cooldown_seconds.saturating_mul(1000) {
        return to(0);
    }
    None
}

#[cfg(test)]
mod tests;
