//! The decision step as first written, map by map: the optimised [`super::decide`] is checked
//! against it on random inputs, decision for decision. When the policy's behaviour changes on
//! purpose, change both or drop this copy and its test.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{
    ms, publish, scaled, success_rate_stats, ClusterState, Decision, EndpointDecision,
    EndpointState, Event, Mode, Policy, Signals, Status,
};
use crate::outlier::{max_ejectable, BreakerState, EjectReason, EjectionTimes};

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// One decision step. `base` lists the cluster's endpoints with the operator's weights;
/// `signals` holds what is known for each (absent: missing). Deterministic: the same inputs
/// give the same decision.
pub(super) fn decide(
    policy: &Policy,
    base: &[(String, u32)],
    previous: &ClusterState,
    signals: &BTreeMap<String, Signals>,
    now_ms: u64,
) -> Decision {
    let times = EjectionTimes {
        base: policy.base_ejection_time,
        max: policy.max_ejection_time,
    };
    let first_step = previous.endpoints.is_empty();
    let mut state = ClusterState {
        endpoints: BTreeMap::new(),
        last_fresh_ms: previous.last_fresh_ms,
    };
    let mut events = Vec::new();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();

    // 1. Freshness.
    let fresh: BTreeMap<&str, Signals> = base
        .iter()
        .filter_map(|(ep, _)| {
            let s = signals.get(ep)?;
            let age = now_ms.saturating_sub(s.sampled_at_ms);
            (age <= ms(policy.stale_after)
                && s.success_rate.is_finite()
                && s.requests.is_finite()
                && s.latency.is_finite())
            .then_some((ep.as_str(), *s))
        })
        .collect();
    for (ep, _) in base {
        let mut st = previous
            .endpoints
            .get(ep)
            .cloned()
            .unwrap_or_else(|| EndpointState::new(now_ms, !first_step));
        if fresh.contains_key(ep.as_str()) {
            st.last_fresh_ms = Some(now_ms);
        }
        state.endpoints.insert(ep.clone(), st);
    }
    if !fresh.is_empty() {
        state.last_fresh_ms = Some(now_ms);
    }

    if fresh.is_empty() {
        let stale_for = state
            .last_fresh_ms
            .map_or(u64::MAX, |t| now_ms.saturating_sub(t));
        if first_step || stale_for >= ms(policy.relax_after) {
            // Relax: the operator's weights, every breaker closed.
            for st in state.endpoints.values_mut() {
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
                state,
                mode: Mode::Relaxed,
                events,
            };
        }
        // Fail static: hold everything as it was.
        let endpoints = base
            .iter()
            .map(|(ep, w)| {
                let st = &state.endpoints[ep];
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
            state,
            mode: Mode::FailStatic,
            events,
        };
    }

    // 2. Breakers: time moves ejections to half-open; fresh trials are judged.
    let serving_rates: Vec<f64> = base
        .iter()
        .filter(|(ep, w)| *w > 0 && state.endpoints[ep].breaker.state() == BreakerState::Closed)
        .filter_map(|(ep, _)| fresh.get(ep.as_str()))
        .filter(|s| s.requests >= policy.success_rate_request_volume)
        .map(|s| s.success_rate)
        .collect();
    let sr = success_rate_stats(policy, &serving_rates);
    let passes = |s: &Signals| {
        s.success_rate >= 1.0 - policy.failure_percentage_threshold
            && sr.is_none_or(|(_, _, threshold, _)| s.success_rate >= threshold)
    };
    for (ep, _) in base {
        let st = state.endpoints.get_mut(ep).expect("inserted above");
        if let Some(t) = st.breaker.poll(now_ms) {
            debug_assert_eq!(t.to, BreakerState::HalfOpen);
            events.push(Event::HalfOpen {
                endpoint: ep.clone(),
            });
        }
        if st.breaker.state() != BreakerState::HalfOpen {
            continue;
        }
        let Some(s) = fresh.get(ep.as_str()) else {
            continue;
        };
        if s.requests < policy.half_open_min_requests {
            reasons.insert(
                ep.clone(),
                format!(
                    "half-open: {:.0} trial requests so far, {:.0} needed",
                    s.requests, policy.half_open_min_requests
                ),
            );
            continue;
        }
        if passes(s) {
            st.breaker.trial(true, now_ms, times);
            st.ramp_from_ms = Some(now_ms);
            st.multiplier = 1.0;
            events.push(Event::Recovered {
                endpoint: ep.clone(),
            });
            reasons.insert(
                ep.clone(),
                format!(
                    "recovered: trial success rate {:.3}; ramping back",
                    s.success_rate
                ),
            );
        } else if let Some(t) = st.breaker.trial(false, now_ms, times) {
            if let BreakerState::Open { until_ms } = t.to {
                events.push(Event::Ejected {
                    endpoint: ep.clone(),
                    reason: EjectReason::FailedTrial,
                    until_ms,
                });
                reasons.insert(
                    ep.clone(),
                    format!(
                        "ejected again: trial success rate {:.3}; for {} s",
                        s.success_rate,
                        (until_ms - now_ms) / 1000
                    ),
                );
            }
        }
    }

    // 3. Outliers among fresh, closed endpoints.
    let mut candidates: Vec<(&str, f64, EjectReason, String)> = Vec::new();
    let fp_hosts = base
        .iter()
        .filter_map(|(ep, _)| fresh.get(ep.as_str()))
        .filter(|s| s.requests >= policy.failure_percentage_request_volume)
        .count();
    for (ep, w) in base {
        if *w == 0 || state.endpoints[ep].breaker.state() != BreakerState::Closed {
            continue;
        }
        let Some(s) = fresh.get(ep.as_str()) else {
            continue;
        };
        if let Some((mean, stdev, threshold, hosts)) = sr {
            if s.requests >= policy.success_rate_request_volume && s.success_rate < threshold {
                candidates.push((
                    ep,
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
                ep,
                s.success_rate,
                EjectReason::FailurePercentage,
                format!(
                    "failure ratio {failure:.3} ≥ {:.3} over {:.0} requests",
                    policy.failure_percentage_threshold, s.requests
                ),
            ));
        }
    }
    candidates.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
    let serving = base.iter().filter(|(_, w)| *w > 0).count();
    let allowed =
        max_ejectable(serving, policy.max_ejection_percent).min(serving.saturating_sub(1));
    let panic_floor = (serving * policy.panic_threshold_percent.min(100) as usize).div_ceil(100);
    for (ep, _, reason, why) in candidates {
        let out = base
            .iter()
            .filter(|(e, w)| *w > 0 && state.endpoints[e].breaker.state() != BreakerState::Closed)
            .count();
        if out >= allowed || serving - out - 1 < panic_floor {
            reasons.insert(
                ep.to_owned(),
                format!("outlier but not ejected: {why}; max_ejection_percent or the panic threshold reached"),
            );
            continue;
        }
        let st = state.endpoints.get_mut(ep).expect("inserted above");
        if let Some(t) = st.breaker.trip(now_ms, times, reason) {
            if let BreakerState::Open { until_ms } = t.to {
                st.ramp_from_ms = None;
                events.push(Event::Ejected {
                    endpoint: ep.to_owned(),
                    reason,
                    until_ms,
                });
                reasons.insert(
                    ep.to_owned(),
                    format!("ejected for {} s: {why}", (until_ms - now_ms) / 1000),
                );
            }
        }
    }

    // 4. Latency multipliers among fresh, closed endpoints with enough requests.
    let mut ewmas = Vec::new();
    for (ep, _) in base {
        let st = state.endpoints.get_mut(ep).expect("inserted above");
        let Some(s) = fresh.get(ep.as_str()) else {
            continue;
        };
        if st.breaker.state() != BreakerState::Closed || s.requests < policy.latency_min_requests {
            continue;
        }
        let smoothed = match st.latency_ewma {
            None => s.latency,
            Some((prev, at)) => {
                let dt = now_ms.saturating_sub(at) as f64;
                let half = ms(policy.latency_half_life).max(1) as f64;
                let alpha = 1.0 - 0.5f64.powf(dt / half);
                prev + alpha * (s.latency - prev)
            }
        };
        st.latency_ewma = Some((smoothed, now_ms));
        ewmas.push(smoothed);
    }
    let reference = median(&mut ewmas);
    for (ep, _) in base {
        let st = state.endpoints.get_mut(ep).expect("inserted above");
        if !policy.latency_weighting {
            st.multiplier = 1.0;
            continue;
        }
        let (Some(reference), Some(s)) = (reference, fresh.get(ep.as_str())) else {
            continue;
        };
        if ewmas.len() < 2
            || st.breaker.state() != BreakerState::Closed
            || s.requests < policy.latency_min_requests
        {
            continue;
        }
        let Some((latency, _)) = st.latency_ewma else {
            continue;
        };
        let floor = f64::from(policy.min_weight_percent) / 100.0;
        let cap = f64::from(policy.max_weight_percent.max(policy.min_weight_percent)) / 100.0;
        let target = if latency > 0.0 {
            (reference / latency).clamp(floor, cap)
        } else {
            cap
        };
        let current = st.multiplier;
        let band = f64::from(policy.hysteresis_percent) / 100.0;
        if ((target - current) / current).abs() > band {
            let step = f64::from(policy.max_step_percent) / 100.0;
            st.multiplier = target.clamp(current * (1.0 - step), current * (1.0 + step));
            st.multiplier = st.multiplier.clamp(floor, cap);
        }
        if !reasons.contains_key(ep) && (st.multiplier - 1.0).abs() > 1e-9 {
            reasons.insert(
                ep.clone(),
                format!(
                    "latency {:.4} s vs cluster median {reference:.4} s: weight ×{:.2} (target ×{target:.2})",
                    latency, st.multiplier
                ),
            );
        }
    }

    // 5. Decay past ejections of healthy endpoints, then publish.
    for st in state.endpoints.values_mut() {
        if now_ms.saturating_sub(st.last_decay_ms) >= ms(policy.decay_interval) {
            st.breaker.decay();
            st.last_decay_ms = now_ms;
        }
    }
    let mut healthy = 0;
    let mut endpoints = Vec::with_capacity(base.len());
    for (ep, w) in base {
        let st = state.endpoints.get_mut(ep).expect("inserted above");
        let (weight, is_healthy, status) = publish(policy, *w, st, now_ms);
        if st.ramp_from_ms.is_some()
            && now_ms.saturating_sub(st.ramp_from_ms.unwrap_or(0)) >= ms(policy.slow_start_window)
        {
            st.ramp_from_ms = None;
        }
        let held = !fresh.contains_key(ep.as_str());
        if is_healthy && *w > 0 {
            healthy += 1;
        }
        let reason = reasons.remove(ep).unwrap_or_else(|| {
            if held {
                "held: no fresh signals for this endpoint".to_owned()
            } else {
                match status {
                    Status::Ejected { until_ms } => {
                        format!(
                            "ejected for {} more s",
                            until_ms.saturating_sub(now_ms) / 1000
                        )
                    }
                    Status::HalfOpen => "half-open: waiting for trial requests".to_owned(),
                    Status::Ramping { fraction } => {
                        format!("slow start: {:.0}% of full weight", fraction * 100.0)
                    }
                    _ => "healthy".to_owned(),
                }
            }
        });
        let mut summary = String::new();
        if let Some(s) = fresh.get(ep.as_str()) {
            let _ = write!(
                summary,
                "{:.1} rps, success {:.3}, latency {:.4} s",
                s.rps, s.success_rate, s.latency
            );
        }
        endpoints.push(EndpointDecision {
            endpoint: ep.clone(),
            weight,
            healthy: is_healthy,
            status: if held { Status::Held } else { status },
            multiplier: st.multiplier,
            reason: if summary.is_empty() {
                reason
            } else {
                format!("{reason} ({summary})")
            },
            signals: fresh.get(ep.as_str()).copied(),
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
        state,
        mode,
        events,
    }
}
