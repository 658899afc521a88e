//! Conformance: public Envoy resource sets (Envoy's and envoyproxy/examples' configurations,
//! Envoy Gateway's and Istio's golden xDS outputs; `tests/conformance/PROVENANCE.md`) replayed
//! over ADS to the shipped `gofe proxy --bootstrap`, by a control plane built on Envoy's own
//! protos (`tests/conformance/ads_server.py`, PyPI `xds-protos`), with only addresses rewritten.
//!
//! For each case of `tests/conformance/cases.yaml` it checks, per resource type, which resources
//! gofe accepted and which it refused, that each refusal's NACK names the resource and the
//! Envoy field `proto/README.md` says gofe refuses, that the accepted clusters are the ones
//! serving, and the routing checks: a request's host, path and headers reach the backend of
//! the cluster Envoy would pick (each test backend answers with its cluster's name), or get
//! the status Envoy would give. A check marked `known_bug` is where gofe differs from Envoy:
//! it must still differ (so the manifest is updated when it is fixed), and is reported.
//!
//! Needs `python3` with `grpcio`, PyYAML and `xds-protos==1.85.0` (`.ci/run` installs them;
//! xds-protos in a folder of its own, `$GOFE_XDS_PROTOS`, default
//! `/var/cache/gofe-python/xds-protos-1.85.0`, put first on the server's `PYTHONPATH`: its
//! older copy of OpenTelemetry's protos must not replace the tracing tests' decoder). Set
//! `GOFE_SKIP_CONFORMANCE=1` to skip on a machine without them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::process::{free_port, tempdir, Proc};

/// A hang guard per case, not a timing assertion: a case settles in about a second, but Python
/// importing Envoy's protos on a loaded machine with a cold page cache has taken tens of seconds.
const CASE_DEADLINE: Duration = Duration::from_secs(300);
/// Cases in the manifest at most (the suite is bounded in count).
const MAX_CASES: usize = 60;

const TYPES: [&str; 4] = ["lds", "rds", "cds", "eds"];

fn kind_name(short: &str) -> &'static str {
    match short {
        "lds" => "Listener",
        "rds" => "RouteConfiguration",
        "cds" => "Cluster",
        _ => "ClusterLoadAssignment",
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

// === impl Backend ===

/// A test backend on 127.0.0.1: answers every HTTP/1.1 request with 200, `x-backend: NAME` and
/// the name as the body, then closes. Stopped when dropped.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (name, flag) = (name.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &name),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

fn answer(mut stream: TcpStream, name: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\nx-backend: {name}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
        name.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// === impl ControlPlane ===

/// Where `.ci/run` installs xds-protos, first on the server's `PYTHONPATH` (before any the
/// environment gives).
fn xds_protos_path() -> std::ffi::OsString {
    let dir = std::env::var_os("GOFE_XDS_PROTOS")
        .unwrap_or_else(|| "/var/cache/gofe-python/xds-protos-1.85.0".into());
    let mut paths = vec![PathBuf::from(dir)];
    if let Some(more) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&more));
    }
    std::env::join_paths(paths).expect("PYTHONPATH entries without separators")
}

/// The Python ADS server for one case, killed when dropped.
struct ControlPlane {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
}

