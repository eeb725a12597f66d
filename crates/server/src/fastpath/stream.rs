//! The streams the fast path serves, and how each sends a file range.
//!
//! A plain socket and a kernel TLS socket (the kernel encrypts what is
//! written to it) take file bytes with `sendfile(2)`, page cache to socket.
//! A userspace TLS stream cannot: rustls must see the plaintext. There the
//! range is read with `pread(2)` into one buffer per connection (allocated at
//! its first file body, reused for every chunk after) and written to rustls in
//! large writes, flushed once per chunk, so the per-write costs (a task
//! wake, a timeout, a flush) are paid once per 256 KiB rather than per
//! record. rustls still encrypts each 16 KiB record into a `Vec` of its own
//! and `writev`s them as its 64 KiB queue fills; a queue of a whole chunk
//! (`set_buffer_limit`) measured no different, so the default stays.
//!
//! Where the read buffer sits in its page matters: see
//! [`crate::web::stream::SOURCE_PAGE_OFFSET`].
//!
//! [`Wire`] has one impl per stream type and the fast path is generic over
//! it: monomorphised, the plain path pays no dispatch for the choice.

use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::send::{YIELD_EVERY, send_file, stalled, write_counted};
use crate::web::stream::mid_page;

/// Bytes one `pread` reads for a userspace TLS stream (16 TLS records).
pub(super) const TLS_CHUNK: usize = 256 << 10;

/// Per-connection state of the senders: the userspace TLS read buffer, empty
/// (no allocation) until the connection's first file body, and given back
/// when the connection goes idle ([`Scratch::release`]): ten thousand
/// kept-alive TLS connections that once fetched a blob must not hold
/// 256 KiB each.
#[derive(Debug, Default)]
pub struct Scratch {
    buf: Vec<u8>,
    /// Where the [`TLS_CHUNK`] bytes used lie in `buf`: from
    /// [`SOURCE_PAGE_OFFSET`](crate::web::stream::SOURCE_PAGE_OFFSET) in a
    /// page on (rustls copies them fast).
    at: std::ops::Range<usize>,
}

impl Scratch {
    /// Free the buffer (the next file body allocates it again).
    pub(super) fn release(&mut self) {
        self.buf = Vec::new();
    }

    fn buf(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            (self.buf, self.at) = mid_page(TLS_CHUNK);
        }
        &mut self.buf[self.at.clone()]
    }
}

/// A stream the fast path serves.
pub trait Wire: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether requests on it arrived over TLS ([`crate::conn::ConnInfo`]).
    const TLS: bool;
    /// Whether writes may be held in the stream until a flush (rustls).
    const BUFFERED: bool;

    /// Send `len` bytes of `file` from `offset`, adding the bytes the stream
    /// took to `written`; `TimedOut` when a write waits longer than `wt`.
    fn send_file<'a>(
        &'a mut self,
        scratch: &'a mut Scratch,
        file: &'a std::fs::File,
        offset: u64,
        len: u64,
        wt: Duration,
        written: &'a mut u64,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;

    /// Cork (`TCP_CORK`) or uncork the socket under the stream, where that
    /// helps the kernel build full segments; whether it is corked.
    fn cork(&self, on: bool) -> bool;
}

fn cork_socket(socket: &TcpStream, on: bool) -> bool {
    rustix::net::sockopt::set_tcp_cork(socket, on).is_ok()
}

impl Wire for TcpStream {
    const TLS: bool = false;
    const BUFFERED: bool = false;

    fn send_file<'a>(
        &'a mut self,
        _: &'a mut Scratch,
        file: &'a std::fs::File,
        offset: u64,
        len: u64,
        wt: Duration,
        written: &'a mut u64,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        send_file(self, file, offset, len, wt, written)
    }

    fn cork(&self, on: bool) -> bool {
        cork_socket(self, on)
    }
}

/// Kernel TLS: the socket encrypts, so `sendfile` works as on a plain one.
impl Wire for ktls::KtlsStream<TcpStream> {
    const TLS: bool = true;
    const BUFFERED: bool = false;

    fn send_file<'a>(
        &'a mut self,
        _: &'a mut Scratch,
        file: &'a std::fs::File,
        offset: u64,
        len: u64,
        wt: Duration,
        written: &'a mut u64,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        send_file(self.get_ref(), file, offset, len, wt, written)
    }

    fn cork(&self, on: bool) -> bool {
        cork_socket(self.get_ref(), on)
    }
}

/// Userspace TLS (rustls): `pread` into the connection's buffer, then one
/// large write into rustls and one flush per chunk.
impl<IO> Wire for tokio_rustls::server::TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    const TLS: bool = true;
    const BUFFERED: bool = true;

    fn send_file<'a>(
        &'a mut self,
        scratch: &'a mut Scratch,
        file: &'a std::fs::File,
        offset: u64,
        len: u64,
        wt: Duration,
        written: &'a mut u64,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        pread_send(self, scratch, file, offset, len, wt, written)
    }

    fn cork(&self, _: bool) -> bool {
        // rustls hands the socket whole records in large `writev`s already.
        false
    }
}

/// The range through `stream` in [`TLS_CHUNK`] reads, each written whole and
/// flushed before the next is read.
async fn pread_send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    scratch: &mut Scratch,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    wt: Duration,
    written: &mut u64,
) -> io::Result<()> {
    let buf = scratch.buf();
    let end = offset + len;
    let mut off = offset;
    let mut since_yield = 0u64;
    while off < end {
        if since_yield >= YIELD_EVERY {
            // As in `send_file`: a fast reader never blocks the writes.
            tokio::task::yield_now().await;
            since_yield = 0;
        }
        let want = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        // From the page cache, like sendfile's reads (which also block).
        let n = match file.read_at(&mut buf[..want], off) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached file shorter than expected",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        write_counted(stream, &buf[..n], wt, written).await?;
        tokio::time::timeout(wt, stream.flush())
            .await
            .map_err(stalled)??;
        off += n as u64;
        since_yield += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_buffer_starts_mid_page_and_is_freed_when_released() {
        let mut scratch = Scratch::default();
        for _ in 0..3 {
            let buf = scratch.buf();
            assert_eq!(buf.len(), TLS_CHUNK);
            assert_eq!(
                buf.as_ptr() as usize % 4096,
                crate::web::stream::SOURCE_PAGE_OFFSET
            );
            scratch.release();
            assert_eq!(scratch.buf.capacity(), 0);
        }
    }
}
