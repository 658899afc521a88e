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
//!    it keeps its state and weight, and nothing is decided about it (stale data never ejects).
//!    When no endpoint has fresh data the whole cluster is held (fail static), and after
//!    `relax_after` without any fresh data it relaxes to the operator's base weights.
//! 2. **Breakers.** Each endpoint is a [`Breaker`]: an ejection lasts `base_ejection_time ×
//!    times ejected` (capped), then the endpoint is half-open with a small trial weight; a
//!    passing trial closes it and starts a slow-start ramp back to full weight, a failing one
//!    ejects it again for longer.
//! 3. **Outliers.** Envoy's success-rate rule (below `mean − factor × stdev` of the cluster,
//!    with minimum hosts and request volume) and failure-percentage rule pick ejection
//!    candidates, worst first, while at most `max_ejection_percent` of the cluster is out, the
//!    cluster keeps some capacity, and ejecting would not push it under the panic threshold.
//! 4. **Latency.** A smoothed latency per endpoint (EWMA) is compared with the cluster median:
//!    slower endpoints lose weight in proportion, faster ones gain, within a floor and a cap,
//!    changing by at most `max_step_percent` per step and not at all inside the hysteresis band.
//! 5. **Weights.** base weight × latency multiplier × ramp, in hundredths (so the proxy's integer
//!    weights keep the precision); an ejected endpoint gets weight 0 and is marked unhealthy.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::fmt::push_fixed;
use crate::outlier::{max_ejectable, Breaker, BreakerState, EjectReason, EjectionTimes};

/// Weights are published in hundredths of the base weight.
pub const WEIGHT_SCALE: f64 = 100.0;

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
    /// Trial weight of a half-open endpoint, in percent of its base weight (default 5).
    pub half_open_weight_percent: u32,
    /// Requests a half-open endpoint must serve in a window before it is judged (default 5).
    pub half_open_min_requests: f64,
    /// Time a recovered (or new) endpoint takes to ramp from its trial weight to full weight
    /// (Envoy's `slow_start_window`; default 30 s; 0 disables).
    pub slow_start_window: Duration,
    /// Weigh endpoints by their latency relative to the cluster (default on).
    pub latency_weighting: bool,
    /// Lowest latency multiplier, in percent of the base weight (default 10).
    pub min_weight_percent: u32,
    /// Highest latency multiplier, in percent of the base weight (default 200).
    pub max_weight_percent: u32,
    /// Largest change of the multiplier in one step, in percent of its value (default 50).
    pub max_step_percent: u32,
    /// Changes of the target multiplier smaller than this, in percent, are ignored (default 10).
    pub hysteresis_percent: u32,
    /// Half-life of the latency EWMA (default 10 s).
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
            half_open_min_requests: 5.0,
            slow_start_window: Duration::from_secs(30),
            latency_weighting: true,
            min_weight_percent: 10,
            max_weight_percent: 200,
            max_step_percent: 50,
            hysteresis_percent: 10,
            latency_half_life: Duration::from_secs(10),
            latency_min_requests: 10.0,
            panic_threshold_percent: 50,
            stale_after: Duration::from_secs(30),
            relax_after: Duration::from_secs(300),
            decay_interval: Duration::from_secs(60),
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
pub struct EndpointState {
    /// The breaker (closed, ejected, half-open).
    pub breaker: Breaker,
    /// Latency multiplier of the base weight (1.0 = base).
    pub multiplier: f64,
    /// Smoothed latency (seconds) and when it was last updated.
    pub latency_ewma: Option<(f64, u64)>,
    /// Start of a slow-start ramp, when one is running.
    pub ramp_from_ms: Option<u64>,
    /// When fresh signals were last seen.
    pub last_fresh_ms: Option<u64>,
    /// When a past ejection was last forgotten.
    pub last_decay_ms: u64,
}

impl EndpointState {
    fn new(now_ms: u64, ramp: bool) -> Self {
        EndpointState {
            breaker: Breaker::default(),
            multiplier: 1.0,
            latency_ewma: None,
            ramp_from_ms: ramp.then_some(now_ms),
            last_fresh_ms: None,
            last_decay_ms: now_ms,
        }
    }
}

/// A cluster's decision state: one entry per endpoint, ordered by address.
#[derive(Clone, Debug, Default, PartialEq)]
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

