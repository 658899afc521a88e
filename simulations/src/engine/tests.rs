//! The step as a whole: its parts in turn, on small hand-built scenarios.

use super::fixtures::scenario;
use super::*;

const TWO_PODS: &str = "duration: 5s\nstep: 1s\ntraffic:\n  - constant: { rps: 10 }\nservice:\n  pods: 2\n  capacity: 100\n  concurrency: 1\n  latency: 10ms\n  timeout: 1s\n  startup: 2s\n  readiness: 1s\n  dead_detection: 2s\n";

fn sim(sc: &Scenario) -> Sim<'_> {
    Sim::new(sc, &sc.policies[0], Path::new("."), None).unwrap()
}

#[test]
fn a_step_offers_the_traffic_splits_it_and_serves_it() {
    let sc = scenario(TWO_PODS);
    let mut s = sim(&sc);
    assert_eq!(s.steps(), 5);
    let row = s.step().unwrap().clone();
    assert_eq!(
        (row.t, row.rps, row.requests, row.failed),
        (0.0, 10.0, 10.0, 0.0)
    );
    assert_eq!(
        (row.desired, row.pods, row.endpoints, row.ejected),
        (2, 2, 2, 0)
    );
    assert_eq!(row.shares, [0.5, 0.5]);
    // 5 req/s on 100: ρ = 0.05 adds S ρ / (1 − ρ) to the 10 ms.
    let latency = 0.01 + 0.01 * 0.05 / 0.95;
    assert!(
        (row.p50_ms - latency * 1000.0).abs() < 1e-9,
        "{}",
        row.p50_ms
    );
    assert_eq!(row.p99_ms, row.p50_ms);
    assert_eq!(s.step().unwrap().t, 1.0);
}

