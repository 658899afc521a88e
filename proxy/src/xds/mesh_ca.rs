//! The proxy's mesh CA client: its workload certificate from the control plane's
//! `CreateCertificate` (Istio's `IstioCertificateService`, served by gofe's controller on its
//! xDS port), kept in the proxy's [`SecretStore`] and rotated before it expires.
//!
//! ```text
//!   token file ─┐     key made here (never sent)
//!               ▼        │ CSR (node id as SAN)
//!   CreateCertificate ◀──┘  over TLS verified with the trust bundle, no client certificate
//!        │ chain [leaf, root]
//!        ▼
//!   SecretStore::set ──▶ the ADS connection's client certificate (from its next handshake)
//!        ▲
//!        └── again at half the remaining lifetime (± 5 % jitter); on failure, with backoff
//! ```
//!
//! The ADS stream is never dropped for a rotation: an open connection keeps the certificate
//! it shook hands with, and the next connection presents the new one. Series:
//! `gofe_identity_certificate_expiry_seconds` (the leaf's `notAfter`, Unix seconds),
//! `gofe_identity_certificate_issued_seconds` (when it arrived), and
//! `gofe_identity_certificate_requests_total{result}` (`issued`, `failed`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gofe_proto::ca::{IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE_PATH};
use prometheus::{IntCounterVec, IntGauge, Opts};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::identity::{Identity, SecretStore};

use super::client::{backoff, Connector};

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MeshCaError {
    /// The token or trust bundle file could not be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The control plane could not be reached.
    #[error("connect: {0}")]
    Connect(String),
    /// The control plane refused the request (`UNAUTHENTICATED` for a bad token,
    /// `INVALID_ARGUMENT` for a CSR it does not sign).
    #[error("the mesh CA refused the request: {code:?}: {message}")]
    Refused {
        /// The gRPC code.
        code: tonic::Code,
        /// The control plane's message.
        message: String,
    },
    /// The answer does not make an identity, or the key or CSR could not be made.
    #[error("{0}")]
    Invalid(String),
}

impl MeshCaError {
    /// Whether asking again with the same token cannot succeed (until the token changes).
    pub fn is_refusal(&self) -> bool {
        matches!(self, MeshCaError::Refused { .. })
    }
}

/// Where and how to ask.
#[derive(Clone, Debug)]
pub struct MeshCaOptions {
    /// The control plane, `host:port`.
    pub address: String,
    /// The name to verify in its certificate.
    pub server_name: String,
    /// The roots that verify it (PEM), also the proxy's trust bundle.
    pub trust_bundle: PathBuf,
    /// The token, read again at every request (a projected token is rotated by the kubelet).
    pub token_file: PathBuf,
    /// The node id, asked for as a SAN (a URI when it is one, a DNS name when it is one).
    pub node_id: String,
    /// The lifetime asked for (`None`: the CA's default).
    pub lifetime: Option<Duration>,
}

/// The series of the identity.
#[derive(Clone)]
struct IdentityMetrics {
    expiry: IntGauge,
    issued: IntGauge,
    requests: IntCounterVec,
}

