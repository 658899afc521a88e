//! Access logs over real sockets: each request's line, with Envoy's response flags saying why
//! the proxy answered as it did, written to a file (text or JSON) by the proxy's writer.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gofe_proxy::demo::Broken;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// Every value a line can say about a request, separated by `|`.
const FORMAT: &str = "%REQ(:METHOD)%|%REQ(:PATH)%|%PROTOCOL%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%UPSTREAM_CLUSTER%|%UPSTREAM_HOST%|%BYTES_SENT%|%BYTES_RECEIVED%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%REQ(X-TEST?USER-AGENT):6%|%RESP(X-BACKEND)%|%UPSTREAM_TRANSPORT_FAILURE_REASON%|%DURATION%|%ROUTE_NAME%";

/// A log file in the temp directory, removed when dropped.
struct LogFile(PathBuf);

impl LogFile {
    fn new(test: &str) -> LogFile {
        let path =
            std::env::temp_dir().join(format!("gofe-access-log-{test}-{}.log", std::process::id()));
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
                "{} of {n} lines logged: {text:?}",
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

/// A listener logging to `log` in `format` (a YAML value), whose route `/api` goes to the
/// cluster `web` (`route` adds fields to the route action, `cluster` makes up the cluster).
fn config(log: &LogFile, format: &str, route: &str, cluster: &str) -> String {
    format!(
        r#"
listeners:
  - address: "127.0.0.1:0"
    access_log:
      - path: "{path}"
        {format}
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["api.test", "127.0.0.1"]
              routes:
                - name: api-route
                  match: {{ prefix: "/api" }}
                  route: {{ cluster: web{route} }}
clusters:
  - {{ name: web, {cluster} }}
"#,
        path = log.path(),
    )
}

fn text_format() -> String {
    format!("format: '{FORMAT}'")
}

/// The fields of a line written in [`FORMAT`].
fn fields(line: &str) -> Vec<&str> {
    let f: Vec<&str> = line.split('|').collect();
    assert_eq!(f.len(), 15, "{line}");
    f
}

#[tokio::test]
async fn a_success_is_logged_with_no_flags_and_its_values() {
    let log = LogFile::new("success");
    let (b, vars) = backends(&["b0"]).await;
    let yaml = config(
        &log,
        &text_format(),
        "",
        "endpoints: [{ address: \"{B0}\" }]",
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let c = h1_client();
    let r = get(
        &c,
        &h.url("/api/hello?x=1"),
        "api.test",
        &[("user-agent", "curl/8.5.0")],
    )
    .await;
    assert_eq!(r.status, 200);
    let lines = log.lines(1).await;
    let f = fields(&lines[0]);
    assert_eq!(f[0], "GET");
    assert_eq!(f[1], "/api/hello?x=1");
    assert_eq!(f[2], "HTTP/1.1");
    assert_eq!(f[3], "200");
    assert_eq!(f[4], "-", "no flags");
    assert_eq!(f[5], "web");
    assert_eq!(f[6], b[0].addr().to_string());
    assert_eq!(f[7], r.body.len().to_string(), "bytes sent");
    assert_eq!(f[8], "0", "no request body");
    assert_eq!(f[9], "127.0.0.1");
    assert_eq!(f[10], "curl/8", "the alternative, cut to 6 characters");
    assert_eq!(f[11], "b0", "a response header");
    assert_eq!(f[12], "-", "no transport failure");
    assert!(f[13].parse::<u64>().is_ok(), "a duration in ms: {}", f[13]);
    assert_eq!(f[14], "api-route");

    // h2c too (its :authority is the URI's), with a request body counted.
    let c = h2c_client();
    let req = http::Request::post(h.url("/api/echo"))
        .header("host", "api.test")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"12345",
        )))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 200);
    let lines = log.lines(2).await;
    let f = fields(&lines[1]);
    assert_eq!((f[0], f[2], f[4]), ("POST", "HTTP/2", "-"));
    assert_eq!(f[8], "5", "bytes received");
    assert_eq!(f[7], r.body.len().to_string());

    // The drop counter is there, at zero.
    let text = h.proxy.metrics_text();
    assert_eq!(
        metric(
            &text,
            r#"gofe_access_log_dropped_total{listener="127.0.0.1:0"}"#
        ),
        Some(0.0),
        "{text}"
    );
    for b in b {
        b.stop().await;
    }
}

