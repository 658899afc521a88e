//! `gofe sim tune` as the shipped binary runs it: the report on stdout, the verdict in the
//! exit status (3: overfitting), JSON and `--out` files that agree with it, no progress bar
//! when stderr is not a terminal, and a bad flag refused naming it.

use std::path::PathBuf;
use std::process::Command;

/// Constant traffic with a flash crowd in the last quarter only, which is held out: calm
/// training time rewards a high target that the flash crowd then punishes.
const SCENARIO: &str = "name: spike-in-held-out
seed: 5
duration: 8h
step: 5s
traffic:
  - constant: { rps: 600 }
  - spike: { at: 6h30m, rps: 1800, rise: 2m, hold: 20m, decay: 10m }
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

fn temp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("gofe-sim-tune-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gofe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(args)
        .output()
        .expect("gofe runs")
}

#[test]
fn gofe_sim_tune_reports_and_exits_by_its_verdict() {
    let dir = temp();
    let scenario = dir.join("s.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let path = scenario.to_str().unwrap();

    let out = gofe(&["sim", "tune", path, "--jobs", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("OVERFITTING"), "{stdout}");
    assert!(
        stdout.contains("default HPA") && stdout.contains("held-out"),
        "{stdout}"
    );
    assert!(
        !stderr.contains("evaluations"),
        "a progress bar on a pipe: {stderr}"
    );

    let files = dir.join("out");
    let out = gofe(&[
        "sim",
        "tune",
        path,
        "--output",
        "json",
        "--out",
        files.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(json["overfitting"], true);
    let evaluations = json["evaluations"].as_u64().unwrap();
    assert!(
        evaluations > 8 && evaluations <= 16,
        "budget 16: {evaluations}"
    );
    let rec = &json["recommendation"];
    assert_eq!(rec["meets_slo"]["train"], true);
    assert_eq!(rec["meets_slo"]["held_out"], false);
    let ratio = rec["scores"]["train"]["ratio_to_default_hpa"]["pod_seconds"]
        .as_f64()
        .unwrap();
    assert!(ratio < 1.0, "cheaper on train: {ratio}");
    assert_eq!(
        std::fs::read(files.join("tune.json")).unwrap(),
        out.stdout,
        "tune.json is what was printed"
    );
    let csv = std::fs::read_to_string(files.join("candidates.csv")).unwrap();
    assert_eq!(
        csv.lines().count() as u64,
        evaluations + 1,
        "a header and a line per candidate:\n{csv}"
    );

    let out = gofe(&["sim", "tune", path, "--holdout", "2", "--dim", "speed=1..2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--holdout"), "{stderr}");
    assert!(
        stderr.contains("--dim speed: unknown dimension"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
