//! Distributed tracing across real sockets: clients → gofe (one or two hops) → a recording
//! backend, with the spans POSTed over OTLP/HTTP to a real OTLP decoder (PyPI
//! `opentelemetry-proto` in `tests/fixtures/otlp_receiver.py`, pinned in `.ci/run`).
//!
//! No test waits on a clock: a proxy's `shutdown` returns once its exporter has sent every
//! span (the receiver prints a batch before it answers it), and closing the receiver's stdin
//! ends it, so that every span it decoded has been read when its output ends.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// The test OTLP receiver (a Python process), stopped by [`Receiver::finish`] or on drop.
struct Receiver {
    port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Receiver {
    fn start() -> Receiver {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = Command::new(&python)
            .args([
                "-c",
                "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{python} with opentelemetry-proto is needed: pip install opentelemetry-proto==1.45.2 protobuf==7.36.2"
        );
        // Looked up when the test runs: a shared build cache must not point at another
        // checkout's files.
        let script = std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
        )
        .join("tests/fixtures/otlp_receiver.py");
        let mut child = Command::new(&python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OTLP receiver");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the receiver says its port");
        let port = first
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a port line: {first}"));
        Receiver {
            port,
            child,
            stdin,
            lines,
        }
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Ends the receiver and returns every span it decoded.
    fn finish(mut self) -> Vec<Value> {
        drop(self.stdin.take());
        let mut spans = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(60)) {
            spans.push(serde_json::from_str(&line).expect("a JSON span"));
        }
        let _ = self.child.wait();
        spans
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener's `tracing` block (one YAML line) sending to `uri` as `service`.
fn tracing(uri: &str, service: &str, more: &str) -> String {
    format!(
        "tracing: {{ {more} provider: {{ opentelemetry: {{ service_name: {service}, http_service: {{ http_uri: {{ uri: \"{uri}\", timeout: \"30s\" }} }} }} }}, batch: {{ schedule_delay: \"20ms\" }} }}"
    )
}

fn s<'a>(span: &'a Value, field: &str) -> &'a str {
    span[field].as_str().unwrap_or_default()
}

/// The span of `service` of `kind` (the only one, or the `n`th).
fn find<'a>(spans: &'a [Value], service: &str, kind: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|sp| s(sp, "service") == service && s(sp, "kind") == kind)
        .collect()
}

