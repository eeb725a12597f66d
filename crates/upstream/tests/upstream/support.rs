//! Loopback test servers (hyper 1 on 127.0.0.1:0) that record every request
//! and answer through a closure, plus small helpers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use regcache_upstream::{ClientConfig, RetryConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

pub type Reply = Response<Full<Bytes>>;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    pub fn query(&self) -> &str {
        self.uri.query().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }
}

/// A running server; stops accepting when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler = Arc::new(handler);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = task_log.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            };
                            log.lock().push(rec.clone());
                            Ok::<_, Infallible>(handler(rec).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestServer { addr, log, task }
    }

    pub fn url(&self) -> Url {
        Url::parse(&format!("http://{}", self.addr)).unwrap()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().clone()
    }

    pub fn total(&self) -> usize {
        self.log.lock().len()
    }
}

pub fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut b = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

pub fn empty(status: u16) -> Reply {
    reply(status, &[], Bytes::new())
}

pub fn json(status: u16, body: &str) -> Reply {
    reply(
        status,
        &[("content-type", "application/json; charset=utf-8")],
        body.to_owned(),
    )
}

/// A test config: no env proxy, fast retries, short timeouts.
pub fn config(url: Url) -> ClientConfig {
    let mut c = ClientConfig::new("test", url);
    c.use_env_proxy = false;
    c.connect_timeout = Duration::from_secs(2);
    c.first_byte_timeout = Duration::from_secs(5);
    c.body_stall_timeout = Duration::from_secs(5);
    c.retry = RetryConfig {
        max_attempts: 3,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_total: Duration::from_secs(20),
        max_retry_after: Duration::from_secs(3),
    };
    c
}

/// A port on which nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

pub const SCHEMA2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MANIFEST: &str = r#"{"schemaVersion":2}"#;

/// `sha256:` digest of `bytes` (hex via std formatting of each byte).
pub fn sha256(bytes: &[u8]) -> regcache_formats::Digest {
    regcache_formats::Digest::sha256_of(bytes)
}
