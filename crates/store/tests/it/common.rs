//! Shared helpers: deterministic content, store setup, stream collection.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use regcache_formats::Digest;
use regcache_store::{FillError, FillReader, Source, Store, StoreConfig};

/// Deterministic bytes from a seed (xorshift), so failures reproduce.
pub fn blob(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

pub fn digest(bytes: &[u8]) -> Digest {
    Digest::sha256_of(bytes)
}

/// Memory tier off, every access persisted: deterministic disk behaviour.
pub fn disk_only(root: &Path, max_bytes: u64) -> StoreConfig {
    StoreConfig::new(root)
        .disk_max_bytes(max_bytes)
        .memory_max_bytes(0)
        .access_persist_interval(Duration::ZERO)
        .read_chunk_bytes(4096)
}

pub async fn open(config: StoreConfig) -> Store {
    Store::open(config).await.expect("open store")
}

/// Reads a reader to its end. `Err` carries the bytes received before it.
pub async fn collect(mut reader: FillReader) -> Result<Vec<u8>, (Vec<u8>, FillError)> {
    let mut out = Vec::new();
    while let Some(item) = reader.next().await {
        match item {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(e) => {
                // A failed reader ends after its error.
                assert!(
                    reader.next().await.is_none(),
                    "reader continued after an error"
                );
                return Err((out, e));
            }
        }
    }
    Ok(out)
}

pub async fn source_bytes(source: Source) -> Vec<u8> {
    source.into_bytes().await.expect("read source").to_vec()
}

pub async fn get_bytes(store: &Store, d: &Digest) -> Option<Vec<u8>> {
    match store.get(d).await.expect("get") {
        Some(source) => Some(source_bytes(source).await),
        None => None,
    }
}

/// Files left in `<root>/v1/tmp`.
pub fn temp_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("v1/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}
