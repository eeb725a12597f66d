//! regcache-store: the digest-addressed cache behind regcache.
//!
//! * [`Store`] — the handle the server holds: tiered lookups ([`Store::get`],
//!   [`Store::stat`]), small verified writes ([`Store::put_bytes`]), one fill
//!   per digest ([`Store::begin_fill`]), the [`TagIndex`] and the
//!   [`MappingLog`], and [`Store::stats`].
//! * [`Tier`] — one cache level; [`MemoryTier`] (moka, bounded by bytes) and
//!   [`DiskTier`] (content-addressed files, LRU by last access, survives
//!   restarts), composed by [`Tiered`] fastest first.
//! * [`Fills`] — the leader writes through a [`FillWriter`]; every client
//!   streams a [`FillReader`] that follows the partial file.
//! * [`SharedTier`] — an S3-compatible bucket shared by all replicas
//!   (object_store), a [`Tier`] for small objects plus streamed reads and
//!   conditional uploads of large blobs.
//!
//! Two contracts hold everywhere (STYLE habit 5): absence is `Ok(None)`, and a
//! write either commits whole, verified content or leaves nothing behind.
//! No HTTP and no upstream knowledge live here; the server decides what to
//! fetch, the store decides who may write and what is kept.
//!
//! # Sketch of the server's blob path
//!
//! ```no_run
//! # async fn sketch(store: regcache_store::Store, digest: regcache_formats::Digest) -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//! use regcache_store::{Begin, Source};
//!
//! if let Some(source) = store.get(&digest).await? {
//!     match source {
//!         Source::Bytes(_bytes) => { /* send the bytes */ }
//!         Source::File { file: _, len: _ } => { /* sendfile / stream the open file */ }
//!         _ => {}
//!     }
//!     return Ok(());
//! }
//! let upstream_len = Some(1234); // from the upstream HEAD / Content-Length
//! let mut reader = match store.begin_fill(&digest, upstream_len).await? {
//!     Begin::Leader(mut writer) => {
//!         let reader = writer.subscribe();
//!         // The download outlives this request: it runs in its own task.
//!         tokio::spawn(async move {
//!             # let chunks: Vec<bytes::Bytes> = Vec::new();
//!             for chunk in chunks {              // the upstream body
//!                 if writer.write(chunk).await.is_err() { return; }
//!             }
//!             let _ = writer.commit().await;    // or writer.abort(upstream_error)
//!         });
//!         reader
//!     }
//!     Begin::Follower(reader) => reader,
//! };
//! while let Some(chunk) = reader.next().await {
//!     let _bytes = chunk?; // on Err: abort the response, never end it cleanly
//! }
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod diffids;
mod disk;
mod error;
mod fill;
mod fsck;
mod hasher;
mod health;
mod jsonl;
mod mapping;
mod memory;
mod relay;
mod shared;
mod source;
mod stats;
mod store;
mod tags;
mod tier;

pub use config::{DEFAULT_MEMORY_MAX_OBJECT_BYTES, StoreConfig};
pub use diffids::{DiffIdLog, DiffIdRecord};
pub use disk::{DiskTier, EntryInfo, Installed, LAYOUT_VERSION, PinGuard};
pub use error::{FillError, StoreError};
pub use fill::{
    Begin, Committed, FillFile, FillProgress, FillReader, FillStatus, FillWriter, Fills,
};
pub use fsck::{FsckError, FsckReport, Problem, ProblemKind, fsck_blocking};
pub use health::{CacheHealth, CacheState, WriteErrorKind};
pub use mapping::{Direction, MappingLog, MappingRecord};
pub use memory::MemoryTier;
pub use shared::{
    DEFAULT_PART_SIZE, DEFAULT_SMALL_OBJECT_MAX, MIN_PART_SIZE, SharedBody, SharedConfig,
    SharedStats, SharedTier, Stored,
};
pub use source::Source;
pub use stats::{DiskStats, FillStats, MemoryStats, StatsSnapshot, TierStats};
pub use store::{SHARED_LOOKUP_WAIT, Store};
pub use tags::{TagEntry, TagIndex, TagRecord};
pub use tier::{Tier, Tiered};
