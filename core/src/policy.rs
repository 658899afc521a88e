//! The controller's decisions: from the mesh's per-endpoint signals to endpoint weights and
//! ejections, with a reason for each.
//!
//! [`decide`] is a pure function of the policy, the operator's base weights, the previous
//! [`ClusterState`], the signals and the current time. The live controller and the offline
//! simulator call it the same way, so a replay of recorded signals reproduces production's
//! decisions exactly.
//!
//! One decision step:
//!
//! 1. **Freshness.** An endpoint whose signals are missing or older than `stale_after` is *held*:
//!    it keeps its state and weight, and nothing is decided about it (stale data never ejects);
//!    a slow-start ramp stands still while it is held and resumes where it was. When no
//!    endpoint has fresh data the whole cluster is held (fail static: no weight or state
//!    advances), and after `relax_after` without any fresh data it relaxes to the operator's
//!    base weights.
//! 2. **Breakers.** Each endpoint is a [`Breaker`]: an ejection lasts `base_ejection_time ×
//!    times ejected` (capped), then the endpoint is half-open with a small trial weight; a
//!    trial of at least `half_open_min_requests` passes only when its success rate is clear of
//!    the ejection threshold with 95 % confidence ([`TRIAL_CONFIDENCE`]) and then starts a
//!    slow-start ramp back to full weight, fails (ejecting again, for longer) when the trial
//!    itself meets an ejection rule, and otherwise goes on.
//! 3. **Outliers.** Envoy's success-rate rule (below `mean − factor × stdev` of the cluster,
//!    with minimum hosts and request volume) and failure-percentage rule pick ejection
//!    candidates, worst first, while at most `max_ejection_percent` of the cluster is out, the
//!    cluster keeps some capacity, and ejecting would not push it under the panic threshold.
//! 4. **Latency.** A smoothed latency per endpoint (EWMA) is compared with the median of the
//!    others; an endpoint slower or faster than that by more than the noise moves its weight
//!    multiplier a little against the difference, and one that is not returns to its base
//!    weight (the damped loop below). Slow start is paced by the same comparison.
//! 5. **Weights.** base weight × latency multiplier × ramp, in hundredths (so the proxy's integer
//!    weights keep the precision); an ejected endpoint gets weight 0 and is marked unhealthy.
//!
//! # Latency weighting as a control loop
//!
//! Weighting by latency is feedback: a weight moves load, the load moves the endpoint's latency,
//! the latency moves the weight. Whether that settles depends on three things.
//!
//! * **Delay.** The signals are a window's average (30 s in the controller and the simulator,
//!   which decide every 5 s), smoothed once more, so the latency a weight change causes is fully
//!   seen at least one signal window later: about six decisions.
//! * **The plant's gain.** Latency rises with load more than in proportion once an endpoint is
//!   busy. For an M/M/c queue (50 ms, 8 workers) the elasticity `d ln latency / d ln share` is
//!   about 1.4 at 78 % utilisation and 5.8 at 90 %; past capacity a backlog builds and latency
//!   becomes the *integral* of the excess load, so it keeps rising, and later keeps falling,
//!   for a while after its cause is gone.
//! * **The controller's gain.** The rule before this one set the multiplier to
//!   `median / latency` (gain 1 in log terms) at every decision, up to 50 % per step. Per
//!   window of delay that is a gain of about 6 × 1.4 ≈ 8 at 78 % load; a delayed loop
//!   oscillates beyond about 1. So it did: weight went to the endpoint that looked fast, which
//!   was the slow one a window later; weight went away again, and so on. Nothing pulled weights
//!   back either: the 10 % hysteresis band froze an endpoint that matched the median at ×0.95,
//!   and noise between equal sub-millisecond backends (a large ratio of tiny latencies) gave
//!   them 91 and 111. (`scenarios/policy-oscillation.yaml`: shares swinging between 0.035 and
//!   0.19 of fair 0.1 for two hours, 5,179 SLO-violating seconds where round robin had 14.)
//!
//! The rule now ([`LATENCY_GAIN`] and the constants beside it; `hysteresis_percent`,
//! `max_step_percent`, `min_weight_percent` and `max_weight_percent` from the [`Policy`]):
//!
//! * **Dead band.** The difference `e = ln((latency + 1 ms) / (others' median + 1 ms))` counts
//!   only beyond the wider of `hysteresis_percent` and 3 standard errors of it (`2 / √requests`
//!   for each side), and only by its excess over that band. Statistically indistinguishable
//!   endpoints never move; differences well under a millisecond never matter.
//! * **Small integral gain.** The log multiplier moves by `−0.25 × excess` per signal window,
//!   spread over the window's decisions (`Δt / window` of it at each). The loop gain per window
//!   is then about 0.35 at 78 % load.
//! * **Anti-windup.** While the endpoint's latency already moves the right way by more than the
//!   band per decision, the multiplier holds: the earlier moves are still arriving (and a
//!   backlog drains on its own).
//! * **Rate limit and bounds.** At most `max_step_percent` per decision, within the floor and
//!   the cap.
//! * **Decay.** Inside the band, or with nothing to compare (too few requests, one endpoint),
//!   the log multiplier returns towards 0 by half of itself plus 0.05 per window, and reaches
//!   the base weight exactly; a difference that points home moves it at least as fast, so an
//!   endpoint just outside the band is not left hovering off its base weight.
//! * **No judgement on partial evidence.** A window that covers an endpoint at a fraction of
//!   its share (ramping up, or within a window of its ramp's end) is not in anyone's median and
//!   can only lower its weight, by being slower. Its slow-start ramp stands still while it is
//!   slower (cold, or a slow machine) and its multiplier is above the floor, and runs
//!   [`RAMP_SPEEDUP`] times as fast while it is not (warm).
//!
//! What that keeps and costs: a 10× slower endpoint (100 requests a window or more, latencies
//! of 2 ms and up) loses at least 75 % of its share within N = 25 decisions (about two minutes
//! at 5 s on a 30 s window) and ends at the floor — slower than the old rule's four decisions,
//! which is the price of a gain that does not oscillate; failing endpoints are the outlier
//! rules' to eject, not this one's. The property tests (`policy/tests/latency.rs`) check that
//! equal endpoints keep equal weights under noise, that equal endpoints behind a queueing model
//! settle back to equal shares after a ±40 % disturbance at up to 90 % utilisation (and are not
//! moved by noise up to 97 %), and the 10× case.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::fmt::push_fixed;
use crate::outlier::{
    max_ejectable, wilson_lower_bound, Breaker, BreakerState, EjectReason, EjectionTimes,
};

use self::latency::{window_fraction, Comparison, LatencyLoop};
pub use self::latency::{
    LATENCY_CONFIDENCE, LATENCY_CV, LATENCY_DECAY, LATENCY_DECAY_MIN, LATENCY_GAIN,
    LATENCY_RESOLUTION,
};

mod latency;

/// How much faster a slow-start ramp runs while the ramping endpoint's latency is no higher
/// than the cluster's (within the latency rule's dead band): a warm newcomer gets its full
/// share in a third of `slow_start_window`; a cold (slower) one takes the whole window.
pub const RAMP_SPEEDUP: f64 = 3.0;

