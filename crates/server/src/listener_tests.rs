//! Tests of the accept loop: TLS handshakes, ALPN, and the fast path over TLS.

#![allow(clippy::unwrap_used)]

use super::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for 127.0.0.1: (server config, client config
/// that trusts it and offers `alpn`).
fn configs(alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let (server, client, _) = configs_for(alpn, rustls::DEFAULT_VERSIONS);
    (server, client)
}

/// [`configs`] with the client offering only `versions`, and the
/// certificate (DER).
fn configs_for(
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (
    Arc<rustls::ServerConfig>,
    Arc<rustls::ClientConfig>,
    Vec<u8>,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (Arc::new(server), Arc::new(client), cert.der().to_vec())
}

fn test_guard() -> Arc<Guard> {
    let metrics = crate::metrics::Metrics::new();
    Arc::new(Guard::new(
        "api",
        crate::config::ConnLimits::default(),
        &metrics,
        true,
    ))
}

/// `serve` with TLS on a loopback port answering 200 "ok" to everything:
/// (address, handshake failures, stop sender, the serve task).
async fn start(
    server: Arc<rustls::ServerConfig>,
) -> (
    SocketAddr,
    Counter,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let failures = Counter::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        |_req: Request<TrackedBody>| async { Response::new(Body::full("ok")) },
        None,
        Some(Tls::new(
            server,
            failures.clone(),
            TlsPaths::default(),
            KernelTls::Auto,
        )),
        test_guard(),
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    (addr, failures, stop, task)
}

#[tokio::test]
async fn tls_negotiates_h2_refuses_plain_http_and_drains() {
    let (server, client) = configs(&[b"h2", b"http/1.1"]);
    let (addr, failures, stop, task) = start(server).await;
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let h2 = connector.connect(name.clone(), tcp).await.unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let (_, client) = configs(&[b"http/1.1"]);
    // Another certificate: this client must not trust the server.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(client)
        .connect(name.clone(), tcp)
        .await;
    assert!(refused.is_err());

    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {answer:?}"
    );

    // A kept-alive HTTP/2 connection does not hold up shutdown.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .unwrap()
        .unwrap();
    drop(h2);
    // The untrusting client and the plain one both failed their handshake.
    assert_eq!(failures.get(), 2);
}

#[tokio::test]
async fn tls_answers_http1_over_tls() {
    let (server, client) = configs(&[b"http/1.1"]);
    let (addr, failures, stop, task) = start(server).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok"), "{text}");
    let _ = stop.send(());
    task.await.unwrap();
    assert_eq!(failures.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_times_out_of_the_handshake() {
    let (server, _) = configs(&[]);
    let (addr, failures, stop, task) = start(server).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    // The server closes the connection once the handshake timed out.
    let n = silent.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= crate::config::ConnLimits::default().header_timeout);
    assert_eq!(failures.get(), 1);
    let _ = stop.send(());
    task.await.unwrap();
}

#[path = "listener_fast_tests.rs"]
mod fast;
