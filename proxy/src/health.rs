//! Endpoint health: the one place that decides whether an endpoint may take a request.
//!
//! Two sources compose here. Configuration (a file or, later, the controller over xDS) marks an
//! endpoint `unhealthy` or `draining`; passive outlier detection trips the endpoint's breaker from
//! the responses it gives. [`Eligibility`] combines both. The breaker's transitions are
//! `gofe-core`'s [`Breaker`]; this module feeds it counters and the clock and mirrors its state
//! into atomics, so a pick on the hot path is one atomic load while everything is healthy.
//!
//! An [`EndpointHealth`] outlives configuration swaps (it is keyed by cluster and address), so a
//! weight change pushed every few seconds never un-ejects a failing endpoint.
//!
//! Both views are exported (`gofe_endpoint_health{source}`: `config` or `controller` for the
//! configured health, `outlier` for the breaker) with the effective weight they leave the
//! endpoint (`gofe_endpoint_effective_weight`), updated on configuration swaps and breaker
//! transitions only, never per request.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use gofe_core::outlier::Breaker;
use gofe_core::outlier::{
    consecutive_trip, failure_percentage_trip, BreakerState, EjectReason, EjectionTimes, Transition,
};
use prometheus::{IntCounter, IntGauge};

use crate::config::OutlierDetectionConfig;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Bumped whenever any endpoint's breaker changes state (closed, open, half-open): a
/// balancer with priority levels recomputes its priority load when it sees a new value.
/// Process-wide rather than per cluster, so a transition costs one atomic add and no
/// plumbing; a cluster untouched by it pays one recomputation (a scan of its endpoints) at its
/// next pick.
pub(crate) static HEALTH_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Milliseconds on the process's monotonic clock (Tokio's, so paused-clock tests control it).
pub(crate) fn now_ms() -> u64 {
    static BASE: OnceLock<tokio::time::Instant> = OnceLock::new();
    let base = *BASE.get_or_init(tokio::time::Instant::now);
    u64::try_from(tokio::time::Instant::now().duration_since(base).as_millis()).unwrap_or(u64::MAX)
}

/// How an attempt ended, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response from the endpoint.
    Status(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection broke, or the endpoint answered something that is not HTTP.
    Reset,
    /// No response headers within the (per-try) timeout.
    Timeout,
}

impl Outcome {
    pub(crate) fn is_success(self) -> bool {
        self == Outcome::Success
    }

    /// 502, 503, 504 or a transport failure.
    pub(crate) fn is_gateway_failure(self) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Status(s) => matches!(s, 502..=504),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => true,
        }
    }
}

/// Outlier detection settings, compiled.
#[derive(Clone, Debug)]
pub(crate) struct OutlierPolicy {
    pub(crate) consecutive_5xx: u32,
    pub(crate) consecutive_gateway_failure: u32,
    pub(crate) interval: Duration,
    pub(crate) times: EjectionTimes,
    pub(crate) max_ejection_percent: u32,
    pub(crate) failure_percentage_threshold: u32,
    pub(crate) failure_percentage_request_volume: u64,
    pub(crate) trials: u32,
}

impl OutlierPolicy {
    pub(crate) fn new(c: &OutlierDetectionConfig) -> Self {
        OutlierPolicy {
            consecutive_5xx: c.consecutive_5xx,
            consecutive_gateway_failure: c.consecutive_gateway_failure,
            interval: c.interval,
            times: EjectionTimes {
                base: c.base_ejection_time,
                max: c.max_ejection_time,
            },
            max_ejection_percent: c.max_ejection_percent,
            failure_percentage_threshold: c.failure_percentage_threshold,
            failure_percentage_request_volume: u64::from(c.failure_percentage_request_volume),
            trials: c.half_open_trial_requests.max(1),
        }
    }
}