/// A half-open trial passes only when, with this one-sided confidence (1.645 standard
/// deviations: 95 %), the endpoint's success rate is above the failure-percentage rule's by a
/// tenth of its failure allowance ([`TRIAL_HYSTERESIS`]): the Wilson lower bound of the trial's
/// success rate is at least `1 − 0.9 × failure_percentage_threshold` (and the success rate is
/// not below the cluster's success-rate threshold). It fails when the trial itself would be
/// ejected (failure ratio at or above the threshold, or success below the cluster's
/// threshold). In between the endpoint stays half-open, at its trial weight, until the
/// evidence decides. An endpoint failing exactly half its requests is never readmitted.
pub const TRIAL_CONFIDENCE: f64 = 1.645;

/// The hysteresis between ejection and readmission, as a fraction of the failure-percentage
/// threshold: readmitted only below `(1 − 0.1) × threshold` failures (see [`TRIAL_CONFIDENCE`]).
pub const TRIAL_HYSTERESIS: f64 = 0.1;

/// Weights are published in hundredths of the base weight.
pub const WEIGHT_SCALE: f64 = 100.0;

/// The most a half-open endpoint's trial weight rises to, in percent of its base weight, to
/// gather its trial requests within a signal window (see [`Policy::half_open_weight_percent`]).
pub const MAX_TRIAL_PERCENT: f64 = 50.0;

/// A cluster's decision policy. Field names follow Envoy's outlier detection and Istio's
/// DestinationRule where they share a concept; every field has a working default.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Success-rate rule: hosts with enough volume needed before it applies (Envoy: 5).
    pub success_rate_minimum_hosts: usize,
    /// Success-rate rule: requests in the window for a host to count (Envoy: 100).
    pub success_rate_request_volume: f64,
    /// Success-rate rule: eject below `mean − factor × stdev` (Envoy: 1.9).
    pub success_rate_stdev_factor: f64,
    /// Failure-percentage rule: eject at or above this failure ratio (0–1; above 1 disables).
    /// Default 0.5.
    pub failure_percentage_threshold: f64,
    /// Failure-percentage rule: hosts with enough volume needed (default 1).
    pub failure_percentage_minimum_hosts: usize,
    /// Failure-percentage rule: requests in the window for a host to count (default 20).
    pub failure_percentage_request_volume: f64,
    /// Length of a first ejection (default 30 s).
    pub base_ejection_time: Duration,
    /// Longest ejection (default 300 s).
    pub max_ejection_time: Duration,
    /// Most endpoints out at once, in percent (at least one when non-zero; default 10).
    pub max_ejection_percent: u32,
    /// Trial weight of a half-open endpoint, in percent of its base weight (default 5): the
    /// least it gets. When the cluster's traffic at that weight would take longer than a
    /// signal window to give the trial its `half_open_min_requests`, the trial gets the weight
    /// that gathers them within one window instead, up to [`MAX_TRIAL_PERCENT`] of its base:
    /// the trial's exposure is bounded by its request count, not by its weight, so a quiet
    /// cluster does not keep a recovered endpoint out for minutes.
    pub half_open_weight_percent: u32,
    /// Requests a half-open endpoint must serve in a window before its trial is judged
    /// (default 20, the failure-percentage rule's volume: a trial is judged on as much evidence
    /// as an ejection). See [`TRIAL_CONFIDENCE`] for the rule.
    pub half_open_min_requests: f64,
    /// Time a recovered (or new) endpoint takes to ramp from its trial weight to full weight
    /// (Envoy's `slow_start_window`; default 30 s; 0 disables). With latency weighting the ramp
    /// runs [`RAMP_SPEEDUP`] times as fast while the endpoint is no slower than the others,
    /// and stands still while it is slower, has no fresh signals, or the cluster is held.
    pub slow_start_window: Duration,
    /// Weigh endpoints by their latency relative to the cluster (default on).
    pub latency_weighting: bool,
    /// Lowest latency multiplier, in percent of the base weight (default 10).
    pub min_weight_percent: u32,
    /// Highest latency multiplier, in percent of the base weight (default 200).
    pub max_weight_percent: u32,
    /// Largest change of the latency multiplier in one decision, in percent of its value
    /// (default 50).
    pub max_step_percent: u32,
    /// The latency rule's smallest dead band, in percent: latency differences from the others'
    /// median smaller than this (or than 3 standard errors, when wider) do not move weights,
    /// and inside it weights return to base (default 10). See the module documentation.
    pub hysteresis_percent: u32,
    /// Half-life of the latency EWMA over the signal windows (default 5 s: one decision; the
    /// window already averages, and more smoothing is more delay in the loop).
    pub latency_half_life: Duration,
    /// Requests in the window before an endpoint's latency is trusted (default 10).
    pub latency_min_requests: f64,
    /// Below this percentage of healthy endpoints the proxies balance over all of them (panic
    /// mode); the controller never ejects into it (default 50, as the proxy).
    pub panic_threshold_percent: u32,
    /// Signals older than this are stale (default 30 s).
    pub stale_after: Duration,
    /// With no fresh signals for this long, weights relax to the base weights (default 300 s).
    pub relax_after: Duration,
    /// How often a healthy endpoint forgets one past ejection (default 60 s).
    pub decay_interval: Duration,
    /// The window the signals are computed over (the controller's `signals.window`; default
    /// 30 s). The latency rule's moves are per window: a decision makes the share of one that
    /// its new evidence covers, so a window holding only a moment of data (the first steps
    /// after a start or a restart) moves weights by that moment's share, not by a window's.
    /// `0s` takes each endpoint's evidence as a whole window.
    pub signal_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100.0,
            success_rate_stdev_factor: 1.9,
            failure_percentage_threshold: 0.5,
            failure_percentage_minimum_hosts: 1,
            failure_percentage_request_volume: 20.0,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            half_open_weight_percent: 5,
            half_open_min_requests: 20.0,
            slow_start_window: Duration::from_secs(30),
            latency_weighting: true,
            min_weight_percent: 10,
            max_weight_percent: 200,
            max_step_percent: 50,
            hysteresis_percent: 10,
            latency_half_life: Duration::from_secs(5),
            latency_min_requests: 10.0,
            panic_threshold_percent: 50,
            stale_after: Duration::from_secs(30),
            relax_after: Duration::from_secs(300),
            decay_interval: Duration::from_secs(60),
            signal_window: Duration::from_secs(30),
        }
    }
}

/// What the mesh measured for one endpoint over the last window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Signals {
    /// Requests in the window.
    pub requests: f64,
    /// Requests per second.
    pub rps: f64,
    /// Share of requests that did not fail (0–1).
    pub success_rate: f64,
    /// A representative latency in seconds (the controller passes a configured quantile).
    pub latency: f64,
    /// When the sample was taken (ms on the caller's clock).
    pub sampled_at_ms: u64,
}

/// One endpoint's decision state, carried from step to step.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EndpointState {
    /// The breaker (closed, ejected, half-open).
    pub breaker: Breaker,
    /// Latency multiplier of the base weight (1.0 = base).
    pub multiplier: f64,
    /// Smoothed latency (seconds) and when it was last updated.
    pub latency_ewma: Option<(f64, u64)>,
    /// When the latency rule last decided the multiplier (its moves are spread over a signal
    /// window of decisions).
    pub weighed_at_ms: Option<u64>,
    /// Start of a slow-start ramp, when one is running.
    pub ramp_from_ms: Option<u64>,
    /// When its slow-start ramp's progress was last accounted: the ramp's clock stops while the
    /// endpoint is held (no fresh signals) or slower than the cluster, and runs
    /// [`RAMP_SPEEDUP`] times as fast while it is no slower.
    pub ramp_seen_ms: Option<u64>,
    /// When its last slow-start ramp ended: the latency rule leaves the endpoint alone until
    /// its signal window no longer covers the ramp (a window of a fraction of its share says
    /// nothing about its latency at full share).
    pub ramp_ended_ms: Option<u64>,
    /// When fresh signals were last seen.
    pub last_fresh_ms: Option<u64>,
    /// When a past ejection was last forgotten.
    pub last_decay_ms: u64,
    /// What its half-open trial has seen so far, summed over the steps since it went
    /// half-open (`None` outside a trial).
    #[cfg_attr(feature = "serde", serde(default))]
    pub trial: Option<TrialTally>,
}

