//! The one certificate every TLS server of the run presents: self-signed,
//! ECDSA P-256 (rcgen's default key), for `127.0.0.1` and `localhost`,
//! written once as PEM files that regcache and both nginx read, so the
//! handshakes (and their signature cost) are the same for every server.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The certificate, its key and where they were written.
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate, which the clients trust as their only root.
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// The key stays out of `Debug`, even a throwaway bench key.
impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TlsFiles {
    /// Generates the certificate and writes `cert.pem` and `key.pem` (mode
    /// 0600) into `dir`.
    pub fn generate(dir: &Path) -> Result<TlsFiles, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(|e| format!("bad certificate names: {e}"))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cannot self-sign: {e}"))?;
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, cert.pem())
            .map_err(|e| format!("cannot write {}: {e}", cert_file.display()))?;
        write_private(&key_file, key.serialize_pem().as_bytes())?;
        Ok(TlsFiles {
            cert_file,
            key_file,
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }

    /// The key, for an in-process server (tests).
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
