//! Manifests parsed from their raw bytes, which are kept.
//!
//! The digest of a manifest covers its exact bytes, so a pull by digest must be
//! answered with those bytes, never with a re-serialisation. [`Manifest`] therefore
//! holds the raw bytes (cheap to clone, `Arc<[u8]>`), the sha256 of them, the
//! media type it was classified as, and a typed, read-only view of the fields the
//! proxy needs (descriptors for prefetching and the list path, Schema 1 fields).
//!
//! Classification follows spec 01 §1.5 (distribution 2.8's rules, with the
//! precedence the spec recommends for a proxy): the `mediaType` field when
//! present, else a usable upstream `Content-Type`, else the document's
//! structure. [`Manifest::handler_kind`] additionally reproduces the
//! different, quirky classification distribution's GET handler uses for
//! content negotiation (spec 02 §2.3).
//!
//! Parsing never panics on any input; malformed documents become a
//! [`ManifestError`] whose message is suitable as a `MANIFEST_INVALID` detail.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;
use crate::error::{ErrorCode, RegistryError};
use crate::media_type::{self, MediaType};

/// Why bytes are not a manifest regcache can store and serve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, trailing garbage, a field of the wrong type (e.g. a float or
    /// string `schemaVersion`, a negative `size`), a malformed digest, a
    /// duplicate key, or a missing required field. The text is serde_json's,
    /// which names the field and position.
    #[error("manifest is not valid: {0}")]
    Json(String),
    #[error("manifest is not a JSON object")]
    NotAnObject,
    #[error("manifest has no schemaVersion")]
    MissingSchemaVersion,
    #[error("unsupported manifest schemaVersion {0}")]
    UnsupportedSchemaVersion(i64),
    /// The `mediaType` field names no manifest type (distribution: "unrecognized manifest").
    #[error("unrecognized manifest mediaType {0:?}")]
    UnknownMediaType(String),
    /// The `mediaType` field contradicts `schemaVersion` (a Schema 1 type in a
    /// version 2 document or the reverse).
    #[error("mediaType {media_type:?} is not valid for schemaVersion {schema_version}")]
    VersionMismatch {
        media_type: String,
        schema_version: i64,
    },
    /// A Schema 2 document must carry exactly the Schema 2 `mediaType`;
    /// distribution refuses anything else with this message.
    #[error("mediaType in manifest should be '{expected}' not '{found}'")]
    WrongMediaType {
        expected: &'static str,
        found: String,
    },
    /// An image manifest with a `manifests` member (distribution 2.8.2+
    /// refuses such ambiguous documents, which could be read either way).
    #[error("expected manifest but found index")]
    ManifestLooksLikeIndex,
    /// An index or list with `config` or `layers` members.
    #[error("expected index but found manifest")]
    IndexLooksLikeManifest,
    /// Schema 1 pairs `fsLayers[i]` with `history[i]`; unequal lengths can't be served.
    #[error("schema 1 manifest has {fs_layers} fsLayers but {history} history entries")]
    Schema1LengthMismatch { fs_layers: usize, history: usize },
}

impl ManifestError {
    /// Always `MANIFEST_INVALID`: every variant means the document itself is bad.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::ManifestInvalid
    }
}

impl From<serde_json::Error> for ManifestError {
    fn from(e: serde_json::Error) -> Self {
        ManifestError::Json(truncate(&e.to_string()))
    }
}

/// A content descriptor (`mediaType`, `digest`, `size`, …) as found in
/// `config`, `layers`, `manifests` and `subject`.
///
/// `digest` and `size` are required and validated (a descriptor the proxy
/// cannot verify content against is useless); the rest default when absent
/// or `null`, as Go's decoder does, so the proxy does not refuse documents
/// distribution would serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Kept as a string: layer and config types are open-ended and passed through.
    #[serde(default, deserialize_with = "null_default")]
    pub media_type: String,
    pub digest: Digest,
    /// A non-negative integer; a float or negative size is an error.
    pub size: u64,
    /// Foreign / non-distributable layers name where to fetch them (spec 01 §1.3).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub urls: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Only meaningful inside a list/index; it drives the linux/amd64 pick.
    /// Boxed because most descriptors (layers, configs) have none, and an
    /// inline `Platform` would double the size of every cached descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Box<Platform>>,
    /// OCI 1.1 artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// The `platform` object of a list/index entry. Values use Go's GOARCH/GOOS spellings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub features: Vec<String>,
}

/// A single-platform image manifest: Docker Schema 2 or OCI (including OCI 1.1 artifacts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub config: Descriptor,
    /// Base layer first. May be empty for artifacts.
    #[serde(default, deserialize_with = "null_default")]
    pub layers: Vec<Descriptor>,
    /// OCI 1.1: the manifest this one refers to (referrers API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