/// Metric handles of one endpoint's health.
pub(crate) struct HealthStats {
    pub(crate) state: IntGauge,
    /// `gofe_endpoint_health{source="outlier"}`: 1 while the breaker is closed.
    pub(crate) outlier_healthy: IntGauge,
    /// `gofe_endpoint_effective_weight`: the weight the balancer gives the endpoint now.
    pub(crate) effective_weight: IntGauge,
    pub(crate) ejections: [IntCounter; 5],
    /// The cluster's count of endpoints not closed.
    pub(crate) active: IntGauge,
}

fn reason_index(reason: EjectReason) -> usize {
    match reason {
        EjectReason::Consecutive5xx => 0,
        EjectReason::ConsecutiveGatewayFailure => 1,
        EjectReason::FailurePercentage => 2,
        EjectReason::FailedTrial => 3,
        EjectReason::SuccessRate => 4,
    }
}

/// The reasons in `HealthStats::ejections` order.
pub(crate) const REASONS: [EjectReason; 5] = [
    EjectReason::Consecutive5xx,
    EjectReason::ConsecutiveGatewayFailure,
    EjectReason::FailurePercentage,
    EjectReason::FailedTrial,
    EjectReason::SuccessRate,
];

/// One endpoint's passive health, shared by every configuration snapshot that contains it.
pub(crate) struct EndpointHealth {
    cluster: Box<str>,
    endpoint: Box<str>,
    state: AtomicU8,
    open_until_ms: AtomicU64,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    window_total: AtomicU64,
    window_failed: AtomicU64,
    trials_in_flight: AtomicU32,
    /// When the last detection interval began: two snapshots alive at one beat start one
    /// interval, not two.
    interval_started: Mutex<Option<tokio::time::Instant>>,
    /// The latest snapshot's weight when its configured health lets the endpoint serve, else
    /// 0: what the effective weight is while the breaker is closed.
    configured_weight: AtomicU32,
    breaker: Mutex<Breaker>,
    stats: HealthStats,
}

/// The outlier-detection state of an endpoint, as `/config_dump` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OutlierState {
    /// Serving.
    Closed,
    /// Ejected.
    Open,
    /// Taking trial requests only.
    HalfOpen,
}

/// Who set an endpoint's configured health: the `source` label of `gofe_endpoint_health`
/// (the third source, `outlier`, is the proxy's own passive detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HealthSource {
    /// A configuration file, or the static resources of an xDS bootstrap.
    Config,
    /// The control plane, over xDS (EDS `health_status`; the controller's ejections).
    Controller,
}

impl HealthSource {
    /// Both, in label order.
    pub(crate) const ALL: [HealthSource; 2] = [HealthSource::Config, HealthSource::Controller];

    /// The label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            HealthSource::Config => "config",
            HealthSource::Controller => "controller",
        }
    }
}

/// The `source` label of the outlier-detection series of `gofe_endpoint_health`.
pub(crate) const OUTLIER_SOURCE: &str = "outlier";

/// Whether an endpoint may take a request now.
#[derive(Debug)]
pub(crate) enum Eligibility {
    /// Yes, as usual.
    Yes,
    /// Yes, as a half-open trial; the guard frees the trial slot when dropped.
    Trial(TrialGuard),
    /// No.
    No,
}

/// Holds one of an endpoint's half-open trial slots.
#[derive(Debug)]
pub(crate) struct TrialGuard(std::sync::Arc<EndpointHealth>);

