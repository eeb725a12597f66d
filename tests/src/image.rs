//! The offline, seeded image generator.
//!
//! Everything is a function of the seed: layer tars have fixed mtimes,
//! owners and order, gzip headers carry mtime 0, and configs are plain
//! `serde_json` values (or raw bytes when a test needs exact spelling). So a
//! seed always yields the same digests, on every run and every machine.
//!
//! * [`ImageGen`] makes layers (gzip tar, a zstd frame, or a foreign layer).
//! * [`History`] and [`config`] build an image config whose `rootfs.diff_ids`
//!   match the layers; tests may then mutate the `serde_json::Value` to make
//!   it invalid on purpose.
//! * [`Image`] renders Docker Schema 2 and OCI manifests; [`manifest_list`]
//!   and [`oci_index`] render lists.
//! * [`OciLayout`] writes an OCI image layout (`oci-layout`, `index.json`,
//!   `blobs/sha256/…`) that `skopeo copy oci:DIR:REF …` can push.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};

use crate::sha256_digest;

/// Media types used by the generator.
pub mod media {
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
}

/// Modification time of every tar entry: 2020-01-01T00:00:00Z.
pub const FIXED_MTIME: u64 = 1_577_836_800;

/// How a layer blob is encoded, which decides its media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerKind {
    /// gzip-compressed tar.
    Gzip,
    /// zstd-compressed tar (OCI only; a Docker manifest has no zstd type, the
    /// generator then writes the OCI zstd type into it).
    Zstd,
    /// A Docker foreign layer: downloaded by clients from `urls`, never pushed
    /// to the registry.
    Foreign { urls: Vec<String> },
}

/// A generated layer.
#[derive(Debug, Clone)]
pub struct Layer {
    pub kind: LayerKind,
    /// The compressed blob (for foreign layers: what the URL would serve).
    pub blob: Bytes,
    /// `sha256:` of [`Layer::blob`].
    pub digest: String,
    /// `sha256:` of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: String,
}

impl Layer {
    /// Media type in a Docker Schema 2 manifest.
    pub fn docker_media_type(&self) -> &'static str {
        match self.kind {
            LayerKind::Gzip => media::DOCKER_LAYER,
            LayerKind::Zstd => media::OCI_LAYER_ZSTD,
            LayerKind::Foreign { .. } => media::DOCKER_FOREIGN_LAYER,
        }
    }

    /// Media type in an OCI image manifest.
    pub fn oci_media_type(&self) -> &'static str {
        match self.kind {
            LayerKind::Gzip => media::OCI_LAYER_GZIP,
            LayerKind::Zstd => media::OCI_LAYER_ZSTD,
            LayerKind::Foreign { .. } => media::OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        }
    }

    /// Whether the blob is pushed to registries (foreign layers are not).
    pub fn is_pushed(&self) -> bool {
        !matches!(self.kind, LayerKind::Foreign { .. })
    }

    fn urls(&self) -> Vec<String> {
        match &self.kind {
            LayerKind::Foreign { urls } => urls.clone(),
            _ => Vec::new(),
        }
    }
}

/// A seeded source of layers and file contents.
#[derive(Debug)]
pub struct ImageGen {
    rng: ChaCha8Rng,
    layers_made: usize,
}

impl ImageGen {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            layers_made: 0,
        }
    }

    /// Random printable bytes (compressible, like real files).
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"abcdefghijklmnop\n0123456789 ";
        (0..len)
            .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())])
            .collect()
    }

    /// A deterministic tar with a directory and 1–3 small files (< 2 KiB each).
    pub fn tar(&mut self) -> Vec<u8> {
        let index = self.layers_made;
        self.layers_made += 1;
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        let dir = format!("layer{index}/");
        append(&mut builder, &dir, tar::EntryType::Directory, 0o755, &[]);
        let files = self.rng.random_range(1..=3);
        for f in 0..files {
            let len = self.rng.random_range(16..2048);
            let data = self.bytes(len);
            let path = format!("{dir}file{f}.txt");
            append(&mut builder, &path, tar::EntryType::Regular, 0o644, &data);
        }
        builder
            .into_inner()
            .unwrap_or_else(|e| panic!("writing a tar to memory failed: {e}"))
    }

    /// A gzip-compressed tar layer.
    pub fn layer(&mut self) -> Layer {
        let tar = self.tar();
        let blob = gzip(&tar);
        Layer {
            kind: LayerKind::Gzip,
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            blob: blob.into(),
        }
    }

    /// `n` gzip layers.
    pub fn layers(&mut self, n: usize) -> Vec<Layer> {
        (0..n).map(|_| self.layer()).collect()
    }

    /// A zstd-compressed tar layer (a valid zstd frame of raw blocks).
    pub fn zstd_layer(&mut self) -> Layer {
        let tar = self.tar();
        let blob = zstd_raw_frame(&tar);
        Layer {
            kind: LayerKind::Zstd,
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            blob: blob.into(),
        }
    }

    /// A foreign layer (as Windows base layers are): its blob is *not*
    /// pushed; clients would fetch it from `urls`.
    pub fn foreign_layer(&mut self, urls: &[&str]) -> Layer {
        let mut layer = self.layer();
        layer.kind = LayerKind::Foreign {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
        };
        layer
    }
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
) {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(FIXED_MTIME);
    header.set_size(data.len() as u64);
    builder
        .append_data(&mut header, path, data)
        .unwrap_or_else(|e| panic!("appending {path} to a tar failed: {e}"));
}

