//! The pods: what one pod does with a step's requests (service time, queueing, latency,
//! failures), the faults that slow, fail or kill it, and what it counts for the metrics
//! pipeline, the controller's signals and the peak-EWMA balancer.

use std::collections::VecDeque;

use gofe_core::outlier;

use crate::scenario::{Fault, Scenario, Service};

/// Whether a pod is alive, or dead since when (a dead pod stays until it is noticed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Life {
    Alive,
    Dead { at_ms: u64 },
}

/// One pod of the simulated service.
pub(super) struct Pod {
    /// Creation order, from 0.
    pub(super) index: usize,
    /// `pod-<index>`: the name the HPA and the controller know it by.
    pub(super) name: String,
    pub(super) created: f64,
    pub(super) running_at: f64,
    pub(super) ready_at: f64,
    pub(super) speed: f64,
    pub(super) life: Life,
    /// Requests queued beyond capacity.
    pub(super) backlog: f64,
    /// This step's latency, seconds.
    pub(super) latency: f64,
    /// This step's service time, seconds.
    pub(super) service: f64,
    /// Requests served so far (the pod's request counter).
    pub(super) req_counter: f64,
    /// CPU used so far, milli-core seconds.
    pub(super) cpu_counter: f64,
    /// Scrapes: (time, requests, CPU), oldest first.
    pub(super) samples: VecDeque<(f64, f64, f64)>,
    /// The proxies' passive outlier-detection breaker.
    pub(super) breaker: outlier::Breaker,
    /// Outlier detection: requests and failures in the current interval.
    pub(super) win_total: f64,
    pub(super) win_failed: f64,
    /// Peak-EWMA latency, seconds.
    pub(super) ewma: f64,
    /// The adapter's cached `rate()`: (requests/s, CPU milli-cores, last scrape's time).
    pub(super) cached: Option<(f64, f64, f64)>,
    /// gofe balancer: per controller interval (requests, failures, Σ latency × requests).
    pub(super) signal_window: VecDeque<(f64, f64, f64)>,
    pub(super) signal_now: (f64, f64, f64),
    /// gofe balancer: the controller's last weight for this pod (`None`: not decided yet).
    pub(super) gofe_weight: Option<u32>,
}

impl Pod {
    /// The pod created `index`-th, at `now`: running after `startup`, ready `readiness` later;
    /// with `ready_now` (the scenario's first pods) running and ready for an hour already.
    pub(super) fn new(index: usize, now: f64, ready_now: bool, scenario: &Scenario) -> Self {
        let sv = &scenario.service;
        let base_latency = sv.latency.secs();
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
    }

    /// Ready and alive.
    pub(super) fn ready(&self, now: f64) -> bool {
        now >= self.ready_at && self.life == Life::Alive
    }

    /// Past `Pending`.
    pub(super) fn running(&self, now: f64) -> bool {
        now >= self.running_at
    }

    /// Counts a running pod's step: `n` requests, `failures` of them failed, at `latency`, for
    /// the request counter and the controller's signals; and moves the peak EWMA (up at once,
    /// down by `ewma_keep` per step, towards the service time when idle).
    pub(super) fn record(&mut self, n: f64, failures: f64, latency: f64, ewma_keep: f64) {
        self.req_counter += n;
        self.signal_now.0 += n;
        self.signal_now.1 += failures;
        self.signal_now.2 += latency * n;
        if n > 0.0 {
            if latency > self.ewma {
                self.ewma = latency;
            } else {
                self.ewma = self.ewma * ewma_keep + latency * (1.0 - ewma_keep);
            }
        } else {
            self.ewma = self.ewma * ewma_keep + self.service * (1.0 - ewma_keep);
        }
    }
}

/// Speed of the pod created `index`-th: the first heterogeneity group it falls in (every
/// `1/fraction`-th pod, spread evenly), else 1.
pub(super) fn speed_of(index: usize, scenario: &Scenario) -> f64 {
    for g in &scenario.service.heterogeneity {
        let (i, f) = (index as f64, g.fraction);
        if ((i + 1.0) * f).floor() > (i * f).floor() {
            return g.speed;
        }
    }
    1.0
}

/// What the faults active at `now` do to the pod created `index`-th: their slowdowns multiply,
/// the largest failure ratio applies. `(1, 0)` without faults.
pub(super) fn fault_effects(faults: &[Fault], index: usize, now: f64) -> (f64, f64) {
    let (mut slow, mut fail): (f64, f64) = (1.0, 0.0);
    for f in faults {
        let active = now >= f.at.secs() && f.lasts.is_none_or(|d| now < f.at.secs() + d.secs());
        if f.pod == index && active {
            slow *= f.slow.unwrap_or(1.0);
            fail = fail.max(f.fail.unwrap_or(0.0));
        }
    }
    (slow, fail)
}

