//! Who a certificate names: its URI and DNS subject alternative names and its subject's
//! common name, and the one identity gofe takes from them.
//!
//! The controller's xDS server matches a client certificate against a stream's `node.id`
//! with these names; the proxy computes a client's identity once per connection, at the
//! handshake, for RBAC's `authenticated.principal_name`.

use rustls::pki_types::CertificateDer;

/// What a client certificate says about its holder (the names [`matches`] compares).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// URI SANs, in certificate order.
    pub uris: Vec<String>,
    /// DNS SANs (wildcards included), in certificate order.
    pub dns: Vec<String>,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
}

impl CertIdentity {
    /// The names of `der`, or `None` when it is not a readable X.509 certificate.
    pub fn of(der: &CertificateDer<'_>) -> Option<CertIdentity> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        Some(CertIdentity {
            uris: cert.valid_uri_names().map(str::to_owned).collect(),
            dns: cert.valid_dns_names().map(str::to_owned).collect(),
            common_name: common_name(cert.subject()),
        })
    }

    /// The identity a certificate stands for: its first `spiffe://` URI SAN, else its first
    /// URI SAN, else its first DNS SAN, else its subject's common name (Envoy's order for
    /// `principal_name`: URI, then DNS, then the subject).
    pub fn principal(&self) -> Option<&str> {
        self.uris
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .or_else(|| self.uris.first())
            .or_else(|| self.dns.first())
            .or(self.common_name.as_ref())
            .map(String::as_str)
    }

    /// The names as one short text for logs: `uri=…, dns=…, cn=…`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.uris.iter().map(|u| format!("uri={u}")));
        parts.extend(self.dns.iter().map(|d| format!("dns={d}")));
        if let Some(cn) = &self.common_name {
            parts.push(format!("cn={cn}"));
        }
        if parts.is_empty() {
            "no names".into()
        } else {
            parts.join(", ")
        }
    }
}

// === a DER walk for the subject's CN ===

/// One DER element of `input`: (tag, contents, what follows). Definite lengths up to 4 bytes.
pub(crate) fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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

/// The common name (OID 2.5.4.3) in a subject's RDNSequence contents (no outer SEQUENCE
/// header, as webpki hands it), when it is a UTF8String, PrintableString or IA5String.
pub(crate) fn common_name(mut rdns: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !rdns.is_empty() {
        let (tag, mut set, rest) = element(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, rest) = element(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = element(atv)?;
            let (value_tag, value, _) = element(value)?;
            if oid_tag == 0x06 && oid == CN && matches!(value_tag, 0x0c | 0x13 | 0x16) {
                return std::str::from_utf8(value).ok().map(str::to_owned);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(sans: Vec<SanType>, cn: Option<&str>) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_principal_is_a_spiffe_uri_then_a_uri_then_a_dns_name_then_the_cn() {
        let spiffe = SanType::URI("spiffe://mesh/ns/a/sa/b".try_into().unwrap());
        let other = SanType::URI("https://example.com/x".try_into().unwrap());
        let dns = SanType::DnsName("web.shop".try_into().unwrap());
        let id = |sans, cn| CertIdentity::of(&cert(sans, cn)).unwrap();
        let c = id(vec![dns.clone(), other.clone(), spiffe], Some("cn"));
        assert_eq!(c.principal(), Some("spiffe://mesh/ns/a/sa/b"));
        let c = id(vec![dns.clone(), other], Some("cn"));
        assert_eq!(c.principal(), Some("https://example.com/x"));
        let c = id(vec![dns], Some("cn"));
        assert_eq!(c.principal(), Some("web.shop"));
        assert_eq!(id(vec![], Some("cn")).principal(), Some("cn"));
        assert_eq!(id(vec![], None).principal(), None);
    }

    #[test]
    fn the_der_walk_refuses_truncated_input() {
        assert_eq!(element(&[0x30]), None);
        assert_eq!(element(&[0x30, 0x05, 1]), None);
        assert_eq!(element(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(common_name(&[0x31, 0x02, 0x30]), None);
        assert_eq!(common_name(&[0x30, 0x00]), None);
    }
}
