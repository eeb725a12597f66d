//! S4's client: one `skopeo copy` of a whole image from a registry (a proxy
//! under test, or the upstream itself for the reference) into a fresh
//! `dir:` directory, timed as a process from spawn to exit; then the copy
//! checked file by file against the digests that were pushed.
//!
//! skopeo (containers/image) is what podman and CRI-O pull with: it pings
//! `/v2/` (HTTPS first, then plain HTTP with `--src-tls-verify=false`),
//! GETs the manifest by tag, then the config and up to six layers at once.
//! The `dir:` destination stores each blob as it came, named by its digest,
//! so nothing is decompressed and the check can hash the files directly.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::imageset::{BlobRef, PullImage};
use super::procstat;
use super::servers::Cpus;

/// One copy: how long skopeo ran, what it cost, whether the copy is right.
#[derive(Debug, Clone)]
pub struct Copy {
    /// Spawn to exit of the skopeo process.
    pub wall: Duration,
    /// CPU ticks skopeo used (this process's reaped-children CPU around it).
    pub client_cpu_ticks: u64,
    /// `Err`: skopeo failed (with the end of its output).
    pub result: Result<(), String>,
    /// The command line, for the report (with `taskset` when pinned).
    pub command: String,
}

/// The installed `skopeo`.
#[derive(Debug, Clone)]
pub struct Skopeo {
    pub program: PathBuf,
}

impl Skopeo {
    /// The arguments of a copy of `image` from the registry at `addr` into
    /// `dest` (which must not exist yet; skopeo creates it).
    /// `--insecure-policy` keeps the run independent of the machine's
    /// `/etc/containers/policy.json`.
    pub fn copy_args(addr: SocketAddr, image: &PullImage, dest: &Path) -> Vec<String> {
        vec![
            "--insecure-policy".into(),
            "copy".into(),
            "--src-tls-verify=false".into(),
            format!("docker://{addr}/{}:{}", image.repo, image.tag),
            format!("dir:{}", dest.display()),
        ]
    }

    /// Copies `image` from `addr` into `dest` on `cpus`, timed. A failure
    /// is in [`Copy::result`] with skopeo's output; a success still has to
    /// pass [`verify_dir`].
    pub fn copy(&self, cpus: &Cpus, addr: SocketAddr, image: &PullImage, dest: &Path) -> Copy {
        let args = Skopeo::copy_args(addr, image, dest);
        let mut command = cpus.command(&self.program);
        command.args(&args).stdin(Stdio::null());
        let shown = {
            let mut words = vec![command.get_program().to_string_lossy().into_owned()];
            words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
            words.join(" ")
        };
        let cpu0 = procstat::reaped_children_cpu();
        let t0 = Instant::now();
        let output = command.output();
        let wall = t0.elapsed();
        let client_cpu_ticks = procstat::reaped_children_cpu().saturating_sub(cpu0);
        let result = match output {
            Err(e) => Err(format!("cannot run {}: {e}", self.program.display())),
            Ok(out) if !out.status.success() => Err(format!(
                "`{shown}` failed ({}): {}",
                out.status,
                tail(&format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            )),
            Ok(_) => Ok(()),
        };
        Copy {
            wall,
            client_cpu_ticks,
            result,
            command: shown,
        }
    }
}

/// The last few lines of a tool's output, on one line.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..].join(" / ")
}

/// Checks a `skopeo copy … dir:DIR` of `image`: `manifest.json` is the
/// pushed manifest byte for byte (its sha256 is the manifest digest), and
/// the config and every layer are there, named by their digest's hex, of
/// the right length, hashing to that digest.
pub fn verify_dir(dir: &Path, image: &PullImage) -> Result<(), String> {
    let manifest = dir.join("manifest.json");
    let manifest_digest = hash_file(&manifest)?;
    if manifest_digest != image.manifest_digest {
        return Err(format!(
            "{} hashes to {manifest_digest}, expected the pushed manifest {}",
            manifest.display(),
            image.manifest_digest
        ));
    }
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        verify_blob(dir, blob)?;
    }
    Ok(())
}

fn verify_blob(dir: &Path, blob: &BlobRef) -> Result<(), String> {
    let path = dir.join(blob.hex());
    let len = std::fs::metadata(&path)
        .map_err(|e| format!("{}: {e} (blob {} missing)", path.display(), blob.digest))?
        .len();
    if len != blob.len {
        return Err(format!(
            "{} has {len} bytes, expected {} (blob {})",
            path.display(),
            blob.len,
            blob.digest
        ));
    }
    let digest = hash_file(&path)?;
    if digest != blob.digest {
        return Err(format!(
            "{} hashes to {digest}, expected {}",
            path.display(),
            blob.digest
        ));
    }
    Ok(())
}

/// `sha256:` of a file's contents.
fn hash_file(path: &Path) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, blobs: &[&[u8]], manifest: &[u8]) -> PullImage {
        let refs: Vec<BlobRef> = blobs
            .iter()
            .map(|b| BlobRef {
                digest: regcache_tests::sha256_digest(b),
                len: b.len() as u64,
            })
            .collect();
        for (r, b) in refs.iter().zip(blobs) {
            std::fs::write(dir.join(r.hex()), b).expect("write blob");
        }
        std::fs::write(dir.join("manifest.json"), manifest).expect("write manifest");
        PullImage {
            repo: "bench/pull",
            tag: "t".into(),
            manifest_digest: regcache_tests::sha256_digest(manifest),
            manifest_len: manifest.len() as u64,
            config: refs[0].clone(),
            layers: refs[1..].to_vec(),
        }
    }

    #[test]
    fn verify_dir_checks_every_blob() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = image(
            dir.path(),
            &[b"{}", b"layer one", b"layer two"],
            b"{\"m\":1}",
        );
        assert_eq!(verify_dir(dir.path(), &img), Ok(()));
        assert_eq!(img.blob_bytes(), 2 + 9 + 9);

        std::fs::write(dir.path().join(img.layers[1].hex()), b"layer 2!!").expect("write");
        let err = verify_dir(dir.path(), &img).expect_err("corrupt layer");
        assert!(
            err.contains(&format!("expected {}", img.layers[1].digest)),
            "{err}"
        );

        std::fs::remove_file(dir.path().join(img.layers[1].hex())).expect("rm");
        let err = verify_dir(dir.path(), &img).expect_err("missing layer");
        assert!(err.contains("missing"), "{err}");

        std::fs::write(dir.path().join("manifest.json"), b"{}").expect("write");
        let err = verify_dir(dir.path(), &img).expect_err("other manifest");
        assert!(err.contains("pushed manifest"), "{err}");
    }

    #[test]
    fn copy_args_are_the_documented_command() {
        let img = PullImage {
            repo: "bench/pull",
            tag: "regcache-r1".into(),
            manifest_digest: String::new(),
            manifest_len: 0,
            config: BlobRef {
                digest: String::new(),
                len: 0,
            },
            layers: Vec::new(),
        };
        let args = Skopeo::copy_args(
            "127.0.0.1:5000".parse().expect("addr"),
            &img,
            Path::new("/tmp/d"),
        );
        assert_eq!(
            args.join(" "),
            "--insecure-policy copy --src-tls-verify=false docker://127.0.0.1:5000/bench/pull:regcache-r1 dir:/tmp/d"
        );
    }
}
