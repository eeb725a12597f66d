//! The API listener's certificate: loading and checking it, and swapping it
//! while running (SIGHUP, `POST /tls/reload` on the admin listener).
//!
//! The rustls `ServerConfig` is built once, with a [`CertResolver`] as its
//! certificate resolver; a reload replaces only the resolver's
//! `CertifiedKey`, so ALPN, versions and every other setting stay as they
//! were. A handshake that has started keeps the key it resolved; open
//! connections keep theirs. A reload that fails changes nothing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate chain with its private key, read and checked by [`load`].
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// Certificates in the chain (the leaf and any intermediates).
    pub chain_len: usize,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("chain_len", &self.chain_len)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Reads the PEM chain in `cert_file` and the PEM key (PKCS#8, SEC1 or
/// PKCS#1) in `key_file`, parses the key with the ring provider and checks
/// that it belongs to the first certificate, exactly as rustls'
/// `with_single_cert` does. Used at start-up and for every reload.
///
/// # Errors
/// Every problem found, one message each; messages name the files (as the
/// configuration keys `tls_cert_file` / `tls_key_file`), never key bytes.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<Loaded, Vec<String>> {
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut problems = Vec::new();
    let read = |what: &str, path: &Path, problems: &mut Vec<String>| -> Option<Vec<u8>> {
        if path.as_os_str().is_empty() {
            problems.push(format!("{what} must not be empty"));
            return None;
        }
        std::fs::read(path)
            .map_err(|e| problems.push(format!("{what} {}: cannot read: {e}", path.display())))
            .ok()
    };
    let chain = read("tls_cert_file", cert_file, &mut problems).and_then(|bytes| {
        match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(chain) if chain.is_empty() => {
                problems.push(format!(
                    "tls_cert_file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                    cert_file.display()
                ));
                None
            }
            Ok(chain) => Some(chain),
            Err(e) => {
                problems.push(format!(
                    "tls_cert_file {}: not valid PEM: {e}",
                    cert_file.display()
                ));
                None
            }
        }
    });
    let key = read("tls_key_file", key_file, &mut problems).and_then(|bytes| {
        match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(key) => Some(key),
            Err(pem::Error::NoItemsFound) => {
                problems.push(format!(
                    "tls_key_file {}: no PEM private key (PKCS#8, SEC1 or PKCS#1) in it",
                    key_file.display()
                ));
                None
            }
            // pki-types' messages name markers and base64 errors, not key bytes.
            Err(e) => {
                problems.push(format!(
                    "tls_key_file {}: not valid PEM: {e}",
                    key_file.display()
                ));
                None
            }
        }
    });
    let (Some(chain), Some(key)) = (chain, key) else {
        debug_assert!(!problems.is_empty());
        return Err(problems);
    };
    let chain_len = chain.len();
    // `from_der` is what `with_single_cert` calls: the provider parses the
    // key (ring's `any_supported_type`) and its public key is compared with
    // the leaf certificate's.
    let provider = rustls::crypto::ring::default_provider();
    match CertifiedKey::from_der(chain, key, &provider) {
        Ok(key) => Ok(Loaded {
            key: Arc::new(key),
            chain_len,
        }),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(vec![format!(
                "tls_key_file {} does not match the certificate in tls_cert_file {} (the first certificate must be the leaf of this key)",
                key_file.display(),
                cert_file.display()
            )])
        }
        Err(e) => Err(vec![format!(
            "tls_cert_file {} / tls_key_file {}: {e}",
            cert_file.display(),
            key_file.display()
        )]),
    }
}

/// The rustls server configuration of the API listener: the ring provider,
/// TLS 1.3 and 1.2, no client certificates, ALPN `h2` then `http/1.1`, and
/// the certificate `resolver` hands out.
///
/// # Errors
/// Only if the ring provider refused these protocol versions.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Hands every handshake the current certificate; [`CertResolver::set`]
/// replaces it for handshakes that start afterwards.
pub struct CertResolver {
    // parking_lot: held only to clone or replace an `Arc`, never across an
    // `.await`, and a panic elsewhere cannot poison it.
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> CertResolver {
        CertResolver {
            current: RwLock::new(key),
        }
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }

