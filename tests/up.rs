//! `gofe up` as a user runs it: the shipped binary, headless (`--json`), on a short scenario,
//! with every part in its own process on 127.0.0.1 (backends, proxy, controller over xDS,
//! adapter, the autoscaler). Its events must show the whole loop: the failing backend
//! ejected and readmitted, replicas rising with the load and falling after it, the proxy
//! ACKing the controller's publications, and no process left behind.

#![allow(unreachable_pub)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::process::{free_port, tempdir};

/// Fast enough to finish in about a minute: a failing backend first, then a load rise past
/// two backends' target and back.
const SCENARIO: &str = "\
name: e2e
duration: 55s
traffic:
  - constant: { rps: 60 }
  - ramp: { from: 0, to: 80, start: 16s, end: 22s }
  - ramp: { from: 0, to: -80, start: 32s, end: 35s }
service:
  pods: 2
  capacity: 120
  latency: 5ms
  startup: 0s
  readiness: 1s
  faults:
    - { at: 2s, for: 9s, pod: 1, http_fault: { abort: { http_status: 503, percentage: { numerator: 60 } } } }
    - { at: 40s, for: 5s, pod: 0, http_fault: { delay: { fixed_delay: 20ms, percentage: { numerator: 50 } } } }
pipeline: { scrape: 1s, window: 4s, sync: 3s }
autoscaling:
  minReplicas: 2
  maxReplicas: 4
  metrics: [{ external_rps: { average_value: \"40\" } }]
  behavior: { scaleDown: { stabilizationWindowSeconds: 4 } }
policies:
  - { name: gofe, balancer: gofe, interval: 1s, window: 8s }
";

/// A base with 200 free ports above it (backend slots and their control ports).
fn backend_base() -> u16 {
    loop {
        // Below the ephemeral range (32768 on), as `free_port`.
        let base = 10_000 + fastrand::u16(..22_000);
        let free = (0..4u16).all(|slot| {
            [base + slot, base + 100 + slot]
                .iter()
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        });
        if free {
            return base;
        }
    }
}

fn processes_mentioning(needles: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if needles.iter().any(|n| cmd.contains(n.as_str())) {
            found.push(cmd);
        }
    }
    found
}

#[test]
fn gofe_up_shows_the_whole_loop_and_leaves_nothing_behind() {
    let dir = tempdir();
    let scenario = dir.join("e2e.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let work = dir.join("run");
    let report = dir.join("report");
    let base = backend_base();
    let ports: Vec<String> = (0..5)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(["up", "--json", "--scenario"])
        .arg(&scenario)
        .arg("--workdir")
        .arg(&work)
        .arg("--report")
        .arg(&report)
        .args(["--listen", &ports[0], "--proxy-admin", &ports[1]])
        .args(["--controller-admin", &ports[2], "--xds", &ports[3]])
        .args(["--adapter", &ports[4], "--backend-ports", &base.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("gofe up runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gofe up failed: {stderr}");
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == kind).collect() };
    let t = |e: &Value| e["t"].as_f64().unwrap();
    let story: Vec<String> = events
        .iter()
        .filter(|e| e["event"] != "status")
        .map(|e| format!("{} {} {}", e["t"], e["event"], e["name"]))
        .collect();
    let story = story.join("\n");

    assert_eq!(of("started").len(), 1, "{story}");
    // Both faults, written as the proxy's route fault is, reached their backends' controls.
    let http_faults: Vec<&Value> = of("fault")
        .into_iter()
        .filter(|e| e["kind"] == "http_fault")
        .collect();
    assert_eq!(http_faults.len(), 2, "{story}");
    assert!(of("fault_failed").is_empty(), "{story}");
    assert_eq!(
        of("fault_cleared")
            .iter()
            .filter(|e| e["kind"] == "http_fault")
            .count(),
        2,
        "{story}"
    );
    // The failing backend (the second, web-2) is ejected, then readmitted after the fault.
    let ejected = of("ejected")
        .into_iter()
        .find(|e| e["name"] == "web-2")
        .unwrap_or_else(|| panic!("web-2 never ejected:\n{story}"));
    let recovered = of("recovered")
        .into_iter()
        .find(|e| e["name"] == "web-2" && t(e) > t(ejected))
        .unwrap_or_else(|| panic!("web-2 never recovered:\n{story}"));
    assert!(
        t(recovered) > 11.0,
        "recovered only after the fault ended:\n{story}"
    );
    // Replicas rise with the load and fall after it, and new backends join the endpoints.
    let scaled = of("scaled");
    let up = scaled
        .iter()
        .find(|e| e["to"].as_i64() > e["from"].as_i64())
        .unwrap_or_else(|| panic!("never scaled up:\n{story}"));
    assert!(
        scaled
            .iter()
            .any(|e| t(e) > t(up) && e["to"].as_i64() < e["from"].as_i64()),
        "never scaled down after scaling up:\n{story}"
    );
    assert!(
        !of("backend_ready").is_empty() && !of("backend_stopped").is_empty(),
        "{story}"
    );
    let most = of("status")
        .iter()
        .filter_map(|s| s["replicas_ready"].as_u64())
        .max()
        .unwrap();
    assert!(
        most > 2,
        "more than two backends were in the endpoints at the peak"
    );
    // The proxy follows every publication: after each `xds_published`, the proxy ACKs again
    // (a new version of some resource type, seen at a later poll) or a later status shows it
    // caught up. No deadline: with a publication every second (weights move each decision)
    // a status may always be taken just after the newest one, and on a loaded machine an ACK
    // may come after the next publication; what must not happen is a proxy that stops
    // following. A publication in the run's last two seconds is let off (the run ends).
    let published = of("xds_published");
    assert!(published.len() > 2, "{story}");
    let statuses = of("status");
    let acks = of("xds_acked");
    let end = of("summary").first().map_or(f64::INFINITY, |s| t(s));
    for p in published.iter().filter(|p| t(p) < end - 2.0) {
        let followed = acks.iter().any(|a| t(a) > t(p))
            || statuses
                .iter()
                .any(|s| t(s) >= t(p) && s["proxy_caught_up"] == true);
        assert!(
            followed,
            "the proxy stopped following at version {}:\n{story}",
            p["version"]
        );
    }
    assert!(!of("xds_acked").is_empty());
    let summary = &of("summary")[0];
    assert!(summary["requests"].as_u64().unwrap() > 1000, "{summary}");
    // Nothing is left: no process mentions the run's files or its backends' ports.
    let mut needles = vec![work.display().to_string()];
    needles.extend((0..4u16).map(|k| format!("127.0.0.1:{} ", base + k)));
    needles.extend(ports.iter().map(|p| format!("{p} ")));
    std::thread::sleep(Duration::from_millis(200));
    let left = processes_mentioning(&needles);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(Path::new(&work).join("controller.log").exists());
    // The report: the simulator's plot of the live run, and what happened when.
    let svg = std::fs::read_to_string(report.join("run.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "{svg:.200}"
    );
    let text = std::fs::read_to_string(report.join("summary.txt")).unwrap();
    assert!(
        text.contains("ejected") && text.contains("scaled"),
        "{text}"
    );

    // Every port is free again: a second run on the same ports starts at once.
    let again = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(["up", "--json", "--duration", "3s", "--scenario"])
        .arg(&scenario)
        .args(["--listen", &ports[0], "--proxy-admin", &ports[1]])
        .args(["--controller-admin", &ports[2], "--xds", &ports[3]])
        .args(["--adapter", &ports[4], "--backend-ports", &base.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success() && out.contains("\"event\":\"started\""),
        "a second run right after: {}\n{out}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn gofe_up_names_a_taken_port_and_a_scenario_it_cannot_play() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(["up", "--json", "--listen", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&addr) && err.contains("--listen"), "{err}");

    let dir = tempdir();
    let scenario = dir.join("bad.yaml");
    std::fs::write(
        &scenario,
        "name: x\nduration: 5s\ntraffic: [{constant: {rps: 1}}]\nservice: {pods: 1, capacity: 5}\n\
         autoscaling: {maxReplicas: 2, metrics: [{cpu: {average_utilization: 50}}]}\n\
         policies: [{name: a, balancer: peak_ewma}]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(["up", "--json", "--scenario"])
        .arg(&scenario)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("policies[0].balancer") && err.contains("autoscaling.metrics[0].cpu"),
        "every problem, by field: {err}"
    );
}

/// With `--start-prometheus`, Debian's Prometheus (installed by `.ci/run`) scrapes the proxy,
/// and both the controller's signals and the adapter's answers come from it: the load's rise
/// still scales the backends, and Prometheus is stopped with the rest.
#[test]
fn gofe_up_runs_the_loop_through_a_prometheus_it_starts() {
    let dir = tempdir();
    let scenario = dir.join("prom.yaml");
    std::fs::write(
        &scenario,
        "name: prom\nduration: 30s\n\
         traffic: [{constant: {rps: 40}}, {ramp: {from: 0, to: 100, start: 6s, end: 10s}}]\n\
         service: {pods: 2, capacity: 120, latency: 5ms, startup: 0s, readiness: 1s}\n\
         pipeline: {scrape: 1s, window: 4s, sync: 3s}\n\
         autoscaling: {minReplicas: 2, maxReplicas: 4, metrics: [{external_rps: {average_value: \"40\"}}]}\n\
         policies: [{name: gofe, balancer: gofe, interval: 1s, window: 4s}]\n",
    )
    .unwrap();
    let work = dir.join("run");
    let base = backend_base();
    let ports: Vec<String> = (0..6)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(["up", "--json", "--start-prometheus", "--scenario"])
        .arg(&scenario)
        .arg("--workdir")
        .arg(&work)
        .args(["--listen", &ports[0], "--proxy-admin", &ports[1]])
        .args(["--controller-admin", &ports[2], "--xds", &ports[3]])
        .args(["--adapter", &ports[4], "--prometheus-listen", &ports[5]])
        .args(["--backend-ports", &base.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("gofe up runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gofe up failed: {stderr}");
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let started = events.iter().find(|e| e["event"] == "started").unwrap();
    assert_eq!(
        started["prometheus"].as_str(),
        Some(format!("http://{}", ports[5]).as_str())
    );
    let scaled_up = events
        .iter()
        .any(|e| e["event"] == "scaled" && e["to"].as_i64() > e["from"].as_i64());
    let story: Vec<String> = events
        .iter()
        .filter(|e| e["event"] != "status")
        .map(|e| e.to_string())
        .collect();
    assert!(
        scaled_up,
        "the HPA read the adapter, backed by Prometheus:\n{}",
        story.join("\n")
    );
    let controller = std::fs::read_to_string(work.join("controller.yaml")).unwrap();
    assert!(controller.contains("source: prometheus"), "{controller}");
    // Prometheus lags by a scrape: the proxy's load reports are the fast path beside it.
    assert!(controller.contains("lrs: { enabled: true"), "{controller}");
    let bootstrap = std::fs::read_to_string(work.join("bootstrap.yaml")).unwrap();
    assert!(bootstrap.contains("load_stats: true"), "{bootstrap}");
    std::thread::sleep(Duration::from_millis(200));
    let left = processes_mentioning(&[work.display().to_string()]);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// Killed with SIGKILL (no chance to stop its children), `gofe up` still leaves nothing behind:
/// every part it started exits once it is gone.
#[test]
fn a_killed_gofe_up_leaves_no_part_running() {
    use std::io::BufRead;
    let dir = tempdir();
    let work = dir.join("run");
    let base = backend_base();
    let ports: Vec<String> = (0..5)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(["up", "--json", "--workdir"])
        .arg(&work)
        .args(["--listen", &ports[0], "--proxy-admin", &ports[1]])
        .args(["--controller-admin", &ports[2], "--xds", &ports[3]])
        .args(["--adapter", &ports[4], "--backend-ports", &base.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let started = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("\"event\":\"started\""));
    assert!(started, "gofe up started its parts");
    let needle = work.display().to_string();
    assert!(!processes_mentioning(std::slice::from_ref(&needle)).is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = processes_mentioning(std::slice::from_ref(&needle));
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "parts left running after gofe up was killed: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
