//! The decision step as a whole, and each of its steps on small hand-built inputs.

use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;

mod latency;

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
        // The window `healthy` signals cover (200 requests at 20/s).
        signal_window: Duration::from_secs(10),
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
    // As fast as the others, it is warm: its 20 s ramp runs three times as fast.
    let mut d = d;
    for (now, expected) in [(12_000, 0.335), (14_000, 0.62)] {
        d = decide(&p, &b, &d.state, &good(now), now);
        let Status::Ramping { fraction } = d.endpoints[3].status else {
            panic!("{:?}", d.endpoints[3]);
        };
        assert!((fraction - expected).abs() < 1e-9, "{fraction} at {now}");
    }
    let d = decide(&p, &b, &d.state, &good(20_000), 20_000);
    assert_eq!(d.endpoints[3].status, Status::Serving);
    assert_eq!(d.endpoints[3].weight, 100);
}

#[test]
fn a_slower_newcomer_ramps_only_once_its_weight_has_come_down() {
    let b = base(4);
    let p = policy();
    let d = decide(
        &p,
        &b[..3],
        &ClusterState::default(),
        &signals(&b, 0, |_| healthy(0)),
        0,
    );
    let mut state = d.state;
    let mut seen = Vec::new();
    for step in 1..=40u64 {
        let now = step * 5_000;
        let s = signals(&b, now, |i| Signals {
            latency: if i == 3 { 0.100 } else { 0.010 },
            ..healthy(now)
        });
        let d = decide(&p, &b, &state, &s, now);
        seen.push((d.endpoints[3].status, d.endpoints[3].multiplier));
        state = d.state;
    }
    // Cold (10 × slower): the ramp stands at its trial weight while the latency rule takes
    // its multiplier down; at the floor the ramp runs, in its 20 s.
    let ramping_at = |f: f64| {
        seen.iter()
            .filter(|(s, _)| *s == Status::Ramping { fraction: f })
            .count()
    };
    assert!(ramping_at(0.05) >= 8, "{seen:?}");
    let first_move = seen
        .iter()
        .position(|(s, _)| !matches!(s, Status::Ramping { fraction } if *fraction == 0.05))
        .unwrap();
    assert!(
        (seen[first_move].1 - 0.1).abs() < 1e-9,
        "at the floor: {seen:?}"
    );
    assert!(seen[first_move - 1].1 > 0.1, "not before: {seen:?}");
    assert_eq!(seen.last().unwrap().0, Status::Serving);
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
    for step in 0..60u64 {
        let now = step * 5_000;
        let s = signals(&b, now, |i| Signals {
            latency: if i == 0 { 0.100 } else { 0.010 },
            ..healthy(now)
        });
        let d = decide(&p, &b, &state, &s, now);
        weights.push(d.endpoints[0].weight);
        assert!(
            d.endpoints[1..].iter().all(|e| e.weight == 100),
            "the others are the median: {:?}",
            d.endpoints
        );
        state = d.state;
    }
    assert_eq!(
        weights[0], 67,
        "the first step is limited to max_step_percent"
    );
    assert!(weights[1] < weights[0] && weights[1] > 50, "{weights:?}");
    assert!(
        weights[10] <= 25,
        "a quarter of its weight within 11 decisions: {weights:?}"
    );
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
    assert_eq!(d.endpoints[0].weight, 67);
    // Prometheus goes away: nothing fresh.
    let none = BTreeMap::new();
    let d = decide(&p, &b, &d.state, &none, 60_000);
    assert_eq!(d.mode, Mode::FailStatic);
    assert_eq!(d.endpoints[0].weight, 67, "held, not reset and not zeroed");
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
    fn decide_owned_decides_as_decide(
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
        tight in prop::option::of(any::<bool>()),
    ) {
        let p = match tight {
            Some(true) => policy(),
            Some(false) => Policy { success_rate_minimum_hosts: 2, ..Policy::default() },
            None => Policy {
                base_ejection_time: Duration::MAX,
                max_ejection_time: Duration::MAX,
                relax_after: Duration::MAX,
                ..policy()
            },
        };
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
            let owned = decide_owned(&p, &b, state.clone(), &s, now);
            prop_assert_eq!(&d, &owned);
            for e in &d.endpoints {
                // No saturated clock (u64::MAX ms is 18446744073709551 s) in words.
                prop_assert!(!e.reason.contains("18446744073709"), "{}", e.reason);
            }
            state = d.state;
        }
    }
}

// === The steps of a decision, one by one ===

fn names(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    list.iter().map(|&(e, w)| (e.to_owned(), w)).collect()
}

fn cluster(entries: Vec<(&str, EndpointState)>) -> ClusterState {
    ClusterState {
        endpoints: entries
            .into_iter()
            .map(|(e, st)| (e.to_owned(), st))
            .collect(),
        last_fresh_ms: Some(0),
    }
}

/// A closed endpoint's state as of `at`.
fn closed_state(at: u64) -> EndpointState {
    EndpointState::new(at, false)
}

/// An endpoint ejected at 0 under `policy()` (until 10 s).
fn ejected_state() -> EndpointState {
    let mut st = closed_state(0);
    st.breaker
        .trip(0, ejection_times(&policy()), EjectReason::FailurePercentage);
    st
}

fn with_rate(success_rate: f64, now: u64) -> Signals {
    Signals {
        success_rate,
        ..healthy(now)
    }
}

#[test]
fn fresh_signals_are_recent_and_finite() {
    let s = healthy(10_000);
    assert!(is_fresh(&s, 40_000, 30_000));
    assert!(!is_fresh(&s, 40_001, 30_000));
    assert!(
        is_fresh(&s, 5_000, 30_000),
        "a sample from ahead is not stale"
    );
    for bad in [
        Signals {
            success_rate: f64::NAN,
            ..s
        },
        Signals {
            requests: f64::INFINITY,
            ..s
        },
        Signals {
            latency: f64::NAN,
            ..s
        },
    ] {
        assert!(!is_fresh(&bad, 10_000, 30_000), "{bad:?}");
    }
}

