//! Schema 2 → Schema 1 conversion: the canonical (unsigned) payload that
//! distribution 2.8.3's `configManifestBuilder` produces (spec 03), byte for
//! byte, so the proxy's `Docker-Content-Digest` equals distribution's.
//!
//! The config is read the way Go's `json.Unmarshal` reads it into
//! distribution's `imageConfig` struct, corner cases included, because the
//! result must be the same for every config distribution accepts:
//!
//! * keys select fields case-insensitively (Go's folding, see
//!   [`gojson::field_name_matches`]); every matching key is decoded **in
//!   document order**, so the last matching occurrence wins whatever its case
//!   (Go 1.20 matches each key on its own; an exact-case key only wins when it
//!   comes last — the spec's parenthetical "an exact-case key wins" does not
//!   describe what Go does);
//! * `null` leaves a string, bool or time field as it was, and sets the
//!   `rootfs` pointer and the `history` / `diff_ids` slices to nil;
//! * a repeated `rootfs` object is merged into the previous one, and a
//!   repeated `history` array decodes element `i` into the previous element
//!   `i` (Go reuses slice elements, golang/go#21092), so fields absent from
//!   the later array survive;
//! * any wrong JSON type for an interpreted field, a `created` that Go's
//!   `Time.UnmarshalJSON` refuses, or one `Time.MarshalJSON` refuses is an
//!   error.
//!
//! Every error maps to `MANIFEST_INVALID`. Nothing here panics or recurses on
//! untrusted input.

use std::borrow::Cow;

use sha2::{Digest as _, Sha256, Sha384};

use crate::digest::{Digest, DigestError};
use crate::error::ErrorCode;
use crate::gojson::{self, Kind, SyntaxError, TimeError, Timestamp};

/// Hex part of [`EMPTY_LAYER_DIGEST`].
const EMPTY_LAYER_HEX: &str = "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

/// Digest of [`EMPTY_LAYER_BYTES`]: the blob every `empty_layer` history step
/// points at in a converted manifest.
pub const EMPTY_LAYER_DIGEST: &str =
    "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

/// distribution's `gzippedEmptyTar`: a gzip stream inflating to 1024 zero
/// bytes (an empty tar). The proxy serves it itself for
/// `GET/HEAD …/blobs/`[`EMPTY_LAYER_DIGEST`], since upstreams built by
/// BuildKit never have it.
pub const EMPTY_LAYER_BYTES: [u8; 32] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x09, 0x6e, 0x88, 0x00, 0xff, 0x62, 0x18, 0x05, 0xa3, 0x60, 0x14,
    0x8c, 0x58, 0x00, 0x08, 0x00, 0x00, 0xff, 0xff, 0x2e, 0xaf, 0xb5, 0xef, 0x00, 0x04, 0x00, 0x00,
];

/// Why a Schema 2 image cannot be converted. Every variant is a
/// `MANIFEST_INVALID` (400) for the client, as with distribution.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The config blob is not JSON Go would parse.
    #[error("image config is not valid JSON: {0}")]
    InvalidJson(#[from] SyntaxError),
    /// An interpreted field holds the wrong JSON type (Go's `UnmarshalTypeError`).
    #[error("json: cannot unmarshal {found} into Go struct field {field} of type {go_type}")]
    WrongType {
        /// Dotted JSON path of the field, e.g. `history.empty_layer`.
        field: &'static str,
        /// The JSON type found.
        found: &'static str,
        /// The Go type distribution decodes into.
        go_type: &'static str,
    },
    /// A history `created` that Go cannot parse or cannot marshal back.
    #[error(transparent)]
    InvalidTimestamp(#[from] TimeError),
    /// `history` absent, `null` or `[]`.
    #[error("empty history when trying to create schema1 manifest")]
    EmptyHistory,
    /// `rootfs` absent or `null` (distribution crashes on a nil pointer here).
    #[error("image config has no rootfs")]
    MissingRootfs,
    /// `rootfs.diff_ids` and the manifest's layers differ in number.
    #[error(
        "number of descriptors and number of layers in rootfs must match: {diff_ids} diff_ids != {layers} layers"
    )]
    LayerCountMismatch { diff_ids: usize, layers: usize },
    /// More non-empty history steps than layers.
    #[error("too many non-empty layers in History section")]
    TooManyNonEmptyLayers,
    /// A manifest layer digest that is not a valid digest.
    #[error("invalid layer digest: {0}")]
    InvalidLayerDigest(#[from] DigestError),
    /// A layer whose media type Schema 1 cannot carry (zstd, encrypted, an artifact type):
    /// an old engine would receive bytes it cannot unpack.
    #[error(
        "layer {index} ({digest}) has media type {media_type:?}, which Schema 1 cannot carry (only gzip or plain tar layers can be converted)"
    )]
    UnsupportedLayer {
        index: usize,
        digest: String,
        media_type: String,
    },
}

