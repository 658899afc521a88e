//! Upstream TLS across processes: the shipped `gofe proxy --config` in front of a TLS backend
//! run by this test (rustls, a CA → leaf chain made here with rcgen, client certificates
//! required). The cluster that trusts the CA, matches the backend's SAN and presents a client
//! certificate is served, several requests on one TLS connection (the backend counts its
//! handshakes); the cluster that trusts another CA is answered 503 and counted in
//! `gofe_upstream_tls_errors_total{cluster, reason}` on the admin's `/metrics`.

#![allow(unreachable_pub)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use support::process::{free_port, tempdir, Proc};

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

    /// Writes `NAME.pem` and `NAME-key.pem` in `dir`, a leaf for `san` signed by this CA.
    fn issue(&self, dir: &Path, name: &str, san: SanType) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

/// A TLS HTTP/1.1 backend on its own threads: requires a client certificate from the CA in
/// `ca.pem`, answers every request `200 client=yes`, counts finished handshakes. Stopped
/// (its listener and connections closed) when dropped.
struct TlsBackend {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsBackend {
    fn start(dir: &Path) -> TlsBackend {
        let certs = gofe_tls::certs(&dir.join("backend.pem")).unwrap();
        let key = gofe_tls::key(&dir.join("backend-key.pem")).unwrap();
        let roots = gofe_tls::roots(&dir.join("ca.pem")).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            gofe_tls::provider(),
        )
        .build()
        .unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(gofe_tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, stopping) = (Arc::clone(&handshakes), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let config = Arc::clone(&config);
                        let counted = Arc::clone(&counted);
                        let stopping = Arc::clone(&stopping);
                        conns.push(std::thread::spawn(move || {
                            serve(tcp, config, &counted, &stopping)
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        TlsBackend {
            addr,
            handshakes,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: the handshake, then requests (bodiless) until it closes or the backend
/// stops.
fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    handshakes: &AtomicUsize,
    stop: &AtomicBool,
) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut counted = false;
    while !stop.load(Ordering::SeqCst) {
        match tls.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        if !counted && !tls.conn.is_handshaking() {
            counted = true;
            handshakes.fetch_add(1, Ordering::SeqCst);
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let client = if tls.conn.peer_certificates().is_some() {
                "yes"
            } else {
                "no"
            };
            let body = format!("client={client}");
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if tls.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// One HTTP/1.1 request on a fresh connection: the status and body, or `None` on failure.
fn http(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// Polls `f` every 50 ms until it returns something; panics naming `what` after `limit` (a
/// bound on a hung run, not a pass/fail threshold).
fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_shipped_proxy_verifies_its_upstream_and_presents_its_certificate() {
    let dir = tempdir();
    let ca = Ca::new();
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), Ca::new().cert.pem()).unwrap();
    ca.issue(
        &dir,
        "backend",
        SanType::DnsName("backend.shop.test".try_into().unwrap()),
    );
    ca.issue(
        &dir,
        "proxy",
        SanType::URI("spiffe://shop.test/proxy".try_into().unwrap()),
    );
    let backend = TlsBackend::start(&dir);
    let (listen, admin) = (free_port(), free_port());
    let d = dir.display();
    let tls = |ca_file: &str| {
        format!(
            "{{ sni: backend.shop.test, trusted_ca: {{ file: \"{d}/{ca_file}\" }}, match_subject_alt_names: [{{ type: dns, matcher: {{ suffix: .shop.test }} }}], client_certificate: {{ certificate_chain: {{ file: \"{d}/proxy.pem\" }}, private_key: {{ file: \"{d}/proxy-key.pem\" }} }} }}"
        )
    };
    let config = format!(
        r#"
admin: {{ address: "127.0.0.1:{admin}" }}
listeners:
  - address: "127.0.0.1:{listen}"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {{ prefix: "/bad" }}
                  route: {{ cluster: bad }}
                - match: {{ prefix: "/" }}
                  route: {{ cluster: good }}
clusters:
  - name: good
    endpoints: [{{ address: "{backend}" }}]
    tls: {good}
  - name: bad
    endpoints: [{{ address: "{backend}" }}]
    tls: {bad}
"#,
        backend = backend.addr,
        good = tls("ca.pem"),
        bad = tls("other-ca.pem"),
    );
    let file = dir.join("gofe.yaml");
    std::fs::write(&file, config).unwrap();
    let proxy = Proc::start(&["proxy", "--config", file.to_str().unwrap()], &dir);

    let first = until("the proxy to serve", Duration::from_secs(20), || {
        http(listen, "/").filter(|(status, _)| *status != 503)
    });
    assert_eq!(first, (200, "client=yes".to_owned()), "{}", proxy.logs());
    for _ in 0..4 {
        assert_eq!(http(listen, "/"), Some((200, "client=yes".to_owned())));
    }
    assert_eq!(
        backend.handshakes.load(Ordering::SeqCst),
        1,
        "five requests over one pooled TLS connection"
    );

    assert_eq!(http(listen, "/bad").map(|r| r.0), Some(503));
    let metrics = http(admin, "/metrics").expect("admin metrics").1;
    assert!(
        metrics.contains("gofe_upstream_tls_errors_total{cluster=\"bad\",reason=\"unknown_ca\"} 1"),
        "{metrics}"
    );
    drop(proxy);
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
}
