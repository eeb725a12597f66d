//! `[shared]`: the S3-compatible tier the replicas share (the store builds
//! it; these are its settings as the server validates them).
//!
//! Absent, there is no shared tier. The secret access key comes from a file
//! or a variable, never the TOML, and is redacted in `Debug`; without an
//! access key, the AWS environment or instance role is used.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::EnvSource;

/// `[shared]` as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SharedSection {
    /// The bucket (required).
    pub bucket: Option<String>,
    /// A prefix of every key (e.g. `"regcache/"`).
    pub prefix: String,
    /// An S3-compatible endpoint URL (MinIO, Ceph, R2); none: AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`); default: true when
    /// `endpoint` is set, false otherwise.
    pub path_style: Option<bool>,
    /// With `secret_access_key_file` or `secret_access_key_env`; none: the
    /// AWS environment or instance role.
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub secret_access_key_env: Option<String>,
}

impl Default for SharedSection {
    fn default() -> Self {
        SharedSection {
            bucket: None,
            prefix: String::new(),
            endpoint: None,
            region: "us-east-1".into(),
            path_style: None,
            access_key_id: None,
            secret_access_key_file: None,
            secret_access_key_env: None,
        }
    }
}

/// The validated `[shared]`.
#[derive(Clone)]
pub struct SharedSettings {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: Option<String>,
    /// Set exactly when `access_key_id` is. Never log it.
    pub secret_access_key: Option<String>,
}

impl fmt::Debug for SharedSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSettings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `[shared]` checked into [`SharedSettings`].
pub(super) fn validate_shared(
    s: &SharedSection,
    env: &dyn EnvSource,
    problems: &mut Vec<String>,
) -> Option<SharedSettings> {
    let before = problems.len();
    let bucket = match s.bucket.as_deref() {
        Some(b) if !b.trim().is_empty() => Some(b.to_owned()),
        _ => {
            problems.push("shared.bucket is required".into());
            None
        }
    };
    if let Some(e) = &s.endpoint {
        match url::Url::parse(e) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.username().is_empty()
                    && u.password().is_none() => {}
            _ => problems.push(format!(
                "shared.endpoint = {e:?} is not an http(s) URL without credentials, such as http://127.0.0.1:9000"
            )),
        }
    }
    if s.region.trim().is_empty() {
        problems.push("shared.region must not be empty".into());
    }
    let secret = match (&s.secret_access_key_file, &s.secret_access_key_env) {
        (Some(_), Some(_)) => {
            problems.push(
                "shared: give at most one of secret_access_key_file and secret_access_key_env"
                    .into(),
            );
            None
        }
        (Some(path), None) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => {
                problems.push(format!(
                    "shared.secret_access_key_file {}: cannot read: {e}",
                    path.display()
                ));
                None
            }
        },
        (None, Some(var)) => match env.var(var) {
            Some(v) => Some(v),
            None => {
                problems.push(format!(
                    "shared.secret_access_key_env names {var:?}, which is not set"
                ));
                None
            }
        },
        (None, None) => None,
    };
    let has_secret_source = s.secret_access_key_file.is_some() || s.secret_access_key_env.is_some();
    match (&s.access_key_id, has_secret_source) {
        (Some(id), _) if id.trim().is_empty() => {
            problems.push("shared.access_key_id must not be empty".into());
        }
        (Some(_), false) => problems.push(
            "shared.access_key_id needs secret_access_key_file or secret_access_key_env".into(),
        ),
        (None, true) => problems.push(
            "shared: a secret access key needs access_key_id (or give neither: the AWS environment or instance role)"
                .into(),
        ),
        _ => {}
    }
    if problems.len() > before {
        return None;
    }
    Some(SharedSettings {
        bucket: bucket?,
        prefix: s.prefix.clone(),
        endpoint: s.endpoint.clone(),
        region: s.region.clone(),
        path_style: s.path_style.unwrap_or(s.endpoint.is_some()),
        access_key_id: s.access_key_id.clone(),
        secret_access_key: secret,
    })
}
