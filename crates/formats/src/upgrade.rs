//! Schema 1 → Docker Schema 2 ("upgrade"), byte for byte what containers/image
//! 5.23 writes for `skopeo copy --format v2s2` from a Schema 1 source, so an
//! engine that refuses Schema 1 (containerd 2.x) can pull an old image and
//! gets the digests skopeo would have produced.
//!
//! containers/image does it in three steps, reproduced here:
//!
//! 1. `Schema1FromManifest` decodes every `v1Compatibility` into its
//!    `Schema1V1Compatibility` struct (Go's decoder: keys match fields
//!    case-insensitively, the last matching key wins, `null` changes
//!    nothing), checks the v1 ID chain and drops entries whose ID repeats
//!    the next (older) one (`fixManifestLayers`). See [`plan`].
//! 2. `ToSchema2Config` decodes the top entry's raw JSON into a map of raw
//!    values, deletes `id`, `parent`, `parent_id`, `layer_id`, `throwaway`
//!    and `Size`, adds `rootfs` (`{"type":"layers","diff_ids":[…]}`, the
//!    list omitted when empty) and `history` (one item per entry, oldest
//!    first: `created`, `author`, `created_by` = the entry's
//!    `container_config.Cmd` joined by spaces, `comment`, `empty_layer` =
//!    `throwaway`), and marshals the map: keys sorted, values compacted with
//!    HTML escaping (gojson's E1/E2/E3).
//! 3. `convertToManifestSchema2` lists the non-`throwaway` layers oldest
//!    first as `application/vnd.docker.image.rootfs.diff.tar.gzip`
//!    descriptors (sizes of the blobs) and marshals a compact manifest in
//!    Go struct order. See [`Plan::build`].
//!
//! One path is not reproduced: for an image built by Docker older than
//! 1.8.3, containers/image first re-encodes the top entry through its full
//! `V1Image` struct; that is refused here ([`UpgradeError::LegacyDockerVersion`]).

use std::borrow::Cow;

use crate::digest::Digest;
use crate::error::ErrorCode;
use crate::gojson::{self, SyntaxError, TimeError, Timestamp};
use crate::manifest::Schema1;
use crate::media_type::{DOCKER_CONFIG, DOCKER_LAYER_GZIP, SCHEMA2};

mod decode;
#[cfg(test)]
use decode::version_less;
use decode::{check_top, decode_v1_compat};

/// Why a Schema 1 manifest cannot be upgraded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("schema 1 manifest has no fsLayers")]
    NoLayers,
    #[error("schema 1 manifest has {fs_layers} fsLayers but {history} history entries")]
    LengthMismatch { fs_layers: usize, history: usize },
    #[error("v1Compatibility of history entry {index} is not valid JSON: {error}")]
    InvalidJson { index: usize, error: SyntaxError },
    #[error(
        "v1Compatibility of history entry {index}: cannot unmarshal {found} into field {field} of type {go_type}"
    )]
    WrongType {
        index: usize,
        field: &'static str,
        found: &'static str,
        go_type: &'static str,
    },
    #[error("v1Compatibility of history entry {index}: {error}")]
    InvalidTimestamp { index: usize, error: TimeError },
    #[error("image ID {0:?} is invalid")]
    InvalidId(String),
    #[error("invalid parent ID in the base layer of the image")]
    BaseHasParent,
    #[error("ID {0} appears multiple times in manifest")]
    DuplicateId(String),
    #[error("invalid parent ID: expected {expected}, got {got:?}")]
    BrokenChain { expected: String, got: String },
    #[error(
        "image built by Docker {0}: containers/image re-encodes configs older than 1.8.3, which regcache does not reproduce"
    )]
    LegacyDockerVersion(String),
    #[error("{got} diff IDs for {expected} non-empty layers")]
    LayerCountMismatch { expected: usize, got: usize },
}

impl UpgradeError {
    /// `MANIFEST_INVALID` for a malformed manifest; `UNSUPPORTED` for a
    /// valid one this conversion does not handle.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            UpgradeError::LegacyDockerVersion(_) => ErrorCode::Unsupported,
            _ => ErrorCode::ManifestInvalid,
        }
    }
}

