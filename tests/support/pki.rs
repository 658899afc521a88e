//! A CA made with rcgen and the certificates it signs, as PEM files in a test's folder.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};

/// A CA and the certificates signed by it, as PEM files in `dir`.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    /// A new CA, written to `dir/ca.pem`.
    pub fn new(dir: &Path) -> Pki {
        Pki::named(dir, "ca")
    }

    /// A new CA, written to `dir/NAME.pem`.
    pub fn named(dir: &Path, name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).unwrap();
        Pki {
            dir: dir.to_owned(),
            ca,
            ca_key,
        }
    }

    /// Writes `NAME.pem` and `NAME-key.pem` for `san`, signed by the CA; returns the DER.
    pub fn issue(&self, name: &str, san: SanType, usage: ExtendedKeyUsagePurpose) -> Vec<u8> {
        self.issue_names(name, vec![san], usage)
    }

    /// Like [`Pki::issue`], with any number of SANs.
    pub fn issue_names(
        &self,
        name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        // Key first, then the certificate, each replaced in one rename: a reader never sees a
        // half-written file (it may see a new key beside the old certificate, for one poll).
        for (file, text) in [
            (format!("{name}-key.pem"), key.serialize_pem()),
            (format!("{name}.pem"), cert.pem()),
        ] {
            let tmp = self.dir.join(format!("{file}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.dir.join(file)).unwrap();
        }
        cert.der().to_vec()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