#[test]
fn gather_makes_one_sorted_slot_per_address_with_only_fresh_signals() {
    let b = names(&[("c:1", 1), ("a:1", 2), ("c:1", 3), ("b:1", 1)]);
    let mut kept = closed_state(0);
    kept.multiplier = 0.5;
    let previous = cluster(vec![("c:1", kept.clone())]);
    let s: BTreeMap<String, Signals> = [
        ("a:1".to_owned(), healthy(0)),
        ("b:1".to_owned(), healthy(100_000)),
    ]
    .into_iter()
    .collect();
    let slots = Slots::gather(&policy(), &b, &previous, &s, 100_000);
    let order: Vec<&str> = slots.slots.iter().map(|s| s.name).collect();
    assert_eq!(order, ["a:1", "b:1", "c:1"]);
    assert_eq!(slots.slot, [2, 0, 2, 1], "repeated addresses share a slot");
    assert_eq!(slots.known, 1);
    assert_eq!(slots.slots[0].fresh, None, "a:1's sample is stale");
    assert_eq!(slots.slots[1].fresh, Some(healthy(100_000)));
    assert_eq!(slots.slots[1].state.last_fresh_ms, Some(100_000));
    assert_eq!(slots.slots[0].state.last_fresh_ms, None);
    assert_eq!(
        slots.slots[0].state.ramp_from_ms,
        Some(100_000),
        "a newcomer to a running cluster ramps up"
    );
    assert_eq!(
        slots.slots[2].state, kept,
        "a known address keeps its state"
    );
    assert!(slots.any_fresh());
}

#[test]
fn on_the_first_step_endpoints_start_at_full_weight() {
    let b = base(2);
    let s = signals(&b, 0, |_| healthy(0));
    let slots = Slots::gather(&policy(), &b, &ClusterState::default(), &s, 0);
    assert!(slots.slots.iter().all(|s| s.state.ramp_from_ms.is_none()));
    assert_eq!(slots.known, 0);
}

#[test]
fn into_state_gives_the_same_state_from_an_owned_or_a_borrowed_previous_one() {
    let b = base(2);
    let previous = cluster(vec![
        (b[0].0.as_str(), closed_state(0)),
        (b[1].0.as_str(), closed_state(0)),
    ]);
    let none = BTreeMap::new();
    let changed = |base| {
        let mut slots = Slots::gather(&policy(), base, &previous, &none, 5_000);
        slots.slots[0].state.multiplier = 0.5;
        slots
    };
    let owned = changed(&b).into_state(Cow::Owned(previous.clone()), Some(7));
    let borrowed = changed(&b).into_state(Cow::Borrowed(&previous), Some(7));
    assert_eq!(owned, borrowed);
    assert_eq!(owned.last_fresh_ms, Some(7));
    assert_eq!(owned.endpoints[&b[0].0].multiplier, 0.5);
    assert_eq!(owned.endpoints[&b[1].0], closed_state(0));
    // Fewer addresses than before: the dropped one is gone from the owned map too.
    let one = &b[..1];
    let owned = changed(one).into_state(Cow::Owned(previous.clone()), None);
    assert_eq!(owned.endpoints.keys().collect::<Vec<_>>(), [&b[0].0]);
}

#[test]
fn without_fresh_signals_a_first_step_relaxes_and_later_ones_hold_until_relax_after() {
    let b = base(2);
    let p = policy();
    let none = BTreeMap::new();
    let first = Slots::gather(&p, &b, &ClusterState::default(), &none, 0).hold_or_relax(
        &p,
        Cow::Owned(ClusterState::default()),
        true,
        0,
    );
    assert_eq!(first.mode, Mode::Relaxed);
    assert!(first
        .endpoints
        .iter()
        .all(|e| e.weight == 100 && e.reason == "no signals yet: base weight"));

    let mut slower = closed_state(0);
    slower.multiplier = 0.5;
    let previous = cluster(vec![
        (b[0].0.as_str(), ejected_state()),
        (b[1].0.as_str(), slower),
    ]);
    let decide_at = |now| {
        Slots::gather(&p, &b, &previous, &none, now).hold_or_relax(
            &p,
            Cow::Borrowed(&previous),
            false,
            now,
        )
    };
    let held = decide_at(60_000);
    assert_eq!(held.mode, Mode::FailStatic);
    let w: Vec<(u32, bool)> = held
        .endpoints
        .iter()
        .map(|e| (e.weight, e.healthy))
        .collect();
    assert_eq!(w, [(0, false), (50, true)], "held as they were");
    assert_eq!(
        held.endpoints[0].reason,
        "held: no fresh signals for 60 s (fail static)"
    );
    assert_eq!(held.state, previous);
    assert!(held.events.is_empty());

    let relaxed = decide_at(300_000);
    assert_eq!(relaxed.mode, Mode::Relaxed);
    assert!(relaxed
        .endpoints
        .iter()
        .all(|e| e.weight == 100 && e.healthy));
    assert_eq!(
        relaxed.endpoints[1].reason,
        "no fresh signals for 300 s: base weight"
    );
    assert_eq!(
        relaxed.state.endpoints[&b[0].0].breaker,
        Breaker::default(),
        "every breaker closed"
    );
    assert_eq!(relaxed.state.last_fresh_ms, Some(0));
}

#[test]
fn a_trial_passes_only_confidently_clear_of_both_outlier_thresholds() {
    let p = policy(); // failure threshold 0.5: readmitted above 0.55 with 95 % confidence
    let over = |rate: f64, requests: f64| {
        judge_trial(
            &p,
            &Signals {
                requests,
                ..with_rate(rate, 0)
            },
            None,
        )
    };
    assert_eq!(over(0.7, 200.0), Trial::Passes);
    assert_eq!(over(1.0, 20.0), Trial::Passes);
    assert_eq!(over(0.5, 200.0), Trial::Fails, "the ejection rule itself");
    assert_eq!(over(0.4, 200.0), Trial::Fails);
    let Trial::Undecided { bound, needed } = over(0.6, 200.0) else {
        panic!("0.6 of 200 is not clear of 0.55");
    };
    assert!(bound < needed && bound > 0.5 && (needed - 0.55).abs() < 1e-12);
    assert!(
        matches!(over(1.0, 3.0), Trial::Undecided { .. }),
        "3 of 3 is not enough"
    );
    assert_eq!(over(0.6, 20_000.0), Trial::Passes, "with enough evidence");
    let sr = Some((0.99, 0.01, 0.9, 5));
    assert_eq!(judge_trial(&p, &with_rate(0.95, 0), sr), Trial::Passes);
    assert_eq!(judge_trial(&p, &with_rate(0.8, 0), sr), Trial::Fails);
    let off = Policy {
        failure_percentage_threshold: 1.1,
        ..policy()
    };
    assert_eq!(
        judge_trial(&off, &with_rate(0.1, 0), None),
        Trial::Passes,
        "rule off"
    );
}

