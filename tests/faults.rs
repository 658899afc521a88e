//! Issue 16's fault table: each fault injected across processes of the shipped binary on
//! 127.0.0.1 (`gofe backend`, `gofe proxy`, `gofe controller run`, and a control plane or a
//! Prometheus the test runs itself), with a client counting every failed request.
//!
//! Every test bounds its load in count and time, waits with bounded polling, stops every
//! server it starts, and asserts counts and states, never timings. RELIABILITY.md is the table
//! these tests fill (with the times to recover observed in a run, which are printed with
//! `--nocapture`).

#![allow(unreachable_pub)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::process::{free_port, tempdir, Proc};

// ---------------------------------------------------------------------------------------------
// Helpers: HTTP/1.1 by hand, metrics, polling, load.
// ---------------------------------------------------------------------------------------------

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One HTTP/1.1 request on a fresh connection: the status and body, or `None` when the
/// exchange failed (refused, reset, nothing within 5 s).
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

/// Polls `f` every 50 ms until it gives a value; panics naming `what` after `limit`.
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

/// A `/metrics` page, parsed: series (name and labels as written) → value.
struct Metrics(Vec<(String, f64)>);

impl Metrics {
    fn scrape(admin: SocketAddr) -> Option<Metrics> {
        let (status, body) = http(admin, "GET", "/metrics")?;
        if status != 200 {
            return None;
        }
        Some(Metrics(
            body.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        ))
    }

    /// The sum of the series of `name` carrying every label of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The label sets of the series of `name` (for messages).
    fn lines(&self, name: &str) -> String {
        self.0
            .iter()
            .filter(|(s, _)| s.starts_with(name))
            .map(|(s, v)| format!("{s} {v}\n"))
            .collect()
    }
}

/// `name{labels}` summed on `admin`'s `/metrics` (0 when the page cannot be had).
fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    Metrics::scrape(admin).map_or(0.0, |m| m.sum(name, labels))
}

