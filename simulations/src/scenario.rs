//! Scenario files: everything a run needs, in YAML, validated once.
//!
//! Parse errors name the file, line, column and field path (read through gofe-yaml, as the
//! proxy's configuration is); validation errors name the
//! field path. The schema is documented with an example in `simulations/README.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::hpa_script::{BehaviorJson, KedaJson, Quantity};

/// A duration written as in gofe's configuration files (`"30s"`, `"250ms"`, `"1h"`).
pub use gofe_yaml::duration::Text as Dur;

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports.
    pub name: String,
    /// The random seed (default 1).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated time; default: the length of the trace, else required.
    #[serde(default)]
    pub duration: Option<Dur>,
    /// Simulation step (default `1s`).
    #[serde(default = "default_step")]
    pub step: Dur,
    /// Traffic components, summed (noise multiplies).
    pub traffic: Vec<Traffic>,
    /// The service.
    pub service: Service,
    /// What counts as an SLO violation.
    #[serde(default)]
    pub slo: Slo,
    /// Metrics pipeline delays.
    #[serde(default)]
    pub pipeline: Pipeline,
    /// The HPA; absent = fixed replicas.
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
    /// Outlier detection (per-endpoint breakers); absent = off.
    #[serde(default)]
    pub outlier: Option<Outlier>,
    /// The policies to run (the first is the default; `--compare` runs all).
    pub policies: Vec<Policy>,
    /// What `gofe sim tune` searches (absent: its defaults; `gofe sim run` ignores it).
    #[serde(default)]
    pub tune: Option<crate::tune::TuneConfig>,
}

fn default_seed() -> u64 {
    1
}
fn default_step() -> Dur {
    Dur(Duration::from_secs(1))
}

/// One traffic component.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Traffic {
    /// A constant rate.
    Constant {
        /// Requests per second.
        rps: f64,
    },
    /// A daily (or other period) sine: `mean + amplitude × cos(2π (t − peak) / period)`.
    Diurnal {
        /// Mean rate, req/s.
        mean: f64,
        /// Amplitude, req/s.
        amplitude: f64,
        /// Period (default `24h`).
        #[serde(default = "day")]
        period: Dur,
        /// Time of the peak from the start (default `14h`).
        #[serde(default = "fourteen")]
        peak: Dur,
    },
    /// A linear ramp from `from` to `to` between `start` and `end` (held outside).
    Ramp {
        /// Rate before `start`.
        from: f64,
        /// Rate after `end`.
        to: f64,
        /// Start.
        start: Dur,
        /// End.
        end: Dur,
    },
    /// Adds `rps` from `at` on.
    Step {
        /// When.
        at: Dur,
        /// Added rate (may be negative).
        rps: f64,
    },
    /// A flash crowd: rises linearly to `rps` over `rise`, holds for `hold`, decays
    /// exponentially with time constant `decay`.
    Spike {
        /// Start.
        at: Dur,
        /// Peak extra rate.
        rps: f64,
        /// Rise time (default `1m`).
        #[serde(default = "minute")]
        rise: Dur,
        /// Hold (default `5m`).
        #[serde(default = "five_minutes")]
        hold: Dur,
        /// Decay time constant (default `10m`).
        #[serde(default = "ten_minutes")]
        decay: Dur,
    },
    /// Multiplicative noise: × (1 + fraction × N(0, 1)), per step, seeded.
    Noise {
        /// Standard deviation as a fraction of the rate.
        fraction: f64,
    },
    /// A trace file (CSV or JSON lines, see `crate::traffic`).
    Trace {
        /// The file, relative to the scenario file.
        file: PathBuf,
        /// Multiplies every value (default 1).
        #[serde(default = "one_f")]
        scale: f64,
        /// Compresses time: trace seconds per simulated second (default 1).
        #[serde(default = "one_f")]
        speedup: f64,
        /// What a gap longer than `max_gap` means (default `refuse`).
        #[serde(default)]
        gaps: GapRule,
        /// The longest gap interpolated linearly (default `5m`).
        #[serde(default = "five_minutes")]
        max_gap: Dur,
        /// How the file is read (default `auto`: by its extension and first bytes).
        #[serde(default)]
        format: TraceFormat,
        /// The values are a counter: the rate is taken between successive samples, a
        /// decrease being a reset as in Prometheus' `rate()` (default false).
        #[serde(default)]
        counter: bool,
        /// Trace time at the start of the simulation, from the trace's first timestamp
        /// (default `0s`).
        #[serde(default)]
        start: Option<Dur>,
    },
}