#[test]
fn the_success_rate_rule_needs_statistics_and_volume_and_says_why() {
    let p = policy();
    let sr = Some((0.99, 0.01, 0.971, 5));
    let low = with_rate(0.9, 0);
    assert_eq!(
        success_rate_outlier(&p, &low, sr).as_deref(),
        Some("success rate 0.900 below 0.971 (mean 0.990 − 1.9 × stdev 0.010, 5 hosts)")
    );
    assert_eq!(success_rate_outlier(&p, &low, None), None);
    let few = Signals {
        requests: 99.0,
        ..low
    };
    assert_eq!(success_rate_outlier(&p, &few, sr), None);
    assert_eq!(success_rate_outlier(&p, &with_rate(0.98, 0), sr), None);
}

#[test]
fn the_failure_percentage_rule_needs_hosts_and_volume_and_says_why() {
    let p = policy(); // 0.5, one host, 20 requests
    let failing = with_rate(0.4, 0);
    assert_eq!(
        failure_percentage_outlier(&p, &failing, 1).as_deref(),
        Some("failure ratio 0.600 ≥ 0.500 over 200 requests")
    );
    assert_eq!(failure_percentage_outlier(&p, &failing, 0), None);
    let few = Signals {
        requests: 19.0,
        ..failing
    };
    assert_eq!(failure_percentage_outlier(&p, &few, 1), None);
    assert_eq!(failure_percentage_outlier(&p, &with_rate(0.6, 0), 1), None);
}

#[test]
fn trials_are_judged_once_half_open_with_enough_requests() {
    let p = policy();
    let b = base(3);
    let previous = cluster(
        b.iter()
            .map(|(e, _)| (e.as_str(), ejected_state()))
            .collect(),
    );
    let mut s = signals(&b, 10_000, |_| healthy(10_000));
    s.get_mut(&b[0].0).unwrap().requests = 2.0;
    s.get_mut(&b[2].0).unwrap().success_rate = 0.2;
    let mut slots = Slots::gather(&p, &b, &previous, &s, 10_000);
    let mut events = Vec::new();
    slots.judge_trials(&p, None, ejection_times(&p), 10_000, &mut events);

    let st = |i: usize| &slots.slots[i].state;
    let why = |i: usize| slots.slots[i].reason.as_deref();
    assert_eq!(st(0).breaker.state(), BreakerState::HalfOpen);
    assert_eq!(
        why(0),
        Some("half-open: 2 trial requests so far, 20 needed")
    );
    assert_eq!(st(1).breaker.state(), BreakerState::Closed);
    assert_eq!(st(1).ramp_from_ms, Some(10_000));
    assert_eq!(
        why(1),
        Some("recovered: trial success rate 1.000; ramping back")
    );
    assert_eq!(
        st(2).breaker.state(),
        BreakerState::Open { until_ms: 30_000 },
        "a second ejection lasts twice the base"
    );
    assert_eq!(
        why(2),
        Some("ejected again: trial success rate 0.200; for 20 s")
    );
    let half_open = |i: usize| Event::HalfOpen {
        endpoint: b[i].0.clone(),
    };
    assert_eq!(
        events,
        [
            half_open(0),
            half_open(1),
            Event::Recovered {
                endpoint: b[1].0.clone()
            },
            half_open(2),
            Event::Ejected {
                endpoint: b[2].0.clone(),
                reason: EjectReason::FailedTrial,
                until_ms: 30_000
            },
        ]
    );
}

/// Steps every second from 10 s (when the ejection of `10.0.0.0:80` ends) until it leaves
/// half-open, its trial seeing `rps` with `success` through a 4 s window (never 20 requests in
/// one window); returns when and how it left.
fn trial_at_low_load(rps: f64, success: f64) -> Option<(u64, BreakerState)> {
    let p = policy();
    let b = base(3);
    let mut state = cluster(vec![(b[0].0.as_str(), ejected_state())]);
    for (e, _) in &b[1..] {
        state.endpoints.insert(e.clone(), closed_state(0));
    }
    for now in (10_000..120_000).step_by(1000) {
        let s = signals(&b, now, |i| {
            if i == 0 {
                Signals {
                    requests: rps * 4.0,
                    rps,
                    success_rate: success,
                    latency: 0.010,
                    sampled_at_ms: now,
                }
            } else {
                healthy(now)
            }
        });
        let d = decide(&p, &b, &state, &s, now);
        state = d.state;
        let breaker = state.endpoints[&b[0].0].breaker.state();
        if breaker != BreakerState::HalfOpen && now > 10_000 {
            return Some((now, breaker));
        }
    }
    None
}

#[test]
fn a_trial_at_low_load_gathers_its_requests_over_steps() {
    // 1 req/s through a 4 s window: 4 requests per window, 20 needed. Summed over the steps
    // since it went half-open (10 s), the trial has 20 requests 20 s later.
    let (at, state) = trial_at_low_load(1.0, 1.0).expect("the trial is judged");
    assert_eq!(state, BreakerState::Closed);
    assert!((30_000..=32_000).contains(&at), "recovered at {at} ms");
    let (_, state) = trial_at_low_load(1.0, 0.3).expect("the trial is judged");
    assert!(
        matches!(state, BreakerState::Open { .. }),
        "a failing trial at low load ejects again: {state:?}"
    );
}

