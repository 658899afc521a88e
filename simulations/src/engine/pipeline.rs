//! The metrics pipeline between the pods and the HPA: Prometheus scrapes the pods' counters
//! every `scrape`, the adapter recomputes `rate()` over `window` every `cache` (and, for an
//! External rate with `forecast`, serves its forecast instead: Holt, Holt-Winters, with or
//! without the spike path; with `queueing`, the queueing pressure instead of the rate), and the
//! HPA reads what the adapter serves.

use std::collections::VecDeque;

use gofe_core::forecast::ForecastPolicy;
use gofe_core::hpa::{HpaSpec, MetricKind, PodSample, Reading};

use super::pods::{Life, Pod};
use crate::scenario::{self, Autoscaling, SimMetric};

/// A scrape: (time, requests, CPU milli-core seconds, Σ latency × requests).
pub(super) type Scrape = (f64, f64, f64, f64);

/// `rate()` over `window` at `now` from a pod's scrapes (oldest first): per second of requests
/// and of CPU (milli-cores) between the first and the last scrape in the window, and the last
/// scrape's time; `None` without two scrapes in the window.
pub(super) fn rate_at(
    samples: &VecDeque<Scrape>,
    now: f64,
    window: f64,
) -> Option<(f64, f64, f64)> {
    let (first, last) = span(samples, now, window)?;
    let dt = last.0 - first.0;
    Some(((last.1 - first.1) / dt, (last.2 - first.2) / dt, last.0))
}

/// Requests in flight on average over `window` at `now` (`rate()` of Σ latency × requests,
/// Little's law), between the same scrapes as [`rate_at`].
pub(super) fn in_flight_at(samples: &VecDeque<Scrape>, now: f64, window: f64) -> Option<f64> {
    let (first, last) = span(samples, now, window)?;
    Some((last.3 - first.3) / (last.0 - first.0))
}

fn span(samples: &VecDeque<Scrape>, now: f64, window: f64) -> Option<(&Scrape, &Scrape)> {
    let first = samples.iter().find(|s| s.0 >= now - window)?;
    let last = samples.back()?;
    (last.0 > first.0).then_some((first, last))
}

/// An External rate as the adapter serves it with its options: the queueing pressure instead
/// of the rate (`queueing`), and the forecast of it (`forecast`): the total sampled every
/// `step` (as a Prometheus range query would evaluate it), the last `window` kept, and
/// [`ForecastPolicy::serve`] run when the adapter's cache refreshes.
pub(super) struct Forecaster {
    policy: ForecastPolicy,
    step: f64,
    keep: usize,
    next_sample: f64,
    history: VecDeque<f64>,
    /// The latency target of the queueing pressure, seconds.
    queueing: Option<f64>,
    /// The value the adapter serves now (`None`: no forecast of this history, served as
    /// unavailable).
    served: Option<f64>,
    /// The history as the adapter's range query ending at the refresh sees it (the grid's
    /// samples, the newest one evaluated at the refresh itself), reused between refreshes.
    query: Vec<f64>,
}

/// The value of an External rate over the pods: the summed rate, or its queueing pressure
/// against `target`; `None` without any pod's rate (`sum()` of no series: a gap).
fn external_value(
    pods: &[Pod],
    target: Option<f64>,
    rate: impl Fn(&Pod) -> Option<f64>,
    in_flight: impl Fn(&Pod) -> Option<f64>,
) -> Option<f64> {
    let mut total = None;
    let mut flying = 0.0;
    for p in pods {
        if let Some(r) = rate(p) {
            *total.get_or_insert(0.0) += r;
            flying += in_flight(p).unwrap_or(0.0);
        }
    }
    match target {
        None => total,
        Some(t) => total.and_then(|r| gofe_core::queueing::pressure(r, flying, t)),
    }
}

impl Forecaster {
    /// `None` when `forecast` does not resolve (a validated scenario always does).
    pub(super) fn new(f: &scenario::Forecast, queueing: Option<f64>) -> Option<Self> {
        let policy = f.resolve().ok()?;
        Some(Forecaster {
            step: policy.step.as_secs_f64(),
            // A range query over [now − window, now] holds window / step + 1 points.
            keep: policy.points(),
            policy,
            next_sample: 0.0,
            history: VecDeque::new(),
            queueing,
            served: None,
            query: Vec::new(),
        })
    }