/// The format of a trace file.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TraceFormat {
    /// `.jsonl`/`.ndjson`: JSON lines; `.json`: a Prometheus `query_range` answer when the
    /// document starts with `{"status"`, else JSON lines; anything else: CSV.
    #[default]
    Auto,
    /// `timestamp,rps` lines.
    Csv,
    /// `{"timestamp": …, "rps": …}` lines.
    Jsonl,
    /// A Prometheus `query_range` answer (`gofe sim fetch` writes one); the series are summed.
    Prometheus,
}

/// What a long gap in a trace means.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GapRule {
    /// Refuse the trace, naming the line after the gap.
    #[default]
    Refuse,
    /// Interpolate linearly anyway.
    Interpolate,
    /// Hold the value before the gap.
    Hold,
    /// No traffic during the gap.
    Zero,
}

fn day() -> Dur {
    Dur(Duration::from_secs(86_400))
}
fn fourteen() -> Dur {
    Dur(Duration::from_secs(14 * 3600))
}
fn minute() -> Dur {
    Dur(Duration::from_secs(60))
}
fn five_minutes() -> Dur {
    Dur(Duration::from_secs(300))
}
fn ten_minutes() -> Dur {
    Dur(Duration::from_secs(600))
}
fn one_f() -> f64 {
    1.0
}

/// The service model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Replicas at the start.
    pub pods: u32,
    /// Requests per second one pod serves at full load.
    pub capacity: f64,
    /// Concurrent workers per pod (shapes the queueing curve; default 8).
    #[serde(default = "eight")]
    pub concurrency: u32,
    /// Service time of a request on an idle pod (default `20ms`).
    #[serde(default = "twenty_ms")]
    pub latency: Dur,
    /// Requests slower than this fail (default `30s`).
    #[serde(default = "thirty_s")]
    pub timeout: Dur,
    /// From creation to running (scheduling, image pull; default `20s`).
    #[serde(default = "twenty_s")]
    pub startup: Dur,
    /// From running to ready (readiness probe; default `10s`).
    #[serde(default = "ten_s")]
    pub readiness: Dur,
    /// How long a dead pod stays in the endpoints before it is noticed and replaced (default
    /// `10s`).
    #[serde(default = "ten_s")]
    pub dead_detection: Dur,
    /// Groups of pods with a different speed (by creation order, deterministic).
    #[serde(default)]
    pub heterogeneity: Vec<Group>,
    /// Faults on a schedule.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

fn eight() -> u32 {
    8
}
fn twenty_ms() -> Dur {
    Dur(Duration::from_millis(20))
}
fn thirty_s() -> Dur {
    Dur(Duration::from_secs(30))
}
fn twenty_s() -> Dur {
    Dur(Duration::from_secs(20))
}
fn ten_s() -> Dur {
    Dur(Duration::from_secs(10))
}

/// A fraction of the pods with a speed factor (`0.333` = 3× slower: a third of the capacity,
/// three times the service time).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Fraction of pods, 0..=1 (every k-th pod, spread evenly).
    pub fraction: f64,
    /// Speed relative to nominal.
    pub speed: f64,
}

/// A fault on one pod.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When it starts.
    pub at: Dur,
    /// How long (absent = until the end; ignored for `die`).
    #[serde(default, rename = "for")]
    pub lasts: Option<Dur>,
    /// Which pod, by creation order (0 = the first).
    pub pod: usize,
    /// Fails this fraction of requests.
    #[serde(default)]
    pub fail: Option<f64>,
    /// Slows down by this factor (service time × factor, capacity ÷ factor).
    #[serde(default)]
    pub slow: Option<f64>,
    /// Dies (then is noticed after `dead_detection` and replaced).
    #[serde(default)]
    pub die: bool,
    /// Delays and aborts a fraction of the pod's requests, written as the proxy's route fault
    /// is (Envoy's `HTTPFault`: `delay.fixed_delay` with a `percentage`, `abort.http_status`
    /// with a `percentage`), so an experiment reads the same in a scenario, `gofe up` and the
    /// proxy's config. A scenario has no requests' headers and no listener: `header_delay`,
    /// `header_abort`, `grpc_status` and `max_active_faults` are refused.
    #[serde(default)]
    pub http_fault: Option<gofe_model::FaultConfig>,
}