#[test]
fn outlier_candidates_are_serving_closed_and_fresh_endpoints_worst_first() {
    let p = policy();
    let b = names(&[
        ("a:1", 1),
        ("b:1", 1),
        ("c:1", 0),
        ("d:1", 1),
        ("e:1", 1),
        ("f:1", 1),
    ]);
    let previous = cluster(vec![("d:1", ejected_state())]);
    let rates = [0.3, 0.1, 0.0, 0.2, 1.0, 0.4];
    let mut s = signals(&b, 60_000, |i| with_rate(rates[i], 60_000));
    s.get_mut("f:1").unwrap().sampled_at_ms = 0; // stale at 60 s
    let slots = Slots::gather(&p, &b, &previous, &s, 60_000);
    let picked = |sr| {
        slots
            .outlier_candidates(&p, sr)
            .into_iter()
            .map(|c| (slots.slots[c.slot].name, c.reason))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        picked(None),
        [
            ("b:1", EjectReason::FailurePercentage),
            ("a:1", EjectReason::FailurePercentage)
        ]
    );
    assert_eq!(
        picked(Some((0.8, 0.1, 0.5, 5))),
        [
            ("b:1", EjectReason::SuccessRate),
            ("a:1", EjectReason::SuccessRate)
        ],
        "the success-rate rule comes first"
    );
}

#[test]
fn the_ejection_guard_keeps_capacity_and_the_panic_floor() {
    let p = policy(); // 50 % at most, panic threshold 50 %
    let g = EjectionGuard::new(&p, 4);
    assert_eq!(
        g,
        EjectionGuard {
            serving: 4,
            allowed: 2,
            panic_floor: 2
        }
    );
    assert!(g.permits(0) && g.permits(1));
    assert!(!g.permits(2));
    let all = Policy {
        max_ejection_percent: 100,
        panic_threshold_percent: 0,
        ..policy()
    };
    let g = EjectionGuard::new(&all, 4);
    assert!(g.permits(2));
    assert!(!g.permits(3), "never all of them");
    let strict = Policy {
        max_ejection_percent: 50,
        panic_threshold_percent: 100,
        ..policy()
    };
    assert!(!EjectionGuard::new(&strict, 4).permits(0), "panic floor");
    assert!(
        !EjectionGuard::new(&p, 1).permits(0),
        "a lone endpoint stays"
    );
}

#[test]
fn candidates_are_ejected_in_order_until_the_guard_says_no() {
    let p = policy();
    let b = base(4);
    let s = signals(&b, 1_000, |_| healthy(1_000));
    let mut slots = Slots::gather(&p, &b, &ClusterState::default(), &s, 1_000);
    let candidate = |slot, success_rate, why: &str| Candidate {
        slot,
        success_rate,
        reason: EjectReason::FailurePercentage,
        why: why.to_owned(),
    };
    let guard = EjectionGuard {
        serving: 4,
        allowed: 1,
        panic_floor: 0,
    };
    let mut events = Vec::new();
    slots.eject(
        vec![candidate(3, 0.1, "worst"), candidate(1, 0.2, "next")],
        guard,
        ejection_times(&p),
        1_000,
        &mut events,
    );
    assert_eq!(
        slots.slots[3].state.breaker.state(),
        BreakerState::Open { until_ms: 11_000 }
    );
    assert_eq!(
        slots.slots[3].reason.as_deref(),
        Some("ejected for 10 s: worst")
    );
    assert_eq!(slots.slots[1].state.breaker.state(), BreakerState::Closed);
    assert_eq!(
        slots.slots[1].reason.as_deref(),
        Some("outlier but not ejected: next; max_ejection_percent or the panic threshold reached")
    );
    assert_eq!(
        events,
        [Event::Ejected {
            endpoint: b[3].0.clone(),
            reason: EjectReason::FailurePercentage,
            until_ms: 11_000
        }]
    );
    assert_eq!(slots.out(), 1);
}

#[test]
fn latencies_are_smoothed_over_the_half_life_for_trusted_endpoints_only() {
    let p = policy(); // half-life 5 s, 10 requests
    let b = base(3);
    let mut known = closed_state(0);
    known.latency_ewma = Some((0.25, 0));
    let previous = cluster(vec![
        (b[0].0.as_str(), known.clone()),
        (b[2].0.as_str(), known.clone()),
    ]);
    let s = signals(&b, 5_000, |i| Signals {
        latency: 0.75,
        requests: if i == 2 { 5.0 } else { 200.0 },
        ..healthy(5_000)
    });
    let mut slots = Slots::gather(&p, &b, &previous, &s, 5_000);
    let samples = slots.smooth_latencies(&p, 5_000);
    let latencies: Vec<(usize, f64)> = samples.iter().map(|s| (s.slot, s.latency)).collect();
    assert_eq!(
        latencies,
        [(0, 0.5), (1, 0.75)],
        "halfway after one half-life; raw when new"
    );
    assert!(samples.iter().all(|s| s.requests == 200.0));
    let partial: Vec<bool> = samples.iter().map(|s| s.partial).collect();
    assert_eq!(partial, [false, true], "a newcomer ramps");
    assert_eq!(slots.slots[0].state.latency_ewma, Some((0.5, 5_000)));
    assert_eq!(slots.slots[1].state.latency_ewma, Some((0.75, 5_000)));
    assert_eq!(
        slots.slots[2].state.latency_ewma, known.latency_ewma,
        "too few requests to trust"
    );
}

#[test]
fn a_ramping_endpoint_or_one_a_window_after_its_ramp_is_a_partial_sample() {
    let p = policy();
    let b = base(3);
    let mut ramping = closed_state(0);
    ramping.ramp_from_ms = Some(0);
    let mut ramped = closed_state(0);
    ramped.ramp_ended_ms = Some(5_000); // the window (10 s) reaches back into the ramp
    let previous = cluster(vec![
        (b[0].0.as_str(), ramping),
        (b[1].0.as_str(), ramped),
        (b[2].0.as_str(), closed_state(0)),
    ]);
    let s = signals(&b, 10_000, |_| healthy(10_000));
    let mut slots = Slots::gather(&p, &b, &previous, &s, 10_000);
    let partial: Vec<bool> = slots
        .smooth_latencies(&p, 10_000)
        .iter()
        .map(|s| s.partial)
        .collect();
    assert_eq!(partial, [true, true, false]);
    let mut slots = Slots::gather(&p, &b, &previous, &s, 15_000);
    let partial: Vec<bool> = slots
        .smooth_latencies(&p, 15_000)
        .iter()
        .map(|s| s.partial)
        .collect();
    assert_eq!(
        partial,
        [true, false, false],
        "a window after the ramp's end"
    );
}

