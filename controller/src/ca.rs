//! The mesh CA (`identity` in the controller's file): the root it signs with, the workload
//! certificates it issues from CSRs, and the xDS port's own certificate.
//!
//! ```text
//!   proxy: key (never leaves) ──CSR + Bearer TOKEN──▶ CreateCertificate on the xDS port
//!   controller: token → (NS, SA[, node ids]) via tokens_file or a TokenReview
//!               CSR signature checked, its SANs checked against the grant
//!               ◀── [leaf: URI spiffe://TD/ns/NS/sa/SA (+ DNS node ids), root]
//!   proxy ══ ADS over mutual TLS with that certificate ══▶ node check (gofe_xds::identity)
//! ```
//!
//! **Which node ids an issued certificate may claim** (the rules of `gofe_xds::identity`
//! applied to what this CA puts in a certificate): the SPIFFE id itself
//! (`spiffe://TD/ns/NS/sa/SA`), an Istio node id `TYPE~IP~POD.NS~NS.svc.DOMAIN` whose two
//! namespaces are `NS`, and each node id a `tokens_file` entry lists in `node_ids` that the CSR
//! asked for as a DNS SAN (gofe's proxy asks for its node id when it is a DNS name). The CSR's
//! subject is ignored; a SAN it asks for that the grant does not cover (another URI, a DNS name
//! not listed, an IP or e-mail SAN) refuses the request with `INVALID_ARGUMENT`.
//!
//! The root is loaded from `identity.root` when its files exist, or generated (ECDSA P-256,
//! ten years) and written there at the first start so that a restart keeps it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gofe_xds::{CertificateAuthority, CertificateRequest};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::Deserialize;
use tonic::Status;

use crate::config::IdentityConfig;

/// Lifetime of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why the mesh CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A root file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Only one of the two root files exists.
    #[error("identity.root: {present} exists but {missing} does not: give both (a root of your own) or neither (the controller generates one)")]
    HalfRoot {
        /// The file that exists.
        present: String,
        /// The file that does not.
        missing: String,
    },
    /// The root files do not make a CA.
    #[error("identity.root: {0}")]
    Invalid(String),
}

/// A granted identity: what a token entitles its holder to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// Node ids the holder may claim besides those its SPIFFE id covers.
    pub node_ids: Vec<String>,
}

/// The tokens file (`identity.tokens_file`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Every token.
    pub tokens: Vec<TokenEntry>,
}

/// One bootstrap token and what it grants.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The secret, as the proxy sends it (`authorization: Bearer TOKEN`).
    pub token: String,
    /// Namespace of the identity granted.
    pub namespace: String,
    /// Service account of the identity granted.
    pub service_account: String,
    /// Node ids the holder may also claim (as DNS SANs). Default: none.
    #[serde(default)]
    pub node_ids: Vec<String>,
}

impl gofe_yaml::Validate for TokensFile {
    fn validate(&self, v: &mut gofe_yaml::Validator) {
        for (i, t) in self.tokens.iter().enumerate() {
            let field = format!("tokens[{i}]");
            if t.token.len() < 16 {
                v.error(
                    format!("{field}.token"),
                    "must be at least 16 characters (a guessable token grants an identity)",
                );
            }
            for (name, value) in [
                ("namespace", &t.namespace),
                ("service_account", &t.service_account),
            ] {
                if !path_segment_ok(value) {
                    v.error(
                        format!("{field}.{name}"),
                        format!("must be a non-empty name without '/', got {value:?}"),
                    );
                }
            }
            for (j, id) in t.node_ids.iter().enumerate() {
                if rcgen::Ia5String::try_from(id.as_str()).is_err() || id.is_empty() {
                    v.error(format!("{field}.node_ids[{j}]"), "must be a DNS name");
                }
            }
        }
    }
}

fn path_segment_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && s.is_ascii()
}

