//! The simulation loop: one policy over one scenario, step by step.
//!
//! Load is a fluid: each step of `dt` seconds brings `rps × dt` requests, which the balancer
//! splits over the endpoints in at most `max(256, 4 × endpoints)` picks (each pick carries an
//! equal share), every pick made by gofe-core's balancing code. Each pod is a queue:
//!
//! * service time `S = latency × slow / speed`, capacity `μ = capacity × speed / slow`;
//! * with utilization `ρ = λ / μ < 1`, the wait is Sakasegawa's M/M/c approximation
//!   `S × ρ^(√(2(c+1)) − 1) / (c (1 − ρ))` (`c` = concurrency, `ρ` capped at 0.95: beyond, the backlog term takes over);
//! * requests in flight at a pod, as the balancers see them, are `backlog + λ × S` (Little's
//!   law on the service time; the queue is the backlog);
//! * above capacity a backlog builds at `λ − μ` and adds `backlog / μ`;
//! * a step's requests to a pod all see that pod's latency; above `timeout` they fail (and the
//!   backlog is capped at what the pod serves within the timeout); a `fail` fault fails that
//!   fraction; a dead pod fails everything in 1 ms until it is noticed and replaced.
//!
//! Every `scrape` the pods' request and CPU counters are sampled; the adapter recomputes
//! `rate()` over `window` every `cache`; the HPA ([`gofe_core::hpa::reconcile`]) syncs every
//! `sync` on the cached values. With `external_rps.forecast` the total rate is also sampled
//! every forecast `step`, and at each cache refresh the adapter's value is its Holt forecast
//! ([`gofe_core::forecast`], the adapter's own code) `lead` ahead. Pods start `Pending` for
//! `startup`, run unready for `readiness`, then join the endpoints. Scale-down removes
//! pending, then unready, then the newest pods first, as a ReplicaSet does.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use gofe_core::balance::{least_request, Candidate, WeightedSequence};
use gofe_core::hpa::{
    ControllerConfig, History, HpaSpec, MetricKind, MetricSpec, MetricTarget, Observation, PodInfo,
    PodPhase, PodSample, Reading, ReadyCondition,
};
use gofe_core::outlier::{self, BreakerState, EjectReason, EjectionTimes};

use crate::scenario::{Autoscaling, Balancer, Policy, Scenario, SimMetric};
use crate::stats::Histogram;
use crate::traffic::{TraceError, TrafficSource};

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The trace is malformed.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The policy cannot run.
    #[error("policy {policy}: {message}")]
    Policy {
        /// The policy's name.
        policy: String,
        /// Why.
        message: String,
    },
}

/// Converts the scenario's autoscaling section to an HPA spec.
pub fn hpa_spec(a: &Autoscaling) -> Result<HpaSpec, (String, String)> {
    if a.min_replicas < 0 || a.max_replicas < 1 || a.max_replicas < a.min_replicas {
        return Err((
            "maxReplicas".into(),
            "need 0 <= minReplicas <= maxReplicas and maxReplicas >= 1".into(),
        ));
    }
    if a.metrics.is_empty() {
        return Err(("metrics".into(), "at least one metric".into()));
    }
    let mut metrics = Vec::new();
    for (i, m) in a.metrics.iter().enumerate() {
        let positive = |q: i64, f: &str| {
            if q > 0 {
                Ok(q)
            } else {
                Err((format!("metrics[{i}].{f}"), "must be > 0".to_owned()))
            }
        };
        metrics.push(match m {
            SimMetric::ExternalRps {
                average_value,
                value,
                ..
            } => MetricSpec {
                name: "rps".into(),
                kind: MetricKind::External,
                target: match (average_value, value) {
                    (Some(q), _) => {
                        MetricTarget::AverageValue(positive(q.0, "external_rps.average_value")?)
                    }
                    (None, Some(q)) => MetricTarget::Value(positive(q.0, "external_rps.value")?),
                    (None, None) => MetricTarget::AverageValue(1),
                },
            },
            SimMetric::PodsRps { average_value } => MetricSpec {
                name: "rps".into(),
                kind: MetricKind::Pods,
                target: MetricTarget::AverageValue(positive(
                    average_value.0,
                    "pods_rps.average_value",
                )?),
            },
            SimMetric::Cpu {
                average_utilization,
            } => MetricSpec {
                name: "cpu".into(),
                kind: MetricKind::Resource { cpu: true },
                target: MetricTarget::Utilization(positive(
                    i64::from(*average_utilization),
                    "cpu.average_utilization",
                )? as i32),
            },
        });
    }
    let behavior = a
        .behavior
        .as_ref()
        .map(crate::hpa_script::convert_behavior)
        .transpose()?;
    Ok(HpaSpec {
        min_replicas: a.min_replicas,
        max_replicas: a.max_replicas,
        metrics,
        behavior,
        keda: a.keda.as_ref().map(crate::hpa_script::convert_keda),
    })
}

