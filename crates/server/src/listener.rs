//! Accept loops for the client and admin listeners, with a connection limit and
//! graceful shutdown (after mini-redis `server.rs`).
//!
//! `serve` takes an already-bound listener and a shutdown future, so tests bind
//! `127.0.0.1:0`, read the port, and stop the server when they like.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::body::Body;

/// Most connections served at once; the accept loop waits for a free slot beyond it,
/// so overload shows up as accept latency rather than memory growth.
pub const MAX_CONNECTIONS: usize = 4096;

/// Run `handler` for every request on `listener` until `shutdown` resolves, then
/// stop accepting and give open connections `grace` to finish.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    fast: Option<Arc<dyn crate::fastpath::FastPath>>,
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
        tokio::spawn(async move {
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
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    // Wait for connections to drain (each holds a permit), bounded by `grace`.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, limit.acquire_many(all)).await;
}
