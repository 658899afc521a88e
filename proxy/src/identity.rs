//! The proxy's workload identity: an in-process secret store holding the current certificate
//! chain, its private key (made here; it never leaves the process) and the trust bundle.
//!
//! ```text
//!   mesh CA client (xds::mesh_ca) ──set──▶ SecretStore ──current() (lock-free)──▶ TLS users
//!                                                      ├─ client_resolver(): the xDS client's mTLS
//!                                                      ├─ server_resolver(): a listener's certificate
//!                                                      └─ changes(): a watch, for whoever rebuilds
//! ```
//!
//! Reading is one atomic load ([`arc_swap`]), with no lock, so a handshake on the hot path can
//! ask for the certificate in force each time; a rotation is one store, seen by every
//! handshake after it, while connections already open keep the certificate they shook hands
//! with (nothing is dropped).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// Why PEM material does not make an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The chain is empty or not PEM, the key does not load, or the leaf is unreadable.
    #[error("{0}")]
    Invalid(String),
}

/// One workload certificate with its key and the roots to verify peers with.
#[derive(Debug)]
pub struct Identity {
    /// The certificate chain, leaf first, and its signing key, ready for rustls.
    pub certified: Arc<CertifiedKey>,
    /// The trust bundle: roots that the mesh's certificates chain to.
    pub trust_bundle: Arc<rustls::RootCertStore>,
    /// The leaf's URI SANs (the SPIFFE id first, as the mesh CA issues it).
    pub uris: Vec<String>,
    /// When the leaf became valid (`notBefore`).
    pub not_before: SystemTime,
    /// When the leaf expires (`notAfter`).
    pub not_after: SystemTime,
}

impl Identity {
    /// An identity from DER: `chain` (leaf first), its `key`, and `roots`.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: &[CertificateDer<'static>],
    ) -> Result<Identity, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Invalid("empty certificate chain".into()))?;
        let (not_before, not_after) = validity(leaf.as_ref())
            .ok_or_else(|| IdentityError::Invalid("unreadable leaf certificate".into()))?;
        let uris = uri_sans(leaf.as_ref());
        let signing = gofe_tls::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| IdentityError::Invalid(format!("private key: {e}")))?;
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store
                .add(r.clone())
                .map_err(|e| IdentityError::Invalid(format!("trust bundle: {e}")))?;
        }
        Ok(Identity {
            certified: Arc::new(CertifiedKey::new(chain, signing)),
            trust_bundle: Arc::new(store),
            uris,
            not_before,
            not_after,
        })
    }

    /// The leaf's lifetime (`notAfter - notBefore`).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// The store: the identity in force, readable without a lock.
#[derive(Debug)]
pub struct SecretStore {
    current: ArcSwapOption<Identity>,
    generation: watch::Sender<u64>,
}

impl Default for SecretStore {
    fn default() -> Self {
        SecretStore {
            current: ArcSwapOption::empty(),
            generation: watch::channel(0).0,
        }
    }
}

impl SecretStore {
    /// An empty store.
    pub fn new() -> Arc<SecretStore> {
        Arc::new(SecretStore::default())
    }

    /// The identity in force (`None` before the first certificate). One atomic load.
    pub fn current(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }

    /// Puts `identity` in force for every handshake from now on.
    pub fn set(&self, identity: Identity) {
        self.current.store(Some(Arc::new(identity)));
        self.generation.send_modify(|g| *g += 1);
    }

    /// A watch that changes at every [`set`](Self::set) (its value counts them).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A rustls client-certificate resolver presenting the identity in force at each
    /// handshake (none before the first).
    pub fn client_resolver(self: &Arc<Self>) -> Arc<dyn rustls::client::ResolvesClientCert> {
        Arc::new(Resolver(Arc::clone(self)))
    }

    /// A rustls server-certificate resolver serving the identity in force at each handshake.
    pub fn server_resolver(self: &Arc<Self>) -> Arc<dyn rustls::server::ResolvesServerCert> {
        Arc::new(Resolver(Arc::clone(self)))
    }
}

#[derive(Debug)]
struct Resolver(Arc<SecretStore>);

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|i| Arc::clone(&i.certified))
    }

    fn has_certs(&self) -> bool {
        self.0.current.load().is_some()
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|i| Arc::clone(&i.certified))
    }
}

// === a DER walk for the leaf's validity and URI SANs ===