/// Steady traffic through the proxy from one client thread, counting failed requests
/// (anything but a 200) and keeping the status of each (0: no answer).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<u16>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts it: one request at a time, 2 ms apart, 60 s and 20 000 requests at most.
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, n, f) = (stop.clone(), sent.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && n.load(Ordering::Relaxed) < 20_000
            {
                n.fetch_add(1, Ordering::Relaxed);
                match http(proxy, "GET", "/") {
                    Some((200, _)) => {}
                    other => f.lock().unwrap().push(other.map_or(0, |(s, _)| s)),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Load {
            stop,
            sent,
            failures,
            thread: Some(thread),
        }
    }

    /// Requests sent so far.
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops it and returns (sent, the statuses of the failed ones).
    fn finish(mut self) -> (u64, Vec<u16>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.sent(), self.failures.lock().unwrap().clone())
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

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// A `gofe backend` with a control endpoint.
struct Backend {
    name: String,
    port: u16,
    control: u16,
    proc: Proc,
}

impl Backend {
    fn start(dir: &Path, name: &str, extra: &[&str]) -> Backend {
        Backend::start_on(dir, name, free_port(), free_port(), extra)
    }

    fn start_on(dir: &Path, name: &str, port: u16, control: u16, extra: &[&str]) -> Backend {
        let (listen, ctl) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{control}"));
        let mut args = vec![
            "backend",
            "--listen",
            &listen,
            "--name",
            name,
            "--control",
            &ctl,
        ];
        args.extend_from_slice(extra);
        let proc = Proc::start(&args, dir);
        let b = Backend {
            name: name.to_owned(),
            port,
            control,
            proc,
        };
        until(
            &format!("backend {name} to serve"),
            Duration::from_secs(10),
            || matches!(http(addr(control), "GET", "/fault"), Some((200, _))).then_some(()),
        );
        b
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `POST /fault?{query}` on its control endpoint; panics unless it is taken.
    fn fault(&self, query: &str) {
        let (status, body) =
            http(addr(self.control), "POST", &format!("/fault?{query}")).expect("control answers");
        assert_eq!(status, 200, "{} /fault?{query}: {body}", self.name);
    }
}

/// The static part of a proxy configuration: a listener on `listen` routing everything to
/// cluster `web` (route timeout `timeout`), and `web`'s `cluster_extra` YAML and endpoints.
fn proxy_yaml(
    listen: u16,
    timeout: &str,
    cluster_extra: &str,
    endpoints: &[(String, u32)],
) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(a, w)| format!("      - {{ address: \"{a}\", weight: {w} }}\n"))
        .collect();
    format!(
        "listeners:\n  - address: \"127.0.0.1:{listen}\"\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: web, timeout: \"{timeout}\" }} }}]\nclusters:\n  - name: web\n{cluster_extra}    endpoints:\n{eps}"
    )
}

/// The controller's view of one endpoint of `web`: (state, healthy).
fn endpoint_state(controller_admin: SocketAddr, endpoint: &str) -> Option<(String, bool)> {
    let v = decisions(controller_admin)?;
    let e = v["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["endpoint"] == endpoint)?;
    Some((e["state"].as_str()?.to_owned(), e["healthy"].as_bool()?))
}

/// The controller's `/decisions/web`.
fn decisions(controller_admin: SocketAddr) -> Option<serde_json::Value> {
    let (status, body) = http(controller_admin, "GET", "/decisions/web")?;
    (status == 200).then_some(())?;
    serde_json::from_str(&body).ok()
}

/// The controller's `/decisions` (every cluster, with the step's signal error).
fn all_decisions(controller_admin: SocketAddr) -> Option<serde_json::Value> {
    let (status, body) = http(controller_admin, "GET", "/decisions")?;
    (status == 200).then_some(())?;
    serde_json::from_str(&body).ok()
}

/// Waits until `n` requests in a row through `proxy` are answered 200.
fn serves(proxy: SocketAddr, n: usize, limit: Duration) {
    until(
        &format!("{n} requests in a row answered 200"),
        limit,
        || {
            (0..n)
                .all(|_| matches!(http(proxy, "GET", "/"), Some((200, _))))
                .then_some(())
        },
    );
}

/// The bootstrap of a proxy steered over xDS from `xds`, its admin on `admin`.
fn bootstrap(dir: &Path, xds: u16, admin: u16) -> PathBuf {
    let p = dir.join(format!("bootstrap-{admin}.yaml"));
    write(
        &p,
        &format!(
            "node: {{ id: proxy-1, cluster: web }}\nxds_server: {{ address: \"127.0.0.1:{xds}\" }}\nstatic_resources:\n  admin: {{ address: \"127.0.0.1:{admin}\" }}\n"
        ),
    );
    p
}

/// `/ready` of a proxy's admin: its status, or `None` when the admin does not answer.
fn ready(admin: SocketAddr) -> Option<u16> {
    http(admin, "GET", "/ready").map(|(s, _)| s)
}

// ---------------------------------------------------------------------------------------------
// A fake Prometheus: answers the controller's five queries (named q_requests, q_rps,
// q_success, q_latency, q_last in its configuration) with canned vectors, answers nothing at
// all, answers empty vectors, or is not there.
// ---------------------------------------------------------------------------------------------

const ANSWER: u8 = 0;
const SILENT: u8 = 1;
const EMPTY: u8 = 2;

struct FakePrometheus {
    port: u16,
    /// Endpoint → success rate it reports for it.
    endpoints: Vec<(String, f64)>,
    mode: Arc<AtomicU8>,
    queries: Arc<AtomicU64>,
    serving: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl FakePrometheus {
    fn new(endpoints: Vec<(String, f64)>) -> FakePrometheus {
        FakePrometheus {
            port: free_port(),
            endpoints,
            mode: Arc::new(AtomicU8::new(ANSWER)),
            queries: Arc::new(AtomicU64::new(0)),
            serving: None,
        }
    }

    /// Listens (again) on its port, answering as `mode` says.
    fn serve(&mut self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
        if self.serving.is_some() {
            return;
        }
        let listener = until("the fake Prometheus' port", Duration::from_secs(5), || {
            TcpListener::bind(addr(self.port)).ok()
        });
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, mode, queries, endpoints) = (
            stop.clone(),
            self.mode.clone(),
            self.queries.clone(),
            self.endpoints.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, mode, queries, endpoints) =
                            (s.clone(), mode.clone(), queries.clone(), endpoints.clone());
                        held.push(std::thread::spawn(move || {
                            answer_query(conn, &s, &mode, &queries, &endpoints)
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for t in held {
                let _ = t.join();
            }
        });
        self.serving = Some((stop, thread));
    }

    /// Stops listening: connections are refused.
    fn stop(&mut self) {
        if let Some((stop, thread)) = self.serving.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One connection to the fake Prometheus: requests in, answers out (keep-alive).
fn answer_query(
    mut conn: TcpStream,
    stop: &AtomicBool,
    mode: &AtomicU8,
    queries: &AtomicU64,
    endpoints: &[(String, f64)],
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if body.len() < length {
            continue;
        }
        let consumed = head.len() + 4 + length;
        let form = body[..length].to_owned();
        buf.drain(..consumed);
        queries.fetch_add(1, Ordering::Relaxed);
        let current = mode.load(Ordering::Relaxed);
        if current == SILENT {
            // Say nothing, keep the connection, until the test moves on.
            while !stop.load(Ordering::Relaxed)
                && mode.load(Ordering::Relaxed) == SILENT
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let query = form
            .split('&')
            .find_map(|p| p.strip_prefix("query="))
            .unwrap_or("");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let result: Vec<String> = if current == EMPTY {
            Vec::new()
        } else {
            endpoints
                .iter()
                .map(|(endpoint, success)| {
                    let value = match query {
                        "q_requests" => 100.0,
                        "q_rps" => 10.0,
                        "q_success" => *success,
                        "q_latency" => 0.01,
                        _ => now,
                    };
                    format!(
                        r#"{{"metric":{{"cluster":"web","endpoint":"{endpoint}"}},"value":[{now},"{value}"]}}"#
                    )
                })
                .collect()
        };
        let json = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            result.join(",")
        );
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// The controller's last step (Unix seconds), its signal error, and the clusters it had no
/// series for.
type SignalState = (u64, Option<String>, Vec<String>);

/// The controller's [`SignalState`], from its `/decisions`.
fn signal_state(controller_admin: SocketAddr) -> Option<SignalState> {
    let v = all_decisions(controller_admin)?;
    let no_signals = v["no_signals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some((
        v["decided_at_unix"].as_u64()?,
        v["signal_error"].as_str().map(str::to_owned),
        no_signals,
    ))
}

/// Prometheus stopped, then slow (accepts, never answers within the controller's timeout),
/// then answering empty vectors, while the controller decides from it: the controller holds
/// its last decisions (an ejected endpoint that really fails stays ejected), the proxy keeps
/// serving, no request fails; when Prometheus answers again the controller decides again by
/// itself.
#[test]
fn prometheus_stopped_slow_or_empty_loses_no_request_and_recovers() {
    let dir = tempdir();
    let backends: Vec<Backend> = (0..3)
        .map(|i| {
            let extra: &[&str] = if i == 2 {
                &["--fail-ratio", "1", "--fail-status", "503"]
            } else {
                &[]
            };
            Backend::start(&dir, &format!("b{i}"), extra)
        })
        .collect();
    let bad = backends[2].endpoint();
    let mut prometheus = FakePrometheus::new(
        backends
            .iter()
            .map(|b| (b.endpoint(), if b.name == "b2" { 0.0 } else { 1.0 }))
            .collect(),
    );
    prometheus.serve(ANSWER);
    let (listen, proxy_admin, xds, controller_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let endpoints: Vec<(String, u32)> = backends.iter().map(|b| (b.endpoint(), 1)).collect();
    write(
        &dir.join("proxy.yaml"),
        &proxy_yaml(listen, "5s", "", &endpoints),
    );
    write(
        &dir.join("controller.yaml"),
        &format!(
            "proxy_config: proxy.yaml\ninterval: 500ms\nsignals:\n  source: prometheus\n  window: 10s\n  prometheus: {{ url: \"http://127.0.0.1:{}\", scrape_interval: 1s, timeout: 300ms, requests: q_requests, rps: q_rps, success_rate: q_success, latency: q_latency, last_sample: q_last }}\npolicy:\n  failure_percentage_threshold: 30\n  failure_percentage_request_volume: 10\n  max_ejection_percent: 50\n  base_ejection_time: 120s\n  max_ejection_time: 300s\nadmin: {{ address: \"127.0.0.1:{controller_admin}\" }}\nxds: {{ address: \"127.0.0.1:{xds}\" }}\n",
            prometheus.port
        ),
    );
    let mut controller = Proc::start(
        &[
            "controller",
            "run",
            "--config",
            &path_arg(&dir.join("controller.yaml")),
        ],
        &dir,
    );
    let boot = bootstrap(&dir, xds, proxy_admin);
    let _proxy = Proc::start(&["proxy", "--bootstrap", &path_arg(&boot)], &dir);

    // Prometheus says b2 fails everything (it does): ejected, and the proxy stops sending to it.
    until(
        "b2 ejected from Prometheus' signals",
        Duration::from_secs(30),
        || {
            let (state, healthy) = endpoint_state(addr(controller_admin), &bad)?;
            (state == "ejected" && !healthy).then_some(())
        },
    );
    serves(addr(listen), 30, Duration::from_secs(20));
    let load = Load::start(addr(listen));

    // Waits for the controller's signal state `done`, lets three more steps pass in it, and
    // checks b2's decision: `want` ("held" while there is no fresh data, "ejected" once there
    // is), never healthy.
    let step = |what: &str, want: &str, done: &dyn Fn(&SignalState) -> bool| {
        let started = Instant::now();
        let first = until(what, Duration::from_secs(20), || {
            signal_state(addr(controller_admin)).filter(|s| done(s))
        });
        let reached = started.elapsed();
        // Three more decision steps in that state.
        until(
            &format!("three steps with {what}"),
            Duration::from_secs(20),
            || {
                let s = signal_state(addr(controller_admin))?;
                (s.0 >= first.0 + 2 && done(&s)).then_some(())
            },
        );
        let (state, healthy) = endpoint_state(addr(controller_admin), &bad).unwrap();
        assert_eq!(
            (state.as_str(), healthy),
            (want, false),
            "{what}: the controller held its decision"
        );
        println!("{what}: in /decisions {reached:?} after the change, b2 {state} for 3 more steps");
        first
    };

    // Stopped: connection refused.
    prometheus.stop();
    step("signals lost (Prometheus stopped)", "held", &|s| {
        s.1.as_deref()
            .is_some_and(|e| e.contains("connection refused"))
    });
    let errors = |reason: &str| {
        metric(
            addr(controller_admin),
            "gofe_controller_signal_errors_total",
            &[("reason", reason)],
        )
    };
    let refused = errors("prometheus");
    assert!(
        refused >= 2.0,
        "each step without Prometheus is a signal error: {refused}"
    );

    // Slow: accepts and never answers within the controller's 300 ms.
    prometheus.serve(SILENT);
    let queries = prometheus.queries.load(Ordering::Relaxed);
    step("signals lost (Prometheus silent)", "held", &|s| {
        s.1.as_deref().is_some_and(|e| e.contains("no answer from"))
    });
    assert!(
        prometheus.queries.load(Ordering::Relaxed) > queries,
        "the controller asked the silent Prometheus"
    );
    assert!(
        errors("prometheus") >= refused + 2.0,
        "each step with a silent Prometheus is a signal error"
    );

    // Empty: every query answers no series.
    prometheus.serve(EMPTY);
    step("no series for web (Prometheus empty)", "held", &|s| {
        s.1.is_none() && s.2 == ["web"]
    });

    // Back: the controller decides from signals again, by itself.
    prometheus.serve(ANSWER);
    step("signals back", "ejected", &|s| {
        s.1.is_none() && s.2.is_empty()
    });
    assert!(controller
        .logs()
        .contains("signals are back: deciding again"));

    let (sent, failures) = load.finish();
    println!("load: {sent} requests, {} failed", failures.len());
    assert!(sent > 200, "traffic flowed: {sent}");
    assert_eq!(
        failures,
        Vec::<u16>::new(),
        "requests lost to the control plane"
    );
    assert!(controller.running());
    controller.signal("TERM");
    assert_eq!(controller.wait_exit(Duration::from_secs(20)), Some(0));
    drop(backends);
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Broken backends.
// ---------------------------------------------------------------------------------------------

/// One broken-backend case's counts: what the client saw and what the proxy's `/metrics`
/// counted, as deltas over the case.
struct Case {
    sent: u64,
    failures: Vec<u16>,
    bad_5xx: f64,
    good_5xx: f64,
    timeouts: f64,
    connect_failures: f64,
    ejections: f64,
}

/// A backend that resets, answers garbage, half-closes, never answers, or dies mid-request:
/// a bounded number of client requests fail, each with the status of its cause (502 for a
/// broken exchange, 504 for no answer in time, 503 for no connection), each counted by the
/// proxy's `/metrics` against that endpoint only (with timeouts and connect failures in their
/// own series), and the proxy's outlier detection ejects the endpoint (reason
/// `consecutive_gateway_failure`) and readmits it by itself once it behaves.
#[test]
fn broken_backends_fail_boundedly_attributed_ejected_and_readmitted() {
    let dir = tempdir();
    let mut backends: Vec<Backend> = (0..3)
        .map(|i| Backend::start(&dir, &format!("b{i}"), &[]))
        .collect();
    let bad = backends[2].endpoint();
    let good: Vec<String> = backends[..2].iter().map(Backend::endpoint).collect();
    let (listen, admin) = (free_port(), free_port());
    let endpoints: Vec<(String, u32)> = backends.iter().map(|b| (b.endpoint(), 1)).collect();
    let outlier = "    outlier_detection: { consecutive_5xx: 0, consecutive_gateway_failure: 2, failure_percentage_threshold: 101, interval: \"1s\", base_ejection_time: \"1s\", max_ejection_time: \"2s\", max_ejection_percent: 34 }\n";
    write(
        &dir.join("proxy.yaml"),
        &format!(
            "{}admin: {{ address: \"127.0.0.1:{admin}\" }}\n",
            proxy_yaml(listen, "300ms", outlier, &endpoints)
        ),
    );
    let proxy = Proc::start(
        &["proxy", "--config", &path_arg(&dir.join("proxy.yaml"))],
        &dir,
    );
    serves(addr(listen), 30, Duration::from_secs(20));
    let admin = addr(admin);
    fn ep(e: &str) -> [(&str, &str); 2] {
        [("cluster", "web"), ("endpoint", e)]
    }

    let run_case = |backends: &mut Vec<Backend>,
                    what: &str,
                    break_it: &dyn Fn(&mut Vec<Backend>),
                    heal: &dyn Fn(&mut Vec<Backend>)|
     -> Case {
        let before = Metrics::scrape(admin).unwrap();
        let load = Load::start(addr(listen));
        let started = Instant::now();
        break_it(backends);
        until(
            &format!("{what}: the endpoint ejected"),
            Duration::from_secs(20),
            || {
                let m = Metrics::scrape(admin)?;
                let reason = [
                    ("endpoint", bad.as_str()),
                    ("reason", "consecutive_gateway_failure"),
                ];
                (m.sum("gofe_outlier_ejections_total", &reason)
                    > before.sum("gofe_outlier_ejections_total", &reason))
                .then_some(())
            },
        );
        let ejected = started.elapsed();
        heal(backends);
        let healed = Instant::now();
        let ok_at_heal = metric(
            admin,
            "gofe_upstream_requests_total",
            &[("endpoint", bad.as_str()), ("code_class", "2xx")],
        );
        until(
            &format!("{what}: the endpoint readmitted"),
            Duration::from_secs(20),
            || {
                let m = Metrics::scrape(admin)?;
                (m.sum("gofe_endpoint_breaker_state", &ep(&bad)) == 0.0
                    && m.sum(
                        "gofe_upstream_requests_total",
                        &[("endpoint", bad.as_str()), ("code_class", "2xx")],
                    ) > ok_at_heal)
                    .then_some(())
            },
        );
        let readmitted = healed.elapsed();
        let (sent, failures) = load.finish();
        let after = Metrics::scrape(admin).unwrap();
        let delta = |name: &str, labels: &[(&str, &str)]| {
            after.sum(name, labels) - before.sum(name, labels)
        };
        let case = Case {
            sent,
            bad_5xx: delta(
                "gofe_upstream_requests_total",
                &[("endpoint", bad.as_str()), ("code_class", "5xx")],
            ),
            good_5xx: good
                .iter()
                .map(|g| {
                    delta(
                        "gofe_upstream_requests_total",
                        &[("endpoint", g.as_str()), ("code_class", "5xx")],
                    )
                })
                .sum(),
            timeouts: delta(
                "gofe_upstream_request_timeouts_total",
                &[("cluster", "web")],
            ),
            connect_failures: delta("gofe_upstream_connect_failures_total", &ep(&bad)),
            ejections: delta(
                "gofe_outlier_ejections_total",
                &[("endpoint", bad.as_str())],
            ),
            failures,
        };
        println!(
            "{what}: {} requests, {} failed {:?}; ejected after {ejected:?}, readmitted {readmitted:?} after it behaved; {} ejection(s)",
            case.sent, case.failures.len(), case.failures, case.ejections
        );
        // Bounded: the failures it takes to eject (2 in a row), and a failed trial or two.
        assert!(
            !case.failures.is_empty() && case.failures.len() <= 10,
            "{what}: {:?}",
            case.failures
        );
        // Attributed: every failed request counted against the broken endpoint, none against
        // the others.
        assert_eq!(
            case.bad_5xx,
            case.failures.len() as f64,
            "{what}: {}",
            after.lines("gofe_upstream_requests_total")
        );
        assert_eq!(case.good_5xx, 0.0, "{what}");
        assert!(case.ejections >= 1.0);
        assert_eq!(metric(admin, "gofe_endpoint_breaker_state", &ep(&bad)), 0.0);
        case
    };

    for (mode, status) in [
        ("reset", 502),
        ("garbage", 502),
        ("half-close", 502),
        ("silent", 504),
    ] {
        let case = run_case(
            &mut backends,
            mode,
            &|b| b[2].fault(&format!("broken={mode}")),
            &|b| b[2].fault("broken=no"),
        );
        assert!(
            case.failures.iter().all(|&s| s == 502 || s == 504) && case.failures.contains(&status),
            "{mode}: statuses {:?}",
            case.failures
        );
        let timed_out = case.failures.iter().filter(|&&s| s == 504).count();
        assert_eq!(
            case.timeouts, timed_out as f64,
            "{mode}: the 504s are the route timeouts"
        );
        assert_eq!(case.connect_failures, 0.0, "{mode}: connections were made");
    }

    // Dies mid-request: a slow answer in flight when the process is killed; then refused.
    let (port, control) = (backends[2].port, backends[2].control);
    let case = run_case(
        &mut backends,
        "killed mid-request",
        &|b| {
            b[2].fault("delay=3s");
            until("a request in flight at b2", Duration::from_secs(20), || {
                (metric(
                    admin,
                    "gofe_upstream_requests_active",
                    &[("endpoint", bad.as_str())],
                ) >= 1.0)
                    .then_some(())
            });
            b[2].proc.kill();
        },
        &|b| b[2] = Backend::start_on(&dir, "b2", port, control, &[]),
    );
    let refused = case.failures.iter().filter(|&&s| s == 503).count();
    assert!(
        case.failures.iter().all(|&s| s == 502 || s == 503) && case.failures.contains(&502),
        "killed: the request in flight is a 502, the refused ones 503: {:?}",
        case.failures
    );
    assert_eq!(
        case.connect_failures, refused as f64,
        "the 503s are connection failures"
    );
    assert_eq!(case.timeouts, 0.0);

    drop(proxy);
    drop(backends);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// The proxy restarted under the controller; a flood of pushes.
// ---------------------------------------------------------------------------------------------

/// The controller's file for `proxy.yaml` in `dir`, embedded signals from `proxy_admin`.
fn controller_yaml(dir: &Path, proxy_admin: u16, controller_admin: u16, xds: u16) -> PathBuf {
    let p = dir.join("controller.yaml");
    write(
        &p,
        &format!(
            "proxy_config: proxy.yaml\nstate_file: state.json\ninterval: 500ms\nsignals:\n  source: embedded\n  window: 3s\n  embedded: {{ targets: [\"127.0.0.1:{proxy_admin}\"] }}\npolicy:\n  failure_percentage_threshold: 30\n  failure_percentage_request_volume: 10\n  max_ejection_percent: 50\n  base_ejection_time: 120s\n  max_ejection_time: 300s\n  latency_weighting: false\nadmin: {{ address: \"127.0.0.1:{controller_admin}\" }}\nxds: {{ address: \"127.0.0.1:{xds}\" }}\n"
        ),
    );
    p
}

/// A proxy restarted while the controller has an endpoint ejected comes back with the last
/// configuration over xDS: `/ready` answers 503 (and the listener is not there) until its
/// first snapshot, then 200, and its very first requests succeed — none reaches the ejected,
/// failing endpoint. Checked with the controller running (SIGKILL of the proxy, restart), and
/// with the controller down while the proxy starts (so the 503 window is certain to be seen)
/// and started afterwards from its state file.
#[test]
fn a_restarted_proxy_is_unready_until_its_first_snapshot_then_serves_the_last_config() {
    let dir = tempdir();
    let backends: Vec<Backend> = (0..3)
        .map(|i| {
            let extra: &[&str] = if i == 2 {
                &["--fail-ratio", "1", "--fail-status", "503"]
            } else {
                &[]
            };
            Backend::start(&dir, &format!("b{i}"), extra)
        })
        .collect();
    let bad = backends[2].endpoint();
    let (listen, proxy_admin, xds, controller_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let endpoints: Vec<(String, u32)> = backends.iter().map(|b| (b.endpoint(), 1)).collect();
    write(
        &dir.join("proxy.yaml"),
        &proxy_yaml(listen, "5s", "", &endpoints),
    );
    let config = path_arg(&controller_yaml(&dir, proxy_admin, controller_admin, xds));
    let start_controller = || Proc::start(&["controller", "run", "--config", &config], &dir);
    let mut controller = start_controller();
    let boot = path_arg(&bootstrap(&dir, xds, proxy_admin));
    let start_proxy = || Proc::start(&["proxy", "--bootstrap", &boot], &dir);
    let mut proxy = start_proxy();

    // b2 fails everything: ejected by the controller from the proxy's own signals.
    serves(addr(listen), 1, Duration::from_secs(20));
    until("b2 ejected", Duration::from_secs(30), || {
        for _ in 0..10 {
            let _ = http(addr(listen), "GET", "/");
        }
        let (state, healthy) = endpoint_state(addr(controller_admin), &bad)?;
        (state == "ejected" && !healthy).then_some(())
    });
    serves(addr(listen), 30, Duration::from_secs(20));

    let first_requests = |what: &str| {
        let ok = (0..60)
            .filter(|_| matches!(http(addr(listen), "GET", "/"), Some((200, _))))
            .count();
        assert_eq!(
            ok, 60,
            "{what}: the first requests after /ready all succeed"
        );
    };

    // 1. The proxy dies and comes back while the controller runs.
    proxy.kill();
    let started = Instant::now();
    let mut proxy = start_proxy();
    let statuses: Vec<Option<u16>> = {
        let mut seen = Vec::new();
        until("the restarted proxy ready", Duration::from_secs(20), || {
            let r = ready(addr(proxy_admin));
            seen.push(r);
            (r == Some(200)).then_some(())
        });
        seen
    };
    println!(
        "proxy restarted under a running controller: ready after {:?}; /ready said {statuses:?}",
        started.elapsed()
    );
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s, None | Some(503) | Some(200))),
        "{statuses:?}"
    );
    first_requests("restart under a running controller");

    // 2. Both die; the proxy starts first: not ready, not listening, for as long as there is
    // no control plane.
    proxy.kill();
    controller.kill();
    let mut proxy = start_proxy();
    let unready = until("the new proxy's admin", Duration::from_secs(10), || {
        ready(addr(proxy_admin))
    });
    assert_eq!(unready, 503, "not ready before the first snapshot");
    for _ in 0..20 {
        assert_eq!(
            ready(addr(proxy_admin)),
            Some(503),
            "still no snapshot: still 503"
        );
        assert!(
            TcpStream::connect_timeout(&addr(listen), Duration::from_millis(200)).is_err(),
            "no listener before the first snapshot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, body) = http(addr(proxy_admin), "GET", "/ready").unwrap();
    println!("/ready before the first snapshot: {}", body.trim());
    let started = Instant::now();
    let mut controller = start_controller();
    until(
        "the proxy ready once the controller is back",
        Duration::from_secs(30),
        || (ready(addr(proxy_admin)) == Some(200)).then_some(()),
    );
    println!(
        "ready {:?} after the controller came back",
        started.elapsed()
    );
    // The resumed state: b2 still ejected, so not one of the first requests reaches it.
    first_requests("restart before the controller");
    assert!(controller
        .logs()
        .contains("resumed the saved decision state"));
    assert_eq!(
        metric(
            addr(proxy_admin),
            "gofe_upstream_requests_total",
            &[("endpoint", bad.as_str())]
        ),
        0.0,
        "the restarted proxy never sent to the ejected endpoint"
    );

    controller.signal("TERM");
    assert_eq!(controller.wait_exit(Duration::from_secs(20)), Some(0));
    proxy.kill();
    drop(backends);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The controller's file rewritten with new weights and SIGHUPed 50 times while load runs:
/// not one request fails, the controller lives on, and the proxy ends on the last weights.
#[test]
fn a_flood_of_pushes_under_load_fails_no_request() {
    let dir = tempdir();
    let backends: Vec<Backend> = (0..3)
        .map(|i| Backend::start(&dir, &format!("b{i}"), &[]))
        .collect();
    let (listen, proxy_admin, xds, controller_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let weights = |k: u32| -> Vec<(String, u32)> {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.endpoint(), 1 + (k + i as u32) % 5))
            .collect()
    };
    write(
        &dir.join("proxy.yaml"),
        &proxy_yaml(listen, "5s", "", &weights(0)),
    );
    let config = path_arg(&controller_yaml(&dir, proxy_admin, controller_admin, xds));
    let mut controller = Proc::start(&["controller", "run", "--config", &config], &dir);
    let boot = path_arg(&bootstrap(&dir, xds, proxy_admin));
    let _proxy = Proc::start(&["proxy", "--bootstrap", &boot], &dir);
    serves(addr(listen), 30, Duration::from_secs(30));
    let accepted = || metric(addr(proxy_admin), "gofe_xds_update_accepted_total", &[]);
    let accepted_before = accepted();

    let load = Load::start(addr(listen));
    let started = Instant::now();
    const PUSHES: u32 = 50;
    for k in 1..=PUSHES {
        write(
            &dir.join("proxy.yaml"),
            &proxy_yaml(listen, "5s", "", &weights(k)),
        );
        controller.signal("HUP");
        std::thread::sleep(Duration::from_millis(40));
    }
    // The last weights reach the proxy (as ratios: the controller scales them).
    let last = weights(PUSHES);
    until(
        "the last weights at the proxy",
        Duration::from_secs(20),
        || {
            let m = Metrics::scrape(addr(proxy_admin))?;
            let w: Vec<f64> = last
                .iter()
                .map(|(e, _)| m.sum("gofe_endpoint_weight", &[("endpoint", e.as_str())]))
                .collect();
            let ratio = w[0] / f64::from(last[0].1);
            (ratio > 0.0
                && last
                    .iter()
                    .zip(&w)
                    .all(|((_, want), got)| (got / f64::from(*want) - ratio).abs() < 1e-9))
            .then_some(())
        },
    );
    println!("{PUSHES} pushes applied in {:?}", started.elapsed());
    // Traffic through the last of them too.
    let until_sent = load.sent() + 200;
    until("200 more requests", Duration::from_secs(20), || {
        (load.sent() >= until_sent).then_some(())
    });
    let (sent, failures) = load.finish();
    let updates = accepted() - accepted_before;
    println!(
        "load: {sent} requests, {} failed; the proxy accepted {updates} xDS updates",
        failures.len()
    );
    assert_eq!(
        failures,
        Vec::<u16>::new(),
        "requests failed during the pushes"
    );
    assert!(updates >= 2.0, "the pushes reached the proxy: {updates}");
    assert!(controller.running(), "{}", controller.logs());
    controller.signal("TERM");
    assert_eq!(controller.wait_exit(Duration::from_secs(20)), Some(0));
    drop(backends);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Invalid configuration over xDS, from a control plane the test runs.
// ---------------------------------------------------------------------------------------------

/// A listener on `listen` whose routes (RDS `routes`, or inline when `inline_cluster` names
/// the cluster to route to) send everything to `web`, and `web`'s endpoints over EDS.
fn xds_resources(
    listen: u16,
    endpoints: &[String],
    inline_cluster: Option<&str>,
) -> gofe_proto::Resources {
    use gofe_proto::{
        ClusterResource, EndpointsResource, ListenerKind, ListenerResource, RouteResource,
        RouteSource, SocketSettings,
    };
    use gofe_proxy::config::{
        EndpointConfig, RouteActionConfig, RouteConfig, RouteMatchConfig, RouterConfig,
        VirtualHostConfig,
    };
    let router = |cluster: &str| RouterConfig {
        virtual_hosts: vec![VirtualHostConfig {
            name: "all".into(),
            domains: vec!["*".into()],
            fault: None,
            local_ratelimit: None,
            routes: vec![RouteConfig {
                name: None,
                fault: None,
                local_ratelimit: None,
                matcher: RouteMatchConfig {
                    prefix: Some("/".into()),
                    ..Default::default()
                },
                route: RouteActionConfig {
                    cluster: Some(cluster.into()),
                    timeout: Duration::from_secs(5),
                    ..Default::default()
                },
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut r = gofe_proto::Resources::default();
    r.listeners.insert(
        "ingress".into(),
        ListenerResource {
            name: "ingress".into(),
            kind: ListenerKind::Socket {
                address: format!("127.0.0.1:{listen}"),
                settings: SocketSettings::default(),
            },
            routes: match inline_cluster {
                Some(c) => RouteSource::Inline(router(c)),
                None => RouteSource::Rds("routes".into()),
            },
        },
    );
    r.routes.insert(
        "routes".into(),
        RouteResource {
            name: "routes".into(),
            router: router("web"),
        },
    );
    r.clusters.insert(
        "web".into(),
        ClusterResource {
            config: gofe_proto::convert::empty_cluster("web"),
            eds_service_name: Some("web".into()),
            circuit_breakers: None,
            outlier_detection: None,
        },
    );
    r.endpoints.insert(
        "web".into(),
        EndpointsResource {
            cluster_name: "web".into(),
            overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
            endpoints: endpoints
                .iter()
                .map(|a| EndpointConfig {
                    address: a.clone(),
                    weight: 1,
                    health_status: Default::default(),
                    locality: None,
                    priority: 0,
                    locality_weight: None,
                })
                .collect(),
        },
    );
    r
}

type Encoded =
    std::collections::HashMap<gofe_proto::ResourceType, BTreeMap<String, gofe_proto::wire::Any>>;

fn encode(r: &gofe_proto::Resources) -> Encoded {
    gofe_proto::ResourceType::ALL
        .into_iter()
        .map(|t| (t, r.encode(t).unwrap()))
        .collect()
}

/// Every kind of invalid configuration pushed over xDS to the shipped proxy — an endpoint
/// address that is no IP, one that is no valid IP, an inline route naming a cluster that does
/// not exist (`validate_clusters`), bytes that do not decode as the resource of each type, and
/// a resource of the wrong type: each NACKed (the proxy's `gofe_xds_update_rejected_total` of
/// that type goes up, with the reason), the last good configuration kept (its accepted version
/// unchanged), no request fails; and a good push afterwards is taken.
#[test]
fn every_invalid_config_kind_over_xds_is_nacked_and_the_last_good_kept() {
    use gofe_proto::ResourceType as T;
    let dir = tempdir();
    let backends: Vec<Backend> = (0..3)
        .map(|i| Backend::start(&dir, &format!("b{i}"), &[]))
        .collect();
    let (listen, proxy_admin) = (free_port(), free_port());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let server = gofe_xds::AdsServer::new(gofe_xds::ServerOptions {
        debounce: Duration::from_millis(5),
        ..Default::default()
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let xds = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(gofe_xds::serve(listener, server.clone(), None, async {
        let _ = stopped.await;
    }));
    let push = |e: Encoded| {
        server.cache().set_snapshot(
            gofe_xds::NodeKey::Default,
            gofe_xds::Snapshot::from_encoded(e),
        );
    };
    let two: Vec<String> = backends[..2].iter().map(Backend::endpoint).collect();
    let good = xds_resources(listen, &two, None);
    push(encode(&good));
    let boot = path_arg(&bootstrap(&dir, xds, proxy_admin));
    let proxy = Proc::start(&["proxy", "--bootstrap", &boot], &dir);
    serves(addr(listen), 30, Duration::from_secs(30));
    let admin = addr(proxy_admin);
    let versions = || {
        let m = Metrics::scrape(admin).unwrap();
        m.lines("gofe_xds_version_info")
    };
    let good_versions = versions();

    let garbage = |t: T| gofe_proto::wire::Any {
        type_url: t.type_url().into(),
        value: vec![0xff, 0xff, 0xff, 0xff, 0x0f],
    };
    let mut cases: Vec<(String, T, Encoded)> = Vec::new();
    let mut e = encode(&xds_resources(
        listen,
        &[two[0].clone(), "bad host:80".into()],
        None,
    ));
    e.retain(|t, _| *t == T::Endpoints);
    cases.push((
        "an endpoint address that is no IP".into(),
        T::Endpoints,
        merged(&good, e),
    ));
    let mut e = encode(&xds_resources(
        listen,
        &[two[0].clone(), "999.999.999.999:80".into()],
        None,
    ));
    e.retain(|t, _| *t == T::Endpoints);
    cases.push((
        "an endpoint address that is no valid IP".into(),
        T::Endpoints,
        merged(&good, e),
    ));
    let mut e = encode(&xds_resources(listen, &two, Some("missing")));
    e.retain(|t, _| *t == T::Listener);
    cases.push((
        "an inline route naming a missing cluster (validate_clusters)".into(),
        T::Listener,
        merged(&good, e),
    ));
    for (t, name) in [
        (T::Listener, "ingress"),
        (T::Route, "routes"),
        (T::Cluster, "web"),
        (T::Endpoints, "web"),
    ] {
        let mut e = encode(&good);
        e.get_mut(&t).unwrap().insert(name.into(), garbage(t));
        cases.push((
            format!("undecodable bytes as the {} resource", t.short()),
            t,
            e,
        ));
    }
    let mut e = encode(&good);
    let listener_any = e[&T::Listener]["ingress"].clone();
    e.get_mut(&T::Cluster)
        .unwrap()
        .insert("web".into(), listener_any);
    cases.push(("a Listener sent as the cds resource".into(), T::Cluster, e));

    let load = Load::start(addr(listen));
    for (what, t, snapshot) in cases {
        let rejected = || {
            metric(
                admin,
                "gofe_xds_update_rejected_total",
                &[("type", t.short())],
            )
        };
        let before = rejected();
        let started = Instant::now();
        push(snapshot);
        until(
            &format!("a NACK of {what}"),
            Duration::from_secs(20),
            || (rejected() > before).then_some(()),
        );
        let m = Metrics::scrape(admin).unwrap();
        println!(
            "{what}: NACKed after {:?}: {}",
            started.elapsed(),
            m.lines("gofe_xds_last_rejection_info")
                .lines()
                .find(|l| l.contains(&format!("type=\"{}\"", t.short())))
                .unwrap_or("")
        );
        assert_eq!(
            versions(),
            good_versions,
            "{what}: the last good configuration is kept"
        );
        // Traffic under the refused configuration for a moment.
        std::thread::sleep(Duration::from_millis(300));
        // Back to the good one before the next case.
        push(encode(&good));
    }
    let (sent, failures) = load.finish();
    println!("load: {sent} requests, {} failed", failures.len());
    assert_eq!(
        failures,
        Vec::<u16>::new(),
        "requests failed while invalid configuration arrived"
    );
    assert!(sent > 100, "traffic flowed: {sent}");

    // A flood of good pushes straight over xDS (no controller to coalesce them): 50 weight
    // changes 20 ms apart under load, not one request failed, the last one in force.
    let load = Load::start(addr(listen));
    let eds = || metric(admin, "gofe_xds_update_accepted_total", &[("type", "eds")]);
    let accepted_before = eds();
    let started = Instant::now();
    let weighted = |k: u32| {
        let mut r = xds_resources(listen, &two, None);
        for (i, e) in r
            .endpoints
            .get_mut("web")
            .unwrap()
            .endpoints
            .iter_mut()
            .enumerate()
        {
            e.weight = 1 + (k + i as u32) % 7;
        }
        r
    };
    for k in 1..=50 {
        push(encode(&weighted(k)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = weighted(50);
    until(
        "the last weights at the proxy",
        Duration::from_secs(20),
        || {
            let m = Metrics::scrape(admin)?;
            last.endpoints["web"]
                .endpoints
                .iter()
                .all(|e| {
                    m.sum("gofe_endpoint_weight", &[("endpoint", e.address.as_str())])
                        == f64::from(e.weight)
                })
                .then_some(())
        },
    );
    let updates = eds() - accepted_before;
    let (sent, failures) = load.finish();
    println!("50 EDS pushes: {updates} accepted, the last in force after {:?}; load: {sent} requests, {} failed", started.elapsed(), failures.len());
    assert_eq!(
        failures,
        Vec::<u16>::new(),
        "requests failed during the pushes"
    );
    assert!(updates >= 10.0, "the pushes reached the proxy: {updates}");
    push(encode(&good));

    // Not stuck: a good change is taken (b2 joins).
    let all: Vec<String> = backends.iter().map(Backend::endpoint).collect();
    push(encode(&xds_resources(listen, &all, None)));
    until(
        "b2 serving after a good push",
        Duration::from_secs(20),
        || {
            (0..10)
                .any(|_| {
                    http(addr(listen), "GET", "/")
                        .is_some_and(|(s, b)| s == 200 && b.contains("b2"))
                })
                .then_some(())
        },
    );

    drop(proxy);
    let _ = stop.send(());
    let _ = rt.block_on(serving);
    drop(backends);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `good`'s encoded resources with `replace`'s resources put in place of theirs.
fn merged(good: &gofe_proto::Resources, replace: Encoded) -> Encoded {
    let mut e = encode(good);
    for (t, map) in replace {
        e.get_mut(&t).unwrap().extend(map);
    }
    e
}

// ---------------------------------------------------------------------------------------------
// The controller restarted with a slowed endpoint.
// ---------------------------------------------------------------------------------------------

/// The weight the proxy gives `endpoint` of `web`, from its own `/metrics`.
fn proxy_weight(proxy_admin: SocketAddr, endpoint: &str) -> Option<f64> {
    Metrics::scrape(proxy_admin).map(|m| {
        m.sum(
            "gofe_endpoint_weight",
            &[("cluster", "web"), ("endpoint", endpoint)],
        )
    })
}

/// A controller SIGKILLed and restarted while its latency rule holds a slowed endpoint down
/// does not publish base weights first: the restart flap (100 → 50 → 25 … over seconds) is
/// what this guards against. Every sample of the slow endpoint's weight at the proxy, from
/// the kill until the restarted controller has decided for 5 s, stays at most what it was
/// before the kill plus an eighth of the distance to a healthy endpoint's; and no request
/// fails.
#[test]
fn a_restarted_controller_keeps_a_slowed_endpoint_down_weighted() {
    let dir = tempdir();
    let backends: Vec<Backend> = (0..3)
        .map(|i| {
            let extra: &[&str] = if i == 2 { &["--delay", "40ms"] } else { &[] };
            Backend::start(&dir, &format!("b{i}"), extra)
        })
        .collect();
    let (slow, good) = (backends[2].endpoint(), backends[0].endpoint());
    let (listen, proxy_admin, xds, controller_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let endpoints: Vec<(String, u32)> = backends.iter().map(|b| (b.endpoint(), 1)).collect();
    write(
        &dir.join("proxy.yaml"),
        &proxy_yaml(listen, "5s", "", &endpoints),
    );
    let config = dir.join("controller.yaml");
    write(
        &config,
        &format!(
            "proxy_config: proxy.yaml\nstate_file: state.json\ninterval: 500ms\nsignals:\n  source: embedded\n  window: 3s\n  embedded: {{ targets: [\"127.0.0.1:{proxy_admin}\"] }}\npolicy:\n  latency_weighting: true\nadmin: {{ address: \"127.0.0.1:{controller_admin}\" }}\nxds: {{ address: \"127.0.0.1:{xds}\" }}\n"
        ),
    );
    let config = path_arg(&config);
    let start_controller = || Proc::start(&["controller", "run", "--config", &config], &dir);
    let mut controller = start_controller();
    let boot = path_arg(&bootstrap(&dir, xds, proxy_admin));
    let _proxy = Proc::start(&["proxy", "--bootstrap", &boot], &dir);
    serves(addr(listen), 1, Duration::from_secs(20));
    let load = Load::start(addr(listen));

    // The latency rule moves weight away from the slow endpoint.
    let (w_slow, w_good) = until(
        "the slow endpoint down-weighted at the proxy",
        Duration::from_secs(90),
        || {
            let (s, g) = (
                proxy_weight(addr(proxy_admin), &slow)?,
                proxy_weight(addr(proxy_admin), &good)?,
            );
            (g > 0.0 && s <= g / 2.0).then_some((s, g))
        },
    );
    // Let it settle for a few decisions, then take the weight it holds.
    std::thread::sleep(Duration::from_secs(3));
    let held = proxy_weight(addr(proxy_admin), &slow).unwrap();
    let good_now = proxy_weight(addr(proxy_admin), &good).unwrap();
    let bound = held + (good_now - held).max(0.0) / 8.0;

    controller.kill();
    let killed = Instant::now();
    let mut controller = start_controller();
    let mut highest = 0.0f64;
    let mut samples = 0;
    let mut decided_since: Option<Instant> = None;
    while decided_since.is_none_or(|t| t.elapsed() < Duration::from_secs(5)) {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the restarted controller never decided:\n{}",
            controller.logs()
        );
        if let Some(w) = proxy_weight(addr(proxy_admin), &slow) {
            highest = highest.max(w);
            samples += 1;
        }
        if decided_since.is_none() && endpoint_state(addr(controller_admin), &slow).is_some() {
            decided_since = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (sent, failures) = load.finish();
    println!(
        "slow endpoint down-weighted to {w_slow} (healthy {w_good}), {held} when the controller \
         was killed; highest of {samples} samples after the restart {highest} (bound {bound}); \
         {sent} requests, {} failed",
        failures.len()
    );
    assert!(samples > 50, "the proxy's weights were sampled ({samples})");
    assert!(
        highest <= bound,
        "the slow endpoint's weight rose to {highest} after the restart (held {held}, bound \
         {bound}):\n{}",
        controller.logs()
    );
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    assert!(controller
        .logs()
        .contains("resumed the saved decision state"));
    controller.signal("TERM");
    assert_eq!(controller.wait_exit(Duration::from_secs(20)), Some(0));
}