/// Weighs `b` once at `now` from `previous` on `s`; the multipliers and reasons.
fn weigh(
    p: &Policy,
    b: &[(String, u32)],
    previous: &ClusterState,
    s: &BTreeMap<String, Signals>,
    now: u64,
) -> (Vec<f64>, Vec<Option<String>>, Vec<Option<Comparison>>) {
    let mut slots = Slots::gather(p, b, previous, s, now);
    let samples = slots.smooth_latencies(p, now);
    let compared = slots.weigh_by_latency(p, &samples, now);
    let m = slots.slots.iter().map(|s| s.state.multiplier).collect();
    let r = slots.slots.iter().map(|s| s.reason.clone()).collect();
    (m, r, compared)
}

#[test]
fn latency_weighting_moves_slow_endpoints_away_from_the_median_and_says_why() {
    let p = policy();
    let b = base(4);
    let s = signals(&b, 0, |i| Signals {
        latency: if i == 2 { 1.0 } else { 0.25 },
        ..healthy(0)
    });
    let (m, why, compared) = weigh(&p, &b, &ClusterState::default(), &s, 0);
    assert_eq!(
        [m[0], m[1], m[3]],
        [1.0, 1.0, 1.0],
        "the median of their others is theirs"
    );
    let c = compared[2].unwrap();
    assert!((c.error - (1.001f64 / 0.251).ln()).abs() < 1e-12);
    // 3 standard errors of 2 / √200 and 2 / √600 (the others) combined, wider than the 10 %
    // band.
    let band = 3.0 * 2.0 * (1.0f64 / 200.0 + 1.0 / 600.0).sqrt();
    assert!((c.band - band).abs() < 1e-12, "{c:?}");
    // A first decision weighs a whole window: −0.25 × the excess in log terms.
    let expected = (-0.25 * (c.error - band)).exp();
    assert!((m[2] - expected).abs() < 1e-12, "{m:?} vs {expected}");
    assert_eq!(
        why[2].as_deref(),
        Some("latency 1.0000 s vs cluster median 0.2500 s, beyond its ±63% band: weight ×0.80")
    );
    assert_eq!(why[0], None);
    assert!(compared.iter().all(Option::is_some));
    assert_eq!(compared[0].unwrap().excess(), 0.0);
}

#[test]
fn a_partial_endpoint_only_loses_weight_and_only_when_slower() {
    let p = policy();
    let b = base(4);
    let mut ramping = closed_state(0);
    ramping.ramp_from_ms = Some(0);
    let previous = cluster(vec![
        (b[0].0.as_str(), ramping.clone()),
        (b[1].0.as_str(), ramping),
        (b[2].0.as_str(), closed_state(0)),
        (b[3].0.as_str(), closed_state(0)),
    ]);
    let s = signals(&b, 5_000, |i| Signals {
        latency: [0.001, 1.0, 0.25, 0.25][i],
        ..healthy(5_000)
    });
    let (m, _, _) = weigh(&p, &b, &previous, &s, 5_000);
    assert_eq!(m[0], 1.0, "faster at a fraction of its share says nothing");
    assert!(m[1] < 1.0, "slower even at a fraction of its share: {m:?}");
    assert_eq!(
        &m[2..],
        [1.0, 1.0],
        "the median is of the full-share endpoints"
    );
}

#[test]
fn without_a_comparison_weights_return_to_base_and_weighting_can_be_off() {
    let b = base(2);
    let mut slow = closed_state(0);
    slow.multiplier = 0.5;
    slow.weighed_at_ms = Some(0);
    let previous = cluster(vec![
        (b[0].0.as_str(), slow.clone()),
        (b[1].0.as_str(), slow),
    ]);
    let s = signals(&b, 5_000, |i| Signals {
        latency: 1.0,
        requests: if i == 1 { 5.0 } else { 200.0 },
        rps: if i == 1 { 0.5 } else { 20.0 },
        ..healthy(5_000)
    });
    let (m, why, compared) = weigh(&policy(), &b, &previous, &s, 5_000);
    // Half a window: ln 0.5 shrinks by (0.5 × 0.693 + 0.05) × 0.5.
    let back = (0.5f64.ln() * (1.0 - 0.25) + 0.025).exp();
    assert!(
        m.iter().all(|x| (x - back).abs() < 1e-12),
        "{m:?} vs {back}"
    );
    assert_eq!(
        compared,
        [None, None],
        "one trusted latency: nothing to compare"
    );
    assert_eq!(
        why[0].as_deref(),
        Some("latency not compared (too few requests or endpoints): weight ×0.61, returning to ×1")
    );
    let off = Policy {
        latency_weighting: false,
        ..policy()
    };
    assert_eq!(weigh(&off, &b, &previous, &s, 5_000).0, [1.0, 1.0]);
}

#[test]
fn an_endpoint_as_fast_as_the_median_returns_exactly_to_its_base_weight() {
    let b = base(3);
    let p = policy();
    let mut off = closed_state(0);
    off.multiplier = 0.95;
    off.weighed_at_ms = Some(0);
    let mut state = cluster(vec![
        (b[0].0.as_str(), off),
        (b[1].0.as_str(), closed_state(0)),
        (b[2].0.as_str(), closed_state(0)),
    ]);
    let mut weights = Vec::new();
    for step in 1..=4u64 {
        let now = step * 5_000;
        let d = decide(&p, &b, &state, &signals(&b, now, |_| healthy(now)), now);
        weights.push(d.endpoints[0].weight);
        state = d.state;
    }
    assert_eq!(weights, [99, 100, 100, 100]);
    assert_eq!(state.endpoints[&b[0].0].multiplier, 1.0);
}