impl Drop for TrialGuard {
    fn drop(&mut self) {
        self.0.trials_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for EndpointHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointHealth")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl EndpointHealth {
    pub(crate) fn new(cluster: &str, endpoint: &str, stats: HealthStats) -> Self {
        EndpointHealth {
            cluster: cluster.into(),
            endpoint: endpoint.into(),
            state: AtomicU8::new(CLOSED),
            open_until_ms: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            window_total: AtomicU64::new(0),
            window_failed: AtomicU64::new(0),
            trials_in_flight: AtomicU32::new(0),
            interval_started: Mutex::new(None),
            configured_weight: AtomicU32::new(0),
            breaker: Mutex::new(Breaker::default()),
            stats: {
                stats.outlier_healthy.set(1);
                stats
            },
        }
    }

    /// Called when a snapshot containing this endpoint is built: `weight` is its weight when
    /// its configured health lets it serve, else 0. Updates the effective weight.
    pub(crate) fn set_configured_weight(&self, weight: u32) {
        self.configured_weight.store(weight, Ordering::Relaxed);
        self.publish_effective_weight();
    }

    fn publish_effective_weight(&self) {
        let weight = if self.is_closed() {
            self.configured_weight.load(Ordering::Relaxed)
        } else {
            0
        };
        self.stats.effective_weight.set(i64::from(weight));
    }

    /// The breaker's state and, when open, how long the ejection has left (ms). Not for the
    /// hot path (the admin endpoint's `/config_dump`).
    pub(crate) fn outlier_state(&self) -> (OutlierState, Option<u64>) {
        match self.state.load(Ordering::Acquire) {
            CLOSED => (OutlierState::Closed, None),
            OPEN => (
                OutlierState::Open,
                Some(
                    self.open_until_ms
                        .load(Ordering::Relaxed)
                        .saturating_sub(now_ms()),
                ),
            ),
            _ => (OutlierState::HalfOpen, None),
        }
    }

    /// How many times the endpoint has been ejected (decays while it stays healthy).
    pub(crate) fn times_ejected(&self) -> u32 {
        self.lock().times_ejected()
    }

    /// While the breaker is open (ejected): when the ejection ends (ms, [`now_ms`]).
    /// Half-open counts as not ejected: the endpoint takes trial requests.
    #[inline]
    pub(crate) fn open_until(&self) -> Option<u64> {
        (self.state.load(Ordering::Acquire) == OPEN)
            .then(|| self.open_until_ms.load(Ordering::Relaxed))
    }

    /// Open → half-open if the ejection has ended by `now` (ms), without waiting for a
    /// request to look at the endpoint.
    pub(crate) fn poll_if_expired(&self, now: u64) {
        if self.state.load(Ordering::Acquire) == OPEN
            && now >= self.open_until_ms.load(Ordering::Relaxed)
        {
            self.poll();
        }
    }

    /// True unless the breaker is open or half-open.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// Whether this endpoint may take a request now (passive health only; the caller checks the
    /// configured health status first). `trials` bounds half-open requests in flight.
    #[inline]
    pub(crate) fn eligibility(self: &std::sync::Arc<Self>, trials: u32) -> Eligibility {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Eligibility::Yes,
            OPEN => {
                if now_ms() < self.open_until_ms.load(Ordering::Relaxed) {
                    return Eligibility::No;
                }
                self.poll();
                self.trial_slot(trials)
            }
            _ => self.trial_slot(trials),
        }
    }

    fn trial_slot(self: &std::sync::Arc<Self>, trials: u32) -> Eligibility {
        if self.state.load(Ordering::Acquire) != HALF_OPEN {
            return if self.is_closed() {
                Eligibility::Yes
            } else {
                Eligibility::No
            };
        }
        if self.trials_in_flight.fetch_add(1, Ordering::AcqRel) < trials {
            Eligibility::Trial(TrialGuard(std::sync::Arc::clone(self)))
        } else {
            self.trials_in_flight.fetch_sub(1, Ordering::AcqRel);
            Eligibility::No
        }
    }