/// Deaths: a `die` fault kills its pod (if it exists and lives) in the step of `dt` seconds
/// that contains its time, once.
pub(super) fn kill(faults: &[Fault], pods: &mut [Pod], now: f64, now_ms: u64, dt: f64) {
    for f in faults.iter().filter(|f| f.die) {
        if now >= f.at.secs() && now < f.at.secs() + dt {
            if let Some(p) = pods.iter_mut().find(|p| p.index == f.pod) {
                if p.life == Life::Alive {
                    p.life = Life::Dead { at_ms: now_ms };
                }
            }
        }
    }
}

/// The queueing model of one pod (see the engine's documentation): the service's constants and
/// the step length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct ServiceModel {
    /// Step, seconds.
    dt: f64,
    /// Service time on an idle pod, seconds.
    latency: f64,
    /// Requests per second a pod serves at full load.
    capacity: f64,
    /// Requests slower than this fail, seconds.
    timeout: f64,
    /// Workers per pod (`c`).
    concurrency: f64,
    /// Sakasegawa's exponent `√(2(c+1)) − 1`.
    wait_exponent: f64,
}

impl ServiceModel {
    pub(super) fn new(sv: &Service, dt: f64) -> Self {
        let c = f64::from(sv.concurrency);
        ServiceModel {
            dt,
            latency: sv.latency.secs(),
            capacity: sv.capacity,
            timeout: sv.timeout.secs(),
            concurrency: c,
            wait_exponent: (2.0 * (c + 1.0)).sqrt() - 1.0,
        }
    }

