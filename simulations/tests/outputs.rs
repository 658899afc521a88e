//! `gofe sim run` outputs and `gofe sim check`: a run failing mid-trace leaves nothing behind,
//! check lists every problem of every trace, JSON and the CSV modes.

#![allow(unreachable_pub)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Parser;
use gofe_sim::runs::{self, CsvMode, Format, RunOptions};
use gofe_sim::scenario;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sim: gofe_sim::cli::SimArgs,
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gofe-sim-out-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 10-minute trace at 1 s with `bad` lines replaced by junk; a scenario replaying 599 s of
/// it (a set duration: the trace is read as the run goes) with two policies.
fn scenario_with_trace(dir: &Path, bad: &[usize]) -> PathBuf {
    let mut trace = String::from("timestamp,rps\n");
    for i in 0..600 {
        let line = i + 2;
        if bad.contains(&line) {
            trace.push_str("oops\n");
        } else {
            let _ = writeln!(trace, "{i},{}", 100 + i % 7);
        }
    }
    std::fs::write(dir.join("trace.csv"), trace).unwrap();
    let path = dir.join("s.yaml");
    std::fs::write(
        &path,
        "name: t\nduration: 599s\ntraffic:\n  - trace: { file: trace.csv }\nservice:\n  pods: 2\n  capacity: 100\npolicies:\n  - { name: rr, balancer: round_robin }\n  - { name: lr, balancer: least_request }\n",
    )
    .unwrap();
    path
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_run_failing_mid_trace_leaves_no_output_behind() {
    let dir = temp("partial");
    let path = scenario_with_trace(&dir, &[400]);
    let sc = scenario::load(&path).unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let e = runs::run_policies(&sc, &dir, &[0, 1], Some(&out))
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("trace.csv:400: line: expected two fields: timestamp,rps"),
        "{e}"
    );
    assert_eq!(files(&out), Vec::<String>::new());
    // It did fail mid-run: 397 steps went by before the bad line (read one sample ahead).
    let mut rows = 0;
    gofe_sim::engine::run(&sc, &sc.policies[0], &dir, &mut |_| rows += 1, &mut |_| {}).unwrap_err();
    assert_eq!(rows, 397);
    // The same run on a good trace writes everything.
    let path = scenario_with_trace(&dir, &[]);
    let sc = scenario::load(&path).unwrap();
    runs::run_policies(&sc, &dir, &[0, 1], Some(&out)).unwrap();
    assert_eq!(
        files(&out),
        [
            "compare.svg",
            "lr.csv",
            "lr.svg",
            "rr.csv",
            "rr.svg",
            "summary.txt"
        ]
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_lists_every_trace_problem_with_file_and_line() {
    let dir = temp("check");
    let path = scenario_with_trace(&dir, &[10, 300, 550]);
    let cli = Cli::parse_from(["gofe-sim", "check", path.to_str().unwrap()]);
    let e = gofe_sim::cli::main(cli.sim).unwrap_err().to_string();
    let trace = dir.join("trace.csv").display().to_string();
    let want: Vec<String> = [10, 300, 550]
        .iter()
        .map(|l| format!("{trace}:{l}: line: expected two fields: timestamp,rps"))
        .chain([format!("{}: 3 trace problem(s)", path.display())])
        .collect();
    assert_eq!(e.lines().collect::<Vec<_>>(), want);
    let path = scenario_with_trace(&dir, &[]);
    let cli = Cli::parse_from(["gofe-sim", "check", path.to_str().unwrap()]);
    gofe_sim::cli::main(cli.sim).unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn json_summary_and_csv_modes() {
    let dir = temp("json");
    let path = scenario_with_trace(&dir, &[]);
    let sc = scenario::load(&path).unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let options = RunOptions {
        format: Format::Json,
        csv: CsvMode::Interval(60.0),
    };
    let text = runs::run_policies_with(&sc, &dir, &[0, 1], Some(&out), options).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["scenario"], "t");
    assert_eq!(j["runs"].as_array().unwrap().len(), 2);
    assert_eq!(j["runs"][1]["policy"], "lr");
    let summary =
        gofe_sim::engine::run(&sc, &sc.policies[1], &dir, &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!(j["runs"][1]["requests"].as_f64().unwrap(), summary.requests);
    assert_eq!(j["runs"][1]["simulated_seconds"].as_f64().unwrap(), 599.0);
    assert_eq!(
        std::fs::read_to_string(out.join("summary.json")).unwrap(),
        text
    );
    // 599 s at one row a minute: 10 rows and the header.
    let csv = std::fs::read_to_string(out.join("rr.csv")).unwrap();
    assert_eq!(csv.lines().count(), 11, "{csv}");
    let requests: f64 = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse::<f64>().unwrap())
        .sum();
    let rr = gofe_sim::engine::run(&sc, &sc.policies[0], &dir, &mut |_| {}, &mut |_| {}).unwrap();
    assert!(
        (requests - rr.requests).abs() < 0.01 * 10.0,
        "{requests} vs {}",
        rr.requests
    );
    // --csv off: no CSV at all.
    let off = dir.join("off");
    std::fs::create_dir_all(&off).unwrap();
    let options = RunOptions {
        format: Format::Text,
        csv: CsvMode::Off,
    };
    runs::run_policies_with(&sc, &dir, &[0], Some(&off), options).unwrap();
    assert_eq!(files(&off), ["rr.svg", "summary.txt"]);
    // Sweeps print JSON rows, one per value and policy.
    let text = runs::run_sweep(
        &sc,
        &dir,
        &[0, 1],
        "capacity=50..100:3",
        None,
        RunOptions {
            format: Format::Json,
            csv: CsvMode::Every,
        },
    )
    .unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert_eq!(
        (rows[1]["value"].as_f64(), rows[1]["policy"].as_str()),
        (Some(75.0), Some("rr"))
    );
    std::fs::remove_dir_all(dir).ok();
}
