//! Referrers lists (OCI distribution-spec 1.1, "Listing Referrers" and
//! "Referrers Tag Schema"): reading one, filtering it by `artifactType`,
//! building the index that answers, and the fallback tag's name. Pure.
//!
//! A referrers list is an OCI image index whose `manifests` are the
//! descriptors of manifests whose `subject` is the digest asked about.
//! Descriptors are kept as the JSON values they came as, so fields regcache
//! has no type for (`annotations`, future ones) reach the client unchanged.

use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::manifest::{Manifest, ManifestError};
use crate::media_type::{MediaType, OCI_INDEX};

/// `OCI-Filters-Applied` value when regcache filtered by artifact type.
pub const ARTIFACT_TYPE_FILTER: &str = "artifactType";

/// The answer of a registry with the API for a subject nothing refers to
/// (and regcache's, when neither the API nor a fallback tag has any).
pub const EMPTY_INDEX: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

/// Why bytes are not a referrers list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferrersError {
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// A manifest, or a Docker manifest list, where an OCI index must be.
    #[error("a referrers list must be an OCI image index, not {0}")]
    NotAnOciIndex(&'static str),
}

/// The referrers tag schema: `<alg>-<encoded>`, the encoded part cut to 64
/// characters (`sha256-<hex>`; a sha512 subject gets its first 64 hex).
pub fn fallback_tag(subject: &Digest) -> String {
    let hex: String = subject.hex().chars().take(64).collect();
    format!("{}-{hex}", subject.algorithm().name())
}

/// The `manifests` of a referrers list, after checking that `bytes` are an
/// OCI image index whose descriptors are valid (a `mediaType` field naming
/// anything else, or a Docker manifest list, is refused).
pub fn descriptors(bytes: &[u8]) -> Result<Vec<Value>, ReferrersError> {
    let m = Manifest::parse(bytes.to_vec(), Some(OCI_INDEX))?;
    descriptors_of(&m)
}

/// [`descriptors`] of a parsed manifest (a fallback tag's, say).
pub fn descriptors_of(m: &Manifest) -> Result<Vec<Value>, ReferrersError> {
    if m.media_type != MediaType::OciIndex {
        return Err(ReferrersError::NotAnOciIndex(m.media_type.as_str()));
    }
    // It parsed as an index, so it is an object whose `manifests` (if any) is
    // an array of valid descriptors.
    let doc: Value = serde_json::from_slice(&m.raw).map_err(ManifestError::from)?;
    Ok(match doc.get("manifests") {
        Some(Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    })
}

/// The descriptors whose `artifactType` is exactly `artifact_type`.
pub fn filter(descriptors: &[Value], artifact_type: &str) -> Vec<Value> {
    descriptors
        .iter()
        .filter(|d| d.get("artifactType").and_then(Value::as_str) == Some(artifact_type))
        .cloned()
        .collect()
}

/// An OCI image index listing `descriptors`, as the referrers API answers.
pub fn build_index(descriptors: Vec<Value>) -> Vec<u8> {
    let mut doc = Map::new();
    doc.insert("schemaVersion".into(), Value::from(2));
    doc.insert("mediaType".into(), Value::from(OCI_INDEX));
    doc.insert("manifests".into(), Value::Array(descriptors));
    // A map of plain values always serialises.
    serde_json::to_vec(&Value::Object(doc)).unwrap_or_else(|_| EMPTY_INDEX.to_vec())
}

/// The `OCI-Filters-Applied` value once regcache applied `artifactType` on
/// top of what the upstream already applied (`upstream`, comma-separated).
pub fn filters_applied(upstream: Option<&str>, applied_here: bool) -> Option<String> {
    let mut all: Vec<&str> = upstream
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    if applied_here && !all.contains(&ARTIFACT_TYPE_FILTER) {
        all.push(ARTIFACT_TYPE_FILTER);
    }
    (!all.is_empty()).then(|| all.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUBJECT: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
    const SBOM: &str = "application/spdx+json";

    fn list() -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D1,
                 "size": 10, "artifactType": SIG, "annotations": {"k": "v"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D2,
                 "size": 20, "artifactType": SBOM},
            ]
        })
    }

    #[test]
    fn fallback_tags_follow_the_tag_schema() {
        let d = Digest::parse(SUBJECT).unwrap();
        assert_eq!(
            fallback_tag(&d),
            "sha256-a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
        );
        let long = Digest::parse(&format!("sha512:{}", "ab".repeat(64))).unwrap();
        assert_eq!(fallback_tag(&long), format!("sha512-{}", "ab".repeat(32)));
    }

    #[test]
    fn descriptors_come_back_as_sent_and_filter_by_artifact_type() {
        let bytes = serde_json::to_vec(&list()).unwrap();
        let all = descriptors(&bytes).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["annotations"], json!({"k": "v"}));
        let sigs = filter(&all, SIG);
        assert_eq!(sigs.len(), 1);
        assert_eq!(sigs[0]["digest"], D1);
        assert_eq!(filter(&all, SBOM)[0]["digest"], D2);
        assert!(filter(&all, "application/unknown").is_empty());
        // A prefix or a case variant is not the same type.
        assert!(filter(&all, "application/spdx").is_empty());
        assert!(filter(&all, &SBOM.to_uppercase()).is_empty());
    }

    #[test]
    fn built_indexes_are_valid_oci_indexes() {
        let all = descriptors(&serde_json::to_vec(&list()).unwrap()).unwrap();
        let built = build_index(filter(&all, SIG));
        let m = Manifest::parse(built.clone(), None).unwrap();
        assert_eq!(m.media_type, MediaType::OciIndex);
        let doc: Value = serde_json::from_slice(&built).unwrap();
        assert_eq!(doc["schemaVersion"], 2);
        assert_eq!(doc["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(doc["manifests"][0]["artifactType"], SIG);
        let empty = build_index(Vec::new());
        assert_eq!(
            serde_json::from_slice::<Value>(&empty).unwrap(),
            serde_json::from_slice::<Value>(EMPTY_INDEX).unwrap()
        );
        assert!(descriptors(EMPTY_INDEX).unwrap().is_empty());
    }

    #[test]
    fn what_is_not_an_oci_index_is_refused() {
        let mut docker_list = list();
        docker_list["mediaType"] =
            json!("application/vnd.docker.distribution.manifest.list.v2+json");
        assert!(matches!(
            descriptors(&serde_json::to_vec(&docker_list).unwrap()),
            Err(ReferrersError::NotAnOciIndex(_))
        ));
        let mut bad_digest = list();
        bad_digest["manifests"][0]["digest"] = json!("sha256:nothex");
        assert!(matches!(
            descriptors(&serde_json::to_vec(&bad_digest).unwrap()),
            Err(ReferrersError::Manifest(_))
        ));
        assert!(descriptors(b"404 page not found").is_err());
        // No mediaType: an index by its structure.
        let bare = json!({"schemaVersion": 2, "manifests": []});
        assert!(
            descriptors(&serde_json::to_vec(&bare).unwrap())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn filters_applied_merges_with_the_upstreams() {
        assert_eq!(filters_applied(None, false), None);
        assert_eq!(filters_applied(None, true).as_deref(), Some("artifactType"));
        assert_eq!(
            filters_applied(Some("artifactType"), true).as_deref(),
            Some("artifactType")
        );
        assert_eq!(
            filters_applied(Some("annotation"), true).as_deref(),
            Some("annotation,artifactType")
        );
        assert_eq!(
            filters_applied(Some(" annotation "), false).as_deref(),
            Some("annotation")
        );
    }
}
