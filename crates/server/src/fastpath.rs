//! The HTTP/1 fast path: pulls answered without hyper, blobs with `sendfile(2)`.
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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use regcache_store::{FillFile, FillProgress};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{Body, ReqBody};

/// Largest request head the fast path reads before giving up (hyper's default
/// is larger; such requests go to hyper).
const MAX_HEAD: usize = 16 << 10;
/// How long to wait for a (next) request on a kept-alive connection.
const IDLE: Duration = Duration::from_secs(90);
/// How long a request head may take once its first byte has arrived (hyper's
/// `header_read_timeout` for the connections it serves).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes one `sendfile(2)` call is asked for (nginx's
/// `sendfile_max_chunk` default).
const SENDFILE_CHUNK: usize = 2 << 20;
/// A sender yields to other tasks after this many bytes without blocking.
const YIELD_EVERY: u64 = 8 << 20;
/// Response bodies up to this size are copied behind the head and sent with
/// it in one write.
const INLINE_BODY: usize = 16 << 10;

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
}

impl Reply {
    /// A handler's response, sent as it is (its body not at all for `HEAD`).
    pub fn from_response(resp: Response<Body>, head: bool) -> Reply {
        let (parts, body) = resp.into_parts();
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
pub enum Outcome {
    /// Closed (by the client, an error, or `Connection: close`).
    Done,
    /// Continue with hyper on this IO (unread bytes first).
    Handoff(Rewind),
}

/// Serve requests on `stream` while they can take the fast path.
pub async fn run(
    stream: TcpStream,
    fast: Arc<dyn FastPath>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let mut stream = stream;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // Read until one full request head is buffered.
        let mut deadline = None;
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
                None if buf.is_empty() => IDLE,
                None => {
                    let d = tokio::time::Instant::now() + HEAD_TIMEOUT;
                    deadline = Some(d);
                    HEAD_TIMEOUT
                }
                Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
            };
            let read = tokio::select! {
                r = tokio::time::timeout(wait, tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf)) => r,
                _ = stop.changed() => return Outcome::Done,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Outcome::Done,
                Ok(Ok(_)) => {}
            }
        };
        buf.advance(consumed);
        let is_head = head.req.method() == Method::HEAD;
        let http10 = head.req.version() == Version::HTTP_10;
        let mut close = head.close;
        let reply = fast.respond(head.req).await;
        if reply.is_close_delimited(http10) {
            close = true;
        }
        if write_reply(&mut stream, reply, close, is_head, http10)
            .await
            .is_err()
            || close
        {
            return Outcome::Done;
        }
        if *stop.borrow() {
            return Outcome::Done;
        }
    }
}

/// A request the fast path takes.
#[derive(Debug)]
struct Head {
    req: Request<ReqBody>,
    /// The connection ends after this response.
    close: bool,
}

enum Parsed {
    Complete(Box<Head>, usize),
    Partial,
    /// Not for the fast path (or not HTTP/1 at all): hyper decides.
    Other,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parsed::Other,
    };
    let (Some(target), Some(version)) = (req.path, req.version) else {
        return Parsed::Other;
    };
    let Ok(uri) = target.parse::<http::Uri>() else {
        return Parsed::Other;
    };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    let mut close = version == 0;
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        if name == header::CONTENT_LENGTH {
            if h.value != b"0" {
                return Parsed::Other;
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            return Parsed::Other;
        } else if name == header::CONNECTION {
            let v = h.value.to_ascii_lowercase();
            if v.windows(5).any(|w| w == b"close") {
                close = true;
            } else if v.windows(10).any(|w| w == b"keep-alive") {
                close = false;
            }
        }
        map.append(name, value);
    }
    let mut request = Request::new(ReqBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = map;
    Parsed::Complete(
        Box::new(Head {
            req: request,
            close,
        }),
        n,
    )
}