#[test]
fn the_loop_is_the_steps_and_the_summary_adds_them_up() {
    let sc = scenario(TWO_PODS);
    let mut by_hand = Vec::new();
    let mut s = sim(&sc);
    for _ in 0..s.steps() {
        by_hand.push(s.step().unwrap().clone());
    }
    let stepped = s.finish();
    let mut rows = Vec::new();
    let mut fractions = Vec::new();
    let summary = run(
        &sc,
        &sc.policies[0],
        Path::new("."),
        &mut |r| rows.push(r.clone()),
        &mut |f| fractions.push(f),
    )
    .unwrap();
    assert_eq!(rows, by_hand);
    assert_eq!(summary, stepped);
    assert_eq!(fractions, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    assert_eq!(
        (summary.seconds, summary.requests, summary.failed),
        (5.0, 50.0, 0.0)
    );
    assert_eq!((summary.pod_seconds, summary.max_pods), (10.0, 2));
    assert!(
        summary.p50_ms > 10.0 && summary.p99_ms < 11.0,
        "{summary:?}"
    );
}

#[test]
fn a_dead_pod_fails_fast_until_noticed_then_its_replacement_starts() {
    let sc = scenario(&TWO_PODS.replace(
        "  dead_detection: 2s\n",
        "  dead_detection: 2s\n  faults:\n    - { at: 1s, pod: 1, die: true }\n",
    ));
    let mut s = sim(&sc);
    let rows: Vec<StepRow> = (0..5).map(|_| s.step().unwrap().clone()).collect();
    let failed: Vec<f64> = rows.iter().map(|r| r.failed).collect();
    assert_eq!(failed, [0.0, 5.0, 5.0, 0.0, 0.0]);
    assert_eq!(rows[1].p50_ms, 1.0, "the dead pod answers in 1 ms");
    let endpoints: Vec<usize> = rows.iter().map(|r| r.endpoints).collect();
    assert_eq!(endpoints, [2, 2, 2, 1, 1], "pod-2 is not ready until 6 s");
    assert!(rows.iter().all(|r| r.pods == 2));
    let summary = s.finish();
    assert_eq!(summary.drain_seconds, [Some(2.0)]);
}

#[test]
fn an_http_fault_delay_moves_its_share_of_requests_and_an_abort_fails_its_share() {
    // Two pods at 5 req/s each; pod 1 delays 4 % of its requests by 300 ms from 1 s to 3 s,
    // and aborts 40 % of them from 3 s on.
    let sc = scenario(&format!(
        "{TWO_PODS}  faults:\n    - {{ at: 1s, for: 2s, pod: 1, http_fault: {{ delay: {{ fixed_delay: 300ms, percentage: {{ numerator: 4 }} }} }} }}\n    - {{ at: 3s, pod: 1, http_fault: {{ abort: {{ http_status: 503, percentage: {{ numerator: 40 }} }} }} }}\n"
    ));
    let mut s = sim(&sc);
    let base = s.step().unwrap().clone();
    assert_eq!(base.failed, 0.0);
    let delayed = s.step().unwrap().clone();
    // 2 % of the step's requests are 300 ms late: the p99 is a late one, the median is not;
    // nothing fails (300 ms is within the 1 s timeout).
    assert_eq!(delayed.failed, 0.0);
    assert!(
        (delayed.p99_ms - base.p99_ms - 300.0).abs() < 1e-6,
        "the p99 is 300 ms later: {} vs {}",
        delayed.p99_ms,
        base.p99_ms
    );
    assert!((delayed.p50_ms - base.p50_ms).abs() < 1e-9);
    s.step().unwrap();
    let aborted = s.step().unwrap().clone();
    assert!(
        (aborted.failed - 5.0 * 0.4).abs() < 1e-9,
        "40 % of pod 1's 5 requests: {}",
        aborted.failed
    );
    let summary = s.finish();
    assert!(
        summary.p99_ms > base.p99_ms,
        "the late requests are in the run's tail"
    );
}

#[test]
fn an_http_fault_delay_past_the_timeout_fails_its_share() {
    let sc = scenario(&format!(
        "{TWO_PODS}  faults:\n    - {{ at: 0s, pod: 0, http_fault: {{ delay: {{ fixed_delay: 2s, percentage: {{ numerator: 10 }} }} }} }}\n"
    ));
    let row = sim(&sc).step().unwrap().clone();
    assert!((row.failed - 0.5).abs() < 1e-9, "10 % of 5: {}", row.failed);
}

#[test]
fn without_endpoints_every_request_fails() {
    let sc = scenario(&TWO_PODS.replace(
        "  dead_detection: 2s\n",
        "  dead_detection: 0s\n  faults:\n    - { at: 0s, pod: 0, die: true }\n    - { at: 0s, pod: 1, die: true }\n",
    ));
    let mut s = sim(&sc);
    let row = s.step().unwrap();
    assert_eq!((row.endpoints, row.failed, row.p50_ms), (0, 10.0, 0.0));
    assert_eq!(row.pods, 2, "replacements are pending");
}

#[test]
fn the_hpa_scales_on_the_pipelines_rate_and_the_replica_set_follows() {
    let sc = scenario(&format!(
        "{}pipeline: {{ scrape: 1s, window: 2s, cache: 1s, sync: 3s }}\nautoscaling:\n  minReplicas: 1\n  maxReplicas: 10\n  metrics:\n    - external_rps: {{ average_value: \"2\" }}\n",
        TWO_PODS.replace("duration: 5s", "duration: 6s")
    ));
    let mut s = sim(&sc);
    let rows: Vec<StepRow> = (0..6).map(|_| s.step().unwrap().clone()).collect();
    let desired: Vec<i32> = rows.iter().map(|r| r.desired).collect();
    assert_eq!(desired[..3], [2, 2, 2], "first sync at 3 s");
    assert!(desired[3] > 2, "{desired:?}");
    assert_eq!(rows[3].pods as i32, desired[3], "new pods exist at once");
    assert_eq!(rows[3].endpoints, 2, "and are not ready yet");
    assert!(s.finish().scale_events >= 1);
}

#[test]
fn outlier_detection_ejects_a_failing_pod_and_the_row_counts_it() {
    let sc = scenario(&format!(
        "{}outlier:\n  consecutive: 5\n  interval: 10s\n  base_ejection: 30s\n  max_ejection_percent: 50\n",
        TWO_PODS.replace(
            "  dead_detection: 2s\n",
            "  faults:\n    - { at: 0s, pod: 1, fail: 1 }\n"
        )
    ));
    let mut s = sim(&sc);
    let first = s.step().unwrap().clone();
    assert_eq!((first.failed, first.ejected), (5.0, 1));
    let second = s.step().unwrap().clone();
    assert_eq!(
        (second.endpoints, second.failed, second.ejected),
        (1, 0.0, 1)
    );
    assert_eq!(second.shares, [1.0, 0.0]);
    assert_eq!(s.finish().ejections, 1);
}

#[test]
fn the_gofe_balancer_applies_the_controllers_weights() {
    let sc = scenario(&format!(
        "{}policies:\n  - {{ name: gofe, balancer: gofe, interval: 2s, window: 2s }}\n",
        TWO_PODS
            .replace("duration: 5s", "duration: 6s")
            .replace("rps: 10", "rps: 100")
            .replace(
                "  dead_detection: 2s\n",
                "  faults:\n    - { at: 0s, pod: 1, fail: 0.9 }\n"
            )
    ));
    let mut decisions = 0;
    let mut rec = |_: &[(String, u32)],
                   _: &BTreeMap<String, gofe_core::policy::Signals>,
                   _: u64,
                   _: &gofe_core::policy::Decision| {
        decisions += 1;
    };
    let mut s = Sim::new(&sc, &sc.policies[0], Path::new("."), Some(&mut rec)).unwrap();
    let rows: Vec<StepRow> = (0..6).map(|_| s.step().unwrap().clone()).collect();
    assert_eq!(
        rows[0].shares,
        [0.5, 0.5],
        "base weights before the first decision"
    );
    assert_eq!(
        rows[1].ejected, 1,
        "decided at the end of the first interval"
    );
    assert_eq!(rows[2].shares, [1.0, 0.0]);
    assert_eq!(rows[2].endpoints, 2, "ejected by weight, not by breaker");
    assert_eq!(s.finish().ejections, 1);
    assert_eq!(decisions, 3);
}

#[test]
fn a_policy_with_a_bad_autoscaling_section_cannot_run() {
    let mut sc = scenario(&format!(
        "{TWO_PODS}policies:\n  - name: bad\n    balancer: round_robin\n    autoscaling:\n      minReplicas: 1\n      maxReplicas: 3\n      metrics:\n        - cpu: {{ average_utilization: 50 }}\n"
    ));
    // Validation catches this when loading; the engine still refuses what slips past.
    if let Some(a) = sc.policies[0].autoscaling.as_mut() {
        a.metrics.clear();
    }
    let Err(e) = Sim::new(&sc, &sc.policies[0], Path::new("."), None) else {
        panic!("runs");
    };
    assert_eq!(
        e.to_string(),
        "policy bad: autoscaling.metrics: at least one metric"
    );
}
