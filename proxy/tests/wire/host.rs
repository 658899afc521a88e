//! Host confusion (RFC 9112 §3.2, §3.2.2; RFC 9113 §8.3.1): a request is routed by exactly one
//! authority, and the backend gets that same authority as its `Host`, never another.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const CONFIG: &str = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: a
              domains: ["a.example", "127.0.0.1"]
              routes:
                - match: { prefix: "/" }
                  route: { cluster: a }
            - name: b
              domains: ["b.example"]
              routes:
                - match: { prefix: "/" }
                  route: { cluster: b }
clusters:
  - { name: a, endpoints: [{ address: "{A}" }] }
  - { name: b, endpoints: [{ address: "{B}" }] }
"#;

struct Fixture {
    h: Harness,
    a: Capture,
    b: Capture,
}

async fn start() -> Fixture {
    let a = Capture::start("a").await;
    let b = Capture::start("b").await;
    let config = CONFIG
        .replace("{A}", &a.addr.to_string())
        .replace("{B}", &b.addr.to_string());
    Fixture {
        h: Harness::start(&config).await,
        a,
        b,
    }
}

impl Fixture {
    async fn stop(self) {
        self.h.proxy.shutdown(Duration::ZERO).await;
        self.a.stop().await;
        self.b.stop().await;
    }
}

/// Writes `raw` on a new connection and reads until the proxy closes it (bounded).
async fn exchange(f: &Fixture, raw: &str) -> String {
    let mut s = TcpStream::connect(f.h.addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn backend_of(response: &str) -> Option<&str> {
    response
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .map(str::trim)
}

#[tokio::test]
async fn an_http11_request_without_host_or_with_two_gets_400() {
    let f = start().await;
    for raw in [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        "GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@b.example\r\nConnection: close\r\n\r\n",
    ] {
        let resp = exchange(&f, raw).await;
        assert_eq!(status_of(&resp), 400, "{raw:?} → {resp:?}");
    }
    assert!(
        f.a.hosts().is_empty() && f.b.hosts().is_empty(),
        "no backend saw them"
    );
    // A well-formed one still goes through, with its Host.
    let resp = exchange(
        &f,
        "GET / HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status_of(&resp), backend_of(&resp)),
        (200, Some("b")),
        "{resp:?}"
    );
    assert_eq!(f.b.hosts(), [["b.example"]]);
    f.stop().await;
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_authority_and_sent_as_host() {
    let f = start().await;
    let resp = exchange(
        &f,
        "GET http://a.example/p HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status_of(&resp), backend_of(&resp)),
        (200, Some("a")),
        "{resp:?}"
    );
    assert_eq!(
        f.a.hosts(),
        [["a.example"]],
        "the routed authority, and only it"
    );
    assert!(f.b.hosts().is_empty());
    f.stop().await;
}

#[tokio::test]
async fn an_http2_host_header_that_differs_from_authority_is_dropped() {
    let f = start().await;
    // :authority is 127.0.0.1:PORT (virtual host a); the host header says b.example.
    let client = h2c_client();
    let req = Request::get(f.h.url("/p"))
        .header("host", "b.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&client, req).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "a"), "{r:?}");
    assert_eq!(
        f.a.hosts(),
        [[f.h.addr.to_string()]],
        "the :authority it was routed by"
    );
    assert!(f.b.hosts().is_empty());
    // Without a host header, the same.
    let r = get_h2_plain(&client, &f.h.url("/q")).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, "a"));
    assert_eq!(f.a.hosts().len(), 2);
    assert_eq!(f.a.hosts()[1], [f.h.addr.to_string()]);
    f.stop().await;
}

async fn get_h2_plain(client: &TestClient, url: &str) -> Reply {
    send(
        client,
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

const H2_UPSTREAM: &str = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: { prefix: "/" }
                  route: { cluster: h2 }
clusters:
  - name: h2
    http2_protocol_options: {}
    endpoints: [{ address: "{B0}" }]
"#;

/// The authorities an HTTP/2 backend saw: its `:authority` and any `host` header.
fn seen(text: &str) -> (Vec<&str>, Vec<&str>) {
    let get = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .collect::<Vec<_>>()
    };
    (get(":authority: "), get("host: "))
}

#[tokio::test]
async fn an_http2_endpoint_gets_the_routed_authority_as_authority_and_nothing_else() {
    let (b, vars) = backends(&["h2"]).await;
    let h = Harness::start(&fill(H2_UPSTREAM, &vars)).await;
    // HTTP/1.1 in, Host: a.example: the endpoint's :authority is a.example, not its address.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /headers HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&text), 200, "{text}");
    assert_eq!(seen(&text), (vec!["a.example"], vec![]), "{text}");

    // Absolute form: its authority, not the Host header.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(
        b"GET http://a.example/headers HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(seen(&text), (vec!["a.example"], vec![]), "{text}");

    // HTTP/2 in with a host header beside :authority: only :authority goes on.
    let client = h2c_client();
    let req = Request::get(h.url("/headers"))
        .header("host", "b.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&client, req).await;
    let addr = h.addr.to_string();
    assert_eq!(
        seen(&r.text()),
        (vec![addr.as_str()], vec![]),
        "{}",
        r.text()
    );
    // The connections go to the endpoint, counted under its address.
    let metrics = h.proxy.metrics_text();
    assert!(
        metric(
            &metrics,
            &format!(
                r#"gofe_upstream_connections_total{{cluster="h2",endpoint="{}"}}"#,
                vars["{B0}"]
            )
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    h.proxy.shutdown(Duration::ZERO).await;
    for x in b {
        x.stop().await;
    }
}
