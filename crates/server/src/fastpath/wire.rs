//! The fast path's wire format: request heads in, response heads (and the
//! bodies framed behind them) out.

use std::io;
use std::time::Duration;

use futures_util::StreamExt;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use tokio::io::AsyncWriteExt;

use super::send::{send_fill, stalled, write_all, write_all_vectored, write_counted};
use super::stream::{Scratch, Wire};

use super::{Reply, ReplyBody};
use crate::web::body::{Body, ReqBody};
use crate::web::response::API_VERSION;

/// Response bodies up to this size are copied behind the head and sent with
/// it in one write.
const INLINE_BODY: usize = 16 << 10;

/// A request the fast path takes.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) req: Request<ReqBody>,
    /// The connection ends after this response.
    pub(super) close: bool,
}

pub(super) enum Parsed {
    Complete(Box<Head>, usize),
    Partial,
    /// Not for the fast path (or not HTTP/1 at all): hyper decides.
    Other,
}

pub(super) fn parse(buf: &[u8]) -> Parsed {
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
/// Flushed at the end: a TLS stream may hold the last record back until then.
pub(super) async fn write_reply<S: Wire>(
    stream: &mut S,
    scratch: &mut Scratch,
    reply: Reply,
    close: bool,
    is_head: bool,
    http10: bool,
    wt: Duration,
) -> io::Result<()> {
    let Reply {
        status,
        headers,
        body,
        meter,
        access,
    } = reply;
    let bodiless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A prepared answer's head lines (its length and API version included)
    // are written as they are; its body is plain bytes.
    let (prepared, body) = match body {
        ReplyBody::Prepared { head, body } => (Some(head), ReplyBody::Bytes(body)),
        body => (None, body),
    };
    let mut out = Vec::with_capacity(512 + prepared.as_ref().map_or(0, |p| p.len()));
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(lines) = &prepared {
        out.extend_from_slice(lines);
    }
    for (name, value) in &headers {
        put_header(&mut out, name.as_str(), value.as_bytes());
    }
    if prepared.is_none() && !headers.contains_key(&API_VERSION) {
        put_header(&mut out, "docker-distribution-api-version", b"registry/2.0");
    }
    if !headers.contains_key(header::DATE) {
        with_date(|date| put_header(&mut out, "date", date));
    }
    let declared = prepared.is_some() || headers.contains_key(header::CONTENT_LENGTH);
    let mut chunked = false;
    let mut close = close;
    if !bodiless && !declared {
        match &body {
            ReplyBody::Empty => put_header(&mut out, "content-length", b"0"),
            // Its head lines declare its length (made `Bytes` above).
            ReplyBody::Prepared { .. } => {}
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
        // The access line (if any) is written as it goes.
        write_all(stream, &out, wt).await?;
        return flush(stream, wt).await;
    }
    // Body bytes the writes took, for the meter and the access line however
    // the writing ends.
    let mut written = 0u64;
    let mut result = write_body(stream, scratch, out, body, chunked, wt, &mut written).await;
    if result.is_ok() {
        result = flush(stream, wt).await;
    }
    if let Some(mut meter) = meter {
        meter.add(written);
    }
    if let Some(mut line) = access {
        line.add_bytes(written);
    }
    result
}

/// Push out whatever the stream buffered (nothing for a socket; the last
/// TLS records for rustls), within the write timeout.
async fn flush<S: Wire>(stream: &mut S, wt: Duration) -> io::Result<()> {
    if !S::BUFFERED {
        return Ok(());
    }
    tokio::time::timeout(wt, stream.flush())
        .await
        .map_err(stalled)?
}

/// Write `head` (the response head) and then `body`, adding the body bytes
/// the socket took to `written`.
async fn write_body<S: Wire>(
    stream: &mut S,
    scratch: &mut Scratch,
    mut out: Vec<u8>,
    body: ReplyBody,
    chunked: bool,
    wt: Duration,
    written: &mut u64,
) -> io::Result<()> {
    match body {
        ReplyBody::Empty => write_all(stream, &out, wt).await,
        ReplyBody::Bytes(b) | ReplyBody::Prepared { body: b, .. } if b.len() <= INLINE_BODY => {
            out.extend_from_slice(&b);
            write_all(stream, &out, wt).await?;
            *written += b.len() as u64;
            Ok(())
        }
        ReplyBody::Bytes(b) | ReplyBody::Prepared { body: b, .. } => {
            write_all(stream, &out, wt).await?;
            write_counted(stream, &b, wt, written).await
        }
        ReplyBody::File { file, offset, len } => {
            // Corked (nginx's `tcp_nopush`): the head rides in the first full
            // segment and the kernel builds full-sized segments from the
            // file; uncorking pushes the tail.
            let corked = stream.cork(true);
            write_all(stream, &out, wt).await?;
            let sent = (stream.send_file(scratch, &file, offset, len, wt, written)).await;
            if corked {
                stream.cork(false);
            }
            sent
        }
        ReplyBody::Fill {
            mut fill,
            offset,
            len,
        } => {
            write_all(stream, &out, wt).await?;
            send_fill(stream, scratch, &mut fill, offset, len, wt, written).await
        }
        ReplyBody::Body(Body::Full(b)) => {
            let b = b.unwrap_or_default();
            out.extend_from_slice(&b);
            write_all(stream, &out, wt).await?;
            *written += b.len() as u64;
            Ok(())
        }
        ReplyBody::Body(Body::Stream {
            stream: mut body,
            len,
            ..
        }) => {
            write_all(stream, &out, wt).await?;
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
                        wt,
                    )
                    .await?;
                    *written += chunk.len() as u64;
                } else {
                    write_counted(stream, &chunk, wt, written).await?;
                }
            }
            if len.is_some_and(|n| sent != n) {
                // The client must not take a short body for a whole one.
                return Err(io::Error::other("response body shorter than declared"));
            }
            if chunked {
                write_all(stream, b"0\r\n\r\n", wt).await?;
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

/// `headers` as the fast path writes them, `name: value\r\n` each: the
/// part of a prepared answer's head that is the same for every request.
pub fn head_lines(headers: &HeaderMap) -> bytes::Bytes {
    let mut out = Vec::with_capacity(256);
    for (name, value) in headers {
        put_header(&mut out, name.as_str(), value.as_bytes());
    }
    if !headers.contains_key(&API_VERSION) {
        put_header(&mut out, "docker-distribution-api-version", b"registry/2.0");
    }
    out.into()
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use crate::fastpath::tests::pair;

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

    async fn exchange(reply: Reply, close: bool, is_head: bool, http10: bool) -> (Vec<u8>, bool) {
        let (mut server, mut client) = pair().await;
        let ok = write_reply(
            &mut server,
            &mut Scratch::default(),
            reply,
            close,
            is_head,
            http10,
            Duration::from_secs(5),
        )
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

    fn stream_of(chunks: &[&'static [u8]]) -> crate::web::body::ChunkStream {
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
            meter: None,
            access: None,
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
            meter: None,
            access: None,
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
            meter: None,
            access: None,
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
            meter: None,
            access: None,
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
            meter: None,
            access: None,
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
            meter: None,
            access: None,
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
            meter: None,
            access: None,
        };
        let (raw, ok) = exchange(reply, false, false, false).await;
        assert!(!ok);
        assert!(
            !raw.ends_with(b"0\r\n\r\n"),
            "a failed stream must not end cleanly"
        );
    }
}
