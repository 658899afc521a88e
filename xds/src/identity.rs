//! Whose client certificate may claim which node id.
//!
//! A verified client certificate names its holder in one of three ways, and a stream's
//! `node.id` is trusted when it matches one of them:
//!
//! 1. **A URI SAN.** The node id equals the URI exactly (`spiffe://mesh.local/ns/shop/sa/web`).
//!    For a SPIFFE URI of Istio's shape, `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`, an Istio-shaped
//!    node id `TYPE~IP~POD.NS~NS.svc.cluster.local` also matches when both its namespaces are
//!    `NS`: that is Istio's own rule (istiod checks the proxy's namespace against its SPIFFE
//!    identity), and it trusts every workload of a namespace with every node id of that
//!    namespace.
//! 2. **A DNS SAN.** The node id is a DNS name the certificate is valid for (wildcards as in
//!    server certificates: `*.proxies.shop` covers `proxy-1.proxies.shop`).
//! 3. **The subject's common name**, only when the certificate has no DNS or URI SAN: the node
//!    id equals the CN exactly.
//!
//! Anything else is a mismatch, refused with `PERMISSION_DENIED` by the server.

use rustls::pki_types::{CertificateDer, ServerName};

pub use gofe_tls::identity::CertIdentity;

/// Whether the certificate `der` may claim `node_id` (the rules of this module). An unreadable
/// certificate matches nothing.
pub fn matches(node_id: &str, der: &CertificateDer<'_>) -> bool {
    let Some(id) = CertIdentity::of(der) else {
        return false;
    };
    if id
        .uris
        .iter()
        .any(|u| u == node_id || istio_namespace_matches(node_id, u))
    {
        return true;
    }
    if !id.dns.is_empty() {
        let valid_dns = ServerName::try_from(node_id)
            .ok()
            .filter(|n| matches!(n, ServerName::DnsName(_)))
            .zip(webpki::EndEntityCert::try_from(der).ok())
            .is_some_and(|(name, cert)| cert.verify_is_valid_for_subject_name(&name).is_ok());
        if valid_dns {
            return true;
        }
    }
    id.uris.is_empty() && id.dns.is_empty() && id.common_name.as_deref() == Some(node_id)
}

/// `spiffe://TD/ns/NS/sa/SA` and an Istio node id `TYPE~IP~POD.NS~NS.svc.DOMAIN` with the same
/// `NS` in both of its places.
fn istio_namespace_matches(node_id: &str, uri: &str) -> bool {
    let Some(ns) = spiffe_namespace(uri) else {
        return false;
    };
    let parts: Vec<&str> = node_id.split('~').collect();
    let [_, _, pod, domain] = parts[..] else {
        return false;
    };
    let pod_ns = pod.rsplit_once('.').map(|(_, ns)| ns);
    let domain_ns = domain.split_once('.');
    pod_ns == Some(ns) && domain_ns.is_some_and(|(d, rest)| d == ns && rest.starts_with("svc."))
}

/// `NS` of `spiffe://TRUST_DOMAIN/ns/NS/sa/SA` (every part non-empty), else `None`.
fn spiffe_namespace(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts[..] {
        [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => Some(ns),
        _ => None,
    }
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
        params
            .distinguished_name
            .push(DnType::OrganizationName, "gofe tests");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(u.try_into().unwrap())
    }

    fn dns(d: &str) -> SanType {
        SanType::DnsName(d.try_into().unwrap())
    }

    #[test]
    fn a_spiffe_uri_matches_itself_and_istio_ids_of_its_namespace_only() {
        let c = cert(vec![uri("spiffe://mesh.local/ns/shop/sa/web")], None);
        assert!(matches("spiffe://mesh.local/ns/shop/sa/web", &c));
        assert!(!matches("spiffe://mesh.local/ns/shop/sa/db", &c));
        assert!(matches(
            "sidecar~10.0.0.7~web-5d9f.shop~shop.svc.cluster.local",
            &c
        ));
        assert!(
            !matches("sidecar~10.0.0.7~web-5d9f.bank~bank.svc.cluster.local", &c),
            "another namespace"
        );
        assert!(
            !matches("sidecar~10.0.0.7~web-5d9f.bank~shop.svc.cluster.local", &c),
            "both namespace places must agree"
        );
        assert!(!matches("proxy-1", &c), "no DNS SAN, and a CN is ignored");
    }

    #[test]
    fn dns_sans_match_as_server_names_do_and_the_cn_only_without_sans() {
        let c = cert(vec![dns("*.proxies.shop"), dns("proxy-1")], Some("admin"));
        assert!(matches("proxy-1", &c));
        assert!(matches("a.proxies.shop", &c));
        assert!(!matches("proxy-2", &c));
        assert!(!matches("admin", &c), "the CN does not count beside SANs");
        let c = cert(vec![], Some("proxy-7"));
        assert!(matches("proxy-7", &c));
        assert!(!matches("proxy-8", &c));
        let id = CertIdentity::of(&c).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("proxy-7"));
        assert_eq!(id.describe(), "cn=proxy-7");
        let c = cert(vec![], None);
        assert!(!matches("", &c), "no names at all match nothing");
        assert!(!matches(
            "x",
            &CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])
        ));
    }
}