/// A half-open trial's requests, accumulated step by step: each step adds the requests its
/// signals saw since the previous one (`rps × Δt`, at most the window's count), so a trial at a
/// small trial weight still gathers `half_open_min_requests` however short the signal window
/// is — judged on one window alone, a trial whose window never holds that many requests would
/// stay half-open for as long as the load is low.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TrialTally {
    /// Requests seen by the trial.
    pub requests: f64,
    /// Of those, the ones that did not fail.
    pub successes: f64,
    /// Up to when they were counted (ms).
    pub seen_ms: u64,
}

impl TrialTally {
    /// Adds what `s` saw since the last count, up to `now_ms`.
    fn add(&mut self, s: &Signals, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.seen_ms) as f64 / 1000.0;
        let new = (s.rps * dt).min(s.requests).max(0.0);
        if new.is_finite() {
            self.requests += new;
            self.successes += new * s.success_rate.clamp(0.0, 1.0);
        }
        self.seen_ms = now_ms;
    }

    /// The signals the trial is judged on: the accumulated requests when they are more than
    /// the window holds, else the window's.
    fn judged(&self, s: &Signals) -> Signals {
        if self.requests > s.requests {
            Signals {
                requests: self.requests,
                success_rate: self.successes / self.requests,
                ..*s
            }
        } else {
            *s
        }
    }
}

impl EndpointState {
    fn new(now_ms: u64, ramp: bool) -> Self {
        EndpointState {
            breaker: Breaker::default(),
            multiplier: 1.0,
            latency_ewma: None,
            weighed_at_ms: None,
            ramp_from_ms: ramp.then_some(now_ms),
            ramp_seen_ms: ramp.then_some(now_ms),
            ramp_ended_ms: None,
            last_fresh_ms: None,
            last_decay_ms: now_ms,
            trial: None,
        }
    }
}

/// A cluster's decision state: one entry per endpoint, ordered by address.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClusterState {
    /// Per endpoint (keyed by address).
    pub endpoints: BTreeMap<String, EndpointState>,
    /// When the cluster first had fresh data, or last had it.
    pub last_fresh_ms: Option<u64>,
}

/// What a decision step concluded for the cluster as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Decided from fresh signals.
    Normal,
    /// No fresh signals: the previous decisions hold.
    FailStatic,
    /// No fresh signals for `relax_after`: the base weights apply.
    Relaxed,
    /// Fewer than `panic_threshold_percent` healthy: the proxies balance over all endpoints.
    Panic,
}

/// Where an endpoint stands after a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Status {
    /// Serving at its computed weight.
    Serving,
    /// Ejected until the given time.
    Ejected {
        /// End of the ejection (ms).
        until_ms: u64,
    },
    /// Taking trial traffic.
    HalfOpen,
    /// Ramping back after recovery (or after joining), at this fraction of full weight.
    Ramping {
        /// 0–1.
        fraction: f64,
    },
    /// No fresh data: last decision held.
    Held,
    /// No fresh data for long: base weight.
    Relaxed,
}

/// The decision for one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointDecision {
    /// The endpoint's address.
    pub endpoint: String,
    /// The weight to publish (hundredths of the base weight unit; 0 when ejected).
    pub weight: u32,
    /// The health to publish (false when ejected).
    pub healthy: bool,
    /// Where it stands.
    pub status: Status,
    /// The latency multiplier applied.
    pub multiplier: f64,
    /// Why, in words.
    pub reason: String,
    /// The signals it was decided on, when fresh.
    pub signals: Option<Signals>,
}

/// A notable change, for logs and Kubernetes Events.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An endpoint was ejected.
    Ejected {
        /// Its address.
        endpoint: String,
        /// Why.
        reason: EjectReason,
        /// Until when (ms).
        until_ms: u64,
    },
    /// An ejected endpoint began taking trial traffic.
    HalfOpen {
        /// Its address.
        endpoint: String,
    },
    /// A half-open endpoint passed its trial and is ramping back.
    Recovered {
        /// Its address.
        endpoint: String,
    },
}

/// The outcome of one decision step.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Per endpoint, in the order of the base weights given.
    pub endpoints: Vec<EndpointDecision>,
    /// The state to pass to the next step.
    pub state: ClusterState,
    /// The cluster's mode.
    pub mode: Mode,
    /// What changed.
    pub events: Vec<Event>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Success-rate statistics of a cluster: `(mean, stdev, threshold, hosts)`.
fn success_rate_stats(policy: &Policy, rates: &[f64]) -> Option<(f64, f64, f64, usize)> {
    if rates.len() < policy.success_rate_minimum_hosts.max(1) {
        return None;
    }
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    let stdev = var.sqrt();
    Some((
        mean,
        stdev,
        mean - policy.success_rate_stdev_factor * stdev,
        rates.len(),
    ))
}

/// The median of `sorted` (ascending), without one element equal to `without` when given
/// (the median of the others); `None` when nothing is left.
fn median_of(sorted: &[f64], without: Option<f64>) -> Option<f64> {
    let skip = without.map(|x| sorted.partition_point(|v| v.total_cmp(&x).is_lt()));
    let n = sorted.len() - usize::from(skip.is_some_and(|p| p < sorted.len()));
    if n == 0 {
        return None;
    }
    // The j-th of the remaining values.
    let at = |j: usize| match skip {
        Some(p) if j >= p => sorted[j + 1],
        _ => sorted[j],
    };
    Some(if n.is_multiple_of(2) {
        (at(n / 2 - 1) + at(n / 2)) / 2.0
    } else {
        at(n / 2)
    })
}

/// The first 8 bytes of `s`, zero-padded, as a big-endian number: two strings whose keys differ
/// compare as their keys do (a string that ends early pads with the smallest byte), so a sort
/// compares whole strings only on equal keys.
fn prefix_key(s: &str) -> u64 {
    let mut key = [0u8; 8];
    let n = s.len().min(8);
    key[..n].copy_from_slice(&s.as_bytes()[..n]);
    u64::from_be_bytes(key)
}

/// Advances `it` (ordered by key) to `key` and returns its value, if present.
fn seek<'a, V>(
    it: &mut std::iter::Peekable<std::collections::btree_map::Iter<'a, String, V>>,
    key: &str,
) -> Option<&'a V> {
    while let Some(&(k, v)) = it.peek() {
        match k.as_str().cmp(key) {
            Ordering::Less => {
                it.next();
            }
            Ordering::Equal => return Some(v),
            Ordering::Greater => return None,
        }
    }
    None
}

