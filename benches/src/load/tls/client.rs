//! The TLS client of the TLS scenarios: rustls (ring) with exactly one
//! protocol version and one cipher suite, X25519 first, so every
//! server negotiates the same thing (checked on every connection), ALPN
//! `http/1.1` only (regcache's listener also offers h2), and the run's
//! self-signed certificate as its only root.
//!
//! Unlike plain S1 the client cannot drop bodies in the kernel: it must
//! decrypt them. It reads the socket through a 1 MiB buffer (rustls itself
//! asks for 4 KiB per read, which would cost ~5 `read` calls per 16 KiB
//! record) and decrypts into the connection's reused 1 MiB buffer.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedCipherSuite};

use super::super::http::{Conn, READ_BUF, tcp_connect};

/// A protocol version with the one cipher suite the client offers in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS 1.3 with `TLS13_AES_256_GCM_SHA384`: what OpenSSL's and rustls's
    /// clients negotiate by default with both servers (both put it first,
    /// and neither server overrides the client's order); wrk (OpenSSL) gets
    /// it in S2.
    V13,
    /// TLS 1.2 with `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256` (an ECDSA
    /// certificate, so an `ECDHE_ECDSA` suite).
    V12,
}

impl Tls {
    pub const ALL: [Tls; 2] = [Tls::V13, Tls::V12];

    pub fn label(self) -> &'static str {
        match self {
            Tls::V13 => "TLS 1.3",
            Tls::V12 => "TLS 1.2",
        }
    }

    fn suite(self) -> SupportedCipherSuite {
        match self {
            Tls::V13 => ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            Tls::V12 => ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        }
    }

    fn version(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            Tls::V13 => &rustls::version::TLS13,
            Tls::V12 => &rustls::version::TLS12,
        }
    }

    /// What a connection must report, e.g.
    /// `TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519`.
    pub fn expected(self) -> String {
        format!(
            "{:?} {:?} X25519",
            self.version().version,
            self.suite().suite()
        )
    }
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("bad root certificate: {0}")]
    Root(rustls::Error),
    #[error("TLS config: {0}")]
    Config(rustls::Error),
}

/// The client config for `tls`, trusting `root` alone.
pub fn client_config(
    tls: Tls,
    root: &CertificateDer<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).map_err(TlsError::Root)?;
    let provider = CryptoProvider {
        cipher_suites: vec![tls.suite()],
        // X25519 first, so it is what every server picks (checked). P-256
        // must be offered too: in TLS 1.2 the offered groups also bound the
        // ECDSA certificate's curve (RFC 8422), and OpenSSL refuses every
        // ECDSA suite ("no shared cipher") to a client without P-256.
        kx_groups: vec![ring::kx_group::X25519, ring::kx_group::SECP256R1],
        ..ring::default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[tls.version()])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection a full handshake: the session cache is keyed by the
    // server name, the same 127.0.0.1 for every server, and a resumed TLS
    // 1.2 session has no key exchange to check.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The socket as rustls reads it: through a [`READ_BUF`] buffer.
#[derive(Debug)]
pub struct BufSocket(BufReader<TcpStream>);

impl Read for BufSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for BufSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.get_mut().flush()
    }
}

pub type TlsStream = StreamOwned<ClientConnection, BufSocket>;

/// A keep-alive HTTP/1.1 connection over TLS.
pub type TlsConn = Conn<TlsStream>;

/// Connects, completes the handshake and checks that it negotiated what
/// `tls` asks for (version, suite, group; ALPN `http/1.1` or none).
pub fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, tls: Tls) -> io::Result<TlsConn> {
    let tcp = tcp_connect(addr)?;
    let conn = ClientConnection::new(config.clone(), ServerName::from(addr.ip()))
        .map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, BufSocket(BufReader::with_capacity(READ_BUF, tcp)));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    let got = negotiated(&stream.conn);
    if got != tls.expected() {
        return Err(io::Error::other(format!(
            "negotiated {got}, expected {}",
            tls.expected()
        )));
    }
    if let Some(alpn) = stream.conn.alpn_protocol()
        && alpn != b"http/1.1"
    {
        return Err(io::Error::other(format!(
            "ALPN {:?}, expected http/1.1",
            String::from_utf8_lossy(alpn)
        )));
    }
    Ok(Conn::over(stream))
}

/// `version suite group` of a connection, in [`Tls::expected`]'s format.
pub fn negotiated(conn: &ClientConnection) -> String {
    let field = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    format!(
        "{} {} {}",
        field(conn.protocol_version().map(|v| format!("{v:?}"))),
        field(
            conn.negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
        ),
        field(
            conn.negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use sha2::Digest as _;

    use super::super::cert::TlsFiles;
    use super::*;
    use crate::load::http::get_request;

    /// A rustls server on loopback answering every request on a keep-alive
    /// connection with `body`, with the default ring provider (every suite
    /// and version): the client alone decides what is negotiated.
    fn server(files: &TlsFiles, body: Arc<Vec<u8>>) -> SocketAddr {
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![files.cert_der.clone()], files.key_der())
                .expect("server cert");
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let (config, body) = (config.clone(), body.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).expect("server conn");
                    let mut s = StreamOwned::new(conn, tcp);
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            if s.write_all(head.as_bytes()).is_err()
                                || s.write_all(&body).is_err()
                                || s.flush().is_err()
                            {
                                return;
                            }
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn fetches_megabytes_byte_exact_over_each_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::generate(dir.path()).expect("cert");
        // 5 MiB + a bit: many records, and a tail shorter than one.
        let body: Vec<u8> = (0..(5 << 20) + 12_345u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let want = sha2::Sha256::digest(&body);
        let addr = server(&files, Arc::new(body.clone()));
        for tls in Tls::ALL {
            let config = client_config(tls, &files.cert_der).expect("client config");
            // A second connection with the same config is a full handshake
            // too (no resumption), so it reports the same group.
            let first = connect(addr, &config, tls).expect("first connect");
            drop(first);
            let mut conn = connect(addr, &config, tls).expect("connect");
            assert_eq!(negotiated(&conn.stream().conn), tls.expected());
            assert!(tls.expected().contains(match tls {
                Tls::V13 => "TLSv1_3 TLS13_AES_256_GCM_SHA384",
                Tls::V12 => "TLSv1_2 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            }));
            assert_eq!(conn.stream().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            // Twice on the same connection: keep-alive framing holds.
            for _ in 0..2 {
                let (head, got) = conn.get(&get_request(addr, "/b", &[])).expect("get");
                assert_eq!(head.status, 200);
                assert_eq!(got.len(), body.len());
                assert_eq!(sha2::Sha256::digest(&got), want, "{}", tls.label());
            }
        }
    }

    #[test]
    fn a_certificate_not_trusted_fails_the_handshake() {
        let dir = tempfile::tempdir().expect("tempdir");
        let served = TlsFiles::generate(dir.path()).expect("cert");
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = TlsFiles::generate(other_dir.path()).expect("other cert");
        let addr = server(&served, Arc::new(b"x".to_vec()));
        let config = client_config(Tls::V13, &other.cert_der).expect("client config");
        let err = connect(addr, &config, Tls::V13).expect_err("untrusted");
        assert!(err.to_string().contains("certificate"), "{err}");
    }
}
