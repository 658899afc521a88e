//! The proxies' passive outlier detection (for every balancer but `gofe`, whose controller
//! ejects instead): per-endpoint breakers from gofe-core, tripped by runs of consecutive
//! failures as requests are served, and by the failure-percentage rule every interval.

use gofe_core::outlier::{self, BreakerState, EjectReason, EjectionTimes};

use super::pods::Pod;
use crate::scenario::Outlier;

/// Moves every open breaker whose ejection is over to half-open; returns how many are open.
pub(super) fn poll(pods: &mut [Pod], now_ms: u64) -> usize {
    let mut open = 0;
    for p in pods {
        p.breaker.poll(now_ms);
        if matches!(p.breaker.state(), BreakerState::Open { .. }) {
            open += 1;
        }
    }
    open
}

/// The expected number of runs of `k` consecutive failures among `n` requests that fail with
/// probability `f` each (the fluid stand-in for "k failures in a row happened"): `n − k + 1`
/// when all fail, `n (1 − f) fᵏ` otherwise.
pub(super) fn expected_failure_runs(n: f64, f: f64, k: f64) -> f64 {
    if f >= 1.0 {
        n - k + 1.0
    } else if f > 0.0 {
        n * (1.0 - f) * f.powf(k)
    } else {
        0.0
    }
}

/// The scenario's outlier detection, when the policy uses it.
pub(super) struct OutlierDetection<'a> {
    config: &'a Outlier,
    times: EjectionTimes,
    interval: f64,
    /// When the next failure-percentage sweep is due, seconds.
    next_sweep: f64,
}

impl<'a> OutlierDetection<'a> {
    pub(super) fn new(config: &'a Outlier) -> Self {
        let interval = config.interval.secs();
        OutlierDetection {
            config,
            times: EjectionTimes {
                base: config.base_ejection.0,
                max: config.max_ejection.0,
            },
            interval,
            next_sweep: interval,
        }
    }

    /// One running pod's step of `n` requests, `failures` failed: counted for the interval; a
    /// half-open breaker judges them as its trial (mostly failed: ejected again); a closed one
    /// trips on a run of `consecutive` failures while fewer than `max_ejection_percent` of the
    /// `endpoints + open` hosts are out. Returns the ejections; `open` counts the new ones.
    pub(super) fn observe(
        &self,
        p: &mut Pod,
        n: f64,
        failures: f64,
        now_ms: u64,
        endpoints: usize,
        open: &mut usize,
    ) -> u32 {
        let (o, times) = (self.config, self.times);
        let mut ejections = 0;
        p.win_total += n;
        p.win_failed += failures;
        if p.breaker.state() == BreakerState::HalfOpen && n > 0.0 {
            let ok = failures < 0.5 * n;
            if p.breaker.trial(ok, now_ms, times).is_some() && !ok {
                ejections += 1;
            }
        }
        let f = if n > 0.0 { failures / n } else { 0.0 };
        let k = f64::from(o.consecutive);
        if o.consecutive > 0
            && n >= k
            && expected_failure_runs(n, f, k) >= 1.0
            && p.breaker.state() == BreakerState::Closed
            && *open < outlier::max_ejectable(endpoints + *open, o.max_ejection_percent)
            && p.breaker
                .trip(now_ms, times, EjectReason::Consecutive5xx)
                .is_some()
        {
            ejections += 1;
            *open += 1;
        }
        ejections
    }

    /// Whether the step of `dt` seconds from `now` ends an interval.
    pub(super) fn sweep_due(&self, now: f64, dt: f64) -> bool {
        now + dt >= self.next_sweep
    }

