//! Accept loops for the client and admin listeners, with connection limits,
//! timeouts and graceful shutdown (after mini-redis `server.rs`).
//!
//! `serve` takes an already-bound listener, its [`Guard`] (the `[limits]`
//! it applies) and a shutdown future, so tests bind `127.0.0.1:0`, read the
//! port, and stop the server when they like.
//!
//! At accept, a connection takes a slot of `max_connections` (beyond it the
//! accept loop waits: overload shows as accept latency, and `/readyz` says
//! so) and one of its address's `max_connections_per_client` (beyond it, it
//! is closed at once). It holds both, counted in
//! `regcache_open_connections`, until it ends.
//!
//! With [`Tls`], every connection must finish a TLS handshake within
//! `header_timeout` of accept and is then served by hyper, HTTP/1.1 or
//! HTTP/2 as ALPN chose; the fast path is for plain connections only
//! (`sendfile` writes file bytes to the socket, past any TLS layer).
//! hyper's IO is [`Watched`]: write and body timeouts; its header timeout
//! runs from accept and from the end of each response.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use prometheus_client::metrics::counter::Counter;
use regcache_formats::{ErrorCode, RegistryError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::conn::{ConnInfo, ConnState, Cut, Guard, IoCut, TrackedBody, Watched};
use crate::error::Error;
use crate::web::body::Body;

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
    guard: Arc<Guard>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    H: Fn(Request<TrackedBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let max = guard.limits.max_connections;
    let limit = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        // hyper 1.x starts this clock when it waits for a request head: at
        // the start of the connection and after each response.
        .header_read_timeout(guard.limits.header_timeout);
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
        let Some(open) = guard.open(peer) else {
            // Over its address's share: closed before it costs a task, with
            // a reset (no FIN_WAIT state kept for a client that floods).
            tracing::debug!(%peer, listener = guard.name, "connection refused: too many from this address");
            let _ = stream.set_zero_linger();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let mut stop_rx = stop_rx.clone();
        let fast = fast.clone();
        let tls = tls.clone();
        let guard = guard.clone();
        tokio::spawn(async move {
            let conn = Conn {
                guard: &guard,
                peer,
                builder: &builder,
            };
            if let Some(tls) = tls {
                if let Some(io) = handshake(&tls, stream, &conn, &mut stop_rx).await {
                    conn.serve_hyper(io, true, handler, &mut stop_rx).await;
                }
                drop((open, permit));
                return;
            }
            // GETs and HEADs without a body are answered on the fast path
            // (blobs with sendfile); the first request that is anything
            // else hands the connection to hyper.
            let io = match fast {
                Some(fast) => {
                    let fconn = crate::fastpath::Conn {
                        guard: &guard,
                        peer,
                    };
                    match crate::fastpath::run(stream, fast, &mut stop_rx, fconn).await {
                        crate::fastpath::Outcome::Done => {
                            drop((open, permit));
                            return;
                        }
                        crate::fastpath::Outcome::Handoff(io) => io,
                    }
                }
                None => crate::fastpath::Rewind::new(stream, bytes::Bytes::new()),
            };
            conn.serve_hyper(io, false, handler, &mut stop_rx).await;
            drop((open, permit));
        });
    }
    let _ = stop_tx.send(true);
    // Wait for connections to drain (each holds a permit), bounded by `grace`.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, limit.acquire_many(all)).await;
}

/// One accepted connection.
struct Conn<'a> {
    guard: &'a Arc<Guard>,
    peer: SocketAddr,
    builder: &'a Builder<TokioExecutor>,
}

/// The server side of a TLS handshake, bounded by `header_timeout`; `None`
/// when it failed (logged at debug, counted) or shutdown began.
async fn handshake(
    tls: &Tls,
    stream: TcpStream,
    conn: &Conn<'_>,
    stop_rx: &mut watch::Receiver<bool>,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let peer = conn.peer;
    let limit = conn.guard.limits.header_timeout;
    let accept = tokio::time::timeout(limit, tls.acceptor.accept(stream));
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
                conn.guard.metrics.cut(Cut::Header);
                tracing::debug!(%peer, timeout = ?limit, "tls handshake timed out");
                None
            }
        },
        // Nothing was asked yet: nothing to finish.
        _ = stop_rx.changed() => None,
    }
}

impl Conn<'_> {
    /// Serve one connection with hyper (HTTP/1 or HTTP/2) until it ends, or
    /// shut it down gracefully once `stop_rx` changes. Every request passes
    /// the guard's checks first and carries a [`ConnInfo`].
    async fn serve_hyper<I, H, F>(
        &self,
        io: I,
        tls: bool,
        handler: H,
        stop_rx: &mut watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<TrackedBody>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let limits = &self.guard.limits;
        let state = Arc::new(ConnState::default());
        let io = Watched::new(io, state.clone(), limits.write_timeout, limits.body_timeout);
        let guard = self.guard.clone();
        let peer = self.peer;
        let service_state = state.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let state = service_state.clone();
            let started = match guard.refusal(&req, peer) {
                Some(refused) => Err(refused),
                None => {
                    req.extensions_mut().insert(ConnInfo { peer, tls });
                    // Reads are timed (`body_timeout`) until the body is in.
                    Ok(handler(req.map(|b| TrackedBody::new(b, &state))))
                }
            };
            let body_timeout = guard.limits.body_timeout;
            async move {
                let fut = match started {
                    Ok(fut) => fut,
                    Err(refused) => return Ok::<_, Infallible>(refused),
                };
                let resp = fut.await;
                if state.cut() == Some(IoCut::Body) {
                    return Ok(body_timed_out(body_timeout));
                }
                Ok(resp)
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let ended = tokio::select! {
            res = conn.as_mut() => res,
            _ = stop_rx.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        match state.cut() {
            Some(IoCut::Write) => {
                self.guard.metrics.cut(Cut::Write);
                tracing::debug!(%peer, "client stopped reading; response cut");
            }
            Some(IoCut::Body) => {
                self.guard.metrics.cut(Cut::Body);
                tracing::debug!(%peer, "client stopped sending its body; request abandoned");
            }
            None => {
                if let Err(e) = ended {
                    let timeout = e
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if timeout {
                        self.guard.metrics.cut(Cut::Header);
                    }
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        }
    }
}

/// 408 for a request whose body stopped arriving: the client's fault, and
/// the connection ends with it.
fn body_timed_out(after: Duration) -> Response<Body> {
    let err = Error::client_status(
        408,
        RegistryError::with_message(
            ErrorCode::Unknown,
            format!(
                "the request body stopped arriving ({}s without a byte); request abandoned",
                after.as_secs()
            ),
        ),
    );
    let mut resp = crate::web::response::with_api_version(crate::rescue::rescue(err, false));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
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
            Some(Tls::new(server, failures.clone())),
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
}
