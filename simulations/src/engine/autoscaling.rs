//! Autoscaling: the HPA ([`gofe_core::hpa::reconcile`]) syncing every `sync` on what the
//! pipeline serves (the current rate, or the adapter's forecast), and the ReplicaSet that starts
//! and stops pods to converge on the replicas it wants — replacing dead pods once they are
//! noticed, and removing pending, then unready, then the newest pods first on scale-down.

use gofe_core::hpa::{
    ControllerConfig, History, HpaSpec, MetricKind, MetricSpec, MetricTarget, Observation, PodInfo,
    PodPhase, ReadyCondition,
};

use super::pipeline::Pipeline;
use super::pods::{Life, Pod};
use crate::scenario::{Autoscaling, Scenario, SimMetric};

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

/// What the HPA sees of a pod at `now`: its phase, and once running its readiness (a dead pod
/// is unready since its death) and start age.
pub(super) fn pod_info(p: &Pod, now: f64) -> PodInfo {
    PodInfo {
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
    }
}

/// The HPA of a run: its spec, the controller's configuration and history, and its sync timer.
pub(super) struct Autoscaler {
    spec: HpaSpec,
    config: ControllerConfig,
    history: History,
    sync: f64,
    next_sync: f64,
}

impl Autoscaler {
    /// An HPA with `spec` and the autoscaling section's `tolerance`, first syncing after one
    /// `sync` period (seconds).
    pub(super) fn new(spec: HpaSpec, tolerance: f64, sync: f64) -> Self {
        Autoscaler {
            spec,
            config: ControllerConfig {
                tolerance,
                ..ControllerConfig::default()
            },
            history: History::default(),
            sync,
            next_sync: sync,
        }
    }

    /// Every `sync`: the HPA reconciles the pods and the pipeline's readings with `desired`
    /// spec replicas; returns the replicas it wants then (`None` between syncs).
    pub(super) fn sync(
        &mut self,
        pods: &[Pod],
        pipeline: &Pipeline,
        desired: i32,
        now: f64,
        now_ms: u64,
    ) -> Option<i32> {
        if now < self.next_sync {
            return None;
        }
        self.next_sync += self.sync;
        let infos: Vec<PodInfo> = pods.iter().map(|p| pod_info(p, now)).collect();
        let readings = pipeline.readings(&self.spec, pods, now);
        let obs = Observation {
            spec_replicas: desired,
            status_replicas: pods.len() as i32,
            pods: &infos,
            readings: &readings,
        };
        let out = gofe_core::hpa::reconcile(
            &self.spec,
            &self.config,
            &obs,
            &mut self.history,
            now_ms as i64,
        );
        Some(out.desired)
    }
}

/// The ReplicaSet: the pods, in creation order, and the next pod's index.
pub(super) struct ReplicaSet<'a> {
    scenario: &'a Scenario,
    pub(super) pods: Vec<Pod>,
    next_index: usize,
}

impl<'a> ReplicaSet<'a> {
    /// The scenario's first `service.pods` pods, ready at the start.
    pub(super) fn new(scenario: &'a Scenario) -> Self {
        let mut rs = ReplicaSet {
            scenario,
            pods: Vec::new(),
            next_index: 0,
        };
        for _ in 0..scenario.service.pods {
            rs.start(0.0, true);
        }
        rs
    }

    /// Creates the next pod at `now`.
    fn start(&mut self, now: f64, ready_now: bool) {
        let index = self.next_index;
        self.next_index += 1;
        self.pods
            .push(Pod::new(index, now, ready_now, self.scenario));
    }

    /// Dead pods are noticed `dead_detection` after their death and removed; each is replaced
    /// while there are fewer pods than `desired`.
    pub(super) fn replace_noticed_dead(&mut self, now: f64, now_ms: u64, desired: i32) {
        let detect_ms = self.scenario.service.dead_detection.0.as_millis() as u64;
        let before = self.pods.len();
        self.pods
            .retain(|p| !matches!(p.life, Life::Dead { at_ms } if now_ms >= at_ms + detect_ms));
        for _ in self.pods.len()..before {
            if (self.pods.len() as i32) < desired {
                self.start(now, false);
            }
        }
    }

    /// Converges on `desired` pods: starts new ones, or stops the excess in [`stop_order`].
    pub(super) fn converge(&mut self, now: f64, desired: i32) {
        while (self.pods.len() as i32) < desired {
            self.start(now, false);
        }
        if (self.pods.len() as i32) > desired {
            let excess = self.pods.len() - desired.max(0) as usize;
            let mut remove: Vec<usize> = stop_order(&self.pods, now)
                .into_iter()
                .take(excess)
                .collect();
            remove.sort_unstable_by(|a, b| b.cmp(a));
            for i in remove {
                self.pods.remove(i);
            }
        }
    }
}