/// The median, by selection rather than a full sort (the values at the middle of the order are
/// the same either way).
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let even = values.len().is_multiple_of(2);
    let mid = values.len() / 2;
    let (left, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    Some(if even {
        let lower = left.iter().copied().max_by(f64::total_cmp).unwrap_or(upper);
        (lower + upper) / 2.0
    } else {
        upper
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

fn step(
    policy: &Policy,
    base: &[(String, u32)],
    previous: Cow<'_, ClusterState>,
    signals: &BTreeMap<String, Signals>,
    now_ms: u64,
) -> Decision {
    let times = EjectionTimes {
        base: policy.base_ejection_time,
        max: policy.max_ejection_time,
    };
    let first_step = previous.endpoints.is_empty();
    let mut events = Vec::new();

    // Slots: one per distinct address, in address order; `slot[i]` is `base[i]`'s.
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
    // 1. Freshness.
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
            .filter(|s| {
                now_ms.saturating_sub(s.sampled_at_ms) <= stale_after
                    && s.success_rate.is_finite()
                    && s.requests.is_finite()
                    && s.latency.is_finite()
            })
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
    let any_fresh = slots.iter().any(|s| s.fresh.is_some());
    let last_fresh_ms = if any_fresh {
        Some(now_ms)
    } else {
        previous.last_fresh_ms
    };
    // The same addresses as last time: the previous map, when owned, takes the new states.
    let same_endpoints = known == slots.len() && previous.endpoints.len() == slots.len();
    let cluster_state = move |slots: Vec<Slot<'_>>| match previous {
        Cow::Owned(mut state) if same_endpoints => {
            for (st, s) in state.endpoints.values_mut().zip(slots) {
                *st = s.state;
            }
            state.last_fresh_ms = last_fresh_ms;
            state
        }
        _ => ClusterState {
            endpoints: slots
                .into_iter()
                .map(|s| (s.name.to_owned(), s.state))
                .collect(),
            last_fresh_ms,
        },
    };

    if !any_fresh {
        let stale_for = last_fresh_ms.map_or(u64::MAX, |t| now_ms.saturating_sub(t));
        if first_step || stale_for >= ms(policy.relax_after) {
            // Relax: the operator's weights, every breaker closed.
            for Slot { state: st, .. } in &mut slots {
                *st = EndpointState {
                    last_fresh_ms: st.last_fresh_ms,
                    ..EndpointState::new(now_ms, false)
                };
            }
            let endpoints = base
                .iter()
                .map(|(ep, w)| EndpointDecision {
                    endpoint: ep.clone(),
                    weight: scaled(*w, 1.0),
                    healthy: true,
                    status: Status::Relaxed,
                    multiplier: 1.0,
                    reason: if first_step {
                        "no signals yet: base weight".to_owned()
                    } else {
                        format!("no fresh signals for {} s: base weight", stale_for / 1000)
                    },
                    signals: None,
                })
                .collect();
            return Decision {
                endpoints,
                state: cluster_state(slots),
                mode: Mode::Relaxed,
                events,
            };
        }
        // Fail static: hold everything as it was.
        let endpoints = base
            .iter()
            .zip(&slot)
            .map(|((ep, w), &k)| {
                let st = &slots[k].state;
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
            .collect();
        return Decision {
            endpoints,
            state: cluster_state(slots),
            mode: Mode::FailStatic,
            events,
        };
    }

    // 2. Breakers: time moves ejections to half-open; fresh trials are judged.
    let serving_rates: Vec<f64> = base
        .iter()
        .zip(&slot)
        .filter(|&((_, w), &k)| *w > 0 && closed(&slots[k].state))
        .filter_map(|(_, &k)| slots[k].fresh.as_ref())
        .filter(|s| s.requests >= policy.success_rate_request_volume)
        .map(|s| s.success_rate)
        .collect();
    let sr = success_rate_stats(policy, &serving_rates);
    let passes = |s: &Signals| {
        s.success_rate >= 1.0 - policy.failure_percentage_threshold
            && sr.is_none_or(|(_, _, threshold, _)| s.success_rate >= threshold)
    };
    for ((ep, _), &k) in base.iter().zip(&slot) {
        let Slot {
            state: st,
            fresh,
            reason: why,
            ..
        } = &mut slots[k];
        if let Some(t) = st.breaker.poll(now_ms) {
            debug_assert_eq!(t.to, BreakerState::HalfOpen);
            events.push(Event::HalfOpen {
                endpoint: ep.clone(),
            });
        }
        if st.breaker.state() != BreakerState::HalfOpen {
            continue;
        }
        let Some(s) = fresh.as_ref() else {
            continue;
        };
        if s.requests < policy.half_open_min_requests {
            *why = Some(format!(
                "half-open: {:.0} trial requests so far, {:.0} needed",
                s.requests, policy.half_open_min_requests
            ));
            continue;
        }
        if passes(s) {
            st.breaker.trial(true, now_ms, times);
            st.ramp_from_ms = Some(now_ms);
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
                    "ejected again: trial success rate {:.3}; for {} s",
                    s.success_rate,
                    (until_ms - now_ms) / 1000
                ));
            }
        }
    }

    // 3. Outliers among fresh, closed endpoints. Candidates carry their slot, which orders
    // them as their address does.
    let mut candidates: Vec<(usize, f64, EjectReason, String)> = Vec::new();
    let fp_hosts = slot
        .iter()
        .filter_map(|&k| slots[k].fresh.as_ref())
        .filter(|s| s.requests >= policy.failure_percentage_request_volume)
        .count();
    for ((_, w), &k) in base.iter().zip(&slot) {
        if *w == 0 || !closed(&slots[k].state) {
            continue;
        }
        let Some(s) = slots[k].fresh.as_ref() else {
            continue;
        };
        if let Some((mean, stdev, threshold, hosts)) = sr {
            if s.requests >= policy.success_rate_request_volume && s.success_rate < threshold {
                candidates.push((
                    k,
                    s.success_rate,
                    EjectReason::SuccessRate,
                    format!(
                        "success rate {:.3} below {threshold:.3} (mean {mean:.3} − {} × stdev {stdev:.3}, {hosts} hosts)",
                        s.success_rate, policy.success_rate_stdev_factor
                    ),
                ));
                continue;
            }
        }
        let failure = 1.0 - s.success_rate;
        if policy.failure_percentage_threshold <= 1.0
            && fp_hosts >= policy.failure_percentage_minimum_hosts
            && s.requests >= policy.failure_percentage_request_volume
            && failure >= policy.failure_percentage_threshold
        {
            candidates.push((
                k,
                s.success_rate,
                EjectReason::FailurePercentage,
                format!(
                    "failure ratio {failure:.3} ≥ {:.3} over {:.0} requests",
                    policy.failure_percentage_threshold, s.requests
                ),
            ));
        }
    }
    candidates.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let serving = base.iter().filter(|(_, w)| *w > 0).count();
    let allowed =
        max_ejectable(serving, policy.max_ejection_percent).min(serving.saturating_sub(1));
    let panic_floor = (serving * policy.panic_threshold_percent.min(100) as usize).div_ceil(100);
    for (k, _, reason, why) in candidates {
        let out = base
            .iter()
            .zip(&slot)
            .filter(|&((_, w), &k)| *w > 0 && !closed(&slots[k].state))
            .count();
        if out >= allowed || serving - out - 1 < panic_floor {
            slots[k].reason = Some(format!(
                "outlier but not ejected: {why}; max_ejection_percent or the panic threshold reached"
            ));
            continue;
        }
        let sl = &mut slots[k];
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
                    "ejected for {} s: {why}",
                    (until_ms - now_ms) / 1000
                ));
            }
        }
    }

    // 4. Latency multipliers among fresh, closed endpoints with enough requests. Endpoints
    // updated together share a time step, so its decay factor is computed once.
    let half = ms(policy.latency_half_life).max(1) as f64;
    let mut decay_for: Option<(u64, f64)> = None;
    let mut ewmas = Vec::with_capacity(n);
    for &k in &slot {
        let Slot {
            state: st, fresh, ..
        } = &mut slots[k];
        let Some(s) = fresh.as_ref() else {
            continue;
        };
        if !closed(st) || s.requests < policy.latency_min_requests {
            continue;
        }
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
        ewmas.push(smoothed);
    }
    let reference = median(&mut ewmas);
    let floor = f64::from(policy.min_weight_percent) / 100.0;
    let cap = f64::from(policy.max_weight_percent.max(policy.min_weight_percent)) / 100.0;
    let band = f64::from(policy.hysteresis_percent) / 100.0;
    let step = f64::from(policy.max_step_percent) / 100.0;
    for &k in &slot {
        let Slot {
            state: st,
            fresh,
            reason: why,
            ..
        } = &mut slots[k];
        if !policy.latency_weighting {
            st.multiplier = 1.0;
            continue;
        }
        let (Some(reference), Some(s)) = (reference, fresh.as_ref()) else {
            continue;
        };
        if ewmas.len() < 2 || !closed(st) || s.requests < policy.latency_min_requests {
            continue;
        }
        let Some((latency, _)) = st.latency_ewma else {
            continue;
        };
        let target = if latency > 0.0 {
            (reference / latency).clamp(floor, cap)
        } else {
            cap
        };
        let current = st.multiplier;
        if ((target - current) / current).abs() > band {
            st.multiplier = target.clamp(current * (1.0 - step), current * (1.0 + step));
            st.multiplier = st.multiplier.clamp(floor, cap);
        }
        if why.is_none() && (st.multiplier - 1.0).abs() > 1e-9 {
            let mut text = String::with_capacity(128);
            text.push_str("latency ");
            push_fixed(&mut text, latency, 4);
            text.push_str(" s vs cluster median ");
            push_fixed(&mut text, reference, 4);
            text.push_str(" s: weight ×");
            push_fixed(&mut text, st.multiplier, 2);
            text.push_str(" (target ×");
            push_fixed(&mut text, target, 2);
            text.push(')');
            *why = Some(text);
        }
    }

    // 5. Decay past ejections of healthy endpoints, then publish.
    for Slot { state: st, .. } in &mut slots {
        if now_ms.saturating_sub(st.last_decay_ms) >= ms(policy.decay_interval) {
            st.breaker.decay();
            st.last_decay_ms = now_ms;
        }
    }
    let mut healthy = 0;
    let mut endpoints = Vec::with_capacity(n);
    for ((ep, w), &k) in base.iter().zip(&slot) {
        let sl = &mut slots[k];
        let st = &mut sl.state;
        let (weight, is_healthy, status) = publish(policy, *w, st, now_ms);
        if st.ramp_from_ms.is_some()
            && now_ms.saturating_sub(st.ramp_from_ms.unwrap_or(0)) >= ms(policy.slow_start_window)
        {
            st.ramp_from_ms = None;
        }
        let signals = sl.fresh;
        let held = signals.is_none();
        if is_healthy && *w > 0 {
            healthy += 1;
        }
        let mut reason = sl.reason.take().unwrap_or_else(|| {
            let mut r = String::with_capacity(64);
            if held {
                r.push_str("held: no fresh signals for this endpoint");
            } else {
                let _ = match status {
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
        });
        if let Some(s) = &signals {
            reason.push_str(" (");
            push_fixed(&mut reason, s.rps, 1);
            reason.push_str(" rps, success ");
            push_fixed(&mut reason, s.success_rate, 3);
            reason.push_str(", latency ");
            push_fixed(&mut reason, s.latency, 4);
            reason.push_str(" s)");
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
    let mode = if serving > 0
        && (healthy as u128) * 100 < (serving as u128) * u128::from(policy.panic_threshold_percent)
    {
        Mode::Panic
    } else {
        Mode::Normal
    };
    Decision {
        endpoints,
        state: cluster_state(slots),
        mode,
        events,
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
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    fn healthy(now: u64) -> Signals {
        Signals {
            requests: 200.0,
            rps: 20.0,
            success_rate: 1.0,
            latency: 0.010,
            sampled_at_ms: now,
        }
    }

    fn signals(
        base: &[(String, u32)],
        now: u64,
        f: impl Fn(usize) -> Signals,
    ) -> BTreeMap<String, Signals> {
        let _ = now;
        base.iter()
            .enumerate()
            .map(|(i, (e, _))| (e.clone(), f(i)))
            .collect()
    }

    fn policy() -> Policy {
        Policy {
            max_ejection_percent: 50,
            base_ejection_time: Duration::from_secs(10),
            slow_start_window: Duration::from_secs(20),
            ..Policy::default()
        }
    }

    #[test]
    fn half_failing_endpoint_is_ejected_and_its_share_goes_to_the_others() {
        let b = base(4);
        let p = policy();
        let s = signals(&b, 1000, |i| Signals {
            success_rate: if i == 3 { 0.5 } else { 1.0 },
            ..healthy(1000)
        });
        let d = decide(&p, &b, &ClusterState::default(), &s, 1000);
        assert_eq!(d.endpoints[3].weight, 0);
        assert!(!d.endpoints[3].healthy);
        assert!(matches!(
            d.endpoints[3].status,
            Status::Ejected { until_ms: 11_000 }
        ));
        assert!(
            d.endpoints[3].reason.contains("failure ratio 0.500"),
            "{}",
            d.endpoints[3].reason
        );
        assert!(d.endpoints[..3]
            .iter()
            .all(|e| e.weight == 100 && e.healthy));
        assert!(matches!(
            d.events[..],
            [Event::Ejected {
                reason: EjectReason::FailurePercentage,
                ..
            }]
        ));
        assert_eq!(d.mode, Mode::Normal);
    }

    #[test]
    fn success_rate_outlier_among_many_hosts() {
        let b = base(10);
        let p = policy();
        let s = signals(&b, 0, |i| Signals {
            success_rate: if i == 0 { 0.90 } else { 0.995 },
            ..healthy(0)
        });
        let d = decide(&p, &b, &ClusterState::default(), &s, 0);
        assert_eq!(d.endpoints[0].weight, 0, "{}", d.endpoints[0].reason);
        assert!(d.endpoints[0].reason.contains("success rate 0.900 below"));
        assert!(d.endpoints[1..].iter().all(|e| e.healthy));
    }

    #[test]
    fn never_more_than_max_ejection_percent_nor_zero_capacity() {
        let b = base(4);
        let p = Policy {
            max_ejection_percent: 100,
            panic_threshold_percent: 0,
            ..policy()
        };
        let s = signals(&b, 0, |_| Signals {
            success_rate: 0.1,
            ..healthy(0)
        });
        let d = decide(&p, &b, &ClusterState::default(), &s, 0);
        let out = d.endpoints.iter().filter(|e| e.weight == 0).count();
        assert_eq!(out, 3, "never zero capacity");

        let p = policy(); // 50% and panic threshold 50%
        let d = decide(&p, &b, &ClusterState::default(), &s, 0);
        let out = d.endpoints.iter().filter(|e| e.weight == 0).count();
        assert_eq!(out, 2);
        assert!(d.endpoints.iter().any(|e| e.reason.contains("not ejected")));
    }

    #[test]
    fn ejected_then_half_open_then_ramps_back() {
        let b = base(4);
        let p = policy();
        let bad = |now| {
            signals(&b, now, move |i| Signals {
                success_rate: if i == 3 { 0.2 } else { 1.0 },
                ..healthy(now)
            })
        };
        let good = |now| signals(&b, now, move |_| healthy(now));
        let d = decide(&p, &b, &ClusterState::default(), &bad(0), 0);
        assert_eq!(d.endpoints[3].weight, 0);
        let d = decide(&p, &b, &d.state, &good(5_000), 5_000);
        assert_eq!(d.endpoints[3].weight, 0, "still ejected at 5 s");
        let d = decide(&p, &b, &d.state, &good(10_000), 10_000);
        assert_eq!(d.endpoints[3].status, Status::Ramping { fraction: 0.05 });
        assert!(d.events.contains(&Event::HalfOpen {
            endpoint: b[3].0.clone()
        }));
        assert!(d.events.contains(&Event::Recovered {
            endpoint: b[3].0.clone()
        }));
        assert_eq!(d.endpoints[3].weight, 5);
        let d = decide(&p, &b, &d.state, &good(20_000), 20_000);
        let Status::Ramping { fraction } = d.endpoints[3].status else {
            panic!("{:?}", d.endpoints[3]);
        };
        assert!((fraction - 0.525).abs() < 1e-9);
        let d = decide(&p, &b, &d.state, &good(30_000), 30_000);
        assert_eq!(d.endpoints[3].status, Status::Serving);
        assert_eq!(d.endpoints[3].weight, 100);
    }

    #[test]
    fn a_failing_trial_ejects_for_longer() {
        let b = base(4);
        let p = policy();
        let bad = |now| {
            signals(&b, now, move |i| Signals {
                success_rate: if i == 3 { 0.2 } else { 1.0 },
                ..healthy(now)
            })
        };
        let d = decide(&p, &b, &ClusterState::default(), &bad(0), 0);
        let d = decide(&p, &b, &d.state, &bad(10_000), 10_000);
        assert_eq!(d.endpoints[3].status, Status::Ejected { until_ms: 30_000 });
        assert!(d.events.iter().any(|e| matches!(
            e,
            Event::Ejected {
                reason: EjectReason::FailedTrial,
                ..
            }
        )));
    }

    #[test]
    fn a_slow_endpoint_loses_weight_step_by_step_to_the_floor() {
        let b = base(4);
        let p = policy();
        let mut state = ClusterState::default();
        let mut weights = Vec::new();
        for step in 0..8u64 {
            let now = step * 5_000;
            let s = signals(&b, now, |i| Signals {
                latency: if i == 0 { 0.100 } else { 0.010 },
                ..healthy(now)
            });
            let d = decide(&p, &b, &state, &s, now);
            weights.push(d.endpoints[0].weight);
            assert!(d.endpoints[1..].iter().all(|e| e.weight == 100));
            state = d.state;
        }
        assert_eq!(weights[0], 50, "at most 50% change per step");
        assert_eq!(weights[1], 25);
        assert_eq!(*weights.last().unwrap(), 10, "floor 10%: {weights:?}");
        assert!(weights.windows(2).all(|w| w[1] <= w[0]), "{weights:?}");
    }

    #[test]
    fn small_latency_noise_does_not_move_weights() {
        let b = base(4);
        let p = policy();
        let mut state = ClusterState::default();
        for step in 0..10u64 {
            let now = step * 5_000;
            let s = signals(&b, now, |i| Signals {
                latency: 0.010 * (1.0 + 0.04 * ((i as u64 + step) % 3) as f64),
                ..healthy(now)
            });
            let d = decide(&p, &b, &state, &s, now);
            assert!(
                d.endpoints.iter().all(|e| e.weight == 100),
                "{:?}",
                d.endpoints
            );
            state = d.state;
        }
    }

    #[test]
    fn stale_signals_hold_then_relax() {
        let b = base(4);
        let p = policy();
        let s = signals(&b, 0, |i| Signals {
            latency: if i == 0 { 0.100 } else { 0.010 },
            ..healthy(0)
        });
        let d = decide(&p, &b, &ClusterState::default(), &s, 0);
        assert_eq!(d.endpoints[0].weight, 50);
        // Prometheus goes away: nothing fresh.
        let none = BTreeMap::new();
        let d = decide(&p, &b, &d.state, &none, 60_000);
        assert_eq!(d.mode, Mode::FailStatic);
        assert_eq!(d.endpoints[0].weight, 50, "held, not reset and not zeroed");
        assert!(d.endpoints[0].reason.contains("fail static"));
        // Old samples are as good as none, and never eject.
        let old = signals(&b, 0, |_| Signals {
            success_rate: 0.0,
            ..healthy(0)
        });
        let d = decide(&p, &b, &d.state, &old, 120_000);
        assert_eq!(d.mode, Mode::FailStatic);
        assert!(d.endpoints.iter().all(|e| e.healthy));
        let d = decide(&p, &b, &d.state, &none, 300_001);
        assert_eq!(d.mode, Mode::Relaxed);
        assert!(d.endpoints.iter().all(|e| e.weight == 100));
    }

    #[test]
    fn one_stale_endpoint_is_held_while_others_are_decided() {
        let b = base(4);
        let p = policy();
        let mut s = signals(&b, 1000, |_| healthy(1000));
        s.remove(&b[2].0);
        let d = decide(&p, &b, &ClusterState::default(), &s, 1000);
        assert_eq!(d.endpoints[2].status, Status::Held);
        assert_eq!(d.endpoints[2].weight, 100);
        assert!(d.endpoints[2].healthy);
    }

    #[test]
    fn operator_base_weights_are_respected() {
        let b = vec![
            ("a:1".to_owned(), 3),
            ("b:1".to_owned(), 1),
            ("c:1".to_owned(), 0),
        ];
        let s: BTreeMap<String, Signals> = b.iter().map(|(e, _)| (e.clone(), healthy(0))).collect();
        let d = decide(&policy(), &b, &ClusterState::default(), &s, 0);
        let w: Vec<u32> = d.endpoints.iter().map(|e| e.weight).collect();
        assert_eq!(w, [300, 100, 0]);
    }

    proptest! {
        #[test]
        fn weights_stay_in_bounds_and_decisions_are_deterministic(
            steps in prop::collection::vec(
                prop::collection::vec((0.0f64..1.0, 0.001f64..2.0, 0.0f64..500.0, any::<bool>()), 5),
                1..12,
            ),
        ) {
            let b: Vec<(String, u32)> =
                (0..5).map(|i| (format!("e{i}:1"), 1 + i as u32)).collect();
            let p = policy();
            let mut state = ClusterState::default();
            for (k, step) in steps.iter().enumerate() {
                let now = k as u64 * 7_000;
                let s: BTreeMap<String, Signals> = b
                    .iter()
                    .zip(step)
                    .filter(|(_, (_, _, _, present))| *present)
                    .map(|((e, _), (sr, lat, req, _))| {
                        (e.clone(), Signals { requests: *req, rps: *req / 5.0, success_rate: *sr, latency: *lat, sampled_at_ms: now })
                    })
                    .collect();
                let d = decide(&p, &b, &state, &s, now);
                let again = decide(&p, &b, &state, &s, now);
                prop_assert_eq!(&d, &again);
                let mut serving = 0;
                for (e, (_, base_w)) in d.endpoints.iter().zip(&b) {
                    let max = base_w * 100 * p.max_weight_percent / 100;
                    prop_assert!(e.weight <= max, "{:?}", e);
                    if e.healthy { prop_assert!(e.weight >= 1); serving += 1; }
                }
                prop_assert!(serving >= 1, "never zero capacity");
                state = d.state;
            }
        }
    }

    proptest! {
        #[test]
        fn prefix_keys_never_contradict_string_order(
            a in "[a-c\\x00.:0-9]{0,12}",
            b in "[a-c\\x00.:0-9]{0,12}",
        ) {
            let (ka, kb) = (prefix_key(&a), prefix_key(&b));
            if ka != kb {
                prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            }
        }
    }

    /// Addresses of the pool: several share their first 8 bytes, so sorting them compares
    /// whole strings too.
    fn address(i: usize) -> String {
        format!("10.0.0.{}:80", [1, 10, 11, 2, 20, 3, 100, 12, 4][i % 9])
    }

    fn any_signals() -> impl Strategy<Value = Option<(f64, f64, f64, u64)>> {
        let rate = prop_oneof![
            Just(1.0),
            Just(0.999),
            Just(0.5),
            Just(0.0),
            0.0f64..1.0,
            Just(f64::NAN)
        ];
        let latency = prop_oneof![Just(0.010), Just(0.100), 0.0f64..1.0, Just(0.0)];
        let requests = prop_oneof![Just(200.0), Just(3.0), 0.0f64..1000.0];
        let age = prop_oneof![Just(0u64), 0u64..60_000];
        prop::option::weighted(0.85, (rate, latency, requests, age))
    }

    proptest! {
        #[test]
        fn decisions_are_those_of_the_reference_implementation(
            steps in prop::collection::vec(
                (
                    // base: addresses (some repeated, unordered) and weights
                    prop::collection::vec((0usize..9, 0u32..4), 0..9),
                    // signals per address of the pool
                    prop::collection::vec(any_signals(), 9),
                    // time since the previous step
                    prop_oneof![Just(5_000u64), 1u64..20_000, 20_000u64..400_000],
                ),
                1..25,
            ),
            tight in any::<bool>(),
        ) {
            let p = if tight { policy() } else { Policy { success_rate_minimum_hosts: 2, ..Policy::default() } };
            let mut state = ClusterState::default();
            let mut now = 0u64;
            for (b, sigs, dt) in &steps {
                now += dt;
                let b: Vec<(String, u32)> =
                    b.iter().map(|(i, w)| (address(*i), *w)).collect();
                let s: BTreeMap<String, Signals> = sigs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let (success_rate, latency, requests, age) = (*s)?;
                        Some((address(i), Signals {
                            requests,
                            rps: requests / 5.0,
                            success_rate,
                            latency,
                            sampled_at_ms: now.saturating_sub(age),
                        }))
                    })
                    .collect();
                let d = decide(&p, &b, &state, &s, now);
                let r = reference::decide(&p, &b, &state, &s, now);
                prop_assert_eq!(&d, &r);
                let owned = decide_owned(&p, &b, state.clone(), &s, now);
                prop_assert_eq!(&d, &owned);
                state = d.state;
            }
        }
    }
}