/// Whether `a` and `b` are equal, in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How tokens are checked.
#[derive(Clone)]
pub enum Authenticator {
    /// File mode: the entries of a tokens file, read again at every request.
    Tokens(PathBuf),
    /// Kubernetes mode: a TokenReview; the grant is the ServiceAccount's.
    TokenReview {
        /// The API server.
        client: kube::Client,
        /// Audiences the token must be for (empty: the API server's).
        audiences: Vec<String>,
    },
}

impl Authenticator {
    /// The grant of `token`, or `UNAUTHENTICATED` (`INTERNAL` when the check itself fails).
    pub async fn authenticate(&self, token: &str) -> Result<Grant, Status> {
        match self {
            Authenticator::Tokens(path) => {
                let file: TokensFile = gofe_yaml::load(path).map_err(|e| {
                    tracing::error!(error = %e, "identity.tokens_file does not load: no token can be checked");
                    Status::internal("the tokens file does not load")
                })?;
                file.tokens
                    .into_iter()
                    .find(|t| same_secret(t.token.as_bytes(), token.as_bytes()))
                    .map(|t| Grant {
                        namespace: t.namespace,
                        service_account: t.service_account,
                        node_ids: t.node_ids,
                    })
                    .ok_or_else(|| Status::unauthenticated("unknown bootstrap token"))
            }
            Authenticator::TokenReview { client, audiences } => {
                review(client, audiences, token).await
            }
        }
    }
}

/// Asks the API server who `token` is (`authentication.k8s.io/v1` TokenReview).
async fn review(client: &kube::Client, audiences: &[String], token: &str) -> Result<Grant, Status> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
        },
        ..Default::default()
    };
    let answer = api
        .create(&kube::api::PostParams::default(), &request)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "TokenReview failed");
            Status::unavailable(format!("TokenReview failed: {e}"))
        })?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(Status::unauthenticated(format!(
            "the API server refused the token: {why}"
        )));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    service_account_of(&username).ok_or_else(|| {
        Status::unauthenticated(format!(
            "the token is {username:?}'s, not a ServiceAccount's"
        ))
    })
}

/// The grant of a ServiceAccount username, `system:serviceaccount:NS:SA`.
pub fn service_account_of(username: &str) -> Option<Grant> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (path_segment_ok(ns) && path_segment_ok(sa) && !sa.contains(':')).then(|| Grant {
        namespace: ns.into(),
        service_account: sa.into(),
        node_ids: Vec::new(),
    })
}

/// The mesh CA.
pub struct MeshCa {
    trust_domain: String,
    workload_ttl: Duration,
    min_ttl: Duration,
    clock_skew: Duration,
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
    root_pem: String,
    authenticator: Authenticator,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename (mode 0600 when `private`).
fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn now_minus(d: Duration) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - d
}

fn random_serial() -> SerialNumber {
    let mut bytes: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from(bytes)
}