    /// Every `step`: the sum of the pods' rates (`sum(rate(…))`: no series at all is a gap,
    /// NaN, not a zero), or its queueing pressure, joins the history.
    fn sample(&mut self, pods: &[Pod], now: f64, window: f64) {
        if now < self.next_sample {
            return;
        }
        self.next_sample += self.step;
        let value = external_value(
            pods,
            self.queueing,
            |p| rate_at(&p.samples, now, window).map(|r| r.0),
            |p| in_flight_at(&p.samples, now, window),
        );
        self.history.push_back(value.unwrap_or(f64::NAN));
        while self.history.len() > self.keep {
            self.history.pop_front();
        }
    }

    /// The cache refresh at `now`: the served value of the history. A range query over
    /// `[now − window, now]` evaluates its newest point at `now` itself, so when the last grid
    /// sample is older, the value at `now` joins as the newest point (in place of the oldest
    /// when the history is full): the forecast and its `floor` see what the plain rate sees.
    fn refresh(&mut self, pods: &[Pod], now: f64, window: f64) {
        self.query.clear();
        self.query.extend(self.history.iter().copied());
        let last_sample = self.next_sample - self.step;
        if !self.history.is_empty() && now > last_sample {
            let value = external_value(
                pods,
                self.queueing,
                |p| rate_at(&p.samples, now, window).map(|r| r.0),
                |p| in_flight_at(&p.samples, now, window),
            );
            if self.query.len() >= self.keep {
                self.query.remove(0);
            }
            self.query.push(value.unwrap_or(f64::NAN));
        }
        self.served = self.policy.serve(&self.query).ok().map(|s| s.value);
    }
}

/// One HPA metric's adapter options.
enum Served {
    /// As the pods' cached values give it.
    Plain,
    /// The queueing pressure of the cached rates, against this latency target (seconds).
    Queueing(f64),
    /// A forecast.
    Forecast(Box<Forecaster>),
}

/// The pipeline's timing and the adapter's forecasts.
pub(super) struct Pipeline {
    scrape: f64,
    window: f64,
    window_ms: i64,
    cache: f64,
    /// A cache TTL of 0: recomputed every step.
    uncached: bool,
    next_scrape: f64,
    next_cache: f64,
    /// One per HPA metric, in order: what the adapter serves of it.
    served: Vec<Served>,
}

