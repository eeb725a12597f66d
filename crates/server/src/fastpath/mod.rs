//! The HTTP/1 fast path: pulls answered without hyper, blobs with `sendfile(2)`.
//!
//! It serves plain connections and TLS ones whose ALPN is not `h2` alike
//! ([`Wire`], one impl per stream type: a socket or kernel TLS sends files
//! with `sendfile`, userspace TLS with large `pread`s through rustls).
//!
//! Bytes from disk to socket without passing through user space is what
//! nginx's `sendfile on` does, and hyper's body abstraction can't: every body
//! chunk is a `Bytes` in our memory. So each connection starts here: request
//! heads are parsed with `httparse`, and every `GET` or `HEAD` without a body
//! is answered on this loop. A blob the cache holds, or one being filled from
//! the upstream, goes out with `sendfile` straight from its file; everything
//! else (manifests, errors, listings) comes from the same handlers hyper
//! calls ([`FastPath::respond`]), and only the response head and body are
//! written here. A pull (ping, manifests, blobs, on one kept-alive
//! connection) therefore stays on this loop from start to end.
//!
//! The first request that is anything else (a push or any request with a
//! body, `Expect`, `Upgrade`, HTTP/2, a head over 16 KiB or one `httparse`
//! refuses) hands the whole connection to hyper, bytes already read
//! included, for the rest of its life. Hyper answers those exactly as before:
//! this loop never has to parse a request body.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::header;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use regcache_store::FillFile;
use tokio::net::TcpStream;

use crate::conn::{ConnInfo, Cut, Guard};
use crate::web::body::{Body, ReqBody};

mod rewind;
mod send;
mod stream;
mod wire;

pub use rewind::Rewind;
pub use stream::{Scratch, Wire};
pub use wire::head_lines;
use wire::{Parsed, parse, write_reply};

/// Largest request head the fast path reads before giving up (hyper's default
/// is larger; such requests go to hyper).
const MAX_HEAD: usize = 16 << 10;

/// Answers requests parsed by the fast path.
pub trait FastPath: Send + Sync + 'static {
    /// The answer to a `GET` or `HEAD` without a body.
    fn respond(&self, req: Request<ReqBody>) -> BoxFuture<'_, Reply>;
}

/// What the fast path sends.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ReplyBody,
    /// Counts the body bytes the writes wrote (`regcache_served_bytes_total`).
    pub meter: Option<crate::metrics::Meter>,
    /// The request's access line, finished with the body bytes written.
    pub access: Option<crate::access_log::Line>,
}

#[derive(Debug)]
pub enum ReplyBody {
    Empty,
    Bytes(Bytes),
    /// `len` bytes of `file` from `offset`, sent with `sendfile`.
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    /// `len` bytes from `offset` of a blob still being filled: sent with
    /// `sendfile` as the fill writes them, the last byte only once the fill is
    /// verified, so a failed fill always leaves the client short.
    Fill {
        fill: FillFile,
        offset: u64,
        len: u64,
    },
    /// Anything else a handler produced.
    Body(Body),
    /// A prepared answer (`handlers::prepared`): its header lines, each
    /// `name: value\r\n` with `Content-Length` among them, and its body.
    Prepared {
        head: Bytes,
        body: Bytes,
    },
}

impl Reply {
    /// A handler's response, sent as it is (its body not at all for `HEAD`).
    pub fn from_response(resp: Response<Body>, head: bool) -> Reply {
        let (parts, mut body) = resp.into_parts();
        let meter = body.take_meter();
        let body = match body {
            _ if head => ReplyBody::Empty,
            Body::Full(None) => ReplyBody::Empty,
            Body::Full(Some(b)) => ReplyBody::Bytes(b),
            stream => ReplyBody::Body(stream),
        };
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            meter,
            access: None,
        }
    }
}

impl Reply {
    /// Whether the body's end can only be told by closing the connection.
    fn is_close_delimited(&self, http10: bool) -> bool {
        http10
            && !self.headers.contains_key(header::CONTENT_LENGTH)
            && matches!(self.body, ReplyBody::Body(Body::Stream { len: None, .. }))
    }
}

/// What became of a connection on the fast path.
#[derive(Debug)]
pub enum Outcome<S = TcpStream> {
    /// Closed (by the client, an error, or `Connection: close`).
    Done,
    /// Continue with hyper on this IO (unread bytes first).
    Handoff(Rewind<S>),
}

/// The connection the fast path serves: its listener's limits and metrics,
/// and its peer.
#[derive(Debug, Clone, Copy)]
pub struct Conn<'a> {
    pub guard: &'a Guard,
    pub peer: std::net::SocketAddr,
}

