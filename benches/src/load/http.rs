//! A minimal blocking HTTP/1.1 client over one keep-alive TCP connection.
//!
//! It exists for two jobs where a general client would get in the way:
//!
//! * warming and checking the caches with *exactly* the request bytes the
//!   load uses (same headers, so an nginx `proxy_cache` keyed on `Accept`
//!   sees the same key), hashing the body to verify it;
//! * the S1 blob load ([`crate::load::blobload`]), where the client must
//!   move gigabytes per second on a shared 2-core machine: it reads straight
//!   from the socket into one 1 MiB buffer and throws the bytes away, with
//!   no per-chunk allocation and ~100× fewer `read` calls than `wrk`'s
//!   8 KiB reads.
//!
//! Only what the servers under test send is supported: a status line,
//! headers, and a `Content-Length` body (chunked answers are an error).
//!
//! The connection is generic over its stream so the TLS scenarios
//! ([`crate::load::tls`]) use the same parsing over a rustls stream; only a
//! plain TCP connection can drop a body in the kernel.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Size of the read buffer (and so of the largest single `read`).
pub const READ_BUF: usize = 1 << 20;

/// A response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub content_length: Option<u64>,
}

impl Head {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path HTTP/1.1` with `Host` and the given extra headers.
pub fn get_request(addr: SocketAddr, path: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: regcache-load\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// One keep-alive connection (plain TCP unless given another stream).
#[derive(Debug)]
pub struct Conn<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

/// A loopback TCP connection as the load uses it: `TCP_NODELAY`, a 60 s
/// read timeout.
pub fn tcp_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    Ok(stream)
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        Ok(Conn::over(tcp_connect(addr)?))
    }

    /// Like [`Conn::read_body`], but the body is consumed in the kernel with
    /// `recv(MSG_TRUNC)`, which on TCP drops the bytes without copying them
    /// to user space: the client then costs little CPU, and a throughput
    /// scenario measures the server rather than the client's copies. `sink`
    /// gets each step's byte count. Used where the bytes were already checked
    /// (S1 runs after a hashed warm-up GET).
    pub fn discard_body(
        &mut self,
        len: u64,
        mut sink: impl FnMut(usize) -> bool,
    ) -> io::Result<u64> {
        self.body(
            len,
            |stream, buf| {
                let want = buf.len();
                Ok(
                    rustix::net::recv(&*stream, buf, rustix::net::RecvFlags::TRUNC)?
                        .1
                        .min(want),
                )
            },
            |bytes| sink(bytes.len()),
        )
    }
}

impl<S: Read + Write> Conn<S> {
    /// A connection over an established stream.
    pub fn over(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
        }
    }

    /// The stream (e.g. to ask a TLS session what it negotiated).
    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.stream.write_all(request)
    }

    /// Reads up to the end of the response head; body bytes that came with
    /// it stay buffered for [`Conn::read_body`].
    pub fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(pos) = find_head_end(&self.buf[self.start..self.end]) {
                let head = parse_head(&self.buf[self.start..self.start + pos])?;
                self.start += pos + 4;
                return Ok(head);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                return Err(io::Error::other("response head larger than 1 MiB"));
            }
            let n = self.stream.read(&mut self.buf[self.end..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response head",
                ));
            }
            self.end += n;
        }
    }

    /// Reads `len` body bytes, handing each slice to `sink`; stops early
    /// (returning the count so far) when `sink` returns `false`, after which
    /// the connection must not be reused.
    pub fn read_body(&mut self, len: u64, sink: impl FnMut(&[u8]) -> bool) -> io::Result<u64> {
        self.body(len, |stream, buf| stream.read(buf), sink)
    }

    /// Reads a body of `len` bytes with `read` (which may drop the bytes in
    /// the kernel; the slices `sink` gets then have the right length only).
    fn body(
        &mut self,
        len: u64,
        mut read: impl FnMut(&mut S, &mut [u8]) -> io::Result<usize>,
        mut sink: impl FnMut(&[u8]) -> bool,
    ) -> io::Result<u64> {
        let mut got = 0u64;
        // Bytes already buffered with the head.
        let buffered = ((self.end - self.start) as u64).min(len) as usize;
        if buffered > 0 {
            let keep_going = sink(&self.buf[self.start..self.start + buffered]);
            self.start += buffered;
            got += buffered as u64;
            if !keep_going {
                return Ok(got);
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        while got < len {
            // The buffer is empty here: read straight into all of it, but
            // never past this body (a pipelined next response stays unread).
            let want = ((len - got) as usize).min(self.buf.len());
            let n = read(&mut self.stream, &mut self.buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {got} of {len} body bytes"),
                ));
            }
            got += n as u64;
            if !sink(&self.buf[..n]) {
                return Ok(got);
            }
        }
        Ok(got)
    }

    /// A whole GET: send, head, body into memory.
    pub fn get(&mut self, request: &[u8]) -> io::Result<(Head, Vec<u8>)> {
        self.send(request)?;
        let head = self.read_head()?;
        let len = head.content_length.ok_or_else(|| {
            io::Error::other(format!(
                "status {} without Content-Length (chunked answers are not supported): {:?}",
                head.status, head.headers
            ))
        })?;
        let mut body = Vec::with_capacity(len.min(256 << 20) as usize);
        self.read_body(len, |chunk| {
            body.extend_from_slice(chunk);
            true
        })?;
        Ok((head, body))
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(raw).map_err(|_| io::Error::other("non-UTF-8 response head"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_owned();
        if name == "content-length" {
            content_length = value.parse().ok();
        }
        if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            content_length = None;
        }
        headers.push((name, value));
    }
    Ok(Head {
        status,
        headers,
        content_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_a_head() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: b: c").expect("head");
        assert_eq!(head.status, 200);
        assert_eq!(head.content_length, Some(12));
        assert_eq!(head.header("x-a"), Some("b: c"));
        let chunked =
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").expect("chunked head");
        assert_eq!(chunked.content_length, None);
        assert!(parse_head(b"SSH-2.0-x").is_err());
    }

    #[test]
    fn keep_alive_round_trips() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            // Two requests, answered together: the second answer arrives
            // with the first and must stay buffered.
            while seen.windows(4).filter(|w| w == b"\r\n\r\n").count() < 1 {
                let n = s.read(&mut buf).expect("read");
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop")
                .expect("write");
        });
        let mut conn = Conn::connect(addr).expect("connect");
        let req = get_request(addr, "/a", &[("Accept".into(), "x/y".into())]);
        let (head, body) = conn.get(&req).expect("first");
        assert_eq!((head.status, body.as_slice()), (200, &b"hello"[..]));
        let head = conn.read_head().expect("second head");
        assert_eq!(head.status, 404);
        let mut body = Vec::new();
        conn.read_body(3, |c| {
            body.extend_from_slice(c);
            true
        })
        .expect("second body");
        assert_eq!(body, b"nop");
        server.join().expect("server thread");
    }
}