    /// Open → half-open once the ejection time has passed.
    fn poll(&self) {
        let mut breaker = self.lock();
        let t = breaker.poll(now_ms());
        self.mirror(&breaker, t);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // A panic while holding this lock cannot leave the breaker inconsistent (every
        // transition is a single assignment), so a poisoned lock is still usable.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mirror(&self, breaker: &Breaker, t: Option<Transition>) {
        let state = breaker.state();
        if let BreakerState::Open { until_ms } = state {
            self.open_until_ms.store(until_ms, Ordering::Relaxed);
        }
        let code = match state {
            BreakerState::Closed => CLOSED,
            BreakerState::Open { .. } => OPEN,
            BreakerState::HalfOpen => HALF_OPEN,
        };
        let before = self.state.swap(code, Ordering::AcqRel);
        if before != code {
            HEALTH_GENERATION.fetch_add(1, Ordering::AcqRel);
        }
        match (before == CLOSED, code == CLOSED) {
            (true, false) => self.stats.active.inc(),
            (false, true) => self.stats.active.dec(),
            _ => {}
        }
        self.stats.state.set(i64::from(code));
        self.stats.outlier_healthy.set(i64::from(code == CLOSED));
        self.publish_effective_weight();
        if let Some(t) = t {
            if let Some(reason) = t.reason {
                self.stats.ejections[reason_index(reason)].inc();
            }
            match (t.to, t.reason) {
                (BreakerState::Open { until_ms }, Some(reason)) => tracing::warn!(
                    cluster = %self.cluster,
                    endpoint = %self.endpoint,
                    reason = reason.as_str(),
                    ejected_for_ms = until_ms.saturating_sub(now_ms()),
                    times_ejected = breaker.times_ejected(),
                    "endpoint ejected"
                ),
                (BreakerState::HalfOpen, _) => tracing::info!(
                    cluster = %self.cluster,
                    endpoint = %self.endpoint,
                    "endpoint half-open: sending trial requests"
                ),
                (BreakerState::Closed, _) => tracing::info!(
                    cluster = %self.cluster,
                    endpoint = %self.endpoint,
                    "endpoint healthy again: breaker closed"
                ),
                _ => {}
            }
        }
    }

