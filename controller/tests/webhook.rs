//! The sidecar-injection webhook on a real socket: HTTPS with an rcgen-made certificate,
//! AdmissionReviews in, AdmissionReviews out (a JSONPatch, a warning, a denial), 400 for what
//! is not one, and a renewed certificate served without a restart.

#![allow(unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use gofe_controller::config::WebhookConfig;
use gofe_controller::webhook::Webhook;
use gofe_inject::admission::FailurePolicy;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gofe-webhook-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    /// A CA and a serving certificate for `localhost` signed by it, written as tls.crt/tls.key;
    /// returns the CA's PEM.
    fn issue(&self, ca_name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        // Key first, so the reloader never sees a new certificate with the old key for long.
        std::fs::write(self.dir.join("tls.key.new"), leaf_key.serialize_pem()).unwrap();
        std::fs::write(self.dir.join("tls.crt.new"), leaf.pem()).unwrap();
        std::fs::rename(self.dir.join("tls.key.new"), self.dir.join("tls.key")).unwrap();
        std::fs::rename(self.dir.join("tls.crt.new"), self.dir.join("tls.crt")).unwrap();
        ca.pem()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(pki: &Pki, policy: FailurePolicy, reload: Duration) -> WebhookConfig {
    WebhookConfig {
        address: "127.0.0.1:0".into(),
        cert_file: pki.path("tls.crt"),
        key_file: pki.path("tls.key"),
        failure_policy: policy,
        sidecar: gofe_inject::InjectConfig {
            image: "registry.example/gofe:test".into(),
            ..Default::default()
        },
        reload_interval: reload,
    }
}

/// `POST path` with `body` over a new TLS connection trusting only `ca`: (status, body).
async fn post(
    addr: SocketAddr,
    ca: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Bytes), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(gofe_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

fn review(annotations: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "b9a1c3f0-0000-4000-8000-000000000001",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "operation": "CREATE", "namespace": "shop",
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "generateName": "web-", "namespace": "shop", "annotations": annotations },
                "spec": { "containers": [{ "name": "web", "image": "nginx" }] }
            }
        }
    }))
    .unwrap()
}

fn patch_of(answer: &Value) -> Vec<Value> {
    let encoded = answer["response"]["patch"].as_str().expect("a patch");
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_pod_is_answered_with_a_jsonpatch_over_https() {
    let pki = Pki::new("patch");
    let ca = pki.issue("ca-1");
    let hook = Webhook::start(&config(
        &pki,
        FailurePolicy::Ignore,
        Duration::from_secs(30),
    ))
    .await
    .unwrap();
    let (status, body) = post(hook.addr(), &ca, "/inject", review(json!({})))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "b9a1c3f0-0000-4000-8000-000000000001"
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch = patch_of(&answer);
    let init = patch
        .iter()
        .find(|op| op["path"] == "/spec/initContainers")
        .expect("initContainers added");
    assert_eq!(init["op"], "add");
    assert_eq!(init["value"][1]["name"], "gofe-proxy");
    assert_eq!(init["value"][1]["image"], "registry.example/gofe:test");
    assert_eq!(init["value"][1]["restartPolicy"], "Always");
}

#[tokio::test]
async fn a_malformed_review_gets_400_with_the_reason() {
    let pki = Pki::new("bad");
    let ca = pki.issue("ca-1");
    let hook = Webhook::start(&config(
        &pki,
        FailurePolicy::Ignore,
        Duration::from_secs(30),
    ))
    .await
    .unwrap();
    let (status, body) = post(hook.addr(), &ca, "/inject", b"{\"kind\": 7".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).starts_with("bad AdmissionReview: "),
        "{body:?}"
    );
    let (status, body) = post(
        hook.addr(),
        &ca,
        "/inject",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(
        (status, &body[..]),
        (400, &b"bad AdmissionReview: no request\n"[..])
    );
}

#[tokio::test]
async fn a_pod_it_cannot_patch_is_denied_under_fail_and_admitted_under_ignore() {
    let pki = Pki::new("policy");
    let ca = pki.issue("ca-1");
    let bad = json!({ "gofe.io/skip-outbound-ports": "all" });
    for (policy, allowed) in [(FailurePolicy::Fail, false), (FailurePolicy::Ignore, true)] {
        let hook = Webhook::start(&config(&pki, policy, Duration::from_secs(30)))
            .await
            .unwrap();
        let (status, body) = post(hook.addr(), &ca, "/inject", review(bad.clone()))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_slice(&body).unwrap();
        let r = &answer["response"];
        assert_eq!(r["allowed"], allowed, "{policy:?}: {r}");
        assert!(r.get("patch").is_none(), "{policy:?}: {r}");
        let warning = r["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains("metadata.annotations.gofe.io/skip-outbound-ports"),
            "{warning}"
        );
        assert_eq!(
            r["status"]["code"].as_u64(),
            (!allowed).then_some(400),
            "{r}"
        );
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let pki = Pki::new("reload");
    let old_ca = pki.issue("ca-old");
    let hook = Webhook::start(&config(
        &pki,
        FailurePolicy::Ignore,
        Duration::from_millis(100),
    ))
    .await
    .unwrap();
    let healthy = |ca: String| {
        let addr = hook.addr();
        async move {
            post(addr, &ca, "/inject", review(json!({})))
                .await
                .map(|(s, _)| s)
        }
    };
    assert_eq!(healthy(old_ca.clone()).await, Ok(200));
    let new_ca = pki.issue("ca-new");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while healthy(new_ca.clone()).await != Ok(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        healthy(old_ca).await.is_err(),
        "the old certificate is no longer served"
    );
}

/// Each review is counted by result and timed, in the registry the webhook is given (the
/// controller's, on its /metrics).
#[tokio::test]
async fn reviews_are_counted_by_result_and_timed() {
    let pki = Pki::new("metrics");
    let ca = pki.issue("ca-1");
    let registry = prometheus::Registry::new();
    let hook = Webhook::start_with(
        &config(&pki, FailurePolicy::Ignore, Duration::from_secs(30)),
        gofe_controller::webhook::WebhookMetrics::new(&registry),
    )
    .await
    .unwrap();
    let reviews = [
        review(json!({})),
        review(json!({})),
        review(json!({ "gofe.io/inject": "disabled" })),
        review(json!({ "gofe.io/skip-outbound-ports": "all" })),
        b"{\"kind\": 7".to_vec(),
    ];
    for body in reviews {
        post(hook.addr(), &ca, "/inject", body).await.unwrap();
    }
    let mut counted = std::collections::BTreeMap::new();
    let mut timed = 0;
    for family in registry.gather() {
        match family.name() {
            "gofe_injection_reviews_total" => {
                for m in family.get_metric() {
                    let result = m.get_label()[0].value().to_owned();
                    counted.insert(result, m.get_counter().get_value());
                }
            }
            "gofe_injection_review_duration_seconds" => {
                timed = family.get_metric()[0].get_histogram().get_sample_count();
            }
            _ => {}
        }
    }
    let expected: std::collections::BTreeMap<String, f64> = [
        ("failed_admitted", 1.0),
        ("failed_denied", 0.0),
        ("injected", 2.0),
        ("malformed", 1.0),
        ("skipped", 1.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counted, expected);
    assert_eq!(timed, 5);
}
