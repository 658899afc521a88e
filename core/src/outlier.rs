//! Passive outlier detection and the per-endpoint breaker.
//!
//! An endpoint's lifecycle is a breaker: **closed** (serving) → **open** (ejected for
//! `base_ejection_time × times ejected`, capped by `max_ejection_time`) → **half-open** (a bounded
//! trickle of trial requests) → closed again on a successful trial, or open again, for longer, on
//! a failed one. [`Breaker`] is that state machine; the functions beside it are the tripping
//! rules (consecutive failures, failure percentage over a window) and the cluster-wide safety
//! rules (at most `max_ejection_percent` of hosts ejected, panic mode below the healthy
//! threshold), following Envoy's outlier detection semantics.
//!
//! Time is milliseconds on a caller-chosen monotonic clock, passed in; nothing here reads a clock.

use std::time::Duration;

/// Why an endpoint was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EjectReason {
    /// `consecutive_5xx` failures in a row.
    Consecutive5xx,
    /// `consecutive_gateway_failure` gateway failures (502/503/504, connect failure) in a row.
    ConsecutiveGatewayFailure,
    /// At least `failure_percentage_threshold` percent of requests failed in the window.
    FailurePercentage,
    /// A half-open trial request failed.
    FailedTrial,
    /// The success rate fell below the cluster's `mean − factor × stdev` (controller only).
    SuccessRate,
}

impl EjectReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::Consecutive5xx => "consecutive_5xx",
            EjectReason::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectReason::FailurePercentage => "failure_percentage",
            EjectReason::FailedTrial => "failed_trial",
            EjectReason::SuccessRate => "success_rate",
        }
    }
}

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum BreakerState {
    /// Serving normally.
    Closed,
    /// Ejected until the given time (ms).
    Open {
        /// When the ejection ends and trials may begin.
        until_ms: u64,
    },
    /// Taking a bounded number of trial requests.
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 open, 2 half-open: the value of the breaker-state gauge.
    pub fn code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open { .. } => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A change of breaker state, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// Why (set when the transition is an ejection).
    pub reason: Option<EjectReason>,
}

/// How long ejections last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EjectionTimes {
    /// The first ejection's length; the n-th lasts n times this.
    pub base: Duration,
    /// The cap.
    pub max: Duration,
}

/// `base × times`, capped at `max` (and at least `base` when `max < base`, as Envoy does).
pub fn ejection_duration(times: EjectionTimes, times_ejected: u32) -> Duration {
    let scaled = times.base.saturating_mul(times_ejected.max(1));
    scaled.min(times.max.max(times.base))
}

/// One endpoint's breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Breaker {
    state: BreakerState,
    /// Ejections so far, decayed by one per healthy interval ([`Breaker::decay`]).
    times_ejected: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed,
            times_ejected: 0,
        }
    }
}

impl Breaker {
    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How many times the endpoint was ejected (after decay).
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected
    }

    /// Ejects the endpoint now. Has no effect when it is already open.
    pub fn trip(
        &mut self,
        now_ms: u64,
        times: EjectionTimes,
        reason: EjectReason,
    ) -> Option<Transition> {
        if matches!(self.state, BreakerState::Open { .. }) {
            return None;
        }
        let from = self.state;
        self.times_ejected = self.times_ejected.saturating_add(1);
        let until_ms = now_ms.saturating_add(
            u64::try_from(ejection_duration(times, self.times_ejected).as_millis())
                .unwrap_or(u64::MAX),
        );
        self.state = BreakerState::Open { until_ms };
        Some(Transition {
            from,
            to: self.state,
            reason: Some(reason),
        })
    }

    /// Moves an open breaker whose ejection time has passed to half-open.
    pub fn poll(&mut self, now_ms: u64) -> Option<Transition> {
        match self.state {
            BreakerState::Open { until_ms } if now_ms >= until_ms => {
                let from = self.state;
                self.state = BreakerState::HalfOpen;
                Some(Transition {
                    from,
                    to: self.state,
                    reason: None,
                })
            }
            _ => None,
        }
    }

    /// Records the result of a request made while half-open: success closes the breaker,
    /// failure opens it again for longer. Outside half-open it does nothing.
    pub fn trial(
        &mut self,
        success: bool,
        now_ms: u64,
        times: EjectionTimes,
    ) -> Option<Transition> {
        if self.state != BreakerState::HalfOpen {
            return None;
        }
        if success {
            self.state = BreakerState::Closed;
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed,
                reason: None,
            })
        } else {
            self.trip(now_ms, times, EjectReason::FailedTrial)
        }
    }

    /// Called once per detection interval: a closed breaker forgets one past ejection, so an
    /// endpoint that stays healthy is ejected for the base time again next time.
    pub fn decay(&mut self) {
        if self.state == BreakerState::Closed {
            self.times_ejected = self.times_ejected.saturating_sub(1);
        }
    }
}

