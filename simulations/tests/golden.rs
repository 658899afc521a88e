//! Golden and replay tests of whole simulations.

#![allow(unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gofe_sim::{cli, engine, scenario};

fn dir() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .to_owned()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gofe-sim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The committed report of tests/golden/small.yaml is reproduced byte for byte: summary,
/// per-step CSVs and plots. Regenerate with
/// `cargo run -p gofe-sim --example gofe-sim -- run simulations/tests/golden/small.yaml --compare --out simulations/tests/golden/expected`.
#[test]
fn golden_report_of_the_small_scenario() {
    let golden = dir().join("tests/golden");
    let sc = scenario::load(&golden.join("small.yaml")).unwrap();
    let out = temp("golden");
    let text = cli::run_policies(&sc, &golden, &[0, 1, 2], Some(&out)).unwrap();
    let expected = golden.join("expected");
    let mut names: Vec<_> = std::fs::read_dir(&expected)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
    for name in names {
        let want = std::fs::read(expected.join(&name)).unwrap();
        let got = std::fs::read(out.join(&name)).unwrap();
        assert!(want == got, "{name:?} differs from the golden copy");
    }
    assert_eq!(
        text,
        std::fs::read_to_string(expected.join("summary.txt")).unwrap()
    );
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn same_scenario_and_seed_give_the_same_bytes_another_seed_does_not() {
    let golden = dir().join("tests/golden");
    let mut sc = scenario::load(&golden.join("small.yaml")).unwrap();
    let run = |sc: &scenario::Scenario| {
        let mut csv = Vec::new();
        let mut sink = gofe_sim::report::CsvSink::new(&mut csv);
        let s = engine::run(
            sc,
            &sc.policies[1],
            &golden,
            &mut |r| sink.push(r),
            &mut |_| {},
        )
        .unwrap();
        sink.finish().unwrap();
        (gofe_sim::report::summary_text(&s), csv)
    };
    let a = run(&sc);
    assert_eq!(a, run(&sc));
    sc.seed += 1;
    assert_ne!(a.1, run(&sc).1);
}

#[test]
fn slow_backend_experiment_orders_the_policies() {
    // Round robin keeps sending a tenth of the traffic to the 2 s backend (all of it times out
    // at 1 s); outlier detection, least-request, peak-EWMA and gofe's controller drain it.
    let path = dir().join("scenarios/slow-backend.yaml");
    let sc = scenario::load(&path).unwrap();
    let base = path.parent().unwrap();
    let by_name: BTreeMap<String, engine::Summary> = sc
        .policies
        .iter()
        .map(|p| {
            let s = engine::run(&sc, p, base, &mut |_| {}, &mut |_| {}).unwrap();
            (p.name.clone(), s)
        })
        .collect();
    let rr = &by_name["round-robin"];
    assert_eq!(rr.drain_seconds, vec![None]);
    assert!(rr.failed > 2_500.0, "{}", rr.failed);
    for name in ["round-robin+outlier", "least-request", "peak-ewma", "gofe"] {
        let s = &by_name[name];
        assert!(
            s.drain_seconds[0].is_some_and(|d| d <= 10.0),
            "{name}: {:?}",
            s.drain_seconds
        );
        assert!(s.failed < rr.failed / 4.0, "{name}: {} failed", s.failed);
    }
}

#[test]
fn gofe_policy_replay_matches_the_controller_decisions() {
    // Record what the simulated `gofe` balancer fed to gofe_core::policy::decide, then replay the
    // recorded signal sequence through the live controller's function from a fresh state: every
    // decision (weights, health, events, state) is the same.
    let path = dir().join("scenarios/slow-backend.yaml");
    let sc = scenario::load(&path).unwrap();
    let policy = sc.policies.iter().find(|p| p.name == "gofe").unwrap();
    type Record = (
        Vec<(String, u32)>,
        BTreeMap<String, gofe_core::policy::Signals>,
        u64,
        gofe_core::policy::Decision,
    );
    let mut records: Vec<Record> = Vec::new();
    let mut rec = |b: &[(String, u32)],
                   s: &BTreeMap<String, gofe_core::policy::Signals>,
                   now: u64,
                   d: &gofe_core::policy::Decision| {
        records.push((b.to_vec(), s.clone(), now, d.clone()));
    };
    engine::run_recorded(
        &sc,
        policy,
        path.parent().unwrap(),
        &mut |_| {},
        &mut |_| {},
        Some(&mut rec),
    )
    .unwrap();
    assert!(records.len() >= 20);
    assert!(
        records.iter().any(|r| r
            .3
            .events
            .iter()
            .any(|e| matches!(e, gofe_core::policy::Event::Ejected { .. }))),
        "the slow backend is ejected at some point"
    );
    let live = gofe_core::policy::Policy::default();
    let mut state = gofe_core::policy::ClusterState::default();
    for (base, signals, now, recorded) in &records {
        let d = gofe_core::policy::decide(&live, base, &state, signals, *now);
        assert_eq!(&d, recorded, "decision at {now} ms");
        state = d.state;
    }
}

#[test]
fn readme_hpa_examples_give_the_documented_replicas() {
    let input = std::fs::read(dir().join("tests/hpa-cases.jsonl")).unwrap();
    let mut out = Vec::new();
    let n = gofe_sim::hpa_script::run("hpa-cases.jsonl", &input[..], &mut out).unwrap();
    assert_eq!(n, 6);
    let expected = std::fs::read_to_string(dir().join("tests/hpa-cases.expected")).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}