/// Write the head, then the body: small bytes in the same write, files with
/// sendfile, streams chunk by chunk (chunked when their length is unknown).
async fn write_reply(
    stream: &mut TcpStream,
    reply: Reply,
    close: bool,
    is_head: bool,
    http10: bool,
) -> io::Result<()> {
    let Reply {
        status,
        headers,
        body,
    } = reply;
    let bodiless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &headers {
        put_header(&mut out, name.as_str(), value.as_bytes());
    }
    if !headers.contains_key("docker-distribution-api-version") {
        put_header(&mut out, "docker-distribution-api-version", b"registry/2.0");
    }
    if !headers.contains_key(header::DATE) {
        with_date(|date| put_header(&mut out, "date", date));
    }
    let declared = headers.contains_key(header::CONTENT_LENGTH);
    let mut chunked = false;
    let mut close = close;
    if !bodiless && !declared {
        match &body {
            ReplyBody::Empty => put_header(&mut out, "content-length", b"0"),
            ReplyBody::Bytes(b) => {
                put_header(&mut out, "content-length", b.len().to_string().as_bytes())
            }
            ReplyBody::File { len, .. } | ReplyBody::Fill { len, .. } => {
                put_header(&mut out, "content-length", len.to_string().as_bytes())
            }
            ReplyBody::Body(Body::Full(b)) => put_header(
                &mut out,
                "content-length",
                b.as_ref().map_or(0, |b| b.len()).to_string().as_bytes(),
            ),
            ReplyBody::Body(Body::Stream { len: Some(n), .. }) => {
                put_header(&mut out, "content-length", n.to_string().as_bytes())
            }
            ReplyBody::Body(Body::Stream { len: None, .. }) if http10 => {
                // HTTP/1.0 has no chunked framing: the end of the body is the
                // end of the connection.
                close = true;
            }
            ReplyBody::Body(Body::Stream { len: None, .. }) => {
                put_header(&mut out, "transfer-encoding", b"chunked");
                chunked = true;
            }
        }
    }
    if close {
        put_header(&mut out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        return stream.write_all(&out).await;
    }
    match body {
        ReplyBody::Empty => stream.write_all(&out).await,
        ReplyBody::Bytes(b) if b.len() <= INLINE_BODY => {
            out.extend_from_slice(&b);
            stream.write_all(&out).await
        }
        ReplyBody::Bytes(b) => {
            stream.write_all(&out).await?;
            stream.write_all(&b).await
        }
        ReplyBody::File { file, offset, len } => {
            // Corked (nginx's `tcp_nopush`): the head rides in the first full
            // segment and the kernel builds full-sized segments from the
            // file; uncorking pushes the tail.
            let corked = rustix::net::sockopt::set_tcp_cork(&*stream, true).is_ok();
            stream.write_all(&out).await?;
            let sent = send_file(stream, &file, offset, len).await;
            if corked {
                let _ = rustix::net::sockopt::set_tcp_cork(&*stream, false);
            }
            sent
        }
        ReplyBody::Fill {
            mut fill,
            offset,
            len,
        } => {
            stream.write_all(&out).await?;
            send_fill(stream, &mut fill, offset, len).await
        }
        ReplyBody::Body(Body::Full(b)) => {
            out.extend_from_slice(b.as_deref().unwrap_or_default());
            stream.write_all(&out).await
        }
        ReplyBody::Body(Body::Stream {
            stream: mut body,
            len,
        }) => {
            stream.write_all(&out).await?;
            let mut sent = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                if chunk.is_empty() {
                    continue;
                }
                sent += chunk.len() as u64;
                if len.is_some_and(|n| sent > n) {
                    return Err(io::Error::other("response body longer than declared"));
                }
                if chunked {
                    let size = format!("{:x}\r\n", chunk.len());
                    write_all_vectored(
                        stream,
                        &mut [
                            io::IoSlice::new(size.as_bytes()),
                            io::IoSlice::new(&chunk),
                            io::IoSlice::new(b"\r\n"),
                        ],
                    )
                    .await?;
                } else {
                    stream.write_all(&chunk).await?;
                }
            }
            if len.is_some_and(|n| sent != n) {
                // The client must not take a short body for a whole one.
                return Err(io::Error::other("response body shorter than declared"));
            }
            if chunked {
                stream.write_all(b"0\r\n\r\n").await?;
            }
            Ok(())
        }
    }
}