    /// Called when the endpoint leaves the configuration: its cluster's ejection gauge must not
    /// keep counting it.
    pub(crate) fn retire(&self) {
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            self.stats.active.dec();
            HEALTH_GENERATION.fetch_add(1, Ordering::AcqRel);
        }
        *self.lock() = Breaker::default();
        self.stats.state.set(0);
        self.stats.outlier_healthy.set(1);
    }

    /// Records a finished attempt. Returns the reason to eject, when a rule trips; the caller
    /// decides (it knows how many of the cluster's endpoints are out already) and calls
    /// [`eject`](Self::eject).
    pub(crate) fn record(&self, outcome: Outcome, policy: &OutlierPolicy) -> Option<EjectReason> {
        if !self.is_closed() {
            return None;
        }
        let total = self.window_total.fetch_add(1, Ordering::Relaxed) + 1;
        if outcome.is_success() {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            return None;
        }
        let failed = self.window_failed.fetch_add(1, Ordering::Relaxed) + 1;
        let c5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let cg = if outcome.is_gateway_failure() {
            self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        if consecutive_trip(c5, policy.consecutive_5xx) {
            Some(EjectReason::Consecutive5xx)
        } else if consecutive_trip(cg, policy.consecutive_gateway_failure) {
            Some(EjectReason::ConsecutiveGatewayFailure)
        } else if failure_percentage_trip(
            total,
            failed,
            policy.failure_percentage_request_volume,
            policy.failure_percentage_threshold,
        ) {
            Some(EjectReason::FailurePercentage)
        } else {
            None
        }
    }

    /// Records the result of a half-open trial: closes or re-opens the breaker.
    pub(crate) fn record_trial(
        &self,
        outcome: Outcome,
        policy: &OutlierPolicy,
    ) -> Option<Transition> {
        let mut breaker = self.lock();
        let t = breaker.trial(outcome.is_success(), now_ms(), policy.times);
        if let Some(t) = t {
            if t.to == BreakerState::Closed {
                self.reset_counters();
            }
        }
        self.mirror(&breaker, t);
        t
    }

    /// Ejects the endpoint (closed → open). No effect when it is not closed.
    pub(crate) fn eject(&self, reason: EjectReason, policy: &OutlierPolicy) -> Option<Transition> {
        let mut breaker = self.lock();
        if breaker.state() != BreakerState::Closed {
            return None;
        }
        let t = breaker.trip(now_ms(), policy.times, reason);
        self.reset_counters();
        self.mirror(&breaker, t);
        t
    }

    fn reset_counters(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.window_total.store(0, Ordering::Relaxed);
        self.window_failed.store(0, Ordering::Relaxed);
    }

    /// Requests and failures in the current failure-percentage window.
    #[cfg(test)]
    pub(crate) fn window(&self) -> (u64, u64) {
        (
            self.window_total.load(Ordering::Relaxed),
            self.window_failed.load(Ordering::Relaxed),
        )
    }

    /// Once per detection interval (`every`): a new failure-percentage window, and one past
    /// ejection forgotten if the endpoint stayed healthy. A second call within half an
    /// interval of the last (an old snapshot still alive at the same beat) does nothing.
    pub(crate) fn next_interval(&self, every: Duration) {
        let now = tokio::time::Instant::now();
        {
            let mut started = self
                .interval_started
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if started.is_some_and(|last| now < last + every / 2) {
                return;
            }
            *started = Some(now);
        }
        self.window_total.store(0, Ordering::Relaxed);
        self.window_failed.store(0, Ordering::Relaxed);
        self.lock().decay();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn health() -> Arc<EndpointHealth> {
        let g = IntGauge::new("g", "g").unwrap();
        let c = || IntCounter::new("c", "c").unwrap();
        Arc::new(EndpointHealth::new(
            "c",
            "e",
            HealthStats {
                state: g,
                outlier_healthy: IntGauge::new("o", "o").unwrap(),
                effective_weight: IntGauge::new("w", "w").unwrap(),
                ejections: [c(), c(), c(), c(), c()],
                active: IntGauge::new("a", "a").unwrap(),
            },
        ))
    }

    fn policy() -> OutlierPolicy {
        OutlierPolicy::new(&OutlierDetectionConfig {
            base_ejection_time: Duration::from_secs(5),
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_then_a_trial_closes() {
        let h = health();
        let p = policy();
        for _ in 0..4 {
            assert_eq!(h.record(Outcome::Status(500), &p), None);
        }
        assert_eq!(
            h.record(Outcome::Status(500), &p),
            Some(EjectReason::Consecutive5xx)
        );
        h.eject(EjectReason::Consecutive5xx, &p).unwrap();
        assert!(matches!(h.eligibility(1), Eligibility::No));
        tokio::time::advance(Duration::from_secs(5)).await;
        let trial = h.eligibility(1);
        assert!(matches!(trial, Eligibility::Trial(_)), "{trial:?}");
        assert!(
            matches!(h.eligibility(1), Eligibility::No),
            "one trial at a time"
        );
        let t = h.record_trial(Outcome::Success, &p).unwrap();
        assert_eq!(t.to, BreakerState::Closed);
        drop(trial);
        assert!(matches!(h.eligibility(1), Eligibility::Yes));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_for_twice_as_long() {
        let h = health();
        let p = policy();
        h.eject(EjectReason::FailurePercentage, &p).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        let trial = h.eligibility(1);
        let t = h.record_trial(Outcome::ConnectFailure, &p).unwrap();
        drop(trial);
        assert!(matches!(t.to, BreakerState::Open { .. }));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            matches!(h.eligibility(1), Eligibility::No),
            "10 s the second time"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(h.eligibility(1), Eligibility::Trial(_)));
    }

    #[test]
    fn failure_percentage_and_success_resets() {
        let h = health();
        let p = policy();
        // Alternating failures never reach 5 in a row, but 10 of 20 is 50% (the rule is
        // checked when a failure arrives).
        let mut tripped = None;
        for i in 0..20 {
            let o = if i % 2 == 1 {
                Outcome::Status(503)
            } else {
                Outcome::Success
            };
            tripped = tripped.or(h.record(o, &p));
        }
        assert_eq!(tripped, Some(EjectReason::FailurePercentage));
        h.next_interval(Duration::from_secs(10));
        assert_eq!(h.record(Outcome::Status(500), &p), None, "a fresh window");
    }

    #[test]
    fn outcome_classes() {
        assert!(Outcome::Status(503).is_gateway_failure());
        assert!(!Outcome::Status(500).is_gateway_failure());
        assert!(Outcome::ConnectFailure.is_gateway_failure());
        assert!(!Outcome::Success.is_gateway_failure());
    }
}
