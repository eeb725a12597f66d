//! The warm-blob fast path: answer `GET` of a cached blob with `sendfile(2)`.
//!
//! Bytes from disk to socket without passing through user space is what
//! nginx's `sendfile on` does, and hyper's body abstraction can't: every body
//! chunk is a `Bytes` in our memory. So each connection starts here: request
//! heads are parsed with `httparse`, and as long as they are plain `GET`s of
//! blobs the cache holds, regcache writes the response head itself and hands
//! the file range to the kernel. The first request that is anything else
//! (a manifest, a miss, a push, HTTP/2, a body, an `Upgrade`) hands the whole
//! connection to hyper, bytes already read included, for the rest of its
//! life: the fast path never answers a request hyper would answer differently,
//! because it only takes requests whose answer is a cache hit and builds the
//! headers with the same functions.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Largest request head the fast path reads before giving up (hyper's default
/// is larger; such requests go to hyper).
const MAX_HEAD: usize = 16 << 10;
/// How long to wait for a (next) request on a kept-alive connection.
const IDLE: Duration = Duration::from_secs(90);

/// A parsed request head, as much as the fast path needs.
#[derive(Debug, Clone)]
pub struct Head {
    /// Path and query.
    pub target: String,
    /// `Range`, if sent.
    pub range: Option<String>,
    /// Any `If-None-Match` (the fast path leaves conditional requests to hyper).
    pub conditional: bool,
    /// The connection ends after this response.
    pub close: bool,
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
    Bytes(Bytes),
    /// `len` bytes of `file` from `offset`.
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
}

/// Decides whether a request can be answered on the fast path.
pub trait FastPath: Send + Sync + 'static {
    /// `Some` when the answer is a cached blob; `None` hands the connection to hyper.
    fn try_fast<'a>(&'a self, head: &'a Head) -> BoxFuture<'a, Option<Reply>>;
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
        let (head, consumed) = loop {
            match parse(&buf) {
                Parsed::Complete(head, n) => break (head, n),
                Parsed::Other => return Outcome::Handoff(Rewind::new(stream, buf.freeze())),
                Parsed::Partial if buf.len() >= MAX_HEAD => {
                    return Outcome::Handoff(Rewind::new(stream, buf.freeze()));
                }
                Parsed::Partial => {}
            }
            let read = tokio::select! {
                r = tokio::time::timeout(IDLE, tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf)) => r,
                _ = stop.changed() => return Outcome::Done,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Outcome::Done,
                Ok(Ok(_)) => {}
            }
        };
        let Some(reply) = fast.try_fast(&head).await else {
            return Outcome::Handoff(Rewind::new(stream, buf.freeze()));
        };
        buf.advance(consumed);
        if write_reply(&mut stream, reply, head.close).await.is_err() || head.close {
            return Outcome::Done;
        }
        if *stop.borrow() {
            return Outcome::Done;
        }
    }
}

enum Parsed {
    Complete(Head, usize),
    Partial,
    /// Not for the fast path (or not HTTP/1 at all): hyper decides.
    Other,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.method != Some("GET") {
        return Parsed::Other;
    }
    let (Some(target), Some(version)) = (req.path, req.version) else {
        return Parsed::Other;
    };
    let mut range = None;
    let mut conditional = false;
    let mut close = version == 0;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return Parsed::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case("range") {
            let Ok(v) = std::str::from_utf8(h.value) else {
                return Parsed::Other;
            };
            range = Some(v.to_owned());
        } else if name.eq_ignore_ascii_case("if-none-match")
            || name.eq_ignore_ascii_case("if-range")
        {
            conditional = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let v = h.value.to_ascii_lowercase();
            if v.windows(5).any(|w| w == b"close") {
                close = true;
            } else if v.windows(10).any(|w| w == b"keep-alive") {
                close = false;
            }
        }
    }
    Parsed::Complete(
        Head {
            target: target.to_owned(),
            range,
            conditional,
            close,
        },
        n,
    )
}

/// Write the head, then the body: bytes with one write, files with sendfile.
async fn write_reply(stream: &mut TcpStream, reply: Reply, close: bool) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(reply.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(reply.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &reply.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"docker-distribution-api-version: registry/2.0\r\ndate: ");
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    if close {
        head.extend_from_slice(b"\r\nconnection: close");
    }
    head.extend_from_slice(b"\r\n\r\n");
    match reply.body {
        ReplyBody::Bytes(b) => {
            head.extend_from_slice(&b);
            stream.write_all(&head).await
        }
        ReplyBody::File { file, offset, len } => {
            stream.write_all(&head).await?;
            send_file(stream, &file, offset, len).await
        }
    }
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
    while off < end {
        let want = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
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
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
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

    fn head(raw: &str) -> Option<(Head, usize)> {
        match parse(raw.as_bytes()) {
            Parsed::Complete(h, n) => Some((h, n)),
            _ => None,
        }
    }

    #[test]
    fn parses_plain_gets_only() {
        let (h, n) = head(
            "GET /v2/a/blobs/sha256:x HTTP/1.1\r\nHost: x\r\nRange: bytes=1-\r\n\r\nGET /next",
        )
        .unwrap();
        assert_eq!(h.target, "/v2/a/blobs/sha256:x");
        assert_eq!(h.range.as_deref(), Some("bytes=1-"));
        assert!(!h.close && !h.conditional);
        assert_eq!(
            n,
            "GET /v2/a/blobs/sha256:x HTTP/1.1\r\nHost: x\r\nRange: bytes=1-\r\n\r\n".len()
        );
        assert!(head("GET /x HTTP/1.0\r\n\r\n").unwrap().0.close);
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
        assert!(
            head("GET /x HTTP/1.1\r\nIf-None-Match: \"a\"\r\n\r\n")
                .unwrap()
                .0
                .conditional
        );
        for other in [
            "HEAD /x HTTP/1.1\r\n\r\n",
            "PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /x HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(head(other).is_none(), "{other}");
        }
        assert!(matches!(parse(b"GET /x HTTP/1.1\r\nHo"), Parsed::Partial));
    }
}