/// The order in which a ReplicaSet stops pods (positions in `pods`): pending, then unready, then
/// ready ones; newest first within each.
pub(super) fn stop_order(pods: &[Pod], now: f64) -> Vec<usize> {
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
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::scenario;

    const BODY: &str = "service:\n  pods: 2\n  capacity: 100\n  startup: 10s\n  readiness: 5s\n  dead_detection: 3s\npipeline: { scrape: 5s, window: 10s, cache: 10s, sync: 15s }\n";

    fn autoscaled(metrics: &str) -> Scenario {
        scenario(&format!(
            "{BODY}autoscaling:\n  minReplicas: 1\n  maxReplicas: 10\n  metrics:\n{metrics}"
        ))
    }

    #[test]
    fn hpa_spec_converts_each_metric_and_names_the_bad_field() {
        let sc = autoscaled(
            "    - external_rps: { value: \"300\" }\n    - pods_rps: { average_value: \"50\" }\n    - cpu: { average_utilization: 70 }\n",
        );
        let spec = hpa_spec(sc.autoscaling.as_ref().unwrap()).unwrap();
        let kinds: Vec<(MetricKind, MetricTarget)> =
            spec.metrics.iter().map(|m| (m.kind, m.target)).collect();
        assert_eq!(
            kinds,
            [
                (MetricKind::External, MetricTarget::Value(300_000)),
                (MetricKind::Pods, MetricTarget::AverageValue(50_000)),
                (
                    MetricKind::Resource { cpu: true },
                    MetricTarget::Utilization(70)
                ),
            ]
        );
        assert_eq!((spec.min_replicas, spec.max_replicas), (1, 10));
        let mut a = sc.autoscaling.clone().unwrap();
        a.metrics.truncate(0);
        assert_eq!(hpa_spec(&a).unwrap_err().0, "metrics");
        a.max_replicas = 0;
        assert_eq!(hpa_spec(&a).unwrap_err().0, "maxReplicas");
        a.max_replicas = 10;
        a.metrics = vec![SimMetric::Cpu {
            average_utilization: 0,
        }];
        assert_eq!(
            hpa_spec(&a).unwrap_err(),
            (
                "metrics[0].cpu.average_utilization".to_owned(),
                "must be > 0".to_owned()
            )
        );
    }

    #[test]
    fn the_hpa_sees_pending_unready_ready_and_dead_pods() {
        let sc = scenario(BODY);
        let p = Pod::new(0, 100.0, false, &sc); // running at 110 s, ready at 115 s
        let info = |p: &Pod, now| {
            let i = pod_info(p, now);
            (
                i.phase,
                i.ready.map(|r| (r.ready, r.transition_age_ms)),
                i.start_age_ms,
            )
        };
        assert_eq!(info(&p, 105.0), (PodPhase::Pending, None, None));
        assert_eq!(
            info(&p, 112.0),
            (PodPhase::Running, Some((false, 2_000)), Some(2_000))
        );
        assert_eq!(
            info(&p, 120.0),
            (PodPhase::Running, Some((true, 5_000)), Some(10_000))
        );
        let mut dead = p;
        dead.life = Life::Dead { at_ms: 118_000 };
        assert_eq!(
            info(&dead, 120.0),
            (PodPhase::Running, Some((false, 2_000)), Some(10_000))
        );
        assert_eq!(pod_info(&dead, 120.0).name, "pod-0");
    }

    #[test]
    fn the_hpa_syncs_every_period_on_the_adapters_values() {
        let sc = autoscaled("    - external_rps: { average_value: \"50\" }\n");
        let a = sc.autoscaling.as_ref().unwrap();
        let mut hpa = Autoscaler::new(hpa_spec(a).unwrap(), a.tolerance, 15.0);
        let pipeline = Pipeline::new(&sc.pipeline, Some(a));
        let mut rs = ReplicaSet::new(&sc);
        for p in &mut rs.pods {
            p.cached = Some((100.0, 0.0, 10.0));
        }
        assert_eq!(hpa.sync(&rs.pods, &pipeline, 2, 14.0, 14_000), None);
        assert_eq!(
            hpa.sync(&rs.pods, &pipeline, 2, 15.0, 15_000),
            Some(4),
            "200 req/s at 50 per pod"
        );
        assert_eq!(hpa.sync(&rs.pods, &pipeline, 4, 20.0, 20_000), None);
        assert!(hpa.sync(&rs.pods, &pipeline, 4, 30.0, 30_000).is_some());
    }

    #[test]
    fn the_replica_set_starts_ready_and_replaces_noticed_dead_pods() {
        let sc = scenario(BODY);
        let mut rs = ReplicaSet::new(&sc);
        let names: Vec<&str> = rs.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["pod-0", "pod-1"]);
        assert!(rs.pods.iter().all(|p| p.ready(0.0)));
        rs.pods[0].life = Life::Dead { at_ms: 10_000 };
        rs.replace_noticed_dead(12.0, 12_000, 2);
        assert_eq!(rs.pods.len(), 2, "not noticed yet");
        rs.replace_noticed_dead(13.0, 13_000, 2);
        let names: Vec<&str> = rs.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["pod-1", "pod-2"]);
        assert!(!rs.pods[1].running(13.0) && rs.pods[1].running(23.0));
        rs.pods[0].life = Life::Dead { at_ms: 13_000 };
        rs.replace_noticed_dead(16.0, 16_000, 1);
        assert_eq!(rs.pods.len(), 1, "not replaced above desired");
    }

    #[test]
    fn scale_down_stops_pending_then_unready_then_the_newest_ready_pods() {
        let sc = scenario(BODY);
        let mut rs = ReplicaSet::new(&sc); // pod-0, pod-1: ready
        rs.converge(0.0, 3); // pod-2: ready at 15 s
        rs.converge(12.0, 4); // pod-3: pending until 22 s
        let names =
            |rs: &ReplicaSet<'_>| rs.pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&rs), ["pod-0", "pod-1", "pod-2", "pod-3"]);
        assert_eq!(stop_order(&rs.pods, 12.0), [3, 2, 1, 0]);
        rs.converge(12.0, 2);
        assert_eq!(names(&rs), ["pod-0", "pod-1"]);
        rs.converge(20.0, 4); // pod-4 and pod-5, both created at 20 s
        assert_eq!(stop_order(&rs.pods, 40.0), [3, 2, 1, 0], "then by index");
        rs.converge(40.0, -1);
        assert!(rs.pods.is_empty(), "a negative target stops everything");
    }
}