/// Calls `f` with the current `Date` header value, formatted once per second
/// per thread (as hyper does) rather than once per response.
fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes())
    })
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

async fn write_all_vectored(
    stream: &mut TcpStream,
    mut bufs: &mut [io::IoSlice<'_>],
) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = stream.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// `sendfile(2)` the range onto the non-blocking socket, waiting for
/// writability whenever the socket buffer is full.
async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let mut off = offset;
    let end = offset + len;
    let mut since_yield = 0u64;
    while off < end {
        if since_yield >= YIELD_EVERY {
            // A reader as fast as the kernel never makes the socket block,
            // and tokio's budget allows ~128 sends: let the other
            // connections (a response head waiting, say) have the thread.
            tokio::task::yield_now().await;
            since_yield = 0;
        }
        let before = off;
        let want = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(SENDFILE_CHUNK);
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, file, Some(&mut off), want).map_err(io::Error::from)
        }) {
            Ok(0) => {
                // The file is shorter than its index entry: the client must not
                // take a short body for a whole one, so the connection ends.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached file shorter than expected",
                ));
            }
            Ok(_) => since_yield += off - before,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Send `offset..offset+len` of a fill as its bytes are written, holding the
/// last byte back until the fill is verified: a response whose every byte
/// went out is complete for the client, so it must never happen before the
/// digest check. A failed fill ends the connection short.
async fn send_fill(
    stream: &TcpStream,
    fill: &mut FillFile,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let end = offset + len;
    let mut off = offset;
    while off < end {
        // Before the last byte: wait for more bytes; at it: for verification.
        let want = if off + 1 < end { off + 1 } else { u64::MAX };
        let limit = match fill.wait(want).await.map_err(io::Error::other)? {
            FillProgress::Verified { len: total } if total < end => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "fill shorter than announced",
                ));
            }
            FillProgress::Verified { .. } => end,
            FillProgress::Writing { written } => written.min(end - 1),
        };
        if limit > off {
            send_file(stream, fill.file(), off, limit - off).await?;
            off = limit;
        }
    }
    if len == 0 {
        fill.wait(u64::MAX).await.map_err(io::Error::other)?;
    }
    Ok(())
}