/// One row of the per-step output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepRow {
    /// Seconds since the start.
    pub t: f64,
    /// Offered load, req/s.
    pub rps: f64,
    /// Replicas the HPA wants (spec replicas).
    pub desired: i32,
    /// Pods that exist (pending, starting, ready, dead-not-yet-noticed).
    pub pods: usize,
    /// Pods in the endpoints (ready, not ejected).
    pub endpoints: usize,
    /// Requests this step.
    pub requests: f64,
    /// Failed requests this step.
    pub failed: f64,
    /// Median latency this step, ms.
    pub p50_ms: f64,
    /// p99 latency this step, ms.
    pub p99_ms: f64,
    /// Breakers open now.
    pub ejected: usize,
    /// Share of this step's requests per pod, by creation index (first `SHARE_PODS` pods).
    pub shares: Vec<f64>,
}

/// Traffic shares are reported for the pods created first, up to this many.
pub const SHARE_PODS: usize = 12;

/// What one run adds up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Policy name.
    pub policy: String,
    /// Balancer.
    pub balancer: String,
    /// Simulated seconds.
    pub seconds: f64,
    /// Requests offered.
    pub requests: f64,
    /// Requests failed (timeouts, faults, no endpoint).
    pub failed: f64,
    /// Seconds in steps whose p99 or failure ratio broke the SLO.
    pub slo_violation_seconds: f64,
    /// Median latency over all requests, ms.
    pub p50_ms: f64,
    /// p99 latency over all requests, ms.
    pub p99_ms: f64,
    /// Σ pods × seconds (every pod that exists, ready or not).
    pub pod_seconds: f64,
    /// Times the HPA changed the replica count.
    pub scale_events: u32,
    /// Breaker trips.
    pub ejections: u32,
    /// Most pods at once.
    pub max_pods: usize,
    /// Per fault in the scenario: seconds until the faulty pod got under 10 % of its fair share
    /// of traffic (or was ejected or removed); `None` if it never did.
    pub drain_seconds: Vec<Option<f64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Alive,
    Dead { at_ms: u64 },
}

struct Pod {
    index: usize,
    /// `pod-<index>`: the name the HPA and the controller know it by.
    name: String,
    created: f64,
    running_at: f64,
    ready_at: f64,
    speed: f64,
    life: Life,
    backlog: f64,
    latency: f64,
    service: f64,
    req_counter: f64,
    cpu_counter: f64,
    samples: VecDeque<(f64, f64, f64)>,
    breaker: outlier::Breaker,
    win_total: f64,
    win_failed: f64,
    ewma: f64,
    cached: Option<(f64, f64, f64)>,
    /// gofe balancer: per controller interval (requests, failures, Σ latency × requests).
    signal_window: VecDeque<(f64, f64, f64)>,
    signal_now: (f64, f64, f64),
    /// gofe balancer: the controller's last weight for this pod (`None`: not decided yet).
    gofe_weight: Option<u32>,
}

impl Pod {
    fn ready(&self, now: f64) -> bool {
        now >= self.ready_at && self.life == Life::Alive
    }
    fn running(&self, now: f64) -> bool {
        now >= self.running_at
    }
}

/// `rate()` over `window` at `now` from a pod's scrapes (oldest first): per second of requests
/// and of CPU (milli-cores) between the first and the last scrape in the window, and the last
/// scrape's time; `None` without two scrapes in the window.
fn rate_at(samples: &VecDeque<(f64, f64, f64)>, now: f64, window: f64) -> Option<(f64, f64, f64)> {
    let first = samples.iter().find(|s| s.0 >= now - window)?;
    let last = samples.back()?;
    (last.0 > first.0).then(|| {
        let span = last.0 - first.0;
        ((last.1 - first.1) / span, (last.2 - first.2) / span, last.0)
    })
}

/// The adapter's forecast of an External rate metric: the total rate sampled every `step`
/// (as a Prometheus range query would evaluate it), the last `window` of it kept, and the
/// forecast made when the adapter's cache refreshes.
struct Forecaster {
    holt: gofe_core::forecast::Holt,
    steps_ahead: f64,
    step: f64,
    keep: usize,
    next_sample: f64,
    history: VecDeque<f64>,
    /// The value the adapter serves now (`None`: no finite history, served as unavailable).
    served: Option<f64>,
}