    /// From now on, new handshakes get `key`.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write() = key;
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("chain_len", &self.current.read().cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Re-reads the configured files into a [`CertResolver`], counting the
/// outcomes (`regcache_tls_reloads_total{result}`).
pub struct Reloader {
    cert_file: PathBuf,
    key_file: PathBuf,
    resolver: Arc<CertResolver>,
    ok: Counter,
    error: Counter,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("ok", &self.ok.get())
            .field("error", &self.error.get())
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// `ok` and `error` count successful and failed reloads.
    pub fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        resolver: Arc<CertResolver>,
        ok: Counter,
        error: Counter,
    ) -> Reloader {
        Reloader {
            cert_file,
            key_file,
            resolver,
            ok,
            error,
        }
    }

    /// Loads and checks the files as at start-up ([`load`]); if they are
    /// good, new handshakes use them. Logs (info on success, error on
    /// failure) and counts either way. Blocking file reads (two small files).
    ///
    /// # Errors
    /// The problems found (see [`load`]); the previous certificate stays.
    pub fn reload(&self) -> Result<usize, String> {
        match load(&self.cert_file, &self.key_file) {
            Ok(loaded) => {
                let leaf = loaded.key.cert.first().map(|c| fingerprint(c.as_ref()));
                self.resolver.set(loaded.key);
                self.ok.inc();
                tracing::info!(
                    cert = %self.cert_file.display(),
                    key = %self.key_file.display(),
                    certificates = loaded.chain_len,
                    leaf_sha256 = leaf.as_deref().unwrap_or("?"),
                    "tls certificate reloaded; new handshakes use it"
                );
                Ok(loaded.chain_len)
            }
            Err(problems) => {
                self.error.inc();
                let error = problems.join("; ");
                tracing::error!(
                    cert = %self.cert_file.display(),
                    key = %self.key_file.display(),
                    %error,
                    "tls certificate reload failed; still serving the previous certificate"
                );
                Err(error)
            }
        }
    }
}

/// The SHA-256 fingerprint of the leaf certificate, in the colon-separated
/// upper-case hex `openssl x509 -noout -fingerprint -sha256` prints, so an
/// operator can tell which certificate is now served.
fn fingerprint(der: &[u8]) -> String {
    let digest = regcache_formats::Digest::sha256_of(der);
    let hex = digest.hex().to_ascii_uppercase();
    let pairs: Vec<&str> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| hex.get(i..i + 2))
        .collect();
    pairs.join(":")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A leaf for 127.0.0.1 named `cn`: (certificate PEM, key PEM, leaf DER).
    fn leaf(cn: &str) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_after = rcgen::date_time_ymd(2031, 7, 15);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn leaf_der(key: &CertifiedKey) -> Vec<u8> {
        key.cert[0].as_ref().to_vec()
    }

    #[test]
    fn reload_swaps_a_valid_certificate_and_keeps_the_old_one_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (a_cert, a_key, a_der) = leaf("a.example");
        std::fs::write(&cert_file, &a_cert).unwrap();
        std::fs::write(&key_file, &a_key).unwrap();
        let loaded = load(&cert_file, &key_file).unwrap();
        assert_eq!(loaded.chain_len, 1);
        let resolver = Arc::new(CertResolver::new(loaded.key));
        let (ok, error) = (Counter::default(), Counter::default());
        let reloader = Reloader::new(
            cert_file.clone(),
            key_file.clone(),
            resolver.clone(),
            ok.clone(),
            error.clone(),
        );
        assert_eq!(leaf_der(&resolver.current()), a_der);

        // A new, valid pair: swapped in.
        let (b_cert, b_key, b_der) = leaf("b.example");
        std::fs::write(&cert_file, &b_cert).unwrap();
        std::fs::write(&key_file, &b_key).unwrap();
        assert_eq!(reloader.reload(), Ok(1));
        assert_eq!(leaf_der(&resolver.current()), b_der);
        assert_eq!((ok.get(), error.get()), (1, 0));

        // A new certificate with a key that is not its own: B stays.
        let (c_cert, _, _) = leaf("c.example");
        std::fs::write(&cert_file, &c_cert).unwrap();
        let err = reloader.reload().unwrap_err();
        assert!(err.contains("does not match the certificate"), "{err}");
        assert!(!err.contains(b_key.lines().nth(1).unwrap()), "{err}");
        assert_eq!(leaf_der(&resolver.current()), b_der);
        assert_eq!((ok.get(), error.get()), (1, 1));

        // Half-written files and missing files: B stays.
        std::fs::write(&cert_file, &b_cert[..b_cert.len() / 2]).unwrap();
        assert!(reloader.reload().is_err());
        std::fs::remove_file(&key_file).unwrap();
        std::fs::write(&cert_file, &b_cert).unwrap();
        let err = reloader.reload().unwrap_err();
        assert!(err.contains("tls.key: cannot read"), "{err}");
        assert_eq!(leaf_der(&resolver.current()), b_der);
        assert_eq!((ok.get(), error.get()), (1, 3));
    }

    #[test]
    fn the_fingerprint_is_openssls_sha256_form() {
        let fp = fingerprint(b"abc");
        assert_eq!(
            fp,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[tokio::test]
    async fn handshakes_after_a_reload_see_the_new_certificate() {
        use rustls::pki_types::{CertificateDer, ServerName};
        use tokio::net::{TcpListener, TcpStream};

        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (a_cert, a_key, a_der) = leaf("a.example");
        std::fs::write(&cert_file, &a_cert).unwrap();
        std::fs::write(&key_file, &a_key).unwrap();
        let resolver = Arc::new(CertResolver::new(load(&cert_file, &key_file).unwrap().key));
        let config = Arc::new(server_config(resolver.clone()).unwrap());
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _tls = acceptor.accept(tcp).await;
                });
            }
        });
        let trusting = |der: &[u8]| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(der.to_vec())).unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
            ))
        };
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let connect = async |der: &[u8]| {
            let tcp = TcpStream::connect(addr).await.unwrap();
            trusting(der).connect(name.clone(), tcp).await
        };
        let open_a = connect(&a_der).await.unwrap();

        let (b_cert, b_key, b_der) = leaf("b.example");
        std::fs::write(&cert_file, &b_cert).unwrap();
        std::fs::write(&key_file, &b_key).unwrap();
        let reloader = Reloader::new(
            cert_file,
            key_file,
            resolver,
            Counter::default(),
            Counter::default(),
        );
        reloader.reload().unwrap();
        assert!(connect(&b_der).await.is_ok());
        assert!(connect(&a_der).await.is_err());
        // The connection made before the reload still has certificate A.
        let peer = open_a.get_ref().1.peer_certificates().unwrap();
        assert_eq!(peer[0].as_ref(), &a_der[..]);
    }
}