impl MeshCa {
    /// Loads (or generates and writes) the root of `config`, with `authenticator` checking
    /// tokens.
    pub fn start(config: &IdentityConfig, authenticator: Authenticator) -> Result<MeshCa, CaError> {
        let cert_path = Path::new(&config.root.cert_file);
        let key_path = Path::new(&config.root.key_file);
        let (root_pem, key_pem) = match (cert_path.exists(), key_path.exists()) {
            (true, true) => (
                std::fs::read_to_string(cert_path).map_err(io(cert_path))?,
                std::fs::read_to_string(key_path).map_err(io(key_path))?,
            ),
            (false, false) => {
                let (cert, key) = generate_root(&config.trust_domain, config.clock_skew)?;
                write_atomically(key_path, key.as_bytes(), true)?;
                write_atomically(cert_path, cert.as_bytes(), false)?;
                tracing::info!(cert = %cert_path.display(), key = %key_path.display(),
                    "mesh CA: generated a new root and wrote it (a restart keeps it)");
                (cert, key)
            }
            (present, _) => {
                let (p, m) = if present {
                    (cert_path, key_path)
                } else {
                    (key_path, cert_path)
                };
                return Err(CaError::HalfRoot {
                    present: p.display().to_string(),
                    missing: m.display().to_string(),
                });
            }
        };
        let issuer_key = key_pair(&key_pem).map_err(|e| {
            CaError::Invalid(format!("{}: not a private key: {e}", key_path.display()))
        })?;
        let params = CertificateParams::from_ca_cert_pem(&root_pem).map_err(|e| {
            CaError::Invalid(format!(
                "{}: not a PEM certificate: {e}",
                cert_path.display()
            ))
        })?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(CaError::Invalid(format!(
                "{}: not a CA certificate (basicConstraints cA is not set)",
                cert_path.display()
            )));
        }
        let original = gofe_tls::certs(cert_path).map_err(|e| CaError::Invalid(e.to_string()))?;
        let issuer = params
            .self_signed(&issuer_key)
            .map_err(|e| CaError::Invalid(format!("cannot sign with the root: {e}")))?;
        if !same_public_key(&original[0], &issuer_key) {
            return Err(CaError::Invalid(format!(
                "{} is not the key of {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        Ok(MeshCa {
            trust_domain: config.trust_domain.clone(),
            workload_ttl: config.workload_ttl,
            min_ttl: config.min_workload_ttl,
            clock_skew: config.clock_skew,
            issuer,
            issuer_key,
            root_pem,
            authenticator,
        })
    }

    /// The root certificate, PEM: the trust bundle.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The SPIFFE id of `grant`.
    pub fn spiffe_id(&self, grant: &Grant) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, grant.namespace, grant.service_account
        )
    }

    /// The lifetime given for a request asking for `asked`.
    pub fn lifetime(&self, asked: Option<Duration>) -> Duration {
        asked
            .unwrap_or(self.workload_ttl)
            .clamp(self.min_ttl, self.workload_ttl)
    }

    /// Signs the CSR `csr_pem` for `grant`: the chain, leaf first and root last.
    pub fn sign(
        &self,
        csr_pem: &str,
        grant: &Grant,
        asked: Option<Duration>,
    ) -> Result<Vec<String>, Status> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Status::invalid_argument(format!(
                "the CSR is not a PEM PKCS#10 request with a valid signature: {e}"
            ))
        })?;
        let id = self.spiffe_id(grant);
        let mut sans = vec![SanType::URI(
            rcgen::Ia5String::try_from(id.as_str())
                .map_err(|_| Status::internal("the SPIFFE id is not ASCII"))?,
        )];
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::URI(u) if u.as_str() == id => {}
                SanType::DnsName(d) if grant.node_ids.iter().any(|n| n == d.as_str()) => {
                    sans.push(san.clone());
                }
                SanType::URI(u) => {
                    return Err(Status::invalid_argument(format!(
                        "the CSR asks for URI {:?}; this token grants {id}",
                        u.as_str()
                    )))
                }
                SanType::DnsName(d) => {
                    return Err(Status::invalid_argument(format!(
                        "the CSR asks for DNS name {:?}, which is not a node id of this token",
                        d.as_str()
                    )))
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "the CSR asks for {other:?}: only the granted URI and node ids are issued"
                    )))
                }
            }
        }
        let lifetime = self.lifetime(asked);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.not_before = now_minus(self.clock_skew);
        params.not_after = time::OffsetDateTime::now_utc() + lifetime;
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer, &self.issuer_key)
        .map_err(|e| Status::internal(format!("signing failed: {e}")))?;
        Ok(vec![signed.pem(), self.root_pem.clone()])
    }

    /// A certificate for the xDS port itself (a fresh key; `names` as DNS or IP SANs), valid
    /// for the workload lifetime: (chain PEM, key PEM).
    pub fn server_certificate(&self, names: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Invalid(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "gofe controller");
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    rcgen::Ia5String::try_from(name.as_str())
                        .map_err(|e| CaError::Invalid(format!("server name {name:?}: {e}")))?,
                ),
            });
        }
        params.not_before = now_minus(self.clock_skew);
        params.not_after = time::OffsetDateTime::now_utc() + self.workload_ttl;
        params.serial_number = Some(random_serial());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer, &self.issuer_key)
            .map_err(|e| CaError::Invalid(format!("signing the server certificate: {e}")))?;
        Ok((
            format!("{}{}", cert.pem(), self.root_pem),
            key.serialize_pem(),
        ))
    }

    /// How long the xDS port's certificate lives (it is renewed at half of it).
    pub fn server_lifetime(&self) -> Duration {
        self.workload_ttl
    }
}

