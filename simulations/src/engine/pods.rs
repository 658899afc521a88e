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
    /// Requests in flight at the end of the step, as the proxies count them (sent, not yet
    /// answered or timed out): see [`ServiceModel::serve`].
    pub(super) in_flight: f64,
    /// This step's capacity, requests per second at full load.
    pub(super) capacity: f64,
    /// Requests served so far (the pod's request counter).
    pub(super) req_counter: f64,
    /// CPU used so far, milli-core seconds.
    pub(super) cpu_counter: f64,
    /// Σ latency × requests so far, seconds (the proxies' `request_duration_seconds_sum`).
    pub(super) latency_counter: f64,
    /// Scrapes: (time, requests, CPU, Σ latency), oldest first.
    pub(super) samples: VecDeque<(f64, f64, f64, f64)>,
    /// The proxies' passive outlier-detection breaker.
    pub(super) breaker: outlier::Breaker,
    /// Outlier detection: requests and failures in the current interval.
    pub(super) win_total: f64,
    pub(super) win_failed: f64,
    /// Peak-EWMA latency, seconds.
    pub(super) ewma: f64,
    /// The adapter's cached `rate()`: (requests/s, CPU milli-cores, last scrape's time).
    pub(super) cached: Option<(f64, f64, f64)>,
    /// The adapter's cached requests in flight (`rate()` of Σ latency), for queueing pressure.
    pub(super) cached_in_flight: Option<f64>,
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
            in_flight: 0.0,
            capacity: sv.capacity * speed_of(index, scenario),
            req_counter: 0.0,
            cpu_counter: 0.0,
            latency_counter: 0.0,
            samples: VecDeque::new(),
            breaker: outlier::Breaker::default(),
            win_total: 0.0,
            win_failed: 0.0,
            ewma: base_latency,
            cached: None,
            cached_in_flight: None,
            signal_window: VecDeque::new(),
            signal_now: (0.0, 0.0, 0.0),
            gofe_weight: None,
        }
    }

    /// How its requests in flight drain, at this step's service time and capacity.
    pub(super) fn drain(&self, timeout: f64) -> Drain {
        Drain {
            service: self.service,
            capacity: self.capacity,
            timeout,
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
        self.latency_counter += latency * n;
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
pub fn speed_of(index: usize, scenario: &Scenario) -> f64 {
    for g in &scenario.service.heterogeneity {
        let (i, f) = (index as f64, g.fraction);
        if ((i + 1.0) * f).floor() > (i * f).floor() {
            return g.speed;
        }
    }
    1.0
}

/// What the faults active at `now` do to the pod created `index`-th: their slowdowns multiply,
/// the largest failure ratio applies (an `http_fault`'s abort fails its fraction). `(1, 0)`
/// without faults.
pub(super) fn fault_effects(faults: &[Fault], index: usize, now: f64) -> (f64, f64) {
    let (mut slow, mut fail): (f64, f64) = (1.0, 0.0);
    for f in faults {
        if f.pod == index && f.active_at(now) {
            slow *= f.slow.unwrap_or(1.0);
            fail = fail.max(f.fail.unwrap_or(0.0));
            fail = fail.max(f.abort().map_or(0.0, |(share, _)| share));
        }
    }
    (slow, fail)
}

/// The delay the `http_fault`s active at `now` add to the pod created `index`-th's requests:
/// `(seconds, fraction of requests)`, the longest delay when several apply; `None` without.
pub(super) fn fault_delay(faults: &[Fault], index: usize, now: f64) -> Option<(f64, f64)> {
    faults
        .iter()
        .filter(|f| f.pod == index && f.active_at(now))
        .filter_map(|f| f.delay())
        .filter(|(d, share)| !d.is_zero() && *share > 0.0)
        .map(|(d, share)| (d.as_secs_f64(), share))
        .max_by(|a, b| a.0.total_cmp(&b.0))
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

/// What a pod does with requests in flight, as the proxies count them (sent, not yet answered
/// or given up on): each is served in `service` seconds while fewer than `capacity × service`
/// are (below capacity), at most `capacity` a second leave (at capacity), and none stays past
/// `timeout` (the client gives up).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Drain {
    pub(super) service: f64,
    pub(super) capacity: f64,
    pub(super) timeout: f64,
}

impl Drain {
    /// Requests in flight `t` seconds after `start` were, when `arrived` more came at an even
    /// rate over those seconds: the larger of the free (each leaves after `service`) and the
    /// saturated (`capacity` a second leave) answers, at most the timed-out one (each leaves
    /// after `timeout`). Each is exact for a constant rate, so one step of 1 s gives what ten
    /// of 100 ms give, unless the pod crosses its capacity within the step.
    pub(super) fn in_flight(&self, start: f64, arrived: f64, t: f64) -> f64 {
        if t <= 0.0 {
            return start + arrived;
        }
        let free = Leaving::after(self.service, t).of(start, arrived);
        let gave_up = Leaving::after(self.timeout, t).of(start, arrived);
        let saturated = start + arrived - self.capacity * t;
        free.max(saturated).min(gave_up)
    }
}

/// What is left after `x` stays (`t / stay`) of requests that each stay `stay` seconds: of
/// those there at the start, `kept = e^−x`; of those that came evenly meanwhile,
/// `(1 − e^−x) / x`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Leaving {
    kept: f64,
    staying: f64,
}

impl Leaving {
    fn after(stay: f64, t: f64) -> Self {
        let x = t / stay.max(1e-9);
        Leaving::from_kept((-x).exp(), x)
    }

    fn from_kept(kept: f64, x: f64) -> Self {
        Leaving {
            kept,
            staying: if x < 1e-6 {
                1.0 - x / 2.0
            } else {
                (1.0 - kept) / x
            },
        }
    }

    fn of(&self, start: f64, arrived: f64) -> f64 {
        start * self.kept + arrived * self.staying
    }
}

/// The pods' requests in flight at the moments of one step's picks, the `j`-th of them at
/// `(j + ½) × pick` seconds into the step: [`Drain::in_flight`] for each pod, with its
/// exponentials taken from a table per distinct stay (service time or timeout), each built by
/// one multiplication per pick, since most pods share their service time.
#[derive(Debug, Default)]
pub(super) struct Flights {
    pick: f64,
    picks: usize,
    /// The distinct stays (the timeout first), and for the `k`-th, `e^−(j + ½) pick / stay` for
    /// every pick `j` at `values[k × picks + j]`.
    stays: Vec<f64>,
    values: Vec<f64>,
    /// Per pod (by position).
    pods: Vec<PodFlight>,
}

/// One pod's part of [`Flights`].
#[derive(Clone, Copy, Debug, PartialEq)]
struct PodFlight {
    /// In flight at the step's start.
    start: f64,
    capacity: f64,
    service: f64,
    /// Where its service time's and the timeout's tables start in `values`.
    free: usize,
    gave_up: usize,
    /// Served before the timeout.
    before_timeout: bool,
}

impl Flights {
    /// The view of `pods` over a step of `picks` picks `pick` seconds apart.
    pub(super) fn build(&mut self, pods: &[Pod], picks: usize, pick: f64, timeout: f64) {
        self.pick = pick;
        self.picks = picks;
        self.stays.clear();
        self.values.clear();
        self.pods.clear();
        let timeout = timeout.max(1e-9);
        let gave_up = self.table(timeout);
        let mut last = (f64::NAN, 0);
        for p in pods {
            let service = p.service.max(1e-9);
            let free = if service == last.0 {
                last.1
            } else {
                let k = match self.stays.iter().position(|&s| s == service) {
                    Some(k) => k * picks,
                    None => self.table(service),
                };
                last = (service, k);
                k
            };
            self.pods.push(PodFlight {
                start: p.in_flight,
                capacity: p.capacity,
                service,
                free,
                gave_up,
                before_timeout: service <= timeout,
            });
        }
    }

    /// A new table for `stay`: where it starts in `values`.
    fn table(&mut self, stay: f64) -> usize {
        let at = self.values.len();
        self.stays.push(stay);
        let per_pick = (-self.pick / stay).exp();
        let mut v = per_pick.sqrt();
        for _ in 0..self.picks {
            self.values.push(v);
            v *= per_pick;
        }
        at
    }

    /// The moment of pick `j`: `(j + ½) × pick` seconds into the step.
    pub(super) fn moment(&self, j: usize) -> Moment {
        let t = (j as f64 + 0.5) * self.pick;
        Moment {
            j,
            t,
            inv_t: 1.0 / t,
        }
    }

    /// Pod `i`'s requests in flight at pick `m`, `arrived` having come to it since the step
    /// began: [`Drain::in_flight`] at that moment.
    pub(super) fn at(&self, i: usize, m: &Moment, arrived: f64) -> f64 {
        let f = &self.pods[i];
        // start × e^−x + arrived × (1 − e^−x) / x, with x = t / stay.
        let leaving = |table: usize, stay: f64| {
            let kept = self.values[table + m.j];
            let staying = if m.t < 1e-6 * stay {
                1.0 - 0.5 * m.t / stay
            } else {
                (1.0 - kept) * stay * m.inv_t
            };
            f.start * kept + arrived * staying
        };
        let saturated = f.start + arrived - f.capacity * m.t;
        let unsaturated = leaving(f.free, f.service);
        if saturated <= unsaturated && f.before_timeout {
            // Below capacity, served before the timeout: the timeout changes nothing.
            return unsaturated;
        }
        let timeout = self.stays[0];
        unsaturated.max(saturated).min(leaving(f.gave_up, timeout))
    }
}

/// A pick's moment in its step (see [`Flights::moment`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Moment {
    j: usize,
    t: f64,
    inv_t: f64,
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
    /// Whether a pod's requests in flight are counted (for the balancers that read them).
    counts_in_flight: bool,
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
            counts_in_flight: true,
        }
    }

    /// The model, counting each pod's requests in flight only when `counted` (the
    /// power-of-two-choices balancers read them; the others need not pay for them).
    pub(super) fn counting_in_flight(self, counted: bool) -> Self {
        ServiceModel {
            counts_in_flight: counted,
            ..self
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
        p.capacity = mu;
        if self.counts_in_flight {
            p.in_flight = p.drain(self.timeout).in_flight(p.in_flight, n, dt);
        }
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
    fn an_http_fault_aborts_its_percentage_and_delays_its_percentage() {
        let sc = scenario(&format!(
            "{SERVICE}  faults:\n    - {{ at: 10s, for: 10s, pod: 1, http_fault: {{ abort: {{ http_status: 503, percentage: {{ numerator: 30 }} }} }} }}\n    - {{ at: 10s, pod: 1, fail: 0.2 }}\n    - {{ at: 5s, for: 10s, pod: 0, http_fault: {{ delay: {{ fixed_delay: 200ms, percentage: {{ numerator: 25, denominator: TEN_THOUSAND }} }} }} }}\n    - {{ at: 8s, for: 4s, pod: 0, http_fault: {{ delay: {{ fixed_delay: 1s, percentage: {{ numerator: 50 }} }}, abort: {{ http_status: 500, percentage: {{ numerator: 0 }} }} }} }}\n"
        ));
        let f = &sc.service.faults;
        assert_eq!(
            fault_effects(f, 1, 12.0),
            (1.0, 0.3),
            "the abort's 30 % beats 20 %"
        );
        assert_eq!(fault_effects(f, 1, 20.0), (1.0, 0.2), "the abort is over");
        assert_eq!(fault_delay(f, 1, 12.0), None, "an abort delays nothing");
        assert_eq!(fault_delay(f, 0, 4.9), None);
        assert_eq!(fault_delay(f, 0, 5.0), Some((0.2, 0.0025)), "25 in 10,000");
        assert_eq!(
            fault_delay(f, 0, 9.0),
            Some((1.0, 0.5)),
            "the longest delay applies"
        );
        assert_eq!(fault_delay(f, 0, 12.0), Some((0.2, 0.0025)));
        assert_eq!(fault_delay(f, 0, 15.0), None);
        assert_eq!(
            fault_effects(f, 0, 9.0),
            (1.0, 0.0),
            "a 0 % abort fails nothing"
        );
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

    fn drain(service: f64, capacity: f64, timeout: f64) -> Drain {
        Drain {
            service,
            capacity,
            timeout,
        }
    }

    #[test]
    fn requests_in_flight_drain_the_same_in_one_step_or_ten() {
        // Below capacity (each served in 50 ms), at capacity (100 a second), and given up on
        // (served in 2 s, timeout 1 s): a second at a constant rate, in one step or ten.
        for (d, start, per_second) in [
            (drain(0.05, 1e9, 10.0), 3.0, 80.0),
            (drain(0.05, 100.0, 10.0), 500.0, 150.0),
            (drain(2.0, 2.5, 1.0), 4.0, 10.0),
        ] {
            let once = d.in_flight(start, per_second, 1.0);
            let tenths = (0..10).fold(start, |n, _| d.in_flight(n, per_second / 10.0, 0.1));
            assert!(
                (once - tenths).abs() < 1e-9 * once.max(1.0),
                "{d:?}: {once} vs {tenths}"
            );
        }
        let d = drain(0.05, 100.0, 10.0);
        approx(d.in_flight(500.0, 150.0, 1.0), 550.0); // 150 in, 100 out
        assert_eq!(d.in_flight(3.0, 2.0, 0.0), 5.0);
        // Little's law at a steady 80 a second: 80 × 50 ms.
        let steady = (0..100).fold(0.0, |n, _| d.in_flight(n, 8.0, 0.1));
        approx(steady, 4.0);
        // Given up on: 10 a second for a 1 s timeout.
        let slow = drain(2.0, 2.5, 1.0);
        let steady = (0..100).fold(0.0, |n, _| slow.in_flight(n, 1.0, 0.1));
        assert!((steady - 10.0).abs() < 1e-3, "{steady}");
    }

    #[test]
    fn a_steps_flights_are_the_drain_at_each_pick() {
        let sc = scenario(SERVICE);
        let mut ps: Vec<Pod> = (0..3).map(|i| Pod::new(i, 0.0, true, &sc)).collect();
        (ps[0].in_flight, ps[0].service, ps[0].capacity) = (3.0, 0.05, 100.0);
        (ps[1].in_flight, ps[1].service, ps[1].capacity) = (500.0, 0.05, 100.0);
        (ps[2].in_flight, ps[2].service, ps[2].capacity) = (4.0, 2.0, 2.5);
        let mut f = Flights::default();
        f.build(&ps, 256, 1.0 / 256.0, 1.0);
        for j in [0, 1, 17, 255] {
            let m = f.moment(j);
            let t = (j as f64 + 0.5) / 256.0;
            for (i, p) in ps.iter().enumerate() {
                let want = p.drain(1.0).in_flight(p.in_flight, 7.0, t);
                let got = f.at(i, &m, 7.0);
                assert!(
                    (got - want).abs() < 1e-9 * want,
                    "pod {i} pick {j}: {got} vs {want}"
                );
            }
        }
        assert_eq!(f.stays.len(), 3, "the timeout and two service times");
    }

    #[test]
    fn serving_counts_the_requests_in_flight() {
        let mut p = Pod::new(0, 0.0, true, &scenario(SERVICE));
        // c = 1, ρ = 0.5: 20 ms latency, each request in flight that long.
        let (latency, _) = model().serve(&mut p, 50.0, 0.0, (1.0, 0.0));
        approx(p.capacity, 100.0);
        let want = drain(0.01, 100.0, 1.0).in_flight(0.0, 50.0, 1.0);
        approx(p.in_flight, want);
        assert!(latency > 0.0 && p.in_flight > 0.0);
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
