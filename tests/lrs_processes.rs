//! The Load Reporting Service fast path across processes of the shipped binary: three
//! `gofe backend`s, `gofe controller run` serving xDS (and LRS on the same port), and
//! `gofe proxy --bootstrap` with `load_stats: true`, on 127.0.0.1. No Prometheus runs: the
//! controller's configured source is a Prometheus URL nothing listens on, so every signal the
//! controller has comes from the proxy's load reports, or there is none.
//!
//! Checked here: with `signals.lrs` on, a backend turned failing through its control endpoint
//! is ejected at the proxy (its `/config_dump` shows it unhealthy, set by the controller) while
//! the controller's Prometheus queries keep failing — on load reports alone, and `/decisions`
//! says so (`inputs.source: lrs`). With `signals.lrs` off and the same traffic, the controller
//! makes decision after decision without signals and the backend stays in.
//!
//! `lrs_fault_to_weights_measurement` (ignored; run by hand, see BENCHMARKS.md) times fault →
//! new weights at the proxy with LRS on, and off with a real Prometheus scraping every 15 s.

#![allow(unreachable_pub)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::process::{free_port, tempdir, Proc};

/// `n` free ports, distinct from each other and from `avoid` (see
/// [`support::process::free_port`]), so no two parts of one mesh are handed the same port.
fn distinct_ports(n: usize, avoid: &[u16]) -> Vec<u16> {
    let mut out = Vec::new();
    while out.len() < n {
        let port = free_port();
        if !avoid.contains(&port) {
            out.push(port);
        }
    }
    out
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One HTTP/1.1 request on a fresh connection: the status and body, or `None` when the
/// exchange failed.
fn http(to: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

fn json(to: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let (status, body) = http(to, "GET", path)?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// Polls `f` every 50 ms until it returns something; panics naming `what` after `limit` (a
/// bound on a hung run, not a pass/fail threshold).
fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Steady traffic through the proxy, counting requests and failures (anything but a 200).
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, f) = (stop.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: stops with the test, and after 5 minutes at most.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if !matches!(http(proxy, "GET", "/"), Some((200, _))) {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(4));
            }
        });
        Load {
            stop,
            failed,
            thread: Some(thread),
        }
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Prometheus (Debian's, from the PATH) scraping the proxy's admin every `scrape`.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target: u16, scrape: &str) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: {scrape}\nscrape_configs:\n  - job_name: proxy\n    static_configs: [{{ targets: [\"127.0.0.1:{target}\"] }}]\n"),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus on the PATH");
        until("prometheus ready", Duration::from_secs(60), || {
            matches!(http(addr(port), "GET", "/-/ready"), Some((200, _))).then_some(())
        });
        Prometheus { child, port }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Backends, a controller and a proxy steered by it, each its own process.
struct Mesh {
    dir: PathBuf,
    backends: Vec<(Proc, u16, u16)>,
    controller: Proc,
    _proxy: Proc,
    listen: u16,
    proxy_admin: u16,
    controller_admin: u16,
}

impl Mesh {
    /// `signals` is the controller's `signals:` block (indented two spaces); `proxy_admin` the
    /// port the proxy's admin listens on (so a Prometheus can be pointed at it first).
    fn start(dir: PathBuf, proxy_admin: u16, signals: &str) -> Mesh {
        let ports = distinct_ports(9, &[proxy_admin]);
        let backends: Vec<(Proc, u16, u16)> = (0..3)
            .map(|i| {
                let (port, control) = (ports[2 * i], ports[2 * i + 1]);
                let p = Proc::start(
                    &[
                        "backend",
                        "--listen",
                        &format!("127.0.0.1:{port}"),
                        "--name",
                        &format!("b{i}"),
                        "--control",
                        &format!("127.0.0.1:{control}"),
                    ],
                    &dir,
                );
                (p, port, control)
            })
            .collect();
        let (listen, xds, controller_admin) = (ports[6], ports[7], ports[8]);
        let endpoints: String = backends
            .iter()
            .map(|(_, p, _)| format!("      - {{ address: \"127.0.0.1:{p}\" }}\n"))
            .collect();
        std::fs::write(
            dir.join("proxy.yaml"),
            format!(
                "listeners:\n  - address: \"127.0.0.1:{listen}\"\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: web }} }}]\nclusters:\n  - name: web\n    endpoints:\n{endpoints}"
            ),
        )
        .unwrap();
        // No outlier detection at the proxy: only the controller can take an endpoint out.
        std::fs::write(
            dir.join("controller.yaml"),
            format!(
                "proxy_config: proxy.yaml\ninterval: 1s\nsignals:\n{signals}policy:\n  failure_percentage_threshold: 30\n  failure_percentage_request_volume: 10\n  max_ejection_percent: 50\n  base_ejection_time: 300s\nadmin: {{ address: \"127.0.0.1:{controller_admin}\" }}\nxds: {{ address: \"127.0.0.1:{xds}\" }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("bootstrap.yaml"),
            format!(
                "node: {{ id: proxy-1, cluster: web }}\nxds_server: {{ address: \"127.0.0.1:{xds}\", load_stats: true }}\nstatic_resources:\n  admin: {{ address: \"127.0.0.1:{proxy_admin}\" }}\n"
            ),
        )
        .unwrap();
        let config = dir.join("controller.yaml").display().to_string();
        let controller = Proc::start(&["controller", "run", "--config", &config], &dir);
        let bootstrap = dir.join("bootstrap.yaml").display().to_string();
        let proxy = Proc::start(&["proxy", "--bootstrap", &bootstrap], &dir);
        let mesh = Mesh {
            dir,
            backends,
            controller,
            _proxy: proxy,
            listen,
            proxy_admin,
            controller_admin,
        };
        until(
            "the proxy to serve over xDS",
            Duration::from_secs(60),
            || matches!(http(addr(listen), "GET", "/"), Some((200, _))).then_some(()),
        );
        mesh
    }

    fn backend(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.backends[i].1)
    }

    /// Turns backend `i` failing every request (503), through its control endpoint.
    fn fail(&self, i: usize) {
        let (status, body) = http(
            addr(self.backends[i].2),
            "POST",
            "/fault?fail_ratio=1&fail_status=503",
        )
        .expect("the backend's control endpoint answers");
        assert_eq!(status, 200, "{body}");
    }

    /// The endpoint as the proxy's `/config_dump` shows it.
    fn at_proxy(&self, endpoint: &str) -> Option<serde_json::Value> {
        let dump = json(addr(self.proxy_admin), "/config_dump")?;
        dump["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["address"] == endpoint)
            .cloned()
    }

    /// Whether the proxy has the endpoint out of rotation, as the controller configured it.
    fn ejected_at_proxy(&self, endpoint: &str) -> Option<bool> {
        let e = self.at_proxy(endpoint)?;
        Some(e["health_status"] != "healthy" && e["health_source"] == "controller")
    }

    /// The controller's `/decisions/web` entry for the endpoint, and the step's signal error.
    fn decision(&self, endpoint: &str) -> Option<(serde_json::Value, serde_json::Value)> {
        let all = json(addr(self.controller_admin), "/decisions")?;
        let e = all["clusters"]["web"]["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["endpoint"] == endpoint)?
            .clone();
        Some((e, all["signal_error"].clone()))
    }

    /// Decision steps the controller has made (`gofe_controller_decisions_total`).
    fn decisions(&self) -> Option<u64> {
        let (_, text) = http(addr(self.controller_admin), "GET", "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix("gofe_controller_decisions_total "))?
            .trim()
            .parse()
            .ok()
    }

    fn stop(mut self) {
        self.controller.signal("TERM");
        assert_eq!(self.controller.wait_exit(Duration::from_secs(20)), Some(0));
        for (b, _, _) in &mut self.backends {
            b.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The controller's `signals:` block: Prometheus at a port nothing listens on (the queries fail,
/// so no signal comes from it), a 5 s window, load reports as `lrs` says.
fn signals_without_prometheus(lrs: bool) -> String {
    let dead = free_port();
    format!("  source: prometheus\n  window: 5s\n  prometheus: {{ url: \"http://127.0.0.1:{dead}\", timeout: 1s, scrape_interval: 1s }}\n  lrs: {{ enabled: {lrs}, interval: 1s }}\n")
}

#[test]
fn a_failing_backend_is_ejected_at_the_proxy_on_load_reports_alone() {
    let mesh = Mesh::start(tempdir(), free_port(), &signals_without_prometheus(true));
    let load = Load::start(addr(mesh.listen));
    let bad = mesh.backend(2);
    // Load reports flow before the fault: the controller decides on them.
    until(
        "the controller's signals for b2 from load reports",
        Duration::from_secs(60),
        || {
            let (e, _) = mesh.decision(&bad)?;
            (e["inputs"]["source"] == "lrs" && e["inputs"]["requests"].as_f64()? > 0.0)
                .then_some(())
        },
    );
    assert_eq!(mesh.ejected_at_proxy(&bad), Some(false));

    mesh.fail(2);
    until("b2 ejected at the proxy", Duration::from_secs(60), || {
        mesh.ejected_at_proxy(&bad)?.then_some(())
    });
    let (e, signal_error) = mesh.decision(&bad).unwrap();
    assert_eq!(e["state"], "ejected", "{e}");
    assert_eq!(e["inputs"]["source"], "lrs", "decided on load reports: {e}");
    assert!(
        e["inputs"]["success_rate"].as_f64().unwrap() < 0.7,
        "the reports carried the failures: {e}"
    );
    assert!(
        signal_error
            .as_str()
            .is_some_and(|s| s.contains("prometheus")),
        "Prometheus never answered, so nothing came from it: {signal_error}"
    );
    // The healthy backends stay in, also decided on load reports.
    for i in 0..2 {
        let (e, _) = mesh.decision(&mesh.backend(i)).unwrap();
        assert_eq!(
            (e["healthy"].as_bool(), &e["inputs"]["source"]),
            (Some(true), &"lrs".into()),
            "{e}"
        );
        assert_eq!(mesh.ejected_at_proxy(&mesh.backend(i)), Some(false));
    }
    let reporters =
        json(addr(mesh.controller_admin), "/decisions").unwrap()["load_reporters"].clone();
    assert_eq!(
        reporters,
        serde_json::json!([{ "node": "proxy-1", "endpoints": 3 }]),
        "one stream, the proxy's, reporting the three endpoints"
    );
    assert!(
        mesh.controller.logs().contains("load-report stream opened"),
        "{}",
        mesh.controller.logs()
    );
    assert!(
        load.failed() > 0,
        "b2's failures reached the client before its ejection"
    );
    drop(load);
    mesh.stop();
}

#[test]
fn without_load_reports_and_no_other_source_a_failing_backend_stays_in() {
    let mesh = Mesh::start(tempdir(), free_port(), &signals_without_prometheus(false));
    let load = Load::start(addr(mesh.listen));
    let bad = mesh.backend(2);
    mesh.fail(2);
    // The fault is real at the data plane: clients see b2's 503s.
    until(
        "b2's failures through the proxy",
        Duration::from_secs(30),
        || (load.failed() >= 20).then_some(()),
    );
    // Five decisions of the controller with the fault on, each without signals.
    let from = until(
        "the controller's decisions",
        Duration::from_secs(30),
        || mesh.decisions(),
    );
    until("five more decisions", Duration::from_secs(60), || {
        (mesh.decisions()? >= from + 5).then_some(())
    });
    let (e, signal_error) = mesh.decision(&bad).unwrap();
    assert!(e["inputs"].is_null(), "no signals at all: {e}");
    assert!(signal_error.as_str().is_some(), "Prometheus did not answer");
    assert_eq!(e["healthy"], true, "{e}");
    assert_eq!(
        mesh.ejected_at_proxy(&bad),
        Some(false),
        "without a source, the controller holds b2 in"
    );
    assert!(
        mesh.controller.logs().contains("holding decisions"),
        "{}",
        mesh.controller.logs()
    );
    drop(load);
    mesh.stop();
}

/// Seconds from turning b2 failing until the proxy has it out, `reps` times, with the
/// controller's `signals` block.
fn time_fault_to_proxy(reps: usize, with_prometheus: Option<&str>, lrs: bool) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..reps {
        let dir = tempdir();
        let proxy_admin = free_port();
        let prometheus = with_prometheus.map(|scrape| Prometheus::start(&dir, proxy_admin, scrape));
        let signals = match &prometheus {
            Some(p) => format!(
                "  source: prometheus\n  window: 30s\n  prometheus: {{ url: \"http://127.0.0.1:{}\" }}\n  lrs: {{ enabled: {lrs}, interval: 1s, window: 5s }}\n",
                p.port
            ),
            None => signals_without_prometheus(lrs),
        };
        let mesh = Mesh::start(dir, proxy_admin, &signals);
        let load = Load::start(addr(mesh.listen));
        let bad = mesh.backend(2);
        until("signals for b2", Duration::from_secs(120), || {
            let (e, _) = mesh.decision(&bad)?;
            (e["inputs"]["requests"].as_f64()? > 0.0).then_some(())
        });
        // The fault lands at a random point of Prometheus' scrape cycle.
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..15_000)));
        let fault = Instant::now();
        mesh.fail(2);
        until("b2 out at the proxy", Duration::from_secs(180), || {
            mesh.ejected_at_proxy(&bad)?.then_some(())
        });
        out.push(fault.elapsed().as_secs_f64());
        drop(load);
        mesh.stop();
        drop(prometheus);
    }
    out
}

#[test]
#[ignore = "a measurement, minutes long: cargo test --test lrs_processes -- --ignored --nocapture"]
fn lrs_fault_to_weights_measurement() {
    let reps: usize = std::env::var("GOFE_LRS_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let summary = |name: &str, mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        println!(
            "{name}: runs {:?} s, median {:.2} s, max {:.2} s",
            v.iter()
                .map(|x| (x * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            v[v.len() / 2],
            v[v.len() - 1]
        );
    };
    summary(
        "LRS on (1 s reports, 5 s window; Prometheus at 15 s beside it)",
        time_fault_to_proxy(reps, Some("15s"), true),
    );
    summary(
        "LRS off (Prometheus scraping every 15 s, 30 s window)",
        time_fault_to_proxy(reps, Some("15s"), false),
    );
}
