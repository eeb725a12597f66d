//! Scale: a store of N entries (100,000 and 1,000,000): start-up time, RSS
//! and lookup latency (issue 16).
//!
//! ```sh
//! cargo bench -p regcache-benches --bench scale                 # 5-10 min (deleting 1M files is half)
//! cargo bench -p regcache-benches --bench scale -- --n 100000   # one size
//! ```
//!
//! Flags (after `--`): `--n N[,N…]` the sizes (default `100000,1000000`,
//! ascending); `--runs R` fresh processes per size (default 3); `--dir DIR`
//! to keep the generated store in DIR (created if missing; entries a
//! previous `--dir` run wrote there are reused, nothing is deleted), for
//! repeated measurements without regenerating a million files.
//!
//! Entries are not pulled: they are written straight into the disk tier's v1
//! layout (`v1/blobs/sha256/<hex[..2]>/<hex>`), as a previous run would leave
//! them: entry `i` holds the 8 bytes `i.to_le_bytes()` under its real sha256.
//! A store also gets one tag line per 10 entries in `v1/tags.jsonl` (start-up
//! replays it), each pointing at an entry. The sizes share one directory:
//! the larger store extends the smaller. It lives under the workspace's
//! `target/` and is deleted at the end (1,000,000 entries take ~4 GiB of
//! blocks and 1,000,256 inodes).
//!
//! Each run is a fresh child process (this executable again, with
//! `REGCACHE_SCALE_CHILD` set), so its RSS is the store's, not the
//! generator's. The first run of each size starts without an index snapshot
//! (the parent deletes any): a first start, or one after a crash, scanning
//! every file. Each child ends as a clean shutdown does, saving the index
//! snapshot (timed), so the later runs start from it, as a restart does.
//! The child opens the store with `Store::open_blocking`
//! (defaults but a 1 TiB disk budget so nothing is evicted), reads VmRSS and
//! VmHWM from `/proc/self/status`, then times 100,000 calls each (one
//! `Instant` pair per call, on a current-thread runtime) of `Store::stat` of
//! present digests, of absent ones, `Store::get` of present digests (each a
//! distinct entry: a first access, so the disk tier answers, not the memory
//! tier it then promotes to) and of absent ones. The page cache is warm (the
//! files were just written): this measures the index, not the disk.
//!
//! Run without `--bench` (as `cargo test --benches` does) it does nothing
//! but say so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use regcache_formats::Digest;
use regcache_store::{Store, StoreConfig};

