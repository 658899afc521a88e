//! gofe's controller, for the `gofe` balancer: every `interval` it rolls each pod's signal
//! window (what the mesh's metrics would show it), decides with
//! [`gofe_core::policy::decide_owned`] (the live controller's code) and publishes the weights
//! the balancer uses until the next decision.

use std::collections::{BTreeMap, VecDeque};

use gofe_core::policy::{self, ClusterState, Decision, EndpointDecision, Event, Mode, Signals};

use super::pods::Pod;
use super::DecisionRecorder;
use crate::scenario::Policy;

/// The signals of one pod's window of per-interval `(requests, failures, Σ latency × requests)`
/// (`interval` seconds each), sampled at `now_ms`; `None` without requests.
pub(super) fn window_signals(
    window: &VecDeque<(f64, f64, f64)>,
    interval: f64,
    now_ms: u64,
) -> Option<Signals> {
    let (req, fail, lat) = window
        .iter()
        .fold((0.0, 0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1, a.2 + x.2));
    let span = window.len() as f64 * interval;
    (req > 0.0).then(|| Signals {
        requests: req,
        rps: req / span,
        success_rate: 1.0 - fail / req,
        latency: lat / req,
        sampled_at_ms: now_ms,
    })
}

/// The weight the proxies apply for a decision: full base weight for everyone in panic mode,
/// else the decided weight of a healthy endpoint and 0 for an ejected one.
pub(super) fn applied_weight(d: &EndpointDecision, mode: Mode) -> u32 {
    if mode == Mode::Panic {
        policy::WEIGHT_SCALE as u32
    } else if d.healthy {
        d.weight
    } else {
        0
    }
}

/// The controller's state across decisions, and what `decide` is given, kept from one decision
/// to the next (the endpoint list and the signal map keep their names while the pods they
/// describe stay the same, as in most steps: only the values change).
pub(super) struct Controller {
    policy: policy::Policy,
    state: ClusterState,
    interval: f64,
    /// Intervals in a signal window.
    keep: usize,
    next_decide: f64,
    base_weights: Vec<(String, u32)>,
    base_pods: Vec<usize>,
    signals: BTreeMap<String, Signals>,
    signal_pods: Vec<usize>,
    /// Per entry of `signals`, in key order: its place in `fresh_signals`.
    signal_order: Vec<usize>,
    /// This decision's ready pods: positions in the pod list, and their indices.
    decided: Vec<usize>,
    ready_pods: Vec<usize>,
    /// This decision's pods with requests: their indices, and (position, signals).
    fresh_pods: Vec<usize>,
    fresh_signals: Vec<(usize, Signals)>,
}

impl Controller {
    /// The controller of a `gofe` policy: gofe-core's default decision policy, deciding every
    /// `interval` on the last `window`.
    pub(super) fn new(p: &Policy) -> Self {
        Controller {
            policy: policy::Policy {
                signal_window: std::time::Duration::from_secs_f64(p.window.secs()),
                ..policy::Policy::default()
            },
            state: ClusterState::default(),
            interval: p.interval.secs(),
            keep: (p.window.secs() / p.interval.secs()).ceil().max(1.0) as usize,
            next_decide: p.interval.secs(),
            base_weights: Vec::new(),
            base_pods: Vec::new(),
            signals: BTreeMap::new(),
            signal_pods: Vec::new(),
            signal_order: Vec::new(),
            decided: Vec::new(),
            ready_pods: Vec::new(),
            fresh_pods: Vec::new(),
            fresh_signals: Vec::new(),
        }
    }

    /// Whether the step of `dt` seconds from `now` ends an interval.
    pub(super) fn due(&self, now: f64, dt: f64) -> bool {
        now + dt >= self.next_decide
    }

    /// One decision at `now`: rolls the windows, decides, hands the inputs and the decision to
    /// `recorder`, and sets every ready pod's weight. Returns the ejections decided and how
    /// many endpoints now have weight 0.
    pub(super) fn decide(
        &mut self,
        pods: &mut [Pod],
        now: f64,
        now_ms: u64,
        recorder: Option<&mut DecisionRecorder<'_>>,
    ) -> (u32, usize) {
        self.next_decide += self.interval;
        self.roll_windows(pods, now, now_ms);
        self.refresh_inputs(pods);
        let decision = policy::decide_owned(
            &self.policy,
            &self.base_weights,
            std::mem::take(&mut self.state),
            &self.signals,
            now_ms,
        );
        let ejections = decision
            .events
            .iter()
            .filter(|e| matches!(e, Event::Ejected { .. }))
            .count() as u32;
        if let Some(rec) = recorder {
            rec(&self.base_weights, &self.signals, now_ms, &decision);
        }
        let zero = self.apply(decision, pods);
        (ejections, zero)
    }

