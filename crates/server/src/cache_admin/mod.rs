//! The cache admin commands' shared core: what is cached (`ls`), what a
//! purge removes, and prefetch, for the admin API (`api.rs`, on a running
//! instance) and for the `regcache ls|purge` subcommands run on a data dir
//! (`local.rs`). The CLI side lives in [`crate::cache_cli`].
//!
//! Purges are safe while serving: tags go first, then manifests (parsed
//! cache, memory and disk tiers), then blobs, so a pull that starts
//! mid-purge finds either the whole image or a tag to resolve again; a
//! reader that already opened a blob keeps its file (Linux keeps an
//! unlinked inode while it is open), and a fill in flight commits as usual.

pub mod api;
pub mod imageref;
pub mod inventory;
pub mod local;
pub mod prefetch;
pub mod purge;

pub use inventory::{Graph, Inventory, PurgePlan};

/// The largest manifest regcache reads to follow references (the push
/// limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Unix nanoseconds now.
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
