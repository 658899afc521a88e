//! p99 latency of the sidecar-injection webhook at a fixed rate: AdmissionReviews for a Pod,
//! sent open-loop at RATE per second for COUNT requests over HTTPS on 127.0.0.1 (kept-alive
//! HTTP/1.1 connections, as the API server keeps them), each timed from its scheduled send to
//! the end of its answer. Bounded: COUNT requests (default 1000 at 100/s: 10 s). Prints the
//! quantiles; asserts nothing. BENCHMARKS.md has the command and a run.
//!
//! `cargo bench -p gofe-controller --bench webhook [-- RATE COUNT]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gofe_controller::config::WebhookConfig;
use gofe_controller::webhook::Webhook;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const CONNECTIONS: usize = 8;

fn review() -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "b9a1c3f0-0000-4000-8000-000000000001",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "operation": "CREATE", "namespace": "shop",
                "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "generateName": "web-", "namespace": "shop", "labels": { "app": "web" },
                                  "annotations": { "gofe.io/proxy-cpu": "300m" } },
                    "spec": { "containers": [{ "name": "web", "image": "nginx", "ports": [{ "containerPort": 8080 }],
                              "env": [{ "name": "A", "value": "1" }], "resources": { "requests": { "cpu": "100m" } } }] }
                }
            }
        }))
        .expect("JSON"),
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rate: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100.0);
    let count: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000)
        .min(100_000);

    let dir = std::env::temp_dir().join(format!("gofe-webhook-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write");
    let hook = Webhook::start(&WebhookConfig {
        address: "127.0.0.1:0".into(),
        cert_file: dir.join("tls.crt").display().to_string(),
        key_file: dir.join("tls.key").display().to_string(),
        failure_policy: Default::default(),
        sidecar: Default::default(),
        reload_interval: Duration::from_secs(3600),
    })
    .await
    .expect("webhook starts");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.pem().as_bytes()).expect("PEM"))
        .expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(gofe_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let (pool_tx, pool_rx) = async_channel(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let tcp = tokio::net::TcpStream::connect(hook.addr())
            .await
            .expect("connect");
        let stream = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1");
        tokio::spawn(conn);
        pool_tx.send(sender).await.expect("pool");
    }
    let body = review();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, bool)>();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    for i in 0..count {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (pool_tx, pool_rx, done_tx, body) = (
            pool_tx.clone(),
            pool_rx.clone(),
            done_tx.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            let mut sender = pool_rx.lock().await.recv().await.expect("a connection");
            let request = http::Request::post("/inject")
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(body))
                .expect("request");
            let ok = match sender.send_request(request).await {
                Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            let _ = done_tx.send((due.elapsed(), ok));
            let _ = pool_tx.send(sender).await;
        });
    }
    drop(done_tx);
    let mut latencies = Vec::with_capacity(count);
    let mut failed = 0;
    while let Some((latency, ok)) = done_rx.recv().await {
        latencies.push(latency);
        failed += usize::from(!ok);
    }
    let wall = start.elapsed();
    latencies.sort();
    let q = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "webhook: {count} AdmissionReviews at {rate}/s over {CONNECTIONS} TLS connections in {:.1} s, {failed} failed",
        wall.as_secs_f64()
    );
    println!(
        "latency  p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        q(0.50),
        q(0.90),
        q(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    hook.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

type Pool = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A pool of connections: an mpsc whose receiver is shared behind a mutex.
fn async_channel(
    n: usize,
) -> (
    tokio::sync::mpsc::Sender<Pool>,
    Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Pool>>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(n);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}
