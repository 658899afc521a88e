//! TLS to a cluster's endpoints (Envoy's `UpstreamTlsContext`).
//!
//! [`UpstreamTls`] is built once per cluster connection pool, when the configuration is
//! applied: the PEM material is read, the rustls `ClientConfig` (with its session cache) made,
//! and the endpoint verifier set up. Each new upstream connection then only runs a handshake;
//! a pooled connection keeps its TLS session across requests, exactly as a plaintext one keeps
//! its socket.
//!
//! Verification follows Envoy: with `trusted_ca`, the endpoint's chain must lead to it and,
//! with `match_subject_alt_names`, a SAN of its leaf must match one matcher; the SNI and the
//! endpoint's address are never compared to the certificate. Without `trusted_ca` nothing is
//! verified (the handshake still proves the endpoint holds its key); the proxy warns once when
//! it builds such a cluster.
//!
//! A failed handshake is a failed connect ([`crate::upstream::ConnectFailed`]): 503 to the
//! client, a connect failure for outlier detection, `UF` in the access log with the reason
//! in `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, and one count in
//! `gofe_upstream_tls_errors_total{cluster, reason}`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::upstream_tls::{PemSource, SanMatcherConfig, SanType};
use crate::config::{StringMatchConfig, UpstreamTlsConfig};
use crate::metrics::Metrics;

/// A cluster's TLS client: what every connection to its endpoints handshakes with.
pub(crate) struct UpstreamTls {
    connector: TlsConnector,
    /// The configured SNI, parsed once.
    sni: Option<ServerName<'static>>,
    /// The ALPN protocol offered (the one the cluster speaks).
    alpn: &'static str,
}

/// Why a TLS handshake with an endpoint failed; the innermost cause of a failed connect (so
/// the access log's transport failure reason names TLS).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed ({reason}): {detail}")]
pub(crate) struct TlsFailure {
    /// The metric label: `unknown_ca`, `san_mismatch`, `bad_certificate`, `peer_alert`,
    /// `alpn`, `timeout` or `handshake`.
    pub(crate) reason: &'static str,
    detail: String,
}

impl TlsFailure {
    /// A handshake that did not finish within the connect timeout.
    pub(crate) fn timeout() -> Self {
        TlsFailure {
            reason: "timeout",
            detail: "no handshake within the connect timeout".into(),
        }
    }

    fn from_io(e: &io::Error) -> Self {
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let reason = match tls {
            // No path to a trusted CA: none issued it, or one of the same name did not sign
            // it.
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            )) => "unknown_ca",
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => "san_mismatch",
            Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
            Some(rustls::Error::AlertReceived(_)) => "peer_alert",
            Some(rustls::Error::NoApplicationProtocol) => "alpn",
            _ => "handshake",
        };
        TlsFailure {
            reason,
            detail: e.to_string(),
        }
    }
}

impl UpstreamTls {
    /// Reads the material and builds the client of a cluster that speaks HTTP/2 when `http2`. Errors name the field (`tls.trusted_ca`, ...) and the file.
    pub(crate) fn build(config: &UpstreamTlsConfig, http2: bool) -> Result<Self, String> {
        let at = |field: &str| format!("tls.{field}");
        let provider = gofe_tls::provider();
        let roots = match &config.trusted_ca {
            Some(source) => {
                let (pem, name) = pem(source, &at("trusted_ca"))?;
                Some(Arc::new(
                    gofe_tls::roots_pem(&pem, &name).map_err(|e| e.to_string())?,
                ))
            }
            // The proxy warns about this when it builds the cluster's pool.
            None => None,
        };
        let verifier = Arc::new(EndpointVerifier {
            roots,
            sans: config.match_subject_alt_names.clone(),
            algs: provider.signature_verification_algorithms,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut client = match &config.client_certificate {
            Some(c) => {
                let (chain, chain_name) = pem(
                    &c.certificate_chain,
                    &at("client_certificate.certificate_chain"),
                )?;
                let (key, key_name) = pem(&c.private_key, &at("client_certificate.private_key"))?;
                let chain = gofe_tls::certs_pem(&chain, &chain_name).map_err(|e| e.to_string())?;
                let key = gofe_tls::key_pem(&key, &key_name).map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", at("client_certificate")))?
            }
            None => builder.with_no_client_auth(),
        };
        let alpn = UpstreamTlsConfig::offered_alpn(http2);
        client.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        client.enable_sni = config.sni.is_some();
        let sni = match &config.sni {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| format!("{}: {name:?}: {e}", at("sni")))?,
            ),
            None => None,
        };
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(client)),
            sni,
            alpn,
        })
    }

    /// The name a connection to `address` (`host:port`) handshakes with: the SNI when one is
    /// configured, else the endpoint's host (used only as the session cache's key: no SNI is
    /// sent and the certificate is not checked against it).
    pub(crate) fn server_name(&self, address: &str) -> ServerName<'static> {
        if let Some(sni) = &self.sni {
            return sni.clone();
        }
        let host = address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
    }

    /// Runs the handshake on `tcp`; a failure is counted under `cluster`.
    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
        name: ServerName<'static>,
        cluster: &str,
        metrics: &Metrics,
    ) -> Result<TlsStream<TcpStream>, TlsFailure> {
        match self.connector.connect(name, tcp).await {
            Ok(stream) => {
                // Only one protocol is offered, so an endpoint that picked one picked it.
                let (_, conn) = stream.get_ref();
                if let Some(p) = conn.alpn_protocol() {
                    if p != self.alpn.as_bytes() {
                        let failure = TlsFailure {
                            reason: "alpn",
                            detail: format!(
                                "the endpoint negotiated {:?}",
                                String::from_utf8_lossy(p)
                            ),
                        };
                        self.count(&failure, cluster, metrics);
                        return Err(failure);
                    }
                }
                Ok(stream)
            }
            Err(e) => {
                let failure = TlsFailure::from_io(&e);
                self.count(&failure, cluster, metrics);
                Err(failure)
            }
        }
    }

    /// Counts a failed handshake.
    pub(crate) fn count(&self, failure: &TlsFailure, cluster: &str, metrics: &Metrics) {
        tracing::debug!(cluster, reason = failure.reason, error = %failure, "upstream TLS handshake failed");
        metrics
            .upstream_tls_errors
            .with_label_values(&[cluster, failure.reason])
            .inc();
    }
}

