//! `regcache convert`: Schema 2 / OCI manifest + config blob → signed Schema 1,
//! exactly as the server converts (and as docker/distribution 2.8 did).
//!
//! Every failure is one line on stderr and exit status 1; the caller (main) prints it.

use std::path::{Path, PathBuf};

use regcache_formats::jws::{self, SigningKey};
use regcache_formats::manifest::{Manifest, ManifestKind, Schema1Source};
use regcache_formats::reference::{RepositoryName, Tag};
use regcache_formats::schema1;
use regcache_formats::{Digest, MediaType};

/// Arguments of `regcache convert`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// Repository name embedded in the manifest (as in the request path, e.g. library/alpine).
    #[arg(long)]
    pub name: String,
    /// Tag embedded in the manifest.
    #[arg(long)]
    pub tag: String,
    /// The image configuration blob, byte for byte as stored.
    #[arg(long, value_name = "CONFIG_FILE")]
    pub config: PathBuf,
    /// P-256 signing key (PEM or JWK, told apart by content); a fresh key when absent.
    #[arg(long, value_name = "KEY_FILE")]
    pub key: Option<PathBuf>,
    /// Print exactly the canonical (unsigned) payload; its sha256 is the Schema 1 digest.
    #[arg(long)]
    pub payload: bool,
    /// For a manifest list: the linux/amd64 child manifest file.
    #[arg(long, value_name = "FILE")]
    pub child: Option<PathBuf>,
    /// The Schema 2 / OCI manifest (or Docker manifest list).
    #[arg(value_name = "MANIFEST_FILE")]
    pub manifest: PathBuf,
}

/// Run the conversion; `Ok(bytes)` is what goes to stdout.
pub fn run(args: &ConvertArgs, now_unix: i64) -> Result<Vec<u8>, String> {
    let name =
        RepositoryName::parse(&args.name).map_err(|e| format!("--name {:?}: {e}", args.name))?;
    let tag = Tag::parse(&args.tag).map_err(|e| format!("--tag {:?}: {e}", args.tag))?;
    let raw = read(&args.manifest, "manifest")?;
    let top = Manifest::parse(raw, None).map_err(|e| {
        format!(
            "{}: not a manifest regcache can read: {e}",
            args.manifest.display()
        )
    })?;
    let image = select_image(&top, args.child.as_deref())?;
    let config = read(&args.config, "config")?;
    let payload = image_payload(&image, &config, name.as_str(), tag.as_str())?;
    if args.payload {
        return Ok(payload);
    }
    let key = match &args.key {
        Some(path) => load_key(path)?,
        None => SigningKey::generate(),
    };
    jws::sign(&payload, &key, now_unix).map_err(|e| format!("signing failed: {e}"))
}

/// A list picks its linux/amd64 entry (the server's rule,
/// [`Manifest::schema1_source`]); an image is itself.
fn select_image(top: &Manifest, child: Option<&Path>) -> Result<Manifest, String> {
    if top.media_type == MediaType::OciIndex {
        // distribution's negotiation: an OCI index is refused, never narrowed.
        return Err(
            "an OCI index is never converted to Schema 1 (a registry answers 404 MANIFEST_UNKNOWN to a client without OCI index support)"
                .into(),
        );
    }
    let entry = match top.schema1_source() {
        Ok(Schema1Source::Itself) => {
            if child.is_some() {
                return Err("--child is only for manifest lists".into());
            }
            return Ok(top.clone());
        }
        Ok(Schema1Source::AlreadySchema1) => {
            return Err("the manifest is already Schema 1".into());
        }
        Err(e) => {
            return Err(format!("{e} (a registry answers 404 {})", e.error_code()));
        }
        Ok(Schema1Source::Entry(entry)) => entry,
    };
    let Some(child) = child else {
        return Err(format!(
            "the manifest list's linux/amd64 entry is {} ({}); pass that manifest with --child FILE",
            entry.digest, entry.media_type
        ));
    };
    let raw = read(child, "child manifest")?;
    if !entry.digest.verifies(&raw) {
        return Err(format!(
            "--child {} has digest {}, but the list's linux/amd64 entry is {}",
            child.display(),
            Digest::sha256_of(&raw),
            entry.digest
        ));
    }
    let m = Manifest::parse(raw, Some(&entry.media_type))
        .map_err(|e| format!("{}: {e}", child.display()))?;
    match m.kind {
        ManifestKind::Image(_) => Ok(m),
        _ => Err(format!(
            "the linux/amd64 entry is a {}, which a registry serves as it is, unconverted",
            m.media_type
        )),
    }
}

/// Check the config blob against the manifest, check the layers fit Schema 1, and
/// build the canonical payload.
pub fn image_payload(
    image: &Manifest,
    config: &[u8],
    name: &str,
    tag: &str,
) -> Result<Vec<u8>, String> {
    let ManifestKind::Image(img) = &image.kind else {
        return Err("not an image manifest".into());
    };
    if !img.config.digest.verifies(config) {
        return Err(format!(
            "config file has digest {}, but the manifest names {}",
            Digest::sha256_of(config),
            img.config.digest
        ));
    }
    schema1::convert_image(img, config, name, tag).map_err(|e| e.to_string())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} file {}: {e}", path.display()))
}

/// A PEM (SEC1 or PKCS#8) or JWK P-256 private key, told apart by content
/// like `serve` does ([`SigningKey::from_key_text`]).
pub fn load_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    SigningKey::from_key_text(&text).map_err(|e| format!("key file {}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `regcache convert --key` and `serve`'s key file read the same files:
    /// the format comes from the content, not from the name.
    #[test]
    fn key_files_load_by_content_whatever_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let jwk_in_pem = dir.path().join("key.pem");
        std::fs::write(&jwk_in_pem, key.to_jwk()).unwrap();
        let pem_in_json = dir.path().join("key.json");
        std::fs::write(&pem_in_json, key.to_pem()).unwrap();
        let pem_in_jwk = dir.path().join("signing.jwk");
        std::fs::write(&pem_in_jwk, key.to_pem()).unwrap();
        for path in [&jwk_in_pem, &pem_in_json, &pem_in_jwk] {
            assert_eq!(load_key(path).unwrap().kid(), key.kid(), "{path:?}");
            assert_eq!(
                crate::server::load_or_create_key(path).unwrap().kid(),
                key.kid(),
                "{path:?}"
            );
        }
        let junk = dir.path().join("key.pem");
        std::fs::write(&junk, "not a key").unwrap();
        let e = load_key(&junk).unwrap_err();
        assert!(e.contains("key.pem") && e.contains("neither a JWK"), "{e}");
        assert!(crate::server::load_or_create_key(&junk).is_err());
    }

    #[test]
    fn a_new_key_file_still_takes_its_format_from_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let jwk = dir.path().join("new.json");
        let pem = dir.path().join("sub/new.pem");
        let a = crate::server::load_or_create_key(&jwk).unwrap();
        let b = crate::server::load_or_create_key(&pem).unwrap();
        assert!(std::fs::read_to_string(&jwk).unwrap().starts_with('{'));
        assert!(
            std::fs::read_to_string(&pem)
                .unwrap()
                .starts_with("-----BEGIN EC PRIVATE KEY-----")
        );
        assert_eq!(load_key(&jwk).unwrap().kid(), a.kid());
        assert_eq!(load_key(&pem).unwrap().kid(), b.kid());
    }
}
