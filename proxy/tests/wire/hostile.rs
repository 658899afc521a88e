//! Hostile and broken input over raw sockets: each case gets the right status (or is cut off)
//! and the proxy serves the next request.

use std::time::Duration;

use gofe_proxy::demo::Broken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const CONFIG: &str = r#"
listeners:
  - address: "127.0.0.1:0"
    max_connections: 3
    max_request_headers_kb: 8
    request_headers_timeout: "300ms"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: { prefix: "/small" }
                  route: { cluster: good, max_request_bytes: 16 }
                - match: { prefix: "/reset" }
                  route: { cluster: reset }
                - match: { prefix: "/garbage" }
                  route: { cluster: garbage }
                - match: { prefix: "/halfclose" }
                  route: { cluster: halfclose }
                - match: { prefix: "/" }
                  route: { cluster: good }
clusters:
  - { name: good, endpoints: [{ address: "{B0}" }] }
  - { name: reset, endpoints: [{ address: "{B1}" }] }
  - { name: garbage, endpoints: [{ address: "{B2}" }] }
  - { name: halfclose, endpoints: [{ address: "{B3}" }] }
"#;

/// Writes `raw`, then reads until the peer closes (bounded); returns what came back.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(raw).await;
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

async fn still_serves(h: &Harness) {
    let r = get(&h1_client(), &h.url("/"), "any", &[]).await;
    assert_eq!(r.status, 200, "the proxy serves the next request");
}

async fn start() -> (Harness, Vec<gofe_proxy::demo::DemoBackend>) {
    let (b, vars) = backends(&["good", "reset", "garbage", "halfclose"]).await;
    b[1].set_broken(Broken::Reset);
    b[2].set_broken(Broken::Garbage);
    b[3].set_broken(Broken::HalfClose);
    (Harness::start(&fill(CONFIG, &vars)).await, b)
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let (h, _b) = start().await;
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    ];
    for raw in cases {
        let resp = exchange(h.addr, raw).await;
        assert_eq!(
            status_of(&resp),
            400,
            "{:?} → {resp:?}",
            String::from_utf8_lossy(raw)
        );
        still_serves(&h).await;
    }
}

#[tokio::test]
async fn content_length_with_transfer_encoding_gets_400_and_a_close() {
    // Both framings: the chunked body ends after "0", and what follows would be a second,
    // smuggled request if the two sides of the proxy disagreed on framing. RFC 9112 §6.1: the
    // proxy refuses the request (as Envoy does), closes the connection, and the backend never
    // sees either request. Both header orders, since hyper handles them differently.
    let (h, b) = start().await;
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\ncontent-length: 44\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for raw in cases {
        // `exchange` reads until the proxy closes the connection.
        let resp = exchange(h.addr, raw).await;
        assert_eq!(status_of(&resp), 400, "{resp:?}");
        assert_eq!(
            resp.matches("HTTP/1.1 ").count(),
            1,
            "one response: {resp:?}"
        );
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{resp:?}"
        );
    }
    assert_eq!(b[0].served(), 0, "the backend never saw either request");
    still_serves(&h).await;
}

#[tokio::test]
async fn the_framing_watch_follows_keep_alive_bodies() {
    // Legitimate requests with length and chunked bodies (extensions, trailers) on one kept-alive
    // connection, then one with both framings: each earlier one is answered 200, the last 400.
    let (h, b) = start().await;
    let raw: &[u8] = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 19\r\n\r\n\
        content-length: 1\r\n\
        POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;x=1\r\nhello\r\n1a\r\ntransfer-encoding: 1\r\n\r\nab\r\n0\r\nx-t: 1\r\n\r\n\
        GET / HTTP/1.1\r\nHost: a\r\n\r\n\
        POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    let resp = exchange(h.addr, raw).await;
    let statuses: Vec<u16> = resp
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| status_of(&resp[i..]))
        .collect();
    assert_eq!(statuses, [200, 200, 200, 400], "{resp:?}");
    assert_eq!(b[0].served(), 3);
    still_serves(&h).await;
}

#[tokio::test]
async fn differing_content_lengths_get_400() {
    let (h, b) = start().await;
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
    ];
    for raw in cases {
        let resp = exchange(h.addr, raw).await;
        assert_eq!(status_of(&resp), 400, "{resp:?}");
    }
    assert_eq!(b[0].served(), 0, "the backend never saw them");
    still_serves(&h).await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (h, _b) = start().await;
    let big = "x".repeat(20 * 1024);
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let resp = exchange(h.addr, raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 431, "{resp:?}");
    still_serves(&h).await;
}

#[tokio::test]
async fn bodies_over_the_route_limit_get_413() {
    let (h, b) = start().await;
    let raw = "POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\nConnection: close\r\n\r\n01234567890123456";
    assert_eq!(status_of(&exchange(h.addr, raw.as_bytes()).await), 413);
    let served = b[0].served();
    let raw = "POST /small/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n10\r\n0123456789abcdef\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    let resp = exchange(h.addr, raw.as_bytes()).await;
    assert!(
        status_of(&resp) == 413
            || resp.is_empty()
            || status_of(&resp) == 200 && !resp.contains("0123456789abcdef0123456789abcdef"),
        "a chunked body over the limit never reaches the backend whole: {resp:?}"
    );
    let raw = "POST /small/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let resp = exchange(h.addr, raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 200, "under the limit passes: {resp:?}");
    assert!(resp.ends_with("hello"));
    assert!(b[0].served() > served);
    still_serves(&h).await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let (h, _b) = start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // Never finish the headers: the proxy must close the connection on its own.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was not cut off");
    still_serves(&h).await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_cut_off() {
    let (h, _b) = start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a silent connection was kept open");
    still_serves(&h).await;
}

#[tokio::test]
async fn the_header_timeout_counts_from_a_heads_first_byte_not_from_the_last_response() {
    let (h, _b) = start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    s.write_all(request).await.unwrap();
    assert_eq!(read_status(&mut s).await, 200);
    // Idle between requests for twice request_headers_timeout (300ms): that is the idle
    // timeout's business (1 h here), so the kept-alive connection still serves.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(request).await.unwrap();
    assert_eq!(
        read_status(&mut s).await,
        200,
        "same connection, second request"
    );
    // A head that starts and never ends is cut off on this same connection.
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an unfinished head was not cut off");
    still_serves(&h).await;
}

#[tokio::test]
async fn broken_upstreams_give_502_for_that_request_only() {
    let (h, _b) = start().await;
    let c = h1_client();
    for path in ["/reset", "/garbage", "/halfclose"] {
        let r = get(&c, &h.url(path), "any", &[]).await;
        assert_eq!(r.status, 502, "{path}: {r:?}");
        still_serves(&h).await;
    }
}

#[tokio::test]
async fn the_listener_connection_limit_holds() {
    let (h, _b) = start().await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        open.push(s);
    }
    // A fourth connection is closed without an answer.
    let resp = exchange(h.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(resp, "", "over max_connections");
    assert_eq!(
        metric(
            &h.proxy.metrics_text(),
            r#"gofe_downstream_connections_overflow_total{listener="127.0.0.1:0"}"#
        ),
        Some(1.0)
    );
    drop(open);
    // Once they close, new connections are served again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = exchange(
            h.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status_of(&resp) == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