/// What the converter needs to know about one non-empty layer blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerFacts {
    /// sha256 of the uncompressed layer (the blob itself when it is a plain tar).
    pub diff_id: Digest,
    /// Size of the (compressed) blob, as in the Schema 2 descriptor.
    pub size: u64,
}

/// The generated config and manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgraded {
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
}

/// One decoded `Schema1V1Compatibility`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct V1Compat {
    id: String,
    parent: String,
    comment: String,
    created: Option<Timestamp>,
    cmd: Vec<String>,
    author: String,
    throwaway: bool,
}

/// A validated Schema 1 manifest (after containers/image's duplicate-ID
/// removal), ready to be built once the layers' diff IDs are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `fsLayers`, newest first.
    fs_layers: Vec<Digest>,
    /// Raw `v1Compatibility` of the newest entry.
    top: String,
    /// Decoded entries, newest first.
    compat: Vec<V1Compat>,
}

/// Validate `s1` as containers/image's `Schema1FromManifest` does.
pub fn plan(s1: &Schema1) -> Result<Plan, UpgradeError> {
    if s1.fs_layers.len() != s1.history.len() {
        return Err(UpgradeError::LengthMismatch {
            fs_layers: s1.fs_layers.len(),
            history: s1.history.len(),
        });
    }
    if s1.fs_layers.is_empty() {
        return Err(UpgradeError::NoLayers);
    }
    let mut compat = Vec::with_capacity(s1.history.len());
    for (index, h) in s1.history.iter().enumerate() {
        compat.push(decode_v1_compat(index, h.as_bytes())?);
    }
    let mut fs_layers = s1.fs_layers.clone();
    let mut history: Vec<&str> = s1.history.iter().map(String::as_str).collect();
    // fixManifestLayers
    for c in &compat {
        if !is_v1_id(&c.id) {
            return Err(UpgradeError::InvalidId(c.id.clone()));
        }
    }
    if compat.last().is_some_and(|c| !c.parent.is_empty()) {
        return Err(UpgradeError::BaseHasParent);
    }
    let mut seen = std::collections::HashSet::new();
    let mut last: Option<&str> = None;
    for c in &compat {
        if last != Some(c.id.as_str()) && seen.contains(c.id.as_str()) {
            return Err(UpgradeError::DuplicateId(c.id.clone()));
        }
        last = Some(&c.id);
        seen.insert(c.id.as_str());
    }
    for i in (0..compat.len().saturating_sub(1)).rev() {
        if compat[i].id == compat[i + 1].id {
            compat.remove(i);
            fs_layers.remove(i);
            history.remove(i);
        } else if compat[i].parent != compat[i + 1].id {
            return Err(UpgradeError::BrokenChain {
                expected: compat[i + 1].id.clone(),
                got: compat[i].parent.clone(),
            });
        }
    }
    let top = history.first().copied().unwrap_or_default().to_owned();
    check_top(top.as_bytes())?;
    Ok(Plan {
        fs_layers,
        top,
        compat,
    })
}

/// [`plan`] then [`Plan::build`].
pub fn upgrade(s1: &Schema1, layers: &[LayerFacts]) -> Result<Upgraded, UpgradeError> {
    plan(s1)?.build(layers)
}