#[test]
fn identical_sub_millisecond_backends_keep_equal_weights() {
    // 0.45 ms against 0.55 ms is a ratio of 1.22, but a tenth of a millisecond.
    let b = base(2);
    let p = policy();
    let mut state = ClusterState::default();
    for step in 0..50u64 {
        let now = step * 5_000;
        let s = signals(&b, now, |i| Signals {
            latency: if (i as u64 + step).is_multiple_of(2) {
                0.00045
            } else {
                0.00055
            },
            requests: 20_000.0,
            rps: 2_000.0,
            ..healthy(now)
        });
        let d = decide(&p, &b, &state, &s, now);
        let w: Vec<u32> = d.endpoints.iter().map(|e| e.weight).collect();
        assert_eq!(w, [100, 100], "step {step}");
        state = d.state;
    }
}

#[test]
fn a_ramp_stands_still_while_held_or_slower_and_runs_fast_while_warm() {
    let p = policy(); // slow start over 20 s
    let b = base(3);
    let mut ramping = closed_state(0);
    ramping.ramp_from_ms = Some(0);
    ramping.ramp_seen_ms = Some(0);
    let previous = cluster(vec![
        (b[0].0.as_str(), ramping.clone()),
        (b[1].0.as_str(), ramping.clone()),
        (b[2].0.as_str(), ramping),
    ]);
    let mut s = signals(&b, 4_000, |_| healthy(4_000));
    s.remove(&b[2].0);
    let mut slots = Slots::gather(&p, &b, &previous, &s, 4_000);
    let band = 0.5;
    let compared = [
        Some(Comparison { error: 0.0, band }),
        Some(Comparison { error: 1.0, band }),
        None,
    ];
    slots.pace_ramps(&p, &compared, 4_000);
    let from: Vec<Option<u64>> = slots.slots.iter().map(|s| s.state.ramp_from_ms).collect();
    assert_eq!(
        from,
        [Some(0u64.saturating_sub(8_000)), Some(4_000), Some(4_000)],
        "warm: 3 × 4 s of progress; slower, or held: none"
    );
    assert!(slots
        .slots
        .iter()
        .all(|s| s.state.ramp_seen_ms == Some(4_000)));
    // At the floor a slower newcomer ramps on: there is nothing left to learn.
    slots.slots[1].state.multiplier = 0.1;
    slots.pace_ramps(&p, &compared, 8_000);
    assert_eq!(slots.slots[1].state.ramp_from_ms, Some(4_000));
}

#[test]
fn a_closed_endpoint_forgets_one_ejection_per_decay_interval() {
    let p = policy(); // decay every 60 s
    let times = ejection_times(&p);
    let mut st = ejected_state();
    st.breaker.poll(10_000);
    st.breaker.trial(true, 10_000, times);
    assert_eq!(st.breaker.times_ejected(), 1);
    let b = base(1);
    let previous = cluster(vec![(b[0].0.as_str(), st)]);
    let none = BTreeMap::new();
    let decayed_at = |now| {
        let mut slots = Slots::gather(&p, &b, &previous, &none, now);
        slots.decay_ejections(&p, now);
        let st = &slots.slots[0].state;
        (st.breaker.times_ejected(), st.last_decay_ms)
    };
    assert_eq!(decayed_at(59_999), (1, 0));
    assert_eq!(decayed_at(60_000), (0, 60_000));
}

#[test]
fn publication_ends_finished_ramps_counts_healthy_serving_endpoints_and_marks_held_ones() {
    let p = policy(); // slow start over 20 s
    let b = names(&[("a:1", 1), ("b:1", 1), ("c:1", 0)]);
    let mut ramping = closed_state(0);
    ramping.ramp_from_ms = Some(0);
    let mut ejected = ejected_state();
    ejected.breaker.poll(10_000);
    ejected.breaker.trial(false, 10_000, ejection_times(&p));
    let previous = cluster(vec![
        ("a:1", ramping),
        ("b:1", ejected),
        ("c:1", closed_state(0)),
    ]);
    let mut s = signals(&b, 20_000, |_| healthy(20_000));
    s.remove("c:1");
    let mut slots = Slots::gather(&p, &b, &previous, &s, 20_000);
    let (endpoints, healthy) = slots.publish(&p, 20_000);
    let view: Vec<(u32, bool, Status, &str)> = endpoints
        .iter()
        .map(|e| (e.weight, e.healthy, e.status, e.reason.as_str()))
        .collect();
    assert_eq!(
        view,
        [
            (
                100,
                true,
                Status::Serving,
                "healthy (20.0 rps, success 1.000, latency 0.0100 s)"
            ),
            (
                0,
                false,
                Status::Ejected { until_ms: 30_000 },
                "ejected for 10 more s (20.0 rps, success 1.000, latency 0.0100 s)"
            ),
            (
                0,
                true,
                Status::Held,
                "held: no fresh signals for this endpoint"
            ),
        ]
    );
    assert_eq!(healthy, 1, "a zero base weight does not count as serving");
    assert_eq!(slots.slots[0].state.ramp_from_ms, None, "the ramp is over");
}

#[test]
fn reasons_read_as_they_always_did() {
    assert_eq!(
        status_reason(Status::Serving, true, 0),
        "held: no fresh signals for this endpoint"
    );
    assert_eq!(
        status_reason(Status::Ejected { until_ms: 25_500 }, false, 10_000),
        "ejected for 15 more s"
    );
    assert_eq!(
        status_reason(Status::HalfOpen, false, 0),
        "half-open: waiting for trial requests"
    );
    assert_eq!(
        status_reason(Status::Ramping { fraction: 0.25 }, false, 0),
        "slow start: 25% of full weight"
    );
    assert_eq!(status_reason(Status::Serving, false, 0), "healthy");
    let mut r = "healthy".to_owned();
    push_signals(&mut r, &healthy(0));
    assert_eq!(r, "healthy (20.0 rps, success 1.000, latency 0.0100 s)");
    let mut r = "healthy".to_owned();
    push_signals(
        &mut r,
        &Signals {
            requests: 0.0,
            rps: 0.0,
            ..healthy(0)
        },
    );
    assert_eq!(r, "healthy (no traffic)", "not a success rate of nothing");
    let c = Comparison {
        error: 4.0f64.ln(),
        band: 0.1,
    };
    assert_eq!(
        latency_reason(Some((c, 1.0, 0.25)), c.excess(), 0.5),
        "latency 1.0000 s vs cluster median 0.2500 s, beyond its ±11% band: weight ×0.50"
    );
    assert_eq!(
        latency_reason(Some((c, 0.26, 0.25)), 0.0, 0.9),
        "latency 0.2600 s vs cluster median 0.2500 s, within its ±11% band: weight ×0.90, returning to ×1"
    );
}