impl ControlPlane {
    fn start(case: &str) -> ControlPlane {
        let mut child = Command::new("python3")
            .env("PYTHONPATH", xds_protos_path())
            .arg(dir().join("ads_server.py"))
            .arg("--manifest")
            .arg(dir().join("cases.yaml"))
            .args(["--case", case])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("ads_server: {line}"),
                }
            }
        });
        let stdin = child.stdin.take();
        ControlPlane {
            child,
            stdin,
            lines,
        }
    }

    fn next(&self, deadline: Instant, what: &str) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the ADS server sent no {what} (it exited or hung)"))
    }

    fn send(&mut self, v: &Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === the xDS exchange ===

/// What was served and answered, per type.
#[derive(Default)]
struct Exchange {
    /// Every resource name sent, per type.
    sent: BTreeMap<String, BTreeSet<String>>,
    /// The nonce of the last response, per type.
    last_nonce: BTreeMap<String, String>,
    /// The answer (ACK: None, NACK: its error_detail) to each nonce, per type.
    answers: BTreeMap<(String, String), Option<String>>,
}

impl Exchange {
    fn take(&mut self, event: &Value) {
        let ty = event["type"].as_str().unwrap_or_default().to_string();
        let nonce = event["nonce"].as_str().unwrap_or_default().to_string();
        match event["event"].as_str() {
            Some("response") => {
                let names = event["resources"].as_array().unwrap();
                let sent = self.sent.entry(ty.clone()).or_default();
                sent.extend(names.iter().map(|n| n.as_str().unwrap().to_string()));
                self.last_nonce.insert(ty, nonce);
            }
            Some("request") if !nonce.is_empty() => {
                let error = event["error"].as_str().map(str::to_string);
                self.answers.insert((ty, nonce), error);
            }
            _ => {}
        }
    }

    /// CDS and LDS (which the proxy always subscribes to) were served, and every type's last
    /// response has been answered.
    fn settled(&self) -> bool {
        ["cds", "lds"]
            .iter()
            .all(|t| self.last_nonce.contains_key(*t))
            && self
                .last_nonce
                .iter()
                .all(|(ty, n)| self.answers.contains_key(&(ty.clone(), n.clone())))
    }

    fn final_answer(&self, ty: &str) -> Option<&Option<String>> {
        let nonce = self.last_nonce.get(ty)?;
        self.answers.get(&(ty.to_string(), nonce.clone()))
    }
}

/// A NACK's error_detail split into one clause per refused resource, by resource name.
fn refusals(detail: &str, kind: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let prefix = format!("{kind} \"");
    let mut last: Option<String> = None;
    for part in detail.split("; ") {
        if let Some(rest) = part.strip_prefix(&prefix) {
            if let Some((name, clause)) = rest.split_once("\": ") {
                // A resource refused for several fields has a clause for each.
                let text = out.entry(name.to_string()).or_default();
                if !text.is_empty() {
                    text.push_str("; ");
                }
                text.push_str(clause);
                last = Some(name.to_string());
                continue;
            }
        }
        // A "; " inside one refusal's text (or another type's refusal): it belongs to the one
        // before.
        if let Some(text) = last.as_ref().and_then(|n| out.get_mut(n)) {
            text.push_str("; ");
            text.push_str(part);
        }
    }
    out
}

// === routing checks ===

/// One HTTP/1.1 request to the listener; returns the status and the backend that answered.
fn request(port: u16, check: &Value) -> Result<(u16, Option<String>), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let host = check["host"].as_str().unwrap_or("example.com");
    let path = check["path"].as_str().unwrap_or("/");
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    if let Some(headers) = check["headers"].as_object() {
        for (k, v) in headers {
            req.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap()));
        }
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let backend = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-backend")
                .then(|| v.trim().to_string())
        });
    Ok((status, backend))
}

/// Whether a routing check's expectation holds; the outcome in words.
fn route_outcome(port: Option<u16>, check: &Value) -> (bool, String) {
    let Some(port) = port else {
        return (false, "no such listener in the set".into());
    };
    let got = request(port, check);
    let ok = match (&got, check) {
        (Err(_), c) if c["expect"] == json!("connection refused") => true,
        (Ok((status, backend)), c) => match (&c["backend"], &c["status"]) {
            (Value::String(b), _) => *status == 200 && backend.as_deref() == Some(b.as_str()),
            (_, Value::Number(s)) => u64::from(*status) == s.as_u64().unwrap() && backend.is_none(),
            _ => false,
        },
        _ => false,
    };
    let said = match got {
        Ok((status, Some(b))) => format!("{status} from {b}"),
        Ok((status, None)) => format!("{status} from gofe"),
        Err(e) => format!("no response ({e})"),
    };
    (ok, said)
}

// === one case ===

struct Summary {
    name: String,
    source: String,
    accepted: String,
    refused: Vec<String>,
    routed: String,
    failures: Vec<String>,
    known_bugs: Vec<String>,
}

