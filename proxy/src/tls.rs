//! TLS termination for listeners (rustls with the `ring` provider; PEM files read by
//! `gofe-tls`).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Builds an acceptor that offers the configured protocols by ALPN (`h2` and `http/1.1` by
/// default).
pub(crate) fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, String> {
    let cert_path = &config.certificate_chain;
    let key_path = &config.private_key;
    let certs = gofe_tls::certs(Path::new(cert_path)).map_err(|e| e.to_string())?;
    let key = gofe_tls::key(Path::new(key_path)).map_err(|e| e.to_string())?;
    let mut server = rustls::ServerConfig::builder_with_provider(gofe_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{cert_path} / {key_path}: {e}"))?;
    server.alpn_protocols = config
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(TlsAcceptor::from(Arc::new(server)))
}