/// The PEM bytes of `source` and the name errors give them.
fn pem(source: &PemSource, field: &str) -> Result<(Vec<u8>, String), String> {
    match source {
        PemSource::File(path) => std::fs::read(path)
            .map(|bytes| (bytes, path.clone()))
            .map_err(|e| format!("{field}: {path}: {e}")),
        PemSource::Inline(text) => Ok((text.as_bytes().to_vec(), format!("{field} (inline)"))),
    }
}

// === impl EndpointVerifier ===

/// Envoy's certificate validation: the chain against `trusted_ca`, then the SAN matchers.
#[derive(Debug)]
struct EndpointVerifier {
    /// `None`: nothing is verified.
    roots: Option<Arc<rustls::RootCertStore>>,
    sans: Vec<SanMatcherConfig>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EndpointVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        if !self.sans.is_empty() && !sans_match(end_entity.as_ref(), &self.sans) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Whether a SAN of the DER certificate `der` matches one of `matchers`.
fn sans_match(der: &[u8], matchers: &[SanMatcherConfig]) -> bool {
    let Some(names) = subject_alt_names(der) else {
        return false;
    };
    names.iter().any(|(kind, name)| {
        let Ok(name) = std::str::from_utf8(name) else {
            return false;
        };
        matchers
            .iter()
            .any(|m| m.san_type == *kind && string_matches(&m.matcher, name, *kind))
    })
}

fn string_matches(m: &StringMatchConfig, name: &str, kind: SanType) -> bool {
    if let Some(exact) = &m.exact {
        return match (kind, name.strip_prefix("*.")) {
            // A wildcard certificate name covers exactly one more label (RFC 6125 §6.4.3).
            (SanType::Dns, Some(parent)) => {
                exact.eq_ignore_ascii_case(name)
                    || exact.split_once('.').is_some_and(|(label, rest)| {
                        !label.is_empty() && rest.eq_ignore_ascii_case(parent)
                    })
            }
            (SanType::Dns, None) => exact.eq_ignore_ascii_case(name),
            (SanType::Uri, _) => exact == name,
        };
    }
    if let Some(prefix) = &m.prefix {
        return name.starts_with(prefix.as_str());
    }
    if let Some(suffix) = &m.suffix {
        return name.ends_with(suffix.as_str());
    }
    if let Some(contains) = &m.contains {
        return name.contains(contains.as_str());
    }
    false
}

// === DER ===

/// The DNS and URI subject alternative names of a DER X.509 certificate, or `None` when it
/// cannot be read (the chain verifier has already parsed it by then; this only walks to the
/// extension).
fn subject_alt_names(der: &[u8]) -> Option<Vec<(SanType, &[u8])>> {
    const SEQUENCE: u8 = 0x30;
    // id-ce-subjectAltName, 2.5.29.17.
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
    let (tag, cert, _) = tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // The tbsCertificate's extensions are its `[3]` field.
    let extensions = loop {
        let (tag, value, rest) = tlv(tbs)?;
        if tag == 0xa3 {
            break value;
        }
        tbs = rest;
    };
    let (tag, mut list, _) = tlv(extensions)?;
    if tag != SEQUENCE {
        return None;
    }
    while !list.is_empty() {
        let (_, extension, rest) = tlv(list)?;
        list = rest;
        let (tag, oid, mut fields) = tlv(extension)?;
        if tag != 0x06 || oid != SAN_OID {
            continue;
        }
        // Skip `critical`, keep the OCTET STRING.
        let value = loop {
            let (tag, value, rest) = tlv(fields)?;
            if tag == 0x04 {
                break value;
            }
            fields = rest;
        };
        let (tag, mut names, _) = tlv(value)?;
        if tag != SEQUENCE {
            return None;
        }
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, name, rest) = tlv(names)?;
            names = rest;
            match tag {
                0x82 => out.push((SanType::Dns, name)),
                0x86 => out.push((SanType::Uri, name)),
                _ => {}
            }
        }
        return Some(out);
    }
    Some(Vec::new())
}

