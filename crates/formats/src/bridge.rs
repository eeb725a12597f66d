//! OCI → Docker Schema 2: the "Docker twin" of an OCI image manifest and the
//! Docker manifest list of an OCI index, byte for byte what containers/image
//! 5.23 (`skopeo copy --format v2s2`, `--all` for an index) writes (spec 09).
//!
//! A twin keeps the config blob and every layer blob (same digests, same
//! sizes); only media types change, and the document is compact JSON in the
//! field order of containers/image's Go structs:
//! `{"schemaVersion":2,"mediaType":…,"config":{"mediaType","size","digest"[,"urls"]},"layers":[…]}`.
//! Manifest annotations, descriptor annotations, `subject` and
//! `artifactType` have no place in Schema 2 and are dropped, as skopeo drops
//! them.
//!
//! What a Docker engine cannot run is refused, never served half-right
//! ([`BridgeError`]): an OCI artifact (config type other than the OCI image
//! config), zstd layers, layer types that are neither tar nor tar+gzip, and
//! non-distributable layers whose URLs are not http(s). An index keeps only
//! the entries that are images for a real platform: attestation manifests
//! (BuildKit's `unknown/unknown` entries marked
//! `vnd.docker.reference.type = attestation-manifest`), entries with an
//! `artifactType`, entries without a platform and nested indexes are dropped.

use crate::digest::Digest;
use crate::error::ErrorCode;
use crate::gojson;
use crate::manifest::{Descriptor, ImageManifest, Index, Platform};
use crate::media_type::{self as mt};

/// Why an OCI image or index has no Docker form a Docker engine could use.
/// Every variant is answered with 404 `UNSUPPORTED` by the server.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    /// The manifest is an OCI artifact, not a runnable image.
    #[error(
        "it is an OCI artifact (config media type {config_media_type:?}), not an image a Docker engine can run"
    )]
    NotAnImage { config_media_type: String },
    /// A zstd layer: no Docker engine before 23 unpacks zstd, and Docker
    /// Schema 2 has no zstd layer type.
    #[error(
        "layer {digest} is zstd-compressed ({media_type}); Docker Schema 2 carries only tar and tar+gzip layers"
    )]
    Zstd { digest: Digest, media_type: String },
    /// A layer type that is neither tar nor tar+gzip (encrypted, an artifact blob…).
    #[error(
        "layer {digest} has media type {media_type:?}, which a Docker engine cannot unpack (only tar and tar+gzip layers are bridged)"
    )]
    UnknownLayer { digest: Digest, media_type: String },
    /// A non-distributable layer whose URLs a Docker engine cannot fetch.
    #[error(
        "layer {digest} is non-distributable and its URL {url:?} is not http(s), so a Docker engine could not fetch it"
    )]
    UnfetchableForeign { digest: Digest, url: String },
    /// A foreign layer in an image rendered as Schema 1, which has no URLs:
    /// an old engine would ask the registry for a blob it never had.
    #[error(
        "layer {digest} is a foreign (non-distributable) layer fetched from {url:?}; Schema 1 cannot say where it lives"
    )]
    ForeignInSchema1 { digest: Digest, url: String },
    /// An index none of whose entries is an image for a real platform.
    #[error("the index lists no image a Docker engine can run (only attestations or artifacts)")]
    NoImages,
}

impl BridgeError {
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::Unsupported
    }

    /// The layer the refusal is about, if it is about one.
    pub fn layer(&self) -> Option<&Digest> {
        match self {
            BridgeError::Zstd { digest, .. }
            | BridgeError::UnknownLayer { digest, .. }
            | BridgeError::UnfetchableForeign { digest, .. }
            | BridgeError::ForeignInSchema1 { digest, .. } => Some(digest),
            BridgeError::NotAnImage { .. } | BridgeError::NoImages => None,
        }
    }
}

/// A generated manifest: its bytes and their digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