/// One DER element of `input`: (tag, contents, what follows). Definite lengths up to 4 bytes.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The fields of a certificate's TBSCertificate, in order, from `serialNumber` on.
fn tbs_fields(cert: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let (_, cert, _) = element(cert)?;
    let (_, mut tbs, _) = element(cert)?;
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, contents, rest) = element(tbs)?;
        if tag != 0xa0 {
            fields.push((tag, contents));
        }
        tbs = rest;
    }
    Some(fields)
}

/// `(notBefore, notAfter)` of a DER certificate.
fn validity(cert: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let fields = tbs_fields(cert)?;
    // serialNumber, signature, issuer, validity, ...
    let (_, validity) = *fields.get(3)?;
    let (t1, v1, rest) = element(validity)?;
    let (t2, v2, _) = element(rest)?;
    Some((time(t1, v1)?, time(t2, v2)?))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, value: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let num = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, min, sec) = (num(0)?, num(2)?, num(4)?, num(6)?, num(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec;
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The URI SANs of a DER certificate (none when it has no readable SAN extension).
fn uri_sans(cert: &[u8]) -> Vec<String> {
    const SAN: &[u8] = &[0x55, 0x1d, 0x11];
    let mut out = Vec::new();
    let Some(fields) = tbs_fields(cert) else {
        return out;
    };
    let Some((_, exts)) = fields.iter().find(|(tag, _)| *tag == 0xa3) else {
        return out;
    };
    let Some((_, mut exts, _)) = element(exts) else {
        return out;
    };
    while let Some((_, ext, rest)) = element(exts) {
        exts = rest;
        let Some((0x06, oid, mut rest)) = element(ext) else {
            continue;
        };
        if oid != SAN {
            continue;
        }
        if let Some((0x01, _, after)) = element(rest) {
            rest = after; // critical
        }
        let Some((0x04, octets, _)) = element(rest) else {
            continue;
        };
        let Some((_, mut names, _)) = element(octets) else {
            continue;
        };
        while let Some((tag, value, rest)) = element(names) {
            names = rest;
            if tag == 0x86 {
                if let Ok(u) = std::str::from_utf8(value) {
                    out.push(u.to_owned());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(lifetime: Duration) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["proxy-1".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap(),
        ));
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = params.not_before + lifetime;
        let cert = params.self_signed(&key).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
    }

    #[test]
    fn an_identity_knows_its_validity_and_spiffe_id() {
        let (chain, key) = issued(Duration::from_secs(20));
        let roots = chain.clone();
        let id = Identity::new(chain, key, &roots).unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_542_400); // 2030-01-02
        assert_eq!(id.not_before, start);
        assert_eq!(id.lifetime(), Duration::from_secs(20));
        assert_eq!(id.uris, vec!["spiffe://cluster.local/ns/shop/sa/web"]);
        assert_eq!(id.trust_bundle.len(), 1);
    }

    #[test]
    fn the_store_swaps_what_resolvers_present() {
        let store = SecretStore::new();
        let resolver = store.client_resolver();
        assert!(!resolver.has_certs());
        assert!(resolver.resolve(&[], &[]).is_none());
        let mut changes = store.changes();
        let (chain, key) = issued(Duration::from_secs(60));
        let first = chain[0].clone();
        store.set(Identity::new(chain, key, &[]).unwrap());
        assert!(changes.has_changed().unwrap());
        assert_eq!(resolver.resolve(&[], &[]).unwrap().cert[0], first);
        let (chain, key) = issued(Duration::from_secs(61));
        let second = chain[0].clone();
        store.set(Identity::new(chain, key, &[]).unwrap());
        assert_eq!(*changes.borrow_and_update(), 2);
        assert_eq!(resolver.resolve(&[], &[]).unwrap().cert[0], second);
    }

    #[test]
    fn bad_material_is_refused_not_panicked_on() {
        let (_, key) = issued(Duration::from_secs(1));
        assert!(Identity::new(vec![], key, &[]).is_err());
        let (_, key) = issued(Duration::from_secs(1));
        assert!(Identity::new(vec![CertificateDer::from(vec![0x30, 0x01])], key, &[]).is_err());
        assert_eq!(time(0x17, b"991231235959Z").map(|_| ()), Some(()));
        assert_eq!(time(0x17, b"9912312359Z"), None);
        assert_eq!(time(0x18, b"20301302000000Z"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
