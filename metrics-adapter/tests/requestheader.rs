//! The front-proxy CA read at run time from `kube-system/extension-apiserver-authentication`
//! and followed through a rotation, by the adapter's TLS server on a real socket.
//!
//! No Kubernetes API server can run on this machine: the ConfigMap is served by the
//! repository's in-memory API server behind kube-rs's `Client::new(service, ..)`
//! (`tests/fake_api`, kube-rs's mock-service style), which answers list and watch as the
//! controller's tests use it. The TLS side is real: rustls clients with certificates from
//! generated CAs, over loopback TCP, against the adapter as `gofe adapter` starts it.

#[path = "../../tests/fake_api/mod.rs"]
mod fake_api;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gofe_metrics_adapter::provider::CacheConfig;
use gofe_metrics_adapter::requestheader::{self, RequestHeaderError};
use gofe_metrics_adapter::{Adapter, AdapterOptions, RequestHeaderSource, TlsFiles};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;

const CONFIGMAPS: &str = "/api/v1/configmaps";

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

/// A certificate and key signed by `issuer`, as PEM.
fn leaf(cn: &str, sans: Vec<String>, client: bool, issuer: &Ca) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(sans).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gofe-requestheader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The ConfigMap as kube-apiserver writes it.
fn auth_configmap(ca_bundle: &str, allowed_names: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {
            "client-ca-file": "the cluster's client CA: not the front proxy's",
            "requestheader-client-ca-file": ca_bundle,
            "requestheader-allowed-names": serde_json::to_string(allowed_names).unwrap(),
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        }
    })
}

/// A TLS client of the adapter: trusts `serving_ca`, presents `identity` when given.
struct Client {
    config: Arc<rustls::ClientConfig>,
}