/// gzip with a fixed header (mtime 0, OS "unknown") and default level.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A zstd frame holding `data` in raw (uncompressed) blocks: valid zstd that
/// any decoder accepts, without needing a zstd encoder here.
pub fn zstd_raw_frame(data: &[u8]) -> Vec<u8> {
    const MAX_BLOCK: usize = 128 * 1024;
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd];
    // Frame header descriptor: 8-byte Frame_Content_Size (flag 3), no
    // single-segment flag, so a Window_Descriptor byte follows.
    out.push(0b1100_0000);
    // Window_Descriptor: exponent 7 → window 2^(10+7) = 128 KiB.
    out.push(7 << 3);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut chunks = data.chunks(MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0]); // last, raw, size 0
    }
    while let Some(chunk) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        let header = last | ((chunk.len() as u32) << 3); // block type 0 = raw
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    out
}

/// `len` bytes of seeded pseudo-random data, made fast even in a debug
/// build: one 1 MiB ChaCha block, repeated with a per-MiB rotation and the
/// MiB index stamped into its first bytes (so no two MiB are equal).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    const CHUNK: usize = 1 << 20;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut base = vec![0u8; CHUNK];
    rand::RngCore::fill_bytes(&mut rng, &mut base);
    let mut out = Vec::with_capacity(len);
    let mut index = 0u64;
    while out.len() < len {
        let take = (len - out.len()).min(CHUNK);
        let start = out.len();
        let rotation = (index as usize).wrapping_mul(4099) % CHUNK;
        let first = (CHUNK - rotation).min(take);
        out.extend_from_slice(&base[rotation..rotation + first]);
        out.extend_from_slice(&base[..take - first]);
        let stamp = (index ^ seed).to_le_bytes();
        let n = stamp.len().min(take);
        out[start..start + n].copy_from_slice(&stamp[..n]);
        index += 1;
    }
    out
}

/// gzip framing around *stored* deflate blocks: a valid `.gz` that costs no
/// compression time (for large test layers of random, incompressible data).
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    const MAX_STORED: usize = 65_535;
    let mut out = Vec::with_capacity(data.len() + data.len() / MAX_STORED * 5 + 32);
    // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unknown
    out.extend_from_slice(&[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut blocks = data.chunks(MAX_STORED).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none())); // BFINAL, BTYPE=00
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A layer holding one file of `file_size` seeded random bytes: a
/// deterministic tar in a stored gzip ([`gzip_stored`]), so the blob is a
/// little larger than `file_size`. Generated in well under a second.
pub fn big_layer(seed: u64, file_size: usize) -> Layer {
    let data = random_bytes(seed, file_size);
    let mut tar = Vec::with_capacity(file_size + 3 * 512);
    {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(FIXED_MTIME);
        header.set_size(file_size as u64);
        header
            .set_path(format!("big/{seed}.bin"))
            .unwrap_or_else(|e| panic!("tar path: {e}"));
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
    }
    tar.extend_from_slice(&data);
    drop(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let blob = gzip_stored(&tar);
    Layer {
        kind: LayerKind::Gzip,
        digest: sha256_digest(&blob),
        diff_id: sha256_digest(&tar),
        blob: blob.into(),
    }
}

/// The `platform` of a manifest-list entry (and the config's
/// `architecture`/`os`/`variant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    pub fn linux_amd64() -> Self {
        Self::new("linux", "amd64", None)
    }
}

/// One config `history` entry. Absent fields are left out of the JSON.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: bool,
}

