//! Accept loops for the client and admin listeners, with a connection limit and
//! graceful shutdown (after mini-redis `server.rs`).
//!
//! `serve` takes an already-bound listener and a shutdown future, so tests bind
//! `127.0.0.1:0`, read the port, and stop the server when they like.
//!
//! With [`Tls`], every connection must finish a TLS handshake (within
//! [`TLS_HANDSHAKE_TIMEOUT`]) and is then served by hyper, HTTP/1.1 or HTTP/2
//! as ALPN chose; the fast path is for plain connections only (`sendfile`
//! writes file bytes to the socket, past any TLS layer). A connection holds
//! its slot of the connection limit from accept, handshake included.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::web::body::Body;

/// Most connections served at once; the accept loop waits for a free slot beyond it,
/// so overload shows up as accept latency rather than memory growth.
pub const MAX_CONNECTIONS: usize = 4096;

/// How long a client has to complete the TLS handshake after connecting; a
/// connection that sends nothing must not hold a slot for long.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS for a listener.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Counts handshakes that failed or timed out.
    pub handshake_failures: Counter,
}

impl Tls {
    pub fn new(config: Arc<rustls::ServerConfig>, handshake_failures: Counter) -> Tls {
        Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            handshake_failures,
        }
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_failures", &self.handshake_failures.get())
            .finish_non_exhaustive()
    }
}

/// Run `handler` for every request on `listener` until `shutdown` resolves, then
/// stop accepting and give open connections `grace` to finish.
///
/// With `tls`, connections are TLS only and `fast` is not used.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    fast: Option<Arc<dyn crate::fastpath::FastPath>>,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let mut stop_rx = stop_rx.clone();
        let fast = fast.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Some(tls) = tls {
                if let Some(io) = handshake(&tls, stream, peer, &mut stop_rx).await {
                    serve_hyper(io, &builder, handler, &mut stop_rx, peer).await;
                }
                drop(permit);
                return;
            }
            // GETs and HEADs without a body are answered on the fast path
            // (blobs with sendfile); the first request that is anything
            // else hands the connection to hyper.
            let io = match fast {
                Some(fast) => match crate::fastpath::run(stream, fast, &mut stop_rx).await {
                    crate::fastpath::Outcome::Done => {
                        drop(permit);
                        return;
                    }
                    crate::fastpath::Outcome::Handoff(io) => io,
                },
                None => crate::fastpath::Rewind::new(stream, bytes::Bytes::new()),
            };
            serve_hyper(io, &builder, handler, &mut stop_rx, peer).await;
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    // Wait for connections to drain (each holds a permit), bounded by `grace`.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, limit.acquire_many(all)).await;
}

/// The server side of a TLS handshake, bounded by [`TLS_HANDSHAKE_TIMEOUT`];
/// `None` when it failed (logged at debug, counted) or shutdown began.
async fn handshake(
    tls: &Tls,
    stream: TcpStream,
    peer: SocketAddr,
    stop_rx: &mut watch::Receiver<bool>,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let accept = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream));
    tokio::select! {
        res = accept => match res {
            Ok(Ok(io)) => Some(io),
            Ok(Err(e)) => {
                tls.handshake_failures.inc();
                tracing::debug!(%peer, error = %e, "tls handshake failed");
                None
            }
            Err(_) => {
                tls.handshake_failures.inc();
                tracing::debug!(%peer, timeout = ?TLS_HANDSHAKE_TIMEOUT, "tls handshake timed out");
                None
            }
        },
        // Nothing was asked yet: nothing to finish.
        _ = stop_rx.changed() => None,
    }
}

/// Serve one connection with hyper (HTTP/1 or HTTP/2) until it ends, or
/// shut it down gracefully once `stop_rx` changes.
async fn serve_hyper<I, H, F>(
    io: I,
    builder: &Builder<TokioExecutor>,
    handler: H,
    stop_rx: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stop_rx.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A self-signed certificate for 127.0.0.1: (server config, client config
    /// that trusts it and offers `alpn`).
    fn configs(alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
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
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        (Arc::new(server), Arc::new(client))
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
            |_req: Request<Incoming>| async { Response::new(Body::full("ok")) },
            None,
            Some(Tls::new(server, failures.clone())),
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
        assert!(started.elapsed() >= TLS_HANDSHAKE_TIMEOUT);
        assert_eq!(failures.get(), 1);
        let _ = stop.send(());
        task.await.unwrap();
    }
}
