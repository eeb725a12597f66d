//! What a cache hit hands back.

use std::fs::File;
use std::io::Read;

use bytes::Bytes;

/// The content of a hit, in the form that is cheapest for its tier.
///
/// Memory hits are `Bytes` (a refcount bump). Disk hits are an open file with
/// its length, so the server can `sendfile` it or stream it with a bounded
/// buffer; the file is opened before the call returns, so a later eviction
/// (unlink) can't take the content away from this reader (Linux keeps an
/// unlinked inode alive while a descriptor is open). The file position is 0.
#[derive(Debug)]
#[non_exhaustive]
pub enum Source {
    Bytes(Bytes),
    File { file: File, len: u64 },
}

impl Source {
    /// Content length in bytes, for `Content-Length` without reading.
    pub fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the whole content into memory. Meant for small objects
    /// (manifests, configs) that the server must parse; don't call it on
    /// blobs. The file read runs on the blocking pool.
    pub async fn into_bytes(self) -> std::io::Result<Bytes> {
        match self {
            Source::Bytes(b) => Ok(b),
            Source::File { file, len } => tokio::task::spawn_blocking(move || read_file(file, len))
                .await
                .map_err(std::io::Error::other)?,
        }
    }
}

pub(crate) fn read_file(mut file: File, len: u64) -> std::io::Result<Bytes> {
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("cache file has {} bytes, index says {len}", buf.len()),
        ));
    }
    Ok(Bytes::from(buf))
}