/// `(trace id, parent id, flags)` of a `traceparent`.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_crosses_two_hops_with_every_parent_right() {
    let receiver = Receiver::start();
    let backend = Capture::start("b").await;
    let hop2 = Harness::start(&catch_all(
        "backend",
        &tracing(&receiver.uri(), "hop2", ""),
        &format!("endpoints: [{{ address: \"{}\" }}]", backend.addr),
    ))
    .await;
    let hop1 = Harness::start(&catch_all(
        "hop2",
        &tracing(&receiver.uri(), "hop1", ""),
        &format!("endpoints: [{{ address: \"{}\" }}]", hop2.addr),
    ))
    .await;
    let client = h1_client();
    // A client without a context: hop 1 starts the trace.
    let r = get(&client, &hop1.url("/fresh"), "svc", &[]).await;
    assert_eq!(r.status, 200);
    // A client that is itself traced, with vendor state.
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let r = get(
        &client,
        &hop1.url("/continued"),
        "svc",
        &[
            (
                "traceparent",
                &format!("00-{client_trace}-{client_span}-01"),
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    hop1.proxy.shutdown(Duration::from_secs(5)).await;
    hop2.proxy.shutdown(Duration::from_secs(5)).await;
    let received = backend.header("traceparent");
    let states = backend.header("tracestate");
    backend.stop().await;
    let spans = receiver.finish();
    assert_eq!(spans.len(), 8, "{spans:#?}");

    for (path, incoming) in [("/fresh", None), ("/continued", Some(client_span))] {
        let by_path = |service: &str| {
            find(&spans, service, "SERVER")
                .into_iter()
                .find(|sp| sp["attributes"]["url.path"] == path)
                .unwrap_or_else(|| panic!("{service} SERVER span of {path}: {spans:#?}"))
        };
        let hop1_server = by_path("hop1");
        let trace = s(hop1_server, "trace_id");
        let of_trace = |service: &str, kind: &str| -> &Value {
            let found: Vec<&Value> = find(&spans, service, kind)
                .into_iter()
                .filter(|sp| s(sp, "trace_id") == trace)
                .collect();
            assert_eq!(found.len(), 1, "{service} {kind} of {path}: {spans:#?}");
            found[0]
        };
        let hop1_client = of_trace("hop1", "CLIENT");
        let hop2_server = by_path("hop2");
        let hop2_client = of_trace("hop2", "CLIENT");
        // One trace id across both hops.
        assert_eq!(s(hop2_server, "trace_id"), trace);
        match incoming {
            None => assert_eq!(s(hop1_server, "parent_span_id"), "", "hop 1 is the root"),
            Some(parent) => {
                assert_eq!(trace, client_trace);
                assert_eq!(s(hop1_server, "parent_span_id"), parent);
                assert_eq!(s(hop1_server, "trace_state"), "congo=t61rcWkgMzE");
            }
        }
        assert_eq!(s(hop1_client, "parent_span_id"), s(hop1_server, "span_id"));
        assert_eq!(
            s(hop2_server, "parent_span_id"),
            s(hop1_client, "span_id"),
            "hop 2's SERVER span is the child of hop 1's attempt"
        );
        assert_eq!(s(hop2_client, "parent_span_id"), s(hop2_server, "span_id"));
        // What the backend got: hop 2's attempt as its parent, sampled.
        let (t, parent, flags) = received
            .iter()
            .map(|values| traceparent(&values[0]))
            .find(|(t, ..)| t == trace)
            .expect("the backend got this trace's traceparent");
        assert_eq!(t, trace);
        assert_eq!(parent, s(hop2_client, "span_id"));
        assert_eq!(flags, "01");
        // Attributes by OpenTelemetry's HTTP conventions, and gofe's own.
        assert_eq!(hop1_server["attributes"]["http.request.method"], "GET");
        assert_eq!(hop1_server["attributes"]["http.response.status_code"], 200);
        assert_eq!(hop1_server["attributes"]["gofe.upstream_cluster"], "hop2");
        assert_eq!(hop1_server["attributes"]["gofe.response_flags"], "-");
        assert_eq!(
            hop1_client["attributes"]["server.address"], "127.0.0.1",
            "{hop1_client}"
        );
        assert_eq!(
            hop1_client["attributes"]["server.port"],
            i64::from(hop2.addr.port())
        );
        assert_eq!(s(hop1_server, "scope"), "gofe");
        // A CLIENT span lies within its SERVER span.
        assert!(hop1_client["start"].as_u64() >= hop1_server["start"].as_u64());
        assert!(hop1_client["end"].as_u64() <= hop1_server["end"].as_u64());
    }
    // tracestate goes on unchanged.
    assert!(
        states
            .iter()
            .any(|v| v == &["congo=t61rcWkgMzE".to_owned()]),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_is_its_own_client_span() {
    let receiver = Receiver::start();
    let backend = Capture::start_failing("b", 1).await;
    // A route retrying a 503 once.
    let yaml = catch_all(
        "backend",
        &tracing(&receiver.uri(), "edge", ""),
        &format!("endpoints: [{{ address: \"{}\" }}]", backend.addr),
    )
    .replace(
        "route: { cluster: backend }",
        "route: { cluster: backend, retry_policy: { retry_on: \"5xx\", num_retries: 1 } }",
    );
    let proxy = Harness::start(&yaml).await;
    let r = get(&h1_client(), &proxy.url("/"), "svc", &[]).await;
    assert_eq!(r.status, 200);
    proxy.proxy.shutdown(Duration::from_secs(5)).await;
    let received = backend.header("traceparent");
    backend.stop().await;
    let spans = receiver.finish();
    let server = find(&spans, "edge", "SERVER");
    assert_eq!(server.len(), 1, "{spans:#?}");
    let clients = find(&spans, "edge", "CLIENT");
    assert_eq!(clients.len(), 2, "{spans:#?}");
    for c in &clients {
        assert_eq!(s(c, "parent_span_id"), s(server[0], "span_id"));
        assert_eq!(s(c, "trace_id"), s(server[0], "trace_id"));
    }
    let first = clients
        .iter()
        .find(|c| c["attributes"]["http.response.status_code"] == 503)
        .expect("the first attempt's span");
    let retry = clients
        .iter()
        .find(|c| c["attributes"]["http.response.status_code"] == 200)
        .expect("the retry's span");
    assert_eq!(first["status"], 2, "a 503 attempt is an error");
    assert_eq!(retry["attributes"]["http.request.resend_count"], 1);
    // Each attempt told the backend its own span as the parent.
    let parents: Vec<String> = received.iter().map(|v| traceparent(&v[0]).1).collect();
    assert_eq!(
        parents,
        [s(first, "span_id"), s(retry, "span_id")],
        "{received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_context_is_passed_on_without_spans() {
    let receiver = Receiver::start();
    let backend = Capture::start("b").await;
    let proxy = Harness::start(&catch_all(
        "backend",
        &tracing(&receiver.uri(), "edge", ""),
        &format!("endpoints: [{{ address: \"{}\" }}]", backend.addr),
    ))
    .await;
    let client = h1_client();
    let unsampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = get(
        &client,
        &proxy.url("/"),
        "svc",
        &[(
            "traceparent",
            &format!("00-{unsampled}-00f067aa0ba902b7-00"),
        )],
    )
    .await;
    assert_eq!(r.status, 200);
    // A sampled one after it: its spans prove the exporter works.
    let sampled = "5bf92f3577b34da6a3ce929d0e0e4737";
    get(
        &client,
        &proxy.url("/"),
        "svc",
        &[("traceparent", &format!("00-{sampled}-00f067aa0ba902b8-01"))],
    )
    .await;
    proxy.proxy.shutdown(Duration::from_secs(5)).await;
    let received = backend.header("traceparent");
    backend.stop().await;
    let spans = receiver.finish();
    assert!(
        spans.iter().all(|sp| s(sp, "trace_id") != unsampled),
        "{spans:#?}"
    );
    assert_eq!(
        spans
            .iter()
            .filter(|sp| s(sp, "trace_id") == sampled)
            .count(),
        2
    );
    let (t, parent, flags) = traceparent(&received[0][0]);
    assert_eq!((t.as_str(), flags.as_str()), (unsampled, "00"));
    assert_ne!(
        parent, "00f067aa0ba902b7",
        "the proxy's own (unrecorded) span id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_starts_a_new_trace_without_its_tracestate() {
    let receiver = Receiver::start();
    let backend = Capture::start("b").await;
    let proxy = Harness::start(&catch_all(
        "backend",
        &tracing(&receiver.uri(), "edge", ""),
        &format!("endpoints: [{{ address: \"{}\" }}]", backend.addr),
    ))
    .await;
    // Uppercase hex is not W3C's.
    let r = get(
        &h1_client(),
        &proxy.url("/"),
        "svc",
        &[
            (
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    proxy.proxy.shutdown(Duration::from_secs(5)).await;
    let received = backend.header("traceparent");
    let states = backend.header("tracestate");
    backend.stop().await;
    let spans = receiver.finish();
    let server = find(&spans, "edge", "SERVER");
    assert_eq!(server.len(), 1, "{spans:#?}");
    assert_eq!(s(server[0], "parent_span_id"), "", "a new root");
    assert_ne!(s(server[0], "trace_id"), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(traceparent(&received[0][0]).0, s(server[0], "trace_id"));
    assert_eq!(states, [Vec::<String>::new()], "tracestate not passed on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_is_read_and_written_when_configured() {
    let receiver = Receiver::start();
    let backend = Capture::start("b").await;
    let proxy = Harness::start(&catch_all(
        "backend",
        &tracing(&receiver.uri(), "edge", "propagation: [b3, tracecontext],"),
        &format!("endpoints: [{{ address: \"{}\" }}]", backend.addr),
    ))
    .await;
    let trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let span = "e457b5a2e4d86bd1";
    // B3's multi headers in; the single header (and traceparent) out.
    let r = get(
        &h1_client(),
        &proxy.url("/"),
        "svc",
        &[
            ("x-b3-traceid", trace),
            ("x-b3-spanid", span),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    proxy.proxy.shutdown(Duration::from_secs(5)).await;
    let b3 = backend.header("b3");
    let tp = backend.header("traceparent");
    backend.stop().await;
    let spans = receiver.finish();
    let server = find(&spans, "edge", "SERVER");
    let client = find(&spans, "edge", "CLIENT");
    assert_eq!((server.len(), client.len()), (1, 1), "{spans:#?}");
    assert_eq!(s(server[0], "trace_id"), trace);
    assert_eq!(s(server[0], "parent_span_id"), span);
    let attempt = s(client[0], "span_id");
    assert_eq!(b3[0], [format!("{trace}-{attempt}-1")]);
    assert_eq!(tp[0], [format!("00-{trace}-{attempt}-01")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sampling_keeps_its_rate_and_every_request_carries_its_decision() {
    let receiver = Receiver::start();
    let backend = Capture::start("b").await;
    let proxy = Harness::start(&catch_all(
        "backend",
        &tracing(&receiver.uri(), "edge", "random_sampling: { value: 25 },"),
        &format!("endpoints: [{{ address: \"{}\" }}]", backend.addr),
    ))
    .await;
    let client = h1_client();
    let n = 400u32;
    for _ in 0..n {
        assert_eq!(get(&client, &proxy.url("/"), "svc", &[]).await.status, 200);
    }
    proxy.proxy.shutdown(Duration::from_secs(5)).await;
    let received = backend.header("traceparent");
    backend.stop().await;
    let spans = receiver.finish();
    let servers = find(&spans, "edge", "SERVER");
    // Binomial(400, 0.25): mean 100, σ = √(400 · 0.25 · 0.75) ≈ 8.66; 6 σ ≈ 52.
    let k = servers.len() as f64;
    assert!((k - 100.0).abs() < 6.0 * 8.66, "{k} of {n} sampled");
    // Every request went on with a context; exactly the sampled ones said so, and each of
    // those has its SERVER span.
    assert_eq!(received.len(), n as usize);
    let sampled_traces: std::collections::HashSet<String> = received
        .iter()
        .map(|v| traceparent(&v[0]))
        .filter(|(.., flags)| flags == "01")
        .map(|(t, ..)| t)
        .collect();
    let span_traces: std::collections::HashSet<String> = servers
        .iter()
        .map(|sp| s(sp, "trace_id").to_owned())
        .collect();
    assert_eq!(sampled_traces, span_traces);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_collector_drops_spans_and_never_holds_a_request() {
    // A collector that accepts and never answers.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/v1/traces", stuck.local_addr().unwrap());
    let backend = Capture::start("b").await;
    let proxy = Harness::start(&catch_all(
        "backend",
        &tracing(&uri, "edge", "")
            .replace("timeout: \"30s\"", "timeout: \"1h\"")
            .replace(
                "service_name: edge,",
                "service_name: edge, max_cache_size: 1,",
            ),
        &format!("endpoints: [{{ address: \"{}\" }}]", backend.addr),
    ))
    .await;
    let client = h1_client();
    assert_eq!(get(&client, &proxy.url("/"), "svc", &[]).await.status, 200);
    // The exporter is now stuck in its POST.
    let (held, _) = tokio::time::timeout(Duration::from_secs(60), stuck.accept())
        .await
        .expect("the exporter connects")
        .unwrap();
    for _ in 0..10 {
        assert_eq!(get(&client, &proxy.url("/"), "svc", &[]).await.status, 200);
    }
    let admin = proxy.proxy.metrics_text();
    let dropped = metric(
        &admin,
        "gofe_tracing_spans_dropped_total{listener=\"127.0.0.1:0\"}",
    )
    .expect("the dropped counter");
    // 20 spans ended while the exporter was stuck; its queue holds one.
    assert!(dropped >= 19.0, "{dropped}");
    drop(held);
    backend.stop().await;
}