impl Generated {
    fn of(bytes: Vec<u8>) -> Generated {
        let digest = Digest::sha256_of(&bytes);
        Generated { bytes, digest }
    }
}

/// The Docker media type of an OCI image layer, or why there is none
/// (containers/image's `convertToManifestSchema2` table, plus the URL check).
fn docker_layer_type(layer: &Descriptor) -> Result<&'static str, BridgeError> {
    let refuse_urls = |layer: &Descriptor| match layer
        .urls
        .iter()
        .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
    {
        Some(url) => Err(BridgeError::UnfetchableForeign {
            digest: layer.digest.clone(),
            url: url.chars().take(200).collect(),
        }),
        None => Ok(()),
    };
    match layer.media_type.as_str() {
        mt::OCI_LAYER_GZIP | mt::DOCKER_LAYER_GZIP => Ok(mt::DOCKER_LAYER_GZIP),
        mt::OCI_LAYER_TAR | mt::DOCKER_LAYER_TAR => Ok(mt::DOCKER_LAYER_TAR),
        mt::OCI_LAYER_ND_GZIP | mt::DOCKER_LAYER_FOREIGN_GZIP => {
            refuse_urls(layer)?;
            Ok(mt::DOCKER_LAYER_FOREIGN_GZIP)
        }
        mt::OCI_LAYER_ND_TAR | mt::DOCKER_LAYER_FOREIGN_TAR => {
            refuse_urls(layer)?;
            Ok(mt::DOCKER_LAYER_FOREIGN_TAR)
        }
        t @ (mt::OCI_LAYER_ZSTD | mt::OCI_LAYER_ND_ZSTD | mt::DOCKER_LAYER_ZSTD) => {
            Err(BridgeError::Zstd {
                digest: layer.digest.clone(),
                media_type: t.to_owned(),
            })
        }
        other => Err(BridgeError::UnknownLayer {
            digest: layer.digest.clone(),
            media_type: other.chars().take(200).collect(),
        }),
    }
}

/// `{"mediaType":…,"size":…,"digest":…[,"urls":[…]]}`: containers/image's
/// `Schema2Descriptor`.
fn append_descriptor(out: &mut Vec<u8>, media_type: &str, d: &Descriptor) {
    out.extend_from_slice(b"{\"mediaType\":");
    gojson::append_string(out, media_type);
    out.extend_from_slice(format!(",\"size\":{},\"digest\":", d.size).as_bytes());
    gojson::append_string(out, d.digest.as_str());
    if !d.urls.is_empty() {
        out.extend_from_slice(b",\"urls\":[");
        for (i, u) in d.urls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            gojson::append_string(out, u);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// The Docker twin of an OCI image manifest. The config may also carry the
/// Docker config type (some tools write such mixed manifests); anything else
/// is an artifact.
pub fn docker_twin(image: &ImageManifest) -> Result<Generated, BridgeError> {
    if image.config.media_type != mt::OCI_CONFIG && image.config.media_type != mt::DOCKER_CONFIG {
        return Err(BridgeError::NotAnImage {
            config_media_type: image.config.media_type.chars().take(200).collect(),
        });
    }
    let layer_types = image
        .layers
        .iter()
        .map(docker_layer_type)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(128 + 160 * image.layers.len());
    out.extend_from_slice(b"{\"schemaVersion\":2,\"mediaType\":");
    gojson::append_string(&mut out, mt::SCHEMA2);
    out.extend_from_slice(b",\"config\":");
    append_descriptor(&mut out, mt::DOCKER_CONFIG, &image.config);
    out.extend_from_slice(b",\"layers\":[");
    for (i, (layer, t)) in image.layers.iter().zip(layer_types).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        append_descriptor(&mut out, t, layer);
    }
    out.extend_from_slice(b"]}");
    Ok(Generated::of(out))
}

/// An image rendered as Schema 1 has no URLs: foreign layers that live
/// elsewhere would be asked of the registry, which never had them.
pub fn check_schema1_layers(image: &ImageManifest) -> Result<(), BridgeError> {
    for layer in &image.layers {
        if let Some(url) = layer.urls.first() {
            return Err(BridgeError::ForeignInSchema1 {
                digest: layer.digest.clone(),
                url: url.chars().take(200).collect(),
            });
        }
    }
    Ok(())
}

/// Is this index entry an image for a real platform (kept in the Docker
/// list), rather than an attestation, an artifact or a nested index?
pub fn is_runnable_entry(d: &Descriptor) -> bool {
    let image_type = d.media_type == mt::OCI_MANIFEST || d.media_type == mt::SCHEMA2;
    let attestation = d
        .annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest");
    let platform = d
        .platform
        .as_ref()
        .is_some_and(|p| !p.os.is_empty() && p.os != "unknown" && p.architecture != "unknown");
    image_type && platform && !attestation && d.artifact_type.is_none()
}

/// One entry of the Docker list: the index entry and the Docker manifest
/// it becomes (its twin, or itself when it already is Docker Schema 2).
#[derive(Clone, Debug)]
pub struct ListEntry<'a> {
    pub entry: &'a Descriptor,
    pub digest: Digest,
    pub size: u64,
}