    /// Closes every pod's current interval into its window (the last `keep` kept) and forgets
    /// its weight; collects the ready pods and the signals of those with requests.
    fn roll_windows(&mut self, pods: &mut [Pod], now: f64, now_ms: u64) {
        self.decided.clear();
        self.ready_pods.clear();
        self.fresh_pods.clear();
        self.fresh_signals.clear();
        for (i, p) in pods.iter_mut().enumerate() {
            p.signal_window.push_back(std::mem::take(&mut p.signal_now));
            while p.signal_window.len() > self.keep {
                p.signal_window.pop_front();
            }
            p.gofe_weight = None;
            if now < p.ready_at {
                continue;
            }
            if let Some(s) = window_signals(&p.signal_window, self.interval, now_ms) {
                self.fresh_pods.push(p.index);
                self.fresh_signals.push((i, s));
            }
            self.ready_pods.push(p.index);
            self.decided.push(i);
        }
    }

    /// The base weights (1 per ready pod) and the signal map by pod name, rebuilt only when the
    /// pods they list change.
    fn refresh_inputs(&mut self, pods: &[Pod]) {
        if self.ready_pods != self.base_pods {
            self.base_weights.clear();
            self.base_weights
                .extend(self.decided.iter().map(|&i| (pods[i].name.clone(), 1u32)));
            std::mem::swap(&mut self.base_pods, &mut self.ready_pods);
        }
        let fresh = &self.fresh_signals;
        if self.fresh_pods == self.signal_pods {
            for (v, &j) in self.signals.values_mut().zip(&self.signal_order) {
                *v = fresh[j].1;
            }
        } else {
            self.signal_order.clear();
            self.signal_order.extend(0..fresh.len());
            self.signal_order
                .sort_by(|&a, &b| pods[fresh[a].0].name.cmp(&pods[fresh[b].0].name));
            self.signals = self
                .signal_order
                .iter()
                .map(|&j| (pods[fresh[j].0].name.clone(), fresh[j].1))
                .collect();
            std::mem::swap(&mut self.signal_pods, &mut self.fresh_pods);
        }
    }