/// The key of a PEM file: PKCS#8, or an RSA key in PKCS#1 (`RSA PRIVATE KEY`, what Helm's
/// `genCA` and older OpenSSL write), wrapped into PKCS#8 for rcgen.
fn key_pair(pem: &str) -> Result<KeyPair, String> {
    use rustls::pki_types::PrivateKeyDer;
    let key = rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| e.to_string())?
        .ok_or("no PEM private key found")?;
    let pkcs8 = match &key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => rsa_pkcs8(k.secret_pkcs1_der()),
        _ => {
            return Err(
                "an EC key in SEC1 form: convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt)"
                    .into(),
            )
        }
    };
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8);
    KeyPair::try_from(&PrivateKeyDer::Pkcs8(der)).map_err(|e| e.to_string())
}

/// A DER length.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

/// PKCS#8 `PrivateKeyInfo` around an RSA PKCS#1 `RSAPrivateKey`.
fn rsa_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    // version 0, AlgorithmIdentifier { rsaEncryption, NULL }
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(&[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ]);
    body.push(0x04);
    der_len(pkcs1.len(), &mut body);
    body.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(body.len(), &mut out);
    out.extend(body);
    out
}

/// Whether the certificate `original` holds the public key of `key` (its bytes appear
/// verbatim in the certificate's SubjectPublicKeyInfo).
fn same_public_key(original: &rustls::pki_types::CertificateDer<'_>, key: &KeyPair) -> bool {
    contains(original.as_ref(), rcgen::PublicKeyData::der_bytes(key))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A new root: (certificate PEM, key PEM).
fn generate_root(trust_domain: &str, skew: Duration) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Invalid(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, "gofe mesh CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now_minus(skew);
    params.not_after = time::OffsetDateTime::now_utc() + ROOT_LIFETIME;
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Invalid(format!("generating the root: {e}")))?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl CertificateAuthority for MeshCa {
    fn issue(&self, request: CertificateRequest) -> gofe_xds::ca::IssueFuture<'_> {
        Box::pin(async move {
            let Some(token) = request.token.as_deref() else {
                return Err(Status::unauthenticated(
                    "no token: send authorization: Bearer TOKEN",
                ));
            };
            let grant = self.authenticator.authenticate(token).await?;
            let chain = self.sign(&request.csr, &grant, request.validity)?;
            tracing::info!(identity = %self.spiffe_id(&grant), node_ids = ?grant.node_ids,
                lifetime = ?self.lifetime(request.validity), "mesh CA: certificate issued");
            Ok(chain)
        })
    }
}