/// Requests to a backend broken in `how` are logged with `flag` (and answered `status`).
async fn broken_backend_is_logged(test: &str, how: Broken, route: &str, status: u16, flag: &str) {
    broken_backend_is_logged_over(test, how, route, status, flag, "").await;
}

/// The same, with `cluster` fields added (`http2_protocol_options: {}, `).
async fn broken_backend_is_logged_over(
    test: &str,
    how: Broken,
    route: &str,
    status: u16,
    flag: &str,
    cluster: &str,
) {
    let log = LogFile::new(test);
    let (b, vars) = backends(&["b0"]).await;
    b[0].set_broken(how);
    let cluster = format!("{cluster}endpoints: [{{ address: \"{{B0}}\" }}]");
    let yaml = config(&log, &text_format(), route, &cluster);
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let r = get(&h1_client(), &h.url("/api"), "api.test", &[]).await;
    assert_eq!(r.status, status, "{}", r.text());
    let lines = log.lines(1).await;
    let f = fields(&lines[0]);
    assert_eq!(f[3], status.to_string());
    assert_eq!(f[4], flag, "{}", lines[0]);
    assert_eq!(f[6], b[0].addr().to_string(), "the endpoint tried");
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn an_upstream_reset_is_uc() {
    broken_backend_is_logged("reset", Broken::Reset, "", 502, "UC").await;
}

#[tokio::test]
async fn an_upstream_closing_without_an_answer_is_uc() {
    broken_backend_is_logged("half-close", Broken::HalfClose, "", 502, "UC").await;
}

#[tokio::test]
async fn an_upstream_answering_garbage_is_upe() {
    broken_backend_is_logged("garbage", Broken::Garbage, "", 502, "UPE").await;
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_ut() {
    broken_backend_is_logged("silent", Broken::Silent, ", timeout: \"200ms\"", 504, "UT").await;
}

#[tokio::test]
async fn over_http2_a_reset_is_uc_and_no_answer_ut() {
    let h2 = "http2_protocol_options: {}, ";
    broken_backend_is_logged_over("h2-reset", Broken::Reset, "", 502, "UC", h2).await;
    let timeout = ", timeout: \"200ms\"";
    broken_backend_is_logged_over("h2-silent", Broken::Silent, timeout, 504, "UT", h2).await;
}

#[tokio::test]
async fn retries_used_up_add_urx() {
    broken_backend_is_logged(
        "retries",
        Broken::Reset,
        ", retry_policy: { retry_on: \"reset\", num_retries: 1 }",
        502,
        "UC,URX",
    )
    .await;
}

#[tokio::test]
async fn no_route_no_healthy_upstream_and_connect_failure_have_their_flags() {
    let log = LogFile::new("local");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let yaml = format!(
        r#"
listeners:
  - address: "127.0.0.1:0"
    access_log:
      - path: "{path}"
        {format}
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["api.test"]
              routes:
                - match: {{ prefix: "/api" }}
                  route: {{ cluster: web }}
                - match: {{ prefix: "/empty" }}
                  route: {{ cluster: empty }}
clusters:
  - {{ name: web, endpoints: [{{ address: "{refused}" }}] }}
  - {{ name: empty, endpoints: [] }}
"#,
        path = log.path(),
        format = text_format(),
    );
    let h = Harness::start(&yaml).await;
    let c = h1_client();
    assert_eq!(
        get(&c, &h.url("/nowhere"), "api.test", &[]).await.status,
        404
    );
    assert_eq!(get(&c, &h.url("/api"), "other.test", &[]).await.status, 404);
    assert_eq!(get(&c, &h.url("/empty"), "api.test", &[]).await.status, 503);
    assert_eq!(get(&c, &h.url("/api"), "api.test", &[]).await.status, 503);
    let lines = log.lines(4).await;
    let f: Vec<Vec<&str>> = lines.iter().map(|l| fields(l)).collect();
    assert_eq!(
        (f[0][3], f[0][4], f[0][5], f[0][14]),
        ("404", "NR", "-", "-"),
        "no route"
    );
    assert_eq!((f[1][3], f[1][4]), ("404", "NR"), "no virtual host");
    assert_eq!(
        (f[2][3], f[2][4], f[2][5], f[2][6]),
        ("503", "UH", "empty", "-"),
        "no healthy upstream"
    );
    assert_eq!((f[3][3], f[3][4]), ("503", "UF"), "connect failure");
    assert_eq!(f[3][6], refused.to_string());
    assert!(
        f[3][12].contains("refused"),
        "the OS's reason: {}",
        f[3][12]
    );
}

#[tokio::test]
async fn a_client_gone_mid_body_is_dc() {
    let log = LogFile::new("dc");
    let (b, vars) = backends(&["b0"]).await;
    let yaml = config(
        &log,
        &text_format(),
        "",
        "endpoints: [{ address: \"{B0}\" }]",
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"POST /api HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\nonly part")
        .await
        .unwrap();
    drop(s);
    let lines = log.lines(1).await;
    let f = fields(&lines[0]);
    assert_eq!((f[0], f[3], f[4]), ("POST", "0", "DC"), "{}", lines[0]);
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_json_line_parses_back_as_json() {
    let log = LogFile::new("json");
    let (b, vars) = backends(&["b0"]).await;
    let format = r#"json_format: { code: "%RESPONSE_CODE%", flags: "%RESPONSE_FLAGS%", path: "%REQ(:PATH)%", upstream: "%UPSTREAM_HOST%", missing: "%REQ(X-NOT-SENT)%", said: "%REQ(:METHOD)% to %UPSTREAM_CLUSTER%", start: "%START_TIME%" }"#;
    let yaml = config(&log, format, "", "endpoints: [{ address: \"{B0}\" }]");
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let r = get(&h1_client(), &h.url("/api/\"quoted\""), "api.test", &[]).await;
    assert_eq!(r.status, 200);
    let lines = log.lines(1).await;
    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(v["code"], 200, "a number: {v}");
    assert_eq!(v["flags"], "-");
    assert_eq!(v["upstream"], b[0].addr().to_string());
    assert_eq!(v["missing"], serde_json::Value::Null);
    assert_eq!(v["said"], "GET to web");
    let start = v["start"].as_str().unwrap();
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
        "RFC 3339 with milliseconds: {start}"
    );
    assert!(v["path"].as_str().unwrap().starts_with("/api/"));
    for b in b {
        b.stop().await;
    }
}

#[test]
fn an_unknown_operator_is_refused_with_its_line() {
    let log = LogFile::new("refused");
    let yaml = config(
        &log,
        "format: '%REQ(:PATH)% %RESPONSE_CODES%'",
        "",
        "endpoints: []",
    );
    let e = gofe_proxy::config::parse("proxy.yaml", &yaml).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("proxy.yaml:6:")
            && text.contains("listeners[0].access_log[0].format")
            && text.contains("unknown operator %RESPONSE_CODES%"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_log_and_takes_a_changed_format() {
    let log = LogFile::new("reload");
    let (b, vars) = backends(&["b0"]).await;
    let cluster = "endpoints: [{ address: \"{B0}\" }]";
    let first = fill(
        &config(&log, "format: 'one %RESPONSE_CODE%'", "", cluster),
        &vars,
    );
    let h = Harness::start(&first).await;
    let c = h1_client();
    get(&c, &h.url("/api"), "api.test", &[]).await;
    h.apply(&first).await;
    get(&c, &h.url("/api"), "api.test", &[]).await;
    let second = fill(
        &config(&log, "format: 'two %RESPONSE_CODE%'", "", cluster),
        &vars,
    );
    h.apply(&second).await;
    get(&c, &h.url("/api"), "api.test", &[]).await;
    // Lines of the old and the new writer may land in either order.
    let mut lines = log.lines(3).await;
    lines.sort();
    assert_eq!(lines, ["one 200", "one 200", "two 200"]);
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn shutdown_writes_every_line_before_it_returns() {
    let log = LogFile::new("shutdown");
    let (b, vars) = backends(&["b0"]).await;
    let yaml = config(
        &log,
        "format: '%RESPONSE_CODE%'",
        "",
        "endpoints: [{ address: \"{B0}\" }]",
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let c = h1_client();
    for _ in 0..20 {
        assert_eq!(get(&c, &h.url("/api"), "api.test", &[]).await.status, 200);
    }
    drop(c);
    h.proxy.shutdown(Duration::from_secs(5)).await;
    // No waiting: the lines are there once shutdown is over.
    let text = std::fs::read_to_string(&log.0).unwrap();
    assert_eq!(text.lines().filter(|l| *l == "200").count(), 20, "{text:?}");
    for b in b {
        b.stop().await;
    }
}

/// An upstream on a raw socket that answers every request with `response` and closes.
async fn raw_upstream(
    response: &'static [u8],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s.write_all(response).await;
            let _ = s.shutdown().await;
        }
    });
    (addr, task)
}

#[tokio::test]
async fn bodies_read_until_close_or_chunked_end_without_flags() {
    for (response, body) in [
        (
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nread until the upstream closes"[..],
            "read until the upstream closes",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"[..],
            "hello world",
        ),
    ] {
        let log = LogFile::new("framing");
        let (addr, task) = raw_upstream(response).await;
        let yaml = config(
            &log,
            &text_format(),
            "",
            &format!("endpoints: [{{ address: \"{addr}\" }}]"),
        );
        let h = Harness::start(&yaml).await;
        let r = get(&h1_client(), &h.url("/api"), "api.test", &[]).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, body));
        let lines = log.lines(1).await;
        let f = fields(&lines[0]);
        assert_eq!(f[4], "-", "the body ended, nobody went away: {}", lines[0]);
        assert_eq!(f[7], body.len().to_string());
        task.abort();
    }
}

#[tokio::test]
async fn a_request_over_a_circuit_breaker_is_uo() {
    let log = LogFile::new("overflow");
    let (b, vars) = backends(&["b0"]).await;
    b[0].set_broken(Broken::Silent);
    let yaml = config(
        &log,
        &text_format(),
        ", timeout: \"1s\"",
        "circuit_breakers: { max_requests: 1 }, endpoints: [{ address: \"{B0}\" }]",
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let url = h.url("/api/first");
    let first = tokio::spawn(async move { get(&h1_client(), &url, "api.test", &[]).await });
    // Once the first is in flight, the second is over max_requests.
    let active = format!(
        r#"gofe_upstream_requests_active{{cluster="web",endpoint="{}"}}"#,
        b[0].addr()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&h.proxy.metrics_text(), &active) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the first request never went out"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = get(&h1_client(), &h.url("/api/second"), "api.test", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(first.await.unwrap().status, 504);
    let lines = log.lines(2).await;
    let second = lines.iter().find(|l| l.contains("/api/second")).unwrap();
    let f = fields(second);
    assert_eq!((f[3], f[4], f[6]), ("503", "UO", "-"), "{second}");
    let first = lines.iter().find(|l| l.contains("/api/first")).unwrap();
    assert_eq!(fields(first)[4], "UT", "{first}");
    for b in b {
        b.stop().await;
    }
}