impl History {
    /// A step that produced a layer.
    pub fn layer(created_by: &str) -> Self {
        Self {
            created: Some("2024-03-01T10:00:00Z".into()),
            created_by: Some(created_by.into()),
            ..Self::default()
        }
    }

    /// A metadata-only step (`empty_layer: true`).
    pub fn empty(created_by: &str) -> Self {
        Self {
            empty_layer: true,
            ..Self::layer(created_by)
        }
    }

    pub fn created(mut self, created: Option<&str>) -> Self {
        self.created = created.map(str::to_owned);
        self
    }

    pub fn created_by(mut self, created_by: Option<&str>) -> Self {
        self.created_by = created_by.map(str::to_owned);
        self
    }

    pub fn author(mut self, author: &str) -> Self {
        self.author = Some(author.into());
        self
    }

    pub fn comment(mut self, comment: &str) -> Self {
        self.comment = Some(comment.into());
        self
    }

    pub fn to_json(&self) -> Value {
        let mut entry = serde_json::Map::new();
        if let Some(v) = &self.created {
            entry.insert("created".into(), v.clone().into());
        }
        if let Some(v) = &self.created_by {
            entry.insert("created_by".into(), v.clone().into());
        }
        if let Some(v) = &self.author {
            entry.insert("author".into(), v.clone().into());
        }
        if let Some(v) = &self.comment {
            entry.insert("comment".into(), v.clone().into());
        }
        if self.empty_layer {
            entry.insert("empty_layer".into(), true.into());
        }
        Value::Object(entry)
    }
}

/// The usual history for `layers`: one `RUN` step per layer.
pub fn default_history(layers: usize) -> Vec<History> {
    (0..layers)
        .map(|i| History::layer(&format!("/bin/sh -c echo step {i} > /f{i}")))
        .collect()
}

/// An image config for `platform` with `rootfs.diff_ids` from `layers` and
/// the given history; `container_config` becomes the config's `config`
/// member (pass `Value::Null` for a small default).
pub fn config(
    platform: &Platform,
    layers: &[Layer],
    history: &[History],
    container_config: Value,
) -> Value {
    let container_config = if container_config.is_null() {
        json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/"
        })
    } else {
        container_config
    };
    let mut value = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "created": "2024-03-01T10:20:30.123456789Z",
        "config": container_config,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": history.iter().map(History::to_json).collect::<Vec<_>>(),
    });
    if let Some(variant) = &platform.variant {
        value["variant"] = variant.clone().into();
    }
    value
}

/// A config blob plus its layers: renders manifests.
#[derive(Debug, Clone)]
pub struct Image {
    /// The raw config bytes (exactly what is pushed and hashed).
    pub config: Bytes,
    pub layers: Vec<Layer>,
    /// Where the image sits in a manifest list / OCI index.
    pub platform: Platform,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    size: usize,
    digest: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a Platform>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListDoc<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

impl Image {
    /// An image whose config is `config` serialised compactly.
    pub fn new(config: &Value, layers: Vec<Layer>, platform: Platform) -> Self {
        Self::from_raw_config(serde_json::to_vec(config).unwrap(), layers, platform)
    }

    /// An image with exact config bytes (pretty-printed, duplicate keys,
    /// invalid JSON: whatever the test needs).
    pub fn from_raw_config(config: Vec<u8>, layers: Vec<Layer>, platform: Platform) -> Self {
        Self {
            config: config.into(),
            layers,
            platform,
        }
    }

    pub fn config_digest(&self) -> String {
        sha256_digest(&self.config)
    }

    /// Layer digests in manifest order.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }

    /// The Docker Schema 2 manifest.
    pub fn docker_manifest(&self) -> Vec<u8> {
        self.manifest(
            media::DOCKER_MANIFEST,
            media::DOCKER_CONFIG,
            Layer::docker_media_type,
        )
    }

    /// The OCI image manifest (with `mediaType`, as skopeo writes it).
    pub fn oci_manifest(&self) -> Vec<u8> {
        self.manifest(
            media::OCI_MANIFEST,
            media::OCI_CONFIG,
            Layer::oci_media_type,
        )
    }

