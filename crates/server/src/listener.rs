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
//! `header_timeout` of accept. One whose ALPN chose `h2` is served by hyper
//! over rustls; any other (`http/1.1`, or no ALPN) starts on the fast path
//! like a plain connection, with the same timeouts and the same handoff to
//! hyper. Its bytes go through the kernel's TLS where the kernel has it
//! ([`crate::kernel_tls`]: blobs with `sendfile`), else through rustls
//! (blobs in large `pread`s; see `fastpath/stream.rs`).
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
use crate::fastpath::{FastPath, Outcome, Rewind, Wire};
use crate::kernel_tls::{KernelTls, TlsPaths};
use crate::web::body::Body;

/// TLS for a listener.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Counts handshakes that failed or timed out.
    pub handshake_failures: Counter,
    /// Connections by the path their data took (kernel or userspace TLS).
    pub paths: TlsPaths,
    /// Kernel TLS where the kernel has it (`kernel_tls = "auto"`).
    pub kernel: bool,
}

impl Tls {
    /// With `kernel` ([`KernelTls::Auto`]), `config` is copied with secret
    /// extraction allowed (the secrets go to the kernel, nowhere else); its
    /// certificate resolver is shared, so reloads still reach it.
    pub fn new(
        config: Arc<rustls::ServerConfig>,
        handshake_failures: Counter,
        paths: TlsPaths,
        kernel: KernelTls,
    ) -> Tls {
        let kernel = kernel == KernelTls::Auto;
        let config = if kernel && !config.enable_secret_extraction {
            let mut c = (*config).clone();
            c.enable_secret_extraction = true;
            Arc::new(c)
        } else {
            config
        };
        Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            handshake_failures,
            paths,
            kernel,
        }
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_failures", &self.handshake_failures.get())
            .field("kernel", &self.kernel)
            .finish_non_exhaustive()
    }
}

/// Run `handler` for every request on `listener` until `shutdown` resolves, then
/// stop accepting and give open connections `grace` to finish.
///
/// With `tls`, connections are TLS only; `fast` serves those whose ALPN is
/// not `h2`.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    fast: Option<Arc<dyn FastPath>>,
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
                conn.serve_tls(&tls, stream, fast, handler, &mut stop_rx)
                    .await;
            } else {
                // GETs and HEADs without a body are answered on the fast path
                // (blobs with sendfile); the first request that is anything
                // else hands the connection to hyper.
                conn.serve_fast(stream, fast, handler, &mut stop_rx).await;
            }
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
async fn handshake<IO>(
    tls: &Tls,
    stream: IO,
    conn: &Conn<'_>,
    stop_rx: &mut watch::Receiver<bool>,
) -> Option<tokio_rustls::server::TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
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

/// Whether ALPN chose HTTP/2 (hyper's, never the fast path's).
fn is_h2<IO>(io: &tokio_rustls::server::TlsStream<IO>) -> bool {
    io.get_ref().1.alpn_protocol() == Some(b"h2")
}

impl Conn<'_> {
    /// Serve `stream` on the fast path while its requests take it, then with
    /// hyper (on the same stream, bytes already read included).
    async fn serve_fast<S, H, F>(
        &self,
        stream: S,
        fast: Option<Arc<dyn FastPath>>,
        handler: H,
        stop_rx: &mut watch::Receiver<bool>,
    ) where
        S: Wire,
        H: Fn(Request<TrackedBody>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let io = match fast {
            Some(fast) => {
                let fconn = crate::fastpath::Conn {
                    guard: self.guard,
                    peer: self.peer,
                };
                match crate::fastpath::run(stream, fast, stop_rx, fconn).await {
                    Outcome::Done => return,
                    Outcome::Handoff(io) => io,
                }
            }
            None => Rewind::new(stream, bytes::Bytes::new()),
        };
        self.serve_hyper(io, S::TLS, handler, stop_rx).await;
    }

    /// A TLS connection: the handshake, then hyper for `h2`, else the fast
    /// path over kernel TLS where the kernel has it, or over rustls.
    async fn serve_tls<H, F>(
        &self,
        tls: &Tls,
        stream: TcpStream,
        fast: Option<Arc<dyn FastPath>>,
        handler: H,
        stop_rx: &mut watch::Receiver<bool>,
    ) where
        H: Fn(Request<TrackedBody>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let ciphers = match tls.kernel {
            true => crate::kernel_tls::probe().await,
            false => None,
        };
        let Some(ciphers) = ciphers else {
            let Some(io) = handshake(tls, stream, self, stop_rx).await else {
                return;
            };
            tls.paths.user.inc();
            if is_h2(&io) {
                self.serve_hyper(io, true, handler, stop_rx).await;
                return;
            }
            self.serve_fast(io, fast, handler, stop_rx).await;
            return;
        };
        // `CorkStream` stops rustls reading past the last record it
        // decrypts, so no byte is lost when the kernel takes over.
        let cork = ktls::CorkStream::new(stream);
        let Some(io) = handshake(tls, cork, self, stop_rx).await else {
            return;
        };
        let suite = io.get_ref().1.negotiated_cipher_suite();
        if is_h2(&io) || !suite.is_some_and(|s| ciphers.is_compatible(s)) {
            tls.paths.user.inc();
            if is_h2(&io) {
                self.serve_hyper(io, true, handler, stop_rx).await;
            } else {
                self.serve_fast(io, fast, handler, stop_rx).await;
            }
            return;
        }
        match ktls::config_ktls_server(io).await {
            Ok(io) => {
                tls.paths.kernel.inc();
                self.serve_fast(io, fast, handler, stop_rx).await;
            }
            Err(e) => {
                // The probe passed this suite; the secrets are spent.
                tracing::warn!(peer = %self.peer, error = %e, "kernel TLS setup failed; connection closed");
            }
        }
    }

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
#[path = "listener_tests.rs"]
mod tests;
