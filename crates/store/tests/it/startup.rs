//! Start-up time with 100,000 entries.
//!
//! Entries are created directly in the on-disk layout (what a previous run
//! leaves behind); `Store::open` is timed. Debug builds on a shared 2-core
//! machine are noisy, so the assertion has head-room over the 1 s target and
//! `examples/open_100k.rs` gives the release figure.

use std::time::Instant;

use regcache_store::Store;

use crate::common::*;

pub fn populate(root: &std::path::Path, n: u64) -> u64 {
    let blobs = root.join("v1/blobs/sha256");
    for prefix in 0..=255u8 {
        std::fs::create_dir_all(blobs.join(format!("{prefix:02x}"))).unwrap();
    }
    let mut total = 0;
    for i in 0..n {
        let content = i.to_le_bytes();
        let d = digest(&content);
        std::fs::write(blobs.join(&d.hex()[..2]).join(d.hex()), content).unwrap();
        total += content.len() as u64;
    }
    total
}

#[test]
fn opens_100k_entries_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = populate(dir.path(), 100_000);
    let started = Instant::now();
    let store = Store::open_blocking(disk_only(dir.path(), 1 << 40)).unwrap();
    let elapsed = started.elapsed();
    eprintln!("opened 100000 entries in {elapsed:?} (debug build)");
    let stats = store.stats().disk;
    assert_eq!(stats.entries, 100_000);
    assert_eq!(stats.bytes_used, bytes);
    // A guard against pathological (say quadratic) opening, not a speed
    // test: speed is measured by the benchmarks. ~0.2 s alone, ~3 s on a
    // loaded 2-core machine.
    assert!(elapsed.as_secs_f64() < 20.0, "start-up took {elapsed:?}");
}