impl Forecaster {
    fn new(f: &crate::scenario::Forecast) -> Self {
        Forecaster {
            holt: f.holt(),
            steps_ahead: gofe_core::forecast::steps_ahead(f.lead.0, f.step.0),
            step: f.step.secs(),
            // A range query over [now − window, now] holds window / step + 1 points.
            keep: (f.window.secs() / f.step.secs()).floor() as usize + 1,
            next_sample: 0.0,
            history: VecDeque::new(),
            served: None,
        }
    }
}

/// Speed of the pod created `index`-th: the first heterogeneity group it falls in (every
/// `1/fraction`-th pod, spread evenly), else 1.
fn speed_of(index: usize, scenario: &Scenario) -> f64 {
    for g in &scenario.service.heterogeneity {
        let (i, f) = (index as f64, g.fraction);
        if ((i + 1.0) * f).floor() > (i * f).floor() {
            return g.speed;
        }
    }
    1.0
}

/// Runs `policy` over `scenario`, calling `on_step` for every step (and `progress` with the
/// fraction done now and then). Trace paths are relative to `base`.
pub fn run(
    scenario: &Scenario,
    policy: &Policy,
    base: &Path,
    on_step: &mut dyn FnMut(&StepRow),
    progress: &mut dyn FnMut(f64),
) -> Result<Summary, RunError> {
    run_recorded(scenario, policy, base, on_step, progress, None)
}

/// What the `gofe` balancer fed to `gofe_core::policy::decide` and got back, per decision.
pub type DecisionRecorder<'a> = &'a mut dyn FnMut(
    &[(String, u32)],
    &BTreeMap<String, gofe_core::policy::Signals>,
    u64,
    &gofe_core::policy::Decision,
);

