//! The shared tier: an S3-compatible bucket that every regcache replica reads
//! and fills, so a blob fetched by one replica serves all.
//!
//! Built on Apache Arrow's `object_store` (SigV4, the AWS credential chain,
//! multipart, conditional requests). The tier holds only verified content:
//! every write hashes first, and every small read is re-hashed before it is
//! served (a bucket is shared with other writers we don't control).
//!
//! # Who creates an object
//!
//! Content under a digest never changes, but two replicas may miss the same
//! blob at once and both upload it. Each final key is therefore created with
//! a *conditional create*, so exactly one writer sees [`Stored::Created`] and
//! the others [`Stored::AlreadyThere`] (412 Precondition Failed), and an
//! existing object is never rewritten:
//!
//! * [`SharedTier::put_bytes`]: one `PUT` with `If-None-Match: *`
//!   (`PutMode::Create`, object_store's `S3ConditionalPut::ETagMatch`).
//! * [`SharedTier::upload_file`] (large blobs): a multipart upload to a
//!   temporary key `{prefix}tmp/<random>`, then `copy_if_not_exists` to the
//!   final key with `S3CopyIfNotExists::Multipart`: a one-part multipart
//!   upload whose part is an `UploadPartCopy` of the temporary object,
//!   completed with `If-None-Match: *`; then the temporary key is deleted.
//!
//! Why that mechanism, checked against moto 5.2.5 (the test server) and the
//! S3 API: object_store 0.12 can't complete a multipart upload of the final
//! key conditionally (`MultipartUpload::complete` always overwrites, and
//! `PutMultipartOptions` has no mode), so uploading straight to the final key
//! would be a last-writer-wins overwrite. A plain `CopyObject` with
//! `If-None-Match: *` (`S3CopyIfNotExists::Header`) is ignored by moto (its
//! copy checks only `x-amz-copy-source-if-*`) and overwrites silently.
//! `CompleteMultipartUpload` with `If-None-Match: *` is honoured by AWS S3
//! (since 2024) and by moto, which answers 412 to the loser; the race tests
//! in `crates/store/tests/it/shared.rs` show exactly one `Created` per round
//! (against moto serving one request at a time: threaded moto checks and
//! inserts without a lock, so overlapping creates both win there, by any
//! mechanism; see `tests/it/moto.rs`).
//! Cost: the blob is written twice inside the store (server-side copy, no
//! traffic through regcache). Limit: S3 caps one `UploadPartCopy` at 5 GiB,
//! so a blob above that can't be shared on AWS (the upload fails cleanly,
//! no final object).
//!
//! `remove` does nothing: a purge is per replica, and the shared copy is
//! verified content other replicas use.
//!
//! Errors: absence is `Ok(None)`; everything else is
//! [`StoreError::Shared`] naming the step, and counted in
//! [`SharedStats::errors`].

mod config;
mod keys;
mod stats;
mod tags;
mod tier;
mod upload;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3;
use object_store::{GetOptions, GetRange, ObjectStore, PutMode, PutPayload};
use regcache_formats::Digest;

use crate::error::StoreError;
use crate::hasher::verify_bytes;

pub use config::{DEFAULT_PART_SIZE, DEFAULT_SMALL_OBJECT_MAX, MIN_PART_SIZE, SharedConfig};
pub use stats::SharedStats;

use keys::Keys;
use stats::Counters;

/// What a conditional create found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// This call created the object.
    Created,
    /// The object existed (another writer won); nothing was changed.
    AlreadyThere,
}

/// A ranged read of a shared object.
pub struct SharedBody {
    /// The whole object's length.
    pub len: u64,
    /// Where `stream` starts.
    pub offset: u64,
    /// The bytes from `offset` to the end. An `Err` item means the body is
    /// broken: abort the response, never end it cleanly.
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBody")
            .field("len", &self.len)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: SharedConfig,
    store: AmazonS3,
    keys: Keys,
    counters: Counters,
}

/// The shared object-store tier. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct SharedTier {
    inner: Arc<Inner>,
}

impl fmt::Debug for SharedTier {
    // The config's Debug redacts the secrets; object_store's client is left
    // out (its Debug is not ours to audit).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTier")
            .field("config", &self.inner.config)
            .field("stats", &self.inner.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl SharedTier {
    /// Builds the client. No I/O; call [`SharedTier::check`] to find out
    /// whether the bucket and credentials work.
    pub fn new(config: SharedConfig) -> Result<SharedTier, StoreError> {
        let store = config.build()?;
        let keys = Keys::new(&config.prefix);
        Ok(SharedTier {
            inner: Arc::new(Inner {
                config,
                store,
                keys,
                counters: Counters::default(),
            }),
        })
    }

    pub fn config(&self) -> &SharedConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> SharedStats {
        self.inner.counters.snapshot()
    }

    /// One cheap request proving bucket + credentials work (used at start-up
    /// and by `regcache check`): a delimited listing of the prefix, which
    /// returns at most the few top-level folders. Unlike a HEAD, its error
    /// body tells a missing bucket (`NoSuchBucket`) from a denied one.
    pub async fn check(&self) -> Result<(), StoreError> {
        let root = self.inner.keys.root();
        let prefix = (!root.as_ref().is_empty()).then_some(&root);
        self.count(
            self.inner
                .store
                .list_with_delimiter(prefix)
                .await
                .map(drop)
                .map_err(StoreError::shared("check (list the bucket)")),
        )
    }

    /// The object's length, or `None` when absent.
    pub async fn head(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let key = self.inner.keys.blob(digest);
        let result = match self.inner.store.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::Shared {
                op: "head",
                source: e,
            }),
        };
        self.count(result)
    }

