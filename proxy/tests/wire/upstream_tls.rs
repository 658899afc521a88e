//! Upstream TLS over real sockets: a backend serving TLS with a certificate chain made here
//! (CA → leaf, rcgen) behind the proxy's cluster `tls:`. Verified and served, with one
//! handshake for several requests (the backend counts its handshakes); a wrong CA and a SAN
//! mismatch answered 503 and counted in `gofe_upstream_tls_errors_total` and the access log
//! (`UF`, a reason naming TLS); a backend requiring a client certificate gets the proxy's; h2
//! negotiated by ALPN on an HTTP/2 cluster.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

use crate::support::*;

/// A CA and what it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A leaf for `sans`: its PEM chain and key.
    fn leaf(&self, sans: Vec<SanType>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

/// A TLS backend answering `200` with `VERSION client_cert=BOOL sni=NAME` (hyper's server,
/// HTTP/1.1 and HTTP/2 by ALPN); counts finished handshakes. Stopped when dropped.
struct TlsBackend {
    addr: std::net::SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    /// Serves `chain`/`key`; with `clients`, requires a client certificate signed by it.
    async fn start(chain: &str, key: &str, clients: Option<&Ca>) -> TlsBackend {
        let certs = gofe_tls::certs_pem(chain.as_bytes(), "chain").unwrap();
        let key = gofe_tls::key_pem(key.as_bytes(), "key").unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(gofe_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            Some(ca) => {
                let roots = gofe_tls::roots_pem(ca.cert.pem().as_bytes(), "ca").unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    gofe_tls::provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&handshakes);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let counted = Arc::clone(&counted);
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let (_, session) = tls.get_ref();
                    let client_cert = session.peer_certificates().is_some();
                    let sni = session.server_name().unwrap_or("-").to_owned();
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let text =
                            format!("{:?} client_cert={client_cert} sni={sni}", req.version());
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(text),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsBackend {
            addr,
            handshakes,
            task,
        }
    }
}

/// A log file in the temp directory, removed when dropped.
struct LogFile(PathBuf);

impl LogFile {
    fn new(test: &str) -> LogFile {
        let path = std::env::temp_dir().join(format!(
            "gofe-upstream-tls-{test}-{}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        LogFile(path)
    }

    /// Waits (bounded) for the first line.
    async fn first_line(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            if let Some(line) = text.lines().next() {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "no access log line");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// YAML flow-string of PEM text.
fn inline(pem: &str) -> String {
    format!("{{ inline: {pem:?} }}")
}

/// A proxy whose one route goes to cluster `tls` at `backend` with `tls` (a YAML flow
/// mapping) and `extra` cluster fields; logs `code flags reason` to `log`.
async fn proxy(backend: std::net::SocketAddr, tls: &str, extra: &str, log: &LogFile) -> Harness {
    let yaml = format!(
        r#"
listeners:
  - address: "127.0.0.1:0"
    access_log:
      - path: "{path}"
        format: "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {{ prefix: "/" }}
                  route: {{ cluster: tls }}
clusters:
  - name: tls
    endpoints: [{{ address: "{backend}" }}]
    tls: {tls}
{extra}"#,
        path = log.0.display()
    );
    Harness::start(&yaml).await
}

fn tls_metric(h: &Harness, reason: &str) -> Option<f64> {
    metric(
        &h.proxy.metrics_text(),
        &format!("gofe_upstream_tls_errors_total{{cluster=\"tls\",reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn a_verified_backend_is_served_on_one_handshake() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(vec![dns("backend.test")]);
    let backend = TlsBackend::start(&chain, &key, None).await;
    let log = LogFile::new("verified");
    let tls = format!(
        "{{ sni: backend.test, trusted_ca: {}, match_subject_alt_names: [{{ type: dns, matcher: {{ exact: backend.test }} }}] }}",
        inline(&ca.cert.pem())
    );
    let h = proxy(backend.addr, &tls, "", &log).await;
    let client = h1_client();
    for _ in 0..5 {
        let r = get(&client, &h.url("/"), "web", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "HTTP/1.1 client_cert=false sni=backend.test");
    }
    assert_eq!(
        backend.handshakes.load(Ordering::SeqCst),
        1,
        "five requests, one pooled TLS connection"
    );
    assert_eq!(tls_metric(&h, "unknown_ca"), None);
    assert!(log.first_line().await.starts_with("200 - "));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_a_503_counted_as_tls() {
    let ca = Ca::new();
    let other = Ca::new();
    let (chain, key) = ca.leaf(vec![dns("backend.test")]);
    let backend = TlsBackend::start(&chain, &key, None).await;
    let log = LogFile::new("wrong-ca");
    let tls = format!("{{ trusted_ca: {} }}", inline(&other.cert.pem()));
    let h = proxy(backend.addr, &tls, "", &log).await;
    let r = get(&h1_client(), &h.url("/"), "web", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(tls_metric(&h, "unknown_ca"), Some(1.0));
    let connect_failures = format!(
        "gofe_upstream_connect_failures_total{{cluster=\"tls\",endpoint=\"{}\"}}",
        backend.addr
    );
    assert_eq!(
        metric(&h.proxy.metrics_text(), &connect_failures),
        Some(1.0)
    );
    let line = log.first_line().await;
    assert!(
        line.starts_with("503 UF TLS handshake failed (unknown_ca)"),
        "{line}"
    );
}

#[tokio::test]
async fn a_san_mismatch_is_a_503() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(vec![dns("backend.test")]);
    let backend = TlsBackend::start(&chain, &key, None).await;
    let log = LogFile::new("san");
    let tls = format!(
        "{{ trusted_ca: {}, match_subject_alt_names: [{{ type: dns, matcher: {{ exact: payments.test }} }}, {{ type: uri, matcher: {{ prefix: \"spiffe://\" }} }}] }}",
        inline(&ca.cert.pem())
    );
    let h = proxy(backend.addr, &tls, "", &log).await;
    let r = get(&h1_client(), &h.url("/"), "web", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(tls_metric(&h, "san_mismatch"), Some(1.0));
    let line = log.first_line().await;
    assert!(
        line.starts_with("503 UF TLS handshake failed (san_mismatch)"),
        "{line}"
    );
}

#[tokio::test]
async fn a_backend_requiring_a_client_certificate_gets_the_proxy_s() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(vec![dns("backend.test")]);
    let (client_chain, client_key) = ca.leaf(vec![SanType::URI(
        "spiffe://gofe.test/proxy".try_into().unwrap(),
    )]);
    let backend = TlsBackend::start(&chain, &key, Some(&ca)).await;
    let dir = std::env::temp_dir().join(format!("gofe-upstream-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let log = LogFile::new("mtls");
    let tls = format!(
        "{{ trusted_ca: {{ file: {:?} }}, client_certificate: {{ certificate_chain: {}, private_key: {} }} }}",
        ca_file.display().to_string(),
        inline(&client_chain),
        inline(&client_key)
    );
    let h = proxy(backend.addr, &tls, "", &log).await;
    let r = get(&h1_client(), &h.url("/"), "web", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "HTTP/1.1 client_cert=true sni=-");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_http2_cluster_negotiates_h2_by_alpn() {
    let ca = Ca::new();
    let (chain, key) = ca.leaf(vec![dns("backend.test")]);
    let backend = TlsBackend::start(&chain, &key, None).await;
    let log = LogFile::new("h2");
    let tls = format!(
        "{{ trusted_ca: {}, alpn_protocols: [h2, http/1.1] }}",
        inline(&ca.cert.pem())
    );
    let h = proxy(backend.addr, &tls, "    http2_protocol_options: {}\n", &log).await;
    let client = h1_client();
    for _ in 0..3 {
        let r = get(&client, &h.url("/"), "web", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "HTTP/2.0 client_cert=false sni=-");
    }
    assert_eq!(backend.handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unreadable_material_and_inconsistent_alpn_are_refused_at_apply() {
    let proxy = gofe_proxy::Proxy::new();
    let yaml = |tls: &str, extra: &str| {
        format!(
            "clusters:\n  - name: tls\n    endpoints: [{{ address: \"127.0.0.1:1\" }}]\n    tls: {tls}\n{extra}"
        )
    };
    let missing = yaml("{ trusted_ca: { file: /nonexistent/ca.pem } }", "");
    let config = gofe_proxy::config::parse("t.yaml", &missing).unwrap();
    let e = proxy
        .apply(config, "t.yaml", Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tls.trusted_ca") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let e = gofe_proxy::config::parse("t.yaml", &yaml("{ alpn_protocols: [h2] }", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("clusters[0].tls.alpn_protocols"), "{e}");
    let e = gofe_proxy::config::parse(
        "t.yaml",
        &yaml(
            "{ match_subject_alt_names: [{ type: dns, matcher: { exact: a.test } }] }",
            "",
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("match_subject_alt_names") && e.contains("trusted_ca"),
        "{e}"
    );
}

#[tokio::test]
async fn failed_handshakes_count_as_connect_failures_for_outlier_detection() {
    let ca = Ca::new();
    let other = Ca::new();
    let (chain, key) = ca.leaf(vec![dns("backend.test")]);
    let backend = TlsBackend::start(&chain, &key, None).await;
    let log = LogFile::new("outlier");
    let tls = format!("{{ trusted_ca: {} }}", inline(&other.cert.pem()));
    let extra = "    outlier_detection: { consecutive_gateway_failure: 2, consecutive_5xx: 100, max_ejection_percent: 100 }\n";
    let h = proxy(backend.addr, &tls, extra, &log).await;
    let client = h1_client();
    for _ in 0..2 {
        assert_eq!(get(&client, &h.url("/"), "web", &[]).await.status, 503);
    }
    let text = h.proxy.metrics_text();
    let series = |name: &str| {
        format!(
            "{name}{{cluster=\"tls\",endpoint=\"{}\",reason=\"consecutive_gateway_failure\"}}",
            backend.addr
        )
    };
    assert_eq!(
        metric(&text, &series("gofe_outlier_ejections_total")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(tls_metric(&h, "unknown_ca"), Some(2.0));
}