impl IdentityMetrics {
    fn register(registry: &prometheus::Registry) -> IdentityMetrics {
        let expiry = IntGauge::new(
            "gofe_identity_certificate_expiry_seconds",
            "notAfter of the workload certificate in force, Unix seconds (0 before the first).",
        )
        .expect("valid metric");
        let issued = IntGauge::new(
            "gofe_identity_certificate_issued_seconds",
            "When the workload certificate in force arrived from the mesh CA, Unix seconds.",
        )
        .expect("valid metric");
        let requests = IntCounterVec::new(
            Opts::new(
                "gofe_identity_certificate_requests_total",
                "Certificate requests to the mesh CA, by result (issued, failed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for r in ["issued", "failed"] {
            requests.with_label_values(&[r]);
        }
        for c in [
            Box::new(expiry.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(issued.clone()),
            Box::new(requests.clone()),
        ] {
            // A second client on the same proxy (tests) shares the first one's series.
            let _ = registry.register(c);
        }
        IdentityMetrics {
            expiry,
            issued,
            requests,
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A client of the mesh CA.
pub struct MeshCaClient {
    options: MeshCaOptions,
    tls: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    roots: Vec<CertificateDer<'static>>,
    metrics: IdentityMetrics,
}

impl MeshCaClient {
    /// A client for `options`, counting in `registry`. The trust bundle is read now.
    pub fn new(
        options: MeshCaOptions,
        registry: &prometheus::Registry,
    ) -> Result<MeshCaClient, MeshCaError> {
        let file_error = |e: gofe_tls::TlsError| MeshCaError::File {
            path: options.trust_bundle.display().to_string(),
            message: e.to_string(),
        };
        let roots = gofe_tls::certs(&options.trust_bundle).map_err(file_error)?;
        let store = gofe_tls::roots(&options.trust_bundle).map_err(file_error)?;
        let mut tls = rustls::ClientConfig::builder_with_provider(gofe_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| MeshCaError::Invalid(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(options.server_name.clone())
            .map_err(|e| MeshCaError::Invalid(format!("server name: {e}")))?;
        Ok(MeshCaClient {
            tls: Arc::new(tls),
            name,
            roots,
            metrics: IdentityMetrics::register(registry),
            options,
        })
    }

    /// One request: a fresh key, a CSR, the answer as an [`Identity`]. Counted.
    pub async fn request(&self) -> Result<Identity, MeshCaError> {
        let outcome = self.request_uncounted().await;
        let result = if outcome.is_ok() { "issued" } else { "failed" };
        self.metrics.requests.with_label_values(&[result]).inc();
        outcome
    }

    async fn request_uncounted(&self) -> Result<Identity, MeshCaError> {
        let token =
            std::fs::read_to_string(&self.options.token_file).map_err(|e| MeshCaError::File {
                path: self.options.token_file.display().to_string(),
                message: e.to_string(),
            })?;
        let token = token.trim();
        let (csr, key) = csr(&self.options.node_id)?;
        let channel = tonic::transport::Endpoint::from_static("http://xds.invalid")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(Connector {
                address: self.options.address.clone(),
                tls: Some((Arc::clone(&self.tls), self.name.clone())),
            })
            .await
            .map_err(|e| MeshCaError::Connect(super::client::chain(&e)))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| MeshCaError::Connect(e.to_string()))?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: self
                .options
                .lifetime
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        });
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| MeshCaError::Invalid("the token is not a valid header value".into()))?;
        request.metadata_mut().insert("authorization", bearer);
        let codec: tonic_prost::ProstCodec<IstioCertificateRequest, IstioCertificateResponse> =
            tonic_prost::ProstCodec::default();
        let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH);
        let response = grpc
            .unary(request, path, codec)
            .await
            .map_err(|s| MeshCaError::Refused {
                code: s.code(),
                message: s.message().to_owned(),
            })?
            .into_inner();
        let mut chain = Vec::new();
        for pem in &response.cert_chain {
            for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
                chain.push(c.map_err(|e| MeshCaError::Invalid(format!("certificate chain: {e}")))?);
            }
        }
        // The chain ends with the root; the proxy keeps its configured roots as well.
        let mut roots = self.roots.clone();
        if chain.len() > 1 {
            if let Some(root) = chain.last() {
                if !roots.contains(root) {
                    roots.push(root.clone());
                }
            }
            chain.pop();
        }
        Identity::new(chain, key, &roots).map_err(|e| MeshCaError::Invalid(e.to_string()))
    }

    /// Puts `identity` in `store` and the series.
    fn install(&self, store: &SecretStore, identity: Identity) {
        self.metrics.expiry.set(unix(identity.not_after));
        self.metrics.issued.set(unix(SystemTime::now()));
        tracing::info!(identity = ?identity.uris, expires_in = ?identity.not_after.duration_since(SystemTime::now()).unwrap_or_default(),
            "workload certificate from the mesh CA in force");
        store.set(identity);
    }

    /// The first certificate, asked for until it comes (with backoff, logged at every
    /// failure), then in `store`.
    pub async fn first(&self, store: &SecretStore) {
        let mut attempt = 0u32;
        loop {
            match self.request().await {
                Ok(identity) => return self.install(store, identity),
                Err(e) => {
                    let delay =
                        backoff(attempt, Duration::from_millis(250), Duration::from_secs(30));
                    tracing::error!(server = %self.options.address, error = %e, retry_in = ?delay,
                        "cannot get a workload certificate from the mesh CA");
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Rotates the certificate in `store` for ever: at half its remaining lifetime (± 5 %),
    /// and after a failure again with backoff.
    pub async fn rotate(self, store: Arc<SecretStore>) {
        let mut attempt = 0u32;
        loop {
            let wait = match store.current() {
                Some(id) if attempt == 0 => refresh_in(&id, SystemTime::now()),
                _ => backoff(attempt, Duration::from_millis(500), Duration::from_secs(30)),
            };
            tokio::time::sleep(wait).await;
            match self.request().await {
                Ok(identity) => {
                    attempt = 0;
                    self.install(&store, identity);
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(error = %e, "workload certificate rotation failed; the current one stays and the request is retried");
                }
            }
        }
    }
}

/// How long from `now` until `identity` should be renewed: half of what remains of it, with
/// ± 5 % of that as jitter, so proxies started together do not all ask at once.
pub fn refresh_in(identity: &Identity, now: SystemTime) -> Duration {
    let remaining = identity.not_after.duration_since(now).unwrap_or_default();
    let jitter = 0.95 + fastrand::f64() * 0.10;
    remaining.mul_f64(0.5 * jitter)
}

/// A fresh key and a CSR for `node_id`: (CSR PEM, key).
fn csr(node_id: &str) -> Result<(String, PrivateKeyDer<'static>), MeshCaError> {
    let key = rcgen::KeyPair::generate().map_err(|e| MeshCaError::Invalid(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if node_id.starts_with("spiffe://") {
        if let Ok(uri) = rcgen::Ia5String::try_from(node_id) {
            params.subject_alt_names.push(rcgen::SanType::URI(uri));
        }
    } else if matches!(ServerName::try_from(node_id), Ok(ServerName::DnsName(_))) {
        if let Ok(dns) = rcgen::Ia5String::try_from(node_id) {
            params.subject_alt_names.push(rcgen::SanType::DnsName(dns));
        }
    }
    let request = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| MeshCaError::Invalid(format!("making the CSR: {e}")))?;
    let der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| MeshCaError::Invalid(format!("the key: {e}")))?;
    Ok((request, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_about_half_the_remaining_lifetime() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["p".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        let id = Identity::new(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            &[],
        )
        .unwrap();
        let now = id.not_before + Duration::from_secs(4 * 3600); // 20 h remain
        for _ in 0..100 {
            let wait = refresh_in(&id, now).as_secs_f64();
            assert!((9.5 * 3600.0..=10.5 * 3600.0).contains(&wait), "{wait}");
        }
        assert_eq!(
            refresh_in(&id, id.not_after + Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_csr_asks_for_the_node_id_as_the_san_it_can_be() {
        for (node, want) in [
            ("proxy-1", Some("proxy-1")),
            ("spiffe://td/ns/a/sa/b", Some("spiffe://td/ns/a/sa/b")),
            ("sidecar~10.0.0.1~web.shop~shop.svc.cluster.local", None),
        ] {
            let (pem, _) = csr(node).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
            let der = rustls_pemfile::csr(&mut pem.as_bytes()).unwrap().unwrap();
            let der: &[u8] = der.as_ref();
            let found = want.is_some_and(|w| der.windows(w.len()).any(|x| x == w.as_bytes()));
            assert_eq!(found, want.is_some(), "{node}");
        }
    }
}