#[test]
fn the_cluster_panics_below_the_threshold_share_of_healthy_endpoints() {
    let p = policy(); // 50 %
    assert_eq!(cluster_mode(&p, 4, 2), Mode::Normal);
    assert_eq!(cluster_mode(&p, 4, 1), Mode::Panic);
    assert_eq!(cluster_mode(&p, 0, 0), Mode::Normal);
}

// === The state machine over time: fail static, trials, reasons ===

/// An endpoint (the last of four) ejected at 0 under `p` and readmitted at 10 s: it is
/// ramping, at the trial weight, in the returned state.
fn ramping_cluster(p: &Policy, b: &[(String, u32)]) -> ClusterState {
    let bad = signals(b, 0, |i| Signals {
        success_rate: if i == 3 { 0.2 } else { 1.0 },
        ..healthy(0)
    });
    let d = decide(p, b, &ClusterState::default(), &bad, 0);
    let good = signals(b, 10_000, |_| healthy(10_000));
    let d = decide(p, b, &d.state, &good, 10_000);
    assert_eq!(d.endpoints[3].status, Status::Ramping { fraction: 0.05 });
    d.state
}

fn ramp_fraction(d: &Decision, i: usize) -> f64 {
    match d.endpoints[i].status {
        Status::Ramping { fraction } => fraction,
        _ => panic!("{:?}", d.endpoints[i]),
    }
}

#[test]
fn fail_static_holds_a_ramp_where_it_was_and_it_resumes_from_there() {
    let b = base(4);
    let p = Policy {
        slow_start_window: Duration::from_secs(60),
        ..policy()
    };
    let good = |now| signals(&b, now, |_| healthy(now));
    // Signals again at 12 s: the ramp goes on (warm: three times as fast, 6 s of 60).
    let d = decide(&p, &b, &ramping_cluster(&p, &b), &good(12_000), 12_000);
    let fraction = ramp_fraction(&d, 3);
    assert!((fraction - 0.145).abs() < 1e-9, "{fraction}");
    let weight = d.endpoints[3].weight;
    // Prometheus goes away for a minute, decisions every 5 s: held means held.
    let none = BTreeMap::new();
    let mut state = d.state;
    for now in (17_000..=72_000).step_by(5_000) {
        let d = decide(&p, &b, &state, &none, now);
        assert_eq!(d.mode, Mode::FailStatic);
        let e = &d.endpoints[3];
        assert_eq!((e.weight, e.status), (weight, Status::Held), "at {now}");
        assert!(
            e.reason.starts_with("held: no fresh signals for"),
            "{}",
            e.reason
        );
        state = d.state;
    }
    // Signals return: the ramp resumes where it was (5 s since the last held decision, at
    // three times the pace: 15 s of 60 more), then finishes.
    let d = decide(&p, &b, &state, &good(77_000), 77_000);
    let resumed = ramp_fraction(&d, 3);
    assert!(
        (resumed - fraction - 0.2375).abs() < 1e-9,
        "{fraction} -> {resumed}"
    );
    let mut d = d;
    for now in [82_000, 87_000, 92_000] {
        d = decide(&p, &b, &d.state, &good(now), now);
    }
    assert_eq!(d.endpoints[3].status, Status::Serving);
}

#[test]
fn an_endpoint_held_alone_keeps_its_ramp_still_while_the_others_are_decided() {
    let b = base(4);
    let p = policy();
    let mut state = ramping_cluster(&p, &b);
    for now in (15_000..=60_000).step_by(5_000) {
        let mut s = signals(&b, now, |_| healthy(now));
        s.remove(&b[3].0);
        let d = decide(&p, &b, &state, &s, now);
        assert_eq!(d.mode, Mode::Normal);
        assert_eq!(
            (d.endpoints[3].weight, d.endpoints[3].status),
            (5, Status::Held)
        );
        state = d.state;
    }
}

/// 200 decisions, every 5 s, of four endpoints, the last failing `failing(now)` of its
/// requests (200 a window, or 20 while half-open: its trial weight is 5 %): the
/// (time, status) of the last endpoint and the events.
fn run_failing(failing: impl Fn(u64) -> f64) -> (Vec<(u64, Status)>, Vec<Event>) {
    let b = base(4);
    let p = policy();
    let mut state = ClusterState::default();
    let mut statuses = Vec::new();
    let mut events = Vec::new();
    for step in 0..200u64 {
        let now = step * 5_000;
        let trial = state
            .endpoints
            .get(&b[3].0)
            .is_some_and(|st| st.breaker.state() == BreakerState::HalfOpen);
        let s = signals(&b, now, |i| Signals {
            success_rate: if i == 3 { 1.0 - failing(now) } else { 1.0 },
            requests: if i == 3 && trial { 20.0 } else { 200.0 },
            ..healthy(now)
        });
        let d = decide(&p, &b, &state, &s, now);
        statuses.push((now, d.endpoints[3].status));
        events.extend(d.events.into_iter().filter(|e| match e {
            Event::Ejected { endpoint, .. }
            | Event::HalfOpen { endpoint }
            | Event::Recovered { endpoint } => *endpoint == b[3].0,
        }));
        state = d.state;
    }
    (statuses, events)
}

#[test]
fn an_endpoint_failing_half_its_requests_is_never_readmitted() {
    let (statuses, events) = run_failing(|_| 0.5);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Recovered { .. })),
        "{events:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|(_, s)| matches!(s, Status::Ejected { .. } | Status::HalfOpen)),
        "{statuses:?}"
    );
    // It is tried again and again, each time ejected for longer.
    let ends: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Ejected { until_ms, .. } => Some(*until_ms),
            _ => None,
        })
        .collect();
    assert!(ends.len() >= 3, "{events:?}");
    let gaps: Vec<u64> = ends.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
}