    fn manifest(
        &self,
        media_type: &str,
        config_type: &str,
        layer_type: fn(&Layer) -> &'static str,
    ) -> Vec<u8> {
        let config_digest = self.config_digest();
        let doc = ManifestDoc {
            schema_version: 2,
            media_type,
            config: Descriptor {
                media_type: config_type,
                size: self.config.len(),
                digest: &config_digest,
                urls: Vec::new(),
                platform: None,
            },
            layers: self
                .layers
                .iter()
                .map(|l| Descriptor {
                    media_type: layer_type(l),
                    size: l.blob.len(),
                    digest: &l.digest,
                    urls: l.urls(),
                    platform: None,
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&doc).unwrap()
    }

    /// Blobs to push before the manifest: config, then every non-foreign layer.
    pub fn blobs(&self) -> Vec<(String, Bytes)> {
        let mut blobs = vec![(self.config_digest(), self.config.clone())];
        for layer in self.layers.iter().filter(|l| l.is_pushed()) {
            blobs.push((layer.digest.clone(), layer.blob.clone()));
        }
        blobs
    }
}

/// One entry of a manifest list or index: the child manifest's bytes, its
/// media type, and the platform to advertise (`None`: no `platform` object).
#[derive(Debug, Clone)]
pub struct ListEntry {
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub platform: Option<Platform>,
}

impl ListEntry {
    /// `image`'s Docker manifest, advertised with the image's platform.
    pub fn docker(image: &Image) -> Self {
        Self {
            media_type: media::DOCKER_MANIFEST.into(),
            manifest: image.docker_manifest(),
            platform: Some(image.platform.clone()),
        }
    }

    /// `image`'s OCI manifest, advertised with the image's platform.
    pub fn oci(image: &Image) -> Self {
        Self {
            media_type: media::OCI_MANIFEST.into(),
            manifest: image.oci_manifest(),
            platform: Some(image.platform.clone()),
        }
    }

    pub fn digest(&self) -> String {
        sha256_digest(&self.manifest)
    }
}

/// A Docker manifest list over `entries`, in the given order.
pub fn manifest_list(entries: &[ListEntry]) -> Vec<u8> {
    list(media::DOCKER_LIST, entries)
}

/// An OCI image index over `entries`, in the given order.
pub fn oci_index(entries: &[ListEntry]) -> Vec<u8> {
    list(media::OCI_INDEX, entries)
}

fn list(media_type: &str, entries: &[ListEntry]) -> Vec<u8> {
    let digests: Vec<String> = entries.iter().map(ListEntry::digest).collect();
    let doc = ListDoc {
        schema_version: 2,
        media_type,
        manifests: entries
            .iter()
            .zip(&digests)
            .map(|(e, digest)| Descriptor {
                media_type: &e.media_type,
                size: e.manifest.len(),
                digest,
                urls: Vec::new(),
                platform: e.platform.as_ref(),
            })
            .collect(),
    };
    serde_json::to_vec_pretty(&doc).unwrap()
}

/// An OCI image layout directory that skopeo can read as `oci:DIR:REF`.
///
/// Each `add_*` call writes the blobs and rewrites `index.json`, where every
/// reference is an entry annotated with `org.opencontainers.image.ref.name`.
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
    index: Vec<Value>,
}

impl OciLayout {
    /// Creates `dir` (if needed) with its `oci-layout` file and an empty index.
    pub fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs").join("sha256"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let layout = Self {
            dir: dir.to_owned(),
            index: Vec::new(),
        };
        layout.save();
        layout
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `oci:DIR:REF` for skopeo.
    pub fn reference(&self, ref_name: &str) -> String {
        format!("oci:{}:{ref_name}", self.dir.display())
    }

    /// Writes a blob under `blobs/sha256/` and returns its digest.
    pub fn write_blob(&self, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let hex = &digest["sha256:".len()..];
        std::fs::write(self.dir.join("blobs").join("sha256").join(hex), bytes).unwrap();
        digest
    }

    /// Adds `image` (as an OCI manifest) under `ref_name`; returns the
    /// manifest digest. Foreign layers' blobs are written too (skopeo would
    /// otherwise fail to read them), but registries never receive them.
    pub fn add_image(&mut self, ref_name: &str, image: &Image) -> String {
        self.write_image(image);
        let manifest = image.oci_manifest();
        let digest = self.write_blob(&manifest);
        self.add_ref(ref_name, media::OCI_MANIFEST, &digest, manifest.len());
        digest
    }

    /// Adds an OCI index over `images` (each with its platform, in order)
    /// under `ref_name`; returns the index digest.
    pub fn add_index(&mut self, ref_name: &str, images: &[&Image]) -> String {
        let mut entries = Vec::new();
        for image in images {
            self.write_image(image);
            let entry = ListEntry::oci(image);
            self.write_blob(&entry.manifest);
            entries.push(entry);
        }
        let index = oci_index(&entries);
        let digest = self.write_blob(&index);
        self.add_ref(ref_name, media::OCI_INDEX, &digest, index.len());
        digest
    }