impl Client {
    fn new(serving_ca: &str, identity: Option<&(String, String)>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(serving_ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(gofe_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            config: Arc::new(config),
        }
    }

    /// One HTTP/1.1 connection (kept alive for as many requests as are sent on it).
    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// The status of `GET path` on a new connection; `Err` when TLS refused the certificate
    /// (with TLS 1.3 the client learns it at its first read).
    async fn get(&self, addr: SocketAddr, path: &str) -> Result<u16, String> {
        let mut sender = self.connect(addr).await?;
        send(&mut sender, path).await
    }
}

async fn send(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> Result<u16, String> {
    let request = http::Request::get(path)
        .header("host", "localhost")
        .header("x-remote-user", "alice")
        .body(Empty::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// Polls `probe` until it returns `want`, for at most 10 s; the last answer otherwise.
async fn eventually<F, Fut>(what: &str, want: Result<u16, ()>, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u16, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = probe().await;
        let matches = match (&got, &want) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(())) => true,
            _ => false,
        };
        if matches {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_front_proxy_ca_is_honoured_without_a_restart() {
    let dir = temp_dir();
    let serving_ca = ca("serving-ca");
    let (cert, key) = leaf(
        "gofe-metrics-adapter",
        vec!["localhost".into()],
        false,
        &serving_ca,
    );
    let (old_ca, new_ca) = (ca("front-proxy-ca-1"), ca("front-proxy-ca-2"));
    let old_client = leaf("front-proxy-client", vec![], true, &old_ca);
    let new_client = leaf("front-proxy-client", vec![], true, &new_ca);

    let fake = fake_api::FakeApi::default();
    let adapter = Adapter::start_with_client(
        AdapterOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            // Nothing listens there: discovery answers without Prometheus.
            prometheus_url: "http://127.0.0.1:1".into(),
            prometheus_ca_file: None,
            query_timeout: Duration::from_millis(200),
            rules_file: None,
            cache: CacheConfig::default(),
            relist_interval: Duration::from_secs(60),
            discovery_lookback: Duration::from_secs(3600),
            resource_discovery: Default::default(),
            scrape: Vec::new(),
            scrape_interval: Duration::from_secs(5),
            tls: Some(TlsFiles {
                cert: write(&dir, "rotation.crt", &cert),
                key: write(&dir, "rotation.key", &key),
                requestheader: RequestHeaderSource::ConfigMap {
                    namespace: "kube-system".into(),
                    name: "extension-apiserver-authentication".into(),
                    allowed_names: vec![],
                },
                reload_interval: Duration::from_secs(60),
            }),
        },
        Some(fake.client("adapter")),
    )
    .await
    .expect("the adapter starts before the ConfigMap exists");
    let addr = adapter.addr();
    let serving = serving_ca.cert.pem();
    let anonymous = Client::new(&serving, None);
    let old = Client::new(&serving, Some(&old_client));
    let new = Client::new(&serving, Some(&new_client));

    // No ConfigMap yet: TLS serves (probes), the API refuses everyone, readiness says why.
    assert_eq!(anonymous.get(addr, "/livez").await, Ok(200));
    assert_eq!(anonymous.get(addr, "/readyz").await, Ok(503));
    assert_eq!(anonymous.get(addr, "/apis").await, Ok(401));

    // The cluster publishes its front-proxy CA: the aggregator's certificate is accepted.
    fake.put(
        CONFIGMAPS,
        auth_configmap(&old_ca.cert.pem(), &["front-proxy-client"]),
    );
    eventually("old CA accepted", Ok(200), || old.get(addr, "/apis")).await;
    assert!(
        new.get(addr, "/apis").await.is_err(),
        "another CA's certificate fails TLS"
    );
    let mut kept_alive = old.connect(addr).await.unwrap();
    assert_eq!(send(&mut kept_alive, "/apis").await, Ok(200));

    // Rotation, step 1: both CAs in the bundle; both certificates accepted.
    let both = format!("{}{}", old_ca.cert.pem(), new_ca.cert.pem());
    fake.put(CONFIGMAPS, auth_configmap(&both, &["front-proxy-client"]));
    eventually("new CA accepted", Ok(200), || new.get(addr, "/apis")).await;
    assert_eq!(old.get(addr, "/apis").await, Ok(200));
    assert_eq!(send(&mut kept_alive, "/apis").await, Ok(200));

    // Step 2: the old CA leaves the bundle. New handshakes with its certificate fail, and the
    // connection verified under it is refused from its next request on.
    fake.put(
        CONFIGMAPS,
        auth_configmap(&new_ca.cert.pem(), &["front-proxy-client"]),
    );
    eventually("old CA refused", Err(()), || old.get(addr, "/apis")).await;
    assert_eq!(send(&mut kept_alive, "/apis").await, Ok(401));
    assert_eq!(new.get(addr, "/apis").await, Ok(200));

    // The allowed names come from the ConfigMap too.
    fake.put(
        CONFIGMAPS,
        auth_configmap(&new_ca.cert.pem(), &["another-aggregator"]),
    );
    eventually("name no longer allowed", Ok(403), || new.get(addr, "/apis")).await;

    // A ConfigMap that loses its CA, or is deleted, leaves the settings in force.
    fake.put(
        CONFIGMAPS,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
               "data": {"client-ca-file": "x"}}),
    );
    fake.delete(
        CONFIGMAPS,
        "kube-system",
        "extension-apiserver-authentication",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(new.get(addr, "/apis").await, Ok(403));
    assert!(old.get(addr, "/apis").await.is_err());

    // What the adapter asked the API server for: list and watch of that namespace's
    // ConfigMaps, nothing written.
    let log = fake.log();
    assert!(!log.is_empty());
    for request in &log {
        assert_eq!(request.method, http::Method::GET, "{request:?}");
        assert_eq!(request.path, "/api/v1/namespaces/kube-system/configmaps");
    }
    adapter.stop();
}

/// A user-given CA file overrides the cluster: no Kubernetes client is needed, and a CA
/// replaced in the file is honoured at the next reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_overrides_the_cluster_and_is_reread() {
    let dir = temp_dir();
    let serving_ca = ca("serving-ca");
    let (cert, key) = leaf(
        "gofe-metrics-adapter",
        vec!["localhost".into()],
        false,
        &serving_ca,
    );
    let (old_ca, new_ca) = (ca("file-ca-1"), ca("file-ca-2"));
    let ca_file = write(&dir, "file-ca.crt", &old_ca.cert.pem());
    let adapter = Adapter::start_with_client(
        AdapterOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            prometheus_url: "http://127.0.0.1:1".into(),
            prometheus_ca_file: None,
            query_timeout: Duration::from_millis(200),
            rules_file: None,
            cache: CacheConfig::default(),
            relist_interval: Duration::from_secs(60),
            discovery_lookback: Duration::from_secs(3600),
            resource_discovery: Default::default(),
            scrape: Vec::new(),
            scrape_interval: Duration::from_secs(5),
            tls: Some(TlsFiles {
                cert: write(&dir, "file.crt", &cert),
                key: write(&dir, "file.key", &key),
                requestheader: RequestHeaderSource::File {
                    client_ca: ca_file.clone(),
                    allowed_names: vec!["front-proxy-client".into()],
                },
                reload_interval: Duration::from_secs(1),
            }),
        },
        None,
    )
    .await
    .expect("starts without a Kubernetes client");
    let addr = adapter.addr();
    let serving = serving_ca.cert.pem();
    let old = Client::new(
        &serving,
        Some(&leaf("front-proxy-client", vec![], true, &old_ca)),
    );
    let new = Client::new(
        &serving,
        Some(&leaf("front-proxy-client", vec![], true, &new_ca)),
    );
    assert_eq!(old.get(addr, "/apis").await, Ok(200));
    assert!(new.get(addr, "/apis").await.is_err());
    std::fs::write(&ca_file, new_ca.cert.pem()).unwrap();
    eventually("the file's new CA accepted", Ok(200), || {
        new.get(addr, "/apis")
    })
    .await;
    eventually("the file's old CA refused", Err(()), || {
        old.get(addr, "/apis")
    })
    .await;
    adapter.stop();
}

/// The watcher asks for the one ConfigMap by name (RBAC's `resourceNames` authorises a list
/// or watch only with that field selector), and a refusal reaches the caller with the hint.
/// The API server is a `tower::service_fn` (kube-rs's mock-service style).
#[tokio::test]
async fn the_watch_names_the_configmap_and_reports_a_refusal() {
    let queries = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = queries.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(format!(
                "{} {}",
                req.uri().path(),
                req.uri().query().unwrap_or_default()
            ));
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Forbidden", "code": 403,
                "message": "configmaps \"extension-apiserver-authentication\" is forbidden"});
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(403)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(Bytes::from(body.to_string())))
                    .unwrap(),
            )
        }
    });
    let client = kube::Client::new(service, "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(requestheader::watch_config_map(
        kube::Api::namespaced(client, "kube-system"),
        "extension-apiserver-authentication".into(),
        move |r| {
            let _ = tx.send(r);
        },
    ));
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an answer")
        .expect("one");
    task.abort();
    match first {
        Err(e @ RequestHeaderError::Api { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("kube-system/extension-apiserver-authentication"),
                "{text}"
            );
            assert!(text.contains("list and watch"), "{text}");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    let queries = queries.lock().unwrap().clone();
    let (path, query) = queries[0].split_once(' ').unwrap();
    assert_eq!(path, "/api/v1/namespaces/kube-system/configmaps");
    let params: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(
        params.get("fieldSelector").copied(),
        Some("metadata.name%3Dextension-apiserver-authentication"),
        "{query}"
    );
}