impl ConvertError {
    /// The registry error code to answer with: always `MANIFEST_INVALID`.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::ManifestInvalid
    }
}

/// Convert a Schema 2 or OCI image manifest: check that every layer is one Schema 1
/// can carry, then build the canonical payload from the config bytes and the
/// manifest's layer digests (base first). The caller has checked that `config`
/// hashes to `image.config.digest`.
pub fn convert_image(
    image: &crate::manifest::ImageManifest,
    config: &[u8],
    name: &str,
    tag: &str,
) -> Result<Vec<u8>, ConvertError> {
    let mut layers = Vec::with_capacity(image.layers.len());
    for (index, layer) in image.layers.iter().enumerate() {
        if !crate::media_type::layer_fits_schema1(&layer.media_type) {
            return Err(ConvertError::UnsupportedLayer {
                index,
                digest: layer.digest.to_string(),
                media_type: layer.media_type.chars().take(200).collect(),
            });
        }
        layers.push(layer.digest.clone());
    }
    canonical_payload(config, &layers, name, tag)
}

/// The digest of a canonical payload (`Docker-Content-Digest` of the
/// converted manifest).
pub fn canonical_digest(payload: &[u8]) -> Digest {
    Digest::sha256_of(payload)
}

/// [`canonical_payload`] for layer digests that are still strings (as found
/// in a manifest): each is validated first, as distribution's
/// `AppendReference` does before building.
pub fn canonical_payload_from_strs(
    config: &[u8],
    layers: &[&str],
    name: &str,
    tag: &str,
) -> Result<Vec<u8>, ConvertError> {
    let layers = layers
        .iter()
        .map(|l| Digest::parse(l))
        .collect::<Result<Vec<_>, _>>()?;
    canonical_payload(config, &layers, name, tag)
}

