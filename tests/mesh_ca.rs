//! The mesh CA across processes of the shipped binary: `gofe controller run` with `identity`
//! (a root it generates and keeps in files, bootstrap tokens in a file), a `gofe backend`, and
//! `gofe proxy --bootstrap` with `identity.token_file` and no certificate of its own.
//!
//! Checked here: a proxy with a valid token gets a certificate (its key made in the proxy),
//! connects over mutual TLS, takes its configuration and serves a request to the backend; a bad
//! token is refused with `UNAUTHENTICATED` and a CSR asking for a node id the token does not
//! grant with `INVALID_ARGUMENT`, both logged and counted in
//! `gofe_ca_certificate_requests_total{result}`; the controller restarted keeps its root (the
//! same file) and takes the proxy back; a 20 s certificate is rotated under steady load with
//! no failed request and the proxy's ADS stream kept.
//!
//! Kubernetes mode's TokenReview is checked in-process against a mock API service (kube-rs's
//! mock-service style, as tests/kubernetes.rs): no API server can run on this machine.

#![allow(unreachable_pub)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use support::process::{
    free_ports, http_get, loopback, metric, poll_until, tempdir, Proc, SteadyLoad,
};

const TOKEN: &str = "web-token-0123456789";
const NODE: &str = "proxy-1";

struct Mesh {
    dir: PathBuf,
    _backend: Proc,
    controller: Proc,
    proxy: Proc,
    listen: u16,
    admin: u16,
    proxy_admin: u16,
    xds: u16,
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// A bootstrap for node `node` asking the mesh CA with the token in `token_file`.
fn bootstrap(dir: &Path, name: &str, node: &str, token_file: &str, xds: u16, admin: u16) -> String {
    write(
        dir,
        name,
        &format!(
            "node: {{ id: \"{node}\", cluster: web }}\nxds_server:\n  address: \"127.0.0.1:{xds}\"\n  tls: {{ ca: ca/root.crt, server_name: localhost }}\nidentity: {{ token_file: {token_file} }}\nstatic_resources:\n  admin: {{ address: \"127.0.0.1:{admin}\" }}\n"
        ),
    );
    dir.join(name).display().to_string()
}

impl Mesh {
    /// Controller (certificates of `ttl`), backend and proxy; waits until a request goes
    /// through.
    fn start(ttl: &str) -> Mesh {
        let dir = tempdir();
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
        write(
            &dir,
            "proxy.yaml",
            &format!(
                "listeners:\n  - address: \"127.0.0.1:{listen}\"\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: web }} }}]\nclusters:\n  - name: web\n    endpoints:\n      - {{ address: \"127.0.0.1:{backend}\" }}\n"
            ),
        );
        write(
            &dir,
            "tokens.yaml",
            &format!("tokens:\n  - {{ token: \"{TOKEN}\", namespace: shop, service_account: web, node_ids: [{NODE}] }}\n"),
        );
        write(&dir, "token", &format!("{TOKEN}\n"));
        write(
            &dir,
            "controller.yaml",
            &format!(
                "proxy_config: proxy.yaml\ninterval: 1s\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\nxds: {{ address: \"127.0.0.1:{xds}\" }}\nidentity:\n  trust_domain: gofe.test\n  root: {{ cert_file: ca/root.crt, key_file: ca/root.key }}\n  tokens_file: tokens.yaml\n  workload_ttl: {ttl}\n  min_workload_ttl: 5s\n"
            ),
        );
        let controller = start_controller(&dir);
        poll_until(
            "the controller to write its generated root",
            Duration::from_secs(60),
            || dir.join("ca/root.crt").exists().then_some(()),
        );
        let b = bootstrap(&dir, "bootstrap.yaml", NODE, "token", xds, proxy_admin);
        let proxy = Proc::start(&["proxy", "--bootstrap", &b], &dir);
        poll_until(
            "the proxy to serve its configuration from the mesh-CA control plane",
            Duration::from_secs(60),
            || matches!(http_get(loopback(listen), "/"), Some((200, _))).then_some(()),
        );
        Mesh {
            dir,
            _backend: backend_proc,
            controller,
            proxy,
            listen,
            admin,
            proxy_admin,
            xds,
        }
    }

