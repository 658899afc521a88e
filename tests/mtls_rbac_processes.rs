//! Downstream mutual TLS and RBAC across processes of the shipped binary: `gofe backend` behind
//! `gofe proxy --config` with two TLS listeners verifying client certificates against a CA made
//! here with rcgen.
//!
//! - `strict` requires a client certificate from the CA with a URI SAN under
//!   `spiffe://gofe.test/ns/shop/`, and its RBAC filter (DENY) refuses `/admin` to every
//!   identity but `…/sa/ops`.
//! - `open` verifies a certificate when one is presented but does not require one, and its
//!   RBAC filter (ALLOW) lets only authenticated clients through.
//!
//! Checked here: no certificate, a certificate from another CA and a SAN mismatch are refused
//! at the handshake; identities are allowed and denied by policy, a denial answered 403
//! `RBAC: access denied`, counted in `gofe_rbac_denied_total` and written to the access log
//! with Envoy's `%RESPONSE_CODE_DETAILS%`.

#![allow(unreachable_pub)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{ExtendedKeyUsagePurpose, SanType};
use support::pki::Pki;
use support::process::{free_ports, tempdir, Proc};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
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

/// One HTTP/1.1 request over TLS (trusting `ca`, presenting `client` = `NAME.pem` /
/// `NAME-key.pem` when given): the status and body, or why there was none.
fn https(
    dir: &Path,
    ca: &str,
    client: Option<&str>,
    to: SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    let roots = gofe_tls::roots(&dir.join(ca)).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(gofe_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(name) => builder
            .with_client_auth_cert(
                gofe_tls::certs(&dir.join(format!("{name}.pem"))).unwrap(),
                gofe_tls::key(&dir.join(format!("{name}-key.pem"))).unwrap(),
            )
            .unwrap(),
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    // A server that closes without close_notify after a full response is fine here.
    let read = tls.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let Some(status) = text.split(' ').nth(1).and_then(|s| s.parse().ok()) else {
        return Err(format!("no response: {read:?}"));
    };
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// A series' value on the proxy's admin `/metrics`.
fn metric(admin: u16, series: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&addr(admin), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

fn uri(id: &str) -> SanType {
    SanType::URI(id.try_into().unwrap())
}

#[test]
fn client_certificates_and_rbac_decide_who_reaches_the_backend() {
    let dir = tempdir();
    let pki = Pki::new(&dir);
    let foreign = Pki::named(&dir, "foreign-ca");
    let server = SanType::DnsName("localhost".try_into().unwrap());
    pki.issue("server", server, ExtendedKeyUsagePurpose::ServerAuth);
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    pki.issue(
        "web",
        uri("spiffe://gofe.test/ns/shop/sa/web"),
        client.clone(),
    );
    pki.issue(
        "ops",
        uri("spiffe://gofe.test/ns/shop/sa/ops"),
        client.clone(),
    );
    pki.issue(
        "bank",
        uri("spiffe://gofe.test/ns/bank/sa/web"),
        client.clone(),
    );
    foreign.issue("impostor", uri("spiffe://gofe.test/ns/shop/sa/ops"), client);
    assert!(pki.path("ops.pem").exists());

    let p = free_ports(4);
    let (backend, strict, open, admin) = (p[0], p[1], p[2], p[3]);
    let log = dir.join("access.log");
    let _backend = Proc::start(
        &[
            "backend",
            "--listen",
            &format!("127.0.0.1:{backend}"),
            "--name",
            "b0",
        ],
        &dir,
    );
    let router = "    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{ match: { prefix: \"/\" }, route: { cluster: web } }]\n";
    let config = format!(
        r#"admin: {{ address: "127.0.0.1:{admin}" }}
listeners:
  - name: strict
    address: "127.0.0.1:{strict}"
    tls:
      certificate_chain: "{d}/server.pem"
      private_key: "{d}/server-key.pem"
      require_client_certificate: true
      validation_context:
        trusted_ca: {{ filename: "{d}/ca.pem" }}
        match_typed_subject_alt_names:
          - {{ san_type: URI, matcher: {{ prefix: "spiffe://gofe.test/ns/shop/" }} }}
    access_log: [{{ path: "{log}", format: "%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %REQ(:PATH)%\n" }}]
    rbac:
      rules:
        action: DENY
        policies:
          admin-is-ops-only:
            permissions: [{{ url_path: {{ path: {{ prefix: /admin }} }} }}]
            principals:
              - not_id: {{ authenticated: {{ principal_name: {{ exact: "spiffe://gofe.test/ns/shop/sa/ops" }} }} }}
{router}  - name: open
    address: "127.0.0.1:{open}"
    tls:
      certificate_chain: "{d}/server.pem"
      private_key: "{d}/server-key.pem"
      validation_context:
        trusted_ca: {{ inline_string: "{ca}" }}
    rbac:
      rules:
        policies:
          authenticated:
            permissions: [{{ any: true }}]
            principals: [{{ authenticated: {{}} }}]
{router}clusters:
  - name: web
    endpoints: [{{ address: "127.0.0.1:{backend}" }}]
"#,
        log = log.display(),
        d = dir.display(),
        ca = std::fs::read_to_string(pki.path("ca.pem"))
            .unwrap()
            .replace('\n', "\\n"),
    );
    std::fs::write(dir.join("proxy.yaml"), config).unwrap();
    let file = dir.join("proxy.yaml").display().to_string();
    let mut proxy = Proc::start(&["proxy", "--config", &file], &dir);
    let get = |client: Option<&str>, port: u16, path: &str| {
        https(&dir, "ca.pem", client, addr(port), path)
    };
    until("the proxy to serve", Duration::from_secs(60), || {
        get(Some("web"), strict, "/")
            .ok()
            .filter(|(s, _)| *s == 200)
    });

    // The strict listener: refused at the handshake without a certificate, with one from
    // another CA, and with one whose SAN is outside the shop namespace.
    for (client, why) in [
        (None, "no certificate"),
        (Some("impostor"), "another CA"),
        (Some("bank"), "a SAN mismatch"),
    ] {
        let r = get(client, strict, "/");
        assert!(r.is_err(), "{why}: {r:?}");
    }

    // Identity-based allow and deny, across processes, with the backend answering.
    let (status, body) = get(Some("web"), strict, "/items").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        get(Some("web"), strict, "/admin/users").unwrap(),
        (403, "RBAC: access denied".to_owned())
    );
    let (status, _) = get(Some("ops"), strict, "/admin/users").unwrap();
    assert_eq!(status, 200, "ops may");
    let denied =
        r#"gofe_rbac_denied_total{action="deny",listener="strict",policy="admin-is-ops-only"}"#;
    until("the denial to be counted", Duration::from_secs(10), || {
        (metric(admin, denied) == Some(1.0)).then_some(())
    });
    until(
        "the denial in the access log",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .any(|l| {
                    l == "403 rbac_access_denied_matched_policy[admin-is-ops-only] /admin/users"
                })
                .then_some(())
        },
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().any(|l| l == "200 - /items"), "{text}");

    // The open listener: a certificate is optional but verified when presented, and its ALLOW
    // policy lets only authenticated clients through.
    assert_eq!(
        get(None, open, "/").unwrap(),
        (403, "RBAC: access denied".to_owned())
    );
    assert_eq!(get(Some("bank"), open, "/").unwrap().0, 200, "any SAN here");
    let r = get(Some("impostor"), open, "/");
    assert!(r.is_err(), "a presented certificate is verified: {r:?}");
    let none = r#"gofe_rbac_denied_total{action="allow",listener="open",policy="none"}"#;
    until(
        "the open listener's denial",
        Duration::from_secs(10),
        || (metric(admin, none) == Some(1.0)).then_some(()),
    );

    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(0));
}