/// Build the canonical Schema 1 payload (spec 03 §3.5): `config` is the raw
/// config blob, `layers` the schema-2 `layers[].digest` in manifest order,
/// `name` the repository path the client used and `tag` the requested tag.
///
/// The result is the exact byte string distribution 2.8.3 signs (3-space
/// indent, no trailing newline); its sha256 is [`canonical_digest`].
pub fn canonical_payload(
    config: &[u8],
    layers: &[Digest],
    name: &str,
    tag: &str,
) -> Result<Vec<u8>, ConvertError> {
    gojson::validate(config)?;
    let cfg = decode_config(config)?;
    let history = cfg.history.get(..cfg.history_len).unwrap_or_default();
    let Some((top, older)) = history.split_last() else {
        return Err(ConvertError::EmptyHistory);
    };
    let rootfs = cfg.rootfs.as_ref().ok_or(ConvertError::MissingRootfs)?;
    if rootfs.diff_ids != layers.len() {
        return Err(ConvertError::LayerCountMismatch {
            diff_ids: rootfs.diff_ids,
            layers: layers.len(),
        });
    }

    let n = history.len();
    // Blob digests and non-top v1Compatibility texts, oldest first; the texts
    // live in one arena so the whole conversion makes a handful of allocations.
    let mut blobs: Vec<&str> = Vec::with_capacity(n);
    let mut arena: Vec<u8> = Vec::with_capacity(older.len() * 256 + config.len() + 192);
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(n);
    let mut parent: Option<Hex64> = None;
    let mut next_layer = layers.iter();

    for (i, h) in older.iter().enumerate() {
        let (blob, blob_hex) = pick_blob(h.empty_layer, &mut next_layer)?;
        let id = v1_id(blob_hex, parent.as_ref(), None);
        if i == 0 && !rootfs.base_layer.is_empty() {
            // Windows base layer: entry 0's id is already computed with no
            // parent, but its "parent" member shows this value.
            let sum = Sha384::digest(rootfs.base_layer.as_bytes());
            parent = Some(hex64(sum.get(..32).unwrap_or_default()));
        }
        let start = arena.len();
        arena.extend_from_slice(b"{\"id\":");
        push_hex(&mut arena, &id);
        if let Some(p) = &parent {
            arena.extend_from_slice(b",\"parent\":");
            push_hex(&mut arena, p);
        }
        if !h.comment.is_empty() {
            arena.extend_from_slice(b",\"comment\":");
            gojson::append_string(&mut arena, &h.comment);
        }
        arena.extend_from_slice(b",\"created\":\"");
        h.created.append_rfc3339_nano(&mut arena)?;
        arena.extend_from_slice(b"\",\"container_config\":{\"Cmd\":[");
        gojson::append_string(&mut arena, &h.created_by);
        arena.extend_from_slice(b"]}");
        if !h.author.is_empty() {
            arena.extend_from_slice(b",\"author\":");
            gojson::append_string(&mut arena, &h.author);
        }
        if h.empty_layer {
            arena.extend_from_slice(b",\"throwaway\":true");
        }
        arena.push(b'}');
        spans.push((start, arena.len()));
        blobs.push(blob);
        parent = Some(id);
    }

    let (top_blob, top_hex) = pick_blob(top.empty_layer, &mut next_layer)?;
    let top_id = v1_id(top_hex, parent.as_ref(), Some(config));
    blobs.push(top_blob);

    // The top entry: the config's own members minus rootfs/history, plus
    // id/parent/throwaway, keys in byte order, a repeated key keeping its last
    // value (Go's map[string]*json.RawMessage round trip).
    let mut members: Vec<(&str, TopValue<'_>)> = Vec::with_capacity(cfg.members.len() + 3);
    members.extend(
        cfg.members
            .iter()
            .filter(|(k, _)| k != "rootfs" && k != "history")
            .map(|(k, v)| (k.as_ref(), TopValue::Raw(v))),
    );
    members.push(("id", TopValue::Hex(&top_id)));
    if let Some(p) = &parent {
        members.push(("parent", TopValue::Hex(p)));
    }
    if top.empty_layer {
        members.push(("throwaway", TopValue::True));
    }
    members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes())); // stable: equal keys keep document order
    let top_start = arena.len();
    arena.push(b'{');
    let mut first = true;
    for (i, (key, value)) in members.iter().enumerate() {
        if members.get(i + 1).is_some_and(|(next, _)| next == key) {
            continue; // a later occurrence of the same key wins
        }
        if !first {
            arena.push(b',');
        }
        first = false;
        gojson::append_string(&mut arena, key);
        arena.push(b':');
        match value {
            TopValue::Raw(raw) => gojson::append_compact(&mut arena, raw),
            TopValue::Hex(h) => push_hex(&mut arena, h),
            TopValue::True => arena.extend_from_slice(b"true"),
        }
    }
    arena.push(b'}');
    let top_span = (top_start, arena.len());

    Ok(render(
        name,
        tag,
        &cfg.architecture,
        &blobs,
        top_span,
        &spans,
        &arena,
    ))
}

