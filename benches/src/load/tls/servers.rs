//! The servers of the TLS scenarios: the plain ones' configs with TLS on
//! their one listener, all on the same certificate and key files.
//!
//! * regcache: `tls_cert_file`/`tls_key_file` at the top of its config (the
//!   API listener then speaks TLS only; its readiness probe stays on the
//!   plain admin listener);
//! * nginx static and nginx `proxy_cache`: the plain config of
//!   [`render_nginx_conf`](super::super::servers::render_nginx_conf) with
//!   `listen … ssl`, the files, TLS 1.2 and 1.3, and a second, plain
//!   listener on another port for the launcher's `/healthz` probe alone.
//!   No `http2`: the listener speaks HTTP/1.1 only. `sendfile on` stays as
//!   in the plain config, but nginx cannot sendfile through OpenSSL without
//!   kernel TLS (`ssl_conf_command Options KTLS`), and this harness does not
//!   turn it on (the kernel it was written on has no kTLS module:
//!   `/proc/net/tls_stat` is absent), so nginx reads each file and encrypts
//!   it in user space, as regcache does.

use std::net::SocketAddr;
use std::path::Path;

use super::cert::TlsFiles;

/// regcache's top-level TLS keys (JSON strings are valid TOML strings).
pub fn regcache_top(files: &TlsFiles) -> String {
    let q = |p: &Path| serde_json::Value::from(p.to_string_lossy()).to_string();
    format!(
        "tls_cert_file = {}\ntls_key_file = {}\n\n",
        q(&files.cert_file),
        q(&files.key_file)
    )
}

/// `conf` (an nginx.conf rendered for `addr`) with TLS on `addr` and a
/// plain listener on `probe` for the readiness check. `Err` when `conf`
/// has no `listen ADDR reuseport;` line to change.
pub fn nginx_ssl_conf(
    conf: &str,
    addr: SocketAddr,
    probe: SocketAddr,
    files: &TlsFiles,
) -> Result<String, String> {
    let plain = format!("        listen {addr} reuseport;\n");
    if !conf.contains(&plain) {
        return Err(format!("nginx.conf has no `{}` line", plain.trim()));
    }
    let tls = format!(
        "        listen {addr} ssl reuseport;\n\
         \x20       # The launcher's readiness probe only (plain HTTP).\n\
         \x20       listen {probe};\n\
         \x20       ssl_certificate {cert};\n\
         \x20       ssl_certificate_key {key};\n\
         \x20       ssl_protocols TLSv1.2 TLSv1.3;\n",
        cert = files.cert_file.display(),
        key = files.key_file.display(),
    );
    Ok(conf.replacen(&plain, &tls, 1))
}

#[cfg(test)]
mod tests {
    use super::super::super::servers::{NginxMode, render_nginx_conf};
    use super::*;

    #[test]
    fn nginx_gets_tls_on_its_listener_and_a_plain_probe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::generate(dir.path()).expect("cert");
        let addr: SocketAddr = "127.0.0.1:8443".parse().expect("addr");
        let probe: SocketAddr = "127.0.0.1:8081".parse().expect("addr");
        for mode in [
            NginxMode::Static {
                root: "/tmp/www".into(),
            },
            NginxMode::ProxyCache {
                upstream: "127.0.0.1:5000".parse().expect("addr"),
            },
        ] {
            let plain = render_nginx_conf(Path::new("/tmp/x"), addr, &mode, false, Some(1));
            let conf = nginx_ssl_conf(&plain, addr, probe, &files).expect("ssl conf");
            assert!(
                conf.contains("listen 127.0.0.1:8443 ssl reuseport;"),
                "{conf}"
            );
            assert!(!conf.contains("listen 127.0.0.1:8443 reuseport;"), "{conf}");
            assert!(conf.contains("listen 127.0.0.1:8081;"), "{conf}");
            assert!(conf.contains(&format!("ssl_certificate {};", files.cert_file.display())));
            assert!(conf.contains(&format!(
                "ssl_certificate_key {};",
                files.key_file.display()
            )));
            assert!(conf.contains("ssl_protocols TLSv1.2 TLSv1.3;"));
            assert!(!conf.contains("http2"), "HTTP/1.1 only: {conf}");
            // Everything else is the plain config.
            assert!(conf.contains("sendfile on;"));
            assert_eq!(
                conf.lines().count(),
                plain.lines().count() + 5,
                "only the listener changed"
            );
        }
        let err = nginx_ssl_conf("events {}", addr, probe, &files).expect_err("no listen");
        assert!(err.contains("listen 127.0.0.1:8443 reuseport;"), "{err}");
    }

    #[test]
    fn regcache_names_both_files_at_top_level() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::generate(dir.path()).expect("cert");
        let top = regcache_top(&files);
        assert!(top.starts_with("tls_cert_file = \""), "{top}");
        assert!(top.contains(&format!("tls_key_file = \"{}\"", files.key_file.display())));
        let key = std::fs::read_to_string(&files.key_file).expect("key");
        assert!(key.contains("PRIVATE KEY"));
        assert!(!format!("{files:?}").contains("PRIVATE"));
    }
}
