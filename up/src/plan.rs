//! What a run does, read from a simulator scenario: the pure part of `gofe up`.
//!
//! The scenario format is the simulator's (`gofe sim`), so one file can be simulated offline
//! and then played for real. Everything a live run can honour is taken from it; everything
//! it cannot is refused with the field's path, never dropped: a live run has one policy (the
//! first of `policies`), per-pod metrics and CPU need a Kubernetes metrics pipeline the run
//! does not have, and heterogeneous pods and `die` faults are honoured as the simulator
//! defines them.

use std::path::Path;
use std::time::Duration;

use gofe_core::hpa::HpaSpec;
use gofe_sim::scenario::{Balancer, Scenario, SimMetric};

/// The scenario `gofe up` runs without `--scenario`.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenario.yaml");

/// A scenario setting a live run cannot honour.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {field}: {message}")]
pub struct Unsupported {
    /// The scenario file.
    pub source_name: String,
    /// The field path.
    pub field: String,
    /// Why.
    pub message: String,
}

/// How the backends behave: the scenario's service model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackendModel {
    /// Requests per second one backend serves (beyond it they queue).
    pub capacity: f64,
    /// Service time on an idle backend.
    pub latency: Duration,
    /// From "start a backend" to its process starting.
    pub startup: Duration,
    /// From answering to joining the endpoints.
    pub readiness: Duration,
    /// How long a dead backend stays in the endpoints before it is noticed and replaced.
    pub dead_detection: Duration,
}

/// What a fault does to a backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultKind {
    /// Fails this share of requests with 503.
    Fail(f64),
    /// Service time × factor, capacity ÷ factor.
    Slow(f64),
    /// The process is killed.
    Die,
    /// An Envoy-style fault (a scenario's `http_fault`): the backend answers `abort`'s share of
    /// requests with its status, and delays `delay`'s share by its length.
    Http {
        /// `(share, status)`.
        abort: Option<(f64, u16)>,
        /// `(delay, share)`.
        delay: Option<(Duration, f64)>,
    },
}

/// A fault on the schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fault {
    /// When it starts, from the run's start.
    pub at: Duration,
    /// When it ends (`None`: until the end; always `None` for `Die`).
    pub until: Option<Duration>,
    /// The backend, by creation order (0 = the first).
    pub pod: usize,
    /// What it does.
    pub kind: FaultKind,
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The scenario's name.
    pub name: String,
    /// The scenario itself (traffic curves are read from it as the run goes).
    pub scenario: Scenario,
    /// How long the run lasts.
    pub duration: Duration,
    /// Backends at the start.
    pub initial_backends: usize,
    /// Speed factor per backend by creation order (1 = nominal), from `heterogeneity`.
    pub speeds: Vec<f64>,
    /// The backend model.
    pub model: BackendModel,
    /// Faults, by start time.
    pub faults: Vec<Fault>,
    /// The HPA (absent: fixed replicas).
    pub hpa: Option<(HpaSpec, f64)>,
    /// The HPA's sync period.
    pub sync: Duration,
    /// The adapter's rate window.
    pub rate_window: Duration,
    /// The proxy's load-balancing policy for the backends.
    pub lb_policy: &'static str,
    /// The controller's decision interval and signal window.
    pub controller_interval: Duration,
    /// The controller's signal window.
    pub controller_window: Duration,
    /// The proxy's outlier detection (consecutive 5xx, interval, base ejection, max %).
    pub outlier: Option<(u32, Duration, Duration, u32)>,
    /// Client timeout.
    pub timeout: Duration,
}