impl Fault {
    /// Whether the fault is in force at `now` (seconds from the start).
    pub fn active_at(&self, now: f64) -> bool {
        now >= self.at.secs() && self.lasts.is_none_or(|d| now < self.at.secs() + d.secs())
    }

    /// The `http_fault`'s abort as the fraction of requests it fails and its status.
    pub fn abort(&self) -> Option<(f64, u32)> {
        let a = self.http_fault.as_ref()?.abort.as_ref()?;
        Some((fraction(&a.percentage), a.http_status?))
    }

    /// The `http_fault`'s delay as its length and the fraction of requests it delays.
    pub fn delay(&self) -> Option<(Duration, f64)> {
        let d = self.http_fault.as_ref()?.delay.as_ref()?;
        Some((d.fixed_delay?, fraction(&d.percentage)))
    }
}

/// A `FractionalPercent` as a fraction in 0..=1.
fn fraction(p: &gofe_model::FractionalPercent) -> f64 {
    (f64::from(p.numerator) / f64::from(p.denominator.value())).min(1.0)
}

/// SLO: a step violates it when its p99 latency or its failure ratio is above these.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// p99 latency bound (default `500ms`).
    #[serde(default = "half_second")]
    pub p99: Dur,
    /// Failure ratio bound (default 0.01).
    #[serde(default = "one_percent")]
    pub errors: f64,
}

impl Default for Slo {
    fn default() -> Self {
        Slo {
            p99: half_second(),
            errors: one_percent(),
        }
    }
}

fn half_second() -> Dur {
    Dur(Duration::from_millis(500))
}
fn one_percent() -> f64 {
    0.01
}

/// Metrics pipeline delays, as in production.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Prometheus scrape interval (default `15s`).
    #[serde(default = "fifteen")]
    pub scrape: Dur,
    /// `rate()` window (default `1m`).
    #[serde(default = "minute")]
    pub window: Dur,
    /// Metrics adapter cache TTL (default `30s`).
    #[serde(default = "thirty_s")]
    pub cache: Dur,
    /// HPA sync period (default `15s`).
    #[serde(default = "fifteen")]
    pub sync: Dur,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            scrape: fifteen(),
            window: minute(),
            cache: thirty_s(),
            sync: fifteen(),
        }
    }
}

fn fifteen() -> Dur {
    Dur(Duration::from_secs(15))
}

/// The HPA of the service.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscaling {
    /// `minReplicas` (default 1).
    #[serde(default = "one_i")]
    pub min_replicas: i32,
    /// `maxReplicas`.
    pub max_replicas: i32,
    /// The metrics (at least one).
    pub metrics: Vec<SimMetric>,
    /// `behavior` as in autoscaling/v2; absent = the controller's behavior-less path.
    #[serde(default)]
    pub behavior: Option<BehaviorJson>,
    /// KEDA-style options.
    #[serde(default)]
    pub keda: Option<KedaJson>,
    /// Controller tolerance (default 0.1).
    #[serde(default = "tolerance")]
    pub tolerance: f64,
}

fn one_i() -> i32 {
    1
}
fn tolerance() -> f64 {
    gofe_core::hpa::DEFAULT_TOLERANCE
}

/// A metric the simulated pipeline can produce.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SimMetric {
    /// Total requests per second of the service, as gofe's adapter serves it (External).
    ExternalRps {
        /// `AverageValue` per pod (e.g. `"100"`), or…
        #[serde(default)]
        average_value: Option<Quantity>,
        /// …`Value` in total.
        #[serde(default)]
        value: Option<Quantity>,
        /// The adapter's `forecast` option: the HPA sees the rate forecast `lead` ahead
        /// instead of the current rate (absent: the current rate).
        #[serde(default)]
        forecast: Option<Forecast>,
        /// The adapter's `queueing` option: the HPA sees the queueing pressure instead of
        /// the rate (with `forecast`, the pressure is what is forecast). Absent: the rate.
        #[serde(default)]
        queueing: Option<Queueing>,
    },
    /// Per-pod requests per second (Pods, AverageValue).
    PodsRps {
        /// Target per pod.
        average_value: Quantity,
    },
    /// CPU utilization of the request (Resource cpu, Utilization); a pod uses its whole
    /// request at full capacity.
    Cpu {
        /// Target, percent.
        average_utilization: i32,
    },
}

