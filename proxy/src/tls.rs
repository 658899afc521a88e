//! TLS termination for listeners (rustls with the `ring` provider; PEM files read by
//! `gofe-tls`), with client certificates verified against a CA bundle and subject alternative
//! names (Envoy's `DownstreamTlsContext` with a `validation_context`).
//!
//! A client's identity is taken once per connection, when its handshake completes
//! ([`peer_identity`]), and rides with the connection to the HTTP layer; no request parses a
//! certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use gofe_tls::identity::CertIdentity;

use crate::config::{SanMatcherConfig, SanType, TlsConfig};
use crate::rbac::StrMatch;

/// Builds an acceptor that offers the configured protocols by ALPN (`h2` and `http/1.1` by
/// default) and, with a validation
/// context, asks for client certificates (required or not).
pub(crate) fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, String> {
    let cert_path = &config.certificate_chain;
    let key_path = &config.private_key;
    let certs = gofe_tls::certs(Path::new(cert_path)).map_err(|e| e.to_string())?;
    let key = gofe_tls::key(Path::new(key_path)).map_err(|e| e.to_string())?;
    let builder = rustls::ServerConfig::builder_with_provider(gofe_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match client_verifier(config)? {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{cert_path} / {key_path}: {e}"))?;
    server.alpn_protocols = config
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The client-certificate verifier of a listener with a validation context.
fn client_verifier(config: &TlsConfig) -> Result<Option<Arc<dyn ClientCertVerifier>>, String> {
    let Some(validation) = &config.validation_context else {
        return Ok(None);
    };
    let ca = &validation.trusted_ca;
    let roots = match (&ca.filename, &ca.inline_string) {
        (Some(path), _) => gofe_tls::roots(Path::new(path)),
        (None, Some(pem)) => gofe_tls::roots_pem(pem.as_bytes(), "trusted_ca.inline_string"),
        (None, None) => return Err("trusted_ca: neither filename nor inline_string".into()),
    }
    .map_err(|e| e.to_string())?;
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), gofe_tls::provider());
    if !config.require_client_certificate {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder.build().map_err(|e| format!("trusted_ca: {e}"))?;
    if validation.match_typed_subject_alt_names.is_empty() {
        return Ok(Some(inner));
    }
    let sans = validation
        .match_typed_subject_alt_names
        .iter()
        .map(SanMatch::build)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Arc::new(SanVerifier {
        inner,
        sans: sans.into_boxed_slice(),
    })))
}

/// Whether the client presented a (verified) certificate, and its identity (see
/// [`CertIdentity::principal`]): read once, at the end of the handshake.
pub(crate) fn peer_identity<IO>(stream: &TlsStream<IO>) -> (bool, Option<Arc<str>>) {
    let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return (false, None);
    };
    let identity = CertIdentity::of(leaf).and_then(|n| n.principal().map(Arc::from));
    (true, identity)
}

// === subject alternative names ===

/// One `match_typed_subject_alt_names` entry, compiled.
#[derive(Debug)]
struct SanMatch {
    kind: SanType,
    test: StrMatch,
}

impl SanMatch {
    fn build(config: &SanMatcherConfig) -> Result<Self, String> {
        Ok(SanMatch {
            kind: config.san_type,
            test: StrMatch::build(&config.matcher)?,
        })
    }

    /// Whether one of the certificate's names of this kind matches. A DNS wildcard SAN
    /// (`*.example.com`) matches an `exact` name one label below it, as in Envoy.
    fn matches(&self, names: &CertIdentity) -> bool {
        match self.kind {
            SanType::Uri => names.uris.iter().any(|u| self.test.matches(u.as_bytes())),
            SanType::Dns => names.dns.iter().any(|d| {
                self.test.matches(d.as_bytes())
                    || (d.starts_with("*.") && self.test.exact_wildcard(&d[1..]))
            }),
        }
    }
}

/// A verifier that accepts what `inner` accepts and whose leaf has a matching SAN.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Box<[SanMatch]>,
}

impl ClientCertVerifier for SanVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let names = CertIdentity::of(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if self.sans.iter().any(|m| m.matches(&names)) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