/// A socket with bytes already read from it put back in front, for hyper.
#[derive(Debug)]
pub struct Rewind {
    pre: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub fn new(inner: TcpStream, pre: Bytes) -> Rewind {
        Rewind { pre, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Option<(Box<Head>, usize)> {
        match parse(raw.as_bytes()) {
            Parsed::Complete(h, n) => Some((h, n)),
            _ => None,
        }
    }

    #[test]
    fn parses_bodiless_gets_and_heads_only() {
        let (h, n) = head(
            "GET /v2/a/blobs/sha256:x HTTP/1.1\r\nHost: x\r\nRange: bytes=1-\r\nAccept: a\r\nAccept: b\r\n\r\nGET /next",
        )
        .unwrap();
        assert_eq!(h.req.uri().path(), "/v2/a/blobs/sha256:x");
        assert_eq!(h.req.method(), Method::GET);
        assert_eq!(h.req.headers()[header::RANGE], "bytes=1-");
        assert_eq!(h.req.headers().get_all(header::ACCEPT).iter().count(), 2);
        assert!(!h.close);
        assert_eq!(
            n,
            "GET /v2/a/blobs/sha256:x HTTP/1.1\r\nHost: x\r\nRange: bytes=1-\r\nAccept: a\r\nAccept: b\r\n\r\n".len()
        );
        let (h, _) = head("HEAD /v2/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(h.req.method(), Method::HEAD);
        assert!(head("GET /x HTTP/1.0\r\n\r\n").unwrap().0.close);
        assert_eq!(
            head("GET /x HTTP/1.0\r\n\r\n").unwrap().0.req.version(),
            Version::HTTP_10
        );
        assert!(
            !head("GET /x HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .0
                .close
        );
        assert!(
            head("GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .0
                .close
        );
        for other in [
            "PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "POST /x HTTP/1.1\r\n\r\n",
            "GET /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /x HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(head(other).is_none(), "{other}");
        }
        assert!(matches!(parse(b"GET /x HTTP/1.1\r\nHo"), Parsed::Partial));
    }

    use regcache_formats::Digest;
    use regcache_store::{Begin, Store, StoreConfig};
    use tokio::io::AsyncReadExt;

    /// A connected pair: (server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (s.unwrap().0, c.unwrap())
    }

    async fn exchange(reply: Reply, close: bool, is_head: bool, http10: bool) -> (Vec<u8>, bool) {
        let (mut server, mut client) = pair().await;
        let ok = write_reply(&mut server, reply, close, is_head, http10)
            .await
            .is_ok();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        (got, ok)
    }

    fn split(raw: &[u8]) -> (String, &[u8]) {
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (String::from_utf8(raw[..at].to_vec()).unwrap(), &raw[at..])
    }

    fn stream_of(chunks: &[&'static [u8]]) -> crate::body::ChunkStream {
        futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, io::Error>(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    #[tokio::test]
    async fn bodies_are_framed_as_hyper_would() {
        // Unknown length: chunked for HTTP/1.1 ...
        let reply = Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: ReplyBody::Body(Body::stream(stream_of(&[b"hello ", b"", b"world"]), None)),
        };
        let (raw, ok) = exchange(reply, false, false, false).await;
        assert!(ok);
        let (head, body) = split(&raw);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(head.contains("docker-distribution-api-version: registry/2.0\r\n"));
        assert!(head.contains("date: "));
        assert_eq!(body, b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n");
        // ... and close-delimited for HTTP/1.0.
        let reply = Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: ReplyBody::Body(Body::stream(stream_of(&[b"abc"]), None)),
        };
        assert!(reply.is_close_delimited(true));
        let (raw, _) = exchange(reply, true, false, true).await;
        let (head, body) = split(&raw);
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert_eq!(body, b"abc");
        // Bytes get a Content-Length; HEAD keeps the handler's and sends no body.
        let reply = Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: ReplyBody::Bytes(Bytes::from_static(b"{}")),
        };
        let (raw, _) = exchange(reply, false, false, false).await;
        let (head, body) = split(&raw);
        assert!(head.contains("content-length: 2\r\n"), "{head}");
        assert_eq!(body, b"{}");
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1234"));
        let reply = Reply {
            status: StatusCode::OK,
            headers,
            body: ReplyBody::Empty,
        };
        let (raw, _) = exchange(reply, false, true, false).await;
        let (head, body) = split(&raw);
        assert!(head.contains("content-length: 1234\r\n"), "{head}");
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
        assert!(body.is_empty());
        // 304: no body and no invented length.
        let reply = Reply {
            status: StatusCode::NOT_MODIFIED,
            headers: HeaderMap::new(),
            body: ReplyBody::Empty,
        };
        let (raw, _) = exchange(reply, false, false, false).await;
        assert!(!String::from_utf8_lossy(&raw).contains("content-length"));
    }

    #[tokio::test]
    async fn a_short_or_failing_stream_is_an_error_not_a_complete_response() {
        let reply = Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: ReplyBody::Body(Body::stream(stream_of(&[b"abc"]), Some(10))),
        };
        let (raw, ok) = exchange(reply, false, false, false).await;
        assert!(!ok);
        assert!(String::from_utf8_lossy(&raw).contains("content-length: 10\r\n"));
        let failing = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::other("upstream went away")),
        ])
        .boxed();
        let reply = Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: ReplyBody::Body(Body::stream(failing, None)),
        };
        let (raw, ok) = exchange(reply, false, false, false).await;
        assert!(!ok);
        assert!(
            !raw.ends_with(b"0\r\n\r\n"),
            "a failed stream must not end cleanly"
        );
    }

