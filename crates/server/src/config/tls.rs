//! The API listener's certificate and key, loaded while validating.

use std::path::Path;
use std::sync::Arc;

use super::TlsSettings;

/// Reads and checks the API listener's certificate chain and key
/// ([`crate::tls::load`], also used by every reload), and builds the rustls
/// server configuration around a [`crate::tls::CertResolver`] holding them.
/// Every problem goes to `problems`; messages name the files, never key bytes.
pub(super) fn load_tls(
    cert_file: &Path,
    key_file: &Path,
    kernel: crate::kernel_tls::KernelTls,
    problems: &mut Vec<String>,
) -> Option<TlsSettings> {
    let loaded = match crate::tls::load(cert_file, key_file) {
        Ok(loaded) => loaded,
        Err(mut found) => {
            problems.append(&mut found);
            return None;
        }
    };
    let resolver = Arc::new(crate::tls::CertResolver::new(loaded.key));
    match crate::tls::server_config(resolver.clone()) {
        Ok(server_config) => Some(TlsSettings {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            chain_len: loaded.chain_len,
            kernel,
            server_config: Arc::new(server_config),
            resolver,
        }),
        Err(e) => {
            problems.push(format!("internal: TLS versions: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::test_support::env;
    use crate::config::{Config, Overrides};

    /// A CA-signed leaf for 127.0.0.1 and `localhost`: (chain PEM with the
    /// leaf first, the leaf's PKCS#8 key PEM).
    fn leaf_chain() -> (String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (
            format!("{}{}", leaf.pem(), ca_cert.pem()),
            key.serialize_pem(),
        )
    }

    fn tls_files(dir: &Path, chain: &str, key: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, chain).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    fn tls_overrides(cert: &Path, key: &Path) -> Overrides {
        Overrides {
            tls_cert_file: Some(cert.to_owned()),
            tls_key_file: Some(key.to_owned()),
            ..Overrides::default()
        }
    }

    #[test]
    fn tls_is_off_by_default_and_loads_a_chain() {
        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert!(s.tls.is_none());

        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &key);
        let s = Config::load(None, &env(&[]), &tls_overrides(&cert_file, &key_file)).unwrap();
        let tls = s.tls.as_ref().unwrap();
        assert_eq!(tls.chain_len, 2);
        assert_eq!(tls.cert_file, cert_file);
        assert_eq!(
            tls.server_config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // Debug names the files and never prints the key.
        let debug = format!("{s:?}");
        let body_line = key.lines().nth(1).unwrap();
        assert!(debug.contains("cert.pem"), "{debug}");
        assert!(!debug.contains(body_line), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn tls_keys_layer_like_listen() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &key);
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "tls_cert_file = \"/nonexistent/file.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n",
        )
        .unwrap();
        // The file alone names missing files: both are reported.
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.to_string().contains("/nonexistent/file.pem"), "{err}");
        // The environment overrides the file ...
        let e = env(&[
            ("REGCACHE_TLS_CERT_FILE", cert_file.to_str().unwrap()),
            ("REGCACHE_TLS_KEY_FILE", key_file.to_str().unwrap()),
        ]);
        let s = Config::load(Some(&file), &e, &Overrides::default()).unwrap();
        assert_eq!(s.tls.unwrap().key_file, key_file);
        // ... and flags override both.
        let bad = tls_overrides(&dir.path().join("flag-cert.pem"), &key_file);
        let err = Config::load(Some(&file), &e, &bad).unwrap_err();
        assert!(err.to_string().contains("flag-cert.pem"), "{err}");
    }

    #[test]
    fn kernel_tls_is_auto_unless_turned_off() {
        use crate::kernel_tls::KernelTls;
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &key);
        let o = tls_overrides(&cert_file, &key_file);
        let s = Config::load(None, &env(&[]), &o).unwrap();
        assert_eq!(s.tls.unwrap().kernel, KernelTls::Auto);
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "kernel_tls = \"off\"\n").unwrap();
        let s = Config::load(Some(&file), &env(&[]), &o).unwrap();
        assert_eq!(s.tls.unwrap().kernel, KernelTls::Off);
        // The environment overrides the file.
        let e = env(&[("REGCACHE_KERNEL_TLS", "auto")]);
        let s = Config::load(Some(&file), &e, &o).unwrap();
        assert_eq!(s.tls.unwrap().kernel, KernelTls::Auto);
        let e = env(&[("REGCACHE_KERNEL_TLS", "on")]);
        let err = Config::load(None, &e, &o).unwrap_err();
        assert!(err.to_string().contains("REGCACHE_KERNEL_TLS"), "{err}");
        std::fs::write(&file, "kernel_tls = \"yes\"\n").unwrap();
        let err = Config::load(Some(&file), &env(&[]), &o).unwrap_err();
        assert!(err.to_string().contains("kernel_tls"), "{err}");
    }

    #[test]
    fn tls_needs_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &key);
        let only_cert = Overrides {
            tls_cert_file: Some(cert_file),
            ..Overrides::default()
        };
        let err = Config::load(None, &env(&[]), &only_cert).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].contains("tls_key_file is not"),
            "{}",
            err.problems[0]
        );
        let err = Config::load(
            None,
            &env(&[("REGCACHE_TLS_KEY_FILE", key_file.to_str().unwrap())]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].contains("tls_cert_file is not"),
            "{}",
            err.problems[0]
        );
    }

    #[test]
    fn tls_problems_are_listed_with_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let (_, other_key) = leaf_chain();
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &key);

        // Unreadable files, and an address problem at the same time.
        let missing = dir.path().join("missing.pem");
        let mut o = tls_overrides(&missing, &dir.path().join("missing-key.pem"));
        o.listen = Some("nonsense".into());
        let err = Config::load(None, &env(&[]), &o).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(
            text.contains("tls_cert_file") && text.contains("missing.pem: cannot read"),
            "{text}"
        );
        assert!(text.contains("missing-key.pem: cannot read"), "{text}");

        // A certificate file with no certificate; a key file with no key.
        let err = Config::load(None, &env(&[]), &tls_overrides(&key_file, &cert_file)).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 2, "{text}");
        assert!(text.contains("no PEM certificate"), "{text}");
        assert!(text.contains("no PEM private key"), "{text}");
        assert!(!text.contains(key.lines().nth(1).unwrap()), "{text}");

        // A key that is not the leaf's.
        let wrong_key = dir.path().join("wrong-key.pem");
        std::fs::write(&wrong_key, &other_key).unwrap();
        let err =
            Config::load(None, &env(&[]), &tls_overrides(&cert_file, &wrong_key)).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].contains("wrong-key.pem does not match the certificate"),
            "{err}"
        );
        assert!(!err.to_string().contains(other_key.lines().nth(1).unwrap()));

        // A chain whose first certificate is the CA, not the leaf, is refused too.
        let mut certs: Vec<&str> = chain
            .split_inclusive("-----END CERTIFICATE-----\n")
            .collect();
        certs.reverse();
        let reversed = dir.path().join("reversed.pem");
        std::fs::write(&reversed, certs.concat()).unwrap();
        let err = Config::load(None, &env(&[]), &tls_overrides(&reversed, &key_file)).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn tls_takes_sec1_keys() {
        use p256::pkcs8::DecodePrivateKey;
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = leaf_chain();
        let sec1 = p256::SecretKey::from_pkcs8_pem(&key)
            .unwrap()
            .to_sec1_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let (cert_file, key_file) = tls_files(dir.path(), &chain, &sec1);
        let s = Config::load(None, &env(&[]), &tls_overrides(&cert_file, &key_file)).unwrap();
        assert!(s.tls.is_some());
    }
}