/// A Docker manifest list or an OCI image index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// In document order, which matters: the linux/amd64 pick takes the first match.
    #[serde(default, deserialize_with = "null_default")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// The entry distribution 2.8 serves to a client that does not accept lists
    /// (spec 02 §2.3 item 2): the first entry, in document order, whose platform
    /// has exactly `architecture == "amd64"` and `os == "linux"`.
    ///
    /// Case-sensitive; `variant`, `os.version` and `features` are ignored; an
    /// entry without `platform` never matches. No other platform is ever
    /// chosen, whatever the client runs on.
    pub fn linux_amd64(&self) -> Option<&Descriptor> {
        self.manifests.iter().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.architecture == "amd64" && p.os == "linux")
        })
    }
}

/// The fields of a Docker Schema 1 manifest the proxy needs.
///
/// Signature verification and the canonical payload are jws.rs's business;
/// here we only record whether a `signatures` member is present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema1 {
    pub name: String,
    pub tag: String,
    pub architecture: String,
    /// `fsLayers[].blobSum`, newest layer FIRST (the reverse of Schema 2).
    pub fs_layers: Vec<Digest>,
    /// `history[].v1Compatibility`, same length and order as `fs_layers`.
    pub history: Vec<String>,
    /// The document has a non-null `signatures` member (the `+prettyjws` form).
    pub signed: bool,
}

/// The typed view of a manifest, by family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// Docker Schema 2 or OCI image manifest.
    Image(ImageManifest),
    /// Docker manifest list or OCI image index.
    Index(Index),
    /// Docker Schema 1, signed or not.
    Schema1(Schema1),
}

/// Which image manifest a Schema 1 form of a manifest is converted from; see
/// [`Manifest::schema1_source`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema1Source<'a> {
    /// An image manifest (Docker Schema 2 or OCI): convert the manifest itself.
    Itself,
    /// A list or index: fetch this entry, its first linux/amd64 one
    /// ([`Index::linux_amd64`]). What to do with it is up to its type (only
    /// an image manifest converts; distribution serves anything else as is).
    Entry(&'a Descriptor),
    /// Already Schema 1: there is nothing to convert.
    AlreadySchema1,
}

/// A list or index without a linux/amd64 entry has no Schema 1 form.
/// Registries answer 404 `MANIFEST_UNKNOWN` ([`Self::error_code`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {} {digest} has no linux/amd64 entry, so there is no Schema 1 form of it",
    if *media_type == MediaType::OciIndex { "image index" } else { "manifest list" }
)]
pub struct NoLinuxAmd64Entry {
    /// The list's or index's media type.
    pub media_type: MediaType,
    /// The list's or index's digest.
    pub digest: Digest,
}

impl NoLinuxAmd64Entry {
    /// Always `MANIFEST_UNKNOWN`, as distribution answers.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::ManifestUnknown
    }

    /// `MANIFEST_UNKNOWN` with this error's message. (distribution's own
    /// negotiation answers with the plain default message instead; see
    /// [`accept::Decision::NoAmd64Entry`](crate::accept::Decision::NoAmd64Entry).)
    pub fn registry_error(&self) -> RegistryError {
        RegistryError::with_message(self.error_code(), self.to_string())
    }
}

/// How distribution 2.8's manifest GET handler classifies a stored manifest
/// for content negotiation (spec 02 §2.3), which is NOT always its media type.
///
/// The quirk: the handler decides "list" or "OCI index" from the document's
/// `mediaType` *field*. A list/index whose field is absent (an OCI index
/// without `mediaType`) matches neither and falls through to the handler's
/// default, Schema 1. None of the negotiation checks apply to Schema 1, so such
/// an index is served as-is to every client, even one that does not accept OCI
/// indexes, with `Content-Type: application/vnd.oci.image.index.v1+json`
/// (verified against distribution 2.8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandlerKind {
    Schema1,
    Schema2,
    OciManifest,
    List,
    OciIndex,
}

/// A parsed manifest that keeps its exact bytes.
///
/// Built only by [`Manifest::parse`] (one field is private), so on
/// construction `digest` is the sha256 of `raw` and `kind` is the view of `raw`
/// that `media_type` names. The fields are public for reading and for moving
/// the typed view out; changing one of them breaks those invariants.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The exact bytes, shared: clones are cheap and the bytes served by
    /// digest are the bytes received.
    pub raw: Arc<[u8]>,
    /// The type the manifest was classified as, and the `Content-Type` to serve
    /// it with (for a list/index without `mediaType`, the OCI index type unless
    /// the upstream's `Content-Type` said otherwise).
    pub media_type: MediaType,
    /// sha256 of `raw`.
    pub digest: Digest,
    /// The typed, read-only view.
    pub kind: ManifestKind,
    /// The `mediaType` field, if present and non-empty; needed for
    /// [`handler_kind`](Self::handler_kind).
    declared: Option<MediaType>,
}