/// The Docker manifest list of an index's runnable entries
/// ([`is_runnable_entry`]), each pointing at its Docker manifest, in index
/// order: containers/image's `ToSchema2List` after the instances were
/// copied as Schema 2.
pub fn docker_list(entries: &[ListEntry<'_>]) -> Result<Generated, BridgeError> {
    if entries.is_empty() {
        return Err(BridgeError::NoImages);
    }
    let mut out = Vec::with_capacity(96 + 260 * entries.len());
    out.extend_from_slice(b"{\"schemaVersion\":2,\"mediaType\":");
    gojson::append_string(&mut out, mt::MANIFEST_LIST);
    out.extend_from_slice(b",\"manifests\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let d = Descriptor {
            media_type: mt::SCHEMA2.to_owned(),
            digest: e.digest.clone(),
            size: e.size,
            urls: e.entry.urls.clone(),
            annotations: Default::default(),
            platform: None,
            artifact_type: None,
        };
        append_descriptor(&mut out, mt::SCHEMA2, &d);
        out.pop(); // reopen the object for `platform`
        out.extend_from_slice(b",\"platform\":");
        append_platform(&mut out, e.entry.platform.as_deref());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Ok(Generated::of(out))
}

/// containers/image's `Schema2PlatformSpec`: `architecture`, `os`, then
/// `os.version`, `os.features` and `variant` when set (`features` is never
/// set from OCI).
fn append_platform(out: &mut Vec<u8>, p: Option<&Platform>) {
    let empty = Platform::default();
    let p = p.unwrap_or(&empty);
    out.extend_from_slice(b"{\"architecture\":");
    gojson::append_string(out, &p.architecture);
    out.extend_from_slice(b",\"os\":");
    gojson::append_string(out, &p.os);
    if let Some(v) = p.os_version.as_deref().filter(|v| !v.is_empty()) {
        out.extend_from_slice(b",\"os.version\":");
        gojson::append_string(out, v);
    }
    if !p.os_features.is_empty() {
        out.extend_from_slice(b",\"os.features\":[");
        for (i, f) in p.os_features.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            gojson::append_string(out, f);
        }
        out.push(b']');
    }
    if let Some(v) = p.variant.as_deref().filter(|v| !v.is_empty()) {
        out.extend_from_slice(b",\"variant\":");
        gojson::append_string(out, v);
    }
    out.push(b'}');
}

/// The index entries a Docker list keeps, in order.
pub fn runnable_entries(index: &Index) -> impl Iterator<Item = &Descriptor> {
    index.manifests.iter().filter(|d| is_runnable_entry(d))
}

#[cfg(test)]
#[path = "bridge_tests.rs"]
mod tests;