impl Plan {
    /// The plan of `scenario` (read from `source_name`), or every reason it cannot run live.
    pub fn new(
        source_name: &str,
        scenario: Scenario,
        duration_override: Option<Duration>,
    ) -> Result<Plan, Vec<Unsupported>> {
        let mut problems = Vec::new();
        let mut refuse = |field: &str, message: &str| {
            problems.push(Unsupported {
                source_name: source_name.to_owned(),
                field: field.to_owned(),
                message: message.to_owned(),
            });
        };
        let s = &scenario;
        let duration = duration_override.or(s.duration.map(|d| d.0));
        let Some(duration) = duration else {
            refuse("duration", "a live run needs a duration (or --duration)");
            return Err(problems);
        };
        if s.policies.len() > 1 {
            refuse(
                "policies",
                "a live run plays one policy: keep one (gofe sim --compare compares several)",
            );
        }
        let policy = s.policies.first();
        let lb_policy = match policy.map(|p| p.balancer) {
            None | Some(Balancer::Gofe | Balancer::RoundRobin) => "round_robin",
            Some(Balancer::LeastRequest) => "least_request",
            Some(Balancer::PeakEwma) => {
                refuse(
                    "policies[0].balancer",
                    "peak_ewma is a simulator balancer the proxy does not have (use gofe, round_robin or least_request)",
                );
                "round_robin"
            }
        };
        if policy.is_some_and(|p| p.fixed_replicas || p.autoscaling.is_some()) {
            refuse(
                "policies[0]",
                "fixed_replicas and per-policy autoscaling are for comparisons: set the scenario's autoscaling instead",
            );
        }
        let (interval, window) = policy
            .map_or((Duration::from_secs(1), Duration::from_secs(10)), |p| {
                (p.interval.0, p.window.0)
            });
        let hpa = match &s.autoscaling {
            None => None,
            Some(a) => {
                for (i, m) in a.metrics.iter().enumerate() {
                    match m {
                        SimMetric::ExternalRps {
                            forecast: Some(_), ..
                        } => refuse(
                            &format!("autoscaling.metrics[{i}].external_rps.forecast"),
                            "the forecast needs Prometheus' query_range: run with --prometheus (not yet supported live)",
                        ),
                        SimMetric::ExternalRps { .. } => {}
                        SimMetric::PodsRps { .. } => refuse(
                            &format!("autoscaling.metrics[{i}].pods_rps"),
                            "per-pod metrics (custom.metrics.k8s.io) are not served by gofe's adapter yet; use external_rps",
                        ),
                        SimMetric::Cpu { .. } => refuse(
                            &format!("autoscaling.metrics[{i}].cpu"),
                            "CPU needs a Kubernetes resource metrics pipeline; use external_rps",
                        ),
                    }
                }
                match gofe_sim::engine::hpa_spec(a) {
                    Ok(spec) => Some((spec, a.tolerance)),
                    Err((field, message)) => {
                        refuse(&format!("autoscaling.{field}"), &message);
                        None
                    }
                }
            }
        };
        let mut faults = Vec::new();
        for (i, f) in s.service.faults.iter().enumerate() {
            let kind = match (f.fail, f.slow, f.die, &f.http_fault) {
                (Some(r), None, false, None) => FaultKind::Fail(r),
                (None, Some(k), false, None) => FaultKind::Slow(k),
                (None, None, true, None) => FaultKind::Die,
                (None, None, false, Some(_)) => FaultKind::Http {
                    abort: f
                        .abort()
                        .map(|(share, status)| (share, u16::try_from(status).unwrap_or(500))),
                    delay: f.delay(),
                },
                _ => {
                    refuse(
                        &format!("service.faults[{i}]"),
                        "one of fail, slow, die or http_fault per fault",
                    );
                    continue;
                }
            };
            let until = match kind {
                FaultKind::Die => None,
                _ => f.lasts.map(|d| f.at.0 + d.0),
            };
            faults.push(Fault {
                at: f.at.0,
                until,
                pod: f.pod,
                kind,
            });
        }
        faults.sort_by_key(|f| f.at);
        let max_pods = hpa
            .as_ref()
            .map_or(s.service.pods as usize, |(h, _)| {
                h.max_replicas.max(0) as usize
            })
            .max(s.service.pods as usize);
        if max_pods > 50 {
            refuse(
                "autoscaling.maxReplicas",
                "a live run starts one process per backend: at most 50",
            );
        }
        if s.service.pods == 0 {
            refuse("service.pods", "at least one backend");
        }
        let speeds = (0..max_pods.max(1) * 4)
            .map(|index| gofe_sim::engine::speed_of(index, s))
            .collect();
        let outlier = s
            .outlier
            .as_ref()
            .filter(|_| policy.is_none_or(|p| p.outlier))
            .map(|o| {
                (
                    o.consecutive,
                    o.interval.0,
                    o.base_ejection.0,
                    o.max_ejection_percent,
                )
            });
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Plan {
            name: s.name.clone(),
            duration,
            initial_backends: s.service.pods as usize,
            speeds,
            model: BackendModel {
                capacity: s.service.capacity,
                latency: s.service.latency.0,
                startup: s.service.startup.0,
                readiness: s.service.readiness.0,
                dead_detection: s.service.dead_detection.0,
            },
            faults,
            hpa,
            sync: s.pipeline.sync.0,
            rate_window: s.pipeline.window.0,
            lb_policy,
            controller_interval: interval,
            controller_window: window,
            outlier,
            timeout: s.service.timeout.0.min(Duration::from_secs(30)),
            scenario,
        })
    }

    /// The plan of the built-in scenario.
    pub fn default_plan(duration: Option<Duration>) -> Result<Plan, crate::UpError> {
        let scenario = gofe_sim::scenario::parse("gofe up's built-in scenario", DEFAULT_SCENARIO)
            .map_err(|e| crate::UpError::Scenario(e.to_string()))?;
        Plan::new("gofe up's built-in scenario", scenario, duration).map_err(crate::UpError::plan)
    }

    /// The plan of the scenario file `path`.
    pub fn load(path: &Path, duration: Option<Duration>) -> Result<Plan, crate::UpError> {
        let scenario =
            gofe_sim::scenario::load(path).map_err(|e| crate::UpError::Scenario(e.to_string()))?;
        Plan::new(&path.display().to_string(), scenario, duration).map_err(crate::UpError::plan)
    }

    /// Capacity and service time of the backend created `index`-th, with a slow-down `factor`.
    pub fn backend_speed(&self, index: usize, factor: f64) -> (f64, Duration) {
        let speed = self.speeds.get(index).copied().unwrap_or(1.0) / factor.max(1e-9);
        (
            self.model.capacity * speed,
            self.model.latency.mul_f64(1.0 / speed.max(1e-9)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Plan, Vec<Unsupported>> {
        let s = gofe_sim::scenario::parse("t.yaml", text).expect("a valid scenario");
        Plan::new("t.yaml", s, None)
    }

    #[test]
    fn the_built_in_scenario_plans_the_whole_loop() {
        let p = Plan::default_plan(None).unwrap();
        assert_eq!(p.initial_backends, 2);
        assert_eq!(p.duration, Duration::from_secs(100));
        let (spec, _) = p.hpa.as_ref().expect("the default run autoscales");
        assert_eq!((spec.min_replicas, spec.max_replicas), (2, 6));
        let kinds: Vec<FaultKind> = p.faults.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![FaultKind::Fail(0.5), FaultKind::Slow(5.0)]);
        assert_eq!(p.faults[0].until, Some(Duration::from_secs(26)));
        assert_eq!(p.lb_policy, "round_robin");
        assert_eq!(p.backend_speed(0, 5.0), (12.0, Duration::from_millis(50)));
    }

    #[test]
    fn what_a_live_run_cannot_honour_is_refused_by_field() {
        let text = "name: x\nduration: 10s\ntraffic: [{constant: {rps: 1}}]\n\
            service: {pods: 1, capacity: 10}\n\
            autoscaling: {maxReplicas: 3, metrics: [{pods_rps: {average_value: \"5\"}}, {cpu: {average_utilization: 50}}]}\n\
            policies: [{name: a, balancer: peak_ewma}, {name: b, balancer: gofe}]\n";
        let fields: Vec<String> = plan(text)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "policies",
                "policies[0].balancer",
                "autoscaling.metrics[0].pods_rps",
                "autoscaling.metrics[1].cpu"
            ]
        );
    }

    #[test]
    fn an_http_fault_is_played_as_the_backend_s_abort_and_delay() {
        let text = "name: x\nduration: 10s\ntraffic: [{constant: {rps: 1}}]\n\
            service: {pods: 2, capacity: 10,\n\
              faults: [{at: 2s, for: 3s, pod: 1, http_fault: {abort: {http_status: 502, percentage: {numerator: 25}}, delay: {fixed_delay: 150ms, percentage: {numerator: 1, denominator: TEN_THOUSAND}}}}]}\n\
            policies: [{name: a, balancer: round_robin}]\n";
        let p = plan(text).unwrap();
        assert_eq!(
            p.faults[0].kind,
            FaultKind::Http {
                abort: Some((0.25, 502)),
                delay: Some((Duration::from_millis(150), 0.0001)),
            }
        );
        assert_eq!(p.faults[0].until, Some(Duration::from_secs(5)));
    }

    #[test]
    fn heterogeneous_pods_and_fault_windows_follow_the_simulator() {
        let text = "name: x\nduration: 10s\ntraffic: [{constant: {rps: 1}}]\n\
            service: {pods: 4, capacity: 10, heterogeneity: [{fraction: 0.5, speed: 0.25}],\n\
              faults: [{at: 5s, pod: 3, die: true}, {at: 1s, for: 2s, pod: 0, slow: 2}]}\n\
            policies: [{name: a, balancer: least_request, outlier: false}]\n";
        let p = plan(text).unwrap();
        assert_eq!(p.speeds[..4], [1.0, 0.25, 1.0, 0.25]);
        assert_eq!(p.faults[0].kind, FaultKind::Slow(2.0));
        assert_eq!(p.faults[0].until, Some(Duration::from_secs(3)));
        assert_eq!(
            (p.faults[1].kind, p.faults[1].until),
            (FaultKind::Die, None)
        );
        assert_eq!(p.lb_policy, "least_request");
        assert!(p.hpa.is_none() && p.outlier.is_none());
    }
}