/// [`run`], also handing every controller decision of the `gofe` balancer to `recorder`.
pub fn run_recorded(
    scenario: &Scenario,
    policy: &Policy,
    base: &Path,
    on_step: &mut dyn FnMut(&StepRow),
    progress: &mut dyn FnMut(f64),
    mut recorder: Option<DecisionRecorder<'_>>,
) -> Result<Summary, RunError> {
    let sv = &scenario.service;
    let dt = scenario.step.secs();
    let inv_dt = 1.0 / dt;
    let duration = match scenario.duration {
        Some(d) => d.secs(),
        None => {
            let mut longest: f64 = 0.0;
            for t in &scenario.traffic {
                if let crate::scenario::Traffic::Trace { file, speedup, .. } = t {
                    longest =
                        longest.max(crate::traffic::trace_length(&base.join(file), *speedup)?);
                }
            }
            longest
        }
    };
    let steps = (duration / dt).round() as u64;
    let mut traffic = TrafficSource::new(&scenario.traffic, base, scenario.seed)?;
    let mut rng = fastrand::Rng::with_seed(scenario.seed);
    let autoscaling = if policy.fixed_replicas {
        None
    } else {
        policy
            .autoscaling
            .as_ref()
            .or(scenario.autoscaling.as_ref())
    };
    let hpa = autoscaling
        .map(hpa_spec)
        .transpose()
        .map_err(|(f, m)| RunError::Policy {
            policy: policy.name.clone(),
            message: format!("autoscaling.{f}: {m}"),
        })?;
    // One per HPA metric, in order: the adapter's forecast, for an External rate with one.
    let mut forecasters: Vec<Option<Forecaster>> = autoscaling
        .map(|a| {
            a.metrics
                .iter()
                .map(|m| match m {
                    SimMetric::ExternalRps {
                        forecast: Some(f), ..
                    } => Some(Forecaster::new(f)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let hpa_config = ControllerConfig {
        tolerance: autoscaling.map_or(gofe_core::hpa::DEFAULT_TOLERANCE, |a| a.tolerance),
        ..ControllerConfig::default()
    };
    let outlier_cfg = scenario
        .outlier
        .as_ref()
        .filter(|_| policy.outlier && policy.balancer != Balancer::Gofe);
    let times = outlier_cfg.map(|o| EjectionTimes {
        base: o.base_ejection.0,
        max: o.max_ejection.0,
    });
    let pl = &scenario.pipeline;
    let base_latency = sv.latency.secs();
    let timeout = sv.timeout.secs();
    let c = f64::from(sv.concurrency);
    let wait_exponent = (2.0 * (c + 1.0)).sqrt() - 1.0;

    let mut next_index = 0usize;
    let mut new_pod = |now: f64, ready_now: bool| {
        let index = next_index;
        next_index += 1;
        let (running_at, ready_at) = if ready_now {
            (now - 3600.0, now - 3600.0)
        } else {
            (
                now + sv.startup.secs(),
                now + sv.startup.secs() + sv.readiness.secs(),
            )
        };
        Pod {
            index,
            name: format!("pod-{index}"),
            created: now,
            running_at,
            ready_at,
            speed: speed_of(index, scenario),
            life: Life::Alive,
            backlog: 0.0,
            latency: base_latency,
            service: base_latency,
            req_counter: 0.0,
            cpu_counter: 0.0,
            samples: VecDeque::new(),
            breaker: outlier::Breaker::default(),
            win_total: 0.0,
            win_failed: 0.0,
            ewma: base_latency,
            cached: None,
            signal_window: VecDeque::new(),
            signal_now: (0.0, 0.0, 0.0),
            gofe_weight: None,
        }
    };
    let mut pods: Vec<Pod> = (0..sv.pods).map(|_| new_pod(0.0, true)).collect();
    let mut desired = sv.pods as i32;
    let mut history = History::default();
    let mut summary = Summary {
        policy: policy.name.clone(),
        balancer: policy.balancer.as_str().into(),
        seconds: steps as f64 * dt,
        drain_seconds: vec![None; sv.faults.len()],
        ..Summary::default()
    };
    let mut hist = Histogram::new();
    let mut seq = WeightedSequence::default();
    let mut seq_members: Vec<usize> = Vec::new();
    let mut endpoints: Vec<usize> = Vec::new();
    let mut assigned: Vec<f64> = Vec::new();
    let mut step_lat: Vec<(f64, f64)> = Vec::new();
    let mut ticket: u64 = 0;
    let (mut next_scrape, mut next_cache, mut next_sync, mut next_interval) =
        (0.0, 0.0, pl.sync.secs(), 0.0);
    let outlier_interval = outlier_cfg.map_or(f64::INFINITY, |o| o.interval.secs());
    next_interval += outlier_interval;
    let mut row = StepRow::default();
    let gofe_policy = gofe_core::policy::Policy::default();
    let mut gofe_state = gofe_core::policy::ClusterState::default();
    let mut next_decide = policy.interval.secs();
    // gofe balancer: what `decide` is given, kept from one decision to the next.
    let mut base_weights: Vec<(String, u32)> = Vec::new();
    let mut base_pods: Vec<usize> = Vec::new();
    let mut signals: BTreeMap<String, gofe_core::policy::Signals> = BTreeMap::new();
    let mut signal_pods: Vec<usize> = Vec::new();
    // Per entry of `signals`, in key order: its place in `fresh_signals`.
    let mut signal_order: Vec<usize> = Vec::new();
    let (mut decided, mut ready_pods, mut fresh_pods) = (Vec::new(), Vec::new(), Vec::new());
    let mut fresh_signals: Vec<(usize, gofe_core::policy::Signals)> = Vec::new();
    let mut seq_weights: Vec<u32> = Vec::new();
    let mut weights: Vec<u32> = Vec::new();
    let report_every = (steps / 100).max(1);

    for step in 0..steps {
        let now = step as f64 * dt;
        let now_ms = (now * 1000.0).round() as u64;
        let rps = traffic.at(now)?;
        let offered = rps * dt;

        // Faults: deaths happen once; fail and slow are looked up per pod below.
        for f in sv.faults.iter().filter(|f| f.die) {
            if now >= f.at.secs() && now < f.at.secs() + dt {
                if let Some(p) = pods.iter_mut().find(|p| p.index == f.pod) {
                    if p.life == Life::Alive {
                        p.life = Life::Dead { at_ms: now_ms };
                    }
                }
            }
        }
        // Dead pods are noticed after `dead_detection` and replaced by the ReplicaSet.
        let detect_ms = sv.dead_detection.0.as_millis() as u64;
        let before = pods.len();
        pods.retain(|p| !matches!(p.life, Life::Dead { at_ms } if now_ms >= at_ms + detect_ms));
        for _ in pods.len()..before {
            if (pods.len() as i32) < desired {
                pods.push(new_pod(now, false));
            }
        }

        // Breakers and endpoints.
        let mut open = 0;
        for p in &mut pods {
            p.breaker.poll(now_ms);
            if matches!(p.breaker.state(), BreakerState::Open { .. }) {
                open += 1;
            }
        }
        endpoints.clear();
        endpoints.extend(
            pods.iter()
                .enumerate()
                .filter(|(_, p)| {
                    now >= p.ready_at
                        && !matches!(p.breaker.state(), BreakerState::Open { .. })
                        && match p.life {
                            Life::Alive => true,
                            // A dead pod stays an endpoint until it is noticed.
                            Life::Dead { .. } => true,
                        }
                })
                .map(|(i, _)| i),
        );
        weights.clear();
        weights.resize(endpoints.len(), 1);
        if policy.balancer == Balancer::Gofe {
            // The controller's weights (endpoints it has not seen yet get the base weight).
            for (w, &i) in weights.iter_mut().zip(&endpoints) {
                *w = pods[i]
                    .gofe_weight
                    .unwrap_or(gofe_core::policy::WEIGHT_SCALE as u32);
            }
            if weights.iter().all(|&w| w == 0) {
                weights.fill(1);
            }
        }
        let same_members = endpoints.len() == seq_members.len()
            && endpoints
                .iter()
                .zip(&seq_members)
                .all(|(&i, &m)| pods[i].index == m);
        if !same_members || weights != seq_weights {
            seq = WeightedSequence::new(&weights);
            seq_members.clear();
            seq_members.extend(endpoints.iter().map(|&i| pods[i].index));
            seq_weights.clone_from(&weights);
        }

        // Balance.
        assigned.clear();
        assigned.resize(pods.len(), 0.0);
        let mut failed = 0.0;
        if endpoints.is_empty() || offered <= 0.0 {
            failed += offered;
        } else {
            let picks = (offered.ceil() as usize).clamp(1, (4 * endpoints.len()).max(256));
            let chunk = offered / picks as f64;
            match policy.balancer {
                Balancer::RoundRobin | Balancer::Gofe => {
                    // Smooth weighted round robin over the (controller's) weights.
                    for _ in 0..picks {
                        let e = seq.pick(ticket).unwrap_or(0);
                        ticket = ticket.wrapping_add(1);
                        assigned[endpoints[e]] += chunk;
                    }
                }
                Balancer::LeastRequest => {
                    for _ in 0..picks {
                        // Candidates drawn in proportion to weight; every weight is 1 here,
                        // so a uniform draw is the same draw as `seq.pick(random)` on the
                        // all-ones cycle, without its 64-bit division.
                        let a = endpoints[rng.usize(..endpoints.len())];
                        let b = endpoints[rng.usize(..endpoints.len())];
                        let active = |i: usize| {
                            let p = &pods[i];
                            ((assigned[i] * inv_dt * p.service + p.backlog) * 1000.0) as u64
                        };
                        let pick = if least_request(
                            Candidate {
                                active: active(a),
                                weight: 1,
                            },
                            Candidate {
                                active: active(b),
                                weight: 1,
                            },
                        ) {
                            a
                        } else {
                            b
                        };
                        assigned[pick] += chunk;
                    }
                }
                Balancer::PeakEwma => {
                    for _ in 0..picks {
                        // Candidates drawn in proportion to weight; every weight is 1 here,
                        // so a uniform draw is the same draw as `seq.pick(random)` on the
                        // all-ones cycle, without its 64-bit division.
                        let a = endpoints[rng.usize(..endpoints.len())];
                        let b = endpoints[rng.usize(..endpoints.len())];
                        let cost = |i: usize| {
                            let p = &pods[i];
                            p.ewma * (assigned[i] * inv_dt * p.service + p.backlog + 1.0)
                        };
                        let pick = if cost(a) <= cost(b) { a } else { b };
                        assigned[pick] += chunk;
                    }
                }
            }
        }

        // Serve.
        step_lat.clear();
        let ewma_keep = (-dt / policy.decay.secs().max(1e-9)).exp();
        for (i, p) in pods.iter_mut().enumerate() {
            let n = assigned[i];
            let (mut slow, mut fail): (f64, f64) = (1.0, 0.0);
            for f in &sv.faults {
                let active =
                    now >= f.at.secs() && f.lasts.is_none_or(|d| now < f.at.secs() + d.secs());
                if f.pod == p.index && active {
                    slow *= f.slow.unwrap_or(1.0);
                    fail = fail.max(f.fail.unwrap_or(0.0));
                }
            }
            let service = base_latency * slow / p.speed;
            let mu = sv.capacity * p.speed / slow;
            p.service = service;
            let lambda = n / dt;
            let (latency, failures) = if matches!(p.life, Life::Dead { .. }) {
                p.backlog = 0.0;
                (0.001, n)
            } else if !p.running(now) {
                (service, 0.0)
            } else {
                let rho = (lambda / mu).min(0.95);
                p.backlog = (p.backlog + (lambda - mu) * dt).max(0.0);
                let wait = if rho > 0.0 {
                    service * rho.powf(wait_exponent) / (c * (1.0 - rho))
                } else {
                    0.0
                };
                let w = service + wait + p.backlog / mu;
                p.cpu_counter += lambda.min(mu) / mu * 1000.0 * dt;
                if w > timeout {
                    p.backlog = p.backlog.min(mu * timeout);
                    (timeout, n)
                } else {
                    (w, n * fail)
                }
            };
            p.latency = latency;
            if !p.running(now) {
                continue;
            }
            p.req_counter += n;
            p.signal_now.0 += n;
            p.signal_now.1 += failures;
            p.signal_now.2 += latency * n;
            if n > 0.0 {
                step_lat.push((latency, n));
                hist.add(latency, n);
                failed += failures;
                if latency > p.ewma {
                    p.ewma = latency;
                } else {
                    p.ewma = p.ewma * ewma_keep + latency * (1.0 - ewma_keep);
                }
            } else {
                p.ewma = p.ewma * ewma_keep + service * (1.0 - ewma_keep);
            }
            // Outlier detection.
            if let (Some(o), Some(times)) = (outlier_cfg, times) {
                p.win_total += n;
                p.win_failed += failures;
                if p.breaker.state() == BreakerState::HalfOpen && n > 0.0 {
                    let ok = failures < 0.5 * n;
                    if p.breaker.trial(ok, now_ms, times).is_some() && !ok {
                        summary.ejections += 1;
                    }
                }
                let f = if n > 0.0 { failures / n } else { 0.0 };
                let k = f64::from(o.consecutive);
                let run_expected = if f >= 1.0 {
                    n - k + 1.0
                } else if f > 0.0 {
                    n * (1.0 - f) * f.powf(k)
                } else {
                    0.0
                };
                if o.consecutive > 0
                    && n >= k
                    && run_expected >= 1.0
                    && p.breaker.state() == BreakerState::Closed
                    && open < outlier::max_ejectable(endpoints.len() + open, o.max_ejection_percent)
                    && p.breaker
                        .trip(now_ms, times, EjectReason::Consecutive5xx)
                        .is_some()
                {
                    summary.ejections += 1;
                    open += 1;
                }
            }
        }
        if let Some(o) = outlier_cfg.filter(|_| now + dt >= next_interval) {
            next_interval += outlier_interval;
            let total_endpoints = endpoints.len();
            for p in &mut pods {
                if p.breaker.state() == BreakerState::Closed
                    && outlier::failure_percentage_trip(
                        p.win_total.round() as u64,
                        p.win_failed.round() as u64,
                        o.request_volume,
                        o.failure_percentage,
                    )
                    && open < outlier::max_ejectable(total_endpoints, o.max_ejection_percent)
                {
                    if let Some(times) = times {
                        if p.breaker
                            .trip(now_ms, times, EjectReason::FailurePercentage)
                            .is_some()
                        {
                            summary.ejections += 1;
                            open += 1;
                        }
                    }
                }
                p.breaker.decay();
                p.win_total = 0.0;
                p.win_failed = 0.0;
            }
        }

        // gofe's controller: decide every interval on the last window of signals.
        if policy.balancer == Balancer::Gofe && now + dt >= next_decide {
            next_decide += policy.interval.secs();
            let keep = (policy.window.secs() / policy.interval.secs())
                .ceil()
                .max(1.0) as usize;
            decided.clear();
            ready_pods.clear();
            fresh_pods.clear();
            fresh_signals.clear();
            for (i, p) in pods.iter_mut().enumerate() {
                p.signal_window.push_back(std::mem::take(&mut p.signal_now));
                while p.signal_window.len() > keep {
                    p.signal_window.pop_front();
                }
                p.gofe_weight = None;
                if now < p.ready_at {
                    continue;
                }
                let (req, fail, lat) = p
                    .signal_window
                    .iter()
                    .fold((0.0, 0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1, a.2 + x.2));
                let span = p.signal_window.len() as f64 * policy.interval.secs();
                if req > 0.0 {
                    fresh_pods.push(p.index);
                    fresh_signals.push((
                        i,
                        gofe_core::policy::Signals {
                            requests: req,
                            rps: req / span,
                            success_rate: 1.0 - fail / req,
                            latency: lat / req,
                            sampled_at_ms: now_ms,
                        },
                    ));
                }
                ready_pods.push(p.index);
                decided.push(i);
            }
            // The endpoint list and the signal map keep their names while the pods they
            // describe stay the same (most steps): only the values change.
            if ready_pods != base_pods {
                base_weights.clear();
                base_weights.extend(decided.iter().map(|&i| (pods[i].name.clone(), 1u32)));
                std::mem::swap(&mut base_pods, &mut ready_pods);
            }
            if fresh_pods == signal_pods {
                for (v, &j) in signals.values_mut().zip(&signal_order) {
                    *v = fresh_signals[j].1;
                }
            } else {
                signal_order.clear();
                signal_order.extend(0..fresh_signals.len());
                signal_order.sort_by(|&a, &b| {
                    pods[fresh_signals[a].0]
                        .name
                        .cmp(&pods[fresh_signals[b].0].name)
                });
                signals = signal_order
                    .iter()
                    .map(|&j| (pods[fresh_signals[j].0].name.clone(), fresh_signals[j].1))
                    .collect();
                std::mem::swap(&mut signal_pods, &mut fresh_pods);
            }
            let decision = gofe_core::policy::decide_owned(
                &gofe_policy,
                &base_weights,
                std::mem::take(&mut gofe_state),
                &signals,
                now_ms,
            );
            summary.ejections += decision
                .events
                .iter()
                .filter(|e| matches!(e, gofe_core::policy::Event::Ejected { .. }))
                .count() as u32;
            if let Some(rec) = recorder.as_mut() {
                rec(&base_weights, &signals, now_ms, &decision);
            }
            // Decisions come in the order of `base_weights`.
            let panic = decision.mode == gofe_core::policy::Mode::Panic;
            open = 0;
            for (d, &i) in decision.endpoints.iter().zip(&decided) {
                let w = if panic {
                    gofe_core::policy::WEIGHT_SCALE as u32
                } else if d.healthy {
                    d.weight
                } else {
                    0
                };
                open += usize::from(w == 0);
                pods[i].gofe_weight = Some(w);
            }
            gofe_state = decision.state;
        }

        // Step statistics.
        step_lat.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let served: f64 = step_lat.iter().map(|x| x.1).sum();
        let quantile = |q: f64| {
            let mut acc = 0.0;
            for &(l, n) in &step_lat {
                acc += n;
                if acc >= q * served {
                    return l;
                }
            }
            0.0
        };
        let (p50, p99) = if served > 0.0 {
            (quantile(0.5), quantile(0.99))
        } else {
            (0.0, 0.0)
        };
        summary.requests += offered;
        summary.failed += failed;
        if p99 > scenario.slo.p99.secs()
            || (offered > 0.0 && failed / offered > scenario.slo.errors)
        {
            summary.slo_violation_seconds += dt;
        }
        summary.pod_seconds += pods.len() as f64 * dt;
        summary.max_pods = summary.max_pods.max(pods.len());
        for (fi, f) in sv.faults.iter().enumerate() {
            if summary.drain_seconds[fi].is_some() || now < f.at.secs() {
                continue;
            }
            let pos = pods.iter().position(|p| p.index == f.pod);
            let drained = match pos {
                None => true,
                Some(i) => {
                    let fair = if endpoints.is_empty() {
                        0.0
                    } else {
                        offered / endpoints.len() as f64
                    };
                    !endpoints.contains(&i) || assigned[i] < 0.1 * fair
                }
            };
            if drained {
                summary.drain_seconds[fi] = Some(now - f.at.secs());
            }
        }

        row.shares.clear();
        row.shares.resize(SHARE_PODS.min(sv.pods as usize), 0.0);
        let total_assigned: f64 = assigned.iter().sum();
        if total_assigned > 0.0 {
            for (i, p) in pods.iter().enumerate().take(assigned.len()) {
                if p.index < row.shares.len() {
                    row.shares[p.index] = assigned[i] / total_assigned;
                }
            }
        }

        // Metrics pipeline: scrape, adapter cache, HPA sync.
        if now >= next_scrape {
            next_scrape += pl.scrape.secs();
            let keep = pl.window.secs() + pl.scrape.secs();
            for p in pods
                .iter_mut()
                .filter(|p| p.running(now) && p.life == Life::Alive)
            {
                p.samples.push_back((now, p.req_counter, p.cpu_counter));
                while p.samples.front().is_some_and(|s| s.0 < now - keep) {
                    p.samples.pop_front();
                }
            }
        }
        for f in forecasters.iter_mut().flatten() {
            if now >= f.next_sample {
                f.next_sample += f.step;
                // sum(rate(…)): no series at all is a gap, not a zero.
                let mut total = None;
                for p in &pods {
                    if let Some(r) = rate_at(&p.samples, now, pl.window.secs()) {
                        *total.get_or_insert(0.0) += r.0;
                    }
                }
                f.history.push_back(total.unwrap_or(f64::NAN));
                while f.history.len() > f.keep {
                    f.history.pop_front();
                }
            }
        }
        if now >= next_cache || pl.cache.0.is_zero() {
            next_cache += pl.cache.secs();
            for p in &mut pods {
                p.cached = rate_at(&p.samples, now, pl.window.secs());
            }
            for f in forecasters.iter_mut().flatten() {
                f.served = f.holt.forecast(f.history.make_contiguous(), f.steps_ahead);
            }
        }
        if let Some(spec) = &hpa {
            if now >= next_sync {
                next_sync += pl.sync.secs();
                let infos: Vec<PodInfo> = pods
                    .iter()
                    .map(|p| PodInfo {
                        name: p.name.clone(),
                        phase: if p.running(now) {
                            PodPhase::Running
                        } else {
                            PodPhase::Pending
                        },
                        deleted: false,
                        ready: p.running(now).then(|| {
                            let (ready, since) = match p.life {
                                Life::Dead { at_ms } => (false, at_ms as f64 / 1000.0),
                                Life::Alive if now >= p.ready_at => (true, p.ready_at),
                                Life::Alive => (false, p.running_at),
                            };
                            ReadyCondition {
                                ready,
                                transition_age_ms: ((now - since) * 1000.0) as i64,
                            }
                        }),
                        start_age_ms: p
                            .running(now)
                            .then_some(((now - p.running_at) * 1000.0) as i64),
                    })
                    .collect();
                let window_ms = pl.window.0.as_millis() as i64;
                let readings: Vec<Reading> = spec
                    .metrics
                    .iter()
                    .zip(&forecasters)
                    .map(|(m, forecast)| match m.kind {
                        MetricKind::External if forecast.is_some() => {
                            match forecast.as_ref().and_then(|f| f.served) {
                                Some(v) => Reading::Values(vec![(v * 1000.0).round() as i64]),
                                None => Reading::Unavailable,
                            }
                        }
                        MetricKind::External | MetricKind::Object => Reading::Values(vec![pods
                            .iter()
                            .filter_map(|p| p.cached.map(|c| (c.0 * 1000.0).round() as i64))
                            .sum()]),
                        MetricKind::Pods | MetricKind::Resource { .. } => {
                            let cpu = matches!(m.kind, MetricKind::Resource { .. });
                            Reading::PerPod {
                                samples: pods
                                    .iter()
                                    .filter_map(|p| {
                                        let c = p.cached?;
                                        let v = if cpu { c.1 } else { c.0 * 1000.0 };
                                        Some((
                                            p.name.clone(),
                                            PodSample {
                                                value: v.round() as i64,
                                                age_ms: ((now - c.2) * 1000.0) as i64,
                                                window_ms,
                                            },
                                        ))
                                    })
                                    .collect(),
                                requests: pods.iter().map(|p| (p.name.clone(), 1000)).collect(),
                            }
                        }
                    })
                    .collect();
                let obs = Observation {
                    spec_replicas: desired,
                    status_replicas: pods.len() as i32,
                    pods: &infos,
                    readings: &readings,
                };
                let out =
                    gofe_core::hpa::reconcile(spec, &hpa_config, &obs, &mut history, now_ms as i64);
                if out.desired != desired {
                    summary.scale_events += 1;
                    tracing::debug!(t = now, from = desired, to = out.desired, "scale");
                    desired = out.desired;
                }
            }
        }
        // The ReplicaSet converges on `desired`.
        while (pods.len() as i32) < desired {
            pods.push(new_pod(now, false));
        }
        if (pods.len() as i32) > desired {
            let excess = pods.len() - desired.max(0) as usize;
            let mut order: Vec<usize> = (0..pods.len()).collect();
            order.sort_by(|&a, &b| {
                let rank = |p: &Pod| {
                    if !p.running(now) {
                        0
                    } else if !p.ready(now) {
                        1
                    } else {
                        2
                    }
                };
                rank(&pods[a])
                    .cmp(&rank(&pods[b]))
                    .then(pods[b].created.total_cmp(&pods[a].created))
                    .then(pods[b].index.cmp(&pods[a].index))
            });
            let mut remove: Vec<usize> = order.into_iter().take(excess).collect();
            remove.sort_unstable_by(|a, b| b.cmp(a));
            for i in remove {
                pods.remove(i);
            }
        }

        row.t = now;
        row.rps = rps;
        row.desired = desired;
        row.pods = pods.len();
        row.endpoints = endpoints.len();
        row.requests = offered;
        row.failed = failed;
        row.p50_ms = p50 * 1000.0;
        row.p99_ms = p99 * 1000.0;
        row.ejected = open;
        on_step(&row);
        if step % report_every == 0 {
            progress(step as f64 / steps as f64);
        }
    }
    summary.p50_ms = hist.quantile(0.5) * 1000.0;
    summary.p99_ms = hist.quantile(0.99) * 1000.0;
    progress(1.0);
    Ok(summary)
}
