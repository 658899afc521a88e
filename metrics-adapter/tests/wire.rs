//! Wire tests: the adapter on a real socket in front of a real Prometheus (Debian's package)
//! loaded with known data by `promtool tsdb create-blocks-from openmetrics`, and read by a real
//! `kubectl` over TLS.
//!
//! The fixture's samples are 5 s apart from 30 minutes before the test to 30 minutes after it,
//! so every `rate()` window is fully covered at whatever moment the adapter queries and the
//! values are exact: linear counters give exact rates, and the rounding to milli-units removes
//! floating-point noise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gofe_metrics_adapter::provider::CacheConfig;
use gofe_metrics_adapter::{Adapter, AdapterOptions, RequestHeaderSource, TlsFiles};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

// === fixtures ===

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "gofe-adapter-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Prometheus process, killed on drop.
struct Prometheus {
    child: Option<Child>,
    addr: SocketAddr,
    https: bool,
    _dir: TempDir,
}

impl Prometheus {
    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local addr")
}

fn require(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{tool}` is not on PATH: these tests need a real Prometheus (Debian: apt-get install -y prometheus; it ships promtool too)")
        })
}

/// Unix seconds of the fixture's reference time, a multiple of 5.
fn now_aligned() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now - now % 5
}

/// The fixture, in OpenMetrics text: `(labels, value at time t seconds after the start)`.
fn fixture(t0: i64) -> String {
    type Series = (&'static str, Box<dyn Fn(f64) -> f64>);
    let counter =
        |rate: f64| -> Box<dyn Fn(f64) -> f64> { Box::new(move |t| 100_000.0 + rate * t) };
    let gauge = |v: f64| -> Box<dyn Fn(f64) -> f64> { Box::new(move |_| v) };
    let series: Vec<Series> = vec![
        // api-service: 10/s + 3/s 2xx, 2/s 5xx => 15 rps, error ratio 2/15.
        (
            r#"gofe_upstream_requests_total{cluster="api-service",endpoint="10.0.0.1:80",code_class="2xx"}"#,
            counter(10.0),
        ),
        (
            r#"gofe_upstream_requests_total{cluster="api-service",endpoint="10.0.0.1:80",code_class="5xx"}"#,
            counter(0.0),
        ),
        (
            r#"gofe_upstream_requests_total{cluster="api-service",endpoint="10.0.0.2:80",code_class="2xx"}"#,
            counter(3.0),
        ),
        (
            r#"gofe_upstream_requests_total{cluster="api-service",endpoint="10.0.0.2:80",code_class="5xx"}"#,
            counter(2.0),
        ),
        (
            r#"gofe_upstream_requests_total{cluster="web",endpoint="10.0.1.1:80",code_class="2xx"}"#,
            counter(1.5),
        ),
        // Regex escaping: "a.b" must not match "axb".
        (
            r#"gofe_upstream_requests_total{cluster="a.b",endpoint="10.0.2.1:80",code_class="2xx"}"#,
            counter(1.0),
        ),
        (
            r#"gofe_upstream_requests_total{cluster="axb",endpoint="10.0.2.2:80",code_class="2xx"}"#,
            counter(100.0),
        ),
        // Latency of api-service: cumulative 0/5/9/10/10 per second => p50 0.1, p90 0.25, p99 0.475.
        (
            r#"gofe_upstream_request_duration_seconds_bucket{cluster="api-service",endpoint="10.0.0.1:80",le="0.05"}"#,
            counter(0.0),
        ),
        (
            r#"gofe_upstream_request_duration_seconds_bucket{cluster="api-service",endpoint="10.0.0.1:80",le="0.1"}"#,
            counter(5.0),
        ),
        (
            r#"gofe_upstream_request_duration_seconds_bucket{cluster="api-service",endpoint="10.0.0.1:80",le="0.25"}"#,
            counter(9.0),
        ),
        (
            r#"gofe_upstream_request_duration_seconds_bucket{cluster="api-service",endpoint="10.0.0.1:80",le="0.5"}"#,
            counter(10.0),
        ),
        (
            r#"gofe_upstream_request_duration_seconds_bucket{cluster="api-service",endpoint="10.0.0.1:80",le="+Inf"}"#,
            counter(10.0),
        ),
        (
            r#"gofe_upstream_requests_active{cluster="api-service",endpoint="10.0.0.1:80"}"#,
            gauge(7.0),
        ),
        (
            r#"gofe_upstream_requests_active{cluster="api-service",endpoint="10.0.0.2:80"}"#,
            gauge(5.0),
        ),
        // The controller's ejection state: 1 of api-service's 4 endpoints ejected; web has none.
        (
            r#"gofe_endpoint_ejected{cluster="api-service",endpoint="10.0.0.1:80"}"#,
            gauge(0.0),
        ),
        (
            r#"gofe_endpoint_ejected{cluster="api-service",endpoint="10.0.0.2:80"}"#,
            gauge(0.0),
        ),
        (
            r#"gofe_endpoint_ejected{cluster="api-service",endpoint="10.0.0.3:80"}"#,
            gauge(1.0),
        ),
        (
            r#"gofe_endpoint_ejected{cluster="api-service",endpoint="10.0.0.4:80"}"#,
            gauge(0.0),
        ),
        // A queue for the prometheus-adapter-format rules: grows 2 per second.
        (
            r#"queue_depth{namespace="team-a",queue="orders"}"#,
            Box::new(|t| 100.0 + 2.0 * t),
        ),
        (
            r#"queue_depth{namespace="team-b",queue="orders"}"#,
            gauge(42.0),
        ),
    ];
    let start = t0 - 1800;
    let mut text = String::new();
    for (name, f) in &series {
        for i in 0..=720 {
            let ts = start + i * 5;
            let _ = writeln!(text, "{name} {} {ts}", f((ts - start) as f64));
        }
    }
    text.push_str("# EOF\n");
    text
}

fn start_prometheus() -> Prometheus {
    start_prometheus_with(None)
}

/// Starts Prometheus; with `tls = Some((cert, key))` it serves https only.
fn start_prometheus_with(tls: Option<(&Path, &Path)>) -> Prometheus {
    start_prometheus_loaded(tls, fixture(now_aligned()))
}

/// Starts Prometheus holding `openmetrics` (backfilled by promtool).
fn start_prometheus_loaded(tls: Option<(&Path, &Path)>, openmetrics: String) -> Prometheus {
    let prometheus = require("prometheus");
    let promtool = require("promtool");
    let dir = TempDir::new("prom");
    let data = dir.0.join("data");
    let input = dir.0.join("fixture.om");
    std::fs::write(&input, openmetrics).unwrap();
    let out = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&data)
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.0.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 15s\n").unwrap();
    let addr = free_port();
    let mut command = Command::new(prometheus);
    if let Some((cert, key)) = tls {
        let web = dir.0.join("web.yml");
        std::fs::write(
            &web,
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        command.arg(format!("--web.config.file={}", web.display()));
    }
    let child = command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--storage.tsdb.retention.time=1y")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus");
    let mut p = Prometheus {
        child: Some(child),
        addr,
        https: tls.is_some(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = match tls {
            None => ready(addr),
            // The https readiness is checked through the adapter by the test itself.
            Some(_) => {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }
        };
        if up {
            return p;
        }
        if let Some(Ok(Some(status))) = p.child.as_mut().map(|c| c.try_wait()) {
            panic!("prometheus exited: {status}");
        }
        assert!(Instant::now() < deadline, "prometheus not ready after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

const RULES: &str = r#"
builtinRules:
  metrics:
    http_requests_active:
      missingData: {policy: zero}
    http_error_ratio:
      missingData: {policy: hold-last, maxAge: 1h}
externalRules:
- seriesQuery: 'queue_depth{namespace!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)
- seriesQuery: 'queue_depth{namespace!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
  name: {matches: "^(.*)$", as: "${1}_forecast"}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)
  forecast: {lead: 60s, window: 10m, step: 15s}
"#;

async fn start_adapter(
    prom: &Prometheus,
    dir: &TempDir,
    freshness: Duration,
    tls: Option<TlsFiles>,
) -> Adapter {
    start_adapter_with(prom, dir, freshness, tls, None).await
}

async fn start_adapter_with(
    prom: &Prometheus,
    dir: &TempDir,
    freshness: Duration,
    tls: Option<TlsFiles>,
    prometheus_ca_file: Option<PathBuf>,
) -> Adapter {
    let rules = dir.0.join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let adapter = Adapter::start(AdapterOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        prometheus_url: prom.url(),
        prometheus_ca_file,
        query_timeout: Duration::from_secs(5),
        rules_file: Some(rules),
        cache: CacheConfig {
            freshness,
            capacity: 1000,
        },
        relist_interval: Duration::from_secs(60),
        discovery_lookback: Duration::from_secs(3600),
        resource_discovery: Default::default(),
        tls,
        scrape: Vec::new(),
        scrape_interval: Duration::from_secs(5),
    })
    .await
    .expect("starting the adapter");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !adapter.provider().ready() {
        assert!(Instant::now() < deadline, "external rules never discovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    adapter
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("http://{addr}{path}").parse().unwrap();
    let resp = client.get(uri).await.expect("request to the adapter");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const BASE: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces";

/// `metric?labelSelector=selector` in `ns`: status and `(labels, value)` of each item.
async fn values(
    addr: SocketAddr,
    ns: &str,
    metric: &str,
    selector: &str,
) -> (u16, Vec<(BTreeMap<String, String>, String)>, Value) {
    let q: String = url_encode(selector);
    let (status, body) = get(addr, &format!("{BASE}/{ns}/{metric}?labelSelector={q}")).await;
    let items = body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    assert_eq!(i["metricName"], metric);
                    assert!(i["timestamp"].as_str().unwrap().ends_with('Z'));
                    (
                        serde_json::from_value(i["metricLabels"].clone()).unwrap(),
                        i["value"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (status, items, body)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn one(items: &[(BTreeMap<String, String>, String)]) -> &str {
    assert_eq!(items.len(), 1, "{items:?}");
    &items[0].1
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_and_custom_rules_serve_exact_values() {
    let prom = start_prometheus();
    let dir = TempDir::new("rules");
    let adapter = start_adapter(&prom, &dir, Duration::from_secs(30), None).await;
    let a = adapter.addr();

    // Discovery names the built-ins and the discovered custom metrics.
    let (s, list) = get(a, "/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for n in [
        "http_requests_per_second",
        "http_error_ratio",
        "queue_depth",
        "queue_depth_forecast",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }

    // The HPA sample's query: service -> cluster, and back.
    let (s, items, _) = values(
        a,
        "default",
        "http_requests_per_second",
        "service=api-service",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(one(&items), "15");
    assert_eq!(
        items[0].0,
        BTreeMap::from([("service".to_owned(), "api-service".to_owned())])
    );
    let (_, items, _) = values(a, "default", "http_requests_per_second", "service=web").await;
    assert_eq!(one(&items), "1500m");
    let (_, items, _) = values(a, "default", "http_requests_per_second", "service==web").await;
    assert_eq!(one(&items), "1500m");

    // Every selector operator.
    let (_, items, _) = values(a, "default", "http_requests_per_second", "service in (a.b)").await;
    assert_eq!(one(&items), "1", "the dot must be escaped in the regex");
    let (_, items, _) = values(
        a,
        "default",
        "http_requests_per_second",
        "service in (web, api-service)",
    )
    .await;
    assert_eq!(items.len(), 2);
    let (_, items, _) = values(
        a,
        "default",
        "http_requests_per_second",
        "service notin (a.b,axb,web)",
    )
    .await;
    assert_eq!(one(&items), "15");
    let (_, items, _) = values(
        a,
        "default",
        "http_requests_per_second",
        "service!=axb,service!=a.b,service!=web",
    )
    .await;
    assert_eq!(one(&items), "15");
    let (_, items, _) = values(a, "default", "http_requests_per_second", "service").await;
    assert_eq!(items.len(), 4);
    let (s, items, _) = values(a, "default", "http_requests_per_second", "!service").await;
    assert_eq!(s, 404, "{items:?}");
    let (_, items, _) = values(a, "default", "http_requests_per_second", "").await;
    assert_eq!(items.len(), 4);
    let (s, _, _) = values(
        a,
        "default",
        "http_requests_per_second",
        "service=api-service,endpoint=10.0.0.1",
    )
    .await;
    assert_eq!(s, 404, "no endpoint label survives the sum");

    // Latency quantiles, error ratio, active requests.
    for (metric, want) in [
        ("http_request_duration_seconds_p50", "100m"),
        ("http_request_duration_seconds_p90", "250m"),
        ("http_request_duration_seconds_p99", "475m"),
        ("http_error_ratio", "133m"),
        ("http_requests_active", "12"),
    ] {
        let (s, items, body) = values(a, "default", metric, "service=api-service").await;
        assert_eq!(s, 200, "{metric}: {body}");
        assert_eq!(one(&items), want, "{metric}");
    }

    // Ejection-aware: 15 rps on 3 of 4 endpoints => 20; web has no ejection data => unchanged.
    let (_, items, _) = values(
        a,
        "default",
        "http_requests_per_second_ejection_aware",
        "service=api-service",
    )
    .await;
    assert_eq!(one(&items), "20");
    let (_, items, _) = values(
        a,
        "default",
        "http_requests_per_second_ejection_aware",
        "service=web",
    )
    .await;
    assert_eq!(one(&items), "1500m");

    // Errors are Status objects with the right code; injection attempts never reach PromQL.
    let (s, _, body) = values(a, "default", "no_such_metric", "").await;
    assert_eq!(
        (s, body["kind"].as_str(), body["reason"].as_str()),
        (404, Some("Status"), Some("NotFound"))
    );
    for bad in [
        "service=\"x\"}",
        "service=x\"} or vector(1) or {a=\"",
        "service in (a|b)",
        "service=a)",
        "app.kubernetes.io/name=x",
    ] {
        let (s, _, body) = values(a, "default", "http_requests_per_second", bad).await;
        assert_eq!(
            (s, body["reason"].as_str()),
            (400, Some("BadRequest")),
            "{bad}"
        );
    }

    // Missing data: `error` (default) is 404, `zero` is 0 with the selector's labels.
    let (s, _, body) = values(a, "default", "http_requests_per_second", "service=nosuch").await;
    assert_eq!((s, body["kind"].as_str()), (404, Some("Status")));
    let (s, items, _) = values(a, "default", "http_requests_active", "service=nosuch").await;
    assert_eq!(s, 200);
    assert_eq!(one(&items), "0");
    assert_eq!(
        items[0].0,
        BTreeMap::from([("service".to_owned(), "nosuch".to_owned())])
    );

    // prometheus-adapter rules: namespaced by the HPA's namespace.
    let (_, items, _) = values(a, "team-b", "queue_depth", "queue=orders").await;
    assert_eq!(one(&items), "42");
    assert_eq!(
        items[0].0,
        BTreeMap::from([("queue".to_owned(), "orders".to_owned())])
    );
    let (s, _, _) = values(a, "team-c", "queue_depth", "").await;
    assert_eq!(s, 404);

    // Forecast: the queue grows 2/s, so 60 s ahead is 120 above (the current value is read
    // just after, so it may be one 5 s sample, +10, further along).
    let (_, items, _) = values(a, "team-a", "queue_depth_forecast", "").await;
    let forecast: f64 = one(&items).parse().unwrap();
    let (_, items, _) = values(a, "team-a", "queue_depth", "").await;
    let current: f64 = one(&items).parse().unwrap();
    let ahead = forecast - current;
    assert!(
        (100.0..=120.0).contains(&ahead),
        "forecast {forecast}, current {current}"
    );

    // /debug/rules shows the rule, the rendered PromQL for a selector, and the last result.
    let (s, debug) = get(
        a,
        "/debug/rules?namespace=team-a&labelSelector=service%3Dapi-service",
    )
    .await;
    assert_eq!(s, 200);
    let rps = debug["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == "http_requests_per_second")
        .unwrap();
    assert_eq!(
        rps["renderedQuery"],
        "sum by (cluster) (rate(gofe_upstream_requests_total{cluster=\"api-service\"}[2m]))"
    );
    assert!(rps["lastResult"]["query"]
        .as_str()
        .unwrap()
        .contains("gofe_upstream_requests_total"));

    // Cache and single flight: 50 concurrent identical requests, then 50 more, cost one query.
    let before = adapter.provider().queries();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                values(
                    a,
                    "default",
                    "http_requests_per_second",
                    "service=web,service!=x",
                )
                .await
                .0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    for _ in 0..50 {
        // Same selector, written differently: same cache slot.
        assert_eq!(
            values(
                a,
                "default",
                "http_requests_per_second",
                "service!=x, service==web"
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(adapter.provider().queries() - before, 1);

    // Health and OpenAPI.
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(get(a, path).await.0, 200, "{path}");
    }
    let (s, v2) = get(a, "/openapi/v2").await;
    assert_eq!((s, v2["swagger"].as_str()), (200, Some("2.0")));
    let (s, _) = get(a, "/openapi/v3/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(s, 200);
    adapter.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_outage_is_503_unless_the_rule_holds_its_last_value() {
    let mut prom = start_prometheus();
    let dir = TempDir::new("outage");
    // Freshness 0: every request asks Prometheus.
    let adapter = start_adapter(&prom, &dir, Duration::ZERO, None).await;
    let a = adapter.addr();
    let (s, items, _) = values(a, "default", "http_error_ratio", "service=api-service").await;
    assert_eq!((s, one(&items)), (200, "133m"));
    let (s, items, _) = values(
        a,
        "default",
        "http_requests_per_second",
        "service=api-service",
    )
    .await;
    assert_eq!((s, one(&items)), (200, "15"));

    prom.kill();

    // hold-last (maxAge 1h): the last good value.
    let (s, items, body) = values(a, "default", "http_error_ratio", "service=api-service").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(one(&items), "133m");
    // error (default): 503, never a made-up value.
    let (s, _, body) = values(
        a,
        "default",
        "http_requests_per_second",
        "service=api-service",
    )
    .await;
    assert_eq!(
        (s, body["reason"].as_str(), body["code"].as_u64()),
        (503, Some("ServiceUnavailable"), Some(503))
    );
    // zero: an outage is not zero traffic either.
    let (s, _, _) = values(a, "default", "http_requests_active", "service=api-service").await;
    assert_eq!(s, 503);
    // hold-last without an earlier value: 503.
    let (s, _, _) = values(a, "default", "http_error_ratio", "service=web").await;
    assert_eq!(s, 503);
    adapter.stop();
}

// === kubectl over TLS ===

struct Pki {
    dir: TempDir,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(
    cn: &str,
    sans: Vec<String>,
    client: bool,
    issuer: &(rcgen::Certificate, rcgen::KeyPair),
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(sans).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer.0, &issuer.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Serving CA + cert for 127.0.0.1, front-proxy CA + client cert, and a rogue client cert.
    fn new() -> (Self, TlsFiles) {
        let dir = TempDir::new("pki");
        let serving_ca = ca("gofe-test-serving-ca");
        let front_ca = ca("gofe-test-front-proxy-ca");
        let rogue_ca = ca("rogue-ca");
        let (cert, key) = leaf(
            "gofe-metrics-adapter",
            vec!["127.0.0.1".into(), "localhost".into()],
            false,
            &serving_ca,
        );
        let files = TlsFiles {
            cert: write(&dir.0, "serving.crt", &cert),
            key: write(&dir.0, "serving.key", &key),
            requestheader: RequestHeaderSource::File {
                client_ca: write(&dir.0, "front-proxy-ca.crt", &front_ca.0.pem()),
                allowed_names: vec!["front-proxy-client".into()],
            },
            reload_interval: Duration::from_secs(60),
        };
        write(&dir.0, "serving-ca.crt", &serving_ca.0.pem());
        let (c, k) = leaf("front-proxy-client", vec![], true, &front_ca);
        write(&dir.0, "client.crt", &c);
        write(&dir.0, "client.key", &k);
        let (c, k) = leaf("front-proxy-client", vec![], true, &rogue_ca);
        write(&dir.0, "rogue.crt", &c);
        write(&dir.0, "rogue.key", &k);
        (Pki { dir }, files)
    }

    fn kubeconfig(&self, addr: SocketAddr, user: &str) -> PathBuf {
        let d = self.dir.0.display();
        let user_block = match user {
            // A bearer token is no identity here (and keeps kubectl from prompting).
            "none" => "{token: not-a-certificate}".to_owned(),
            u => format!("{{client-certificate: {d}/{u}.crt, client-key: {d}/{u}.key}}"),
        };
        write(
            &self.dir.0,
            &format!("kubeconfig-{user}"),
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: adapter\n  cluster: {{server: \"https://{addr}\", certificate-authority: {d}/serving-ca.crt}}\nusers:\n- name: u\n  user: {user_block}\ncontexts:\n- name: c\n  context: {{cluster: adapter, user: u}}\ncurrent-context: c\n"
            ),
        )
    }
}

fn kubectl(kubeconfig: &Path, path: &str) -> (bool, String) {
    let out = Command::new(require("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", path])
        .output()
        .expect("running kubectl");
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_the_adapter_over_tls_with_a_front_proxy_certificate() {
    let prom = start_prometheus();
    let dir = TempDir::new("tls");
    let (pki, files) = Pki::new();
    let adapter = start_adapter(&prom, &dir, Duration::from_secs(10), Some(files)).await;
    let a = adapter.addr();
    let good = pki.kubeconfig(a, "client");
    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second?labelSelector=service%3Dapi-service";
    let (ok, out) = tokio::task::spawn_blocking({
        let good = good.clone();
        move || kubectl(&good, path)
    })
    .await
    .unwrap();
    assert!(ok, "kubectl failed: {out}");
    let body: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(body["kind"], "ExternalMetricValueList");
    assert_eq!(body["items"][0]["value"], "15");
    assert_eq!(body["items"][0]["metricLabels"]["service"], "api-service");

    let (ok, out) = tokio::task::spawn_blocking(move || {
        kubectl(&good, "/apis/external.metrics.k8s.io/v1beta1")
    })
    .await
    .unwrap();
    assert!(ok && out.contains("APIResourceList"), "{out}");

    // No client certificate: 401. A certificate from another CA: the handshake fails.
    let none = pki.kubeconfig(a, "none");
    let (ok, out) = tokio::task::spawn_blocking(move || kubectl(&none, path))
        .await
        .unwrap();
    assert!(
        !ok && out.contains("You must be logged in") && out.contains("request-header CA"),
        "{out}"
    );
    let rogue = pki.kubeconfig(a, "rogue");
    let (ok, out) = tokio::task::spawn_blocking(move || kubectl(&rogue, path))
        .await
        .unwrap();
    assert!(
        !ok,
        "a certificate from an untrusted CA was accepted: {out}"
    );
    adapter.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_prometheus_is_read_with_the_given_ca_only() {
    let pki = TempDir::new("prom-pki");
    let prom_ca = ca("gofe-test-prometheus-ca");
    let (cert, key) = leaf("prometheus", vec!["127.0.0.1".into()], false, &prom_ca);
    let cert = write(&pki.0, "prom.crt", &cert);
    let key = write(&pki.0, "prom.key", &key);
    let ca_file = write(&pki.0, "prom-ca.crt", &prom_ca.0.pem());
    let other_ca = write(&pki.0, "other-ca.crt", &ca("other").0.pem());
    let prom = start_prometheus_with(Some((&cert, &key)));
    assert!(prom.url().starts_with("https://"));

    let dir = TempDir::new("https");
    let adapter = start_adapter_with(&prom, &dir, Duration::ZERO, None, Some(ca_file)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let items = loop {
        let (s, items, body) = values(
            adapter.addr(),
            "default",
            "http_requests_per_second",
            "service=api-service",
        )
        .await;
        if s == 200 {
            break items;
        }
        assert!(Instant::now() < deadline, "no answer over https: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(one(&items), "15");
    adapter.stop();

    // A CA that did not sign Prometheus' certificate: unavailable, never a value.
    // (Built-in rules only: with external rules it would never become ready.)
    let adapter = Adapter::start(AdapterOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        prometheus_url: prom.url(),
        prometheus_ca_file: Some(other_ca),
        query_timeout: Duration::from_secs(5),
        rules_file: None,
        cache: CacheConfig::default(),
        relist_interval: Duration::from_secs(60),
        discovery_lookback: Duration::from_secs(3600),
        resource_discovery: Default::default(),
        tls: None,
        scrape: Vec::new(),
        scrape_interval: Duration::from_secs(5),
    })
    .await
    .unwrap();
    let (s, _, body) = values(
        adapter.addr(),
        "default",
        "http_requests_per_second",
        "service=api-service",
    )
    .await;
    assert_eq!(
        (s, body["reason"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    adapter.stop();
}

// === custom.metrics.k8s.io and metrics.k8s.io ===

#[path = "../../tests/fake_api/mod.rs"]
mod fake_api;

/// OpenMetrics text for promtool: each series sampled every 5 s over the hour around `t0`
/// (half an hour either side). A counter grows by its value per second from 1000; a gauge
/// stays at its value.
fn openmetrics<S: std::fmt::Display>(series: &[(S, f64, bool)], t0: i64) -> String {
    let start = t0 - 1800;
    let mut text = String::new();
    for (name, v, counter) in series {
        for i in 0..=720 {
            let ts = start + i * 5;
            let value = if *counter {
                1000.0 + v * (ts - start) as f64
            } else {
                *v
            };
            let _ = writeln!(text, "{name} {value} {ts}");
        }
    }
    text.push_str("# EOF\n");
    text
}

/// Series for custom and resource metrics, in OpenMetrics text, 5 s apart over the hour around
/// `t0`: linear counters (exact rates) and constant gauges.
///
/// Hand computation of what the rules serve:
/// - walkthrough `http_requests_per_second` = `sum(rate(http_requests_total{…}[2m])) by (pod)`:
///   shop/web-1 = 2 (GET) + 1 (POST) = 3, shop/web-2 = 4, shop/api-1 = 10, other/web-1 = 7;
///   with `metricLabelSelector=verb=GET`, shop/web-1 = 2.
/// - Helm chart defaults: `pods/http_requests` (rule 5, `_total` stripped, rate [5m]) the same
///   per pod, `namespaces/http_requests` for shop = 3 + 4 + 10 = 17; `pods/cpu_usage` (rule 1)
///   of shop/web-1 = 0.25 + 0.05 + 1 (the container="" cgroup series, `container!="POD"`
///   keeps it) = 1.3.
/// - resource rules: shop/web-1 containers app {cpu 250m, memory 104857600},
///   sidecar {50m, 2M}; shop/web-2 app {500m, 50M}; the container="" series is dropped by
///   `container!=""`. Node n1: cpu = user 0.3 + system 0.2 (idle excluded) = 500m,
///   memory = 8e9 - 6e9 = 2G.
/// - a node-scoped custom rule: `nodes/node_load` of n1 = 1.5.
fn custom_fixture(t0: i64) -> String {
    let series: Vec<(&str, f64, bool)> = vec![
        // (series, rate per second or gauge value, is a counter)
        (
            r#"http_requests_total{namespace="shop",pod="web-1",verb="GET"}"#,
            2.0,
            true,
        ),
        (
            r#"http_requests_total{namespace="shop",pod="web-1",verb="POST"}"#,
            1.0,
            true,
        ),
        (
            r#"http_requests_total{namespace="shop",pod="web-2",verb="GET"}"#,
            4.0,
            true,
        ),
        (
            r#"http_requests_total{namespace="shop",pod="api-1",verb="GET"}"#,
            10.0,
            true,
        ),
        (
            r#"http_requests_total{namespace="other",pod="web-1",verb="GET"}"#,
            7.0,
            true,
        ),
        (
            r#"container_cpu_usage_seconds_total{namespace="shop",pod="web-1",container="app"}"#,
            0.25,
            true,
        ),
        (
            r#"container_cpu_usage_seconds_total{namespace="shop",pod="web-1",container="sidecar"}"#,
            0.05,
            true,
        ),
        (
            r#"container_cpu_usage_seconds_total{namespace="shop",pod="web-1",container=""}"#,
            1.0,
            true,
        ),
        (
            r#"container_cpu_usage_seconds_total{namespace="shop",pod="web-2",container="app"}"#,
            0.5,
            true,
        ),
        (
            r#"container_memory_working_set_bytes{namespace="shop",pod="web-1",container="app"}"#,
            104_857_600.0,
            false,
        ),
        (
            r#"container_memory_working_set_bytes{namespace="shop",pod="web-1",container="sidecar"}"#,
            2_000_000.0,
            false,
        ),
        (
            r#"container_memory_working_set_bytes{namespace="shop",pod="web-2",container="app"}"#,
            50_000_000.0,
            false,
        ),
        (
            r#"node_cpu_seconds_total{node="n1",cpu="0",mode="user"}"#,
            0.3,
            true,
        ),
        (
            r#"node_cpu_seconds_total{node="n1",cpu="0",mode="system"}"#,
            0.2,
            true,
        ),
        (
            r#"node_cpu_seconds_total{node="n1",cpu="0",mode="idle"}"#,
            0.5,
            true,
        ),
        (r#"node_memory_MemTotal_bytes{node="n1"}"#, 8e9, false),
        (r#"node_memory_MemAvailable_bytes{node="n1"}"#, 6e9, false),
        (r#"node_load{node="n1"}"#, 1.5, false),
    ];
    openmetrics(&series, t0)
}

/// The cluster's objects the rules are asked about.
fn fake_cluster() -> fake_api::FakeApi {
    let fake = fake_api::FakeApi::default();
    for (ns, name, app) in [
        ("shop", "web-1", "web"),
        ("shop", "web-2", "web"),
        ("shop", "api-1", "api"),
        ("shop", "idle-1", "idle"),
        ("other", "web-1", "web"),
    ] {
        fake.put(
            "/api/v1/pods",
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": app}}}),
        );
    }
    for name in ["n1", "n2"] {
        fake.put(
            "/api/v1/nodes",
            serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}}}),
        );
    }
    fake
}

const CUSTOM_RULES: &str = r#"
rules:
- seriesQuery: 'node_load{node!=""}'
  resources:
    overrides:
      node: {resource: node}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
- seriesQuery: 'http_requests_total{namespace="nowhere"}'
  resources:
    overrides:
      namespace: {resource: namespace}
      pod: {resource: pod}
  name: {as: never_seen}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
"#;

/// The walkthrough's rules plus a node rule, the Helm chart's defaults' resource rules.
fn combined_rules() -> String {
    let walkthrough = include_str!("fixtures/prometheus-adapter/walkthrough.yaml");
    let helm = include_str!("fixtures/prometheus-adapter/helm-chart-defaults.yaml");
    let resource = &helm[helm.find("resourceRules:").unwrap()..];
    let node_rules = CUSTOM_RULES.trim_start().trim_start_matches("rules:\n");
    format!("{walkthrough}{node_rules}\n{resource}")
}

async fn start_custom_adapter(
    prom: &Prometheus,
    dir: &TempDir,
    rules: &str,
    freshness: Duration,
    cluster: Option<&fake_api::FakeApi>,
) -> Adapter {
    start_custom_adapter_with(prom, dir, rules, freshness, cluster, Default::default()).await
}

async fn start_custom_adapter_with(
    prom: &Prometheus,
    dir: &TempDir,
    rules: &str,
    freshness: Duration,
    cluster: Option<&fake_api::FakeApi>,
    resource_discovery: gofe_metrics_adapter::resources::DiscoveryConfig,
) -> Adapter {
    let path = dir.0.join("rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let adapter = Adapter::start_with_clients(
        AdapterOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            prometheus_url: prom.url(),
            prometheus_ca_file: None,
            query_timeout: Duration::from_secs(5),
            rules_file: Some(path),
            cache: CacheConfig {
                freshness,
                capacity: 1000,
            },
            relist_interval: Duration::from_secs(60),
            discovery_lookback: Duration::from_secs(3600),
            resource_discovery,
            tls: None,
            scrape: Vec::new(),
            scrape_interval: Duration::from_secs(5),
        },
        None,
        cluster.map(|c| c.client("adapter")),
    )
    .await
    .expect("starting the adapter");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !adapter.provider().ready() {
        assert!(Instant::now() < deadline, "rules never discovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    adapter
}

const CUSTOM: &str = "/apis/custom.metrics.k8s.io/v1beta2";

/// `(namespace, name) → value` of a MetricValueList, checking each item's shape.
fn described(body: &Value, metric: &str, kind: &str) -> BTreeMap<(String, String), String> {
    assert_eq!(body["kind"], "MetricValueList", "{body}");
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {body}"))
        .iter()
        .map(|i| {
            assert_eq!(i["metric"]["name"], metric, "{i}");
            assert_eq!(i["describedObject"]["kind"], kind, "{i}");
            assert_eq!(i["describedObject"]["apiVersion"], "v1", "{i}");
            assert!(i["timestamp"].as_str().unwrap().ends_with('Z'));
            (
                (
                    i["describedObject"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    i["describedObject"]["name"].as_str().unwrap().to_owned(),
                ),
                i["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str, &str)]) -> BTreeMap<(String, String), String> {
    items
        .iter()
        .map(|(ns, n, v)| (((*ns).to_owned(), (*n).to_owned()), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_and_resource_metrics_serve_exact_values() {
    let prom = start_prometheus_loaded(None, custom_fixture(now_aligned()));
    let dir = TempDir::new("custom");
    let cluster = fake_cluster();
    let adapter = start_custom_adapter(
        &prom,
        &dir,
        &combined_rules(),
        Duration::from_secs(30),
        Some(&cluster),
    )
    .await;
    let a = adapter.addr();

    // Discovery: the groups, and pods/METRIC entries as prometheus-adapter lists them.
    let (s, groups) = get(a, "/apis").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "external.metrics.k8s.io",
            "custom.metrics.k8s.io",
            "metrics.k8s.io"
        ]
    );
    let (_, g) = get(a, "/apis/custom.metrics.k8s.io").await;
    assert_eq!(
        g["preferredVersion"]["groupVersion"],
        "custom.metrics.k8s.io/v1beta2"
    );
    let (s, list) = get(a, CUSTOM).await;
    assert_eq!(s, 200);
    let entries: BTreeMap<&str, bool> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["kind"], "MetricValueList");
            (
                r["name"].as_str().unwrap(),
                r["namespaced"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        BTreeMap::from([
            ("namespaces/http_requests_per_second", false),
            ("nodes/node_load", false),
            ("pods/http_requests_per_second", true),
        ]),
        "a rule whose series query finds nothing serves nothing"
    );

    // The HPA's request: pods by label selector, one item per pod that has a series (idle-1
    // has none; api-1 is not selected; other/web-1 is in another namespace).
    let (s, body) = get(
        a,
        &format!(
            "{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app%3Dweb"
        ),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["apiVersion"], "custom.metrics.k8s.io/v1beta2");
    assert_eq!(
        described(&body, "http_requests_per_second", "Pod"),
        pairs(&[("shop", "web-1", "3"), ("shop", "web-2", "4")])
    );
    let (_, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app+in+%28web%2Capi%29"),
    )
    .await;
    assert_eq!(
        described(&body, "http_requests_per_second", "Pod"),
        pairs(&[
            ("shop", "api-1", "10"),
            ("shop", "web-1", "3"),
            ("shop", "web-2", "4")
        ])
    );
    // One object; a metricLabelSelector narrows the series and is echoed back.
    let (s, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/other/pods/web-1/http_requests_per_second"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        described(&body, "http_requests_per_second", "Pod"),
        pairs(&[("other", "web-1", "7")])
    );
    let (_, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/pods/web-1/http_requests_per_second?metricLabelSelector=verb%3DGET"),
    )
    .await;
    assert_eq!(
        described(&body, "http_requests_per_second", "Pod"),
        pairs(&[("shop", "web-1", "2")])
    );
    assert_eq!(
        body["items"][0]["metric"]["selector"],
        serde_json::json!({"matchLabels": {"verb": "GET"}})
    );
    // v1beta1: metricName, same values.
    let (s, body) = get(
        a,
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/shop/pods/web-2/http_requests_per_second",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["items"][0]["metricName"], "http_requests_per_second");
    assert_eq!(body["items"][0]["value"], "4");
    // The namespace itself, and a cluster-scoped node.
    let (s, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/metrics/http_requests_per_second"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        described(&body, "http_requests_per_second", "Namespace"),
        pairs(&[("", "shop", "17")])
    );
    let (s, body) = get(a, &format!("{CUSTOM}/nodes/*/node_load")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        described(&body, "node_load", "Node"),
        pairs(&[("", "n1", "1500m")]),
        "n2 has no series"
    );
    let (_, body) = get(a, &format!("{CUSTOM}/nodes/n1/node_load")).await;
    assert_eq!(
        described(&body, "node_load", "Node"),
        pairs(&[("", "n1", "1500m")])
    );

    // Errors: unknown metric, no data, wrong scope 404; bad selectors 400.
    for path in [
        format!("{CUSTOM}/namespaces/shop/pods/*/nope"),
        format!("{CUSTOM}/namespaces/shop/pods/idle-1/http_requests_per_second"),
        format!(
            "{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app%3Didle"
        ),
        format!(
            "{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app%3Dnone"
        ),
        format!("{CUSTOM}/nodes/n2/node_load"),
        format!("{CUSTOM}/namespaces/shop/nodes/n1/node_load"),
        format!("{CUSTOM}/pods/web-1/http_requests_per_second"),
        "/apis/custom.metrics.k8s.io/v1alpha1/nodes/n1/node_load".to_owned(),
    ] {
        let (s, body) = get(a, &path).await;
        assert_eq!(
            (s, body["kind"].as_str(), body["reason"].as_str()),
            (404, Some("Status"), Some("NotFound")),
            "{path}: {body}"
        );
    }
    for query in [
        "labelSelector=app%3D%22x%22",
        "metricLabelSelector=verb%3D%22x%22%7D",
        "metricLabelSelector=app.kubernetes.io%2Fname%3Dx",
    ] {
        let path = format!("{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?{query}");
        let (s, body) = get(a, &path).await;
        assert_eq!(
            (s, body["reason"].as_str()),
            (400, Some("BadRequest")),
            "{path}: {body}"
        );
    }

    // metrics.k8s.io: PodMetrics and NodeMetrics from the Helm chart's default resource rules.
    let resource = "/apis/metrics.k8s.io/v1beta1";
    let (s, body) = get(a, &format!("{resource}/namespaces/shop/pods")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["kind"], "PodMetricsList");
    let pods: Vec<(String, Value)> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["kind"], "PodMetrics");
            assert_eq!(p["window"], "3m0s");
            assert_eq!(p["metadata"]["namespace"], "shop");
            (
                p["metadata"]["name"].as_str().unwrap().to_owned(),
                p["containers"].clone(),
            )
        })
        .collect();
    assert_eq!(
        pods,
        vec![
            (
                "web-1".to_owned(),
                serde_json::json!([
                    {"name": "app", "usage": {"cpu": "250m", "memory": "104857600"}},
                    {"name": "sidecar", "usage": {"cpu": "50m", "memory": "2M"}},
                ])
            ),
            (
                "web-2".to_owned(),
                serde_json::json!([{"name": "app", "usage": {"cpu": "500m", "memory": "50M"}}])
            ),
        ],
        "pods without data (api-1, idle-1) are left out"
    );
    let (s, body) = get(a, &format!("{resource}/namespaces/shop/pods/web-2")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["containers"][0]["usage"]["cpu"], "500m");
    let (s, body) = get(
        a,
        &format!("{resource}/namespaces/shop/pods?labelSelector=app%3Dweb"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 2, "{body}");
    let (s, body) = get(
        a,
        &format!("{resource}/namespaces/shop/pods?labelSelector=app%3Dapi"),
    )
    .await;
    assert_eq!(
        (s, body["items"].as_array().unwrap().len()),
        (200, 0),
        "{body}"
    );
    let (s, _) = get(a, &format!("{resource}/namespaces/shop/pods/idle-1")).await;
    assert_eq!(s, 404);
    let (s, body) = get(a, &format!("{resource}/nodes")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["items"],
        serde_json::json!([{
            "kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": body["items"][0]["metadata"].clone(),
            "timestamp": body["items"][0]["timestamp"].clone(),
            "window": "3m0s",
            "usage": {"cpu": "500m", "memory": "2G"},
        }])
    );
    assert_eq!(body["items"][0]["metadata"]["name"], "n1");
    let (s, _) = get(a, &format!("{resource}/nodes/n2")).await;
    assert_eq!(s, 404);

    // kubectl against the adapter (plain HTTP, kubeconfig pointing at it).
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: adapter\n  cluster: {{server: \"http://{a}\"}}\nusers:\n- name: u\n  user: {{token: none}}\ncontexts:\n- name: c\n  context: {{cluster: adapter, user: u, namespace: shop}}\ncurrent-context: c\n"),
    )
    .unwrap();
    let (ok, out) = tokio::task::spawn_blocking({
        let k = kubeconfig.clone();
        move || {
            kubectl(
                &k,
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app%3Dweb",
            )
        }
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    let body: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        described(&body, "http_requests_per_second", "Pod"),
        pairs(&[("shop", "web-1", "3"), ("shop", "web-2", "4")])
    );
    let (ok, out) = tokio::task::spawn_blocking({
        let k = kubeconfig.clone();
        move || kubectl(&k, "/apis/metrics.k8s.io/v1beta1/namespaces/shop/pods")
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("\"104857600\""), "{out}");
    let (ok, out) = tokio::task::spawn_blocking({
        let k = kubeconfig.clone();
        move || kubectl(&k, "/apis/custom.metrics.k8s.io/v1beta2/nodes/n2/node_load")
    })
    .await
    .unwrap();
    assert!(!ok && out.contains("NotFound"), "{out}");
    let top = tokio::task::spawn_blocking({
        let k = kubeconfig.clone();
        move || {
            Command::new(require("kubectl"))
                .arg("--kubeconfig")
                .arg(&k)
                .args(["top", "pods", "-n", "shop", "--containers", "--no-headers"])
                .output()
                .expect("running kubectl")
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "kubectl top: {}",
        String::from_utf8_lossy(&top.stderr)
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["web-1", "app", "250m", "100Mi"],
            vec!["web-1", "sidecar", "50m", "1Mi"],
            vec!["web-2", "app", "500m", "47Mi"],
        ],
        "{text}"
    );

    // /debug/rules shows the custom metrics and resource rules in plain JSON.
    let (s, debug) = get(a, "/debug/rules").await;
    assert_eq!(s, 200);
    let pods_rule = debug["customMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "pods/http_requests_per_second")
        .unwrap_or_else(|| panic!("{debug}"));
    assert_eq!(pods_rule["resourceLabel"], "pod");
    assert_eq!(pods_rule["namespaceLabel"], "namespace");
    assert!(pods_rule["lastResult"]["query"]
        .as_str()
        .unwrap()
        .contains("http_requests_total{namespace="));
    assert_eq!(debug["resourceRules"]["window"], "3m0s");
    let text = debug.to_string();
    assert!(
        !text.contains("\"Ok\"") && !text.contains("\"Some\""),
        "{text}"
    );

    // The adapter's own metrics, by API group.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .get(format!("http://{a}/metrics").parse().unwrap())
        .await
        .unwrap();
    let m = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for want in [
        r#"gofe_adapter_requests_total{code="200",group="custom"}"#,
        r#"gofe_adapter_requests_total{code="404",group="custom"}"#,
        r#"gofe_adapter_requests_total{code="400",group="custom"}"#,
        r#"gofe_adapter_requests_total{code="200",group="resource"}"#,
        r#"gofe_adapter_cache_requests_total{result="hit"}"#,
        r#"gofe_adapter_cache_requests_total{result="miss"}"#,
        "gofe_adapter_prometheus_query_duration_seconds_count",
        // The process, and which gofe this is.
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "gofe_build_info{component=\"metrics-adapter\",",
    ] {
        assert!(m.contains(want), "{want} missing:\n{m}");
    }
    adapter.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_adapters_documented_configs_load_and_serve() {
    let mut prom = start_prometheus_loaded(None, custom_fixture(now_aligned()));
    let cluster = fake_cluster();
    let dir = TempDir::new("pa-configs");

    // The community Helm chart's default rules.
    let helm = include_str!("fixtures/prometheus-adapter/helm-chart-defaults.yaml");
    let adapter = start_custom_adapter(&prom, &dir, helm, Duration::ZERO, Some(&cluster)).await;
    let a = adapter.addr();
    let (_, list) = get(a, CUSTOM).await;
    let names: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for want in [
        "pods/cpu_usage",
        "pods/memory_working_set_bytes",
        "pods/http_requests",
        "namespaces/http_requests",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let (s, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/pods/*/http_requests?labelSelector=app%3Dweb"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        described(&body, "http_requests", "Pod"),
        pairs(&[("shop", "web-1", "3"), ("shop", "web-2", "4")])
    );
    let (_, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/metrics/http_requests"),
    )
    .await;
    assert_eq!(
        described(&body, "http_requests", "Namespace"),
        pairs(&[("", "shop", "17")])
    );
    let (_, body) = get(a, &format!("{CUSTOM}/namespaces/shop/pods/web-1/cpu_usage")).await;
    assert_eq!(
        described(&body, "cpu_usage", "Pod"),
        pairs(&[("shop", "web-1", "1300m")])
    );
    let (_, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/pods/web-1/memory_working_set_bytes"),
    )
    .await;
    assert_eq!(
        described(&body, "memory_working_set_bytes", "Pod"),
        pairs(&[("shop", "web-1", "106857600")])
    );
    adapter.stop();

    // The sample config: all three sections load; its rules serve the same data.
    let sample = include_str!("fixtures/prometheus-adapter/sample-config.yaml");
    let adapter = start_custom_adapter(&prom, &dir, sample, Duration::ZERO, Some(&cluster)).await;
    let a = adapter.addr();
    let (_, body) = get(a, &format!("{CUSTOM}/namespaces/shop/pods/web-1/cpu_usage")).await;
    assert_eq!(
        described(&body, "cpu_usage", "Pod"),
        pairs(&[("shop", "web-1", "1300m")])
    );
    let (_, body) = get(a, "/apis/metrics.k8s.io/v1beta1/namespaces/shop/pods/web-1").await;
    // The sample's containerQuery has no container!="" filter: the cgroup series is a
    // container named "" (1 core) and is left out of the list of named containers.
    assert_eq!(
        body["containers"],
        serde_json::json!([
            {"name": "app", "usage": {"cpu": "250m", "memory": "104857600"}},
            {"name": "sidecar", "usage": {"cpu": "50m", "memory": "2M"}},
        ])
    );
    // The walkthrough's rule (also in combined_rules above): values by pod.
    adapter.stop();
    let walkthrough = include_str!("fixtures/prometheus-adapter/walkthrough.yaml");
    let adapter =
        start_custom_adapter(&prom, &dir, walkthrough, Duration::ZERO, Some(&cluster)).await;
    let a = adapter.addr();
    let (s, body) = get(
        a,
        &format!(
            "{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app%3Dapi"
        ),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        described(&body, "http_requests_per_second", "Pod"),
        pairs(&[("shop", "api-1", "10")])
    );
    // Prometheus down: 503, never a value (freshness 0: every request asks).
    prom.kill();
    let (s, body) = get(
        a,
        &format!(
            "{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app%3Dapi"
        ),
    )
    .await;
    assert_eq!(
        (s, body["reason"].as_str()),
        (503, Some("ServiceUnavailable")),
        "{body}"
    );
    adapter.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_missing_data_policies_and_outage_of_resource_metrics() {
    let mut prom = start_prometheus_loaded(None, custom_fixture(now_aligned()));
    let cluster = fake_cluster();
    let dir = TempDir::new("custom-policy");
    let rules = format!(
        "{}\n  missingData: {{policy: zero}}\n{}",
        include_str!("fixtures/prometheus-adapter/walkthrough.yaml").trim_end(),
        &include_str!("fixtures/prometheus-adapter/helm-chart-defaults.yaml")[include_str!(
            "fixtures/prometheus-adapter/helm-chart-defaults.yaml"
        )
        .find("resourceRules:")
        .unwrap()..]
    );
    let adapter = start_custom_adapter(&prom, &dir, &rules, Duration::ZERO, Some(&cluster)).await;
    let a = adapter.addr();
    // zero: pods the selector selects but without series get 0, each named.
    let (s, body) = get(
        a,
        &format!(
            "{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app%3Didle"
        ),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        described(&body, "http_requests_per_second", "Pod"),
        pairs(&[("shop", "idle-1", "0")])
    );
    prom.kill();
    // An outage is not zero traffic: 503, for custom and resource metrics alike.
    let (s, _) = get(
        a,
        &format!(
            "{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app%3Dweb"
        ),
    )
    .await;
    assert_eq!(s, 503);
    let (s, body) = get(a, "/apis/metrics.k8s.io/v1beta1/namespaces/shop/pods").await;
    assert_eq!((s, body["code"].as_u64()), (503, Some(503)), "{body}");
    adapter.stop();
}

/// Sidecar proxies' series as Prometheus labels them (`namespace`, `pod` from its Kubernetes
/// discovery), rates per second: web-1 serves 3 req/s of 2xx and 1 of 5xx, web-2 5 of 2xx;
/// web-1 has 4 requests in flight; a gateway's series carry no pod.
fn sidecar_fixture(t0: i64) -> String {
    let ep = r#"cluster="local",endpoint="127.0.0.1:8080""#;
    let series: Vec<(String, f64, bool)> = vec![
        (format!(r#"gofe_upstream_requests_total{{namespace="shop",pod="web-1",{ep},code_class="2xx"}}"#), 3.0, true),
        (format!(r#"gofe_upstream_requests_total{{namespace="shop",pod="web-1",{ep},code_class="5xx"}}"#), 1.0, true),
        (format!(r#"gofe_upstream_requests_total{{namespace="shop",pod="web-2",{ep},code_class="2xx"}}"#), 5.0, true),
        (r#"gofe_upstream_requests_total{cluster="web",endpoint="10.0.0.1:80",code_class="2xx"}"#.to_owned(), 50.0, true),
        (format!(r#"gofe_upstream_requests_active{{namespace="shop",pod="web-1",{ep}}}"#), 4.0, false),
    ];
    openmetrics(&series, t0)
}

/// gofe's built-in metrics per Pod (`builtinRules.pods`), from sidecar proxies' series on a
/// real Prometheus: discovered as pods/ and namespaces/ metrics, exact values per pod and per
/// namespace, a pod with no series answers 404, and the built-in external metric still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_metrics_are_served_per_pod_from_sidecars() {
    let prom = start_prometheus_loaded(None, sidecar_fixture(now_aligned()));
    let dir = TempDir::new("pods");
    let cluster = fake_cluster();
    let adapter = start_custom_adapter(
        &prom,
        &dir,
        "builtinRules:\n  rateWindow: 2m\n  pods: {}\n",
        Duration::from_secs(30),
        Some(&cluster),
    )
    .await;
    let a = adapter.addr();
    let (s, list) = get(a, CUSTOM).await;
    assert_eq!(s, 200, "{list}");
    let entries: BTreeMap<&str, bool> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["namespaced"].as_bool().unwrap(),
            )
        })
        .collect();
    for (name, namespaced) in [
        ("pods/http_requests_per_second", true),
        ("pods/http_error_ratio", true),
        ("pods/http_requests_active", true),
        ("namespaces/http_requests_per_second", false),
    ] {
        assert_eq!(
            entries.get(name),
            Some(&namespaced),
            "{name} in {entries:?}"
        );
    }
    assert!(
        !entries.keys().any(|n| n.contains("duration")),
        "no histogram series, no latency metric: {entries:?}"
    );

    for (pod, rps, errors) in [("web-1", "4", "250m"), ("web-2", "5", "0")] {
        let (s, body) = get(
            a,
            &format!("{CUSTOM}/namespaces/shop/pods/{pod}/http_requests_per_second"),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(
            described(&body, "http_requests_per_second", "Pod"),
            pairs(&[("shop", pod, rps)])
        );
        let (_, body) = get(
            a,
            &format!("{CUSTOM}/namespaces/shop/pods/{pod}/http_error_ratio"),
        )
        .await;
        assert_eq!(
            described(&body, "http_error_ratio", "Pod"),
            pairs(&[("shop", pod, errors)])
        );
    }
    let (_, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/pods/web-1/http_requests_active"),
    )
    .await;
    assert_eq!(
        described(&body, "http_requests_active", "Pod"),
        pairs(&[("shop", "web-1", "4")])
    );
    let (_, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/metrics/http_requests_per_second"),
    )
    .await;
    assert_eq!(
        described(&body, "http_requests_per_second", "Namespace"),
        pairs(&[("", "shop", "9")])
    );
    let (s, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/pods/idle-1/http_requests_per_second"),
    )
    .await;
    assert_eq!(s, 404, "{body}");
    // The external built-in metric is still there, by service (the mesh's cluster).
    let (s, body) = get(
        a,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/http_requests_per_second?labelSelector=service%3Dweb",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "50", "{body}");
    adapter.stop();
}

/// A stand-in for the API server in front of the adapter, as the aggregation layer is:
/// `/api` and `/api/v1/nodes` (node `n1`, 2 CPUs and 8 GiB allocatable) answered here, every
/// other path forwarded to the adapter. One request per connection.
fn api_front(adapter: SocketAddr) -> SocketAddr {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                let local = match path.split('?').next().unwrap_or("") {
                    "/api" => Some(r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}"#.to_owned()),
                    "/api/v1/nodes" => Some(r#"{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":[{"metadata":{"name":"n1"},"status":{"capacity":{"cpu":"2","memory":"8Gi"},"allocatable":{"cpu":"2","memory":"8Gi"}}}]}"#.to_owned()),
                    _ => None,
                };
                let answer = match local {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .into_bytes(),
                    None => {
                        let mut upstream = std::net::TcpStream::connect(adapter).unwrap();
                        let first = head.lines().next().unwrap_or_default();
                        write!(
                            upstream,
                            "{first}\r\nhost: {adapter}\r\naccept: application/json\r\nconnection: close\r\n\r\n"
                        )
                        .unwrap();
                        let mut out = Vec::new();
                        let _ = upstream.read_to_end(&mut out);
                        out
                    }
                };
                let _ = conn.write_all(&answer);
            });
        }
    });
    addr
}

/// `kubectl top nodes` through the adapter's `metrics.k8s.io` (nodeQuery of prometheus-adapter's
/// community Helm chart's resourceRules), with an API server stand-in for the node list:
/// node n1's usage as Prometheus has it, and its share of what the node can allocate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_nodes_reads_the_adapter() {
    let prom = start_prometheus_loaded(None, custom_fixture(now_aligned()));
    let dir = TempDir::new("topnodes");
    let cluster = fake_cluster();
    let adapter = start_custom_adapter(
        &prom,
        &dir,
        &combined_rules(),
        Duration::from_secs(30),
        Some(&cluster),
    )
    .await;
    let front = api_front(adapter.addr());
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: api\n  cluster: {{server: \"http://{front}\"}}\nusers:\n- name: u\n  user: {{token: none}}\ncontexts:\n- name: c\n  context: {{cluster: api, user: u}}\ncurrent-context: c\n"),
    )
    .unwrap();
    let top = tokio::task::spawn_blocking(move || {
        Command::new(require("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["top", "nodes", "--no-headers"])
            .output()
            .expect("running kubectl")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "kubectl top nodes: {}",
        String::from_utf8_lossy(&top.stderr)
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // 500m of 2 CPUs; 2 GB (1907 MiB) of 8 GiB.
    assert_eq!(
        rows,
        vec![vec!["n1", "500m", "25%", "1907Mi", "23%"]],
        "{text}"
    );
    adapter.stop();
}

// === resources through the cluster's discovery ===

/// Series of objects of a CRD (`widgets.example.com`), of irregular plurals
/// (`networkpolicies`, `ingresses`), of a CRD installed after the adapter starts
/// (`gadgets.example.com`) and of one never installed (`sprockets.example.com`).
fn crd_fixture(t0: i64) -> String {
    openmetrics(
        &[
            (
                r#"widget_queue_depth{namespace="shop",widget="w1"}"#,
                3.0,
                false,
            ),
            (
                r#"widget_queue_depth{namespace="shop",widget="w2"}"#,
                5.0,
                false,
            ),
            (
                r#"policy_drops_total{namespace="shop",networkpolicy="deny-all"}"#,
                2.0,
                true,
            ),
            (
                r#"ingress_requests_total{namespace="shop",ingress="front"}"#,
                6.0,
                true,
            ),
            (r#"gadget_load{namespace="shop",gadget="g1"}"#, 1.5, false),
            (
                r#"sprocket_load{namespace="shop",sprocket="s1"}"#,
                4.0,
                false,
            ),
        ],
        t0,
    )
}

const CRD_RULES: &str = r#"
rules:
- seriesQuery: 'widget_queue_depth{widget!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      widget: {group: example.com, resource: widget}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
- seriesQuery: 'policy_drops_total{networkpolicy!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      networkpolicy: {group: networking.k8s.io, resource: NetworkPolicy}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)
- seriesQuery: 'ingress_requests_total{ingress!=""}'
  resources: {template: "<<.Resource>>"}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)
- seriesQuery: 'gadget_load{gadget!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      gadget: {group: example.com, resource: gadgets}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
- seriesQuery: 'sprocket_load{sprocket!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      sprocket: {group: example.com, resource: sprocket}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
"#;

/// An `APIResource` of a discovery document, as the API server writes it.
fn api_resource(name: &str, singular: &str, kind: &str, namespaced: bool) -> Value {
    serde_json::json!({
        "name": name, "singularName": singular, "namespaced": namespaced, "kind": kind,
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        "storageVersionHash": "aGFzaA==",
    })
}

fn resource_list(group_version: &str, resources: Vec<Value>) -> Value {
    serde_json::json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": group_version, "resources": resources,
    })
}

/// The discovery documents of a cluster with a `Widget` CRD (`example.com/v1`, and an older
/// `v1alpha1` that is not preferred), `networking.k8s.io` and the metrics APIs, in the JSON an
/// API server serves; with `gadgets`, the `Gadget` CRD installed too.
fn serve_discovery(fake: &fake_api::FakeApi, gadgets: bool) {
    fake.serve(
        "/api",
        serde_json::json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]}),
    );
    fake.serve(
        "/api/v1",
        resource_list(
            "v1",
            vec![
                api_resource("namespaces", "namespace", "Namespace", false),
                api_resource("namespaces/status", "", "Namespace", false),
                api_resource("pods", "pod", "Pod", true),
                api_resource("pods/log", "", "Pod", true),
                api_resource("nodes", "node", "Node", false),
            ],
        ),
    );
    let version = |gv: &str, v: &str| serde_json::json!({"groupVersion": gv, "version": v});
    fake.serve(
        "/apis",
        serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": "networking.k8s.io", "versions": [version("networking.k8s.io/v1", "v1")],
             "preferredVersion": version("networking.k8s.io/v1", "v1")},
            {"name": "example.com",
             "versions": [version("example.com/v1", "v1"), version("example.com/v1alpha1", "v1alpha1")],
             "preferredVersion": version("example.com/v1", "v1")},
            {"name": "custom.metrics.k8s.io",
             "versions": [version("custom.metrics.k8s.io/v1beta2", "v1beta2")],
             "preferredVersion": version("custom.metrics.k8s.io/v1beta2", "v1beta2")},
        ]}),
    );
    fake.serve(
        "/apis/networking.k8s.io/v1",
        resource_list(
            "networking.k8s.io/v1",
            vec![
                api_resource("ingresses", "ingress", "Ingress", true),
                api_resource("ingresses/status", "", "Ingress", true),
                api_resource("networkpolicies", "networkpolicy", "NetworkPolicy", true),
            ],
        ),
    );
    let mut v1 = vec![api_resource("widgets", "widget", "Widget", true)];
    if gadgets {
        v1.push(api_resource("gadgets", "gadget", "Gadget", true));
    }
    fake.serve("/apis/example.com/v1", resource_list("example.com/v1", v1));
    fake.serve(
        "/apis/example.com/v1alpha1",
        resource_list(
            "example.com/v1alpha1",
            vec![api_resource("widgets", "widget", "Widget", true)],
        ),
    );
}

async fn get_text(addr: SocketAddr, path: &str) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("http://{addr}{path}").parse().unwrap();
    let resp = client.get(uri).await.expect("request to the adapter");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The one item of a MetricValueList: its describedObject and value.
fn only_item(body: &Value) -> (Value, String) {
    assert_eq!(body["kind"], "MetricValueList", "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    (
        items[0]["describedObject"].clone(),
        items[0]["value"].as_str().unwrap().to_owned(),
    )
}

fn object(kind: &str, api_version: &str, ns: &str, name: &str) -> Value {
    serde_json::json!({"kind": kind, "apiVersion": api_version, "namespace": ns, "name": name})
}

/// Resources are mapped through the cluster's discovery, as prometheus-adapter's RESTMapper
/// maps them: a CRD and irregular plurals get their real plural, kind and `apiVersion` in
/// `describedObject`, label-selected objects are listed at the CRD's real path, and the
/// PromQL carries the right label matchers. A CRD installed after start is found on the first
/// request naming it (discovery is read again), an unknown resource is a 404 naming it, and
/// such re-reads are rate-limited. The API server is a stand-in (the repository's in-memory
/// fake behind kube-rs's client, serving real discovery JSON): no API server can run here.
/// Prometheus is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_mapped_through_the_clusters_discovery() {
    let prom = start_prometheus_loaded(None, crd_fixture(now_aligned()));
    let dir = TempDir::new("discovery");
    let cluster = fake_api::FakeApi::default();
    serve_discovery(&cluster, false);
    for (name, tier) in [("w1", "gold"), ("w2", "silver"), ("w3", "gold")] {
        cluster.put(
            "/apis/example.com/v1/widgets",
            serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": name, "namespace": "shop", "labels": {"tier": tier}}}),
        );
    }
    let hour = Duration::from_secs(3600);
    let adapter = start_custom_adapter_with(
        &prom,
        &dir,
        CRD_RULES,
        Duration::from_secs(30),
        Some(&cluster),
        gofe_metrics_adapter::resources::DiscoveryConfig {
            interval: hour,
            miss_gap: hour,
        },
    )
    .await;
    let a = adapter.addr();
    let discovery_reads = || cluster.log().iter().filter(|l| l.path == "/apis").count();
    assert_eq!(discovery_reads(), 1, "read once at start");
    assert!(
        !cluster
            .log()
            .iter()
            .any(|l| l.path.starts_with("/apis/custom.metrics.k8s.io")),
        "the metrics APIs' discovery is not read"
    );

    // The served metrics carry the discovered plurals and groups; no guessed plural.
    let (status, body) = get(a, CUSTOM).await;
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<&str> = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .filter(|n| !n.starts_with("namespaces/"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "ingresses.networking.k8s.io/ingress_requests_per_second",
            "networkpolicies.networking.k8s.io/policy_drops_per_second",
            "widgets.example.com/widget_queue_depth",
        ]
    );

    // One Widget: the CRD's kind and preferred version.
    let (status, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/widgets.example.com/w1/widget_queue_depth"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        only_item(&body),
        (
            object("Widget", "example.com/v1", "shop", "w1"),
            "3".to_owned()
        )
    );
    let last = |key: &str| adapter.provider().last_results()[key].query.clone();
    assert_eq!(
        last("widgets.example.com/widget_queue_depth"),
        r#"sum(widget_queue_depth{namespace="shop",widget="w1"}) by (widget)"#
    );

    // Widgets by label selector: listed at the CRD's path, the query names those listed.
    let (status, body) = get(
        a,
        &format!(
            "{CUSTOM}/namespaces/shop/widgets.example.com/*/widget_queue_depth?labelSelector={}",
            url_encode("tier=gold")
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        only_item(&body),
        (
            object("Widget", "example.com/v1", "shop", "w1"),
            "3".to_owned()
        ),
        "w3 is gold but has no series; w2 is silver"
    );
    assert_eq!(
        last("widgets.example.com/widget_queue_depth"),
        r#"sum(widget_queue_depth{namespace="shop",widget=~"w1|w3"}) by (widget)"#
    );
    assert!(
        cluster
            .log()
            .iter()
            .any(|l| l.path == "/apis/example.com/v1/namespaces/shop/widgets"),
        "{:?}",
        cluster.log().iter().map(|l| &l.path).collect::<Vec<_>>()
    );

    // Irregular plurals, from an override naming the kind and from a template.
    let (status, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/networkpolicies.networking.k8s.io/deny-all/policy_drops_per_second"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        only_item(&body),
        (
            object("NetworkPolicy", "networking.k8s.io/v1", "shop", "deny-all"),
            "2".to_owned()
        )
    );
    assert_eq!(
        last("networkpolicies.networking.k8s.io/policy_drops_per_second"),
        r#"sum(rate(policy_drops_total{namespace="shop",networkpolicy="deny-all"}[2m])) by (networkpolicy)"#
    );
    let (status, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/ingresses.networking.k8s.io/front/ingress_requests_per_second"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        only_item(&body),
        (
            object("Ingress", "networking.k8s.io/v1", "shop", "front"),
            "6".to_owned()
        )
    );
    assert_eq!(
        last("ingresses.networking.k8s.io/ingress_requests_per_second"),
        r#"sum(rate(ingress_requests_total{namespace="shop",ingress="front"}[2m])) by (ingress)"#
    );

    // A CRD installed since start: the first request naming it reads discovery again.
    serve_discovery(&cluster, true);
    let (status, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/gadgets.example.com/g1/gadget_load"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        only_item(&body),
        (
            object("Gadget", "example.com/v1", "shop", "g1"),
            "1500m".to_owned()
        )
    );
    assert_eq!(discovery_reads(), 2, "re-read on the unknown gadgets");

    // A resource the cluster does not have: 404 naming it, and (within the gap) no re-read.
    let (status, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/sprockets.example.com/s1/sprocket_load"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "NotFound");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("\"sprockets.example.com\"")
            && message.contains("not a resource of this cluster"),
        "{message}"
    );
    assert_eq!(discovery_reads(), 2, "rate-limited: no second re-read");
    let metrics = get_text(a, "/metrics").await;
    assert!(
        metrics.contains("gofe_adapter_resource_table{source=\"cluster\"} 1"),
        "{metrics}"
    );
    adapter.stop();

    // No discovery (the API server serves none): the built-in table, said so; a CRD is a 404
    // naming it, never a guessed plural.
    let bare = fake_api::FakeApi::default();
    let dir2 = TempDir::new("discovery-fallback");
    let adapter = start_custom_adapter(
        &prom,
        &dir2,
        CRD_RULES,
        Duration::from_secs(30),
        Some(&bare),
    )
    .await;
    let a = adapter.addr();
    let (status, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/ingresses.networking.k8s.io/front/ingress_requests_per_second"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        only_item(&body).0,
        object("Ingress", "networking.k8s.io/v1", "shop", "front")
    );
    let (status, body) = get(
        a,
        &format!("{CUSTOM}/namespaces/shop/widgets.example.com/w1/widget_queue_depth"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("\"widgets.example.com\"") && message.contains("built-in"),
        "{message}"
    );
    let metrics = get_text(a, "/metrics").await;
    assert!(
        metrics.contains("gofe_adapter_resource_table{source=\"builtin\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gofe_adapter_resource_discovery_total{result=\"error\"}"),
        "{metrics}"
    );
    adapter.stop();
}

// === bounded Prometheus load of custom metrics ===

/// Prometheus' own count of the queries it answered (instant and range) and of series
/// listings, from its `/metrics`.
async fn prometheus_own_counts(prom: &Prometheus) -> (f64, f64) {
    let text = get_text(prom.addr, "/metrics").await;
    let sum = |handlers: &[&str]| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("prometheus_http_requests_total{")
                    && handlers
                        .iter()
                        .any(|h| l.contains(&format!("handler=\"{h}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum(&["/api/v1/query", "/api/v1/query_range"]),
        sum(&["/api/v1/series"]),
    )
}

/// HPA-like polling of custom metrics costs Prometheus one query per distinct (metric,
/// objects, selector) per freshness interval, and the API server one Pod list per distinct
/// label selector, however many requests: 270 requests (54 per path: three label selectors,
/// one of them spelled two ways, and one Pod asked for by name as an Object metric would be)
/// within one interval make exactly 4 queries and 3 lists. Counted by the adapter and by Prometheus itself (no timing:
/// the freshness, 1 h, outlasts the test). The API server is the in-memory stand-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_metrics_queries_are_bounded_by_distinct_selectors() {
    let prom = start_prometheus_loaded(None, custom_fixture(now_aligned()));
    let dir = TempDir::new("custom-bounded");
    let cluster = fake_cluster();
    let adapter = start_custom_adapter(
        &prom,
        &dir,
        &combined_rules(),
        Duration::from_secs(3600),
        Some(&cluster),
    )
    .await;
    let a = adapter.addr();
    let (queries_before, _) = prometheus_own_counts(&prom).await;
    let adapter_before = adapter.provider().queries();
    let pods = |selector: &str| {
        format!(
            "{CUSTOM}/namespaces/shop/pods/*/http_requests_per_second?labelSelector={}",
            url_encode(selector)
        )
    };
    let paths: Vec<String> = vec![
        pods("app=web"),
        pods("app==web"),
        pods("app=api"),
        pods("app in (web,api)"),
        format!("{CUSTOM}/namespaces/shop/pods/web-2/http_requests_per_second"),
    ];
    let mut tasks = Vec::new();
    for round in 0..2 {
        for path in &paths {
            for _ in 0..if round == 0 { 30 } else { 24 } {
                let path = path.clone();
                tasks.push(tokio::spawn(async move { get(a, &path).await }));
            }
        }
    }
    let requests = tasks.len();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(requests, 270);
    let distinct = 4;
    assert_eq!(
        adapter.provider().queries() - adapter_before,
        distinct,
        "one query per distinct objects and selector"
    );
    let (queries_after, _) = prometheus_own_counts(&prom).await;
    assert!(
        queries_after - queries_before <= distinct as f64,
        "Prometheus answered {} queries",
        queries_after - queries_before
    );
    let lists = cluster
        .log()
        .iter()
        .filter(|l| l.path == "/api/v1/namespaces/shop/pods")
        .count();
    assert_eq!(lists, 3, "one Pod list per distinct label selector");
    adapter.stop();
}

// === seasonal forecasts, the spike path and queueing pressure over a day of history ===

/// A day of history and then some, in OpenMetrics text for promtool: every 30 s from 26 h
/// before `t0` to 30 min after it. Counters, by their rate per second at time `t`:
///
/// - `daily_requests_total{cluster="daily"}`: `100 + 50·cos(2π (t - t0) / 24h)`, a day's wave
///   at its peak at `t0`: 6 h on it is 100, where Holt (extrapolating the flat top) stays
///   near 150;
/// - `daily_requests_total{cluster="young"}`: the same, but only for the last 2 h;
/// - `jump_requests_total{cluster="jump"}`: 100, and 400 from 4 min before `t0`;
/// - the proxy's `gofe_upstream_requests_total` at 10/s for services `slow`, `fast` and
///   `blind`, with `gofe_upstream_request_duration_seconds_sum` growing 0.5 s/s for `slow`
///   (a mean latency of 50 ms: 0.5 in flight) and 0.1 s/s for `fast` (10 ms), none for `blind`.
fn seasonal_fixture(t0: i64) -> String {
    const DAY: f64 = 86_400.0;
    let tau = std::f64::consts::TAU;
    let wave = move |t: f64| 1e8 + 100.0 * t + 50.0 * DAY / tau * (tau * t / DAY).sin();
    let jump = |t: f64| 1e8 + 100.0 * t + 300.0 * (t + 240.0).max(0.0);
    type Counter = Box<dyn Fn(f64) -> f64>;
    let series: Vec<(&str, Counter, f64)> = vec![
        (
            r#"daily_requests_total{cluster="daily"}"#,
            Box::new(wave),
            -26.0 * 3600.0,
        ),
        (
            r#"daily_requests_total{cluster="young"}"#,
            Box::new(wave),
            -2.0 * 3600.0,
        ),
        (
            r#"jump_requests_total{cluster="jump"}"#,
            Box::new(jump),
            -26.0 * 3600.0,
        ),
        (
            r#"gofe_upstream_requests_total{cluster="slow",endpoint="10.0.0.1:80",code_class="2xx"}"#,
            Box::new(|t| 1e6 + 10.0 * t),
            -3600.0,
        ),
        (
            r#"gofe_upstream_request_duration_seconds_sum{cluster="slow",endpoint="10.0.0.1:80"}"#,
            Box::new(|t| 1e6 + 0.5 * t),
            -3600.0,
        ),
        (
            r#"gofe_upstream_requests_total{cluster="fast",endpoint="10.0.0.2:80",code_class="2xx"}"#,
            Box::new(|t| 1e6 + 10.0 * t),
            -3600.0,
        ),
        (
            r#"gofe_upstream_request_duration_seconds_sum{cluster="fast",endpoint="10.0.0.2:80"}"#,
            Box::new(|t| 1e6 + 0.1 * t),
            -3600.0,
        ),
        (
            r#"gofe_upstream_requests_total{cluster="blind",endpoint="10.0.0.3:80",code_class="2xx"}"#,
            Box::new(|t| 1e6 + 10.0 * t),
            -3600.0,
        ),
    ];
    let mut text = String::new();
    for (name, counter, from) in &series {
        let mut t = *from;
        while t <= 1800.0 {
            let _ = writeln!(text, "{name} {} {}", counter(t), t0 + t as i64);
            t += 30.0;
        }
    }
    text.push_str("# EOF\n");
    text
}

const SEASONAL_RULES: &str = r#"
builtinRules:
  metrics:
    http_requests_per_second:
      queueing: {target: 20ms}
externalRules:
- seriesQuery: 'daily_requests_total'
  resources: {namespaced: false}
  name: {matches: "^(.*)_total$", as: "${1}_holt_winters"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (cluster)
  forecast: {lead: 6h, method: holt-winters, period: 24h, window: 25h, step: 60s, fallback: none, floor: none}
- seriesQuery: 'daily_requests_total'
  resources: {namespaced: false}
  name: {matches: "^(.*)_total$", as: "${1}_floored"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (cluster)
  forecast: {lead: 6h, method: holt-winters, period: 24h, window: 25h, step: 60s, fallback: none}
- seriesQuery: 'daily_requests_total'
  resources: {namespaced: false}
  name: {matches: "^(.*)_total$", as: "${1}_holt"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (cluster)
  forecast: {lead: 6h, window: 25h, step: 60s, floor: none}
- seriesQuery: 'jump_requests_total'
  resources: {namespaced: false}
  name: {matches: "^(.*)_total$", as: "${1}_smooth"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (cluster)
  forecast: {lead: 60s, method: holt-winters, period: 24h, window: 25h, step: 60s, alpha: 0.1, beta: 0.01, floor: none}
- seriesQuery: 'jump_requests_total'
  resources: {namespaced: false}
  name: {matches: "^(.*)_total$", as: "${1}_spike"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (cluster)
  forecast: {lead: 60s, method: holt-winters, period: 24h, window: 25h, step: 60s, alpha: 0.1, beta: 0.01, spike: {k: 4}, floor: none}
"#;

/// Holt-Winters with a 24 h season over a day of Prometheus history (25 h at 60 s: 1,500
/// points a series, within Prometheus' 11,000) forecasts the wave where Holt cannot and, with
/// the default floor, serves no less than the current rate; it refuses a series younger than a
/// day (`fallback: none`), the spike path serves a jump at once where the smoothing lags, and the queueing pressure of the built-in rate is
/// `max(rate, in flight / target)` per service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seasonal_forecast_spike_path_and_queueing_pressure_over_a_day_of_history() {
    let prom = start_prometheus_loaded(None, seasonal_fixture(now_aligned()));
    let dir = TempDir::new("seasonal");
    let rules = dir.0.join("rules.yaml");
    std::fs::write(&rules, SEASONAL_RULES).unwrap();
    let adapter = Adapter::start(AdapterOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        prometheus_url: prom.url(),
        prometheus_ca_file: None,
        query_timeout: Duration::from_secs(10),
        rules_file: Some(rules),
        cache: CacheConfig {
            freshness: Duration::from_secs(30),
            capacity: 1000,
        },
        relist_interval: Duration::from_secs(60),
        discovery_lookback: Duration::from_secs(3600),
        resource_discovery: Default::default(),
        tls: None,
        scrape: Vec::new(),
        scrape_interval: Duration::from_secs(5),
    })
    .await
    .expect("starting the adapter");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !adapter.provider().ready() {
        assert!(Instant::now() < deadline, "external rules never discovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = adapter.addr();
    // A Kubernetes quantity (`100500m`) as a number.
    let value = |items: Vec<(BTreeMap<String, String>, String)>| -> f64 {
        gofe_core::quantity::parse_milli(one(&items)).unwrap() as f64 / 1000.0
    };

    // 6 h after the peak the wave is at its mean, 100: Holt-Winters has seen that phase a day
    // ago; Holt extrapolates the flat top.
    let (s, items, body) =
        values(a, "default", "daily_requests_holt_winters", "cluster=daily").await;
    assert_eq!(s, 200, "{body}");
    let seasonal = value(items);
    let (_, items, _) = values(a, "default", "daily_requests_holt", "cluster=daily").await;
    let holt = value(items);
    assert!((seasonal - 100.0).abs() < 3.0, "holt-winters {seasonal}");
    assert!((holt - 100.0).abs() > 30.0, "holt {holt}");
    // With the default floor the same forecast serves the current rate, the top of the wave
    // (150): it may lead the rate, never lag it.
    let (_, items, _) = values(a, "default", "daily_requests_floored", "cluster=daily").await;
    let floored = value(items);
    assert!((floored - 150.0).abs() < 3.0, "floored {floored}");

    // Two hours of history is less than a period: refused (fallback: none), not guessed.
    let (s, _, body) = values(a, "default", "daily_requests_holt_winters", "cluster=young").await;
    assert_eq!(s, 404, "{body}");

    // The jump to 400 req/s: the slow smoothing is still far below, the spike path serves it.
    let (_, items, _) = values(a, "default", "jump_requests_smooth", "cluster=jump").await;
    let smooth = value(items);
    let (_, items, _) = values(a, "default", "jump_requests_spike", "cluster=jump").await;
    let spike = value(items);
    assert!(smooth < 300.0, "smooth {smooth}");
    assert!(spike >= 399.0, "spike {spike}");

    // Queueing pressure: 10 req/s at 50 ms is 0.5 in flight, / 20 ms = 25; at 10 ms it stays
    // the rate, 10; without latency data, the rate.
    for (service, want) in [("slow", "25"), ("fast", "10"), ("blind", "10")] {
        let (s, items, body) = values(
            a,
            "default",
            "http_requests_per_second",
            &format!("service={service}"),
        )
        .await;
        assert_eq!(s, 200, "{service}: {body}");
        assert_eq!(one(&items), want, "{service}");
    }
}