/// One decision step. `base` lists the cluster's endpoints with the operator's weights;
/// `signals` holds what is known for each (absent: missing). Deterministic: the same inputs
/// give the same decision.
///
/// Entries of `base` that repeat an address share one state, as keys of a map would. Inside,
/// a step works on vectors with one slot per distinct address (addresses sorted once, then
/// merged with `previous` and `signals`, which are ordered by address), so `n` endpoints cost
/// `O(n log n)` address comparisons and few allocations besides the decision itself.
pub fn decide(
    policy: &Policy,
    base: &[(String, u32)],
    previous: &ClusterState,
    signals: &BTreeMap<String, Signals>,
    now_ms: u64,
) -> Decision {
    step(policy, base, Cow::Borrowed(previous), signals, now_ms)
}

/// [`decide`], taking the previous state by value, for a caller that replaces its state with
/// the decision's anyway (the simulator): when the endpoints are those of the previous step,
/// the state's map is updated in place rather than rebuilt. The decision is the one
/// `decide(policy, base, &previous, signals, now_ms)` makes.
pub fn decide_owned(
    policy: &Policy,
    base: &[(String, u32)],
    previous: ClusterState,
    signals: &BTreeMap<String, Signals>,
    now_ms: u64,
) -> Decision {
    step(policy, base, Cow::Owned(previous), signals, now_ms)
}

/// The decision step, as the module documentation lists it: freshness (or fail static /
/// relaxed), breakers and trials, outliers and their guards, latency weighting, decay, and
/// publication.
fn step(
    policy: &Policy,
    base: &[(String, u32)],
    previous: Cow<'_, ClusterState>,
    signals: &BTreeMap<String, Signals>,
    now_ms: u64,
) -> Decision {
    let first_step = previous.endpoints.is_empty();
    let mut slots = Slots::gather(policy, base, &previous, signals, now_ms);
    if !slots.any_fresh() {
        return slots.hold_or_relax(policy, previous, first_step, now_ms);
    }
    let times = ejection_times(policy);
    let mut events = Vec::new();
    let sr = success_rate_stats(policy, &slots.serving_success_rates(policy));
    slots.judge_trials(policy, sr, times, now_ms, &mut events);
    let candidates = slots.outlier_candidates(policy, sr);
    let serving = base.iter().filter(|(_, w)| *w > 0).count();
    let guard = EjectionGuard::new(policy, serving);
    slots.eject(candidates, guard, times, now_ms, &mut events);
    let samples = slots.smooth_latencies(policy, now_ms);
    let compared = slots.weigh_by_latency(policy, &samples, now_ms);
    slots.pace_ramps(policy, &compared, now_ms);
    slots.decay_ejections(policy, now_ms);
    let (endpoints, healthy) = slots.publish(policy, now_ms);
    Decision {
        endpoints,
        state: slots.into_state(previous, Some(now_ms)),
        mode: cluster_mode(policy, serving, healthy),
        events,
    }
}

fn ejection_times(policy: &Policy) -> EjectionTimes {
    EjectionTimes {
        base: policy.base_ejection_time,
        max: policy.max_ejection_time,
    }
}

/// Whether signals sampled at `s.sampled_at_ms` count at `now_ms`: not older than
/// `stale_after_ms`, and every value a decision reads is finite.
fn is_fresh(s: &Signals, now_ms: u64, stale_after_ms: u64) -> bool {
    now_ms.saturating_sub(s.sampled_at_ms) <= stale_after_ms
        && s.success_rate.is_finite()
        && s.requests.is_finite()
        && s.latency.is_finite()
}

/// The verdict on a half-open endpoint's trial.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Trial {
    /// Confidently clear of both outlier rules: readmitted.
    Passes,
    /// The trial itself meets an ejection rule: ejected again.
    Fails,
    /// Neither yet: the trial's success rate's lower bound, and what it must reach.
    Undecided { bound: f64, needed: f64 },
}

/// Judges a trial ([`TRIAL_CONFIDENCE`]): it fails on the ejection rules themselves (failure
/// ratio at or above the failure-percentage threshold, or success below the cluster's
/// success-rate threshold) and passes only with the Wilson lower bound of its success rate at
/// least `1 − (1 − TRIAL_HYSTERESIS) × threshold`.
fn judge_trial(policy: &Policy, s: &Signals, sr: Option<(f64, f64, f64, usize)>) -> Trial {
    let threshold = policy.failure_percentage_threshold;
    let rule_on = threshold <= 1.0;
    let below_sr = sr.is_some_and(|(_, _, t, _)| s.success_rate < t);
    if (rule_on && 1.0 - s.success_rate >= threshold) || below_sr {
        return Trial::Fails;
    }
    let needed = if rule_on {
        1.0 - (1.0 - TRIAL_HYSTERESIS) * threshold
    } else {
        0.0
    };
    let bound = wilson_lower_bound(s.success_rate, s.requests, TRIAL_CONFIDENCE);
    if bound >= needed {
        Trial::Passes
    } else {
        Trial::Undecided { bound, needed }
    }
}

/// Envoy's success-rate rule: with the cluster's statistics, an endpoint with enough requests
/// below the threshold is an outlier; the reason says why.
fn success_rate_outlier(
    policy: &Policy,
    s: &Signals,
    sr: Option<(f64, f64, f64, usize)>,
) -> Option<String> {
    let (mean, stdev, threshold, hosts) = sr?;
    (s.requests >= policy.success_rate_request_volume && s.success_rate < threshold).then(|| {
        format!(
            "success rate {:.3} below {threshold:.3} (mean {mean:.3} − {} × stdev {stdev:.3}, {hosts} hosts)",
            s.success_rate, policy.success_rate_stdev_factor
        )
    })
}

/// The failure-percentage rule: with at least `failure_percentage_minimum_hosts` hosts of enough
/// volume (`fp_hosts`), an endpoint with enough requests failing at or above the threshold is
/// an outlier; the reason says why.
fn failure_percentage_outlier(policy: &Policy, s: &Signals, fp_hosts: usize) -> Option<String> {
    let failure = 1.0 - s.success_rate;
    (policy.failure_percentage_threshold <= 1.0
        && fp_hosts >= policy.failure_percentage_minimum_hosts
        && s.requests >= policy.failure_percentage_request_volume
        && failure >= policy.failure_percentage_threshold)
        .then(|| {
            format!(
                "failure ratio {failure:.3} ≥ {:.3} over {:.0} requests",
                policy.failure_percentage_threshold, s.requests
            )
        })
}

/// An ejection candidate: its slot (which orders candidates as their addresses do), its
/// success rate (worst first), the rule that picked it and why.
struct Candidate {
    slot: usize,
    success_rate: f64,
    reason: EjectReason,
    why: String,
}

/// The capacity guards on ejection: at most `max_ejection_percent` of the serving endpoints
/// out (and never all of them), and never below the panic threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
struct EjectionGuard {
    /// Endpoints with a non-zero base weight.
    serving: usize,
    /// Most endpoints out at once.
    allowed: usize,
    /// Fewest endpoints that must keep serving.
    panic_floor: usize,
}

impl EjectionGuard {
    fn new(policy: &Policy, serving: usize) -> Self {
        EjectionGuard {
            serving,
            allowed: max_ejectable(serving, policy.max_ejection_percent)
                .min(serving.saturating_sub(1)),
            panic_floor: (serving * policy.panic_threshold_percent.min(100) as usize).div_ceil(100),
        }
    }

    /// Whether one more endpoint may be ejected while `out` serving endpoints are out.
    fn permits(&self, out: usize) -> bool {
        !(out >= self.allowed || self.serving - out - 1 < self.panic_floor)
    }
}