/// Whether `consecutive` failures in a row reach `threshold` (0 disables the rule).
pub fn consecutive_trip(consecutive: u32, threshold: u32) -> bool {
    threshold > 0 && consecutive >= threshold
}

/// Whether a window of `total` requests with `failed` failures trips the failure-percentage
/// rule: at least `request_volume` requests and at least `threshold_percent` percent failed.
/// A threshold above 100 disables the rule.
pub fn failure_percentage_trip(
    total: u64,
    failed: u64,
    request_volume: u64,
    threshold_percent: u32,
) -> bool {
    threshold_percent <= 100
        && total > 0
        && total >= request_volume
        && u128::from(failed) * 100 >= u128::from(total) * u128::from(threshold_percent)
}

/// The lower end of the one-sided Wilson score interval for a success ratio `rate` observed over
/// `n` trials, at `z` standard deviations (1.645: 95 % confidence): the true ratio is at least
/// this, with that confidence. 0 without trials.
pub fn wilson_lower_bound(rate: f64, n: f64, z: f64) -> f64 {
    if n <= 0.0 || !n.is_finite() || !rate.is_finite() {
        return 0.0;
    }
    let p = rate.clamp(0.0, 1.0);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).clamp(0.0, 1.0)
}

/// How many of `hosts` may be ejected at once: `max_ejection_percent` of them, rounded down,
/// but at least one when the percentage is non-zero (Envoy's rule, so small clusters can
/// eject at all).
pub fn max_ejectable(hosts: usize, max_ejection_percent: u32) -> usize {
    if max_ejection_percent == 0 || hosts == 0 {
        return 0;
    }
    let pct = max_ejection_percent.min(100) as usize;
    (hosts * pct / 100).max(1)
}

