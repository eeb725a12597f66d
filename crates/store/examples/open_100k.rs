//! Measures `Store::open` over N existing entries (default 100,000).
//!
//! ```text
//! cargo run --release -p regcache-store --example open_100k [N]
//! ```
//!
//! Entries are tiny files written straight into the v1 layout, as a previous
//! run would leave them; the page cache is warm (dropping it needs root and
//! would disturb other work on the machine), so this measures the index
//! rebuild, not the disk.
//!
//! Last result (2 shared vCPUs, ext4 on virtio, release, warm page cache):
//! 100,000 entries open in 148–169 ms (6 runs). The debug-build test
//! `startup::opens_100k_entries_quickly` measured 760–860 ms on the same
//! machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use regcache_formats::Digest;
use regcache_store::{Store, StoreConfig};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("v1/blobs/sha256");
    for prefix in 0..=255u8 {
        std::fs::create_dir_all(blobs.join(format!("{prefix:02x}"))).unwrap();
    }
    let started = Instant::now();
    for i in 0..n {
        let content = i.to_le_bytes();
        let d = Digest::sha256_of(&content);
        std::fs::write(blobs.join(&d.hex()[..2]).join(d.hex()), content).unwrap();
    }
    println!("created {n} entries in {:?}", started.elapsed());

    for run in 1..=3 {
        let config = StoreConfig::new(dir.path()).disk_max_bytes(1 << 40);
        let started = Instant::now();
        let store = Store::open_blocking(config).expect("open");
        let elapsed = started.elapsed();
        let stats = store.stats().disk;
        assert_eq!(stats.entries, n);
        println!(
            "run {run}: opened {} entries ({} bytes) in {elapsed:?}",
            stats.entries, stats.bytes_used
        );
    }
}
