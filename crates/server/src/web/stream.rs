//! Streamed bodies: a cached file read in large chunks, and a fill's bytes
//! held one chunk behind so a failed fill never completes a response.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use regcache_store::FillReader;

use crate::web::body::{Body, ChunkStream};
use crate::web::range::BlobSlice;

/// Chunk size for streaming files that are not sent with sendfile.
const FILE_CHUNK: usize = 1 << 20;

const PAGE: usize = 4096;

/// Where in a 4 KiB page a buffer of file bytes bound for TLS starts.
///
/// rustls copies each record's plaintext into a fresh `Vec`, 5 bytes past
/// its start (the record header; 13 in TLS 1.2, with the explicit nonce;
/// HTTP/2 adds its 9-byte frame head), and encrypts it there. glibc's
/// `memcpy` moves 16 KiB with `rep movsb`, which on AMD Zen runs about 20
/// times slower when the destination is 1-32 bytes past the source modulo
/// 4 KiB (measured here, glibc 2.36: 1.8-2.9 GB/s against 35-60 GB/s for any
/// other distance). A page-aligned source (any large allocation) and
/// page-aligned record buffers put every record at such a distance: that
/// copy was 41% of regcache's CPU serving a blob over TLS 1.3. Reading into
/// the middle of a page puts it about 2 KiB away.
pub const SOURCE_PAGE_OFFSET: usize = 2048;

/// A zeroed buffer with room for `len` bytes from [`SOURCE_PAGE_OFFSET`]
/// in a page on: the buffer and where those bytes go in it.
pub fn mid_page(len: usize) -> (Vec<u8>, std::ops::Range<usize>) {
    let buf = vec![0u8; len + PAGE];
    let start = page_start(buf.as_ptr());
    (buf, start..start + len)
}

/// How far past `ptr` [`SOURCE_PAGE_OFFSET`] of a page falls.
fn page_start(ptr: *const u8) -> usize {
    (SOURCE_PAGE_OFFSET + PAGE - ptr as usize % PAGE) % PAGE
}

/// Up to `want` bytes of `file` from `pos` in a fresh buffer that starts
/// at [`SOURCE_PAGE_OFFSET`] in a page, read straight into its spare
/// capacity (no zeroing first: a megabyte `memset` per chunk was a tenth
/// of the CPU of a blob over HTTP/2 and TLS); empty at the end of the file.
pub fn read_mid_page(file: &std::fs::File, pos: u64, want: usize) -> std::io::Result<Bytes> {
    let mut buf = Vec::with_capacity(want + PAGE);
    let start = page_start(buf.as_ptr());
    buf.resize(start, 0);
    // `pread` fills the spare capacity: up to a page past `want`, dropped.
    loop {
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), pos) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let got = (buf.len() - start).min(want);
    Ok(Bytes::from(buf).slice(start..start + got))
}

/// Stream `n` bytes of `file` from `start`: one blocking reader `pread`s
/// large chunks into a channel that holds at most two (bounded memory per
/// client; a slow client holds back only its own reader).
pub fn file_stream(file: std::fs::File, start: u64, n: u64) -> ChunkStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::task::spawn_blocking(move || {
        let mut pos = start;
        let end = start + n;
        while pos < end {
            let want = (end - pos).min(FILE_CHUNK as u64) as usize;
            // Mid-page: these bytes may go out through rustls (HTTP/2
            // over TLS).
            let result = match read_mid_page(&file, pos, want) {
                Ok(chunk) if chunk.is_empty() => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "cached file shorter than its index entry",
                )),
                Ok(chunk) => {
                    pos += chunk.len() as u64;
                    Ok(chunk)
                }
                Err(e) => Err(e),
            };
            let failed = result.is_err();
            if tx.blocking_send(result).is_err() || failed {
                return;
            }
        }
    });
    let mut rx = rx;
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Forward a fill's chunks one step behind: a chunk goes out only once the
/// next one (or the clean end) has arrived. A response with a Content-Length is
/// complete for hyper and for the client the moment its last byte is written;
/// if that happened before the fill's digest check, a corrupt blob would reach
/// the client as a clean 200. Holding the final chunk back until the reader
/// ends cleanly (which it does only after verification) means a failed fill
/// always leaves the client short of bytes, so its transfer fails.
pub fn hold_last<S>(
    inner: S,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin + 'static,
{
    futures_util::stream::unfold(
        (inner, None::<Bytes>, false),
        |(mut inner, mut held, done)| async move {
            if done {
                return None;
            }
            loop {
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        if chunk.is_empty() {
                            continue;
                        }
                        if let Some(prev) = held.replace(chunk) {
                            return Some((Ok(prev), (inner, held, false)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (inner, None, true))),
                    None => return held.take().map(|last| (Ok(last), (inner, None, true))),
                }
            }
        },
    )
}

/// The part `slice` of a fill as a response body: streamed one chunk behind
/// (see [`hold_last`]) so it can only complete once the fill is verified.
pub fn fill_body(reader: FillReader, slice: &BlobSlice) -> Body {
    let reader = reader.range(slice.start, Some(slice.start + slice.n));
    Body::stream(
        hold_last(reader.map_err(std::io::Error::other)).boxed(),
        Some(slice.n),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_fill_never_completes_its_last_chunk() {
        let chunks = vec![
            Ok(Bytes::from_static(b"aaaa")),
            Ok(Bytes::from_static(b"bbbb")),
            Err(std::io::Error::other("digest mismatch")),
        ];
        let out: Vec<_> = hold_last(futures_util::stream::iter(chunks))
            .collect()
            .await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].as_ref().unwrap(), &Bytes::from_static(b"aaaa"));
        assert!(
            out[1].is_err(),
            "the last good chunk is withheld when the fill fails"
        );
        let chunks = vec![
            Ok(Bytes::from_static(b"aaaa")),
            Ok(Bytes::from_static(b"bb")),
        ];
        let out: Vec<_> = hold_last(futures_util::stream::iter(chunks))
            .collect()
            .await;
        let bytes: Vec<u8> = out.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(bytes, b"aaaabb");
    }

    #[tokio::test]
    async fn file_chunks_are_byte_exact_and_start_mid_page() {
        use std::io::Write as _;
        let content: Vec<u8> = (0..(FILE_CHUNK * 2 + 12_345) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();
        let start = 777u64;
        let chunks: Vec<Bytes> = file_stream(file, start, content.len() as u64 - start)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(chunks.len(), 3);
        for chunk in &chunks {
            assert_eq!(chunk.as_ptr() as usize % PAGE, SOURCE_PAGE_OFFSET);
        }
        assert_eq!(chunks.concat(), &content[start as usize..]);
    }

    #[test]
    fn a_mid_page_read_takes_at_most_what_was_asked_and_nothing_at_the_end() {
        use std::io::Write as _;
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&content).unwrap();
        // Less than the file holds past `pos`: exactly `want` bytes.
        let chunk = read_mid_page(&file, 10, 5000).unwrap();
        assert_eq!(&chunk[..], &content[10..5010]);
        assert_eq!(chunk.as_ptr() as usize % PAGE, SOURCE_PAGE_OFFSET);
        // More than is left: what is left; at the end: nothing.
        let tail = read_mid_page(&file, 99_000, 5000).unwrap();
        assert_eq!(&tail[..], &content[99_000..]);
        assert!(read_mid_page(&file, 100_000, 5000).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_entry_ends_the_stream_with_an_error() {
        use std::io::Write as _;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 1000]).unwrap();
        let out: Vec<_> = file_stream(file, 0, 2000).collect().await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].as_ref().unwrap().len(), 1000);
        let err = out[1].as_ref().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