const CHILD_ENV: &str = "REGCACHE_SCALE_CHILD";
const LOOKUPS: usize = 100_000;
const TAG_EVERY: u64 = 10;
const USAGE: &str = "usage: cargo bench -p regcache-benches --bench scale [-- [--n N[,N...]] [--runs R] [--dir DIR]]";
/// In a `--dir` store: how many entries it holds.
const GENERATED: &str = "generated-entries";

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "scale: run with `cargo bench -p regcache-benches --bench scale` (writes up to 1,000,000 files)"
        );
        return ExitCode::SUCCESS;
    }
    let mut sizes = vec![100_000u64, 1_000_000];
    let mut runs = 3usize;
    let mut keep: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--n" => {
                let Some(list) = it.next() else {
                    eprintln!("--n needs a value\n{USAGE}");
                    return ExitCode::FAILURE;
                };
                let parsed: Option<Vec<u64>> = list.split(',').map(|s| s.parse().ok()).collect();
                match parsed {
                    Some(mut v) if !v.is_empty() && v.iter().all(|n| *n > 0) => {
                        v.sort_unstable();
                        sizes = v;
                    }
                    _ => {
                        eprintln!("--n {list}: not a list of positive numbers\n{USAGE}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            "--runs" => match it.next().and_then(|v| v.parse().ok()).filter(|r| *r > 0) {
                Some(r) => runs = r,
                None => {
                    eprintln!("--runs needs a positive number\n{USAGE}");
                    return ExitCode::FAILURE;
                }
            },
            "--dir" => match it.next() {
                Some(d) => keep = Some(PathBuf::from(d)),
                None => {
                    eprintln!("--dir needs a value\n{USAGE}");
                    return ExitCode::FAILURE;
                }
            },
            other => {
                eprintln!("unknown argument {other}\n{USAGE}");
                return ExitCode::FAILURE;
            }
        }
    }
    match parent(&sizes, runs, keep.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("scale: {message}");
            ExitCode::FAILURE
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn entry_digest(i: u64) -> Digest {
    Digest::sha256_of(&i.to_le_bytes())
}

fn parent(sizes: &[u64], runs: usize, keep: Option<&Path>) -> Result<(), String> {
    let target = target_dir();
    fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
    let temp;
    let (root, mut written) = match keep {
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let had = fs::read_to_string(dir.join(GENERATED))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            (dir.to_path_buf(), had)
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("scale-bench-")
                .tempdir_in(&target)
                .map_err(|e| format!("temp dir under {}: {e}", target.display()))?;
            (temp.path().to_path_buf(), 0)
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    println!("store directory: {}", root.display());
    let mut rows = Vec::new();
    for &n in sizes {
        let started = Instant::now();
        if n > written {
            generate(&root, written, n)?;
            written = n;
            if keep.is_some() {
                fs::write(root.join(GENERATED), n.to_string())
                    .map_err(|e| format!("write {}: {e}", root.join(GENERATED).display()))?;
            }
        } else if n < written {
            return Err(format!(
                "{} already holds {written} entries: use --n {written} or a new --dir",
                root.display()
            ));
        }
        println!(
            "wrote entries up to {n} and {} tag lines in {:.1} s",
            n / TAG_EVERY,
            started.elapsed().as_secs_f64()
        );
        // The first run scans: no snapshot from an earlier --dir run.
        let snapshot = root.join("v1/index.snapshot");
        match fs::remove_file(&snapshot) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("delete {}: {e}", snapshot.display())),
        }
        for run in 1..=runs {
            let output = Command::new(&exe)
                .env(CHILD_ENV, format!("{n} {}", root.display()))
                .output()
                .map_err(|e| format!("spawn child: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "child for N={n} failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            println!("N={n} run {run}: {line}");
            rows.push((n, line));
        }
    }
    println!();
    print_table(&rows);
    if keep.is_some() {
        println!("\nkept the store in {}", root.display());
        return Ok(());
    }
    // The TempDir's drop deletes the tree; say how long it took.
    let started = Instant::now();
    fs::remove_dir_all(&root).map_err(|e| format!("delete store: {e}"))?;
    println!(
        "\ndeleted the store in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes entries `from..to` and rewrites the tag log for `to` entries.
fn generate(root: &Path, from: u64, to: u64) -> Result<(), String> {
    let blobs = root.join("v1/blobs/sha256");
    for prefix in 0..=255u8 {
        let d = blobs.join(format!("{prefix:02x}"));
        fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let threads = 2u64;
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let blobs = &blobs;
                scope.spawn(move || {
                    let mut i = from + t;
                    while i < to {
                        let content = i.to_le_bytes();
                        let d = Digest::sha256_of(&content);
                        let hex = d.hex();
                        let path = blobs.join(&hex[..2]).join(hex);
                        fs::write(&path, content)
                            .map_err(|e| format!("write {}: {e}", path.display()))?;
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        r?;
    }
    let tags = root.join("v1/tags.jsonl");
    let file = fs::File::create(&tags).map_err(|e| format!("create {}: {e}", tags.display()))?;
    let mut out = BufWriter::new(file);
    for t in 0..to / TAG_EVERY {
        let digest = entry_digest(t * TAG_EVERY);
        let line = serde_json::json!({
            "op": "put",
            "upstream": "registry-1.docker.io",
            "repository": format!("library/repo{}", t / 100),
            "tag": format!("v{}", t % 100),
            "record": {
                "digest": digest.to_string(),
                "media_type": "application/vnd.docker.distribution.manifest.v2+json",
                "size": 8,
                "fetched_at_unix": 1_764_000_000u64,
            },
        });
        writeln!(out, "{line}").map_err(|e| format!("write {}: {e}", tags.display()))?;
    }
    out.flush()
        .map_err(|e| format!("write {}: {e}", tags.display()))?;
    Ok(())
}

/// The child: opens the store, reports one line of `key=value` figures.
fn child(spec: &str) -> ExitCode {
    let Some((n, root)) = spec
        .split_once(' ')
        .and_then(|(n, root)| Some((n.parse::<u64>().ok()?, PathBuf::from(root))))
    else {
        eprintln!("{CHILD_ENV}={spec}: expected `N ROOT`");
        return ExitCode::FAILURE;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (rss_before, _) = memory();
    let start = if root.join("v1/index.snapshot").exists() {
        "snapshot"
    } else {
        "scan"
    };
    let started = Instant::now();
    let store =
        Store::open_blocking(StoreConfig::new(&root).disk_max_bytes(1 << 40)).expect("open store");
    let open = started.elapsed();
    let (rss_open, hwm_open) = memory();
    let entries = store.stats().disk.entries;
    if entries != n {
        eprintln!("opened {entries} entries, expected {n}");
        return ExitCode::FAILURE;
    }

    let mut rng = ChaCha8Rng::seed_from_u64(n);
    let k = LOOKUPS.min(usize::try_from(n).unwrap_or(usize::MAX));
    let present: Vec<Digest> = sample(&mut rng, usize::try_from(n).unwrap(), k)
        .into_iter()
        .map(|i| entry_digest(i as u64))
        .collect();
    let absent: Vec<Digest> = (0..k as u64).map(|i| entry_digest(n + 1 + i)).collect();

    let (stat_hit, stat_miss, get_hit, get_miss) = runtime.block_on(async {
        let stat_hit = time_each(&present, |d| {
            let store = store.clone();
            async move { assert!(store.stat(&d).await.unwrap().is_some()) }
        })
        .await;
        let stat_miss = time_each(&absent, |d| {
            let store = store.clone();
            async move { assert!(store.stat(&d).await.unwrap().is_none()) }
        })
        .await;
        let get_hit = time_each(&present, |d| {
            let store = store.clone();
            async move { assert!(store.get(&d).await.unwrap().is_some()) }
        })
        .await;
        let get_miss = time_each(&absent, |d| {
            let store = store.clone();
            async move { assert!(store.get(&d).await.unwrap().is_none()) }
        })
        .await;
        (stat_hit, stat_miss, get_hit, get_miss)
    });
    let (rss_end, hwm_end) = memory();
    // As a clean shutdown ends: the snapshot the next run starts from.
    let saving = Instant::now();
    let saved = store.disk().save_index().expect("save the index snapshot");
    let save = saving.elapsed();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "entries={entries} start={start} saved={saved} save_ms={:.1} open_ms={:.1} rss_before_mib={:.1} rss_open_mib={:.1} hwm_open_mib={:.1} rss_end_mib={:.1} hwm_end_mib={:.1} \
         stat_hit_p50_us={:.2} stat_hit_p99_us={:.2} stat_miss_p50_us={:.2} stat_miss_p99_us={:.2} \
         get_hit_p50_us={:.2} get_hit_p99_us={:.2} get_miss_p50_us={:.2} get_miss_p99_us={:.2}",
        save.as_secs_f64() * 1e3,
        open.as_secs_f64() * 1e3,
        rss_before,
        rss_open,
        hwm_open,
        rss_end,
        hwm_end,
        us(stat_hit.0),
        us(stat_hit.1),
        us(stat_miss.0),
        us(stat_miss.1),
        us(get_hit.0),
        us(get_hit.1),
        us(get_miss.0),
        us(get_miss.1),
    );
    ExitCode::SUCCESS
}

/// Times each call; returns (p50, p99).
async fn time_each<F, Fut>(digests: &[Digest], mut call: F) -> (Duration, Duration)
where
    F: FnMut(Digest) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(digests.len());
    for d in digests {
        let d = d.clone();
        let started = Instant::now();
        call(d).await;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    (at(0.50), at(0.99))
}

/// (VmRSS, VmHWM) in MiB from `/proc/self/status`.
fn memory() -> (f64, f64) {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn print_table(rows: &[(u64, String)]) {
    let columns = [
        ("start", "start"),
        ("open_ms", "open (ms)"),
        ("rss_open_mib", "RSS after open (MiB)"),
        ("hwm_open_mib", "HWM after open (MiB)"),
        ("rss_end_mib", "RSS after lookups (MiB)"),
        ("stat_hit_p50_us", "stat hit p50 (µs)"),
        ("stat_hit_p99_us", "stat hit p99 (µs)"),
        ("stat_miss_p99_us", "stat miss p99 (µs)"),
        ("get_hit_p50_us", "get hit p50 (µs)"),
        ("get_hit_p99_us", "get hit p99 (µs)"),
        ("get_miss_p99_us", "get miss p99 (µs)"),
        ("save_ms", "snapshot save (ms)"),
    ];
    let mut header = String::from("| entries | run |");
    let mut rule = String::from("|--------:|----:|");
    for (_, title) in columns {
        header.push_str(&format!(" {title} |"));
        rule.push_str(&format!("{}:|", "-".repeat(title.chars().count() + 1)));
    }
    println!("{header}\n{rule}");
    let mut run = 0;
    let mut last_n = 0;
    for (n, line) in rows {
        if *n != last_n {
            run = 0;
            last_n = *n;
        }
        run += 1;
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("?")
                .to_owned()
        };
        let mut row = format!("| {n} | {run} |");
        for (key, _) in columns {
            row.push_str(&format!(" {} |", value(key)));
        }
        println!("{row}");
    }
}
