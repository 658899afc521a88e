//! Several filter chains on one listener: picked per connection by SNI, ALPN, transport,
//! destination and source, with TLS and plaintext chains on one port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// A router section sending everything to `cluster`.
fn router(cluster: &str) -> String {
    format!(
        "filters: [{{ type: router, config: {{ virtual_hosts: [{{ name: all, domains: [\"*\"], \
         routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: {cluster} }} }}] }}] }} }}]"
    )
}

/// An HTTP/1.1 GET over `io`; returns the status, the version and the body.
async fn request<I>(io: I, h2: bool) -> (u16, Version, String)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let req = Request::get("/")
        .header("host", "proxy.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = if h2 {
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
    let status = resp.status().as_u16();
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

fn tls_client(roots: &rustls::RootCertStore, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
}

/// Whether the proxy closes `tcp` without a byte.
async fn closed(mut tcp: TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn tls_and_plaintext_chains_on_one_port_picked_by_sni_alpn_and_transport() {
    let (_b, vars) = backends(&["a", "b-h2", "b-any", "plain"]).await;
    let dir = tempdir();
    let cert = rcgen::generate_simple_self_signed(vec![
        "a.test".into(),
        "x.b.test".into(),
        "c.test".into(),
    ])
    .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = format!(
        "tls: {{ certificate_chain: \"{}\", private_key: \"{}\" }}",
        cert_path.display(),
        key_path.display()
    );
    let yaml = format!(
        r#"
listeners:
  - address: "127.0.0.1:0"
    tls_inspector: true
    http_inspector: true
    filter_chains:
      - filter_chain_match: {{ server_names: [a.test] }}
        {tls}
        {a}
      - filter_chain_match: {{ server_names: ["*.b.test"], application_protocols: [h2] }}
        {tls}
        {b2}
      - filter_chain_match: {{ server_names: ["*.b.test"] }}
        {tls}
        {b1}
      - filter_chain_match: {{ transport_protocol: raw_buffer, application_protocols: [http/1.1] }}
        {plain}
clusters:
  - {{ name: a, endpoints: [{{ address: "{{B0}}" }}] }}
  - {{ name: b2, endpoints: [{{ address: "{{B1}}" }}] }}
  - {{ name: b1, endpoints: [{{ address: "{{B2}}" }}] }}
  - {{ name: plain, endpoints: [{{ address: "{{B3}}" }}] }}
"#,
        a = router("a"),
        b2 = router("b2"),
        b1 = router("b1"),
        plain = router("plain"),
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();

    let cases: [(&str, &[&[u8]], bool, &str); 4] = [
        ("a.test", &[b"http/1.1"], false, "a"),
        ("a.test", &[b"h2", b"http/1.1"], true, "a"),
        ("x.b.test", &[b"h2", b"http/1.1"], true, "b-h2"),
        ("x.b.test", &[b"http/1.1"], false, "b-any"),
    ];
    for (sni, alpn, h2, backend) in cases {
        let tcp = TcpStream::connect(h.addr).await.unwrap();
        let stream = tls_client(&roots, alpn)
            .connect(ServerName::try_from(sni).unwrap().to_owned(), tcp)
            .await
            .expect("TLS handshake");
        let (status, version, body) = request(stream, h2).await;
        assert_eq!(status, 200, "{sni} {alpn:?}");
        assert_eq!(version == Version::HTTP_2, h2, "{sni} {alpn:?}");
        assert_eq!(body, format!("hello from {backend}\n"), "{sni} {alpn:?}");
    }

    // Plaintext HTTP/1.1 on the same port: the raw_buffer chain, which got every byte.
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let (status, _, body) = request(tcp, false).await;
    assert_eq!((status, body.as_str()), (200, "hello from plain\n"));

    // A TLS server name no chain has, and h2c prior knowledge (not http/1.1): no chain, no
    // default chain, closed and counted.
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let refused = tls_client(&roots, &[b"http/1.1"])
        .connect(ServerName::try_from("c.test").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "no chain for c.test");
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    assert!(closed(tcp).await);
    let metrics = h.proxy.metrics_text();
    assert_eq!(
        metric(
            &metrics,
            r#"gofe_downstream_connections_no_filter_chain_total{listener="127.0.0.1:0"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
}

/// A proxy on `yaml` (any listener address); returns it and its listeners' bound addresses.
async fn start(yaml: &str) -> (gofe_proxy::Proxy, Vec<SocketAddr>) {
    let proxy = gofe_proxy::Proxy::new();
    let config = gofe_proxy::config::parse("test.yaml", yaml).expect("test config is valid");
    proxy
        .apply(config, "test.yaml", Duration::from_secs(5))
        .await
        .expect("test config applies");
    let addrs = proxy.listener_addrs().await.into_values().collect();
    (proxy, addrs)
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn chains_picked_by_source_range_and_destination_address() {
    let (_b, vars) = backends(&["default", "from-2", "to-3"]).await;
    let yaml = format!(
        r#"
listeners:
  - address: "0.0.0.0:0"
    {own}
    filter_chains:
      - filter_chain_match: {{ source_prefix_ranges: ["127.0.0.2/32"] }}
        {from2}
      - filter_chain_match: {{ prefix_ranges: ["127.0.0.3/32"] }}
        {to3}
clusters:
  - {{ name: default, endpoints: [{{ address: "{{B0}}" }}] }}
  - {{ name: from2, endpoints: [{{ address: "{{B1}}" }}] }}
  - {{ name: to3, endpoints: [{{ address: "{{B2}}" }}] }}
"#,
        own = router("default"),
        from2 = router("from2"),
        to3 = router("to3"),
    );
    let (_proxy, addrs) = start(&fill(&yaml, &vars)).await;
    let port = addrs[0].port();
    let to = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
    for (source, dest, backend) in [
        ("127.0.0.1", "127.0.0.1", "default"),
        ("127.0.0.2", "127.0.0.1", "from-2"),
        // The destination address is matched before the source.
        ("127.0.0.2", "127.0.0.3", "to-3"),
        ("127.0.0.1", "127.0.0.3", "to-3"),
    ] {
        let tcp = connect_from(source, to(dest)).await;
        let (status, _, body) = request(tcp, false).await;
        assert_eq!(status, 200, "{source} -> {dest}");
        assert_eq!(
            body,
            format!("hello from {backend}\n"),
            "{source} -> {dest}"
        );
    }
}

#[tokio::test]
async fn a_capture_listener_picks_chains_by_destination_port() {
    // Without an iptables REDIRECT, a connection's original destination is the address it
    // was made to: the capture listener's own port picks the chain naming it.
    let (_b, vars) = backends(&["by-port", "tcp-default"]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        r#"
listeners:
  - address: "127.0.0.1:{port}"
    use_original_dst: true
    protocol: tcp
    tcp_proxy: {{ cluster: other }}
    filter_chains:
      - filter_chain_match: {{ destination_port: {port} }}
        {by_port}
      - filter_chain_match: {{ destination_port: 1 }}
        protocol: tcp
        tcp_proxy: {{ cluster: other }}
clusters:
  - {{ name: by_port, endpoints: [{{ address: "{{B0}}" }}] }}
  - {{ name: other, endpoints: [{{ address: "{{B1}}" }}] }}
"#,
        by_port = router("by_port"),
    );
    let (_proxy, addrs) = start(&fill(&yaml, &vars)).await;
    let tcp = TcpStream::connect(addrs[0]).await.unwrap();
    let (status, _, body) = request(tcp, false).await;
    assert_eq!((status, body.as_str()), (200, "hello from by-port\n"));
}