impl Manifest {
    /// Parse and validate `raw`.
    ///
    /// `content_type_hint` is the upstream's `Content-Type`, if any; it is only
    /// consulted when the document has no `mediaType` field (spec 01 §1.5), and
    /// only if it names a manifest type of the right schema version (parameters
    /// such as `; charset=utf-8` are dropped first). Useless values like
    /// `application/octet-stream` or `text/plain` fall back to the structure.
    ///
    /// Beyond classification this checks what distribution checks when it
    /// parses: a Schema 2 document must declare exactly the Schema 2 media type,
    /// an OCI manifest must not have `manifests` and a list/index must not have
    /// `config`/`layers` (the 2.8.2 ambiguity fix), descriptor digests must be
    /// valid and sizes non-negative integers, and a Schema 1 document must have
    /// as many `history` entries as `fsLayers`.
    ///
    /// `digest` is always the sha256 of `raw`. For a signed Schema 1 document
    /// that is NOT the `Docker-Content-Digest` distribution reports (that one
    /// covers the canonical unsigned payload; see jws.rs).
    pub fn parse(
        raw: impl Into<Arc<[u8]>>,
        content_type_hint: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        let raw: Arc<[u8]> = raw.into();
        let probe = probe(&raw)?;
        let (media_type, declared) = classify_probe(&probe, content_type_hint)?;
        let kind = match media_type {
            MediaType::Schema1 | MediaType::Schema1Signed => {
                ManifestKind::Schema1(parse_schema1(&raw)?)
            }
            MediaType::Schema2 => {
                if declared != Some(MediaType::Schema2) {
                    return Err(ManifestError::WrongMediaType {
                        expected: media_type::SCHEMA2,
                        found: truncate(probe.media_type.as_deref().unwrap_or("")),
                    });
                }
                ManifestKind::Image(serde_json::from_slice(&raw)?)
            }
            MediaType::OciManifest => {
                if probe.manifests.is_some() {
                    return Err(ManifestError::ManifestLooksLikeIndex);
                }
                ManifestKind::Image(serde_json::from_slice(&raw)?)
            }
            MediaType::ManifestList | MediaType::OciIndex => {
                if probe.config.is_some() || probe.layers.is_some() {
                    return Err(ManifestError::IndexLooksLikeManifest);
                }
                ManifestKind::Index(serde_json::from_slice(&raw)?)
            }
        };
        let digest = Digest::sha256_of(&raw);
        Ok(Manifest {
            raw,
            media_type,
            declared,
            digest,
            kind,
        })
    }

    /// The exact bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The `mediaType` field of the document, if present and non-empty.
    pub fn declared_media_type(&self) -> Option<MediaType> {
        self.declared
    }