/// Write the outer document (`json.MarshalIndent(m, "", "   ")`).
fn render(
    name: &str,
    tag: &str,
    arch: &str,
    blobs_oldest_first: &[&str],
    top_span: (usize, usize),
    spans_oldest_first: &[(usize, usize)],
    arena: &[u8],
) -> Vec<u8> {
    let n = blobs_oldest_first.len();
    // Strings grow under E1 (every `"` of a v1Compatibility text gains a `\`);
    // a third on top of the arena covers real configs without reallocating.
    let cap = 160
        + 2 * (name.len() + tag.len() + arch.len())
        + n * 150
        + blobs_oldest_first.iter().map(|b| b.len()).sum::<usize>()
        + arena.len()
        + arena.len() / 3;
    let mut out = Vec::with_capacity(cap);
    out.extend_from_slice(b"{\n   \"schemaVersion\": 1,\n   \"name\": ");
    gojson::append_string(&mut out, name);
    out.extend_from_slice(b",\n   \"tag\": ");
    gojson::append_string(&mut out, tag);
    out.extend_from_slice(b",\n   \"architecture\": ");
    gojson::append_string(&mut out, arch);
    out.extend_from_slice(b",\n   \"fsLayers\": [\n");
    for (i, blob) in blobs_oldest_first.iter().rev().enumerate() {
        out.extend_from_slice(b"      {\n         \"blobSum\": ");
        gojson::append_string(&mut out, blob);
        out.extend_from_slice(if i + 1 < n {
            b"\n      },\n"
        } else {
            b"\n      }\n"
        });
    }
    out.extend_from_slice(b"   ],\n   \"history\": [\n");
    let spans = std::iter::once(&top_span).chain(spans_oldest_first.iter().rev());
    for (i, &(start, end)) in spans.enumerate() {
        out.extend_from_slice(b"      {\n         \"v1Compatibility\": ");
        gojson::append_string_bytes(&mut out, arena.get(start..end).unwrap_or_default());
        out.extend_from_slice(if i + 1 < n {
            b"\n      },\n"
        } else {
            b"\n      }\n"
        });
    }
    out.extend_from_slice(b"   ]\n}");
    out
}

/// A value of the top `v1Compatibility` object.
#[derive(Debug)]
enum TopValue<'a> {
    /// Original JSON text from the config, written through E3.
    Raw(&'a [u8]),
    /// A v1 id, written as a JSON string.
    Hex(&'a Hex64),
    /// `true` (for `throwaway`).
    True,
}

/// A lowercase-hex sha256 (v1 ids are 64 hex characters).
type Hex64 = [u8; 64];

fn hex64(bytes: &[u8]) -> Hex64 {
    let mut out = [b'0'; 64];
    // Both lengths are fixed (32 bytes → 64 chars); a mismatch leaves zeros
    // rather than panicking.
    let _ = hex::encode_to_slice(bytes, &mut out);
    out
}

fn push_hex(out: &mut Vec<u8>, h: &Hex64) {
    out.push(b'"');
    out.extend_from_slice(h);
    out.push(b'"');
}

/// `sha256(blob_hex + " " + parent [+ " " + config])`, the v1 id chain of
/// spec 03 §3.5 (an absent parent hashes as the empty string).
fn v1_id(blob_hex: &str, parent: Option<&Hex64>, config: Option<&[u8]>) -> Hex64 {
    let mut h = Sha256::new();
    h.update(blob_hex.as_bytes());
    h.update(b" ");
    if let Some(p) = parent {
        h.update(p);
    }
    if let Some(c) = config {
        h.update(b" ");
        h.update(c);
    }
    hex64(&h.finalize())
}

/// The blob of one history step: the empty layer, or the next manifest layer.
fn pick_blob<'l>(
    empty: bool,
    layers: &mut std::slice::Iter<'l, Digest>,
) -> Result<(&'l str, &'l str), ConvertError> {
    if empty {
        return Ok((EMPTY_LAYER_DIGEST, EMPTY_LAYER_HEX));
    }
    let layer = layers.next().ok_or(ConvertError::TooManyNonEmptyLayers)?;
    Ok((layer.as_str(), layer.hex()))
}

// ---------------------------------------------------------------------------
// Decoding the config the way Go decodes it into distribution's structs
// ---------------------------------------------------------------------------