    fn write_image(&self, image: &Image) {
        self.write_blob(&image.config);
        for layer in &image.layers {
            self.write_blob(&layer.blob);
        }
    }

    fn add_ref(&mut self, ref_name: &str, media_type: &str, digest: &str, size: usize) {
        self.index.retain(|e| {
            e["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(ref_name)
        });
        self.index.push(json!({
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": ref_name },
        }));
        self.save();
    }

    fn save(&self) {
        let index = json!({ "schemaVersion": 2, "manifests": self.index });
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn same_seed_same_digests() {
        let a = ImageGen::new(7).layers(3);
        let b = ImageGen::new(7).layers(3);
        let c = ImageGen::new(8).layers(3);
        let digests = |ls: &[Layer]| ls.iter().map(|l| l.digest.clone()).collect::<Vec<_>>();
        assert_eq!(digests(&a), digests(&b));
        assert_ne!(digests(&a), digests(&c));
    }

    #[test]
    fn diff_id_is_the_uncompressed_tar() {
        let layer = ImageGen::new(1).layer();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&layer.blob[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(sha256_digest(&tar), layer.diff_id);
        let mut archive = tar::Archive::new(&tar[..]);
        for entry in archive.entries().unwrap() {
            assert_eq!(entry.unwrap().header().mtime().unwrap(), FIXED_MTIME);
        }
        assert!(layer.blob.len() < 8 * 1024, "layers stay small");
    }

    #[test]
    fn stored_gzip_decodes_and_big_layers_are_deterministic() {
        let data = random_bytes(3, 200_000);
        assert_eq!(data, random_bytes(3, 200_000));
        assert_ne!(data[..1 << 10], random_bytes(4, 1 << 10)[..]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gzip_stored(&data)[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);

        let layer = big_layer(5, 3 << 20);
        assert_eq!(layer.digest, big_layer(5, 3 << 20).digest);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&layer.blob[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(sha256_digest(&tar), layer.diff_id);
        let mut archive = tar::Archive::new(&tar[..]);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.header().size().unwrap(), 3 << 20);
    }

    #[test]
    fn zstd_frame_layout() {
        let frame = zstd_raw_frame(b"hello");
        assert_eq!(&frame[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        // descriptor, window, 8-byte size, 3-byte block header, payload
        assert_eq!(frame.len(), 4 + 1 + 1 + 8 + 3 + 5);
        assert_eq!(&frame[6..14], &5u64.to_le_bytes());
        assert_eq!(&frame[14..17], &[1 | (5 << 3), 0, 0]);
        assert_eq!(&frame[17..], b"hello");
    }

    #[test]
    fn config_matches_layers() {
        let mut generator = ImageGen::new(3);
        let layers = generator.layers(2);
        let cfg = config(
            &Platform::linux_amd64(),
            &layers,
            &default_history(2),
            Value::Null,
        );
        assert_eq!(cfg["rootfs"]["diff_ids"][1], layers[1].diff_id.as_str());
        let image = Image::new(&cfg, layers, Platform::linux_amd64());
        let manifest: Value = serde_json::from_slice(&image.docker_manifest()).unwrap();
        assert_eq!(manifest["config"]["digest"], image.config_digest().as_str());
        assert_eq!(manifest["layers"][0]["mediaType"], media::DOCKER_LAYER);
        let oci: Value = serde_json::from_slice(&image.oci_manifest()).unwrap();
        assert_eq!(oci["layers"][0]["mediaType"], media::OCI_LAYER_GZIP);
    }

    #[test]
    fn layout_has_refs() {
        let dir = tempfile::tempdir().unwrap();
        let mut layout = OciLayout::create(dir.path());
        let mut generator = ImageGen::new(5);
        let layers = generator.layers(1);
        let cfg = config(
            &Platform::linux_amd64(),
            &layers,
            &default_history(1),
            Value::Null,
        );
        let image = Image::new(&cfg, layers, Platform::linux_amd64());
        let digest = layout.add_image("one", &image);
        layout.add_image("one", &image);
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(index["manifests"][0]["digest"], digest.as_str());
        assert!(
            dir.path()
                .join("blobs/sha256")
                .join(&image.config_digest()[7..])
                .exists()
        );
    }
}