    /// Serves a step's `n` requests at `p` under the faults' `(slow, fail)`: sets the pod's
    /// service time, backlog, CPU counter and latency, and returns `(latency, failures)`. A dead
    /// pod fails everything in 1 ms; a pending one serves nothing (its latency is the service
    /// time); a running one queues, and fails everything above the timeout.
    pub(super) fn serve(
        &self,
        p: &mut Pod,
        n: f64,
        now: f64,
        (slow, fail): (f64, f64),
    ) -> (f64, f64) {
        let dt = self.dt;
        let service = self.latency * slow / p.speed;
        let mu = self.capacity * p.speed / slow;
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
                service * rho.powf(self.wait_exponent) / (self.concurrency * (1.0 - rho))
            } else {
                0.0
            };
            let w = service + wait + p.backlog / mu;
            p.cpu_counter += lambda.min(mu) / mu * 1000.0 * dt;
            if w > self.timeout {
                p.backlog = p.backlog.min(mu * self.timeout);
                (self.timeout, n)
            } else {
                (w, n * fail)
            }
        };
        p.latency = latency;
        (latency, failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{approx, scenario};

    const SERVICE: &str = "service:\n  pods: 2\n  capacity: 100\n  concurrency: 1\n  latency: 10ms\n  timeout: 1s\n  startup: 10s\n  readiness: 5s\n";

    fn model() -> ServiceModel {
        ServiceModel::new(&scenario(SERVICE).service, 1.0)
    }

    #[test]
    fn a_new_pod_is_pending_then_unready_then_ready() {
        let sc = scenario(SERVICE);
        let p = Pod::new(3, 100.0, false, &sc);
        assert_eq!(p.name, "pod-3");
        assert!(!p.running(109.9) && p.running(110.0));
        assert!(!p.ready(114.9) && p.ready(115.0));
        assert_eq!((p.latency, p.service, p.ewma), (0.01, 0.01, 0.01));
        let first = Pod::new(0, 0.0, true, &sc);
        assert!(
            first.running(0.0) && first.ready(0.0),
            "the first pods start ready"
        );
    }

    #[test]
    fn a_dead_pod_is_not_ready() {
        let mut p = Pod::new(0, 0.0, true, &scenario(SERVICE));
        p.life = Life::Dead { at_ms: 0 };
        assert!(!p.ready(10.0));
        assert!(p.running(10.0));
    }

    #[test]
    fn heterogeneity_groups_spread_their_speed_evenly() {
        let sc = scenario(&format!(
            "{SERVICE}  heterogeneity:\n    - {{ fraction: 0.25, speed: 0.5 }}\n    - {{ fraction: 0.5, speed: 2 }}\n"
        ));
        let speeds: Vec<f64> = (0..8).map(|i| speed_of(i, &sc)).collect();
        assert_eq!(
            speeds,
            [1.0, 2.0, 1.0, 0.5, 1.0, 2.0, 1.0, 0.5],
            "the first group wins"
        );
        assert_eq!(speed_of(5, &scenario(SERVICE)), 1.0);
    }

    #[test]
    fn active_faults_multiply_slowdowns_and_keep_the_worst_failure_ratio() {
        let sc = scenario(&format!(
            "{SERVICE}  faults:\n    - {{ at: 10s, for: 10s, pod: 1, slow: 2 }}\n    - {{ at: 15s, pod: 1, slow: 3 }}\n    - {{ at: 12s, for: 5s, pod: 1, fail: 0.2 }}\n    - {{ at: 12s, pod: 1, fail: 0.1 }}\n    - {{ at: 0s, pod: 0, fail: 0.9 }}\n"
        ));
        let f = &sc.service.faults;
        assert_eq!(fault_effects(f, 1, 9.9), (1.0, 0.0));
        assert_eq!(fault_effects(f, 1, 12.0), (2.0, 0.2));
        assert_eq!(fault_effects(f, 1, 16.0), (6.0, 0.2));
        assert_eq!(
            fault_effects(f, 1, 20.0),
            (3.0, 0.1),
            "the first slowdown is over"
        );
        assert_eq!(fault_effects(f, 2, 16.0), (1.0, 0.0));
    }

    #[test]
    fn a_die_fault_kills_its_pod_once_in_its_step() {
        let sc = scenario(&format!(
            "{SERVICE}  faults:\n    - {{ at: 10s, pod: 1, die: true }}\n"
        ));
        let mut pods: Vec<Pod> = (0..2).map(|i| Pod::new(i, 0.0, true, &sc)).collect();
        kill(&sc.service.faults, &mut pods, 9.5, 9_500, 0.5);
        assert_eq!(pods[1].life, Life::Alive);
        kill(&sc.service.faults, &mut pods, 10.0, 10_000, 0.5);
        assert_eq!(pods[1].life, Life::Dead { at_ms: 10_000 });
        kill(&sc.service.faults, &mut pods, 10.0, 10_000, 0.5);
        assert_eq!(pods[1].life, Life::Dead { at_ms: 10_000 }, "dies once");
        assert_eq!(pods[0].life, Life::Alive);
    }

    #[test]
    fn an_idle_pod_serves_at_its_service_time() {
        let sc = scenario(SERVICE);
        let mut p = Pod::new(0, 0.0, true, &sc);
        assert_eq!(model().serve(&mut p, 0.0, 0.0, (1.0, 0.0)), (0.01, 0.0));
        assert_eq!(p.cpu_counter, 0.0);
        assert_eq!(model().serve(&mut p, 0.0, 0.0, (3.0, 0.0)), (0.03, 0.0));
        assert_eq!(p.service, 0.03);
    }

    #[test]
    fn load_adds_queueing_delay_and_cpu_and_fault_failures() {
        let mut p = Pod::new(0, 0.0, true, &scenario(SERVICE));
        // c = 1: the wait is S ρ / (1 − ρ); ρ = 0.5 doubles the latency.
        let (latency, failures) = model().serve(&mut p, 50.0, 0.0, (1.0, 0.5));
        approx(latency, 0.02);
        assert_eq!(failures, 25.0);
        assert_eq!(p.backlog, 0.0);
        assert_eq!(p.cpu_counter, 500.0, "half busy for a second");
        assert_eq!(p.latency, latency);
    }

    #[test]
    fn overload_builds_a_backlog_and_times_out() {
        let mut p = Pod::new(0, 0.0, true, &scenario(SERVICE));
        let m = model();
        // 150 req/s on 100: 50 queue per second, 0.5 s of backlog at first.
        let (latency, failures) = m.serve(&mut p, 150.0, 0.0, (1.0, 0.0));
        assert_eq!(p.backlog, 50.0);
        assert!(latency > 0.5 && latency < 1.0, "{latency}");
        assert_eq!(failures, 0.0);
        assert_eq!(p.cpu_counter, 1000.0);
        // A second overloaded second goes past the 1 s timeout: all fail, the backlog is capped.
        assert_eq!(m.serve(&mut p, 150.0, 1.0, (1.0, 0.0)), (1.0, 150.0));
        assert_eq!(p.backlog, 100.0);
    }

    #[test]
    fn a_dead_pod_fails_fast_and_a_pending_one_serves_nothing() {
        let sc = scenario(SERVICE);
        let mut dead = Pod::new(0, 0.0, true, &sc);
        dead.backlog = 7.0;
        dead.life = Life::Dead { at_ms: 0 };
        assert_eq!(
            model().serve(&mut dead, 10.0, 0.0, (1.0, 0.0)),
            (0.001, 10.0)
        );
        assert_eq!(dead.backlog, 0.0);
        let mut pending = Pod::new(1, 0.0, false, &sc);
        assert_eq!(
            model().serve(&mut pending, 10.0, 0.0, (2.0, 0.5)),
            (0.02, 0.0)
        );
        assert_eq!(pending.cpu_counter, 0.0);
    }

    #[test]
    fn record_counts_signals_and_moves_the_peak_ewma() {
        let mut p = Pod::new(0, 0.0, true, &scenario(SERVICE));
        p.record(10.0, 2.0, 0.05, 0.5);
        assert_eq!(p.req_counter, 10.0);
        assert_eq!(p.signal_now, (10.0, 2.0, 0.5));
        assert_eq!(p.ewma, 0.05, "a peak is taken at once");
        p.record(10.0, 0.0, 0.03, 0.5);
        approx(p.ewma, 0.04); // and decays by the keep factor
        p.service = 0.02;
        p.record(0.0, 0.0, 0.0, 0.5);
        approx(p.ewma, 0.03); // idle: towards the service time
        assert_eq!((p.signal_now.0, p.signal_now.1), (20.0, 2.0));
        approx(p.signal_now.2, 0.8);
    }
}
