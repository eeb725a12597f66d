//! Driving `skopeo copy` (skopeo 1.9.3 from Debian) against loopback
//! registries: always `--insecure-policy` and no TLS verification, and the
//! tool's stderr in every failure message.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;

use crate::registry::Credentials;
use crate::tools::require_program;

/// The manifest format skopeo writes (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkopeoFormat {
    /// Docker Schema 2 (`v2s2`); an OCI index becomes a Docker manifest list.
    V2s2,
    /// OCI image manifest / index.
    Oci,
    /// Docker Schema 1, signed; needs `compatibility.schema1.enabled` on a
    /// distribution destination.
    V2s1,
}

impl SkopeoFormat {
    pub fn as_arg(self) -> &'static str {
        match self {
            SkopeoFormat::V2s2 => "v2s2",
            SkopeoFormat::Oci => "oci",
            SkopeoFormat::V2s1 => "v2s1",
        }
    }
}

/// Options beyond source, destination, format and `--all`.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    pub src_creds: Option<Credentials>,
    pub dest_creds: Option<Credentials>,
    /// `--registries-conf FILE` (skopeo 1.9 ignores `CONTAINERS_REGISTRIES_CONF`).
    pub registries_conf: Option<PathBuf>,
}

/// A failed `skopeo` run.
#[derive(Debug, Clone)]
pub struct SkopeoError {
    pub args: Vec<String>,
    pub status: Option<i32>,
    pub stderr: String,
}

impl fmt::Display for SkopeoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`skopeo {}` failed (exit {:?}):\n{}",
            self.args.join(" "),
            self.status,
            self.stderr.trim_end()
        )
    }
}

impl std::error::Error for SkopeoError {}

/// The installed `skopeo`.
#[derive(Debug, Clone)]
pub struct Skopeo {
    program: PathBuf,
}

impl Skopeo {
    /// # Panics
    /// When skopeo is not installed (with the command that installs it).
    pub fn new() -> Self {
        Self {
            program: require_program("skopeo", "skopeo"),
        }
    }

    /// `skopeo copy --insecure-policy [--format F] [--all] SRC DST` with TLS
    /// verification off on both sides. Sources and destinations are skopeo
    /// references: `oci:DIR:REF`, `docker://127.0.0.1:PORT/NAME:TAG`, `dir:PATH`.
    ///
    /// # Panics
    /// When skopeo fails; the message has its arguments and stderr.
    pub async fn copy(&self, src: &str, dst: &str, format: Option<SkopeoFormat>, all: bool) {
        if let Err(e) = self
            .try_copy(src, dst, format, all, &CopyOptions::default())
            .await
        {
            panic!("{e}");
        }
    }

    /// [`Skopeo::copy`] with options, returning the failure instead of panicking
    /// (for tests that expect skopeo to fail).
    pub async fn try_copy(
        &self,
        src: &str,
        dst: &str,
        format: Option<SkopeoFormat>,
        all: bool,
        options: &CopyOptions,
    ) -> Result<(), SkopeoError> {
        let mut args: Vec<String> = Vec::new();
        args.push("--insecure-policy".into());
        if let Some(conf) = &options.registries_conf {
            args.push("--registries-conf".into());
            args.push(conf.to_string_lossy().into_owned());
        }
        args.push("copy".into());
        // `--src-tls-verify` only applies to docker:// sources; skopeo
        // rejects nothing by passing it for others, so always pass both.
        args.push("--src-tls-verify=false".into());
        args.push("--dest-tls-verify=false".into());
        if let Some(format) = format {
            args.push("--format".into());
            args.push(format.as_arg().into());
        }
        if all {
            args.push("--all".into());
        }
        if let Some(c) = &options.src_creds {
            args.push("--src-creds".into());
            args.push(format!("{}:{}", c.username, c.password));
        }
        if let Some(c) = &options.dest_creds {
            args.push("--dest-creds".into());
            args.push(format!("{}:{}", c.username, c.password));
        }
        args.push(src.into());
        args.push(dst.into());
        self.run(args).await.map(drop)
    }

    /// Runs `skopeo ARGS…`, returning stdout.
    pub async fn run(&self, args: Vec<String>) -> Result<Vec<u8>, SkopeoError> {
        let output = tokio::process::Command::new(&self.program)
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.program.display()));
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(SkopeoError {
                args: redact_creds(args),
                status: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
    }
}

impl Default for Skopeo {
    fn default() -> Self {
        Self::new()
    }
}

/// Replaces the value after `--src-creds`/`--dest-creds` for error messages.
fn redact_creds(mut args: Vec<String>) -> Vec<String> {
    for i in 1..args.len() {
        if args[i - 1].ends_with("-creds") {
            args[i] = "<redacted>".into();
        }
    }
    args
}