    pub fn as_image(&self) -> Option<&ImageManifest> {
        match &self.kind {
            ManifestKind::Image(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_index(&self) -> Option<&Index> {
        match &self.kind {
            ManifestKind::Index(i) => Some(i),
            _ => None,
        }
    }

    pub fn as_schema1(&self) -> Option<&Schema1> {
        match &self.kind {
            ManifestKind::Schema1(s) => Some(s),
            _ => None,
        }
    }

    /// Which image manifest the Schema 1 form of this (top-level) manifest is
    /// converted from: the manifest itself if it is an image manifest, the
    /// first linux/amd64 entry of a list or index (spec 02 §2.3 item 2; the
    /// caller fetches it), nothing for Schema 1, or [`NoLinuxAmd64Entry`].
    ///
    /// Docker lists and OCI indexes are treated alike; whether an OCI index
    /// may be narrowed at all is a negotiation question ([`crate::accept`]).
    pub fn schema1_source(&self) -> Result<Schema1Source<'_>, NoLinuxAmd64Entry> {
        match &self.kind {
            ManifestKind::Image(_) => Ok(Schema1Source::Itself),
            ManifestKind::Schema1(_) => Ok(Schema1Source::AlreadySchema1),
            ManifestKind::Index(index) => {
                index
                    .linux_amd64()
                    .map(Schema1Source::Entry)
                    .ok_or_else(|| NoLinuxAmd64Entry {
                        media_type: self.media_type,
                        digest: self.digest.clone(),
                    })
            }
        }
    }

    /// The classification distribution 2.8's GET handler uses for negotiation,
    /// including its quirk for an index without `mediaType`; see [`HandlerKind`].
    pub fn handler_kind(&self) -> HandlerKind {
        match self.media_type {
            MediaType::Schema1 | MediaType::Schema1Signed => HandlerKind::Schema1,
            MediaType::Schema2 => HandlerKind::Schema2,
            MediaType::OciManifest => HandlerKind::OciManifest,
            MediaType::ManifestList | MediaType::OciIndex => match self.declared {
                Some(MediaType::ManifestList) => HandlerKind::List,
                Some(MediaType::OciIndex) => HandlerKind::OciIndex,
                // The quirk: no (or an unexpected) mediaType field.
                _ => HandlerKind::Schema1,
            },
        }
    }
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("raw", &format_args!("<{} bytes>", self.raw.len()))
            .field("media_type", &self.media_type)
            .field("declared", &self.declared)
            .field("digest", &self.digest)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Classify `raw` without building the typed view (spec 01 §1.5).
///
/// Cheaper than [`Manifest::parse`] and checks less: it reads only
/// `schemaVersion`, `mediaType`, `manifests` and `signatures`, so a document
/// can classify successfully and still fail to parse (bad descriptor digest,
/// Schema 2 without its `mediaType`, …).
pub fn classify(raw: &[u8], content_type_hint: Option<&str>) -> Result<MediaType, ManifestError> {
    let probe = probe(raw)?;
    classify_probe(&probe, content_type_hint).map(|(t, _)| t)
}

/// The few top-level members classification looks at.
///
/// Deserialising into a struct (not a `Value`) makes a duplicated member an
/// error, so a document cannot say one `mediaType` to us and another to a
/// client that keeps the last occurrence.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<IgnoredAny>,
    #[serde(default)]
    config: Option<IgnoredAny>,
    #[serde(default)]
    layers: Option<IgnoredAny>,
    #[serde(default)]
    signatures: Option<IgnoredAny>,
}

fn probe(raw: &[u8]) -> Result<Probe, ManifestError> {
    // serde's derived struct visitor also accepts a JSON array (fields by
    // position); a manifest must be an object.
    match raw
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        Some(b'{') => Ok(serde_json::from_slice(raw)?),
        Some(_) => Err(ManifestError::NotAnObject),
        None => Err(ManifestError::Json("empty document".to_owned())),
    }
}

/// Spec 01 §1.5 with the proxy's precedence. Returns the media type and the
/// declared `mediaType` field (non-empty only).
fn classify_probe(
    probe: &Probe,
    hint: Option<&str>,
) -> Result<(MediaType, Option<MediaType>), ManifestError> {
    let version = probe
        .schema_version
        .ok_or(ManifestError::MissingSchemaVersion)?;
    // An absent and an empty mediaType are the same thing to distribution.
    let declared = match probe.media_type.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            MediaType::from_manifest_type(s)
                .ok_or_else(|| ManifestError::UnknownMediaType(truncate(s)))?,
        ),
    };
    let mismatch = |t: MediaType| ManifestError::VersionMismatch {
        media_type: t.as_str().to_owned(),
        schema_version: version,
    };
    match version {
        1 => {
            if let Some(t) = declared.filter(|t| !t.is_schema1()) {
                return Err(mismatch(t));
            }
            // The two Schema 1 types differ only in whether the document is
            // signed, which the bytes tell reliably; neither the field nor
            // the hint gets a say.
            let t = if probe.signatures.is_some() {
                MediaType::Schema1Signed
            } else {
                MediaType::Schema1
            };
            Ok((t, declared))
        }
        2 => {
            if let Some(t) = declared {
                return if t.is_schema1() {
                    Err(mismatch(t))
                } else {
                    Ok((t, declared))
                };
            }
            // A Schema 1 hint (including application/json) cannot describe a
            // version 2 document: ignore it like any other useless type.
            if let Some(t) = hint.and_then(hint_media_type).filter(|t| !t.is_schema1()) {
                return Ok((t, None));
            }
            let t = if probe.manifests.is_some() {
                MediaType::OciIndex
            } else {
                MediaType::OciManifest
            };
            Ok((t, None))
        }
        v => Err(ManifestError::UnsupportedSchemaVersion(v)),
    }
}

