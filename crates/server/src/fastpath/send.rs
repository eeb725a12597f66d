//! The fast path's body senders: `sendfile(2)` of cached files and of fills
//! still being written, and vectored writes for chunked framing. Writes are
//! generic over the stream; a fill is sent with its stream's
//! [`Wire::send_file`].

use std::io;
use std::time::Duration;

use regcache_store::{FillFile, FillProgress};
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::stream::{Scratch, Wire};

/// Most bytes one `sendfile(2)` call is asked for (nginx's
/// `sendfile_max_chunk` default).
const SENDFILE_CHUNK: usize = 2 << 20;
/// A sender yields to other tasks after this many bytes without blocking.
pub(super) const YIELD_EVERY: u64 = 8 << 20;

/// `TimedOut` when the socket took no byte for `wt`: the client stopped
/// reading (`limits.write_timeout_secs`).
pub(super) fn stalled(_: tokio::time::error::Elapsed) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client read nothing for the write timeout",
    )
}

/// `write_all`, failing with `TimedOut` when one write waits longer than `wt`.
pub(super) async fn write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &[u8],
    wt: Duration,
) -> io::Result<()> {
    write_counted(stream, buf, wt, &mut 0).await
}

/// [`write_all`] of body bytes, adding what each write took to `written`.
pub(super) async fn write_counted<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut buf: &[u8],
    wt: Duration,
    written: &mut u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        let n = tokio::time::timeout(wt, stream.write(buf))
            .await
            .map_err(stalled)??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *written += n as u64;
        buf = &buf[n..];
    }
    Ok(())
}

pub(super) async fn write_all_vectored<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut bufs: &mut [io::IoSlice<'_>],
    wt: Duration,
) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = tokio::time::timeout(wt, stream.write_vectored(bufs))
            .await
            .map_err(stalled)??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// `sendfile(2)` the range onto the non-blocking socket, waiting for
/// writability whenever the socket buffer is full (at most `wt` each time).
/// Adds the bytes the socket took to `written`.
pub(super) async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    wt: Duration,
    written: &mut u64,
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
        tokio::time::timeout(wt, stream.writable())
            .await
            .map_err(stalled)??;
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
            Ok(_) => {
                since_yield += off - before;
                *written += off - before;
            }
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
pub(super) async fn send_fill<S: Wire>(
    stream: &mut S,
    scratch: &mut Scratch,
    fill: &mut FillFile,
    offset: u64,
    len: u64,
    wt: Duration,
    written: &mut u64,
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
            (stream.send_file(scratch, fill.file(), off, limit - off, wt, written)).await?;
            off = limit;
        }
    }
    if len == 0 {
        fill.wait(u64::MAX).await.map_err(io::Error::other)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use regcache_formats::Digest;
    use regcache_store::{Begin, Store, StoreConfig};
    use tokio::io::AsyncReadExt;

    use crate::fastpath::tests::pair;

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
            let mut server = server;
            let mut fill = fill;
            let mut written = 0;
            let r = send_fill(
                &mut server,
                &mut Scratch::default(),
                &mut fill,
                1000,
                299_000,
                Duration::from_secs(5),
                &mut written,
            )
            .await;
            assert_eq!(written, 299_000, "every byte counted once");
            r
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
            let mut server = server;
            let mut fill = fill;
            let mut written = 0;
            let r = send_fill(
                &mut server,
                &mut Scratch::default(),
                &mut fill,
                0,
                50_000,
                Duration::from_secs(5),
                &mut written,
            )
            .await;
            assert!(written < 50_000, "{written} bytes counted");
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
}
