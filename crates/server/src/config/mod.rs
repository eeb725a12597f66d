//! Configuration: embedded defaults, then an optional TOML file, then environment
//! variables, then command-line flags; validated once, reporting every problem.
//!
//! `Config::default()` *is* the run-anywhere setup (listen on `0.0.0.0:5000`,
//! data in `./regcache-data`, Docker Hub upstream), so `regcache serve` needs no file.
//! Unknown keys are rejected: we own the whole file, a typo should fail loudly
//! rather than be ignored.
//!
//! - `file.rs`: the TOML file as written (serde types and their defaults).
//! - `layers.rs`: the environment and command-line layers over it.
//! - `validate.rs`: checking the result into [`Settings`] (`settings.rs`),
//!   with the TLS files loaded by `tls.rs`.
//! - `auth.rs`: `[auth]` and `[[access]]`, checked into [`AuthSettings`].
//! - `keys.rs`: unknown keys, found from the serde types in `file.rs`, and
//!   where a value failed (so every failing value is reported, not the first).
//! - `cross.rs`: checks across sections (rules naming unknown upstreams).
//! - `cluster.rs`, `shared.rs`: `[cluster]` (replicas, the internal
//!   listener, the shared secret) and `[shared]` (the S3 tier).
//! - `bounds.rs`: the bounds of every numeric setting, and upstream hosts
//!   that are no host (`0.0.0.0`, `::`).
//!
//! Names: [`Config`] and the `*Section` types are the file as written;
//! [`Settings`] and the `*Settings` types are what validation makes of it;
//! the registry client's `ClientConfig` comes from
//! [`UpstreamSettings::client_config`].

mod auth;
mod bounds;
mod cluster;
mod cross;
mod file;
mod keys;
mod layers;
mod limits;
mod settings;
mod shared;
mod tls;
mod validate;

use std::fmt;
use std::path::Path;

pub use auth::{AuthMode, AuthSection, AuthSettings, ChallengeKind, TOKEN_TTL_SECS};
pub use cluster::{
    ADVERTISE_ENV, ClusterSecret, ClusterSection, ClusterSettings, DEFAULT_SECRET_ENV, PeerSource,
};
pub use file::{
    ByteSize, CacheSection, Config, LogSection, Schema1Section, UpstreamSection, UpstreamSections,
};
pub use layers::{EnvSource, OVERRIDE_ENV_VARS, Overrides, ProcessEnv, ServeEnv};
pub use limits::{AdminSection, AdminToken, ConnLimits, LimitsSection};
pub use settings::{Settings, TlsSettings, UpstreamSettings};
pub use shared::{SharedSection, SharedSettings};

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Defaults, then `file` (if any), then the environment, then flags; validated.
    pub fn load(
        file: Option<&Path>,
        env: &dyn EnvSource,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let (mut cfg, mut problems) = match file {
            None => (Config::default(), Vec::new()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    problems: vec![format!("cannot read config file {}: {e}", path.display())],
                })?;
                Config::from_toml_lenient(&text, &path.display().to_string())?
            }
        };
        cfg.apply_env(env, &mut problems);
        cfg.apply_overrides(overrides, &mut problems);
        cfg.validate(env, problems)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    /// `text` as a config file in a fresh directory, removed with the guard.
    pub(crate) fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("regcache.toml");
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    /// An environment holding only `pairs`.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}