/// One DER element of `input`: its tag, its contents and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (value, after) = rest.split_at(len);
    Some((tag, value, after))
}

// === impl UpstreamIo ===

/// An upstream connection's byte stream: plain TCP or TLS over it.
pub(crate) enum UpstreamIo {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS (boxed: its session state is large, and plaintext connections stay small).
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// Whether a parked connection can be used: the upstream has neither closed it nor sent
    /// anything unasked. For TLS, records that carry no data (TLS 1.3 session tickets) are
    /// taken in passing.
    pub(crate) fn still_open(&mut self) -> bool {
        match self {
            UpstreamIo::Plain(tcp) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            UpstreamIo::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                matches!(
                    Pin::new(&mut **tls).poll_read(&mut cx, &mut buf),
                    Poll::Pending
                )
            }
        }
    }

    /// Whether the connection negotiated HTTP/2 by ALPN.
    pub(crate) fn negotiated_h2(&self) -> bool {
        match self {
            UpstreamIo::Plain(_) => false,
            UpstreamIo::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_flush(cx),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(io) => io.is_write_vectored(),
            UpstreamIo::Tls(io) => io.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(kind: SanType, f: impl FnOnce(&mut StringMatchConfig)) -> SanMatcherConfig {
        let mut m = StringMatchConfig::default();
        f(&mut m);
        SanMatcherConfig {
            san_type: kind,
            matcher: m,
        }
    }

    fn cert(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn sans_are_read_from_the_certificate() {
        let der = cert(vec![
            rcgen::SanType::DnsName("api.shop.test".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://shop.test/ns/a/sa/api".try_into().unwrap()),
            rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ]);
        let names = subject_alt_names(&der).unwrap();
        assert_eq!(
            names,
            vec![
                (SanType::Dns, &b"api.shop.test"[..]),
                (SanType::Uri, &b"spiffe://shop.test/ns/a/sa/api"[..]),
            ]
        );
        assert_eq!(subject_alt_names(&der[..der.len() / 2]), None);
        assert_eq!(subject_alt_names(&[]), None);
    }

    #[test]
    fn matchers_follow_envoy() {
        let der = cert(vec![
            rcgen::SanType::DnsName("*.shop.test".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://shop.test/ns/a/sa/api".try_into().unwrap()),
        ]);
        let yes = [
            matcher(SanType::Dns, |m| m.exact = Some("cart.shop.test".into())),
            matcher(SanType::Dns, |m| m.exact = Some("*.shop.test".into())),
            matcher(SanType::Dns, |m| m.suffix = Some(".shop.test".into())),
            matcher(SanType::Uri, |m| {
                m.prefix = Some("spiffe://shop.test/".into())
            }),
            matcher(SanType::Uri, |m| {
                m.exact = Some("spiffe://shop.test/ns/a/sa/api".into())
            }),
        ];
        for m in yes {
            assert!(sans_match(&der, std::slice::from_ref(&m)), "{m:?}");
        }
        let no = [
            matcher(SanType::Dns, |m| m.exact = Some("a.b.shop.test".into())),
            matcher(SanType::Dns, |m| m.exact = Some("shop.test".into())),
            // A URI matcher does not look at DNS names, nor the other way round.
            matcher(SanType::Uri, |m| m.suffix = Some(".shop.test".into())),
            matcher(SanType::Dns, |m| m.prefix = Some("spiffe://".into())),
            matcher(SanType::Uri, |m| {
                m.exact = Some("spiffe://shop.test/ns/a/sa/web".into())
            }),
        ];
        for m in no {
            assert!(!sans_match(&der, std::slice::from_ref(&m)), "{m:?}");
        }
    }

    #[test]
    fn lengths_past_the_input_are_refused() {
        assert_eq!(tlv(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(tlv(&[0x30, 0x81]), None);
        assert_eq!(
            tlv(&[0x30, 0x81, 0x01, 7]),
            Some((0x30, &[7u8][..], &[][..]))
        );
    }
}
