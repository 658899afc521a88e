//! `gofe sim tune`: the tuner finds a better setting where the scenario's target is clearly
//! wrong, the split is disjoint and covers the run, overfitting is flagged where train and
//! held-out differ (and not where they agree), results do not depend on the number of
//! threads, and a bad `tune:` section gives every problem with its line and column.

#![allow(unreachable_pub)]

use std::path::Path;

use gofe_sim::scenario::{self, Scenario};
use gofe_sim::tune::{self, split, Overrides, Part, Split, SplitMode, TuneReport, Verdict};

/// A diurnal service at 100 req/s per pod behind an HPA on the request rate with the target
/// `TARGET` (req/s per pod); the tune searches the target, the tolerance and the scale-down
/// window.
const DIURNAL: &str = "name: diurnal
seed: 7
duration: 12h
step: 5s
traffic:
  - diurnal: { mean: 600, amplitude: 400, period: 6h, peak: 3h }
  - noise: { fraction: 0.03 }
service:
  pods: 4
  capacity: 100
  latency: 30ms
  timeout: 2s
slo: { p99: 300ms, errors: 0.01 }
autoscaling:
  minReplicas: 2
  maxReplicas: 40
  metrics:
    - external_rps: { average_value: \"TARGET\" }
policies:
  - { name: hpa, balancer: round_robin }
tune:
  budget: 18
  dimensions:
    target: { min: 30, max: 120 }
    tolerance: { min: 0.02, max: 0.2 }
    scale_down_window: { min: 0s, max: 10m }
";

/// Constant traffic with a flash crowd at `SPIKE`; the last quarter of the run is held out.
const SPIKE: &str = "name: spike
seed: 5
duration: 8h
step: 5s
traffic:
  - constant: { rps: 600 }
  - spike: { at: SPIKE, rps: 1800, rise: 2m, hold: 20m, decay: 10m }
  - noise: { fraction: 0.02 }
service:
  pods: 8
  capacity: 100
  latency: 30ms
  timeout: 2s
slo: { p99: 300ms, errors: 0.01 }
autoscaling:
  minReplicas: 2
  maxReplicas: 60
  metrics:
    - external_rps: { average_value: \"60\" }
policies:
  - { name: hpa, balancer: round_robin }
tune:
  budget: 16
  holdout: 0.25
  split: tail
  slo_budget: 0.01
  dimensions:
    target: { min: 40, max: 100 }
    scale_up_period: { min: 15s, max: 2m }
";

fn parse(text: &str) -> Scenario {
    scenario::parse("s.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn tuned(sc: &Scenario, jobs: usize) -> TuneReport {
    let mut o = tune::resolve(
        sc,
        &Overrides {
            jobs: Some(jobs),
            ..Overrides::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    o.progress = false;
    tune::tune(sc, Path::new("."), &o).unwrap_or_else(|e| panic!("{e}"))
}

/// The recommendation's value of dimension `name`.
fn value(r: &TuneReport, name: &str) -> f64 {
    let i = r
        .space
        .dims
        .iter()
        .position(|d| d.kind().name == name)
        .unwrap();
    r.recommendation().point[i]
}

fn over_budget(p: &Part, budget: f64) -> bool {
    p.slo_violation_seconds > budget * p.seconds
}

#[test]
fn a_target_set_too_high_is_lowered_until_the_slo_holds() {
    // 98 req/s per pod on pods that serve 100: the default HPA keeps them saturated.
    let r = tuned(&parse(&DIURNAL.replace("TARGET", "98")), 2);
    let budget = r.options.slo_budget;
    let rec = r.recommended();
    println!("{}", tune::report_text(&r));
    assert!(
        over_budget(&r.default_hpa.train, budget),
        "the default HPA must miss the SLO here: {:?}",
        r.default_hpa.train
    );
    assert!(!over_budget(&rec.train, budget), "{:?}", rec.train);
    assert!(!over_budget(&rec.held_out, budget), "{:?}", rec.held_out);
    assert!(
        rec.held_out.slo_violation_seconds < r.default_hpa.held_out.slo_violation_seconds,
        "held-out: {:?} vs the default {:?}",
        rec.held_out,
        r.default_hpa.held_out
    );
    assert_eq!(r.meets, (true, true));
    assert_eq!(r.verdict, Verdict::Holds);
    assert!(value(&r, "target") < 98.0, "{}", value(&r, "target"));
}

#[test]
fn a_target_set_too_low_is_raised_for_the_same_slo_at_less_cost() {
    // 30 req/s per pod: the default HPA meets the SLO with more than three times the pods it
    // needs at the peak.
    let r = tuned(&parse(&DIURNAL.replace("TARGET", "30")), 2);
    let budget = r.options.slo_budget;
    let rec = r.recommended();
    println!("{}", tune::report_text(&r));
    assert!(!over_budget(&r.default_hpa.train, budget));
    assert_eq!(r.meets, (true, true));
    for (part, rec, def) in [
        ("train", &rec.train, &r.default_hpa.train),
        ("held-out", &rec.held_out, &r.default_hpa.held_out),
    ] {
        assert!(
            rec.slo_violation_seconds <= def.slo_violation_seconds,
            "{part}: {rec:?} vs {def:?}"
        );
        assert!(
            rec.pod_seconds < 0.8 * def.pod_seconds,
            "{part}: {} pod-seconds against the default's {}",
            rec.pod_seconds,
            def.pod_seconds
        );
    }
    assert!(value(&r, "target") > 30.0);
    assert_eq!(r.verdict, Verdict::Holds);
}

#[test]
fn train_and_held_out_are_disjoint_and_cover_the_run() {
    const DAY: f64 = 86_400.0;
    for (mode, holdout, seconds) in [
        (SplitMode::Tail, 0.3, 3600.0),
        (SplitMode::Auto, 0.25, 7.0 * 3600.0),
        (SplitMode::Auto, 0.3, 10.0 * DAY),
        (SplitMode::Days, 0.5, 4.5 * DAY),
        (SplitMode::Days, 0.2, 14.0 * DAY),
    ] {
        let s = Split::new(mode, holdout, seconds);
        let case = format!("{mode:?} {holdout} {seconds}: {:?}", s.held_out);
        assert!(!s.held_out.is_empty(), "{case}");
        let mut end = 0.0;
        for &(a, b) in &s.held_out {
            assert!(a >= end && b > a && b <= seconds, "{case}");
            end = b;
        }
        // Training always has time, and starts the run.
        assert!(!s.is_held_out(0.0), "{case}");
        let held = s.held_out_seconds();
        assert!(held > 0.0 && held < seconds, "{case}");
        if s.mode == SplitMode::Days {
            let days = (seconds / DAY).ceil();
            assert_eq!(s.held_out.len() as f64, (days * holdout).floor(), "{case}");
            assert!(s.held_out.iter().all(|(a, _)| a % DAY == 0.0), "{case}");
        } else {
            assert!((held - holdout * seconds).abs() < 1e-6, "{case}");
        }
    }

    // Every step of a run counts in exactly one part: the parts add up to the run's summary.
    let sc = parse(&DIURNAL.replace("TARGET", "90"));
    for mode in [SplitMode::Tail, SplitMode::Days] {
        let s = Split::new(mode, 0.3, 12.0 * 3600.0);
        let mut tally = split::Tally::new(&s, &sc.slo, sc.step.secs());
        let summary = gofe_sim::engine::run(
            &sc,
            &sc.policies[0],
            Path::new("."),
            &mut |row| tally.push(row),
            &mut |_| {},
        )
        .unwrap();
        let (train, held) = tally.finish();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
        assert!(close(train.seconds + held.seconds, summary.seconds));
        assert!(close(train.requests + held.requests, summary.requests));
        assert!(close(train.failed + held.failed, summary.failed));
        // Pods are counted at the end of each step (the row's), the summary counts them
        // before the step's scaling: the same within the pods started and stopped.
        let pods = train.pod_seconds + held.pod_seconds;
        assert!(
            (pods - summary.pod_seconds).abs() <= 0.002 * summary.pod_seconds,
            "{pods} against {}",
            summary.pod_seconds
        );
        assert!(close(
            train.slo_violation_seconds + held.slo_violation_seconds,
            summary.slo_violation_seconds
        ));
        assert!(close(
            held.seconds,
            s.held_out_seconds().min(summary.seconds)
        ));
        assert!(
            summary.slo_violation_seconds > 0.0,
            "the check needs violations"
        );
    }
}

#[test]
fn overfitting_is_flagged_when_only_held_out_time_has_the_flash_crowd() {
    // Calm training time rewards a high target; the flash crowd in held-out time punishes it.
    let r = tuned(&parse(&SPIKE.replace("SPIKE", "6h30m")), 2);
    let text = tune::report_text(&r);
    println!("{text}");
    assert_eq!(r.meets, (true, false), "{text}");
    assert!(
        matches!(&r.verdict, Verdict::Overfitting(reasons) if reasons.iter().any(|m| m.contains("not on held-out"))),
        "{:?}",
        r.verdict
    );
    assert_eq!(r.verdict.exit_code(), 3);
    assert!(text.contains("OVERFITTING"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&tune::report_json(&r)).unwrap();
    assert_eq!(json["overfitting"], true);
    assert_eq!(json["verdict"], "overfitting");
    assert_eq!(json["recommendation"]["meets_slo"]["held_out"], false);

    // The same flash crowd in training time: the tuner must choose a setting that copes with
    // it, and the calm held-out time agrees.
    let r = tuned(&parse(&SPIKE.replace("SPIKE", "2h")), 2);
    let text = tune::report_text(&r);
    println!("{text}");
    assert_eq!(r.meets, (true, true), "{text}");
    assert_eq!(r.verdict, Verdict::Holds, "{text}");
    assert!(!text.contains("OVERFITTING"), "{text}");
}

#[test]
fn the_result_does_not_depend_on_the_number_of_threads() {
    let sc = parse(&DIURNAL.replace("TARGET", "98"));
    let one = tuned(&sc, 1);
    let two = tuned(&sc, 2);
    let three = tuned(&sc, 3);
    let json = tune::report_json(&one);
    assert_eq!(json, tune::report_json(&two));
    assert_eq!(json, tune::report_json(&three));
    let csv = tune::cli::candidates_csv(&one);
    assert_eq!(csv, tune::cli::candidates_csv(&two));
    assert_eq!(csv, tune::cli::candidates_csv(&three));
    let n = one.candidates.len();
    assert!(n > 9 && n <= 18, "{n} evaluations for a budget of 18");
}

#[test]
fn a_bad_tune_section_gives_every_problem_with_its_line_and_column() {
    let text = DIURNAL.replace("TARGET", "80").replace(
        "tune:\n  budget: 18\n  dimensions:\n    target: { min: 30, max: 120 }\n    tolerance: { min: 0.02, max: 0.2 }\n    scale_down_window: { min: 0s, max: 10m }\n",
        "tune:
  budget: 0
  holdout: 1.5
  dimensions:
    target: { min: 120, max: 30 }
    speed: { min: 1, max: 2 }
    scale_down_window: { min: 0, max: 10m }
    forecast: { min: 0, max: 1 }
    scale_up_percent: { min: 50.5, max: 200 }
    forecast_alpha: { min: 0, max: 0.5 }
",
    );
    let e = scenario::parse("s.yaml", &text).unwrap_err().to_string();
    println!("{e}");
    for (line, field) in [
        (22, "tune.budget"),
        (23, "tune.holdout"),
        (25, "tune.dimensions.target.max"),
        (26, "tune.dimensions.speed"),
        (27, "tune.dimensions.scale_down_window.min"),
        (28, "tune.dimensions.forecast"),
        (29, "tune.dimensions.scale_up_percent.min"),
        (30, "tune.dimensions.forecast_alpha.min"),
    ] {
        let found = e.lines().find(|l| l.contains(&format!(" {field}: ")));
        let Some(l) = found else {
            panic!("{field} missing from:\n{e}")
        };
        let prefix = format!("s.yaml:{line}:");
        assert!(l.starts_with(&prefix), "{field}: {l}");
        // s.yaml:LINE:COLUMN: FIELD: …
        let column = l[prefix.len()..].split(':').next().unwrap();
        assert!(column.parse::<usize>().is_ok(), "{l}");
    }

    // An unknown key is a parse error at its place.
    let text = DIURNAL
        .replace("TARGET", "80")
        .replace("  budget: 18\n", "  budget: 18\n  budgett: 3\n");
    let e = scenario::parse("s.yaml", &text).unwrap_err().to_string();
    assert!(e.starts_with("s.yaml:23:") && e.contains("budgett"), "{e}");

    // Settings the scenario cannot honour: a forecast dimension with no forecastable metric,
    // a tune of a policy with fixed replicas.
    let text = DIURNAL
        .replace("    - external_rps: { average_value: \"TARGET\" }", "    - cpu: { average_utilization: 60 }")
        .replace("  budget: 18\n", "  budget: 18\n  policy: fixed\n")
        .replace(
            "  - { name: hpa, balancer: round_robin }\n",
            "  - { name: hpa, balancer: round_robin }\n  - { name: fixed, balancer: round_robin, fixed_replicas: true }\n",
        );
    let e = scenario::parse("s.yaml", &text).unwrap_err().to_string();
    assert!(
        e.contains("tune.policy: policy \"fixed\" runs with fixed replicas"),
        "{e}"
    );
    let text = DIURNAL
        .replace(
            "    - external_rps: { average_value: \"TARGET\" }",
            "    - cpu: { average_utilization: 60 }",
        )
        .replace(
            "    tolerance:",
            "    forecast_lead: { min: 10s, max: 1m }\n    tolerance:",
        );
    let e = scenario::parse("s.yaml", &text).unwrap_err().to_string();
    assert!(
        e.contains("tune.dimensions.forecast_lead: only external_rps metrics have a forecast"),
        "{e}"
    );

    // The command line's settings are checked the same way, each naming its flag.
    let sc = parse(&DIURNAL.replace("TARGET", "80"));
    let e = tune::resolve(
        &sc,
        &Overrides {
            budget: Some(0),
            holdout: Some(0.0),
            jobs: Some(0),
            dims: vec![
                "target=9..3".into(),
                "nothing".into(),
                "scale_up_window=1..2m".into(),
            ],
            ..Overrides::default()
        },
    )
    .unwrap_err()
    .to_string();
    for flag in [
        "--budget",
        "--holdout",
        "--jobs",
        "--dim target.max",
        "--dim nothing",
        "--dim scale_up_window.min",
    ] {
        assert!(e.contains(flag), "{flag} missing from:\n{e}");
    }
}