/// distribution's `imageHistory`.
#[derive(Clone, Debug, Default)]
struct HistoryEntry<'a> {
    created: Timestamp,
    author: Cow<'a, str>,
    created_by: Cow<'a, str>,
    comment: Cow<'a, str>,
    empty_layer: bool,
}

/// distribution's `imageRootFS` (only what the conversion uses).
#[derive(Clone, Debug, Default)]
struct RootFs<'a> {
    /// `len(DiffIDs)`.
    diff_ids: usize,
    base_layer: Cow<'a, str>,
}

/// distribution's `imageConfig`, plus the raw top-level members.
#[derive(Debug, Default)]
struct Config<'a> {
    rootfs: Option<RootFs<'a>>,
    /// The slice's backing array: never shrinks except on `[]`/`null`, so a
    /// later `history` array decodes into the elements an earlier one left,
    /// like Go's reused backing array.
    history: Vec<HistoryEntry<'a>>,
    /// The slice's length.
    history_len: usize,
    architecture: Cow<'a, str>,
    /// Every top-level member (decoded key, raw value), in document order.
    members: Vec<(Cow<'a, str>, &'a [u8])>,
}

const CONFIG_FIELDS: [&str; 3] = ["rootfs", "history", "architecture"];
const ROOTFS_FIELDS: [&str; 3] = ["type", "diff_ids", "base_layer"];
const HISTORY_FIELDS: [&str; 5] = ["created", "author", "created_by", "comment", "empty_layer"];

/// Which of `fields` (Go JSON names) the raw key token selects, if any.
fn match_field(fields: &[&str], key: &str) -> Option<usize> {
    fields.iter().position(|f| *f == key).or_else(|| {
        fields
            .iter()
            .position(|f| gojson::field_name_matches(f, key))
    })
}

fn wrong_type(field: &'static str, found: Kind, go_type: &'static str) -> ConvertError {
    ConvertError::WrongType {
        field,
        found: found.go_name(),
        go_type,
    }
}

/// Decode a validated config document.
fn decode_config(doc: &[u8]) -> Result<Config<'_>, ConvertError> {
    let mut cfg = Config::default();
    let top = gojson::top_value(doc)?;
    match gojson::kind(top) {
        Kind::Object => {}
        // Go: unmarshalling null into a struct does nothing (→ empty history).
        Kind::Null => return Ok(cfg),
        k => return Err(wrong_type("(config)", k, "schema1.imageConfig")),
    }
    for member in gojson::object_members(top) {
        let (key_token, value) = member?;
        let key = gojson::unquote(key_token);
        match match_field(&CONFIG_FIELDS, &key) {
            Some(0) => decode_rootfs(value, &mut cfg.rootfs)?,
            Some(1) => decode_history(value, &mut cfg)?,
            Some(_) => decode_string(value, &mut cfg.architecture, "architecture")?,
            None => {}
        }
        cfg.members.push((key, value));
    }
    Ok(cfg)
}

fn decode_rootfs<'a>(value: &'a [u8], slot: &mut Option<RootFs<'a>>) -> Result<(), ConvertError> {
    match gojson::kind(value) {
        Kind::Null => {
            *slot = None;
            return Ok(());
        }
        Kind::Object => {}
        k => return Err(wrong_type("rootfs", k, "schema1.imageRootFS")),
    }
    let rootfs = slot.get_or_insert_with(RootFs::default);
    for member in gojson::object_members(value) {
        let (key_token, v) = member?;
        let key = gojson::unquote(key_token);
        match match_field(&ROOTFS_FIELDS, &key) {
            Some(0) => {
                let mut ignored = Cow::Borrowed("");
                decode_string(v, &mut ignored, "rootfs.type")?;
            }
            Some(1) => match gojson::kind(v) {
                Kind::Null => rootfs.diff_ids = 0,
                Kind::Array => {
                    let mut count = 0;
                    for el in gojson::array_elements(v) {
                        match gojson::kind(el?) {
                            Kind::String | Kind::Null => count += 1,
                            k => return Err(wrong_type("rootfs.diff_ids", k, "schema1.diffID")),
                        }
                    }
                    rootfs.diff_ids = count;
                }
                k => return Err(wrong_type("rootfs.diff_ids", k, "[]schema1.diffID")),
            },
            Some(_) => decode_string(v, &mut rootfs.base_layer, "rootfs.base_layer")?,
            None => {}
        }
    }
    Ok(())
}