/// One endpoint's smoothed latency this step, for the latency rule.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LatencySample {
    slot: usize,
    /// Smoothed latency, seconds.
    latency: f64,
    /// The smoothed latency before this step's update, if any.
    previous: Option<f64>,
    /// Requests in its window.
    requests: f64,
    /// Its window covers it at a fraction of its share (ramping, or within a window after its
    /// ramp): not part of the cluster's median, and only a slower latency counts.
    partial: bool,
}

/// How a slow-start ramp's clock runs this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RampPace {
    /// Held or slower than the cluster: the ramp stands still.
    Stopped,
    /// As configured.
    Normal,
    /// Warm: [`RAMP_SPEEDUP`] times as fast.
    Fast,
}

/// Brings a ramp's progress up to `now_ms` at `pace`, by moving its start: later by the time
/// that did not count, earlier by the time credited.
fn advance_ramp(st: &mut EndpointState, pace: RampPace, now_ms: u64) {
    let Some(from) = st.ramp_from_ms.as_mut() else {
        return;
    };
    let elapsed = st
        .ramp_seen_ms
        .map_or(0, |seen| now_ms.saturating_sub(seen));
    match pace {
        RampPace::Stopped => *from = from.saturating_add(elapsed).min(now_ms),
        RampPace::Normal => {}
        RampPace::Fast => {
            *from = from.saturating_sub(((RAMP_SPEEDUP - 1.0) * elapsed as f64) as u64);
        }
    }
    st.ramp_seen_ms = Some(now_ms);
}

/// Whether an endpoint's signal window (`requests / rps` long) still reaches back into its last
/// slow-start ramp.
fn settling(st: &EndpointState, s: &Signals, now_ms: u64) -> bool {
    let window_ms = s.requests / s.rps * 1000.0;
    st.ramp_ended_ms
        .is_some_and(|end| window_ms.is_finite() && (now_ms.saturating_sub(end) as f64) < window_ms)
}

/// Why the latency rule left an endpoint's weight off its base: the comparison (with the
/// latency and the cluster median) when there was one, and whether it was beyond the dead band.
fn latency_reason(
    comparison: Option<(Comparison, f64, f64)>,
    excess: f64,
    multiplier: f64,
) -> String {
    let mut text = String::with_capacity(128);
    match comparison {
        Some((c, latency, reference)) => {
            text.push_str("latency ");
            push_fixed(&mut text, latency, 4);
            text.push_str(" s vs cluster median ");
            push_fixed(&mut text, reference, 4);
            text.push_str(if excess != 0.0 {
                " s, beyond its ±"
            } else {
                " s, within its ±"
            });
            push_fixed(&mut text, (c.band.exp() - 1.0) * 100.0, 0);
            text.push_str("% band: weight ×");
            push_fixed(&mut text, multiplier, 2);
            if excess == 0.0 {
                text.push_str(", returning to ×1");
            }
        }
        None => {
            text.push_str("latency not compared (too few requests or endpoints): weight ×");
            push_fixed(&mut text, multiplier, 2);
            text.push_str(", returning to ×1");
        }
    }
    text
}

/// How long an ejection ending at `until_ms` lasts from `now_ms`, in a reason: `for 30 s`; or
/// `indefinitely` when its end saturated the clock (an ejection time longer than the clock can
/// count), rather than a number of seconds near 2⁶⁴ / 1000.
struct EjectedFor {
    until_ms: u64,
    now_ms: u64,
}

impl std::fmt::Display for EjectedFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.until_ms == u64::MAX {
            f.write_str("indefinitely")
        } else {
            write!(
                f,
                "for {} s",
                self.until_ms.saturating_sub(self.now_ms) / 1000
            )
        }
    }
}

/// The reason of an endpoint nothing else explained this step: held without fresh signals,
/// else what its status says.
fn status_reason(status: Status, held: bool, now_ms: u64) -> String {
    let mut r = String::with_capacity(64);
    if held {
        r.push_str("held: no fresh signals for this endpoint");
    } else {
        let _ = match status {
            Status::Ejected { until_ms } if until_ms == u64::MAX => {
                r.write_str("ejected indefinitely")
            }
            Status::Ejected { until_ms } => write!(
                r,
                "ejected for {} more s",
                until_ms.saturating_sub(now_ms) / 1000
            ),
            Status::HalfOpen => r.write_str("half-open: waiting for trial requests"),
            Status::Ramping { fraction } => {
                r.push_str("slow start: ");
                push_fixed(&mut r, fraction * 100.0, 0);
                r.write_str("% of full weight")
            }
            _ => r.write_str("healthy"),
        };
    }
    r
}

/// Appends the signals a decision was made on to its reason: " (no traffic)" for an endpoint
/// that served no request in the window, whose success rate and latency mean nothing.
fn push_signals(reason: &mut String, s: &Signals) {
    if s.requests <= 0.0 {
        reason.push_str(" (no traffic)");
        return;
    }
    reason.push_str(" (");
    push_fixed(reason, s.rps, 1);
    reason.push_str(" rps, success ");
    push_fixed(reason, s.success_rate, 3);
    reason.push_str(", latency ");
    push_fixed(reason, s.latency, 4);
    reason.push_str(" s)");
}

/// Panic when fewer than `panic_threshold_percent` of the serving endpoints are healthy.
fn cluster_mode(policy: &Policy, serving: usize, healthy: usize) -> Mode {
    if serving > 0
        && (healthy as u128) * 100 < (serving as u128) * u128::from(policy.panic_threshold_percent)
    {
        Mode::Panic
    } else {
        Mode::Normal
    }
}

// === impl Slots ===

/// One distinct address of a decision step: its state, fresh signals and reason so far.
struct Slot<'a> {
    name: &'a str,
    state: EndpointState,
    fresh: Option<Signals>,
    reason: Option<String>,
}

fn closed(st: &EndpointState) -> bool {
    st.breaker.state() == BreakerState::Closed
}

/// A decision step's working set: the base entries, one slot per distinct address in address
/// order, and which slot each base entry is.
struct Slots<'a> {
    base: &'a [(String, u32)],
    /// `slot[i]` is `base[i]`'s slot.
    slot: Vec<usize>,
    slots: Vec<Slot<'a>>,
    /// Slots whose address has a state in the previous step.
    known: usize,
}

impl<'a> Slots<'a> {
    /// Step 1, freshness: sorts the addresses once and merges them with the previous states and the
    /// signals (both ordered by address). An address without a previous state starts afresh
    /// (ramping, unless this is the cluster's first step); its signals are kept when fresh.
    fn gather(
        policy: &Policy,
        base: &'a [(String, u32)],
        previous: &ClusterState,
        signals: &BTreeMap<String, Signals>,
        now_ms: u64,
    ) -> Self {
        let first_step = previous.endpoints.is_empty();
        let n = base.len();
        let mut order: Vec<(u64, usize)> = base
            .iter()
            .enumerate()
            .map(|(i, (ep, _))| (prefix_key(ep), i))
            .collect();
        if !base.windows(2).all(|w| w[0].0 < w[1].0) {
            order.sort_unstable_by(|a, b| {
                a.0.cmp(&b.0)
                    .then_with(|| base[a.1].0.cmp(&base[b.1].0))
                    .then(a.1.cmp(&b.1))
            });
        }
        let mut slot = vec![0usize; n];
        let mut slots: Vec<Slot<'_>> = Vec::with_capacity(n);
        let stale_after = ms(policy.stale_after);
        let mut previous_it = previous.endpoints.iter().peekable();
        let mut signals_it = signals.iter().peekable();
        let mut known = 0;
        for &(_, i) in &order {
            let ep = base[i].0.as_str();
            if slots.last().is_some_and(|s| s.name == ep) {
                slot[i] = slots.len() - 1;
                continue;
            }
            let s = seek(&mut signals_it, ep)
                .filter(|s| is_fresh(s, now_ms, stale_after))
                .copied();
            let mut st = match seek(&mut previous_it, ep) {
                Some(st) => {
                    known += 1;
                    st.clone()
                }
                None => EndpointState::new(now_ms, !first_step),
            };
            if s.is_some() {
                st.last_fresh_ms = Some(now_ms);
            }
            slot[i] = slots.len();
            slots.push(Slot {
                name: ep,
                state: st,
                fresh: s,
                reason: None,
            });
        }
        Slots {
            base,
            slot,
            slots,
            known,
        }
    }