#[test]
fn a_recovered_endpoint_is_still_readmitted() {
    // Half failing for the first two minutes, then healthy.
    let (statuses, events) = run_failing(|now| if now < 120_000 { 0.5 } else { 0.0 });
    let recovered: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Recovered { .. }))
        .collect();
    assert_eq!(recovered.len(), 1, "{events:?}");
    assert_eq!(statuses.last().unwrap().1, Status::Serving);
}

#[test]
fn reasons_never_show_saturated_times() {
    let b = base(2);
    let p = policy();
    let none = BTreeMap::new();
    // No signals on the first step nor after it: never any fresh data.
    let d = decide(&p, &b, &ClusterState::default(), &none, 0);
    let d = decide(&p, &b, &d.state, &none, 5_000);
    assert_eq!(d.mode, Mode::Relaxed);
    assert_eq!(d.endpoints[0].reason, "no fresh signals yet: base weight");
    // An ejection time the clock cannot count.
    let forever = Policy {
        base_ejection_time: Duration::MAX,
        max_ejection_time: Duration::MAX,
        ..policy()
    };
    let s = signals(&b, 0, |i| Signals {
        success_rate: if i == 1 { 0.1 } else { 1.0 },
        ..healthy(0)
    });
    let d = decide(&forever, &b, &ClusterState::default(), &s, 0);
    assert_eq!(
        d.endpoints[1].reason,
        "ejected indefinitely: failure ratio 0.900 ≥ 0.500 over 200 requests (20.0 rps, success 0.100, latency 0.0100 s)"
    );
    let d = decide(
        &forever,
        &b,
        &d.state,
        &signals(&b, 5_000, |_| healthy(5_000)),
        5_000,
    );
    assert!(
        d.endpoints[1].reason.starts_with("ejected indefinitely ("),
        "{}",
        d.endpoints[1].reason
    );
    assert_eq!(
        status_reason(Status::Ejected { until_ms: u64::MAX }, false, 5_000),
        "ejected indefinitely"
    );
}

/// A restarted controller resumes a slow endpoint's low multiplier from its state; its first
/// decisions see a rate window that has barely filled (half a second: a handful of requests,
/// too few to compare). They move the multiplier by that half second's share of a window,
/// not by a whole window's (found across processes: a slow endpoint went from weight 34 to
/// 51 at the first decision after a restart, then back down over the next seconds).
#[test]
fn a_barely_filled_window_after_a_restart_barely_moves_a_multiplier() {
    let p = policy(); // a 10 s signal window
    let b = base(3);
    let now = 600_000;
    let mut slow = closed_state(0);
    slow.multiplier = 0.34;
    slow.latency_ewma = Some((0.0475, now - 60_000));
    slow.weighed_at_ms = Some(now - 60_000);
    let mut fast = closed_state(0);
    fast.multiplier = 1.9;
    fast.latency_ewma = Some((0.0005, now - 60_000));
    fast.weighed_at_ms = Some(now - 60_000);
    let previous = cluster(vec![
        (b[0].0.as_str(), fast.clone()),
        (b[1].0.as_str(), fast),
        (b[2].0.as_str(), slow),
    ]);
    // Half a second of signals: 35 requests to each fast endpoint, 6 to the slow one.
    let s = signals(&b, now, |i| Signals {
        requests: if i == 2 { 6.0 } else { 35.0 },
        rps: if i == 2 { 12.0 } else { 70.0 },
        latency: if i == 2 { 0.0475 } else { 0.0005 },
        ..healthy(now)
    });
    let d = decide(&p, &b, &previous, &s, now);
    let after = |i: usize| d.state.endpoints[&b[i].0].multiplier;
    // A whole window's decay would take ×0.34 to about ×0.56 and ×1.9 to about ×1.33.
    assert!(
        (after(2).ln() - 0.34f64.ln()).abs() < 0.05,
        "slow: ×0.34 → ×{:.3}",
        after(2)
    );
    assert!(
        (after(0).ln() - 1.9f64.ln()).abs() < 0.05,
        "fast: ×1.9 → ×{:.3}",
        after(0)
    );
}

/// A half-open endpoint in a quiet cluster gets the trial weight that brings it its
/// `half_open_min_requests` within a signal window (found live: at 5 % of its base weight a
/// recovered backend of `gofe up` needed 30 s of trial at 0.5 req/s); in a busy cluster it
/// keeps the configured trickle; never more than half its base weight.
#[test]
fn a_trial_in_a_quiet_cluster_is_weighted_to_finish_within_a_window() {
    let p = policy(); // a 10 s window, 20 trial requests, 5 % trial weight
    let b = base(4);
    let now = 10_000; // ejected_state's ejection has just run out
    let trial_weight = |cluster_rps: f64| {
        let previous = cluster(vec![
            (b[0].0.as_str(), closed_state(0)),
            (b[1].0.as_str(), closed_state(0)),
            (b[2].0.as_str(), closed_state(0)),
            (b[3].0.as_str(), ejected_state()),
        ]);
        let s = signals(&b, now, |i| Signals {
            rps: if i == 3 { 0.0 } else { cluster_rps / 3.0 },
            requests: if i == 3 {
                0.0
            } else {
                cluster_rps / 3.0 * 10.0
            },
            ..healthy(now)
        });
        let d = decide(&p, &b, &previous, &s, now);
        assert_eq!(d.endpoints[3].status, Status::HalfOpen);
        assert!(d.endpoints[..3].iter().all(|e| e.weight == 100));
        d.endpoints[3].weight
    };
    // 30 req/s: 300 a window, 20 of them is a share of 1/15: 300 × (1/15) / (14/15) ≈ 21.
    assert_eq!(trial_weight(30.0), 21);
    // 3,000 req/s: 5 % of the base weight already brings far more than 20 a window.
    assert_eq!(trial_weight(3_000.0), 5);
    // 3 req/s: 30 a window would need two thirds of it; capped at half the base weight.
    assert_eq!(trial_weight(3.0), 50);
}
