//! HTTP/1.1, h2c and h2 over TLS downstream; HTTP/1.1 and HTTP/2 upstream; streaming bodies.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use crate::support::*;

const CONFIG: &str = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: { prefix: "/h2up" }
                  route: { cluster: h2 }
                - match: { prefix: "/" }
                  route: { cluster: h1 }
clusters:
  - { name: h1, endpoints: [{ address: "{B0}" }] }
  - name: h2
    http2_protocol_options: {}
    endpoints: [{ address: "{B0}" }]
"#;

#[tokio::test]
async fn h2c_prior_knowledge_downstream_to_both_upstream_protocols() {
    let (_b, vars) = backends(&["one"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let c = h2c_client();
    for path in ["/", "/h2up/x"] {
        let r = get(&c, &h.url(path), "svc.test", &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.version, Version::HTTP_2, "{path}");
        assert_eq!(r.text(), "hello from one\n");
    }
    // The authority survives the trip to an HTTP/1.1 upstream as its Host header.
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://svc.test:8080/headers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("host: svc.test:8080\n"), "{text}");
    let metrics = h.proxy.metrics_text();
    let one = &vars["{B0}"];
    assert!(
        metrics.contains(&format!(
            "gofe_upstream_requests_total{{cluster=\"h2\",code_class=\"2xx\",endpoint=\"{one}\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn h2_and_http11_over_tls_by_alpn() {
    let (_b, vars) = backends(&["one"]).await;
    let dir = tempdir();
    let cert = rcgen::generate_simple_self_signed(vec!["proxy.test".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let cfg = fill(CONFIG, &vars).replace(
        "    filters:\n",
        &format!(
            "    tls: {{ certificate_chain: \"{}\", private_key: \"{}\" }}\n    filters:\n",
            cert_path.display(),
            key_path.display()
        ),
    );
    let h = Harness::start(&cfg).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    for (alpn, want) in [
        (&b"h2"[..], Version::HTTP_2),
        (&b"http/1.1"[..], Version::HTTP_11),
    ] {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let stream = connector
            .connect(ServerName::try_from("proxy.test").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        let io = TokioIo::new(stream);
        let req = Request::get("https://proxy.test/headers")
            .header("host", "proxy.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = if want == Version::HTTP_2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        };
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), want);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("x-forwarded-proto: https"), "{text}");
    }
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    // The client sends 64 MiB in 64 KiB chunks and reads the echo as it comes back; with any
    // whole-body buffering in the proxy the echo could not start before the upload finished,
    // and this test checks that the first echoed bytes arrive while most of the upload is
    // still unsent. (A separate-process test bounds the proxy's memory: tests/e2e.rs.)
    let (_b, vars) = backends(&["one"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1024;
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        for _ in 0..CHUNKS {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(h.url("/echo"))
        .header("host", "svc")
        .body(body)
        .unwrap();
    let resp = client.request(req).await.expect("response headers");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    let mut sent_at_first_byte = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("echo streams");
        if let Some(data) = frame.data_ref() {
            assert!(data.iter().all(|&b| b == 7));
            if received == 0 {
                sent_at_first_byte = Some(sent.load(std::sync::atomic::Ordering::SeqCst));
            }
            received += data.len();
        }
    }
    assert_eq!(received, CHUNK * CHUNKS, "every byte came back");
    let at_first = sent_at_first_byte.unwrap();
    assert!(
        at_first < CHUNKS / 2,
        "echo began only after {at_first} of {CHUNKS} chunks were sent"
    );
}

/// Adapts an mpsc receiver to a `Stream` without pulling in tokio-stream.
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn idle_config() -> String {
    catch_all(
        "h1",
        r#"idle_timeout: "200ms""#,
        r#"endpoints: [{ address: "{B0}" }]"#,
    )
}

#[tokio::test]
async fn idle_h2_connections_are_closed_but_busy_ones_are_not() {
    let (b, vars) = backends(&["one"]).await;
    let h = Harness::start(&fill(&idle_config(), &vars)).await;
    // A request in flight for several idle timeouts keeps its connection open.
    b[0].set_delay(std::time::Duration::from_secs(1));
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://svc.test/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .expect("a busy connection stays open");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello from one\n");
    // Then, with nothing in flight, the proxy ends the connection with a GOAWAY: the client's
    // connection finishes cleanly on its own.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    let ended = ended.expect("the idle connection was closed by the proxy");
    ended
        .unwrap()
        .expect("closed gracefully (GOAWAY), not reset");
    assert!(send.is_closed());
}

fn pool_config() -> String {
    catch_all(
        "h1",
        "",
        r#"idle_timeout: "200ms", endpoints: [{ address: "{B0}" }]"#,
    )
}

#[tokio::test]
async fn upstream_http1_connections_are_reused_then_closed_when_idle() {
    let (b, vars) = backends(&["one"]).await;
    let h = Harness::start(&fill(&pool_config(), &vars)).await;
    let series = |name: &str| format!(r#"{name}{{cluster="h1",endpoint="{}"}}"#, b[0].addr());
    let c = h1_client();
    for _ in 0..20 {
        let r = get(&c, &h.url("/"), "any", &[]).await;
        assert_eq!(r.status, 200);
    }
    let text = h.proxy.metrics_text();
    assert_eq!(
        metric(&text, &series("gofe_upstream_connections_total")),
        Some(1.0),
        "20 sequential requests share one upstream connection"
    );
    assert_eq!(
        metric(&text, &series("gofe_upstream_connections_active")),
        Some(1.0)
    );
    // Idle past the cluster's idle_timeout, the connection is closed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(
        &h.proxy.metrics_text(),
        &series("gofe_upstream_connections_active"),
    ) != Some(0.0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "idle upstream connection never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // And a new request opens a new one.
    let r = get(&c, &h.url("/"), "any", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        metric(
            &h.proxy.metrics_text(),
            &series("gofe_upstream_connections_total")
        ),
        Some(2.0)
    );
}