/// The metrics adapter's `forecast` option of a rule, the same type with the same names,
/// defaults and limits ([`gofe_core::forecast::ForecastConfig`]): the served value is the
/// request rate (or its queueing pressure) forecast `lead` ahead by Holt's linear trend or
/// Holt-Winters, optionally with the spike-aware fast path, over the last `window` of it sampled
/// every `step` ([`gofe_core::forecast::ForecastPolicy::serve`], the adapter's code).
pub type Forecast = gofe_core::forecast::ForecastConfig<Dur>;

/// The adapter's `queueing` option of the built-in request rate, the same type
/// ([`gofe_core::queueing::QueueingConfig`]): the served value is
/// `max(rate, in flight / target)` ([`gofe_core::queueing::pressure`]).
pub type Queueing = gofe_core::queueing::QueueingConfig<Dur>;

/// Outlier detection settings (the per-endpoint breaker of gofe-core).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    /// Consecutive failures that eject (default 5; 0 disables).
    #[serde(default = "five")]
    pub consecutive: u32,
    /// Failure percentage that ejects (default 50; above 100 disables).
    #[serde(default = "fifty")]
    pub failure_percentage: u32,
    /// Minimum requests in an interval for the percentage rule (default 20).
    #[serde(default = "twenty")]
    pub request_volume: u64,
    /// Detection interval (default `10s`).
    #[serde(default = "ten_s")]
    pub interval: Dur,
    /// Base ejection time (default `30s`).
    #[serde(default = "thirty_s")]
    pub base_ejection: Dur,
    /// Longest ejection (default `300s`).
    #[serde(default = "five_minutes")]
    pub max_ejection: Dur,
    /// At most this percentage of endpoints ejected (default 10).
    #[serde(default = "ten")]
    pub max_ejection_percent: u32,
}

fn five() -> u32 {
    5
}
fn ten() -> u32 {
    10
}
fn fifty() -> u32 {
    50
}
fn twenty() -> u64 {
    20
}

/// A policy to compare.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Its name in reports.
    pub name: String,
    /// The balancer.
    pub balancer: Balancer,
    /// Use the scenario's outlier detection (default true when `outlier` is set).
    #[serde(default = "yes")]
    pub outlier: bool,
    /// Peak-EWMA decay time (default `10s`).
    #[serde(default = "ten_s")]
    pub decay: Dur,
    /// Overrides the scenario's `autoscaling` for this policy.
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
    /// Runs without the HPA (fixed replicas) even when the scenario has one.
    #[serde(default)]
    pub fixed_replicas: bool,
    /// `gofe` balancer: how often the controller decides (default `5s`, as the controller).
    #[serde(default = "five_s")]
    pub interval: Dur,
    /// `gofe` balancer: the signal window (default `30s`, as the controller).
    #[serde(default = "thirty_s")]
    pub window: Dur,
}

fn five_s() -> Dur {
    Dur(Duration::from_secs(5))
}

fn yes() -> bool {
    true
}

/// Load-balancing policies.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Smooth weighted round robin (gofe-core's `WeightedSequence`).
    RoundRobin,
    /// Power of two choices on requests in flight (gofe-core's `least_request`).
    LeastRequest,
    /// Power of two choices on peak-EWMA latency × (requests in flight + 1).
    PeakEwma,
    /// gofe's controller policy: weights and ejections from `gofe_core::policy::decide` (with
    /// its default policy) every `interval` on the last `window` of signals, applied by smooth
    /// weighted round robin as the proxy does.
    Gofe,
}

impl Balancer {
    /// The name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Balancer::RoundRobin => "round_robin",
            Balancer::LeastRequest => "least_request",
            Balancer::PeakEwma => "peak_ewma",
            Balancer::Gofe => "gofe",
        }
    }
}

// === loading ===

pub use gofe_yaml::Problem;

