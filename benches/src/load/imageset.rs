//! The generated image set the load runs against, pushed to the upstream
//! docker-registry; everything is a function of a seed, so every run moves
//! the same bytes under the same digests.
//!
//! * `bench/big:v1`: a config, two small layers and one large layer
//!   ([`BIG_BLOB_BYTES`] of seeded random bytes: incompressible, like a real
//!   gzip layer on the wire; nothing in the benchmark decompresses it).
//! * `bench/app:v1`: a config and five small gzip layers; its Docker
//!   Schema 2 manifest is what S2 fetches, by tag and by digest.
//! * `bench/oci:v1`: a config and five other small gzip layers under an
//!   OCI image manifest: what S7 fetches by tag as an old Docker client
//!   ([`DOCKER17_ACCEPT`]), which regcache answers with the image's Docker
//!   twin.
//! * `bench/pull:TAG` (S4, pushed only when S4 runs): images of eight gzip
//!   tar layers of varied sizes ([`PULL_LAYER_FILES`], ~180 MiB in all) and a
//!   config, one per (server, round) and one for the direct reference, so
//!   every `skopeo copy` through a proxy is cold. Each is generated, pushed
//!   and dropped in turn: only its digests and sizes ([`PullImage`]) stay in
//!   memory.

use bytes::Bytes;
use rand::{RngCore as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use regcache_tests::image::{big_layer, config, default_history};
use regcache_tests::{Image, ImageGen, Layer, LayerKind, ManifestFormat, Platform, RegistryClient};

/// The S1 blob: 100 MiB.
pub const BIG_BLOB_BYTES: usize = 100 << 20;

/// The `Accept` line of manifest GETs (containerd's, as a pull sends it).
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// The `Accept` line of a Docker 1.10–17.x pull (Schema 2, lists and
/// Schema 1, no OCI type): S7's client.
pub const DOCKER17_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/json";

/// The `Accept` line of blob GETs.
pub const BLOB_ACCEPT: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip, */*";

/// One object the load fetches: its URL path, the exact headers every GET
/// of it carries (warm-up and load alike), and what a correct answer holds.
#[derive(Debug, Clone)]
pub struct Object {
    /// Short label for reports, e.g. `blob 100 MiB`.
    pub label: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// `sha256:` of the body.
    pub digest: String,
    pub len: u64,
    /// Where nginx static serves it from: the body, written at `path`
    /// under its root.
    pub body: Bytes,
}

/// The pushed images and the three objects S1/S2 fetch.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub big: Image,
    pub app: Image,
    /// S1: the large layer of `bench/big`.
    pub blob: Object,
    /// S2: `bench/app` manifest by tag.
    pub manifest_by_tag: Object,
    /// S2: `bench/app` manifest by digest.
    pub manifest_by_digest: Object,
    /// The image pushed under an OCI manifest (`bench/oci:v1`).
    pub oci: Image,
    /// S7: `bench/oci` by tag with [`DOCKER17_ACCEPT`]; `digest`, `len` and
    /// `body` are the OCI manifest's as pushed, not the answer (regcache
    /// answers with the Docker twin, under its own digest).
    pub oci_by_tag: Object,
    /// S3: blobs of `bench/big`'s size that no warm-up touches, one per
    /// proxying server (pushed as bare blobs to `bench/big`).
    pub cold_blobs: Vec<Object>,
}

/// How many cold blobs S3 has (regcache, docker-registry proxy, nginx proxy_cache).
pub const COLD_BLOBS: usize = 3;

pub const BIG_REPO: &str = "bench/big";
pub const APP_REPO: &str = "bench/app";
pub const OCI_REPO: &str = "bench/oci";
pub const TAG: &str = "v1";

/// S4: the file inside each layer of a `bench/pull` image, in layer order
/// (each layer is a tar of one file of seeded random bytes in a gzip of
/// stored blocks, so a little larger): a base system, a small config
/// layer, a language runtime, … as a real application image has. 180 MiB.
pub const PULL_LAYER_FILES: [usize; 8] = [
    28 << 20,
    300 << 10,
    74 << 20,
    9 << 20,
    46 << 20,
    1536 << 10,
    21 << 20,
    48 << 10,
];

pub const PULL_REPO: &str = "bench/pull";

/// A blob as a copy must hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:…`
    pub digest: String,
    pub len: u64,
}

impl BlobRef {
    /// The hex part of the digest: `skopeo copy … dir:` names the file so.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// One pushed S4 image (`bench/pull:TAG`): what a copy of it must contain.
/// The bytes themselves are dropped once pushed.
#[derive(Debug, Clone)]
pub struct PullImage {
    pub repo: &'static str,
    pub tag: String,
    /// `sha256:` of the Docker Schema 2 manifest as pushed.
    pub manifest_digest: String,
    pub manifest_len: u64,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

impl PullImage {
    /// Config and layers: what a pull moves besides the manifest.
    pub fn blob_bytes(&self) -> u64 {
        self.config.len + self.layers.iter().map(|l| l.len).sum::<u64>()
    }

    /// The size of a blob of this image by digest (`None`: not one of its blobs).
    pub fn blob_len(&self, digest: &str) -> Option<u64> {
        std::iter::once(&self.config)
            .chain(&self.layers)
            .find(|b| b.digest == digest)
            .map(|b| b.len)
    }

    /// Generates the image of `seed` (layers of [`PULL_LAYER_FILES`]; a
    /// different seed gives different bytes under the same sizes). ~0.5 s
    /// in release.
    pub fn generate(seed: u64) -> Image {
        PullImage::generate_with(seed, &PULL_LAYER_FILES)
    }

    /// [`PullImage::generate`] with other layer file sizes (tests).
    pub fn generate_with(seed: u64, files: &[usize]) -> Image {
        let layers: Vec<Layer> = files
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                big_layer(
                    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        .wrapping_add(i as u64),
                    len,
                )
            })
            .collect();
        let platform = Platform::linux_amd64();
        let config = config(
            &platform,
            &layers,
            &default_history(layers.len()),
            serde_json::Value::Null,
        );
        Image::new(&config, layers, platform)
    }

    /// Pushes `image` (from [`PullImage::generate`]) to `bench/pull:TAG`
    /// on the upstream (Docker Schema 2 manifest) and keeps its digests.
    pub async fn push(client: &RegistryClient, tag: &str, image: &Image) -> PullImage {
        let manifest = image.docker_manifest();
        let digest = client
            .push_image(PULL_REPO, tag, image, ManifestFormat::Docker)
            .await;
        assert_eq!(
            digest,
            regcache_tests::sha256_digest(&manifest),
            "pushed manifest digest"
        );
        PullImage {
            repo: PULL_REPO,
            tag: tag.to_owned(),
            manifest_digest: digest,
            manifest_len: manifest.len() as u64,
            config: BlobRef {
                digest: image.config_digest(),
                len: image.config.len() as u64,
            },
            layers: image
                .layers
                .iter()
                .map(|l| BlobRef {
                    digest: l.digest.clone(),
                    len: l.blob.len() as u64,
                })
                .collect(),
        }
    }
}

impl ImageSet {
    /// Generates the set from `seed`, with a large layer of `big_len`
    /// bytes ([`BIG_BLOB_BYTES`] for the benchmark; ~0.3 s in release).
    pub fn generate(seed: u64, big_len: usize) -> ImageSet {
        let mut generator = ImageGen::new(seed);
        let mut big_bytes = vec![0u8; big_len];
        ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_b16b_10b0).fill_bytes(&mut big_bytes);
        let big_digest = regcache_tests::sha256_digest(&big_bytes);
        let big_layer = Layer {
            kind: LayerKind::Gzip,
            blob: Bytes::from(big_bytes),
            // Not a real tar: the diff_id only has to be consistent.
            diff_id: big_digest.clone(),
            digest: big_digest,
        };
        let mut big_layers = generator.layers(2);
        big_layers.push(big_layer);
        let platform = Platform::linux_amd64();
        let big_config = config(
            &platform,
            &big_layers,
            &default_history(3),
            serde_json::Value::Null,
        );
        let big = Image::new(&big_config, big_layers, platform.clone());

        let app_layers = generator.layers(5);
        let app_config = config(
            &platform,
            &app_layers,
            &default_history(5),
            serde_json::Value::Null,
        );
        let app = Image::new(&app_config, app_layers, platform.clone());

        // After `app`: the images above keep their bytes.
        let oci_layers = generator.layers(5);
        let oci_config = config(
            &platform,
            &oci_layers,
            &default_history(5),
            serde_json::Value::Null,
        );
        let oci = Image::new(&oci_config, oci_layers, platform);
        let oci_manifest = Bytes::from(oci.oci_manifest());
        let oci_by_tag = Object {
            label: "OCI manifest by tag, Docker 17 Accept",
            path: format!("/v2/{OCI_REPO}/manifests/{TAG}"),
            headers: vec![("Accept".into(), DOCKER17_ACCEPT.into())],
            digest: regcache_tests::sha256_digest(&oci_manifest),
            len: oci_manifest.len() as u64,
            body: oci_manifest,
        };

        let blob_layer = &big.layers[2];
        let blob = Object {
            label: "blob",
            path: format!("/v2/{BIG_REPO}/blobs/{}", blob_layer.digest),
            headers: vec![("Accept".into(), BLOB_ACCEPT.into())],
            digest: blob_layer.digest.clone(),
            len: blob_layer.blob.len() as u64,
            body: blob_layer.blob.clone(),
        };
        let manifest = Bytes::from(app.docker_manifest());
        let manifest_digest = regcache_tests::sha256_digest(&manifest);
        let manifest_object = |label, reference: &str| Object {
            label,
            path: format!("/v2/{APP_REPO}/manifests/{reference}"),
            headers: vec![("Accept".into(), MANIFEST_ACCEPT.into())],
            digest: manifest_digest.clone(),
            len: manifest.len() as u64,
            body: manifest.clone(),
        };
        let manifest_by_tag = manifest_object("manifest by tag", TAG);
        let manifest_by_digest = manifest_object("manifest by digest", &manifest_digest);
        let cold_blobs = (0..COLD_BLOBS as u64)
            .map(|i| cold_blob(seed, i, big_len))
            .collect();
        ImageSet {
            big,
            app,
            blob,
            manifest_by_tag,
            manifest_by_digest,
            oci,
            oci_by_tag,
            cold_blobs,
        }
    }

    /// The objects warmed and measured.
    pub fn objects(&self) -> [&Object; 3] {
        [&self.manifest_by_tag, &self.manifest_by_digest, &self.blob]
    }

    /// Pushes the images (tag `v1`: `bench/big` and `bench/app` under
    /// Docker Schema 2 manifests, `bench/oci` under an OCI image manifest)
    /// and the cold blobs to the upstream through the upload API.
    /// Pushes one more blob (say, a [`cold_blob`] beyond the set's) to the
    /// big image's repository, where the set's cold blobs are.
    pub async fn push_cold_blob(client: &RegistryClient, blob: &Object) {
        let digest = client.push_blob(BIG_REPO, blob.body.clone()).await;
        assert_eq!(digest, blob.digest, "pushed cold blob digest");
    }

    pub async fn push(&self, client: &RegistryClient) {
        client
            .push_image(BIG_REPO, TAG, &self.big, ManifestFormat::Docker)
            .await;
        let digest = client
            .push_image(APP_REPO, TAG, &self.app, ManifestFormat::Docker)
            .await;
        assert_eq!(
            digest, self.manifest_by_tag.digest,
            "pushed manifest digest"
        );
        let digest = client
            .push_image(OCI_REPO, TAG, &self.oci, ManifestFormat::Oci)
            .await;
        assert_eq!(digest, self.oci_by_tag.digest, "pushed OCI manifest digest");
        for blob in &self.cold_blobs {
            ImageSet::push_cold_blob(client, blob).await;
        }
    }

    /// Writes every object under `root` at its URL path (for nginx static).
    pub fn write_static_tree(&self, root: &std::path::Path) -> std::io::Result<()> {
        for object in self.objects() {
            let path = root.join(object.path.trim_start_matches('/'));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &object.body)?;
        }
        Ok(())
    }
}

/// Cold blob number `i` of the set generated from `seed`: `len` random
/// bytes no cache has seen (S3; `i` beyond [`COLD_BLOBS`] for more rounds).
pub fn cold_blob(seed: u64, i: u64, len: usize) -> Object {
    let mut bytes = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed ^ 0xc01d_0000 ^ i).fill_bytes(&mut bytes);
    let digest = regcache_tests::sha256_digest(&bytes);
    Object {
        label: "cold blob",
        path: format!("/v2/{BIG_REPO}/blobs/{digest}"),
        headers: vec![("Accept".into(), BLOB_ACCEPT.into())],
        digest,
        len: bytes.len() as u64,
        body: Bytes::from(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_is_seeded_and_consistent() {
        let a = ImageSet::generate(1, 1 << 20);
        assert_eq!(a.blob.len, 1 << 20);
        assert_eq!(regcache_tests::sha256_digest(&a.blob.body), a.blob.digest);
        assert_eq!(a.manifest_by_tag.digest, a.manifest_by_digest.digest);
        assert!(
            a.manifest_by_digest
                .path
                .ends_with(&a.manifest_by_tag.digest)
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&a.manifest_by_tag.body).expect("manifest JSON");
        assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(5));
        let b = ImageSet::generate(1, 1 << 20);
        assert_eq!(a.blob.digest, b.blob.digest);
        assert_eq!(a.cold_blobs.len(), COLD_BLOBS);
        assert_ne!(a.cold_blobs[0].digest, a.cold_blobs[1].digest);
        assert_ne!(a.cold_blobs[0].digest, a.blob.digest);
        assert_eq!(a.manifest_by_tag.digest, b.manifest_by_tag.digest);
        let oci: serde_json::Value =
            serde_json::from_slice(&a.oci_by_tag.body).expect("OCI manifest JSON");
        assert_eq!(
            oci["mediaType"].as_str(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(oci["layers"].as_array().map(Vec::len), Some(5));
        assert_ne!(a.oci.config_digest(), a.app.config_digest());
        assert_eq!(a.oci_by_tag.digest, b.oci_by_tag.digest);
        assert!(!DOCKER17_ACCEPT.contains("oci"));
    }

    #[test]
    fn pull_images_differ_by_seed_only() {
        let total: usize = PULL_LAYER_FILES.iter().sum();
        assert!((150 << 20..250 << 20).contains(&total), "{total}");
        // Small sizes: a debug build hashes slowly.
        let files = [3 << 10, 1 << 10, 70_000, 5];
        let a = PullImage::generate_with(7, &files);
        let b = PullImage::generate_with(8, &files);
        assert_eq!(a.layers.len(), files.len());
        for ((x, y), len) in a.layers.iter().zip(&b.layers).zip(files) {
            assert_eq!(x.blob.len(), y.blob.len());
            assert!(x.blob.len() > len);
            assert_ne!(x.digest, y.digest);
        }
        let mut digests: Vec<&str> = a.layers.iter().map(|l| l.digest.as_str()).collect();
        digests.sort_unstable();
        digests.dedup();
        assert_eq!(digests.len(), files.len(), "distinct layers");
        assert_eq!(
            PullImage::generate_with(7, &files).config_digest(),
            a.config_digest(),
            "seeded"
        );
    }
}