    /// Sets the decided pods' weights (decisions come in the order of `base_weights`) and keeps
    /// the state; returns how many got weight 0.
    fn apply(&mut self, decision: Decision, pods: &mut [Pod]) -> usize {
        let mut zero = 0;
        for (d, &i) in decision.endpoints.iter().zip(&self.decided) {
            let w = applied_weight(d, decision.mode);
            zero += usize::from(w == 0);
            pods[i].gofe_weight = Some(w);
        }
        self.state = decision.state;
        zero
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::scenario;
    use crate::scenario::Scenario;

    fn gofe() -> Scenario {
        scenario("service:\n  pods: 3\n  capacity: 100\n  startup: 10s\n  readiness: 5s\npolicies:\n  - { name: gofe, balancer: gofe, interval: 5s, window: 10s }\n")
    }

    fn pods(sc: &Scenario) -> Vec<Pod> {
        (0..3).map(|i| Pod::new(i, 0.0, true, sc)).collect()
    }

    #[test]
    fn a_window_sums_its_intervals_into_signals() {
        let w: VecDeque<_> = [(100.0, 10.0, 2.0), (300.0, 10.0, 6.0)].into();
        assert_eq!(
            window_signals(&w, 5.0, 7_000),
            Some(Signals {
                requests: 400.0,
                rps: 40.0,
                success_rate: 0.95,
                latency: 0.02,
                sampled_at_ms: 7_000
            })
        );
        let idle: VecDeque<_> = [(0.0, 0.0, 0.0)].into();
        assert_eq!(window_signals(&idle, 5.0, 0), None);
    }

    #[test]
    fn applied_weights_follow_health_and_panic() {
        let d = |healthy| EndpointDecision {
            endpoint: "pod-0".into(),
            weight: 40,
            healthy,
            status: policy::Status::Serving,
            multiplier: 0.4,
            reason: String::new(),
            signals: None,
        };
        assert_eq!(applied_weight(&d(true), Mode::Normal), 40);
        assert_eq!(applied_weight(&d(false), Mode::Normal), 0);
        assert_eq!(applied_weight(&d(false), Mode::Panic), 100);
    }

    #[test]
    fn decisions_come_every_interval_on_the_last_window() {
        let sc = gofe();
        let mut c = Controller::new(&sc.policies[0]);
        assert_eq!(c.keep, 2);
        assert!(!c.due(4.0, 0.5) && c.due(4.5, 0.5));
        let mut ps = pods(&sc);
        for p in &mut ps {
            p.signal_now = (100.0, 0.0, 1.0);
        }
        c.decide(&mut ps, 5.0, 5_000, None);
        assert!(!c.due(5.0, 0.5) && c.due(9.5, 0.5));
        for _ in 0..3 {
            c.decide(&mut ps, 10.0, 10_000, None);
        }
        assert!(ps.iter().all(|p| p.signal_window.len() == 2));
        assert!(ps.iter().all(|p| p.signal_now == (0.0, 0.0, 0.0)));
    }

    #[test]
    fn a_failing_pod_gets_weight_zero_and_the_recorder_sees_the_inputs() {
        let sc = gofe();
        let mut c = Controller::new(&sc.policies[0]);
        let mut ps = pods(&sc);
        for p in &mut ps {
            p.signal_now = (100.0, 0.0, 1.0);
        }
        ps[2].signal_now.1 = 90.0;
        let mut seen = Vec::new();
        let mut rec =
            |b: &[(String, u32)], s: &BTreeMap<String, Signals>, now: u64, d: &Decision| {
                seen.push((
                    b.to_vec(),
                    s.keys().cloned().collect::<Vec<_>>(),
                    now,
                    d.mode,
                ));
            };
        let mut recorder: DecisionRecorder<'_> = &mut rec;
        let (ejections, zero) = c.decide(&mut ps, 5.0, 5_000, Some(&mut recorder));
        assert_eq!((ejections, zero), (1, 1));
        let weights: Vec<Option<u32>> = ps.iter().map(|p| p.gofe_weight).collect();
        assert_eq!(weights, [Some(100), Some(100), Some(0)]);
        let names = vec!["pod-0".to_owned(), "pod-1".into(), "pod-2".into()];
        assert_eq!(
            seen,
            [(
                names.iter().map(|n| (n.clone(), 1)).collect::<Vec<_>>(),
                names,
                5_000,
                Mode::Normal
            )]
        );
    }

    #[test]
    fn unready_pods_are_left_out_and_idle_ones_have_no_signals() {
        let sc = gofe();
        let mut c = Controller::new(&sc.policies[0]);
        let mut ps = pods(&sc);
        ps[0].signal_now = (100.0, 0.0, 1.0);
        ps[1].ready_at = 30.0;
        ps[1].gofe_weight = Some(7);
        c.decide(&mut ps, 5.0, 5_000, None);
        let base: Vec<&str> = c.base_weights.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(base, ["pod-0", "pod-2"]);
        assert_eq!(c.signals.keys().collect::<Vec<_>>(), ["pod-0"]);
        assert_eq!(ps[1].gofe_weight, None, "undecided until ready");
        assert!(ps[0].gofe_weight.is_some() && ps[2].gofe_weight.is_some());
    }

    #[test]
    fn the_inputs_follow_the_pods_when_they_change() {
        let sc = gofe();
        let mut c = Controller::new(&sc.policies[0]);
        let mut ps = pods(&sc);
        for p in &mut ps {
            p.signal_now = (100.0, 0.0, 1.0);
        }
        c.decide(&mut ps, 5.0, 5_000, None);
        ps.remove(1);
        for p in &mut ps {
            p.signal_now = (50.0, 0.0, 1.0);
        }
        c.decide(&mut ps, 10.0, 10_000, None);
        let base: Vec<&str> = c.base_weights.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(base, ["pod-0", "pod-2"]);
        assert_eq!(c.signals.keys().collect::<Vec<_>>(), ["pod-0", "pod-2"]);
        assert_eq!(
            c.signals["pod-2"].requests, 150.0,
            "both intervals of its window"
        );
        assert_eq!(c.state.endpoints.len(), 2);
    }
}