/// Serve requests on `stream` while they can take the fast path.
///
/// Timeouts (`[limits]`): the first request head must be complete within
/// `header_timeout` of accept (a connection that sends nothing is closed
/// then, not when a first byte would start a clock); a kept-alive
/// connection waits `idle_timeout` for the next request's first byte, then
/// `header_timeout` for the rest of its head; a response the client stops
/// reading for `write_timeout` is cut.
pub async fn run<S: Wire>(
    stream: S,
    fast: Arc<dyn FastPath>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    conn: Conn<'_>,
) -> Outcome<S> {
    let limits = &conn.guard.limits;
    let mut stream = stream;
    let mut scratch = Scratch::default();
    let mut buf = BytesMut::with_capacity(4096);
    // The first request's head is due `header_timeout` after accept.
    let mut deadline = Some(tokio::time::Instant::now() + limits.header_timeout);
    let mut first = true;
    loop {
        // Read until one full request head is buffered.
        let (head, consumed) = loop {
            match parse(&buf) {
                Parsed::Complete(head, n) => break (head, n),
                Parsed::Other => return Outcome::Handoff(Rewind::new(stream, buf.freeze())),
                Parsed::Partial if buf.len() >= MAX_HEAD => {
                    return Outcome::Handoff(Rewind::new(stream, buf.freeze()));
                }
                Parsed::Partial => {}
            }
            let wait = match deadline {
                None if buf.is_empty() => limits.idle_timeout,
                None => {
                    let d = tokio::time::Instant::now() + limits.header_timeout;
                    deadline = Some(d);
                    limits.header_timeout
                }
                Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
            };
            let read = tokio::select! {
                r = tokio::time::timeout(wait, tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf)) => r,
                _ = stop.changed() => return Outcome::Done,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Done,
                Err(_) => {
                    conn.guard
                        .metrics
                        .cut(match (first, buf.is_empty(), deadline) {
                            (true, true, _) => Cut::FirstByte,
                            (false, true, None) => Cut::Idle,
                            _ => Cut::Header,
                        });
                    return Outcome::Done;
                }
                Ok(Ok(_)) => {}
            }
        };
        buf.advance(consumed);
        first = false;
        deadline = None;
        let mut req = head.req;
        let is_head = req.method() == Method::HEAD;
        let http10 = req.version() == Version::HTTP_10;
        let mut close = head.close;
        let reply = match conn.guard.refusal(&req, conn.peer) {
            None => {
                req.extensions_mut().insert(ConnInfo {
                    peer: conn.peer,
                    tls: S::TLS,
                });
                fast.respond(req).await
            }
            Some(refused) => {
                // A request that breaks the Host rules says nothing
                // trustworthy about where the next one starts.
                close |= refused.status() == StatusCode::BAD_REQUEST;
                Reply::from_response(refused, is_head)
            }
        };
        if reply.is_close_delimited(http10) {
            close = true;
        }
        match write_reply(
            &mut stream,
            &mut scratch,
            reply,
            close,
            is_head,
            http10,
            limits.write_timeout,
        )
        .await
        {
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    conn.guard.metrics.cut(Cut::Write);
                    tracing::debug!(peer = %conn.peer, "client stopped reading; response cut");
                }
                return Outcome::Done;
            }
            Ok(()) if close => {
                if S::TLS {
                    // close_notify, so a client can tell the end from a cut.
                    let _ = tokio::time::timeout(
                        limits.write_timeout,
                        tokio::io::AsyncWriteExt::shutdown(&mut stream),
                    )
                    .await;
                }
                return Outcome::Done;
            }
            Ok(()) => {}
        }
        if *stop.borrow() {
            return Outcome::Done;
        }
        if buf.is_empty() {
            // Nothing pipelined: the connection waits, without the buffer.
            scratch.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: (server side, client side).
    pub(super) async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (s.unwrap().0, c.unwrap())
    }

    /// Answers every request with its method and path.
    struct Echo;

    impl FastPath for Echo {
        fn respond(&self, req: Request<ReqBody>) -> BoxFuture<'_, Reply> {
            let text = format!("{} {}", req.method(), req.uri());
            Box::pin(async move {
                Reply {
                    status: StatusCode::OK,
                    headers: HeaderMap::new(),
                    body: ReplyBody::Bytes(Bytes::from(text)),
                    meter: None,
                    access: None,
                }
            })
        }
    }

    pub(super) fn test_guard() -> Guard {
        Guard::new(
            "api",
            crate::config::ConnLimits::default(),
            &crate::metrics::Metrics::new(),
            false,
        )
    }

    async fn serve_one(server: TcpStream) -> Outcome {
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        let guard = test_guard();
        let peer = server.peer_addr().unwrap();
        run(
            server,
            Arc::new(Echo),
            &mut rx,
            Conn {
                guard: &guard,
                peer,
            },
        )
        .await
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_then_a_push_goes_to_hyper() {
        let (server, mut client) = pair().await;
        let task = tokio::spawn(serve_one(server));
        client
            .write_all(
                b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nHEAD /v2/a/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/b HTTP/1.0\r\nConnection: keep-alive\r\n\r\nPUT /v2/a/manifests/1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            )
            .await
            .unwrap();
        let Outcome::Handoff(mut rest) = task.await.unwrap() else {
            panic!("a PUT must be handed to hyper");
        };
        // hyper gets the PUT whole, body included.
        let mut pending = vec![0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut rest, &mut pending)
            .await
            .unwrap();
        assert_eq!(
            &pending[..n],
            b"PUT /v2/a/manifests/1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        );
        drop(rest);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let text = String::from_utf8(got).unwrap();
        let answers: Vec<&str> = text.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
        assert_eq!(answers.len(), 3, "{text}");
        assert!(answers[0].ends_with("\r\n\r\nGET /v2/"), "{}", answers[0]);
        // HEAD: no body.
        assert!(answers[1].ends_with("\r\n\r\n"), "{}", answers[1]);
        assert!(!answers[1].contains("HEAD /v2"), "{}", answers[1]);
        assert!(answers[2].ends_with("\r\n\r\nGET /v2/b"), "{}", answers[2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_stops_half_way_is_dropped_at_the_header_timeout_from_accept() {
        let limits = crate::config::ConnLimits::default();
        let (server, mut client) = pair().await;
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(serve_one(server));
        tokio::time::sleep(limits.header_timeout / 2).await;
        client.write_all(b"GET /v2/ HTTP/1.1\r\nHos").await.unwrap();
        assert!(matches!(task.await.unwrap(), Outcome::Done));
        // The clock ran from accept, not from the first byte.
        assert_eq!(started.elapsed(), limits.header_timeout);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_and_idle_connections_are_closed_and_counted() {
        let limits = crate::config::ConnLimits::default();
        let metrics = crate::metrics::Metrics::new();
        let guard = Guard::new("api", limits.clone(), &metrics, false);
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        // Silent from accept: closed at the header timeout.
        let (server, _client) = pair().await;
        let peer = server.peer_addr().unwrap();
        let started = tokio::time::Instant::now();
        let out = run(
            server,
            Arc::new(Echo),
            &mut rx,
            Conn {
                guard: &guard,
                peer,
            },
        )
        .await;
        assert!(matches!(out, Outcome::Done));
        assert_eq!(started.elapsed(), limits.header_timeout);
        // One request, then nothing: closed after the idle timeout.
        let (server, mut client) = pair().await;
        client
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let out = run(
            server,
            Arc::new(Echo),
            &mut rx,
            Conn {
                guard: &guard,
                peer,
            },
        )
        .await;
        assert!(matches!(out, Outcome::Done));
        assert_eq!(started.elapsed(), limits.idle_timeout);
        let text = metrics.encode();
        for reason in ["first_byte", "idle"] {
            let series =
                format!("regcache_connections_cut_total{{listener=\"api\",reason=\"{reason}\"}} 1");
            assert!(text.contains(&series), "{series} in {text}");
        }
    }

    #[tokio::test]
    async fn http11_without_one_host_is_400_and_closes() {
        for raw in [
            &b"GET /v2/ HTTP/1.1\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &b"GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
            &b"GET /v2/ HTTP/1.1\r\nHost: u@h\r\n\r\n"[..],
        ] {
            let (server, mut client) = pair().await;
            let task = tokio::spawn(serve_one(server));
            client.write_all(raw).await.unwrap();
            assert!(matches!(task.await.unwrap(), Outcome::Done));
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            let text = String::from_utf8(got).unwrap();
            assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
            assert!(text.contains("connection: close\r\n"), "{text}");
            assert!(text.contains("\"code\":\"UNSUPPORTED\""), "{text}");
            assert_eq!(text.matches("HTTP/1.1 4").count(), 1, "{text}");
        }
        // HTTP/1.0 may leave it out.
        let (server, mut client) = pair().await;
        let task = tokio::spawn(serve_one(server));
        client
            .write_all(b"GET /v2/ HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        task.await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }

    #[tokio::test]
    async fn http2_prior_knowledge_and_oversized_heads_go_to_hyper_untouched() {
        let (server, mut client) = pair().await;
        let task = tokio::spawn(serve_one(server));
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        client.write_all(preface).await.unwrap();
        let Outcome::Handoff(mut rest) = task.await.unwrap() else {
            panic!("HTTP/2 must be handed to hyper");
        };
        let mut got = vec![0u8; preface.len()];
        tokio::io::AsyncReadExt::read_exact(&mut rest, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, preface);

        let (server, mut client) = pair().await;
        let task = tokio::spawn(serve_one(server));
        let mut big = b"GET /v2/ HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        client.write_all(&big).await.unwrap();
        assert!(matches!(task.await.unwrap(), Outcome::Handoff(_)));
    }
}