impl Pipeline {
    pub(super) fn new(pl: &scenario::Pipeline, autoscaling: Option<&Autoscaling>) -> Self {
        Pipeline {
            scrape: pl.scrape.secs(),
            window: pl.window.secs(),
            window_ms: pl.window.0.as_millis() as i64,
            cache: pl.cache.secs(),
            uncached: pl.cache.0.is_zero(),
            next_scrape: 0.0,
            next_cache: 0.0,
            served: autoscaling
                .map(|a| {
                    a.metrics
                        .iter()
                        .map(|m| match m {
                            SimMetric::ExternalRps {
                                forecast, queueing, ..
                            } => {
                                let target = queueing.as_ref().and_then(|q| q.resolve().ok());
                                match (forecast, target) {
                                    (Some(f), t) => Forecaster::new(f, t)
                                        .map_or(Served::Plain, |f| Served::Forecast(Box::new(f))),
                                    (None, Some(t)) => Served::Queueing(t),
                                    (None, None) => Served::Plain,
                                }
                            }
                            _ => Served::Plain,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The pipeline's step at `now`: scrape, forecast samples, adapter cache.
    pub(super) fn step(&mut self, pods: &mut [Pod], now: f64) {
        self.scrape(pods, now);
        let window = self.window;
        for f in self.forecasters() {
            f.sample(pods, now, window);
        }
        self.refresh_cache(pods, now);
    }

    /// Every `scrape`: each running, live pod's counters are sampled; a window and one scrape
    /// more are kept.
    fn scrape(&mut self, pods: &mut [Pod], now: f64) {
        if now < self.next_scrape {
            return;
        }
        self.next_scrape += self.scrape;
        let keep = self.window + self.scrape;
        for p in pods
            .iter_mut()
            .filter(|p| p.running(now) && p.life == Life::Alive)
        {
            p.samples
                .push_back((now, p.req_counter, p.cpu_counter, p.latency_counter));
            while p.samples.front().is_some_and(|s| s.0 < now - keep) {
                p.samples.pop_front();
            }
        }
    }

    /// Every `cache` (every step without a cache): each pod's `rate()` and each forecast are
    /// recomputed.
    fn refresh_cache(&mut self, pods: &mut [Pod], now: f64) {
        if !(now >= self.next_cache || self.uncached) {
            return;
        }
        self.next_cache += self.cache;
        for p in pods.iter_mut() {
            p.cached = rate_at(&p.samples, now, self.window);
            p.cached_in_flight = in_flight_at(&p.samples, now, self.window);
        }
        let window = self.window;
        for f in self.forecasters() {
            f.refresh(pods, now, window);
        }
    }

    fn forecasters(&mut self) -> impl Iterator<Item = &mut Forecaster> {
        self.served.iter_mut().filter_map(|s| match s {
            Served::Forecast(f) => Some(&mut **f),
            _ => None,
        })
    }

    /// What the adapter serves for each metric of `spec` at `now`, in milli-units: a forecast
    /// (or unavailable), the total of the cached rates, or per pod the cached rate or CPU with
    /// its age.
    pub(super) fn readings(&self, spec: &HpaSpec, pods: &[Pod], now: f64) -> Vec<Reading> {
        spec.metrics
            .iter()
            .zip(&self.served)
            .map(|(m, served)| match (m.kind, served) {
                (MetricKind::External, Served::Forecast(f)) => match f.served {
                    Some(v) => Reading::Values(vec![(v * 1000.0).round() as i64]),
                    None => Reading::Unavailable,
                },
                (MetricKind::External, Served::Queueing(t)) => {
                    match external_value(
                        pods,
                        Some(*t),
                        |p| p.cached.map(|c| c.0),
                        |p| p.cached_in_flight,
                    ) {
                        Some(v) => Reading::Values(vec![(v * 1000.0).round() as i64]),
                        // No pod has a rate: the plain path's sum of nothing.
                        None => Reading::Values(vec![0]),
                    }
                }
                (MetricKind::External | MetricKind::Object, _) => Reading::Values(vec![pods
                    .iter()
                    .filter_map(|p| p.cached.map(|c| (c.0 * 1000.0).round() as i64))
                    .sum()]),
                (MetricKind::Pods | MetricKind::Resource { .. }, _) => {
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
                                        window_ms: self.window_ms,
                                    },
                                ))
                            })
                            .collect(),
                        requests: pods.iter().map(|p| (p.name.clone(), 1000)).collect(),
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::autoscaling::hpa_spec;
    use crate::engine::fixtures::scenario;
    use crate::scenario::Scenario;

    const BODY: &str = "service:\n  pods: 2\n  capacity: 100\n  startup: 10s\n  readiness: 5s\npipeline: { scrape: 5s, window: 10s, cache: 10s, sync: 15s }\n";

    fn with_metrics(metrics: &str) -> Scenario {
        scenario(&format!(
            "{BODY}autoscaling:\n  minReplicas: 1\n  maxReplicas: 10\n  metrics:\n{metrics}"
        ))
    }

    fn pods(sc: &Scenario) -> Vec<Pod> {
        (0..2).map(|i| Pod::new(i, 0.0, true, sc)).collect()
    }

    /// Runs the pipeline every second to `until`, each pod serving `rps[i]` req/s at half a
    /// core per 100 req/s.
    fn run(pl: &mut Pipeline, pods: &mut [Pod], rps: [f64; 2], until: u32) {
        for t in 0..=until {
            let now = f64::from(t);
            pl.step(pods, now);
            for (p, r) in pods.iter_mut().zip(rps) {
                p.req_counter += r;
                p.cpu_counter += r * 5.0;
            }
        }
    }

    #[test]
    fn rate_is_taken_between_the_first_and_last_scrape_in_the_window() {
        let s: VecDeque<_> = [
            (0.0, 0.0, 0.0, 0.0),
            (5.0, 50.0, 100.0, 5.0),
            (10.0, 150.0, 300.0, 25.0),
        ]
        .into();
        assert_eq!(rate_at(&s, 10.0, 10.0), Some((15.0, 30.0, 10.0)));
        assert_eq!(in_flight_at(&s, 10.0, 10.0), Some(2.5));
        assert_eq!(in_flight_at(&s, 10.0, 5.0), Some(4.0));
        assert_eq!(rate_at(&s, 10.0, 5.0), Some((20.0, 40.0, 10.0)));
        assert_eq!(rate_at(&s, 12.0, 2.0), None, "one scrape is no rate");
        assert_eq!(rate_at(&VecDeque::new(), 0.0, 10.0), None);
    }

    #[test]
    fn scrapes_keep_a_window_and_one_more_of_running_live_pods() {
        let sc = scenario(BODY);
        let mut pl = Pipeline::new(&sc.pipeline, None);
        let mut ps = pods(&sc);
        ps[1].life = Life::Dead { at_ms: 0 };
        run(&mut pl, &mut ps, [10.0, 10.0], 30);
        let times: Vec<f64> = ps[0].samples.iter().map(|s| s.0).collect();
        assert_eq!(times, [15.0, 20.0, 25.0, 30.0]);
        assert_eq!(ps[0].samples.back(), Some(&(30.0, 300.0, 1500.0, 0.0)));
        assert!(ps[1].samples.is_empty(), "a dead pod is not scraped");
    }

    #[test]
    fn the_adapter_serves_cached_rates_refreshed_every_ttl() {
        let sc = scenario(BODY);
        let mut pl = Pipeline::new(&sc.pipeline, None);
        let mut ps = pods(&sc);
        run(&mut pl, &mut ps, [10.0, 30.0], 19);
        assert_eq!(ps[0].cached, Some((10.0, 50.0, 10.0)), "as of 10 s");
        assert_eq!(ps[1].cached, Some((30.0, 150.0, 10.0)));
    }

    #[test]
    fn without_a_cache_the_rate_is_recomputed_every_step() {
        let sc = scenario(&BODY.replace("cache: 10s", "cache: 0s"));
        let mut pl = Pipeline::new(&sc.pipeline, None);
        let mut ps = pods(&sc);
        run(&mut pl, &mut ps, [10.0, 10.0], 15);
        assert_eq!(ps[0].cached.map(|c| c.2), Some(15.0));
    }

    #[test]
    fn readings_are_the_total_the_per_pod_rates_or_the_cpu() {
        let sc = with_metrics(
            "    - external_rps: { average_value: \"50\" }\n    - pods_rps: { average_value: \"50\" }\n    - cpu: { average_utilization: 50 }\n",
        );
        let spec = hpa_spec(sc.autoscaling.as_ref().unwrap()).unwrap();
        let mut pl = Pipeline::new(&sc.pipeline, sc.autoscaling.as_ref());
        let mut ps = pods(&sc);
        run(&mut pl, &mut ps, [10.0, 30.0], 12);
        let r = pl.readings(&spec, &ps, 12.0);
        assert_eq!(r[0], Reading::Values(vec![40_000]));
        let per_pod = |v0, v1| Reading::PerPod {
            samples: [
                (
                    "pod-0".to_owned(),
                    PodSample {
                        value: v0,
                        age_ms: 2_000,
                        window_ms: 10_000,
                    },
                ),
                (
                    "pod-1".to_owned(),
                    PodSample {
                        value: v1,
                        age_ms: 2_000,
                        window_ms: 10_000,
                    },
                ),
            ]
            .into(),
            requests: [("pod-0".to_owned(), 1000), ("pod-1".to_owned(), 1000)].into(),
        };
        assert_eq!(r[1], per_pod(10_000, 30_000));
        assert_eq!(r[2], per_pod(50, 150));
    }

    #[test]
    fn a_forecast_is_unavailable_without_history_then_extrapolates_the_trend() {
        let sc = with_metrics(
            "    - external_rps:\n        value: \"100\"\n        forecast: { lead: 10s, window: 1m, step: 5s }\n",
        );
        let spec = hpa_spec(sc.autoscaling.as_ref().unwrap()).unwrap();
        let mut pl = Pipeline::new(&sc.pipeline, sc.autoscaling.as_ref());
        let mut ps = pods(&sc);
        pl.step(&mut ps, 0.0);
        assert_eq!(pl.readings(&spec, &ps, 0.0), [Reading::Unavailable]);
        // The rate grows by 1 req/s every second: the forecast is above the current rate.
        for t in 1..=60u32 {
            for p in &mut ps {
                p.req_counter += f64::from(t);
            }
            pl.step(&mut ps, f64::from(t));
        }
        let Reading::Values(v) = &pl.readings(&spec, &ps, 60.0)[0] else {
            panic!("a forecast");
        };
        let current = ps
            .iter()
            .map(|p| rate_at(&p.samples, 60.0, 10.0).unwrap().0)
            .sum::<f64>();
        assert!(v[0] as f64 > current * 1000.0, "{v:?} vs {current}");
    }

    #[test]
    fn queueing_pressure_is_the_rate_until_latency_passes_its_target() {
        let sc = with_metrics(
            "    - external_rps:\n        value: \"100\"\n        queueing: { target: 50ms }\n",
        );
        let spec = hpa_spec(sc.autoscaling.as_ref().unwrap()).unwrap();
        let mut pl = Pipeline::new(&sc.pipeline, sc.autoscaling.as_ref());
        let mut ps = pods(&sc);
        // 10 and 30 req/s at 20 ms, then at 200 ms (four times the target).
        let serve = |pl: &mut Pipeline, ps: &mut [Pod], from: u32, to: u32, latency: f64| {
            for t in from..=to {
                pl.step(ps, f64::from(t));
                for (p, r) in ps.iter_mut().zip([10.0, 30.0]) {
                    p.req_counter += r;
                    p.latency_counter += r * latency;
                }
            }
        };
        serve(&mut pl, &mut ps, 0, 30, 0.02);
        assert_eq!(
            pl.readings(&spec, &ps, 30.0),
            [Reading::Values(vec![40_000])]
        );
        serve(&mut pl, &mut ps, 31, 60, 0.2);
        // 40 req/s × 200 ms = 8 in flight; / 50 ms = 160.
        assert_eq!(
            pl.readings(&spec, &ps, 60.0),
            [Reading::Values(vec![160_000])]
        );
    }

    #[test]
    fn a_seasonal_forecast_falls_back_to_holt_before_a_period_of_history() {
        let holt = with_metrics(
            "    - external_rps:\n        value: \"100\"\n        forecast: { lead: 10s, window: 2m, step: 5s, alpha: 0.5, beta: 0.3 }\n",
        );
        let seasonal = with_metrics(
            "    - external_rps:\n        value: \"100\"\n        forecast: { lead: 10s, method: holt-winters, period: 1m, window: 2m, step: 5s, alpha: 0.5, beta: 0.3 }\n",
        );
        let refused = with_metrics(
            "    - external_rps:\n        value: \"100\"\n        forecast: { lead: 10s, method: holt-winters, period: 1m, window: 2m, step: 5s, fallback: none }\n",
        );
        let served = |sc: &Scenario, until: u32| {
            let spec = hpa_spec(sc.autoscaling.as_ref().unwrap()).unwrap();
            let mut pl = Pipeline::new(&sc.pipeline, sc.autoscaling.as_ref());
            let mut ps = pods(sc);
            for t in 0..=until {
                for p in &mut ps {
                    p.req_counter += f64::from(t);
                }
                pl.step(&mut ps, f64::from(t));
            }
            pl.readings(&spec, &ps, f64::from(until)).remove(0)
        };
        // 40 s: fewer than a period and a step of history.
        assert_eq!(served(&seasonal, 40), served(&holt, 40));
        assert_eq!(served(&refused, 40), Reading::Unavailable);
        // Two minutes on, a season exists and the forecast is its own.
        assert!(matches!(served(&refused, 120), Reading::Values(_)));
        assert_ne!(served(&seasonal, 120), served(&holt, 120));
    }
}