    fn any_fresh(&self) -> bool {
        self.slots.iter().any(|s| s.fresh.is_some())
    }

    /// The cluster state the slots make. The same addresses as last time: the previous map,
    /// when owned, takes the new states in place.
    fn into_state(
        self,
        previous: Cow<'_, ClusterState>,
        last_fresh_ms: Option<u64>,
    ) -> ClusterState {
        let same_endpoints =
            self.known == self.slots.len() && previous.endpoints.len() == self.slots.len();
        match previous {
            Cow::Owned(mut state) if same_endpoints => {
                for (st, s) in state.endpoints.values_mut().zip(self.slots) {
                    *st = s.state;
                }
                state.last_fresh_ms = last_fresh_ms;
                state
            }
            _ => ClusterState {
                endpoints: self
                    .slots
                    .into_iter()
                    .map(|s| (s.name.to_owned(), s.state))
                    .collect(),
                last_fresh_ms,
            },
        }
    }

    /// No fresh signals anywhere: relaxed to the operator's weights on the first step or after
    /// `relax_after`, else every endpoint held as it was (fail static).
    fn hold_or_relax(
        self,
        policy: &Policy,
        previous: Cow<'_, ClusterState>,
        first_step: bool,
        now_ms: u64,
    ) -> Decision {
        let last_fresh_ms = previous.last_fresh_ms;
        // `None`: never any fresh signals.
        let stale_for = last_fresh_ms.map(|t| now_ms.saturating_sub(t));
        let relax = stale_for.is_none_or(|stale| stale >= ms(policy.relax_after));
        let (endpoints, slots, mode) = match stale_for {
            Some(stale) if !first_step && !relax => {
                let mut slots = self;
                let endpoints = slots.hold(policy, stale, now_ms);
                (endpoints, slots, Mode::FailStatic)
            }
            _ => {
                let (endpoints, slots) = self.relax(first_step, stale_for, now_ms);
                (endpoints, slots, Mode::Relaxed)
            }
        };
        Decision {
            endpoints,
            state: slots.into_state(previous, last_fresh_ms),
            mode,
            events: Vec::new(),
        }
    }

    /// Relaxed: the operator's weights, every breaker closed (when fresh data was last seen is
    /// kept).
    fn relax(
        mut self,
        first_step: bool,
        stale_for: Option<u64>,
        now_ms: u64,
    ) -> (Vec<EndpointDecision>, Self) {
        for Slot { state: st, .. } in &mut self.slots {
            *st = EndpointState {
                last_fresh_ms: st.last_fresh_ms,
                ..EndpointState::new(now_ms, false)
            };
        }
        let endpoints = self
            .base
            .iter()
            .map(|(ep, w)| EndpointDecision {
                endpoint: ep.clone(),
                weight: scaled(*w, 1.0),
                healthy: true,
                status: Status::Relaxed,
                multiplier: 1.0,
                reason: match stale_for {
                    _ if first_step => "no signals yet: base weight".to_owned(),
                    None => "no fresh signals yet: base weight".to_owned(),
                    Some(stale) => format!("no fresh signals for {} s: base weight", stale / 1000),
                },
                signals: None,
            })
            .collect();
        (endpoints, self)
    }

    /// Fail static: every endpoint publishes what its state held, and nothing advances — not
    /// even a slow-start ramp, whose clock stands still until signals return (it then resumes
    /// where it was).
    fn hold(&mut self, policy: &Policy, stale_for: u64, now_ms: u64) -> Vec<EndpointDecision> {
        for Slot { state: st, .. } in &mut self.slots {
            advance_ramp(st, RampPace::Stopped, now_ms);
        }
        self.base
            .iter()
            .zip(&self.slot)
            .map(|((ep, w), &k)| {
                let st = &self.slots[k].state;
                let (weight, healthy, _) = publish(policy, *w, st, now_ms);
                EndpointDecision {
                    endpoint: ep.clone(),
                    weight,
                    healthy,
                    status: Status::Held,
                    multiplier: st.multiplier,
                    reason: format!(
                        "held: no fresh signals for {} s (fail static)",
                        stale_for / 1000
                    ),
                    signals: None,
                }
            })
            .collect()
    }

    /// Success rates of the serving (non-zero base weight), closed, fresh endpoints with
    /// enough requests for the success-rate rule, one per base entry.
    fn serving_success_rates(&self, policy: &Policy) -> Vec<f64> {
        self.base
            .iter()
            .zip(&self.slot)
            .filter(|&((_, w), &k)| *w > 0 && closed(&self.slots[k].state))
            .filter_map(|(_, &k)| self.slots[k].fresh.as_ref())
            .filter(|s| s.requests >= policy.success_rate_request_volume)
            .map(|s| s.success_rate)
            .collect()
    }

    /// Step 2, breakers: time moves ejections to half-open; fresh trials with enough requests are
    /// judged (passing closes the breaker and starts slow start, failing ejects for longer).
    fn judge_trials(
        &mut self,
        policy: &Policy,
        sr: Option<(f64, f64, f64, usize)>,
        times: EjectionTimes,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) {
        for ((ep, _), &k) in self.base.iter().zip(&self.slot) {
            let Slot {
                state: st,
                fresh,
                reason: why,
                ..
            } = &mut self.slots[k];
            if let Some(t) = st.breaker.poll(now_ms) {
                debug_assert_eq!(t.to, BreakerState::HalfOpen);
                events.push(Event::HalfOpen {
                    endpoint: ep.clone(),
                });
                st.trial = Some(TrialTally {
                    seen_ms: now_ms,
                    ..TrialTally::default()
                });
            }
            if st.breaker.state() != BreakerState::HalfOpen {
                st.trial = None;
                continue;
            }
            let Some(window) = fresh.as_ref() else {
                continue;
            };
            let tally = st.trial.get_or_insert(TrialTally {
                seen_ms: now_ms,
                ..TrialTally::default()
            });
            tally.add(window, now_ms);
            let s = &tally.judged(window);
            if s.requests < policy.half_open_min_requests {
                *why = Some(format!(
                    "half-open: {:.0} trial requests so far, {:.0} needed",
                    s.requests, policy.half_open_min_requests
                ));
                continue;
            }
            let verdict = judge_trial(policy, s, sr);
            if let Trial::Undecided { bound, needed } = verdict {
                *why = Some(format!(
                    "half-open: trial success rate {:.3} over {:.0} requests, at least {bound:.3} \
                     with 95 % confidence; {needed:.3} needed",
                    s.success_rate, s.requests
                ));
                continue;
            }
            st.trial = None;
            if verdict == Trial::Passes {
                st.breaker.trial(true, now_ms, times);
                st.ramp_from_ms = Some(now_ms);
                st.ramp_seen_ms = Some(now_ms);
                st.multiplier = 1.0;
                events.push(Event::Recovered {
                    endpoint: ep.clone(),
                });
                *why = Some(format!(
                    "recovered: trial success rate {:.3}; ramping back",
                    s.success_rate
                ));
            } else if let Some(t) = st.breaker.trial(false, now_ms, times) {
                if let BreakerState::Open { until_ms } = t.to {
                    events.push(Event::Ejected {
                        endpoint: ep.clone(),
                        reason: EjectReason::FailedTrial,
                        until_ms,
                    });
                    *why = Some(format!(
                        "ejected again: trial success rate {:.3}; {}",
                        s.success_rate,
                        EjectedFor { until_ms, now_ms }
                    ));
                }
            }
        }
    }

