//! `regcache fsck` on a real data dir: damage that regcache itself would
//! serve (a flipped byte, a file cut short) is found and removed, the exit
//! status says so, and a restarted regcache fetches those entries again.

use std::fs::OpenOptions;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use regcache_tests::image::random_bytes;
use regcache_tests::regcache::run_regcache;
use regcache_tests::{Regcache, RegistryClient};

use crate::support::{Mode, Upstream, settle, upstream_blob_gets};

/// `<blobs>/sha256/<hex[..2]>/<hex>`.
pub fn entry_path(regcache: &Regcache, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    regcache
        .blobs_dir()
        .join("sha256")
        .join(&hex[..2])
        .join(hex)
}

fn flip_byte(path: &Path, at: u64) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&[byte[0] ^ 0x20]).unwrap();
}

/// `regcache fsck ARGS --data-dir DIR`: (exit code, stdout, stderr).
pub async fn fsck(data_dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = data_dir.to_str().unwrap();
    let mut all = vec!["fsck", "--data-dir", dir];
    all.extend_from_slice(args);
    run_regcache(&all, &[]).await
}

#[tokio::test]
async fn fsck_removes_a_flipped_and_a_truncated_blob_and_regcache_fetches_them_again() {
    let upstream = Upstream::start(Mode::Plain);
    let repo = "fsck/blobs";
    let direct = upstream.client(&[repo]);
    let blobs: Vec<Vec<u8>> = [(0xf1, 3 << 20), (0xf2, 700 << 10), (0xf3, 40 << 10)]
        .into_iter()
        .map(|(seed, len)| random_bytes(seed, len))
        .collect();
    let mut digests = Vec::new();
    for blob in &blobs {
        digests.push(direct.push_blob(repo, blob.clone().into()).await);
    }
    let mut regcache = upstream.start_regcache();
    let client = RegistryClient::new(regcache.url());
    for (digest, blob) in digests.iter().zip(&blobs) {
        let got = client
            .get_compared(&format!("/v2/{repo}/blobs/{digest}"), &[], blob)
            .await
            .unwrap();
        assert!(got.is_exact(), "{got:?}");
    }
    let data_dir = regcache.data_dir().to_owned();

    // While regcache runs, fsck refuses (75) and touches nothing.
    let (code, out, err) = fsck(&data_dir, &[]).await;
    assert_eq!(
        code,
        Some(75),
        "fsck next to a running regcache: {out}{err}"
    );
    assert!(err.contains("in use by a running regcache"), "{err}");

    assert!(regcache.stop().success());
    let flipped = entry_path(&regcache, &digests[0]);
    let truncated = entry_path(&regcache, &digests[1]);
    flip_byte(&flipped, (2 << 20) + 5);
    OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(300 << 10)
        .unwrap();

    // --dry-run reports both and leaves them (2: problems left).
    let (code, out, err) = fsck(&data_dir, &["--dry-run"]).await;
    assert_eq!(code, Some(2), "fsck --dry-run: {out}{err}");
    assert!(flipped.exists() && truncated.exists());

    // With --config naming the data dir, as an operator runs it.
    let config = regcache.config_path().to_str().unwrap().to_owned();
    let (code, out, err) = run_regcache(&["fsck", "--config", &config], &[]).await;
    assert_eq!(
        code,
        Some(1),
        "fsck: problems found and removed: {out}{err}"
    );
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("removed digest-mismatch "))
        .collect();
    assert_eq!(bad.len(), 2, "{out}");
    assert!(
        out.contains(&digests[0]) && out.contains(&digests[1]),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} bytes hashing to sha256:", 300 << 10)),
        "the truncated entry's report gives its length: {out}"
    );
    assert!(
        out.contains("3 entries") && out.contains("1 verified; 2 bad, all removed"),
        "{out}"
    );
    assert!(!flipped.exists() && !truncated.exists());
    assert!(entry_path(&regcache, &digests[2]).exists());

    let (code, out, err) = fsck(&data_dir, &[]).await;
    assert_eq!(code, Some(0), "second run: {out}{err}");
    assert!(
        out.contains("1 entries") && out.trim_end().ends_with("clean"),
        "{out}"
    );

    // Restarted, regcache fetches the two removed blobs again, not the third.
    regcache.restart();
    let client = RegistryClient::new(regcache.url());
    for (digest, blob) in digests.iter().zip(&blobs) {
        let got = client
            .get_compared(&format!("/v2/{repo}/blobs/{digest}"), &[], blob)
            .await
            .unwrap();
        assert!(got.is_exact(), "after fsck, {digest}: {got:?}");
    }
    settle(&upstream.registry, std::time::Duration::from_millis(200)).await;
    let gets: Vec<usize> = digests
        .iter()
        .map(|d| upstream_blob_gets(&upstream.registry, d))
        .collect();
    assert_eq!(gets, [2, 2, 1], "upstream GETs per blob");
    assert!(entry_path(&regcache, &digests[0]).exists());
    assert!(entry_path(&regcache, &digests[1]).exists());
}