/// Whether a cluster is in panic mode: fewer than `panic_threshold_percent` of its hosts are
/// healthy, so the balancer ignores health and spreads load over all hosts (a threshold of 0
/// disables panic mode).
pub fn in_panic(hosts: usize, healthy: usize, panic_threshold_percent: u32) -> bool {
    hosts > 0
        && panic_threshold_percent > 0
        && (healthy as u128) * 100 < (hosts as u128) * u128::from(panic_threshold_percent.min(100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: EjectionTimes = EjectionTimes {
        base: Duration::from_secs(5),
        max: Duration::from_secs(12),
    };

    #[test]
    fn lifecycle_closed_open_half_open_closed() {
        let mut b = Breaker::default();
        let t = b.trip(1_000, T, EjectReason::Consecutive5xx).unwrap();
        assert_eq!(t.from, BreakerState::Closed);
        assert_eq!(t.to, BreakerState::Open { until_ms: 6_000 });
        assert_eq!(t.reason, Some(EjectReason::Consecutive5xx));
        assert!(
            b.trip(2_000, T, EjectReason::Consecutive5xx).is_none(),
            "already open"
        );
        assert!(b.poll(5_999).is_none());
        assert_eq!(b.poll(6_000).unwrap().to, BreakerState::HalfOpen);
        assert_eq!(b.trial(true, 6_100, T).unwrap().to, BreakerState::Closed);
        assert_eq!(b.times_ejected(), 1);
    }

    #[test]
    fn failed_trial_reopens_for_longer_capped() {
        let mut b = Breaker::default();
        b.trip(0, T, EjectReason::Consecutive5xx);
        b.poll(5_000);
        let t = b.trial(false, 5_000, T).unwrap();
        assert_eq!(t.to, BreakerState::Open { until_ms: 15_000 }, "2 × 5 s");
        assert_eq!(t.reason, Some(EjectReason::FailedTrial));
        b.poll(15_000);
        let t = b.trial(false, 15_000, T).unwrap();
        assert_eq!(
            t.to,
            BreakerState::Open { until_ms: 27_000 },
            "3 × 5 s capped at 12 s"
        );
    }

    #[test]
    fn decay_forgets_ejections_only_while_closed() {
        let mut b = Breaker::default();
        b.trip(0, T, EjectReason::FailurePercentage);
        b.decay();
        assert_eq!(b.times_ejected(), 1, "no decay while open");
        b.poll(5_000);
        b.trial(true, 5_000, T);
        b.decay();
        assert_eq!(b.times_ejected(), 0);
        b.decay();
        assert_eq!(b.times_ejected(), 0);
    }

    #[test]
    fn trial_outside_half_open_is_ignored() {
        let mut b = Breaker::default();
        assert!(b.trial(false, 0, T).is_none());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn tripping_rules() {
        assert!(consecutive_trip(5, 5));
        assert!(!consecutive_trip(4, 5));
        assert!(!consecutive_trip(100, 0), "0 disables");
        // The default profile: >= 50% of >= 20 requests.
        assert!(failure_percentage_trip(20, 10, 20, 50));
        assert!(!failure_percentage_trip(19, 19, 20, 50), "too few requests");
        assert!(!failure_percentage_trip(20, 9, 20, 50));
        assert!(
            !failure_percentage_trip(100, 100, 20, 101),
            "over 100 disables"
        );
        assert!(!failure_percentage_trip(0, 0, 0, 0));
    }

    #[test]
    fn safety_rules() {
        assert_eq!(max_ejectable(4, 10), 1, "at least one");
        assert_eq!(max_ejectable(4, 50), 2);
        assert_eq!(max_ejectable(4, 100), 4);
        assert_eq!(max_ejectable(4, 0), 0);
        assert_eq!(max_ejectable(0, 50), 0);
        assert!(in_panic(4, 1, 50));
        assert!(!in_panic(4, 2, 50));
        assert!(!in_panic(4, 0, 0), "0 disables panic");
        assert!(!in_panic(0, 0, 50));
    }

    #[test]
    fn the_wilson_bound_grows_with_the_evidence() {
        // All of 20 succeed: at least 20 / (20 + z²) with 95 % confidence.
        let z = 1.645;
        assert!((wilson_lower_bound(1.0, 20.0, z) - 20.0 / (20.0 + z * z)).abs() < 1e-12);
        assert!(wilson_lower_bound(1.0, 5.0, z) < wilson_lower_bound(1.0, 50.0, z));
        // Half of them: the bound is below a half, however many.
        for n in [6.0, 60.0, 6_000.0] {
            assert!(wilson_lower_bound(0.5, n, z) < 0.5);
        }
        assert!(wilson_lower_bound(0.5, 6_000.0, z) > 0.48);
        assert_eq!(wilson_lower_bound(1.0, 0.0, z), 0.0);
        assert_eq!(wilson_lower_bound(f64::NAN, 10.0, z), 0.0);
    }

    proptest! {
        #[test]
        fn the_wilson_bound_is_a_ratio_below_the_observed_one(
            rate in 0.0f64..=1.0,
            n in 1.0f64..1e6,
        ) {
            let b = wilson_lower_bound(rate, n, 1.645);
            prop_assert!((0.0..=rate + 1e-12).contains(&b), "{b} for {rate} over {n}");
        }

        #[test]
        fn breaker_never_skips_a_state(ops in prop::collection::vec((0u8..4, 0u64..20_000, any::<bool>()), 0..60)) {
            // Open is only entered by a trip; half-open only from open; closed only from
            // half-open (after the start).
            let mut b = Breaker::default();
            let mut now = 0;
            for (op, dt, ok) in ops {
                now += dt;
                let before = b.state();
                let t = match op {
                    0 => b.trip(now, T, EjectReason::Consecutive5xx),
                    1 => b.poll(now),
                    2 => b.trial(ok, now, T),
                    _ => { b.decay(); None }
                };
                if let Some(t) = t {
                    prop_assert_eq!(t.from, before);
                    match (t.from, t.to) {
                        (BreakerState::Closed, BreakerState::Open { .. })
                        | (BreakerState::HalfOpen, BreakerState::Open { .. })
                        | (BreakerState::Open { .. }, BreakerState::HalfOpen)
                        | (BreakerState::HalfOpen, BreakerState::Closed) => {}
                        other => prop_assert!(false, "illegal transition {:?}", other),
                    }
                    if let BreakerState::Open { until_ms } = t.to {
                        prop_assert!(until_ms >= now + 5_000 && until_ms <= now + 12_000);
                    }
                } else {
                    prop_assert_eq!(b.state(), before);
                }
            }
        }

        #[test]
        fn ejectable_never_exceeds_hosts(hosts in 0usize..1000, pct in 0u32..200) {
            let n = max_ejectable(hosts, pct);
            prop_assert!(n <= hosts);
        }
    }
}