    /// Step 3, outliers among the serving, fresh, closed endpoints: the success-rate rule first,
    /// else the failure-percentage rule; worst success rate first, then by address.
    fn outlier_candidates(
        &self,
        policy: &Policy,
        sr: Option<(f64, f64, f64, usize)>,
    ) -> Vec<Candidate> {
        let mut candidates = Vec::new();
        let fp_hosts = self
            .slot
            .iter()
            .filter_map(|&k| self.slots[k].fresh.as_ref())
            .filter(|s| s.requests >= policy.failure_percentage_request_volume)
            .count();
        for ((_, w), &k) in self.base.iter().zip(&self.slot) {
            if *w == 0 || !closed(&self.slots[k].state) {
                continue;
            }
            let Some(s) = self.slots[k].fresh.as_ref() else {
                continue;
            };
            let found = success_rate_outlier(policy, s, sr)
                .map(|why| (EjectReason::SuccessRate, why))
                .or_else(|| {
                    failure_percentage_outlier(policy, s, fp_hosts)
                        .map(|why| (EjectReason::FailurePercentage, why))
                });
            if let Some((reason, why)) = found {
                candidates.push(Candidate {
                    slot: k,
                    success_rate: s.success_rate,
                    reason,
                    why,
                });
            }
        }
        candidates.sort_by(|a, b| {
            a.success_rate
                .total_cmp(&b.success_rate)
                .then_with(|| a.slot.cmp(&b.slot))
        });
        candidates
    }

    /// Serving endpoints (one per base entry) whose breaker is not closed.
    fn out(&self) -> usize {
        self.base
            .iter()
            .zip(&self.slot)
            .filter(|&((_, w), &k)| *w > 0 && !closed(&self.slots[k].state))
            .count()
    }

    /// Ejects the candidates in order while the guard permits; the rest keep serving, with a
    /// reason that says why they were not ejected.
    fn eject(
        &mut self,
        candidates: Vec<Candidate>,
        guard: EjectionGuard,
        times: EjectionTimes,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) {
        for Candidate {
            slot: k,
            reason,
            why,
            ..
        } in candidates
        {
            if !guard.permits(self.out()) {
                self.slots[k].reason = Some(format!(
                    "outlier but not ejected: {why}; max_ejection_percent or the panic threshold reached"
                ));
                continue;
            }
            let sl = &mut self.slots[k];
            let st = &mut sl.state;
            if let Some(t) = st.breaker.trip(now_ms, times, reason) {
                if let BreakerState::Open { until_ms } = t.to {
                    st.ramp_from_ms = None;
                    events.push(Event::Ejected {
                        endpoint: sl.name.to_owned(),
                        reason,
                        until_ms,
                    });
                    sl.reason = Some(format!(
                        "ejected {}: {why}",
                        EjectedFor { until_ms, now_ms }
                    ));
                }
            }
        }
    }

    /// Step 4a, latency: smooths the latency of every fresh, closed endpoint with enough requests
    /// (once per address, however often the base lists it) and returns one [`LatencySample`]
    /// per endpoint so smoothed. Endpoints updated together share a time step, so its decay
    /// factor is computed once.
    fn smooth_latencies(&mut self, policy: &Policy, now_ms: u64) -> Vec<LatencySample> {
        let half = ms(policy.latency_half_life).max(1) as f64;
        let mut decay_for: Option<(u64, f64)> = None;
        let mut samples = Vec::with_capacity(self.slots.len());
        for (k, sl) in self.slots.iter_mut().enumerate() {
            let Slot {
                state: st, fresh, ..
            } = sl;
            let Some(s) = fresh.as_ref() else {
                continue;
            };
            if !closed(st) || s.requests < policy.latency_min_requests {
                continue;
            }
            let previous = st.latency_ewma.map(|(l, _)| l);
            let smoothed = match st.latency_ewma {
                None => s.latency,
                Some((prev, at)) => {
                    let dt = now_ms.saturating_sub(at);
                    let alpha = match decay_for {
                        Some((d, alpha)) if d == dt => alpha,
                        _ => {
                            let alpha = 1.0 - 0.5f64.powf(dt as f64 / half);
                            decay_for = Some((dt, alpha));
                            alpha
                        }
                    };
                    prev + alpha * (s.latency - prev)
                }
            };
            st.latency_ewma = Some((smoothed, now_ms));
            samples.push(LatencySample {
                slot: k,
                latency: smoothed,
                previous,
                requests: s.requests,
                partial: st.ramp_from_ms.is_some() || settling(st, s, now_ms),
            });
        }
        samples
    }

    /// Step 4b, latency weighting, the damped loop of the module documentation: the smoothed
    /// latencies of the trusted endpoints serving at full share are compared with their median
    /// ([`LatencyLoop::compare`]); an endpoint beyond the dead band moves its multiplier against
    /// the difference, a little per decision ([`LatencyLoop::next`]); every other fresh, closed
    /// endpoint (indistinguishable, too few requests, nothing to compare with) returns towards
    /// its base weight. An endpoint whose window covers it at a fraction of its share (ramping,
    /// or a window after its ramp) only loses weight, when it is slower. Returns each slot's
    /// comparison, for the ramps. Disabled, every multiplier is 1 and nothing is compared.
    fn weigh_by_latency(
        &mut self,
        policy: &Policy,
        samples: &[LatencySample],
        now_ms: u64,
    ) -> Vec<Option<Comparison>> {
        let mut compared = vec![None; self.slots.len()];
        if !policy.latency_weighting {
            for Slot { state: st, .. } in &mut self.slots {
                st.multiplier = 1.0;
            }
            return compared;
        }
        // Each full-share endpoint against the median of the others; a partial one against
        // the median of the full-share endpoints.
        let mut sorted: Vec<f64> = samples
            .iter()
            .filter(|s| !s.partial)
            .map(|s| s.latency)
            .collect();
        sorted.sort_unstable_by(f64::total_cmp);
        let full_requests: f64 = samples
            .iter()
            .filter(|s| !s.partial)
            .map(|s| s.requests)
            .sum();
        let control = LatencyLoop::new(policy);
        let mut against = vec![(0.0, 0.0); self.slots.len()];
        let mut trend = vec![0.0; self.slots.len()];
        for s in samples {
            trend[s.slot] = control.trend(s.previous, s.latency);
        }
        if sorted.len() >= 2 {
            for s in samples {
                let (without, others) = if s.partial {
                    (None, full_requests)
                } else {
                    (Some(s.latency), full_requests - s.requests)
                };
                if let Some(reference) = median_of(&sorted, without) {
                    compared[s.slot] =
                        Some(control.compare(reference, s.latency, s.requests, others));
                    against[s.slot] = (s.latency, reference);
                }
            }
        }
        for (k, sl) in self.slots.iter_mut().enumerate() {
            let Slot {
                state: st,
                fresh,
                reason: why,
                ..
            } = sl;
            if !closed(st) {
                // Ejected or on trial: weighed afresh once it serves again.
                st.weighed_at_ms = None;
                continue;
            }
            let Some(s) = fresh.as_ref() else {
                continue;
            };
            let since = st.weighed_at_ms.map(|at| now_ms.saturating_sub(at));
            let fraction = window_fraction(since, s.requests, s.rps, policy.signal_window);
            st.weighed_at_ms = Some(now_ms);
            let excess = compared[k].map_or(0.0, |c| c.excess());
            if (st.ramp_from_ms.is_some() || settling(st, s, now_ms)) && excess <= 0.0 {
                // At a fraction of its share a faster latency says nothing.
                continue;
            }
            st.multiplier = control.next(st.multiplier, excess, trend[k], fraction);
            if why.is_none() && st.multiplier != 1.0 {
                let with = compared[k].map(|c| (c, against[k].0, against[k].1));
                *why = Some(latency_reason(with, excess, st.multiplier));
            }
        }
        compared
    }