fn run_case(case: &Value) -> Summary {
    let name = case["name"].as_str().unwrap().to_string();
    let deadline = Instant::now() + CASE_DEADLINE;
    let mut failures = Vec::new();
    let mut cp = ControlPlane::start(&name);

    // Backends: one per endpoint of each cluster, answering with the cluster's name.
    let slots = cp.next(deadline, "backends event");
    assert_eq!(slots["event"], "backends", "{name}: {slots}");
    let mut backends = Vec::new();
    let mut ports = serde_json::Map::new();
    for (cluster, n) in slots["slots"].as_object().unwrap() {
        let list: Vec<Value> = (0..n.as_u64().unwrap())
            .map(|_| {
                let b = Backend::start(cluster);
                let port = b.addr.port();
                backends.push(b);
                json!(port)
            })
            .collect();
        ports.insert(cluster.clone(), Value::Array(list));
    }
    cp.send(&Value::Object(ports));
    let ready = cp.next(deadline, "ready event");
    assert_eq!(ready["event"], "ready", "{name}: {ready}");
    let listeners = ready["listeners"].as_object().unwrap().clone();

    // The shipped proxy, following the ADS server; waits for the first snapshot without limit
    // (the case deadline guards against a hang).
    let tmp = tempdir();
    let admin = free_port();
    let bootstrap = tmp.join("bootstrap.yaml");
    std::fs::write(
        &bootstrap,
        format!(
            "node: {{ id: \"conformance\", cluster: \"conformance\" }}\n\
             xds_server: {{ address: \"127.0.0.1:{}\", initial_fetch_timeout: \"0s\" }}\n\
             static_resources: {{ admin: {{ address: \"127.0.0.1:{admin}\" }} }}\n",
            ready["ads"]
        ),
    )
    .unwrap();
    let proxy = Proc::start(&["proxy", "--bootstrap", bootstrap.to_str().unwrap()], &tmp);

    // Settled: the proxy says LIVE (CDS and LDS answered, every EDS and RDS resource the
    // accepted ones name arrived) and every type's last response has its ACK or NACK.
    let mut exchange = Exchange::default();
    loop {
        while let Ok(event) = cp.lines.try_recv() {
            exchange.take(&event);
        }
        if exchange.settled() && admin_get(admin, "/ready").is_some_and(|(s, _)| s == 200) {
            while let Ok(event) = cp.lines.try_recv() {
                exchange.take(&event);
            }
            if exchange.settled() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the proxy did not settle: {}",
            proxy.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Accepted and refused, per type.
    let expect = &case["expect"];
    let mut accepted_total = (0, 0);
    let mut refused_summary = Vec::new();
    for ty in TYPES {
        let e = &expect[ty];
        let want_ok: BTreeSet<String> = e["accepted"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        // Each refusal: the substrings (Envoy field paths) its NACK clause must contain.
        let want_no: BTreeMap<String, Vec<String>> = e["refused"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let fields = match v {
                            Value::Array(a) => {
                                a.iter().map(|f| f.as_str().unwrap().to_string()).collect()
                            }
                            other => vec![other.as_str().unwrap().to_string()],
                        };
                        (k.clone(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sent = exchange.sent.get(ty).cloned().unwrap_or_default();
        let listed: BTreeSet<String> = want_ok.iter().chain(want_no.keys()).cloned().collect();
        if sent != listed {
            failures.push(format!(
                "{ty}: served {sent:?}, the manifest lists {listed:?}"
            ));
        }
        let detail = exchange.final_answer(ty).cloned().flatten();
        let got_no = detail
            .as_deref()
            .map(|d| refusals(d, kind_name(ty)))
            .unwrap_or_default();
        for (res, fields) in &want_no {
            match got_no.get(res) {
                Some(clause) if fields.iter().all(|f| clause.contains(f.as_str())) => {
                    refused_summary.push(format!("{ty} {res:?}: {}", short_fields(fields)))
                }
                Some(clause) => failures.push(format!(
                    "{ty} {res:?}: refused for {clause:?}, expected a refusal naming {fields:?}"
                )),
                None => failures.push(format!(
                    "{ty} {res:?}: accepted, expected a refusal naming {fields:?} (NACK: {detail:?})"
                )),
            }
        }
        for res in &want_ok {
            if let Some(clause) = got_no.get(res) {
                failures.push(format!(
                    "{ty} {res:?}: refused ({clause}), expected accepted"
                ));
            }
        }
        if want_no.is_empty() && detail.is_some() {
            failures.push(format!("{ty}: NACKed ({detail:?}), expected an ACK"));
        }
        accepted_total.0 += want_ok.len();
        accepted_total.1 += sent.len();
    }

    // The accepted clusters serve with their endpoints; a refused one serves at most as the
    // empty placeholder gofe adds for a cluster a route names (503, as Envoy's unknown cluster).
    let dump = admin_get(admin, "/config_dump").map(|(_, body)| body);
    let dump: Value = dump
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_default();
    let serving: BTreeMap<String, usize> = dump["config"]["clusters"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let endpoints = c["endpoints"].as_array().map_or(0, Vec::len);
                    (c["name"].as_str().unwrap().to_string(), endpoints)
                })
                .collect()
        })
        .unwrap_or_default();
    let names = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    for c in names(&expect["cds"]["accepted"]) {
        if !serving.contains_key(&c) {
            failures.push(format!("cluster {c:?} accepted but not serving"));
        }
    }
    if let Some(refused) = expect["cds"]["refused"].as_object() {
        for c in refused.keys() {
            if serving.get(c).is_some_and(|&n| n > 0) {
                failures.push(format!("cluster {c:?} refused but serving with endpoints"));
            }
        }
    }

    // Routing.
    let mut routed = (0, 0);
    let mut known_bugs = Vec::new();
    for check in case["routes"].as_array().cloned().unwrap_or_default() {
        let listener = check["listener"].as_str().unwrap();
        let port = listeners
            .get(listener)
            .and_then(Value::as_u64)
            .map(|p| p as u16);
        let (ok, said) = route_outcome(port, &check);
        let what = format!(
            "{listener} {} {} {}",
            check["host"].as_str().unwrap_or("example.com"),
            check["path"].as_str().unwrap_or("/"),
            check
                .get("headers")
                .map(|h| h.to_string())
                .unwrap_or_default()
        );
        let wanted = match (&check["backend"], &check["status"]) {
            (Value::String(b), _) => format!("200 from {b}"),
            (_, Value::Number(s)) => format!("{s} from gofe"),
            _ => check["expect"].to_string(),
        };
        match check["known_bug"].as_str() {
            Some(bug) if ok => failures.push(format!(
                "{what}: {said}, as Envoy: the known bug ({bug}) is fixed; update the manifest"
            )),
            Some(bug) => known_bugs.push(format!("{what}: {said}, Envoy: {wanted} ({bug})")),
            None if ok => routed.0 += 1,
            None => failures.push(format!("{what}: {said}, expected {wanted}")),
        }
        routed.1 += 1;
    }
    drop(proxy);
    drop(cp);
    drop(backends);
    let _ = std::fs::remove_dir_all(&tmp);
    Summary {
        name,
        source: case["source"].as_str().unwrap_or("?").to_string(),
        accepted: format!("{}/{}", accepted_total.0, accepted_total.1),
        refused: refused_summary,
        routed: format!("{}/{}", routed.0, routed.1),
        failures,
        known_bugs,
    }
}

/// The last path segment of each field, for the summary table.
fn short_fields(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| match f.contains([' ', '"']) {
            true => f.as_str(),
            false => f.rsplit('.').next().unwrap_or(f),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    // The admin answers HTTP/1.1 with chunked bodies; de-chunk the simple way.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[test]
fn public_envoy_resource_sets_are_accepted_refused_and_routed_as_the_manifest_says() {
    if std::env::var_os("GOFE_SKIP_CONFORMANCE").is_some() {
        eprintln!("GOFE_SKIP_CONFORMANCE set: skipping the conformance suite");
        return;
    }
    let manifest = std::fs::read_to_string(dir().join("cases.yaml")).unwrap();
    let manifest: Value = serde_saphyr::from_str(&manifest).expect("cases.yaml parses");
    let cases = manifest["cases"].as_array().unwrap();
    assert!(
        (1..=MAX_CASES).contains(&cases.len()),
        "{} cases",
        cases.len()
    );
    let only = std::env::var("GOFE_CONFORMANCE_CASE").ok();
    let mut summaries = Vec::new();
    for case in cases {
        if only.as_deref().is_some_and(|o| case["name"] != o) {
            continue;
        }
        summaries.push(run_case(case));
    }
    println!("\n| set | source | accepted | routed | refused (resource: field) |");
    println!("|---|---|---|---|---|");
    for s in &summaries {
        println!(
            "| {} | {} | {} | {} | {} |",
            s.name,
            s.source,
            s.accepted,
            s.routed,
            s.refused.join("; ")
        );
    }
    let mut failed = Vec::new();
    for s in &summaries {
        for b in &s.known_bugs {
            println!("known bug, {}: {b}", s.name);
        }
        for f in &s.failures {
            failed.push(format!("{}: {f}", s.name));
        }
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}
