//! Fault injection over real sockets: aborts at a percentage (within a statistical bound) that
//! never reach the backend, delays the access log's `%DURATION%` proves, header-controlled
//! faults only where a route enables them, `max_active_faults`, and Envoy's `FI`/`DI` flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// A log file in the temp directory, removed when dropped.
struct LogFile(PathBuf);

impl LogFile {
    fn new(test: &str) -> LogFile {
        let path =
            std::env::temp_dir().join(format!("gofe-fault-{test}-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        LogFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }

    /// Waits (bounded) until the file holds `n` lines; returns them.
    async fn lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} lines: {text:?}",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A listener logging `path code flags duration route` to `log`, with two routes to the
/// cluster `web`: `/faulty` with `fault` (a YAML flow mapping) and `/plain` without.
fn config(log: &LogFile, fault: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - address: "127.0.0.1:0"
    access_log:
      - path: "{path}"
        format: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %DURATION% %ROUTE_NAME%\n"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - name: faulty
                  match: {{ prefix: "/faulty" }}
                  route: {{ cluster: web }}
                  fault: {fault}
                - name: plain
                  match: {{ prefix: "/plain" }}
                  route: {{ cluster: web }}
clusters:
  - {{ name: web, endpoints: [{{ address: "{{B0}}" }}] }}
"#,
        path = log.path(),
    )
}

async fn metrics(h: &Harness) -> String {
    let admin = h.admin.expect("the test config has an admin listener");
    let r = get(
        &h1_client(),
        &format!("http://{admin}/metrics"),
        "admin",
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    r.text()
}

/// `n` draws at `p` land within five standard deviations of `n·p` (a false alarm about once in
/// 1.7 million runs).
fn assert_binomial(hits: u64, n: u64, p: f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (hits as f64 - mean).abs() <= 5.0 * sd,
        "{hits} of {n} at {p}: expected {mean} ± {}",
        5.0 * sd
    );
}

#[tokio::test]
async fn aborts_hold_their_percentage_and_never_reach_the_backend() {
    let log = LogFile::new("abort");
    let (b, vars) = backends(&["b0"]).await;
    let yaml = config(
        &log,
        "{ abort: { http_status: 503, percentage: { numerator: 25 } } }",
    );
    let h = Arc::new(Harness::start(&fill(&yaml, &vars)).await);
    const N: u64 = 4000;
    const TASKS: u64 = 4;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let c = h1_client();
            let mut aborted = 0u64;
            for _ in 0..N / TASKS {
                let r = get(&c, &h.url("/faulty"), "api.test", &[]).await;
                match r.status.as_u16() {
                    503 => {
                        assert_eq!(r.text(), "fault filter abort");
                        assert_eq!(r.backend(), "");
                        aborted += 1;
                    }
                    200 => assert_eq!(r.backend(), "b0"),
                    s => panic!("unexpected status {s}"),
                }
            }
            aborted
        }));
    }
    let mut aborted = 0;
    for t in tasks {
        aborted += t.await.unwrap();
    }
    assert_binomial(aborted, N, 0.25);
    assert_eq!(
        b[0].served(),
        N - aborted,
        "no aborted request reached the backend"
    );
    let m = metrics(&h).await;
    assert_eq!(
        metric(
            &m,
            r#"gofe_fault_injected_total{kind="abort",route="faulty"}"#
        ),
        Some(aborted as f64)
    );
    let endpoint = vars["{B0}"].clone();
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"gofe_upstream_requests_total{{cluster="web",code_class="2xx",endpoint="{endpoint}"}}"#
            )
        ),
        Some((N - aborted) as f64),
        "the endpoint counts only what it served"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"gofe_upstream_requests_total{{cluster="web",code_class="5xx",endpoint="{endpoint}"}}"#
            )
        )
        .unwrap_or(0.0),
        0.0,
        "aborts are not the endpoint's"
    );
    let lines = log.lines(N as usize).await;
    let fi = lines.iter().filter(|l| l.contains(" 503 FI ")).count() as u64;
    assert_eq!(fi, aborted, "each abort is logged with FI");
    assert_eq!(
        lines.iter().filter(|l| l.contains(" 200 - ")).count() as u64,
        N - aborted
    );
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_delay_is_in_the_logged_duration_and_flagged_di() {
    let log = LogFile::new("delay");
    let (b, vars) = backends(&["b0"]).await;
    let yaml = config(
        &log,
        "{ delay: { fixed_delay: \"300ms\", percentage: { numerator: 100 } } }",
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let c = h1_client();
    assert_eq!(get(&c, &h.url("/faulty"), "x", &[]).await.status, 200);
    assert_eq!(get(&c, &h.url("/plain"), "x", &[]).await.status, 200);
    let lines = log.lines(2).await;
    let f: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(f[..3], ["/faulty", "200", "DI"], "{}", lines[0]);
    let ms: u64 = f[3].parse().unwrap();
    assert!(
        ms >= 300,
        "a delayed request lasts at least its delay: {ms} ms"
    );
    assert_eq!(f[4], "faulty");
    assert!(lines[1].starts_with("/plain 200 - "), "{}", lines[1]);
    assert_eq!(
        b[0].served(),
        2,
        "a delayed request still reaches the backend"
    );
    let m = metrics(&h).await;
    assert_eq!(
        metric(
            &m,
            r#"gofe_fault_injected_total{kind="delay",route="faulty"}"#
        ),
        Some(1.0)
    );
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn header_faults_only_where_the_route_enables_them() {
    let log = LogFile::new("header");
    let (b, vars) = backends(&["b0"]).await;
    let yaml = config(
        &log,
        "{ abort: { header_abort: {}, percentage: { numerator: 100 } }, delay: { header_delay: {}, percentage: { numerator: 100 } } }",
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let c = h1_client();
    let abort = [("x-envoy-fault-abort-request", "418")];
    // Enabled: the header's status; without the header, nothing.
    assert_eq!(get(&c, &h.url("/faulty"), "x", &abort).await.status, 418);
    assert_eq!(get(&c, &h.url("/faulty"), "x", &[]).await.status, 200);
    // A percentage header of 0 turns it off for that request.
    let off = [
        ("x-envoy-fault-abort-request", "418"),
        ("x-envoy-fault-abort-request-percentage", "0"),
    ];
    assert_eq!(get(&c, &h.url("/faulty"), "x", &off).await.status, 200);
    // Not enabled on this route: the headers do nothing.
    let r = get(
        &c,
        &h.url("/plain"),
        "x",
        &[
            ("x-envoy-fault-abort-request", "418"),
            ("x-envoy-fault-delay-request", "5000"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    // A delay from the header.
    let delay = [("x-envoy-fault-delay-request", "250")];
    assert_eq!(get(&c, &h.url("/faulty"), "x", &delay).await.status, 200);
    let lines = log.lines(5).await;
    assert!(lines[0].starts_with("/faulty 418 FI "), "{}", lines[0]);
    assert!(lines[1].starts_with("/faulty 200 - "), "{}", lines[1]);
    assert!(lines[2].starts_with("/faulty 200 - "), "{}", lines[2]);
    assert!(lines[3].starts_with("/plain 200 - "), "{}", lines[3]);
    let f: Vec<&str> = lines[4].split(' ').collect();
    assert_eq!(f[..3], ["/faulty", "200", "DI"], "{}", lines[4]);
    assert!(f[3].parse::<u64>().unwrap() >= 250, "{}", lines[4]);
    assert_eq!(b[0].served(), 4, "only the abort stayed away");
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn over_max_active_faults_a_request_goes_through_unfaulted_and_is_counted() {
    let log = LogFile::new("overflow");
    let (b, vars) = backends(&["b0"]).await;
    let yaml = config(
        &log,
        "{ delay: { fixed_delay: \"1s\", percentage: { numerator: 100 } }, max_active_faults: 1 }",
    );
    let h = Arc::new(Harness::start(&fill(&yaml, &vars)).await);
    let first = {
        let h = Arc::clone(&h);
        tokio::spawn(async move { get(&h1_client(), &h.url("/faulty"), "x", &[]).await.status })
    };
    // Wait (bounded) until the first request is being delayed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &metrics(&h).await,
        r#"gofe_fault_active{listener="127.0.0.1:0"}"#,
    ) != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "the first request was never delayed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = get(&h1_client(), &h.url("/faulty"), "x", &[]).await;
    assert_eq!(r.status, 200);
    let m = metrics(&h).await;
    assert_eq!(
        metric(&m, r#"gofe_fault_overflow_total{route="faulty"}"#),
        Some(1.0)
    );
    assert_eq!(first.await.unwrap(), 200);
    let lines = log.lines(2).await;
    assert!(
        lines[0].starts_with("/faulty 200 - "),
        "overflowed: {}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("/faulty 200 DI "),
        "delayed: {}",
        lines[1]
    );
    assert_eq!(
        metric(
            &metrics(&h).await,
            r#"gofe_fault_active{listener="127.0.0.1:0"}"#
        ),
        Some(0.0)
    );
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_grpc_abort_is_a_grpc_status() {
    let log = LogFile::new("grpc");
    let (b, vars) = backends(&["b0"]).await;
    let yaml = config(
        &log,
        "{ abort: { grpc_status: 14, percentage: { numerator: 100 } } }",
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let r = get(
        &h2c_client(),
        &h.url("/faulty"),
        "x",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "14");
    assert_eq!(r.headers["grpc-message"], "fault filter abort");
    assert!(r.body.is_empty());
    assert_eq!(b[0].served(), 0);
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}

#[test]
fn a_percentage_over_its_denominator_is_refused_with_file_line_and_field() {
    let log = LogFile::new("refused");
    let yaml = config(
        &log,
        "{ abort: { http_status: 503, percentage: { numerator: 250, denominator: HUNDRED } } }",
    )
    .replace("{B0}", "127.0.0.1:9");
    let e = gofe_proxy::config::parse("proxy.yaml", &yaml)
        .expect_err("the percentage is over 100 %")
        .to_string();
    let field = "listeners[0].filters[0].config.virtual_hosts[0].routes[0].fault.abort.percentage.numerator";
    // Line 18 is the route's `fault:`; column 80 its numerator.
    assert!(e.starts_with("proxy.yaml:18:80: "), "{e}");
    assert!(e.contains(field), "{e}");
    assert!(e.contains("250 is more than the denominator (100)"), "{e}");
}

#[tokio::test]
async fn delays_hold_their_percentage() {
    let log = LogFile::new("delay-share");
    let (b, vars) = backends(&["b0"]).await;
    let yaml = config(
        &log,
        "{ delay: { fixed_delay: \"1ms\", percentage: { numerator: 2500, denominator: TEN_THOUSAND } } }",
    );
    let h = Arc::new(Harness::start(&fill(&yaml, &vars)).await);
    const N: u64 = 2000;
    const TASKS: u64 = 4;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let c = h1_client();
            for _ in 0..N / TASKS {
                assert_eq!(get(&c, &h.url("/faulty"), "x", &[]).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let lines = log.lines(N as usize).await;
    let delayed = lines.iter().filter(|l| l.contains(" 200 DI ")).count() as u64;
    assert_binomial(delayed, N, 0.25);
    let m = metrics(&h).await;
    assert_eq!(
        metric(
            &m,
            r#"gofe_fault_injected_total{kind="delay",route="faulty"}"#
        ),
        Some(delayed as f64)
    );
    assert_eq!(b[0].served(), N, "delayed requests still reach the backend");
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_virtual_host_s_fault_applies_to_its_routes_without_their_own() {
    let (b, vars) = backends(&["b0"]).await;
    let yaml = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              fault:
                abort: { http_status: 418, percentage: { numerator: 100 } }
              routes:
                - match: { prefix: "/inherits" }
                  route: { cluster: web }
                - match: { prefix: "/own" }
                  route: { cluster: web }
                  fault:
                    abort: { http_status: 503, percentage: { numerator: 100 } }
                - match: { prefix: "/opted-out" }
                  route: { cluster: web }
                  fault: {}
clusters:
  - { name: web, endpoints: [{ address: "{B0}" }] }
"#;
    let h = Harness::start(&fill(yaml, &vars)).await;
    let c = h1_client();
    let mut statuses = Vec::new();
    for path in ["/inherits", "/own", "/opted-out"] {
        statuses.push(get(&c, &h.url(path), "x", &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [418, 503, 200]);
    assert_eq!(
        b[0].served(),
        1,
        "only the opted-out route reached the backend"
    );
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}