/// A `Content-Type` value minus parameters, if it is one of the seven manifest
/// types (the six plus `application/json`, distribution's Schema 1 alias).
fn hint_media_type(hint: &str) -> Option<MediaType> {
    let essence = hint
        .split(';')
        .next()
        .unwrap_or("")
        .trim_matches(|c: char| c.is_ascii_whitespace());
    match essence {
        media_type::APPLICATION_JSON => Some(MediaType::Schema1),
        other => MediaType::from_manifest_type(other),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Schema1Doc {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    tag: String,
    #[serde(default, deserialize_with = "null_default")]
    architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    fs_layers: Vec<FsLayer>,
    #[serde(default, deserialize_with = "null_default")]
    history: Vec<HistoryEntry>,
    /// Typed only to insist on an array; the content is jws.rs's concern.
    #[serde(default)]
    signatures: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct FsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: Digest,
}

#[derive(Deserialize)]
struct HistoryEntry {
    #[serde(rename = "v1Compatibility", default, deserialize_with = "null_default")]
    v1_compatibility: String,
}

fn parse_schema1(raw: &[u8]) -> Result<Schema1, ManifestError> {
    let doc: Schema1Doc = serde_json::from_slice(raw)?;
    if doc.fs_layers.len() != doc.history.len() {
        return Err(ManifestError::Schema1LengthMismatch {
            fs_layers: doc.fs_layers.len(),
            history: doc.history.len(),
        });
    }
    Ok(Schema1 {
        name: doc.name,
        tag: doc.tag,
        architecture: doc.architecture,
        fs_layers: doc.fs_layers.into_iter().map(|l| l.blob_sum).collect(),
        history: doc
            .history
            .into_iter()
            .map(|h| h.v1_compatibility)
            .collect(),
        signed: doc.signatures.is_some(),
    })
}

/// Go decodes `null` into a zero value; do the same so `"urls": null` is not an error.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// serde_json messages can quote input values; a hostile manifest must not
/// produce a megabyte-long error detail.
fn truncate(s: &str) -> String {
    crate::error::truncate(s, 300)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn desc(mt: &str, n: u8, size: u64) -> serde_json::Value {
        json!({"mediaType": mt, "digest": d(n), "size": size})
    }

    fn schema2() -> serde_json::Value {
        json!({
            "schemaVersion": 2,
            "mediaType": media_type::SCHEMA2,
            "config": desc(media_type::DOCKER_CONFIG, 1, 100),
            "layers": [desc(media_type::DOCKER_LAYER_GZIP, 2, 200), desc(media_type::DOCKER_LAYER_GZIP, 3, 300)],
        })
    }

    fn list() -> serde_json::Value {
        json!({
            "schemaVersion": 2,
            "mediaType": media_type::MANIFEST_LIST,
            "manifests": [
                {"mediaType": media_type::SCHEMA2, "digest": d(4), "size": 10,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                {"mediaType": media_type::SCHEMA2, "digest": d(5), "size": 11,
                 "platform": {"architecture": "amd64", "os": "linux", "os.version": "x",
                              "os.features": ["f"], "features": ["sse4"]}},
            ],
        })
    }

    fn parse(v: &serde_json::Value, hint: Option<&str>) -> Result<Manifest, ManifestError> {
        Manifest::parse(serde_json::to_vec(v).unwrap(), hint)
    }

    #[test]
    fn schema2_keeps_bytes_and_fields() {
        let raw = serde_json::to_vec_pretty(&schema2()).unwrap();
        let m = Manifest::parse(raw.clone(), Some("application/octet-stream")).unwrap();
        assert_eq!(m.as_bytes(), &raw[..]);
        assert_eq!(m.digest, Digest::sha256_of(&raw));
        assert_eq!(m.media_type, MediaType::Schema2);
        assert_eq!(m.handler_kind(), HandlerKind::Schema2);
        let img = m.as_image().unwrap();
        assert_eq!(img.config.digest.as_str(), d(1));
        assert_eq!(img.config.size, 100);
        assert_eq!(img.layers.len(), 2);
        assert_eq!(img.layers[1].media_type, media_type::DOCKER_LAYER_GZIP);
        assert!(img.subject.is_none());
        // Cheap clone shares the bytes.
        let c = m.clone();
        assert!(Arc::ptr_eq(&c.raw, &m.raw));
        assert!(format!("{m:?}").contains("bytes>"));
    }

    #[test]
    fn schema2_requires_exact_media_type() {
        // Via the hint: the document itself has no mediaType.
        let mut v = schema2();
        v.as_object_mut().unwrap().remove("mediaType");
        let err = parse(&v, Some(media_type::SCHEMA2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "mediaType in manifest should be '{}' not ''",
                media_type::SCHEMA2
            )
        );
        assert_eq!(err.error_code(), ErrorCode::ManifestInvalid);
        // Without the hint the same document is structurally an OCI manifest.
        assert_eq!(parse(&v, None).unwrap().media_type, MediaType::OciManifest);
        // A different (wrong-case) field is unrecognised.
        v["mediaType"] = json!("application/vnd.docker.distribution.manifest.V2+json");
        assert!(matches!(
            parse(&v, None),
            Err(ManifestError::UnknownMediaType(_))
        ));
    }

    #[test]
    fn classification_precedence() {
        // 1. The mediaType field wins over the hint.
        let m = parse(&list(), Some(media_type::OCI_INDEX)).unwrap();
        assert_eq!(m.media_type, MediaType::ManifestList);
        assert_eq!(m.declared_media_type(), Some(MediaType::ManifestList));

        // 2. No field: a manifest-type hint (parameters dropped) is used.
        let mut v = list();
        v.as_object_mut().unwrap().remove("mediaType");
        let hint = format!("{} ; charset=utf-8", media_type::MANIFEST_LIST);
        let m = parse(&v, Some(&hint)).unwrap();
        assert_eq!(m.media_type, MediaType::ManifestList);
        assert_eq!(m.declared_media_type(), None);

        // 3. Useless hints fall back to structure.
        for hint in [
            None,
            Some("text/plain"),
            Some("application/octet-stream"),
            Some(""),
        ] {
            assert_eq!(parse(&v, hint).unwrap().media_type, MediaType::OciIndex);
            assert_eq!(
                classify(&serde_json::to_vec(&v).unwrap(), hint).unwrap(),
                MediaType::OciIndex
            );
        }
        // A Schema 1 hint cannot describe a version 2 document.
        assert_eq!(
            parse(&v, Some("application/json")).unwrap().media_type,
            MediaType::OciIndex
        );

        // "manifests": null is not a manifests member.
        let v = json!({"schemaVersion": 2, "manifests": null, "config": desc(media_type::OCI_CONFIG, 1, 2)});
        assert_eq!(parse(&v, None).unwrap().media_type, MediaType::OciManifest);
        // An empty mediaType is the same as none.
        let v = json!({"schemaVersion": 2, "mediaType": "", "manifests": []});
        assert_eq!(parse(&v, None).unwrap().media_type, MediaType::OciIndex);
    }

    #[test]
    fn handler_kind_quirk_for_index_without_media_type() {
        let mut v = list();
        v.as_object_mut().unwrap().remove("mediaType");
        // Classified (and served) as an OCI index...
        let m = parse(&v, None).unwrap();
        assert_eq!(m.media_type, MediaType::OciIndex);
        // ...but negotiated like Schema 1, even when the hint named a list.
        assert_eq!(m.handler_kind(), HandlerKind::Schema1);
        let m = parse(&v, Some(media_type::MANIFEST_LIST)).unwrap();
        assert_eq!(m.handler_kind(), HandlerKind::Schema1);
        // With the field, the handler sees what the field says.
        assert_eq!(
            parse(&list(), None).unwrap().handler_kind(),
            HandlerKind::List
        );
        v["mediaType"] = json!(media_type::OCI_INDEX);
        assert_eq!(
            parse(&v, None).unwrap().handler_kind(),
            HandlerKind::OciIndex
        );
        // An OCI manifest without mediaType is still an OCI manifest to the handler.
        let v =
            json!({"schemaVersion": 2, "config": desc(media_type::OCI_CONFIG, 1, 2), "layers": []});
        assert_eq!(
            parse(&v, None).unwrap().handler_kind(),
            HandlerKind::OciManifest
        );
    }

    #[test]
    fn oci_manifest_with_artifact_fields() {
        let v = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": "application/vnd.example+json",
            "config": {"mediaType": media_type::OCI_EMPTY,
                       "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                       "size": 2, "data": "e30="},
            "layers": [{"mediaType": media_type::OCI_LAYER_ND_GZIP, "digest": d(9), "size": 5,
                        "urls": ["https://example.com/x"], "annotations": {"a": "b"}}],
            "subject": desc(media_type::OCI_MANIFEST, 7, 500),
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        });
        let m = parse(&v, None).unwrap();
        assert_eq!(m.handler_kind(), HandlerKind::OciManifest);
        let img = m.as_image().unwrap();
        assert_eq!(
            img.artifact_type.as_deref(),
            Some("application/vnd.example+json")
        );
        assert_eq!(img.subject.as_ref().unwrap().digest.as_str(), d(7));
        assert_eq!(img.layers[0].urls, ["https://example.com/x"]);
        assert_eq!(img.layers[0].annotations["a"], "b");
        assert_eq!(img.annotations.len(), 1);
    }

    #[test]
    fn index_and_linux_amd64() {
        let m = parse(&list(), None).unwrap();
        let idx = m.as_index().unwrap();
        assert_eq!(idx.manifests.len(), 2);
        let p = idx.manifests[1].platform.as_ref().unwrap();
        assert_eq!(p.os_version.as_deref(), Some("x"));
        assert_eq!(p.os_features, ["f"]);
        assert_eq!(p.features, ["sse4"]);
        assert_eq!(
            idx.manifests[0]
                .platform
                .as_ref()
                .unwrap()
                .variant
                .as_deref(),
            Some("v8")
        );
        // Second entry is the first linux/amd64 one.
        assert_eq!(idx.linux_amd64().unwrap().digest.as_str(), d(5));

        let entry = |arch: &str, os: &str, n: u8| {
            json!({"mediaType": media_type::SCHEMA2, "digest": d(n), "size": 1,
                   "platform": {"architecture": arch, "os": os, "variant": "v3"}})
        };
        let v = json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [
            desc(media_type::SCHEMA2, 1, 1),           // no platform: never matches
            entry("AMD64", "linux", 2),                 // case-sensitive
            entry("amd64", "windows", 3),
            entry("amd64", "linux", 4),                 // variant ignored
            entry("amd64", "linux", 5),                 // not first
        ]});
        let m = parse(&v, None).unwrap();
        assert_eq!(
            m.as_index().unwrap().linux_amd64().unwrap().digest.as_str(),
            d(4)
        );
        let v = json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [
            desc(media_type::SCHEMA2, 1, 1), entry("arm64", "linux", 2)]});
        assert!(
            parse(&v, None)
                .unwrap()
                .as_index()
                .unwrap()
                .linux_amd64()
                .is_none()
        );
    }

    #[test]
    fn schema1_source_is_the_image_or_the_linux_amd64_entry() {
        let image = parse(&schema2(), None).unwrap();
        assert_eq!(image.schema1_source(), Ok(Schema1Source::Itself));

        let m = parse(&list(), None).unwrap();
        let Ok(Schema1Source::Entry(entry)) = m.schema1_source() else {
            panic!("expected the linux/amd64 entry");
        };
        assert_eq!(entry.digest.as_str(), d(5));

        // An OCI index is narrowed the same way.
        let mut v = list();
        v["mediaType"] = json!(media_type::OCI_INDEX);
        v["manifests"][1]["mediaType"] = json!(media_type::OCI_MANIFEST);
        let m = parse(&v, None).unwrap();
        assert!(
            matches!(m.schema1_source(), Ok(Schema1Source::Entry(e)) if e.digest.as_str() == d(5))
        );

        let mut v = list();
        v["manifests"][1]["platform"]["os"] = json!("Linux");
        let m = parse(&v, None).unwrap();
        let err = m.schema1_source().unwrap_err();
        assert_eq!(err.digest, m.digest);
        assert_eq!(err.error_code(), ErrorCode::ManifestUnknown);
        let e = err.registry_error();
        assert_eq!(e.code, ErrorCode::ManifestUnknown);
        assert_eq!(
            e.message,
            format!(
                "the manifest list {} has no linux/amd64 entry, so there is no Schema 1 form of it",
                m.digest
            )
        );

        v["mediaType"] = json!(media_type::OCI_INDEX);
        let m = parse(&v, None).unwrap();
        assert!(
            m.schema1_source()
                .unwrap_err()
                .to_string()
                .starts_with(&format!("the image index {} has no", m.digest))
        );

        let s1 = json!({"schemaVersion": 1, "name": "a", "tag": "b", "architecture": "amd64",
                        "fsLayers": [], "history": []});
        assert_eq!(
            parse(&s1, None).unwrap().schema1_source(),
            Ok(Schema1Source::AlreadySchema1)
        );
    }

    #[test]
    fn schema1_signed_and_unsigned() {
        let mut v = json!({
            "name": "library/example", "tag": "latest", "architecture": "amd64",
            "fsLayers": [{"blobSum": d(1)}, {"blobSum": d(2)}],
            "history": [{"v1Compatibility": "{\"id\":\"a\"}"}, {"v1Compatibility": "{}"}],
            "schemaVersion": 1,
        });
        let m = parse(&v, Some("text/plain")).unwrap();
        assert_eq!(m.media_type, MediaType::Schema1);
        assert_eq!(m.handler_kind(), HandlerKind::Schema1);
        let s = m.as_schema1().unwrap();
        assert_eq!(
            (s.name.as_str(), s.tag.as_str(), s.architecture.as_str()),
            ("library/example", "latest", "amd64")
        );
        assert_eq!(s.fs_layers[0].as_str(), d(1));
        assert_eq!(s.history[0], "{\"id\":\"a\"}");
        assert!(!s.signed);

        v["signatures"] = json!([{"header": {}, "signature": "x", "protected": "y"}]);
        let m = parse(&v, Some(media_type::SCHEMA1)).unwrap();
        assert_eq!(m.media_type, MediaType::Schema1Signed);
        assert!(m.as_schema1().unwrap().signed);

        v["signatures"] = json!("nope");
        assert!(matches!(parse(&v, None), Err(ManifestError::Json(_))));

        v["signatures"] = json!(null);
        v["history"] = json!([{"v1Compatibility": "{}"}]);
        assert_eq!(
            parse(&v, None).unwrap_err(),
            ManifestError::Schema1LengthMismatch {
                fs_layers: 2,
                history: 1
            }
        );

        // A version 2 type declared in a version 1 document contradicts itself.
        let v = json!({"schemaVersion": 1, "mediaType": media_type::SCHEMA2});
        assert!(matches!(
            parse(&v, None),
            Err(ManifestError::VersionMismatch { .. })
        ));
        let v = json!({"schemaVersion": 2, "mediaType": media_type::SCHEMA1_SIGNED});
        assert!(matches!(
            parse(&v, None),
            Err(ManifestError::VersionMismatch { .. })
        ));
    }

    #[test]
    fn ambiguous_documents_are_refused() {
        let v = json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
                       "config": desc(media_type::OCI_CONFIG, 1, 1), "manifests": []});
        assert_eq!(
            parse(&v, None).unwrap_err(),
            ManifestError::ManifestLooksLikeIndex
        );
        let v = json!({"schemaVersion": 2, "mediaType": media_type::MANIFEST_LIST,
                       "manifests": [], "layers": []});
        assert_eq!(
            parse(&v, None).unwrap_err(),
            ManifestError::IndexLooksLikeManifest
        );
        let v = json!({"schemaVersion": 2, "manifests": [], "config": desc(media_type::OCI_CONFIG, 1, 1)});
        assert_eq!(
            parse(&v, None).unwrap_err(),
            ManifestError::IndexLooksLikeManifest
        );
    }

    #[test]
    fn invalid_documents() {
        let cases: &[&[u8]] = &[
            b"",
            b"   ",
            b"[2]",
            b"null",
            b"\"x\"",
            b"{",
            b"{}",
            br#"{"schemaVersion": 2.0, "mediaType": "application/vnd.oci.image.index.v1+json"}"#,
            br#"{"schemaVersion": "2"}"#,
            br#"{"schemaVersion": 3}"#,
            br#"{"schemaVersion": -1}"#,
            br#"{"schemaVersion": null}"#,
            br#"{"schemaVersion": 2, "mediaType": 5}"#,
            br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json"}"#,
            br#"{"schemaVersion": 2, "schemaVersion": 2, "manifests": []}"#,
            br#"{"schemaVersion": 2, "manifests": []} x"#,
            br#"{"schemaVersion": 2}"#,
            b"\xff\xfe{}",
        ];
        for raw in cases {
            let err = Manifest::parse(raw.to_vec(), None).unwrap_err();
            assert_eq!(err.error_code(), ErrorCode::ManifestInvalid);
            assert!(!err.to_string().is_empty());
        }

        // Descriptor validation.
        let mut v = schema2();
        v["layers"][0]["size"] = json!(-1);
        assert!(parse(&v, None).unwrap_err().to_string().contains("-1"));
        let mut v = schema2();
        v["layers"][0]["size"] = json!(1.5);
        assert!(parse(&v, None).is_err());
        let mut v = schema2();
        v["config"]["digest"] = json!("sha256:ABC");
        assert!(
            parse(&v, None)
                .unwrap_err()
                .to_string()
                .contains("sha256:ABC")
        );
        let mut v = schema2();
        v["config"].as_object_mut().unwrap().remove("digest");
        assert!(parse(&v, None).unwrap_err().to_string().contains("digest"));
        let mut v = schema2();
        v.as_object_mut().unwrap().remove("config");
        assert!(parse(&v, None).is_err());
    }

    #[test]
    fn nulls_default_like_go() {
        let v = json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "annotations": null,
                       "manifests": [{"mediaType": null, "digest": d(1), "size": 0, "urls": null,
                                      "annotations": null, "platform": null}]});
        let m = parse(&v, None).unwrap();
        let e = &m.as_index().unwrap().manifests[0];
        assert_eq!(e.media_type, "");
        assert!(e.urls.is_empty() && e.platform.is_none());
    }

    #[test]
    fn hostile_input_gives_bounded_message() {
        let big = "A".repeat(1_000_000);
        let raw = format!(r#"{{"schemaVersion": "{big}"}}"#);
        let err = Manifest::parse(raw.into_bytes(), None).unwrap_err();
        assert!(err.to_string().len() < 1000);
        let raw = format!(r#"{{"schemaVersion": 2, "mediaType": "{big}"}}"#);
        assert!(
            Manifest::parse(raw.into_bytes(), None)
                .unwrap_err()
                .to_string()
                .len()
                < 1000
        );
        // Deep nesting hits serde_json's recursion limit, not the stack.
        let deep = format!(
            r#"{{"schemaVersion": 2, "x": {}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(Manifest::parse(deep.into_bytes(), None).is_err());
    }

    #[test]
    fn descriptor_serde_round_trip() {
        let m = parse(&list(), None).unwrap();
        let e = &m.as_index().unwrap().manifests[1];
        let back: Descriptor = serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap();
        assert_eq!(&back, e);
        let json = serde_json::to_value(e).unwrap();
        assert_eq!(json["platform"]["os.version"], "x");
        assert!(json.get("urls").is_none());
    }
}