    /// Ranged GET from `offset` to the end, streamed (never buffered whole).
    /// `None` if absent. `offset == len` gives an empty stream; past the end
    /// is [`StoreError::RangeNotSatisfiable`].
    ///
    /// The stream is not re-hashed here (a ranged reader can't); the tier
    /// only ever stores verified content, and the server's own fill path
    /// verifies what it caches locally.
    pub async fn open(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<Option<SharedBody>, StoreError> {
        let result = self.open_inner(digest, offset).await;
        self.count(result)
    }

    async fn open_inner(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<Option<SharedBody>, StoreError> {
        let key = self.inner.keys.blob(digest);
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let got = match self.inner.store.get_opts(&key, options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) if offset > 0 => {
                // S3 answers 416 for a range at or past the end, which
                // object_store reports as a generic error: ask for the length.
                return match self.inner.store.head(&key).await {
                    Ok(meta) if offset == meta.size => Ok(Some(SharedBody {
                        len: meta.size,
                        offset,
                        stream: futures_util::stream::empty().boxed(),
                    })),
                    Ok(meta) if offset > meta.size => Err(StoreError::RangeNotSatisfiable {
                        digest: digest.clone(),
                        start: offset,
                        len: meta.size,
                    }),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    _ => Err(StoreError::Shared {
                        op: "get",
                        source: e,
                    }),
                };
            }
            Err(e) => {
                return Err(StoreError::Shared {
                    op: "get",
                    source: e,
                });
            }
        };
        Counters::add(&self.inner.counters.gets, 1);
        let len = got.meta.size;
        let inner = Arc::clone(&self.inner);
        let stream = got
            .into_stream()
            .map(move |chunk| match chunk {
                Ok(bytes) => {
                    Counters::add(&inner.counters.get_bytes, bytes.len() as u64);
                    Ok(bytes)
                }
                Err(source) => {
                    Counters::add(&inner.counters.errors, 1);
                    Err(StoreError::Shared {
                        op: "read body",
                        source,
                    })
                }
            })
            .boxed();
        Ok(Some(SharedBody {
            len,
            offset,
            stream,
        }))
    }

    /// Reads a whole (small) object into memory.
    async fn get_bytes(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        let key = self.inner.keys.blob(digest);
        let got = match self.inner.store.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                return Err(StoreError::Shared {
                    op: "get",
                    source: e,
                });
            }
        };
        let bytes = got.bytes().await.map_err(StoreError::shared("read body"))?;
        Counters::add(&self.inner.counters.gets, 1);
        Counters::add(&self.inner.counters.get_bytes, bytes.len() as u64);
        Ok(Some(bytes))
    }

    /// Verifies the digest first (refuses a mismatch, storing nothing), then
    /// a conditional create: two writers never both see `Created`.
    pub async fn put_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<Stored, StoreError> {
        if let Err(actual) = verify_bytes(digest, &bytes) {
            Counters::add(&self.inner.counters.errors, 1);
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let result = self.create(digest, bytes).await;
        self.count(result)
    }

    /// Conditional PUT of verified bytes to the final key.
    async fn create(&self, digest: &Digest, bytes: Bytes) -> Result<Stored, StoreError> {
        let key = self.inner.keys.blob(digest);
        let len = bytes.len() as u64;
        let put = self
            .inner
            .store
            .put_opts(&key, PutPayload::from_bytes(bytes), PutMode::Create.into())
            .await;
        Counters::add(&self.inner.counters.upload_bytes, len);
        self.created(digest, put.map(drop), "put").await
    }

    /// Maps the answer of a conditional create of `digest` and counts it.
    ///
    /// A refusal is confirmed with a HEAD before it is reported as
    /// `AlreadyThere`: S3 answers 409 (which object_store reports like a 412)
    /// while a concurrent conditional write is still in flight, and that
    /// write may yet fail.
    async fn created(
        &self,
        digest: &Digest,
        result: Result<(), object_store::Error>,
        op: &'static str,
    ) -> Result<Stored, StoreError> {
        match result {
            Ok(()) => {
                Counters::add(&self.inner.counters.puts_created, 1);
                Ok(Stored::Created)
            }
            Err(
                refused @ (object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }),
            ) => {
                let key = self.inner.keys.blob(digest);
                match self.inner.store.head(&key).await {
                    Ok(_) => {
                        Counters::add(&self.inner.counters.puts_existing, 1);
                        Ok(Stored::AlreadyThere)
                    }
                    Err(object_store::Error::NotFound { .. }) => Err(StoreError::Shared {
                        op,
                        source: refused,
                    }),
                    Err(source) => Err(StoreError::Shared {
                        op: "head after a refused create",
                        source,
                    }),
                }
            }
            Err(source) => Err(StoreError::Shared { op, source }),
        }
    }

    /// Counts an error on the way out.
    fn count<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            Counters::add(&self.inner.counters.errors, 1);
        }
        result
    }
}