impl Plan {
    /// The blobs of the non-empty layers, oldest first: the layers of the
    /// Schema 2 manifest, whose diff IDs [`Plan::build`] needs in this order.
    /// A blob may appear more than once.
    pub fn layers(&self) -> Vec<Digest> {
        self.fs_layers
            .iter()
            .zip(&self.compat)
            .rev()
            .filter(|(_, c)| !c.throwaway)
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// The config and the manifest, given the facts of [`Plan::layers`], in order.
    pub fn build(&self, layers: &[LayerFacts]) -> Result<Upgraded, UpgradeError> {
        let blobs = self.layers();
        if blobs.len() != layers.len() {
            return Err(UpgradeError::LayerCountMismatch {
                expected: blobs.len(),
                got: layers.len(),
            });
        }
        let config = self.config(layers)?;
        let config_digest = Digest::sha256_of(&config);
        let mut m = Vec::with_capacity(256 + 160 * layers.len());
        m.extend_from_slice(b"{\"schemaVersion\":2,\"mediaType\":");
        gojson::append_string(&mut m, SCHEMA2);
        m.extend_from_slice(b",\"config\":");
        descriptor(&mut m, DOCKER_CONFIG, config.len() as u64, &config_digest);
        m.extend_from_slice(b",\"layers\":[");
        for (i, (blob, facts)) in blobs.iter().zip(layers).enumerate() {
            if i > 0 {
                m.push(b',');
            }
            descriptor(&mut m, DOCKER_LAYER_GZIP, facts.size, blob);
        }
        m.extend_from_slice(b"]}");
        let manifest_digest = Digest::sha256_of(&m);
        Ok(Upgraded {
            config,
            config_digest,
            manifest: m,
            manifest_digest,
        })
    }

    /// `ToSchema2Config`.
    fn config(&self, layers: &[LayerFacts]) -> Result<Vec<u8>, UpgradeError> {
        let top_error = |error| UpgradeError::InvalidJson { index: 0, error };
        let members = gojson::top_level_members(self.top.as_bytes()).map_err(top_error)?;

        let mut rootfs = b"{\"type\":\"layers\"".to_vec();
        if !layers.is_empty() {
            rootfs.extend_from_slice(b",\"diff_ids\":[");
            for (i, l) in layers.iter().enumerate() {
                if i > 0 {
                    rootfs.push(b',');
                }
                gojson::append_string(&mut rootfs, l.diff_id.as_str());
            }
            rootfs.push(b']');
        }
        rootfs.push(b'}');

        let mut history = b"[".to_vec();
        for (i, (index, c)) in self.compat.iter().enumerate().rev().enumerate() {
            if i > 0 {
                history.push(b',');
            }
            history.extend_from_slice(b"{\"created\":\"");
            c.created
                .unwrap_or_default()
                .append_rfc3339_nano(&mut history)
                .map_err(|error| UpgradeError::InvalidTimestamp { index, error })?;
            history.push(b'"');
            let created_by = c.cmd.join(" ");
            for (key, value) in [
                ("author", c.author.as_str()),
                ("created_by", created_by.as_str()),
                ("comment", c.comment.as_str()),
            ] {
                if !value.is_empty() {
                    history.push(b',');
                    gojson::append_string(&mut history, key);
                    history.push(b':');
                    gojson::append_string(&mut history, value);
                }
            }
            if c.throwaway {
                history.extend_from_slice(b",\"empty_layer\":true");
            }
            history.push(b'}');
        }
        history.push(b']');

        const DROPPED: [&str; 8] = [
            "id",
            "parent",
            "parent_id",
            "layer_id",
            "throwaway",
            "Size",
            "rootfs",
            "history",
        ];
        let mut out: Vec<(Cow<'_, str>, Cow<'_, [u8]>, bool)> = members
            .into_iter()
            .filter(|(k, _)| !DROPPED.contains(&k.as_ref()))
            .map(|(k, v)| (k, Cow::Borrowed(v), true))
            .collect();
        out.push((Cow::Borrowed("rootfs"), Cow::Owned(rootfs), false));
        out.push((Cow::Borrowed("history"), Cow::Owned(history), false));
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

        let mut config = Vec::with_capacity(self.top.len() + 512);
        config.push(b'{');
        for (i, (key, value, raw)) in out.iter().enumerate() {
            if i > 0 {
                config.push(b',');
            }
            gojson::append_string(&mut config, key);
            config.push(b':');
            if *raw {
                gojson::append_compact(&mut config, value);
            } else {
                config.extend_from_slice(value);
            }
        }
        config.push(b'}');
        Ok(config)
    }
}

/// A `Schema2Descriptor` without `urls`.
fn descriptor(out: &mut Vec<u8>, media_type: &str, size: u64, digest: &Digest) {
    out.extend_from_slice(b"{\"mediaType\":");
    gojson::append_string(out, media_type);
    out.extend_from_slice(format!(",\"size\":{size},\"digest\":").as_bytes());
    gojson::append_string(out, digest.as_str());
    out.push(b'}');
}

/// containers/image's `validHex`: 64 lowercase hex digits.
fn is_v1_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
#[path = "upgrade_tests.rs"]
mod tests;