/// Why a scenario could not be loaded: a read error, or every problem with its line.
pub type ScenarioError = gofe_yaml::ConfigError;

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    gofe_yaml::load(path)
}

/// Parses and validates scenario text; `source_name` names it in errors.
pub fn parse(source_name: &str, text: &str) -> Result<Scenario, ScenarioError> {
    gofe_yaml::parse(source_name, text)
}

impl gofe_yaml::Validate for Scenario {
    fn validate(&self, v: &mut gofe_yaml::Validator) {
        for problem in validate(self) {
            v.push(problem);
        }
    }
}

/// Everything serde cannot check; each problem names its field.
pub fn validate(s: &Scenario) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut bad = |field: &str, message: &str| {
        p.push(Problem {
            line: None,
            column: None,
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if s.step.0.is_zero() || s.step.0 > Duration::from_secs(60) {
        bad("step", "must be in (0, 60s]");
    }
    if s.traffic.is_empty() {
        bad("traffic", "at least one component");
    }
    if let Some(d) = s.duration {
        if !s.step.0.is_zero() && d.secs() / s.step.secs() > 1e8 {
            bad("duration", "more than 100,000,000 steps: use a longer step");
        }
    }
    let has_trace = s.traffic.iter().any(|t| matches!(t, Traffic::Trace { .. }));
    if s.duration.is_none() && !has_trace {
        bad("duration", "required without a trace");
    }
    for (i, t) in s.traffic.iter().enumerate() {
        let f = format!("traffic[{i}]");
        let finite = match t {
            Traffic::Constant { rps } => *rps >= 0.0 && rps.is_finite(),
            Traffic::Diurnal {
                mean,
                amplitude,
                period,
                ..
            } => mean.is_finite() && amplitude.is_finite() && !period.0.is_zero(),
            Traffic::Ramp {
                from,
                to,
                start,
                end,
                ..
            } => from.is_finite() && to.is_finite() && end >= start,
            Traffic::Step { rps, .. } | Traffic::Spike { rps, .. } => rps.is_finite(),
            Traffic::Noise { fraction } => (0.0..=1.0).contains(fraction),
            Traffic::Trace { scale, speedup, .. } => {
                scale.is_finite() && *scale >= 0.0 && positive(*speedup)
            }
        };
        if !finite {
            bad(&f, "values must be finite (rates >= 0, noise fraction in 0..=1, periods > 0, end >= start)");
        }
    }
    let sv = &s.service;
    if sv.pods == 0 || sv.pods > 10_000 {
        bad("service.pods", "must be in 1..=10000");
    }
    if !positive(sv.capacity) {
        bad("service.capacity", "must be > 0");
    }
    if sv.concurrency == 0 {
        bad("service.concurrency", "must be >= 1");
    }
    if sv.latency.0.is_zero() {
        bad("service.latency", "must be > 0");
    }
    for (i, g) in sv.heterogeneity.iter().enumerate() {
        if !(0.0..=1.0).contains(&g.fraction) || !positive(g.speed) {
            bad(
                &format!("service.heterogeneity[{i}]"),
                "fraction in 0..=1, speed > 0",
            );
        }
    }
    for (i, f) in sv.faults.iter().enumerate() {
        let kinds = usize::from(f.fail.is_some())
            + usize::from(f.slow.is_some())
            + usize::from(f.die)
            + usize::from(f.http_fault.is_some());
        if kinds != 1 {
            bad(
                &format!("service.faults[{i}]"),
                "exactly one of fail, slow, die, http_fault",
            );
        }
        if let Some(h) = &f.http_fault {
            check_http_fault(h, &format!("service.faults[{i}].http_fault"), &mut bad);
        }
        if f.fail.is_some_and(|x| !(0.0..=1.0).contains(&x)) {
            bad(&format!("service.faults[{i}].fail"), "a fraction in 0..=1");
        }
        if f.slow.is_some_and(|x| !positive(x)) {
            bad(&format!("service.faults[{i}].slow"), "a factor > 0");
        }
    }
    if !(0.0..=1.0).contains(&s.slo.errors) {
        bad("slo.errors", "a fraction in 0..=1");
    }
    let pl = &s.pipeline;
    for (name, d) in [
        ("scrape", pl.scrape),
        ("window", pl.window),
        ("cache", pl.cache),
        ("sync", pl.sync),
    ] {
        if d.0.is_zero() && name != "cache" {
            bad(&format!("pipeline.{name}"), "must be > 0");
        }
    }
    if pl.window < pl.scrape {
        bad("pipeline.window", "must be at least one scrape interval");
    }
    if let Some(a) = &s.autoscaling {
        validate_autoscaling(a, "autoscaling", &mut p);
    }
    if s.policies.is_empty() {
        p.push(Problem {
            line: None,
            column: None,
            field: "policies".into(),
            message: "at least one policy".into(),
        });
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, pol) in s.policies.iter().enumerate() {
        if !names.insert(pol.name.clone()) {
            p.push(Problem {
                line: None,
                column: None,
                field: format!("policies[{i}].name"),
                message: format!("duplicate policy name {:?}", pol.name),
            });
        }
        if let Some(a) = &pol.autoscaling {
            validate_autoscaling(a, &format!("policies[{i}].autoscaling"), &mut p);
        }
    }
    if let Some(t) = &s.tune {
        p.extend(crate::tune::validate(t, s));
    }
    p
}

/// Checks a scenario fault's `http_fault` (at `base`): the proxy's own checks, and the parts a
/// schedule cannot play refused.
fn check_http_fault(h: &gofe_model::FaultConfig, base: &str, bad: &mut impl FnMut(&str, &str)) {
    for (field, message) in gofe_model::fault::check(h) {
        bad(&format!("{base}.{field}"), &message);
    }
    let no_headers = "a scenario's requests have no headers: give a fixed value";
    if let Some(d) = &h.delay {
        if d.header_delay.is_some() {
            bad(&format!("{base}.delay.header_delay"), no_headers);
        }
    }
    if let Some(a) = &h.abort {
        if a.header_abort.is_some() {
            bad(&format!("{base}.abort.header_abort"), no_headers);
        }
        if a.grpc_status.is_some() {
            bad(
                &format!("{base}.abort.grpc_status"),
                "a scenario's service speaks HTTP: give http_status",
            );
        }
    }
    if h.max_active_faults.is_some() {
        bad(
            &format!("{base}.max_active_faults"),
            "a scenario's fault applies to a fraction of requests, with no listener to count them at",
        );
    }
    if h.delay.is_none() && h.abort.is_none() {
        bad(base, "give a delay, an abort or both");
    }
}

fn validate_autoscaling(a: &Autoscaling, base: &str, p: &mut Vec<Problem>) {
    let mut bad = |field: String, message: String| {
        p.push(Problem {
            line: None,
            column: None,
            field,
            message,
        })
    };
    if let Err((field, message)) = crate::engine::hpa_spec(a) {
        bad(
            format!("{base}.{}", field.trim_start_matches("spec.")),
            message,
        );
    }
    for (i, m) in a.metrics.iter().enumerate() {
        if let SimMetric::ExternalRps {
            average_value,
            value,
            forecast,
            queueing,
        } = m
        {
            let field = format!("{base}.metrics[{i}].external_rps");
            if average_value.is_some() == value.is_some() {
                bad(field.clone(), "exactly one of average_value, value".into());
            }
            if let Some(f) = forecast {
                if let Err(problems) = f.resolve() {
                    for (name, message) in problems {
                        bad(format!("{field}.forecast.{name}"), message);
                    }
                }
            }
            if let Some(q) = queueing {
                if let Err((name, message)) = q.resolve() {
                    bad(format!("{field}.queueing.{name}"), message.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "name: t\nduration: 10s\ntraffic:\n  - constant: { rps: 10 }\nservice:\n  pods: 2\n  capacity: 100\npolicies:\n  - { name: rr, balancer: round_robin }\n";

    #[test]
    fn minimal_scenario_parses_with_defaults() {
        let s = parse("s.yaml", OK).unwrap();
        assert_eq!(s.seed, 1);
        assert_eq!(s.pipeline.sync.0, Duration::from_secs(15));
        assert_eq!(s.service.concurrency, 8);
    }

    #[test]
    fn parse_errors_name_file_line_and_field() {
        let text = OK.replace("capacity: 100", "capacity: lots");
        let e = parse("s.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("s.yaml:7:"), "{e}");
        assert!(e.contains("service.capacity"), "{e}");
        let text = OK.replace("round_robin", "fastest");
        let e = parse("s.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("s.yaml:9:"), "{e}");
        assert!(e.contains("policies[0].balancer"), "{e}");
        let text = OK.replace("duration: 10s", "duration: 10");
        let e = parse("s.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("s.yaml:2:") && e.contains("duration"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let text = OK.replace("pods: 2", "pods: 0");
        let e = parse("s.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("s.yaml:6:9: service.pods: must be in"), "{e}");
        let text = format!("{OK}autoscaling:\n  maxReplicas: 5\n  metrics:\n    - cpu: {{ average_utilization: 50 }}\n  behavior:\n    scaleUp:\n      selectPolicy: Sometimes\n");
        let e = parse("s.yaml", &text).unwrap_err().to_string();
        assert!(
            e.contains("autoscaling.behavior.scaleUp.selectPolicy"),
            "{e}"
        );
        assert!(e.starts_with("s.yaml:16:21:"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn malformed_scenarios_never_panic(cut in 0usize..200, junk in "\\PC{0,20}") {
            // Truncate a valid scenario anywhere and splice in junk.
            let mut text: String = OK.chars().take(cut).collect();
            text.push_str(&junk);
            let _ = parse("s.yaml", &text);
            let mut problems: Vec<Problem> = ["service.pods", "policies[0].balancer", "x[3].y", "[", "a..b"]
                .iter()
                .map(|f| Problem { line: None, column: None, field: (*f).to_owned(), message: String::new() })
                .collect();
            gofe_yaml::locate(&text, &mut problems);
        }
    }

    #[test]
    fn an_http_fault_is_checked_as_the_proxy_checks_it_and_what_a_schedule_cannot_play_is_refused()
    {
        let with = |fault: &str| {
            OK.replace(
                "  capacity: 100\n",
                &format!("  capacity: 100\n  faults:\n    - {fault}\n"),
            )
        };
        let good = with("{ at: 1s, pod: 0, http_fault: { delay: { fixed_delay: 50ms, percentage: { numerator: 10 } }, abort: { http_status: 503, percentage: { numerator: 5 } } } }");
        let s = parse("s.yaml", &good).unwrap();
        let f = &s.service.faults[0];
        assert_eq!(f.delay(), Some((Duration::from_millis(50), 0.1)));
        assert_eq!(f.abort(), Some((0.05, 503)));

        let bad = with("{ at: 1s, pod: 0, http_fault: { delay: { header_delay: {}, percentage: { numerator: 101 } }, abort: { grpc_status: 14 }, max_active_faults: 3 } }");
        let e = parse("s.yaml", &bad).unwrap_err().to_string();
        for field in [
            "service.faults[0].http_fault.delay.header_delay",
            "service.faults[0].http_fault.delay.percentage.numerator",
            "service.faults[0].http_fault.abort.grpc_status",
            "service.faults[0].http_fault.max_active_faults",
        ] {
            assert!(e.contains(field), "{field} missing from:\n{e}");
        }
        assert!(e.lines().all(|l| l.starts_with("s.yaml:9:")), "{e}");
        let two =
            with("{ at: 1s, pod: 0, fail: 0.5, http_fault: { abort: { http_status: 503 } } }");
        let e = parse("s.yaml", &two).unwrap_err().to_string();
        assert!(
            e.contains("exactly one of fail, slow, die, http_fault"),
            "{e}"
        );
        let empty = with("{ at: 1s, pod: 0, http_fault: {} }");
        let e = parse("s.yaml", &empty).unwrap_err().to_string();
        assert!(e.contains("give a delay, an abort or both"), "{e}");
    }

    #[test]
    fn validation_problems_in_flow_and_block_fields_have_lines() {
        let text = OK.replace("  pods: 2\n", "  pods: 0\n").replace(
            "  - { name: rr, balancer: round_robin }\n",
            "  - { name: rr, balancer: round_robin }\n  - name: rr\n    balancer: round_robin\n",
        );
        let e = parse("s.yaml", &text).unwrap_err().to_string();
        assert!(e.lines().all(|l| l.starts_with("s.yaml:")), "{e}");
        assert!(e.lines().any(|l| l.starts_with("s.yaml:6:")), "{e}");
    }
}