fn decode_history<'a>(value: &'a [u8], cfg: &mut Config<'a>) -> Result<(), ConvertError> {
    match gojson::kind(value) {
        Kind::Null => {
            cfg.history.clear();
            cfg.history_len = 0;
            return Ok(());
        }
        Kind::Array => {}
        k => return Err(wrong_type("history", k, "[]schema1.imageHistory")),
    }
    let mut len = 0;
    for el in gojson::array_elements(value) {
        let el = el?;
        if len >= cfg.history.len() {
            cfg.history.push(HistoryEntry::default());
        }
        if let Some(entry) = cfg.history.get_mut(len) {
            decode_history_entry(el, entry)?;
        }
        len += 1;
    }
    if len == 0 {
        cfg.history.clear(); // Go: a fresh empty slice
    }
    cfg.history_len = len;
    Ok(())
}

fn decode_history_entry<'a>(
    value: &'a [u8],
    entry: &mut HistoryEntry<'a>,
) -> Result<(), ConvertError> {
    match gojson::kind(value) {
        Kind::Null => return Ok(()), // null into a struct: no effect
        Kind::Object => {}
        k => return Err(wrong_type("history", k, "schema1.imageHistory")),
    }
    for member in gojson::object_members(value) {
        let (key_token, v) = member?;
        let key = gojson::unquote(key_token);
        match match_field(&HISTORY_FIELDS, &key) {
            Some(0) => match gojson::kind(v) {
                Kind::Null => {}
                // Time.UnmarshalJSON sees the raw bytes between the quotes.
                Kind::String => {
                    let inner = v.get(1..v.len().saturating_sub(1)).unwrap_or_default();
                    entry.created = Timestamp::parse_rfc3339(inner)?;
                }
                _ => return Err(TimeError::NotAString.into()),
            },
            Some(1) => decode_string(v, &mut entry.author, "history.author")?,
            Some(2) => decode_string(v, &mut entry.created_by, "history.created_by")?,
            Some(3) => decode_string(v, &mut entry.comment, "history.comment")?,
            Some(_) => match gojson::kind(v) {
                Kind::Null => {}
                Kind::Bool => entry.empty_layer = v.first() == Some(&b't'),
                k => return Err(wrong_type("history.empty_layer", k, "bool")),
            },
            None => {}
        }
    }
    Ok(())
}

fn decode_string<'a>(
    value: &'a [u8],
    slot: &mut Cow<'a, str>,
    field: &'static str,
) -> Result<(), ConvertError> {
    match gojson::kind(value) {
        Kind::String => *slot = gojson::unquote(value),
        Kind::Null => {}
        k => return Err(wrong_type(field, k, "string")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_layer_constants_agree() {
        assert_eq!(
            Digest::sha256_of(&EMPTY_LAYER_BYTES).as_str(),
            EMPTY_LAYER_DIGEST
        );
        assert_eq!(&EMPTY_LAYER_DIGEST[7..], EMPTY_LAYER_HEX);
        assert_eq!(
            hex::encode(EMPTY_LAYER_BYTES),
            "1f8b080000096e8800ff621805a360148c5800080000ffff2eafb5ef00040000"
        );
    }

    #[test]
    fn errors_are_manifest_invalid() {
        assert_eq!(
            ConvertError::EmptyHistory.error_code(),
            ErrorCode::ManifestInvalid
        );
        assert_eq!(
            ConvertError::TooManyNonEmptyLayers.to_string(),
            "too many non-empty layers in History section"
        );
        assert_eq!(
            ConvertError::EmptyHistory.to_string(),
            "empty history when trying to create schema1 manifest"
        );
    }
}
