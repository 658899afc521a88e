//! Every shipped scenario, run through gofe's controller policy and round robin: gofe's policy
//! is never worse than round robin beyond a small margin, and keeps its gains where latency
//! awareness matters.

#![allow(unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gofe_sim::engine::{self, Summary};
use gofe_sim::scenario::{self, Balancer, Dur, Policy, Scenario};

fn scenarios_dir() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("scenarios")
}

/// The scenario's first policy with `balancer` (and outlier detection as given), or the plain
/// policy with that balancer (the simulator's defaults, the scenario's autoscaling).
fn policy(sc: &Scenario, balancer: Balancer, outlier: bool) -> Policy {
    sc.policies
        .iter()
        .find(|p| p.balancer == balancer && (p.outlier == outlier || sc.outlier.is_none()))
        .cloned()
        .unwrap_or_else(|| Policy {
            name: balancer.as_str().to_owned(),
            balancer,
            outlier,
            decay: Dur(Duration::from_secs(10)),
            autoscaling: None,
            fixed_replicas: false,
            interval: Dur(Duration::from_secs(5)),
            window: Dur(Duration::from_secs(30)),
        })
}

fn run(sc: &Scenario, p: &Policy, base: &Path) -> Summary {
    engine::run(sc, p, base, &mut |_| {}, &mut |_| {}).unwrap()
}

/// gofe's policy may be worse than round robin by at most 10 % or 30 s of SLO-violating time,
/// whichever is more.
fn allowed(rr: f64) -> f64 {
    (1.1 * rr).max(rr + 30.0)
}

/// Round robin without outlier detection, and gofe's policy, on every scenario in
/// `scenarios/` (a policy a scenario does not list is added with the simulator's defaults).
/// Scenarios where latency awareness is the point must see gofe strictly better.
#[test]
fn gofe_is_never_worse_than_round_robin_on_the_shipped_scenarios() {
    let dir = scenarios_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "balancer-step-artifact",
        "diurnal-flash-crowd",
        "heterogeneous",
        "policy-oscillation",
        "slow-backend",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let mut report = String::new();
    let mut failures = Vec::new();
    for (file, name) in files.iter().zip(&names) {
        let sc = scenario::load(file).unwrap();
        let rr = run(&sc, &policy(&sc, Balancer::RoundRobin, false), &dir);
        let gofe = run(&sc, &policy(&sc, Balancer::Gofe, true), &dir);
        let (r, g) = (rr.slo_violation_seconds, gofe.slo_violation_seconds);
        report.push_str(&format!(
            "{name}: round robin {r:.1} s (p99 {:.1} ms), gofe {g:.1} s (p99 {:.1} ms)\n",
            rr.p99_ms, gofe.p99_ms
        ));
        if g > allowed(r) {
            failures.push(format!(
                "{name}: gofe {g:.1} s > allowed {:.1} s",
                allowed(r)
            ));
        }
        if matches!(name.as_str(), "slow-backend" | "heterogeneous") && g >= r {
            failures.push(format!(
                "{name}: gofe {g:.1} s not better than round robin {r:.1} s"
            ));
        }
    }
    println!("{report}");
    assert!(failures.is_empty(), "{failures:?}\n{report}");
}