    /// Step 4c, slow start's clock: a ramping endpoint's ramp stands still while it has no
    /// fresh signals (held) or is slower than the cluster ([`Comparison::excess`] above 0:
    /// cold, or slow) and its multiplier is above the floor; it runs [`RAMP_SPEEDUP`] times as
    /// fast while the endpoint is no slower (warm); else at its pace.
    fn pace_ramps(&mut self, policy: &Policy, compared: &[Option<Comparison>], now_ms: u64) {
        let floor = LatencyLoop::new(policy).floor;
        for (sl, comparison) in self.slots.iter_mut().zip(compared) {
            let st = &mut sl.state;
            let above_floor = st.multiplier.ln() > floor + 1e-9;
            let pace = match (sl.fresh.is_some(), comparison) {
                (false, _) => RampPace::Stopped,
                (true, Some(c)) if c.excess() > 0.0 && above_floor => RampPace::Stopped,
                (true, Some(c)) if c.excess() <= 0.0 => RampPace::Fast,
                _ => RampPace::Normal,
            };
            advance_ramp(st, pace, now_ms);
        }
    }

    /// Step 5a, decay: every `decay_interval`, an endpoint forgets one past ejection.
    fn decay_ejections(&mut self, policy: &Policy, now_ms: u64) {
        for Slot { state: st, .. } in &mut self.slots {
            if now_ms.saturating_sub(st.last_decay_ms) >= ms(policy.decay_interval) {
                st.breaker.decay();
                st.last_decay_ms = now_ms;
            }
        }
    }

    /// Step 5b, publication: per base entry, its weight, health, status and reason (a finished
    /// slow-start ramp ends here); and how many serving endpoints are healthy.
    fn publish(&mut self, policy: &Policy, now_ms: u64) -> (Vec<EndpointDecision>, usize) {
        let mut healthy = 0;
        let mut endpoints = Vec::with_capacity(self.slot.len());
        for ((ep, w), &k) in self.base.iter().zip(&self.slot) {
            let sl = &mut self.slots[k];
            let st = &mut sl.state;
            let (weight, is_healthy, status) = publish(policy, *w, st, now_ms);
            if let Some(from) = st.ramp_from_ms {
                let end = from.saturating_add(ms(policy.slow_start_window));
                if now_ms >= end {
                    st.ramp_from_ms = None;
                    st.ramp_seen_ms = None;
                    st.ramp_ended_ms = Some(end);
                }
            }
            let signals = sl.fresh;
            let held = signals.is_none();
            if is_healthy && *w > 0 {
                healthy += 1;
            }
            let mut reason = sl
                .reason
                .take()
                .unwrap_or_else(|| status_reason(status, held, now_ms));
            if let Some(s) = &signals {
                push_signals(&mut reason, s);
            }
            endpoints.push(EndpointDecision {
                endpoint: ep.clone(),
                weight,
                healthy: is_healthy,
                status: if held { Status::Held } else { status },
                multiplier: st.multiplier,
                reason,
                signals,
            });
        }
        self.pace_trials(policy, &mut endpoints);
        (endpoints, healthy)
    }

    /// Step 5c, the trials' pace: a half-open endpoint whose configured trial weight would
    /// take the cluster's traffic longer than a signal window to bring it
    /// `half_open_min_requests` gets the weight that brings them within one (its share of the
    /// cluster's requests per second, among the serving endpoints' weights), at least its
    /// configured weight and at most [`MAX_TRIAL_PERCENT`] of its base.
    fn pace_trials(&self, policy: &Policy, endpoints: &mut [EndpointDecision]) {
        let window = policy.signal_window.as_secs_f64();
        if window <= 0.0 || !endpoints.iter().any(|e| e.status == Status::HalfOpen) {
            return;
        }
        let rps: f64 = endpoints
            .iter()
            .filter_map(|e| e.signals.as_ref())
            .map(|s| s.rps)
            .filter(|r| r.is_finite() && *r > 0.0)
            .sum();
        let others: f64 = endpoints
            .iter()
            .filter(|e| e.healthy && e.status != Status::HalfOpen)
            .map(|e| f64::from(e.weight))
            .sum();
        if rps <= 0.0 || others <= 0.0 {
            return;
        }
        // The share of the cluster's requests that gives the trial its requests in a window.
        let share = policy.half_open_min_requests / (rps * window);
        if !(share > 0.0 && share < 1.0) {
            return;
        }
        let wanted = share * others / (1.0 - share);
        for ((_, base), e) in self.base.iter().zip(endpoints.iter_mut()) {
            if e.status != Status::HalfOpen {
                continue;
            }
            let cap = f64::from(*base) * WEIGHT_SCALE * MAX_TRIAL_PERCENT / 100.0;
            let w = wanted.min(cap).round();
            if w > f64::from(e.weight) {
                e.weight = w as u32;
            }
        }
    }
}

/// Base weight × multiplier in hundredths, at least 1 while the base is non-zero.
fn scaled(base: u32, factor: f64) -> u32 {
    if base == 0 {
        return 0;
    }
    let w = (f64::from(base) * WEIGHT_SCALE * factor).round();
    (w.clamp(1.0, f64::from(u32::MAX))) as u32
}

/// The weight, health and status an endpoint's state publishes.
fn publish(policy: &Policy, base: u32, st: &EndpointState, now_ms: u64) -> (u32, bool, Status) {
    let trial = f64::from(policy.half_open_weight_percent.clamp(1, 100)) / 100.0;
    match st.breaker.state() {
        BreakerState::Open { until_ms } => (0, false, Status::Ejected { until_ms }),
        BreakerState::HalfOpen => (scaled(base, trial), true, Status::HalfOpen),
        BreakerState::Closed => match st.ramp_from_ms {
            Some(from) if !policy.slow_start_window.is_zero() => {
                let progress = (now_ms.saturating_sub(from) as f64
                    / ms(policy.slow_start_window) as f64)
                    .min(1.0);
                let fraction = trial + (1.0 - trial) * progress;
                if progress >= 1.0 {
                    (scaled(base, st.multiplier), true, Status::Serving)
                } else {
                    (
                        scaled(base, st.multiplier * fraction),
                        true,
                        Status::Ramping { fraction },
                    )
                }
            }
            _ => (scaled(base, st.multiplier), true, Status::Serving),
        },
    }
}

#[cfg(test)]
mod tests;
