//! A small HTTP/1.1 server on its own thread, for the in-process test peers
//! (the [`crate::fault::FaultProxy`] and the [`crate::token::TokenServer`]).
//!
//! Each server gets a dedicated thread with its own tokio runtime, so it keeps
//! answering while a test blocks its own thread (starting a registry, waiting
//! for a child process) and whatever runtime flavour the test uses. Dropping
//! the [`ServerThread`] stops accepting, cancels every connection task (the
//! runtime is dropped) and joins the thread.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::oneshot;

/// Errors inside a response body (a body that fails aborts the connection).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of the test servers.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A running server thread; see the module docs.
#[derive(Debug)]
pub struct ServerThread {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `127.0.0.1:0` and serves every connection with `handler`.
    ///
    /// # Panics
    /// When nothing can be bound on loopback or the thread cannot start.
    pub fn spawn<F, Fut>(name: &str, handler: F) -> ServerThread
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        ServerThread::spawn_on(name, Ipv4Addr::LOCALHOST, handler)
    }

    /// As [`ServerThread::spawn`], on `ip:0` (another loopback address, such
    /// as `127.0.0.2`, stands for another host).
    pub fn spawn_on<F, Fut>(name: &str, ip: Ipv4Addr, handler: F) -> ServerThread
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("{name}: cannot bind {ip}:0: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, mut stopped) = oneshot::channel::<()>();
        let handler = Arc::new(handler);
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(thread_name.clone())
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("{thread_name}: cannot build a runtime: {e}"));
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let accepted = tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => accepted,
                        };
                        let Ok((stream, _peer)) = accepted else {
                            continue;
                        };
                        let handler = Arc::clone(&handler);
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |request| {
                                let handler = Arc::clone(&handler);
                                async move { Ok::<_, Infallible>(handler(request).await) }
                            });
                            let io = hyper_util::rt::TokioIo::new(stream);
                            // Errors here are aborted connections: some on
                            // purpose (truncation faults), some by clients.
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                });
                // Dropping the runtime cancels every connection task.
                runtime.shutdown_background();
            })
            .unwrap_or_else(|e| panic!("cannot spawn the {name} thread: {e}"));
        ServerThread {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `IP:PORT` (`127.0.0.1` unless [`ServerThread::spawn_on`] said otherwise).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