/// A shared mesh CA, as the xDS server takes it.
pub fn shared(ca: MeshCa) -> Arc<MeshCa> {
    Arc::new(ca)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "gofe-ca-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn config(dir: &Path) -> IdentityConfig {
        let mut c: IdentityConfig =
            serde_saphyr::from_str("tokens_file: tokens.yaml\nmin_workload_ttl: 10s\n").unwrap();
        c.root.cert_file = dir.join("ca/root.crt").display().to_string();
        c.root.key_file = dir.join("ca/root.key").display().to_string();
        c.tokens_file = Some(dir.join("tokens.yaml").display().to_string());
        c
    }

    fn ca(dir: &Path) -> MeshCa {
        let c = config(dir);
        MeshCa::start(
            &c,
            Authenticator::Tokens(c.tokens_file.clone().unwrap().into()),
        )
        .unwrap()
    }

    fn grant() -> Grant {
        Grant {
            namespace: "shop".into(),
            service_account: "web".into(),
            node_ids: vec!["proxy-1".into()],
        }
    }

    fn csr(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn dns(d: &str) -> SanType {
        SanType::DnsName(d.try_into().unwrap())
    }

    fn leaf(chain: &[String]) -> CertificateDer<'static> {
        rustls_pemfile::certs(&mut chain[0].as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_generated_root_is_written_once_and_kept_by_the_next_start() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = dir();
        let first = ca(&d);
        let key_mode = std::fs::metadata(d.join("ca/root.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600, "the key is private");
        assert_eq!(
            std::fs::read_to_string(d.join("ca/root.crt")).unwrap(),
            first.root_pem()
        );
        let second = ca(&d);
        assert_eq!(
            second.root_pem(),
            first.root_pem(),
            "a restart keeps the root"
        );
        let chain = second.sign(&csr(vec![]), &grant(), None).unwrap();
        assert_eq!(
            chain[1],
            first.root_pem(),
            "the chain ends with the kept root"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_root_half_given_or_with_another_key_is_refused() {
        let d = dir();
        let _ = ca(&d);
        let other = dir();
        let _ = ca(&other);
        std::fs::copy(other.join("ca/root.key"), d.join("ca/root.key")).unwrap();
        let c = config(&d);
        let e = MeshCa::start(&c, Authenticator::Tokens("t".into())).unwrap_err();
        assert!(e.to_string().contains("is not the key of"), "{e}");
        std::fs::remove_file(d.join("ca/root.key")).unwrap();
        let e = MeshCa::start(&c, Authenticator::Tokens("t".into())).unwrap_err();
        assert!(matches!(e, CaError::HalfRoot { .. }), "{e}");
        std::fs::write(d.join("ca/root.key"), "not a key").unwrap();
        let e = MeshCa::start(&c, Authenticator::Tokens("t".into())).unwrap_err();
        assert!(e.to_string().contains("not a private key"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&other);
    }

    #[test]
    fn an_issued_certificate_passes_the_xds_node_check_for_its_grant_only() {
        let d = dir();
        let ca = ca(&d);
        let chain = ca
            .sign(
                &csr(vec![
                    dns("proxy-1"),
                    SanType::URI("spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap()),
                ]),
                &grant(),
                None,
            )
            .unwrap();
        let cert = leaf(&chain);
        let m = |node: &str| gofe_xds::identity::matches(node, &cert);
        assert!(m("spiffe://cluster.local/ns/shop/sa/web"));
        assert!(m("sidecar~10.0.0.7~web-1.shop~shop.svc.cluster.local"));
        assert!(m("proxy-1"), "a node id of the token, asked for");
        assert!(!m("proxy-2"));
        assert!(!m("spiffe://cluster.local/ns/shop/sa/db"));
        assert!(!m("sidecar~10.0.0.7~web-1.bank~bank.svc.cluster.local"));
        let names = gofe_xds::identity::CertIdentity::of(&cert).unwrap();
        assert_eq!(names.common_name, None, "the CSR's subject is not copied");
        // Without the DNS SAN in the CSR, the node id is not in the certificate.
        let chain = ca.sign(&csr(vec![]), &grant(), None).unwrap();
        assert!(!gofe_xds::identity::matches("proxy-1", &leaf(&chain)));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_csr_asking_for_what_the_grant_does_not_cover_is_an_invalid_argument() {
        let d = dir();
        let ca = ca(&d);
        for (sans, says) in [
            (vec![dns("proxy-2")], "not a node id of this token"),
            (
                vec![SanType::URI(
                    "spiffe://cluster.local/ns/bank/sa/x".try_into().unwrap(),
                )],
                "this token grants spiffe://cluster.local/ns/shop/sa/web",
            ),
            (
                vec![SanType::IpAddress([10, 0, 0, 1].into())],
                "only the granted",
            ),
        ] {
            let e = ca.sign(&csr(sans), &grant(), None).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(says), "{}", e.message());
        }
        let e = ca.sign("not a csr", &grant(), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // A CSR whose signature does not verify: one byte of it changed.
        let good = csr(vec![]);
        let der = rustls_pemfile::csr(&mut good.as_bytes()).unwrap().unwrap();
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        use base64::Engine as _;
        let bad = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
        let e = ca.sign(&bad, &grant(), None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Whether `chain` (leaf first) verifies as a client certificate against `root_pem`.
    fn verifies(root_pem: &str, chain: &[String]) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            gofe_tls::provider(),
        )
        .build()
        .unwrap();
        let leaf = leaf(chain);
        verifier
            .verify_client_cert(&leaf, &[], rustls::pki_types::UnixTime::now())
            .is_ok()
    }

    #[test]
    fn issued_certificates_chain_to_the_root_generated_or_given_even_an_rsa_pkcs1_one() {
        let d = dir();
        let generated = ca(&d);
        let chain = generated.sign(&csr(vec![]), &grant(), None).unwrap();
        assert!(verifies(generated.root_pem(), &chain));
        // A root of one's own in Helm genCA's form: RSA, the key in PKCS#1 (test-only key).
        let given = dir();
        std::fs::create_dir_all(given.join("ca")).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        std::fs::copy(fixtures.join("rsa-root.crt"), given.join("ca/root.crt")).unwrap();
        std::fs::copy(fixtures.join("rsa-root.key"), given.join("ca/root.key")).unwrap();
        let rsa = ca(&given);
        assert!(rsa.root_pem().contains("BEGIN CERTIFICATE"));
        let chain = rsa.sign(&csr(vec![]), &grant(), None).unwrap();
        assert!(verifies(rsa.root_pem(), &chain));
        assert!(
            !verifies(generated.root_pem(), &chain),
            "not another root's"
        );
        let (server, _) = rsa.server_certificate(&["localhost".into()]).unwrap();
        assert!(server.ends_with(rsa.root_pem()));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&given);
    }

    #[test]
    fn lifetimes_are_kept_within_the_configured_bounds() {
        let d = dir();
        let ca = ca(&d);
        assert_eq!(ca.lifetime(None), Duration::from_secs(24 * 3600));
        assert_eq!(
            ca.lifetime(Some(Duration::from_secs(1))),
            Duration::from_secs(10)
        );
        assert_eq!(
            ca.lifetime(Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(
            ca.lifetime(Some(Duration::from_secs(10 * 24 * 3600))),
            Duration::from_secs(24 * 3600)
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn tokens_are_looked_up_in_the_file_and_a_bad_one_is_unauthenticated() {
        let d = dir();
        let path = d.join("tokens.yaml");
        std::fs::write(
            &path,
            "tokens:\n  - { token: \"0123456789abcdef-web\", namespace: shop, service_account: web, node_ids: [proxy-1] }\n",
        )
        .unwrap();
        let auth = Authenticator::Tokens(path.clone());
        assert_eq!(
            auth.authenticate("0123456789abcdef-web").await.unwrap(),
            grant()
        );
        let e = auth.authenticate("0123456789abcdef-wex").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        std::fs::write(
            &path,
            "tokens:\n  - { token: short, namespace: shop, service_account: web }\n",
        )
        .unwrap();
        let e = auth.authenticate("short").await.unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::Internal,
            "a token file that does not load grants nothing"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn service_account_usernames_give_their_grant() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:web"),
            Some(Grant {
                namespace: "shop".into(),
                service_account: "web".into(),
                node_ids: vec![]
            })
        );
        assert_eq!(service_account_of("system:serviceaccount:shop"), None);
        assert_eq!(service_account_of("alice"), None);
        assert_eq!(service_account_of("system:serviceaccount::web"), None);
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