    fn ca_requests(&self, result: &str) -> Option<f64> {
        metric(
            loopback(self.admin),
            &format!("gofe_ca_certificate_requests_total{{result=\"{result}\"}}"),
        )
    }

    fn proxy_metric(&self, series: &str) -> Option<f64> {
        metric(loopback(self.proxy_admin), series)
    }

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

fn start_controller(dir: &Path) -> Proc {
    let config = dir.join("controller.yaml").display().to_string();
    Proc::start(&["controller", "run", "--config", &config], dir)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_proxy_with_a_bootstrap_token_gets_its_certificate_and_bad_requests_are_refused_and_counted() {
    let mut mesh = Mesh::start("24h");
    assert!(mesh.ca_requests("issued").unwrap() >= 1.0);
    assert!(mesh.streams_opened(NODE) >= 1, "{}", mesh.controller.logs());
    let expiry = mesh
        .proxy_metric("gofe_identity_certificate_expiry_seconds")
        .expect("the proxy exports its certificate's expiry");
    assert!(
        expiry > unix_now() + 23.0 * 3600.0,
        "a 24 h certificate: {expiry}"
    );
    assert!(
        mesh.proxy
            .logs()
            .contains("spiffe://gofe.test/ns/shop/sa/web"),
        "the identity is logged: {}",
        mesh.proxy.logs()
    );
    assert!(
        !std::fs::read_dir(&mesh.dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("key")),
        "no workload key was written anywhere"
    );

    // A bad token: UNAUTHENTICATED, counted, logged on both sides.
    let p = free_ports(2);
    write(&mesh.dir, "bad-token", "not-the-token-0123456789\n");
    let b = bootstrap(&mesh.dir, "bad.yaml", NODE, "bad-token", mesh.xds, p[0]);
    let mut bad = Proc::start(&["proxy", "--bootstrap", &b], &mesh.dir);
    poll_until(
        "the bad token to be counted",
        Duration::from_secs(30),
        || (mesh.ca_requests("unauthenticated")? >= 1.0).then_some(()),
    );
    poll_until(
        "the bad token's refusal in the proxy's log",
        Duration::from_secs(30),
        || {
            let logs = bad.logs();
            (logs.contains("Unauthenticated") && logs.contains("unknown bootstrap token"))
                .then_some(())
        },
    );
    assert!(mesh
        .controller
        .logs()
        .contains("certificate request refused"));
    bad.kill();

    // A valid token, but a node id it does not grant: INVALID_ARGUMENT, counted.
    let b = bootstrap(&mesh.dir, "other.yaml", "proxy-9", "token", mesh.xds, p[1]);
    let mut other = Proc::start(&["proxy", "--bootstrap", &b], &mesh.dir);
    poll_until(
        "the CSR for a node id not granted to be counted",
        Duration::from_secs(30),
        || (mesh.ca_requests("invalid_argument")? >= 1.0).then_some(()),
    );
    poll_until(
        "the refusal in the proxy's log",
        Duration::from_secs(30),
        || {
            let logs = other.logs();
            (logs.contains("InvalidArgument") && logs.contains("proxy-9")).then_some(())
        },
    );
    other.kill();
    assert_eq!(
        mesh.streams_opened("proxy-9"),
        0,
        "no stream without a certificate"
    );

    // The controller restarted keeps its root, and the proxy comes back to it.
    let root = std::fs::read(mesh.dir.join("ca/root.crt")).unwrap();
    mesh.controller.signal("TERM");
    assert_eq!(mesh.controller.wait_exit(Duration::from_secs(20)), Some(0));
    mesh.controller = start_controller(&mesh.dir);
    poll_until(
        "the proxy's stream to the restarted controller",
        Duration::from_secs(60),
        || (mesh.streams_opened(NODE) >= 1).then_some(()),
    );
    assert_eq!(
        std::fs::read(mesh.dir.join("ca/root.crt")).unwrap(),
        root,
        "the persisted root is kept"
    );
    assert!(
        !mesh.controller.logs().contains("generated a new root"),
        "{}",
        mesh.controller.logs()
    );
    assert!(matches!(
        http_get(loopback(mesh.listen), "/"),
        Some((200, _))
    ));
    mesh.stop();
}

#[test]
fn a_short_lived_certificate_is_rotated_under_load_with_no_failed_request_and_the_stream_kept() {
    let mesh = Mesh::start("20s");
    let issued = "gofe_identity_certificate_requests_total{result=\"issued\"}";
    let expiry = "gofe_identity_certificate_expiry_seconds";
    let first_expiry = mesh.proxy_metric(expiry).unwrap();
    let streams = mesh.streams_opened(NODE);
    assert_eq!(streams, 1, "{}", mesh.controller.logs());
    let load = SteadyLoad::start(loopback(mesh.listen));
    poll_until(
        "requests through the proxy",
        Duration::from_secs(30),
        || (load.sent() >= 20).then_some(()),
    );
    // Two rotations (each at about half of the remaining 20 s).
    poll_until(
        "two rotations of the proxy's certificate",
        Duration::from_secs(120),
        || (mesh.proxy_metric(issued)? >= 3.0).then_some(()),
    );
    let rotated_expiry = mesh.proxy_metric(expiry).unwrap();
    assert!(
        rotated_expiry > first_expiry,
        "{rotated_expiry} > {first_expiry}"
    );
    let sent_at_rotation = load.sent();
    poll_until(
        "more requests after the rotations",
        Duration::from_secs(30),
        || (load.sent() >= sent_at_rotation + 20).then_some(()),
    );
    let (sent, failures) = load.finish();
    assert_eq!(
        failures, 0,
        "no request failed across the rotations ({sent} sent)"
    );
    assert_eq!(
        mesh.streams_opened(NODE),
        streams,
        "the proxy stayed on its stream: {}",
        mesh.controller.logs()
    );
    assert!(mesh.ca_requests("issued").unwrap() >= 3.0);
    mesh.stop();
}

// === TokenReview against a mock API service ===

mod token_review {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use gofe_controller::ca::{Authenticator, Grant};
    use http_body_util::{BodyExt, Full};
    use serde_json::{json, Value};

    /// Answers TokenReviews: `good` is `system:serviceaccount:shop:web`, `user` a person's,
    /// anything else not authenticated. Keeps every request (path, body).
    #[derive(Clone, Default)]
    struct Reviewer {
        seen: Arc<Mutex<Vec<(String, Value)>>>,
    }

    impl tower_service::Service<http::Request<kube::client::Body>> for Reviewer {
        type Response = http::Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
            let seen = Arc::clone(&self.seen);
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let review: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                seen.lock()
                    .unwrap()
                    .push((parts.uri.path().to_owned(), review.clone()));
                let status = match review["spec"]["token"].as_str() {
                    Some("good") => json!({"authenticated": true,
                        "user": {"username": "system:serviceaccount:shop:web"}}),
                    Some("user") => json!({"authenticated": true, "user": {"username": "alice"}}),
                    _ => json!({"authenticated": false, "error": "token has expired"}),
                };
                let mut answer = review;
                answer["status"] = status;
                Ok(http::Response::builder()
                    .status(201)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string())))
                    .unwrap())
            })
        }
    }

    #[tokio::test]
    async fn a_service_account_token_is_reviewed_and_its_account_granted() {
        let reviewer = Reviewer::default();
        let auth = Authenticator::TokenReview {
            client: kube::Client::new(reviewer.clone(), "default"),
            audiences: vec!["gofe".into()],
        };
        assert_eq!(
            auth.authenticate("good").await.unwrap(),
            Grant {
                namespace: "shop".into(),
                service_account: "web".into(),
                node_ids: vec![],
            }
        );
        let seen = reviewer.seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, "/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(seen[0].1["spec"]["token"], "good");
        assert_eq!(seen[0].1["spec"]["audiences"], json!(["gofe"]));

        let e = auth.authenticate("expired").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("token has expired"), "{}", e.message());
        let e = auth.authenticate("user").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            e.message().contains("not a ServiceAccount"),
            "{}",
            e.message()
        );
    }
}
