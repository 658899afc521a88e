//! Zero trust on the controller's xDS port, across processes of the shipped binary:
//! `gofe controller run` with `xds.tls` (mutual TLS against a CA made here with rcgen), a
//! `gofe backend`, and `gofe proxy --bootstrap` holding a client certificate whose SPIFFE URI
//! SAN is its node id.
//!
//! Checked here: a plaintext client, a client without a certificate and a client whose
//! certificate names another node (an impersonation) receive nothing, the last refused with
//! `PERMISSION_DENIED` and counted in `gofe_xds_refused_streams_total{reason}`; the proxy with
//! the right certificate takes its configuration and serves traffic; replacing the server
//! certificate on disk is picked up by new handshakes while the proxy stays on its stream with
//! no failed request under steady load; a broken replacement keeps the working material.

#![allow(unreachable_pub)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gofe_proto::ResourceType;
use gofe_proxy::xds::{ClientOptions, ClientStatus, ClientTls, XdsClient};
use rcgen::{ExtendedKeyUsagePurpose, SanType};
use rustls::pki_types::CertificateDer;
use support::pki::Pki;
use support::process::{free_ports, tempdir, Proc};

/// The proxy's identity: its certificate's URI SAN, and its node id.
const PROXY_ID: &str = "spiffe://gofe.test/ns/shop/sa/web";
/// Another workload's identity, which the proxy's certificate does not carry.
const OTHER_ID: &str = "spiffe://gofe.test/ns/shop/sa/payments";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One HTTP/1.1 request on a fresh connection: the status and body, or `None` on failure.
fn http(to: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
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

// === certificates ===

fn server_san() -> SanType {
    SanType::DnsName("localhost".try_into().unwrap())
}

fn proxy_san() -> SanType {
    SanType::URI(PROXY_ID.try_into().unwrap())
}

/// The certificate the xDS port presents to a new handshake (made with the proxy's client
/// certificate, verified against the CA).
fn served_certificate(pki: &Pki, xds: SocketAddr) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in gofe_tls::certs(&pki.path("ca.pem")).ok()? {
        roots.add(c).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(gofe_tls::provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            gofe_tls::certs(&pki.path("proxy.pem")).ok()?,
            gofe_tls::key(&pki.path("proxy-key.pem")).ok()?,
        )
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let mut tcp = TcpStream::connect_timeout(&xds, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    let leaf: &CertificateDer<'_> = conn.peer_certificates()?.first()?;
    Some(leaf.to_vec())
}

// === the mesh ===

struct Mesh {
    dir: PathBuf,
    pki: Pki,
    _backend: Proc,
    controller: Proc,
    proxy: Proc,
    listen: u16,
    xds: u16,
    admin: u16,
}

impl Mesh {
    fn start() -> Mesh {
        let dir = tempdir();
        let pki = Pki::new(&dir);
        pki.issue("server", server_san(), ExtendedKeyUsagePurpose::ServerAuth);
        pki.issue("proxy", proxy_san(), ExtendedKeyUsagePurpose::ClientAuth);
        let p = free_ports(5);
        let (backend, listen, xds, admin, proxy_admin) = (p[0], p[1], p[2], p[3], p[4]);
        let backend_proc = Proc::start(
            &[
                "backend",
                "--listen",
                &format!("127.0.0.1:{backend}"),
                "--name",
                "b0",
            ],
            &dir,
        );
        std::fs::write(
            dir.join("proxy.yaml"),
            format!(
                "listeners:\n  - address: \"127.0.0.1:{listen}\"\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: web }} }}]\nclusters:\n  - name: web\n    endpoints:\n      - {{ address: \"127.0.0.1:{backend}\" }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("controller.yaml"),
            format!(
                "proxy_config: proxy.yaml\ninterval: 1s\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\nxds:\n  address: \"127.0.0.1:{xds}\"\n  tls:\n    cert_file: server.pem\n    key_file: server-key.pem\n    client_ca_file: ca.pem\n    reload_interval: 200ms\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("bootstrap.yaml"),
            format!(
                "node: {{ id: \"{PROXY_ID}\", cluster: web }}\nxds_server:\n  address: \"127.0.0.1:{xds}\"\n  tls: {{ ca: ca.pem, server_name: localhost, certificate_chain: proxy.pem, private_key: proxy-key.pem }}\nstatic_resources:\n  admin: {{ address: \"127.0.0.1:{proxy_admin}\" }}\n"
            ),
        )
        .unwrap();
        let config = dir.join("controller.yaml").display().to_string();
        let controller = Proc::start(&["controller", "run", "--config", &config], &dir);
        let bootstrap = dir.join("bootstrap.yaml").display().to_string();
        let proxy = Proc::start(&["proxy", "--bootstrap", &bootstrap], &dir);
        let mesh = Mesh {
            dir,
            pki,
            _backend: backend_proc,
            controller,
            proxy,
            listen,
            xds,
            admin,
        };
        until(
            "the proxy to serve its configuration from the mTLS control plane",
            Duration::from_secs(60),
            || matches!(http(addr(listen), "/"), Some((200, _))).then_some(()),
        );
        mesh
    }

    /// A series' value on the controller's admin `/metrics` (`name{labels}` as exposed).
    fn metric(&self, series: &str) -> Option<f64> {
        let (status, text) = http(addr(self.admin), "/metrics")?;
        if status != 200 {
            return None;
        }
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))?
            .trim()
            .parse()
            .ok()
    }

    /// How many ADS streams the controller has opened for `node` (its log lines).
    fn streams_opened(&self, node: &str) -> usize {
        self.controller
            .logs()
            .lines()
            .filter(|l| l.contains("ADS stream opened") && l.contains(node))
            .count()
    }

    fn stop(mut self) {
        self.controller.signal("TERM");
        assert_eq!(self.controller.wait_exit(Duration::from_secs(20)), Some(0));
        self.proxy.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An in-process xDS client (the proxy's own, into a proxy that serves nothing) against the
/// controller: `tls` None is plaintext, `identity` false is TLS without a client certificate.
fn ads_client(mesh: &Mesh, node: &str, tls: bool, identity: bool) -> XdsClient {
    XdsClient::start(
        gofe_proxy::Proxy::new(),
        ClientOptions {
            node_id: node.into(),
            node_cluster: "web".into(),
            server: addr(mesh.xds).to_string(),
            tls: tls.then(|| ClientTls {
                ca: mesh.pki.path("ca.pem"),
                server_name: Some("localhost".into()),
                identity: identity
                    .then(|| (mesh.pki.path("proxy.pem"), mesh.pki.path("proxy-key.pem"))),
                workload: None,
            }),
            base: gofe_proxy::ProxyConfig::default(),
            drain: Duration::ZERO,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            load_reporting: false,
        },
    )
    .expect("the client starts")
}

/// Waits (bounded) until `client`'s status satisfies `f`, and returns it.
fn status_until(client: &XdsClient, what: &str, f: impl Fn(&ClientStatus) -> bool) -> ClientStatus {
    let rx = client.status();
    until(what, Duration::from_secs(30), || {
        let s = rx.borrow();
        f(&s).then(|| s.clone())
    })
}

#[test]
fn the_mtls_control_plane_refuses_the_unauthenticated_and_impostors_and_serves_its_proxy() {
    let mesh = Mesh::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let handshakes = "gofe_xds_tls_handshake_failures_total";
    let mismatches = "gofe_xds_refused_streams_total{reason=\"identity_mismatch\"}";

    // The real proxy holds one stream and was never refused.
    assert_eq!(mesh.metric(mismatches), Some(0.0));
    assert!(mesh.streams_opened(PROXY_ID) >= 1);

    // Plaintext on the TLS port: no handshake, nothing received.
    let before = mesh.metric(handshakes).expect("the handshake counter");
    let plaintext = ads_client(&mesh, PROXY_ID, false, false);
    until(
        "the plaintext handshake failure",
        Duration::from_secs(30),
        || (mesh.metric(handshakes)? > before).then_some(()),
    );
    let s = status_until(&plaintext, "the plaintext client's error", |s| {
        s.last_error.is_some()
    });
    assert!(s.versions.is_empty(), "{s:?}");
    plaintext.stop();

    // TLS without a client certificate, claiming the proxy's node id: refused at the handshake.
    let before = mesh.metric(handshakes).unwrap();
    let anonymous = ads_client(&mesh, PROXY_ID, true, false);
    until(
        "the certificate-less handshake failure",
        Duration::from_secs(30),
        || (mesh.metric(handshakes)? > before).then_some(()),
    );
    let s = status_until(&anonymous, "the anonymous client's error", |s| {
        s.last_error.is_some()
    });
    assert!(s.versions.is_empty(), "{s:?}");
    anonymous.stop();

    // The proxy's certificate, claiming another workload's node id: PERMISSION_DENIED, counted.
    let impostor = ads_client(&mesh, OTHER_ID, true, true);
    let s = status_until(&impostor, "the impostor's refusal", |s| {
        s.last_error.is_some()
    });
    let e = s.last_error.clone().unwrap();
    assert!(
        e.contains(&tonic::Code::PermissionDenied.to_string()),
        "refused as PERMISSION_DENIED: {e}"
    );
    assert!(e.contains(OTHER_ID), "{e}");
    assert!(s.versions.is_empty(), "nothing was sent: {s:?}");
    until("the refusal to be counted", Duration::from_secs(30), || {
        (mesh.metric(mismatches)? >= 1.0).then_some(())
    });
    impostor.stop();
    assert!(
        mesh.controller.logs().contains("xDS stream refused"),
        "the refusal is logged"
    );

    // The same certificate under its own node id is served.
    let own = ads_client(&mesh, PROXY_ID, true, true);
    status_until(&own, "the resources under the certificate's own id", |s| {
        s.versions.contains_key(&ResourceType::Cluster)
            && s.versions.contains_key(&ResourceType::Listener)
    });
    own.stop();
    assert!(matches!(http(addr(mesh.listen), "/"), Some((200, _))));
    drop(_in_runtime);
    drop(rt);
    mesh.stop();
}

/// Steady traffic through the proxy, counting requests and failures (anything but a 200).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(to: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (st, se, f) = (stop.clone(), sent.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: stops with the test, and after 5 minutes at most.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                if !matches!(http(to, "/"), Some((200, _))) {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                se.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load {
            stop,
            sent,
            failed,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn a_rotated_server_certificate_serves_new_handshakes_while_the_proxy_keeps_serving() {
    let mesh = Mesh::start();
    let xds = addr(mesh.xds);
    let applied = "gofe_xds_tls_reloads_total{result=\"applied\"}";
    let failed = "gofe_xds_tls_reloads_total{result=\"failed\"}";
    let first = served_certificate(&mesh.pki, xds).expect("a handshake with the first cert");
    let streams = mesh.streams_opened(PROXY_ID);
    assert_eq!(streams, 1, "{}", mesh.controller.logs());
    let load = Load::start(addr(mesh.listen));
    until(
        "requests through the proxy",
        Duration::from_secs(30),
        || (load.sent.load(Ordering::Relaxed) >= 20).then_some(()),
    );

    // Rotate: a new key and certificate from the same CA, replaced on disk.
    let rotated = mesh
        .pki
        .issue("server", server_san(), ExtendedKeyUsagePurpose::ServerAuth);
    assert_ne!(first, rotated);
    until(
        "a new handshake to present the rotated certificate",
        Duration::from_secs(30),
        || (served_certificate(&mesh.pki, xds)? == rotated).then_some(()),
    );
    assert!(mesh.metric(applied).unwrap() >= 1.0);
    let sent_at_rotation = load.sent.load(Ordering::Relaxed);
    until(
        "more requests after the rotation",
        Duration::from_secs(30),
        || (load.sent.load(Ordering::Relaxed) >= sent_at_rotation + 20).then_some(()),
    );

    // A broken replacement: counted and logged, the rotated material stays.
    let failed_before = mesh.metric(failed).unwrap();
    std::fs::write(
        mesh.pki.path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    until(
        "the failed reload to be counted",
        Duration::from_secs(30),
        || (mesh.metric(failed)? > failed_before).then_some(()),
    );
    assert_eq!(
        served_certificate(&mesh.pki, xds).as_deref(),
        Some(&rotated[..]),
        "the last good certificate is still served"
    );
    assert!(mesh
        .controller
        .logs()
        .contains("the previous material stays"));

    let (sent, failures) = load.finish();
    assert!(sent >= sent_at_rotation + 20, "{sent}");
    assert_eq!(
        failures, 0,
        "no request failed through the rotation ({sent} sent)"
    );
    assert_eq!(
        mesh.streams_opened(PROXY_ID),
        streams,
        "the proxy stayed on its stream: {}",
        mesh.controller.logs()
    );
    mesh.stop();
}
