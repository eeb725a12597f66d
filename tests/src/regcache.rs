//! Locating and running the `regcache` binary built from this workspace.
//!
//! Test binaries live in `target/<profile>/deps/`; the `regcache` binary is
//! `target/<profile>/regcache`. `cargo test` does not build other packages'
//! binaries for an integration test crate, so the project's test script runs
//! `cargo build --workspace --bins` first.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// `target/<profile>/regcache`, derived from the running test executable.
///
/// # Panics
/// When the binary has not been built, saying how to build it.
pub fn regcache_bin() -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the running test executable: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("regcache");
    assert!(
        bin.is_file(),
        "the regcache binary is missing at {}: build it with `cargo build -p regcache-server` \
         (scripts/test runs `cargo build --workspace --bins` before the tests)",
        bin.display()
    );
    bin
}

/// Arguments of `regcache convert`.
#[derive(Debug, Clone)]
pub struct ConvertArgs<'a> {
    pub name: &'a str,
    pub tag: &'a str,
    /// The image config blob, as stored.
    pub config: &'a Path,
    /// A Schema 2 / OCI manifest, or a Docker manifest list / OCI index.
    pub manifest: &'a Path,
    /// For lists: the linux/amd64 child manifest.
    pub child: Option<&'a Path>,
    /// Signing key; without it regcache uses a fresh key.
    pub key: Option<&'a Path>,
    /// Print the canonical payload instead of the signed manifest.
    pub payload: bool,
}

/// What `regcache convert` did.
#[derive(Debug, Clone)]
pub struct ConvertOutput {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl ConvertOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `regcache convert --name N --tag T --config C [--key K] [--payload]
/// [--child F] MANIFEST`.
pub async fn convert(args: &ConvertArgs<'_>) -> ConvertOutput {
    let bin = regcache_bin();
    let mut argv: Vec<String> = vec![
        "convert".into(),
        "--name".into(),
        args.name.into(),
        "--tag".into(),
        args.tag.into(),
        "--config".into(),
        args.config.display().to_string(),
    ];
    if let Some(key) = args.key {
        argv.push("--key".into());
        argv.push(key.display().to_string());
    }
    if args.payload {
        argv.push("--payload".into());
    }
    if let Some(child) = args.child {
        argv.push("--child".into());
        argv.push(child.display().to_string());
    }
    argv.push(args.manifest.display().to_string());
    let output = tokio::process::Command::new(&bin)
        .args(&argv)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    ConvertOutput {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        command: format!("regcache {}", argv.join(" ")),
    }
}
