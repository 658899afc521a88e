//! Proxyless gRPC against the shipped controller: `gofe controller run` (a process, file mode)
//! publishes an API listener (`xds.api_listeners`) for a cluster of two gRPC backends, and
//! gRPC's own xDS client (PyPI `grpcio`, not written here) resolves `xds:///greeter` through
//! it, balances across the published endpoints by the published weights, and follows a weight
//! change and an endpoint taken out (weight 0), each made by editing the controller's proxy
//! configuration and reloading it (SIGHUP). Over mutual TLS (the controller's `xds.tls` with
//! `client_ca_file`), a client whose bootstrap has gRFC A65 `tls` channel credentials with a
//! certificate reaches the backends, and one without a certificate gets no resources (its calls
//! fail). An ejection the controller decides from its signals is followed too, and so is the
//! readmission: a proxyless client exports no per-endpoint counters, so the signals come from
//! a stand-in for what a proxy in front of the backends (or Prometheus) would report.
//!
//! Needs `python3` with `grpcio` (`pip install grpcio==1.85.1`; `.ci/run` installs it). Set
//! `GOFE_SKIP_GRPCIO=1` to skip on a machine without Python.

#![allow(unreachable_pub)]

mod support;

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::process::{free_ports as ports, tempdir, Proc};

fn http_get(to: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// The controller's proxy configuration: cluster `greeter-backends` with backends a and b at
/// these weights and health.
fn write_proxy_config(dir: &Path, a: (u16, u32, &str), b: (u16, u32, &str)) {
    let endpoint = |(port, weight, health): (u16, u32, &str)| {
        format!("      - {{ address: \"127.0.0.1:{port}\", weight: {weight}, health_status: {health} }}\n")
    };
    let text = format!(
        "clusters:\n  - name: greeter-backends\n    endpoints:\n{}{}",
        endpoint(a),
        endpoint(b)
    );
    let tmp = dir.join("proxy.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("proxy.yaml")).unwrap();
}

/// `count` calls' answers by backend: (a, b, anything else).
fn parse_counts(line: &str) -> (u64, u64, u64) {
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line from the client");
    let c = v["counts"].as_object().expect("counts");
    let get = |k: &str| c.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let other = c
        .iter()
        .filter(|(k, _)| *k != "a" && *k != "b")
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum();
    (get("a"), get("b"), other)
}

/// Whether `k` of `n` calls is within 5 standard deviations of a binomial(n, p) draw: a wrong
/// weighting fails it, chance fails it about once in 3.5 million runs.
fn binomial_ok(k: u64, n: u64, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 5.0 * sd
}

#[test]
fn grpcio_xds_client_follows_the_controller_s_published_weights_and_a_drained_endpoint() {
    if std::env::var_os("GOFE_SKIP_GRPCIO").is_some() {
        eprintln!("GOFE_SKIP_GRPCIO set: skipping the grpcio interoperability test");
        return;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_grpcio = Command::new(&python)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_grpcio,
        "{python} with grpcio is needed: pip install grpcio==1.85.1 (or set GOFE_SKIP_GRPCIO=1)"
    );
    let dir = tempdir();
    let p = ports(4);
    let (a, b, xds, admin) = (p[0], p[1], p[2], p[3]);
    write_proxy_config(&dir, (a, 3, "healthy"), (b, 1, "healthy"));
    std::fs::write(
        dir.join("controller.yaml"),
        format!(
            "proxy_config: proxy.yaml\ninterval: 500ms\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\nxds:\n  address: \"127.0.0.1:{xds}\"\n  api_listeners:\n    services: [{{ name: greeter, cluster: greeter-backends }}]\n"
        ),
    )
    .unwrap();
    let config = dir.join("controller.yaml").display().to_string();
    let controller = Proc::start(&["controller", "run", "--config", &config], &dir);
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let published = |at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = http_get(admin_addr, "/metrics").and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("gofe_controller_config_version "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            if v.is_some_and(|v| v >= at_least) {
                return v.unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "no publication {at_least}: {}",
                controller.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = published(1);

    // Looked up when the test runs, not when it was compiled: a build cache shared between
    // checkouts must not point the test at another checkout's files.
    let script =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/grpcio_xds_client.py");
    let mut child = Command::new(&python)
        .arg(script)
        .args([
            xds.to_string(),
            "greeter".into(),
            a.to_string(),
            b.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the grpcio client");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut ask = |command: &str| {
        writeln!(stdin, "{command}").unwrap();
        let line = lines
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("grpcio client gave no answer to {command:?}"));
        parse_counts(&line)
    };

    // Published weights 3:1: a answers about three calls in four.
    let (ca, cb, other) = ask("count 400");
    assert_eq!((ca + cb, other), (400, 0), "every call answered by a or b");
    assert!(
        binomial_ok(ca, 400, 0.75),
        "a={ca} b={cb}, expected about 300:100"
    );

    // The weights turn to 1:3 in the file; the controller reloads and publishes them.
    write_proxy_config(&dir, (a, 1, "healthy"), (b, 3, "healthy"));
    controller.signal("HUP");
    let second = published(first + 1);
    // Wait until the client has the new weights: calls until a window looks like 1:3 would
    // be timing-dependent; instead the controller's view of the client's EDS ACK after the
    // publication says it has them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up = http_get(admin_addr, "/decisions")
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .is_some_and(|d| {
                d["version"].as_u64() >= Some(second)
                    && d["proxies"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|p| p["node"] == "grpcio-client" && p["caught_up"] == true)
                    })
            });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client never ACKed the new weights"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ca, cb, other) = ask("count 400");
    assert_eq!((ca + cb, other), (400, 0));
    assert!(
        binomial_ok(ca, 400, 0.25),
        "a={ca} b={cb}, expected about 100:300"
    );

    // a is taken out (weight 0 in the file: the controller publishes it with no share, as
    // it does an endpoint it ejects): every call goes to b.
    write_proxy_config(&dir, (a, 0, "healthy"), (b, 3, "healthy"));
    controller.signal("HUP");
    published(second + 1);
    let (ca, cb, other) = ask("only b 50");
    assert_eq!((ca, cb, other), (0, 50, 0), "after taking a out");
    let (ca, cb, other) = ask("count 100");
    assert_eq!((ca, cb, other), (0, 100, 0), "a stays out");

    let _ = writeln!(stdin, "quit");
    let _ = child.wait();
    let mut controller = controller;
    controller.signal("TERM");
    assert_eq!(controller.wait_exit(Duration::from_secs(20)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

// === over mutual TLS ===

/// gRPC's xDS client as a child process, driven line by line.
struct GrpcClient {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl GrpcClient {
    fn start(python: &str, ports: (u16, u16, u16), env: &[(&str, String)]) -> GrpcClient {
        let script =
            Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/grpcio_xds_client.py");
        let (xds, a, b) = ports;
        let mut command = Command::new(python);
        command
            .arg(script)
            .args([
                xds.to_string(),
                "greeter".into(),
                a.to_string(),
                b.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("run the grpcio client");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        GrpcClient {
            child,
            stdin,
            lines,
        }
    }

    /// Sends `command`; the answer's counts as (a, b, anything else).
    fn ask(&mut self, command: &str) -> (u64, u64, u64) {
        writeln!(self.stdin, "{command}").unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("grpcio client gave no answer to {command:?}"));
        parse_counts(&line)
    }
}

impl Drop for GrpcClient {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `NAME.pem` and `NAME-key.pem` in `dir`: a leaf for `sans` signed by `ca`.
fn issue(
    dir: &Path,
    name: &str,
    ca: &(rcgen::Certificate, rcgen::KeyPair),
    sans: Vec<rcgen::SanType>,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    // rcgen gives every certificate the same default name; OpenSSL (under gRPC) would take a
    // leaf named like its issuer for a self-signed one.
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
}

#[test]
fn grpcio_xds_client_over_mutual_tls_reaches_the_backends_and_without_a_certificate_gets_nothing() {
    if std::env::var_os("GOFE_SKIP_GRPCIO").is_some() {
        eprintln!("GOFE_SKIP_GRPCIO set: skipping the grpcio interoperability test");
        return;
    }
    const CLIENT_ID: &str = "spiffe://gofe.test/ns/shop/sa/grpc-client";
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempdir();
    // The controller's files, and one folder per client (what its bootstrap names).
    let (with_cert, without_cert) = (dir.join("client"), dir.join("anonymous"));
    std::fs::create_dir_all(&with_cert).unwrap();
    std::fs::create_dir_all(&without_cert).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gofe test CA");
    let ca = (ca_params.self_signed(&ca_key).unwrap(), ca_key);
    for d in [&dir, &with_cert, &without_cert] {
        std::fs::write(d.join("ca.pem"), ca.0.pem()).unwrap();
    }
    // gRPC checks the server's certificate against the server_uri host, 127.0.0.1.
    issue(
        &dir,
        "server",
        &ca,
        vec![
            rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
            rcgen::SanType::DnsName("localhost".try_into().unwrap()),
        ],
    );
    issue(
        &with_cert,
        "client",
        &ca,
        vec![rcgen::SanType::URI(CLIENT_ID.try_into().unwrap())],
    );
    let p = ports(4);
    let (a, b, xds, admin) = (p[0], p[1], p[2], p[3]);
    write_proxy_config(&dir, (a, 1, "healthy"), (b, 1, "healthy"));
    std::fs::write(
        dir.join("controller.yaml"),
        format!(
            "proxy_config: proxy.yaml\ninterval: 500ms\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\nxds:\n  address: \"127.0.0.1:{xds}\"\n  tls:\n    cert_file: server.pem\n    key_file: server-key.pem\n    client_ca_file: ca.pem\n  api_listeners:\n    services: [{{ name: greeter, cluster: greeter-backends }}]\n"
        ),
    )
    .unwrap();
    let config = dir.join("controller.yaml").display().to_string();
    let mut controller = Proc::start(&["controller", "run", "--config", &config], &dir);

    let mut client = GrpcClient::start(
        &python,
        (xds, a, b),
        &[
            ("GOFE_GRPCIO_XDS_TLS", with_cert.display().to_string()),
            ("GOFE_GRPCIO_NODE_ID", CLIENT_ID.into()),
        ],
    );
    let (ca_calls, cb_calls, other) = client.ask("count 40");
    assert_eq!(
        (ca_calls + cb_calls, other),
        (40, 0),
        "every call answered by a or b: {}",
        controller.logs()
    );
    assert!(ca_calls > 0 && cb_calls > 0, "a={ca_calls} b={cb_calls}");
    drop(client);

    // The same bootstrap without a certificate: the handshake is refused, no resource comes,
    // and calls fail (their own deadline; nothing here waits on timing to pass).
    let mut anonymous = GrpcClient::start(
        &python,
        (xds, a, b),
        &[
            ("GOFE_GRPCIO_XDS_TLS", without_cert.display().to_string()),
            ("GOFE_GRPCIO_NODE_ID", "grpcio-anonymous".into()),
            ("GOFE_GRPCIO_CALL_TIMEOUT", "3".into()),
        ],
    );
    let (ca_calls, cb_calls, other) = anonymous.ask("count 2");
    assert_eq!(
        (ca_calls, cb_calls, other),
        (0, 0, 2),
        "no answers without a certificate"
    );
    drop(anonymous);
    let decisions =
        http_get(SocketAddr::from(([127, 0, 0, 1], admin)), "/decisions").unwrap_or_default();
    assert!(
        !decisions.contains("grpcio-anonymous"),
        "the anonymous client never opened a stream: {decisions}"
    );

    controller.signal("TERM");
    assert_eq!(controller.wait_exit(Duration::from_secs(20)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

// === an ejection the controller decides ===

/// What the signals say of the two backends: the per-endpoint counters a proxy in front of
/// them (or Prometheus) would expose, as `gofe_upstream_requests_total`, growing by ten
/// requests per scrape each; backend a's half 5xx while `a_failing` is set.
struct Signals {
    addr: SocketAddr,
    a_failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Signals {
    fn start(cluster: &'static str, a: u16, b: u16) -> Signals {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let a_failing = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (failing, stopped) = (Arc::clone(&a_failing), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Cumulative counters: (a 2xx, a 5xx, b 2xx).
            let (mut a_ok, mut a_bad, mut b_ok) = (0u64, 0u64, 0u64);
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request);
                if failing.load(Ordering::Relaxed) {
                    a_ok += 5;
                    a_bad += 5;
                } else {
                    a_ok += 10;
                }
                b_ok += 10;
                let body = format!(
                    "# TYPE gofe_upstream_requests_total counter\n\
                     gofe_upstream_requests_total{{cluster=\"{cluster}\",endpoint=\"127.0.0.1:{a}\",code_class=\"2xx\"}} {a_ok}\n\
                     gofe_upstream_requests_total{{cluster=\"{cluster}\",endpoint=\"127.0.0.1:{a}\",code_class=\"5xx\"}} {a_bad}\n\
                     gofe_upstream_requests_total{{cluster=\"{cluster}\",endpoint=\"127.0.0.1:{b}\",code_class=\"2xx\"}} {b_ok}\n"
                );
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Signals {
            addr,
            a_failing,
            stop,
        }
    }

    fn a_failing(&self, failing: bool) {
        self.a_failing
            .store(failing, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The controller's state and weight of `endpoint` in `cluster`, from `/decisions/CLUSTER`.
fn decided(admin: SocketAddr, cluster: &str, endpoint: &str) -> Option<(String, u64)> {
    let body = http_get(admin, &format!("/decisions/{cluster}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let e = v["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["endpoint"] == endpoint)?;
    Some((e["state"].as_str()?.to_owned(), e["weight"].as_u64()?))
}

/// The controller ejects backend a from its own signals (half its requests fail), gRPC's
/// client stops calling it, and when the signals say a is healthy again the controller
/// readmits it and the client calls it again. The signals come from a stand-in for what a
/// proxy in front of the backends (or Prometheus) would report: a proxyless client exports no
/// per-endpoint counters of its own.
#[test]
fn grpcio_xds_client_follows_an_ejection_the_controller_decides_and_the_readmission() {
    if std::env::var_os("GOFE_SKIP_GRPCIO").is_some() {
        eprintln!("GOFE_SKIP_GRPCIO set: skipping the grpcio interoperability test");
        return;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempdir();
    let p = ports(4);
    let (a, b, xds, admin) = (p[0], p[1], p[2], p[3]);
    write_proxy_config(&dir, (a, 100, "healthy"), (b, 100, "healthy"));
    let signals = Signals::start("greeter-backends", a, b);
    std::fs::write(
        dir.join("controller.yaml"),
        format!(
            "proxy_config: proxy.yaml\ninterval: 500ms\nsignals:\n  source: embedded\n  window: 3s\n  embedded: {{ targets: [\"{}\"] }}\npolicy:\n  failure_percentage_threshold: 30\n  failure_percentage_request_volume: 10\n  max_ejection_percent: 50\n  base_ejection_time: 2s\n  max_ejection_time: 300s\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\nxds:\n  address: \"127.0.0.1:{xds}\"\n  api_listeners:\n    services: [{{ name: greeter, cluster: greeter-backends }}]\n",
            signals.addr
        ),
    )
    .unwrap();
    let config = dir.join("controller.yaml").display().to_string();
    let mut controller = Proc::start(&["controller", "run", "--config", &config], &dir);
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let (ea, eb) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                controller.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("both endpoints decided serving", &|| {
        [&ea, &eb].iter().all(|e| {
            decided(admin_addr, "greeter-backends", e).is_some_and(|(s, w)| s == "serving" && w > 0)
        })
    });
    // The client subscribes with its first call.
    let mut client = GrpcClient::start(&python, (xds, a, b), &[]);
    let (ca, cb, other) = client.ask("count 200");
    assert_eq!((ca + cb, other), (200, 0), "every call answered by a or b");
    assert!(ca > 0 && cb > 0, "both serve while healthy: a={ca} b={cb}");

    // Half of a's requests fail: the controller ejects it and publishes it with no share.
    signals.a_failing(true);
    wait("a ejected", &|| {
        decided(admin_addr, "greeter-backends", &ea).is_some_and(|(s, _)| s == "ejected")
    });
    let (ca, cb, other) = client.ask("only b 50");
    assert_eq!(
        (ca, cb, other),
        (0, 50, 0),
        "after the controller ejected a"
    );

    // a is healthy again: after its ejection time the controller tries it, readmits it and
    // ramps it back; the client calls it again.
    signals.a_failing(false);
    wait("a readmitted with a share", &|| {
        decided(admin_addr, "greeter-backends", &ea)
            .is_some_and(|(s, w)| (s == "serving" || s == "ramping") && w > 0)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ca, _, other) = client.ask("count 200");
        assert_eq!(other, 0);
        if ca > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client never called a again after its readmission"
        );
    }
    drop(client);
    controller.signal("TERM");
    assert_eq!(controller.wait_exit(Duration::from_secs(20)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