    async fn fill_of(
        dir: &std::path::Path,
        content: &[u8],
    ) -> (Digest, regcache_store::FillWriter) {
        let store = Store::open(StoreConfig::new(dir)).await.unwrap();
        let d = Digest::sha256_of(content);
        let Begin::Leader(w) = store
            .begin_fill(&d, Some(content.len() as u64))
            .await
            .unwrap()
        else {
            panic!("expected to lead a fresh fill");
        };
        (d, w)
    }

    #[tokio::test]
    async fn a_fill_is_sent_as_written_and_completed_only_once_verified() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (_, mut w) = fill_of(dir.path(), &content).await;
        let fill = w.subscribe().into_file().unwrap();
        let (server, mut client) = pair().await;
        let send = tokio::spawn(async move {
            let mut fill = fill;
            send_fill(&server, &mut fill, 1000, 299_000).await
        });
        w.write(Bytes::copy_from_slice(&content[..200_000]))
            .await
            .unwrap();
        let mut got = vec![0u8; 199_000];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, content[1000..200_000]);
        w.write(Bytes::copy_from_slice(&content[200_000..]))
            .await
            .unwrap();
        let mut rest = vec![0u8; 99_999];
        client.read_exact(&mut rest).await.unwrap();
        // Every byte but the last is out; the last waits for the digest check.
        let mut last = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(100), client.read(&mut last)).await;
        assert!(early.is_err(), "the last byte went out before verification");
        w.commit().await.unwrap();
        send.await.unwrap().unwrap();
        client.read_exact(&mut last).await.unwrap();
        assert_eq!(last[0], content[299_999]);
    }

    #[tokio::test]
    async fn a_corrupt_fill_leaves_the_client_short() {
        let dir = tempfile::tempdir().unwrap();
        let content = vec![7u8; 50_000];
        let (_, mut w) = fill_of(dir.path(), &content).await;
        let fill = w.subscribe().into_file().unwrap();
        let (server, mut client) = pair().await;
        let send = tokio::spawn(async move {
            let mut fill = fill;
            let r = send_fill(&server, &mut fill, 0, 50_000).await;
            drop(server);
            r
        });
        w.write(Bytes::from(vec![8u8; 50_000])).await.unwrap();
        assert!(w.commit().await.is_err());
        assert!(send.await.unwrap().is_err());
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(
            got.len() < 50_000,
            "a corrupt fill reached the client whole"
        );
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
                }
            })
        }
    }

    async fn serve_one(server: TcpStream) -> Outcome {
        let (_tx, mut rx) = tokio::sync::watch::channel(false);
        run(server, Arc::new(Echo), &mut rx).await
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_then_a_push_goes_to_hyper() {
        let (server, mut client) = pair().await;
        let task = tokio::spawn(serve_one(server));
        client
            .write_all(
                b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nHEAD /v2/a/manifests/1 HTTP/1.1\r\n\r\nGET /v2/b HTTP/1.1\r\n\r\nPUT /v2/a/manifests/1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
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
    async fn a_head_that_stops_half_way_is_dropped_after_the_head_timeout() {
        let (server, mut client) = pair().await;
        let task = tokio::spawn(serve_one(server));
        client.write_all(b"GET /v2/ HTTP/1.1\r\nHos").await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(matches!(task.await.unwrap(), Outcome::Done));
        let waited = started.elapsed();
        assert!(
            waited >= HEAD_TIMEOUT && waited < IDLE,
            "closed after {waited:?}"
        );
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
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
