//! Every media type of spec chapter 01, as exact, case-sensitive strings.

/// Manifest media types regcache knows how to store and serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaType {
    /// `application/vnd.docker.distribution.manifest.v1+json` (unsigned Schema 1).
    Schema1,
    /// `application/vnd.docker.distribution.manifest.v1+prettyjws` (signed Schema 1).
    Schema1Signed,
    /// `application/vnd.docker.distribution.manifest.v2+json`.
    Schema2,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`.
    ManifestList,
    /// `application/vnd.oci.image.manifest.v1+json`.
    OciManifest,
    /// `application/vnd.oci.image.index.v1+json`.
    OciIndex,
}

pub const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const SCHEMA2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Legacy alias that old clients list in `Accept`; distribution parses PUTs with it as Schema 1.
pub const APPLICATION_JSON: &str = "application/json";

pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_PLUGIN_CONFIG: &str = "application/vnd.docker.plugin.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_FOREIGN_TAR: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_ND_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_ND_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_ND_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

/// The registry error envelope's content type.
pub const ERROR_JSON: &str = "application/json; charset=utf-8";
/// Blob responses.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Every manifest type regcache can store, for upstream `Accept` (spec 02 §2.7.1).
pub const ALL_MANIFEST_TYPES: [&str; 6] = [
    SCHEMA2,
    MANIFEST_LIST,
    OCI_MANIFEST,
    OCI_INDEX,
    SCHEMA1_SIGNED,
    SCHEMA1,
];

impl MediaType {
    /// Exact wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Schema1 => SCHEMA1,
            MediaType::Schema1Signed => SCHEMA1_SIGNED,
            MediaType::Schema2 => SCHEMA2,
            MediaType::ManifestList => MANIFEST_LIST,
            MediaType::OciManifest => OCI_MANIFEST,
            MediaType::OciIndex => OCI_INDEX,
        }
    }

    /// Exact, case-sensitive match of one of the six manifest types (no parameters).
    pub fn from_manifest_type(s: &str) -> Option<Self> {
        match s {
            SCHEMA1 => Some(MediaType::Schema1),
            SCHEMA1_SIGNED => Some(MediaType::Schema1Signed),
            SCHEMA2 => Some(MediaType::Schema2),
            MANIFEST_LIST => Some(MediaType::ManifestList),
            OCI_MANIFEST => Some(MediaType::OciManifest),
            OCI_INDEX => Some(MediaType::OciIndex),
            _ => None,
        }
    }

    /// A list or an index (something with `manifests`).
    pub fn is_index(self) -> bool {
        matches!(self, MediaType::ManifestList | MediaType::OciIndex)
    }

    /// Either Schema 1 form.
    pub fn is_schema1(self) -> bool {
        matches!(self, MediaType::Schema1 | MediaType::Schema1Signed)
    }
}

impl std::fmt::Display for MediaType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Is this a layer media type that Schema 1 can carry?
///
/// Schema 1 has no per-layer media type: an old engine sniffs the layer bytes and
/// understands gzip (and plain tar), never zstd. So gzip and plain tar layers
/// (Docker, OCI, foreign and non-distributable alike) fit; zstd, encrypted and
/// unknown artifact types do not.
pub fn layer_fits_schema1(media_type: &str) -> bool {
    matches!(
        media_type,
        DOCKER_LAYER_GZIP
            | DOCKER_LAYER_FOREIGN_GZIP
            | DOCKER_LAYER_TAR
            | OCI_LAYER_GZIP
            | OCI_LAYER_TAR
            | OCI_LAYER_ND_GZIP
            | OCI_LAYER_ND_TAR
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for t in ALL_MANIFEST_TYPES {
            assert_eq!(MediaType::from_manifest_type(t).unwrap().as_str(), t);
        }
        assert_eq!(
            MediaType::from_manifest_type("APPLICATION/vnd.oci.image.index.v1+json"),
            None
        );
        assert_eq!(MediaType::from_manifest_type(APPLICATION_JSON), None);
        assert!(layer_fits_schema1(OCI_LAYER_GZIP));
        assert!(!layer_fits_schema1(OCI_LAYER_ZSTD));
    }
}
