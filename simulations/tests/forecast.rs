//! The HPA on the adapter's forecast of the request rate scales up before the HPA on the current
//! rate when the load ramps up. Simulated time only: the same scenario gives the same steps.

use std::path::Path;

use gofe_sim::{engine, scenario};

const RAMP: &str = r#"
name: ramp
seed: 1
duration: 40m
step: 1s
traffic:
  - ramp: { from: 200, to: 2000, start: 10m, end: 30m }
service: { pods: 3, capacity: 100, latency: 30ms, startup: 20s, readiness: 10s }
pipeline: { scrape: 15s, window: 1m, cache: 30s, sync: 15s }
autoscaling:
  minReplicas: 3
  maxReplicas: 40
  metrics:
    - external_rps: { average_value: "80" }
policies:
  - { name: current, balancer: round_robin }
  - name: forecast
    balancer: round_robin
    autoscaling:
      minReplicas: 3
      maxReplicas: 40
      metrics:
        - external_rps: { average_value: "80", forecast: { lead: 2m, window: 10m, step: 15s } }
"#;

/// `(t, desired replicas)` at every step where the desired count changed.
fn scale_changes(sc: &scenario::Scenario, policy: &str) -> Vec<(f64, i32)> {
    let policy = sc.policies.iter().find(|p| p.name == policy).unwrap();
    let mut changes = Vec::new();
    let mut last = None;
    engine::run(
        sc,
        policy,
        Path::new("."),
        &mut |row| {
            if last != Some(row.desired) {
                changes.push((row.t, row.desired));
                last = Some(row.desired);
            }
        },
        &mut |_| {},
    )
    .unwrap();
    changes
}

/// When the desired count first reached `n` (after the start).
fn first_at_least(changes: &[(f64, i32)], n: i32) -> f64 {
    changes
        .iter()
        .find(|(_, d)| *d >= n)
        .map_or(f64::INFINITY, |c| c.0)
}

#[test]
fn forecast_scales_up_before_the_current_rate_on_a_ramp() {
    let sc = scenario::parse("ramp.yaml", RAMP).unwrap();
    let current = scale_changes(&sc, "current");
    let forecast = scale_changes(&sc, "forecast");
    // Both hold 3 replicas until the ramp starts at 10 min, and both end where 2000 req/s at
    // 80 per pod puts them (25, or a little above within the HPA's 10 % tolerance).
    for changes in [&current, &forecast] {
        assert_eq!(changes[0], (0.0, 3), "{changes:?}");
        assert!(changes[1].0 > 600.0, "{changes:?}");
        assert!(
            (25..=27).contains(&changes.last().unwrap().1),
            "{changes:?}"
        );
    }
    // The first scale-up, and every milestone on the way up, comes earlier on the forecast.
    for n in [4, 10, 20, 25] {
        let (c, f) = (first_at_least(&current, n), first_at_least(&forecast, n));
        assert!(
            f < c,
            "{n} replicas: forecast at {f} s, current rate at {c} s\ncurrent {current:?}\nforecast {forecast:?}"
        );
    }
}

#[test]
fn forecast_options_are_checked_as_the_adapter_checks_them() {
    for (bad, field) in [
        ("step: 500ms", "forecast.step: must be at least 1s"),
        (
            "window: 15s",
            "forecast.window: window must hold between 2 and 11000 steps",
        ),
        ("alpha: 0", "forecast.alpha: must be in (0, 1]"),
        ("beta: 1.5", "forecast.beta: must be in (0, 1]"),
    ] {
        let text = RAMP.replace("window: 10m, step: 15s", bad);
        let e = scenario::parse("ramp.yaml", &text).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "policies[1].autoscaling.metrics[0].external_rps.{field}"
            )),
            "{bad}: {e}"
        );
    }
    let text = RAMP.replace("lead: 2m, ", "");
    let e = scenario::parse("ramp.yaml", &text).unwrap_err().to_string();
    assert!(e.contains("lead"), "{e}");
}

#[test]
fn shipped_diurnal_scenario_compares_current_and_forecast_rate() {
    let path =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("scenarios/diurnal-flash-crowd.yaml");
    let sc = scenario::load(&path).unwrap();
    let forecast = |name: &str| {
        let p = sc.policies.iter().find(|p| p.name == name).unwrap();
        let a = p.autoscaling.as_ref().or(sc.autoscaling.as_ref()).unwrap();
        matches!(
            a.metrics[..],
            [scenario::SimMetric::ExternalRps {
                forecast: Some(_),
                ..
            }]
        )
    };
    assert!(!forecast("hpa-no-behavior"));
    assert!(forecast("hpa-forecast"));
    let summary = std::fs::read_to_string(
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("scenarios/reports/diurnal-flash-crowd/summary.txt"),
    )
    .unwrap();
    assert!(summary.contains("hpa-no-behavior") && summary.contains("hpa-forecast"));
}
