//! gofe-tls: the TLS material every gofe part loads — PEM certificate chains, private keys and
//! trust roots — read once into rustls types, with errors that name the file.
//!
//! The proxy's listeners, its xDS client, the xDS server and the metrics adapter all take their
//! certificates from files in PEM form and run rustls with the `ring` provider; this crate is the
//! one place that reads those files. It does not build server or client configurations (each
//! part knows its own ALPN and client-authentication needs) and does not watch files for
//! changes.

pub mod identity;

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The files do not make valid TLS material (no certificate, a bad key, a mismatch).
    #[error("{0}")]
    Invalid(String),
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The certificates of a PEM file, in file order (a chain: leaf first). At least one.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_pem(&read_pem(path)?, &path.display().to_string())
}

/// The certificates of PEM text, in order (a chain: leaf first). At least one; `name` says
/// where the text came from in errors.
pub fn certs_pem(pem: &[u8], name: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(pem)).collect();
    let certs = certs.map_err(|e| TlsError::Invalid(format!("{name}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!(
            "{name}: no PEM certificate found"
        )));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_pem(&read_pem(path)?, &path.display().to_string())
}

/// The first private key of PEM text (PKCS#8, PKCS#1 or SEC1); `name` says where the text
/// came from in errors.
pub fn key_pem(pem: &[u8], name: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut BufReader::new(pem))
        .map_err(|e| TlsError::Invalid(format!("{name}: {e}")))?
        .ok_or_else(|| TlsError::Invalid(format!("{name}: no PEM private key found")))
}

/// A trust store holding every certificate of a PEM file.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    roots_pem(&read_pem(path)?, &path.display().to_string())
}

/// A trust store holding every certificate of PEM text; `name` says where the text came from
/// in errors.
pub fn roots_pem(pem: &[u8], name: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_pem(pem, name)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Invalid(format!("{name}: {e}")))?;
    }
    Ok(roots)
}

/// The crypto provider gofe uses everywhere (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gofe-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn loads_a_generated_certificate_and_key() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let chain = scratch("chain.pem", &cert.cert.pem());
        let key_file = scratch("key.pem", &cert.key_pair.serialize_pem());
        assert_eq!(certs(&chain).unwrap().len(), 1);
        assert!(key(&key_file).is_ok());
        assert_eq!(roots(&chain).unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_file() {
        let missing = Path::new("/nonexistent/gofe.pem");
        let e = certs(missing).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }));
        assert!(e.to_string().starts_with("/nonexistent/gofe.pem:"), "{e}");
        let empty = scratch("empty.pem", "not pem\n");
        let e = certs(&empty).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate found"), "{e}");
        let e = key(&empty).unwrap_err();
        assert!(e.to_string().contains("no PEM private key found"), "{e}");
    }
}