    /// The end of an interval: each closed breaker whose window trips the failure-percentage
    /// rule is ejected while fewer than `max_ejection_percent` of the `endpoints` are out; then
    /// every breaker forgets one past ejection (if closed) and the windows restart. Returns the
    /// ejections; `open` counts them.
    pub(super) fn sweep(
        &mut self,
        pods: &mut [Pod],
        now_ms: u64,
        endpoints: usize,
        open: &mut usize,
    ) -> u32 {
        let o = self.config;
        self.next_sweep += self.interval;
        let mut ejections = 0;
        for p in pods {
            if p.breaker.state() == BreakerState::Closed
                && outlier::failure_percentage_trip(
                    p.win_total.round() as u64,
                    p.win_failed.round() as u64,
                    o.request_volume,
                    o.failure_percentage,
                )
                && *open < outlier::max_ejectable(endpoints, o.max_ejection_percent)
                && p.breaker
                    .trip(now_ms, self.times, EjectReason::FailurePercentage)
                    .is_some()
            {
                ejections += 1;
                *open += 1;
            }
            p.breaker.decay();
            p.win_total = 0.0;
            p.win_failed = 0.0;
        }
        ejections
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{approx, scenario};
    use crate::scenario::Scenario;

    fn with_detection(max_ejection_percent: u32) -> Scenario {
        scenario(&format!(
            "service:\n  pods: 4\n  capacity: 100\noutlier:\n  consecutive: 5\n  failure_percentage: 50\n  request_volume: 20\n  interval: 10s\n  base_ejection: 30s\n  max_ejection_percent: {max_ejection_percent}\n"
        ))
    }

    fn pods(sc: &Scenario, n: usize) -> Vec<Pod> {
        (0..n).map(|i| Pod::new(i, 0.0, true, sc)).collect()
    }

    #[test]
    fn runs_of_failures_are_expected_from_the_failure_ratio() {
        assert_eq!(expected_failure_runs(10.0, 1.0, 5.0), 6.0);
        assert_eq!(expected_failure_runs(10.0, 0.0, 5.0), 0.0);
        approx(
            expected_failure_runs(100.0, 0.5, 5.0),
            100.0 * 0.5 * 0.5f64.powi(5),
        );
    }

    #[test]
    fn poll_half_opens_breakers_whose_time_is_up_and_counts_the_open_ones() {
        let sc = with_detection(50);
        let d = OutlierDetection::new(sc.outlier.as_ref().unwrap());
        let mut ps = pods(&sc, 3);
        ps[0].breaker.trip(0, d.times, EjectReason::Consecutive5xx);
        ps[1]
            .breaker
            .trip(10_000, d.times, EjectReason::Consecutive5xx);
        assert_eq!(poll(&mut ps, 29_999), 2);
        assert_eq!(poll(&mut ps, 30_000), 1);
        assert_eq!(ps[0].breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn a_run_of_failures_trips_a_closed_breaker_within_the_ejection_limit() {
        let sc = with_detection(50);
        let d = OutlierDetection::new(sc.outlier.as_ref().unwrap());
        let mut ps = pods(&sc, 3);
        let mut open = 0;
        assert_eq!(d.observe(&mut ps[0], 10.0, 10.0, 1_000, 3, &mut open), 1);
        assert_eq!(open, 1);
        assert_eq!(
            ps[0].breaker.state(),
            BreakerState::Open { until_ms: 31_000 }
        );
        assert_eq!((ps[0].win_total, ps[0].win_failed), (10.0, 10.0));
        // 50 % of 2 endpoints + 1 open: one is out already.
        assert_eq!(d.observe(&mut ps[1], 10.0, 10.0, 1_000, 2, &mut open), 0);
        // Too few requests for a run of 5, or too few failures.
        let mut open = 0;
        assert_eq!(d.observe(&mut ps[2], 4.0, 4.0, 1_000, 3, &mut open), 0);
        assert_eq!(d.observe(&mut ps[2], 100.0, 10.0, 1_000, 3, &mut open), 0);
        assert_eq!(ps[2].breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_half_open_breaker_judges_its_trial_on_the_step() {
        let sc = with_detection(50);
        let d = OutlierDetection::new(sc.outlier.as_ref().unwrap());
        let mut ps = pods(&sc, 2);
        for p in &mut ps {
            p.breaker.trip(0, d.times, EjectReason::Consecutive5xx);
            p.breaker.poll(30_000);
        }
        let mut open = 0;
        assert_eq!(d.observe(&mut ps[0], 4.0, 1.0, 30_000, 2, &mut open), 0);
        assert_eq!(ps[0].breaker.state(), BreakerState::Closed);
        assert_eq!(d.observe(&mut ps[1], 4.0, 3.0, 30_000, 2, &mut open), 1);
        assert_eq!(
            ps[1].breaker.state(),
            BreakerState::Open { until_ms: 90_000 },
            "ejected again, for longer"
        );
        assert_eq!(open, 0, "a failed trial was open already");
    }

    #[test]
    fn the_interval_sweep_ejects_by_failure_percentage_then_decays_and_resets() {
        let sc = with_detection(50);
        let mut d = OutlierDetection::new(sc.outlier.as_ref().unwrap());
        assert!(!d.sweep_due(9.0, 0.5) && d.sweep_due(9.5, 0.5));
        let mut ps = pods(&sc, 4);
        for (p, failed) in ps.iter_mut().zip([15.0, 12.0, 5.0, 15.0]) {
            p.win_total = 20.0;
            p.win_failed = failed;
        }
        ps[3].win_total = 19.0; // below the request volume
        let mut open = 0;
        assert_eq!(d.sweep(&mut ps, 10_000, 2, &mut open), 1, "50 % of 2");
        assert_eq!(open, 1);
        let states: Vec<bool> = ps
            .iter()
            .map(|p| p.breaker.state() == BreakerState::Closed)
            .collect();
        assert_eq!(states, [false, true, true, true]);
        assert!(ps.iter().all(|p| p.win_total == 0.0 && p.win_failed == 0.0));
        assert!(
            !d.sweep_due(10.0, 0.5) && d.sweep_due(19.5, 0.5),
            "next interval"
        );
    }
}
