//! Which content belongs to which repository: the cache keeps manifests and
//! blobs by digest, shared by every repository, but a client allowed into
//! one repository must not read another's content by naming its digest
//! there. distribution keeps a link per repository and blob for this; here
//! the links are learned, in memory:
//!
//! - a manifest served through a repository (by tag, or by a digest already
//!   linked or checked) links itself and everything it names (config,
//!   layers, list entries) to that repository;
//! - anything else is asked of the upstream, through the same repository and
//!   as the request's identity (`HEAD`), once; its yes is a link.
//!
//! Only consulted when client authentication is on (`[auth] mode` other
//! than `"none"`): without it every client may read every repository anyway.
//! After a restart the links are relearned as clients pull (a pull starts
//! with its manifest); a pull by digest of content not linked yet needs the
//! upstream, and gets its error (not the cached bytes) while it is down.

use regcache_formats::Digest;
use regcache_formats::manifest::{Manifest, ManifestKind};
use regcache_formats::media_type::ALL_MANIFEST_TYPES;
use regcache_formats::reference::RepositoryName;
use sha2::{Digest as _, Sha256};

use crate::error::Error;
use crate::request::Target;

/// Links kept (least recently used go first; a forgotten one costs a HEAD).
const MAX_LINKS: u64 = 1_000_000;

/// What a digest is, for the `HEAD` that checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Manifest,
    Blob,
}

#[derive(Clone)]
pub struct Links {
    known: moka::sync::Cache<[u8; 32], ()>,
    /// For the mapping log: content regcache generated for a repository
    /// (a Schema 1 upgrade) belongs to it, and its upstream never has it.
    store: Option<regcache_store::Store>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("known", &self.known.entry_count())
            .finish()
    }
}

impl Default for Links {
    fn default() -> Links {
        Links {
            known: moka::sync::Cache::builder().max_capacity(MAX_LINKS).build(),
            store: None,
        }
    }
}

/// The key of (upstream, repository, digest): fixed size, no allocation.
fn key(upstream: &str, repository: &str, digest: &Digest) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [upstream, repository, digest.as_str()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

impl Links {
    /// Links that also know what regcache generated (the store's mapping log).
    pub fn with_store(store: regcache_store::Store) -> Links {
        Links {
            store: Some(store),
            ..Links::default()
        }
    }

    pub fn is_linked(&self, target: &Target, name: &RepositoryName, digest: &Digest) -> bool {
        self.known
            .contains_key(&key(&target.upstream.name, name.as_str(), digest))
    }

    pub fn link(&self, target: &Target, name: &RepositoryName, digest: &Digest) {
        self.known
            .insert(key(&target.upstream.name, name.as_str(), digest), ());
    }

    /// `manifest`, served through `name`, and everything it names.
    pub fn link_manifest(&self, target: &Target, name: &RepositoryName, manifest: &Manifest) {
        self.link(target, name, &manifest.digest);
        let named: Vec<&Digest> = match &manifest.kind {
            ManifestKind::Image(m) => std::iter::once(&m.config)
                .chain(&m.layers)
                .map(|d| &d.digest)
                .collect(),
            ManifestKind::Index(i) => i.manifests.iter().map(|d| &d.digest).collect(),
            ManifestKind::Schema1(s) => s.fs_layers.iter().collect(),
        };
        for d in named {
            self.link(target, name, d);
        }
    }

    /// Ok when `digest` is known to belong to `name`, or the upstream says
    /// so now (then it is linked); else the upstream's answer as the error
    /// (404 for content that is not in that repository).
    pub async fn check(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
        object: Object,
    ) -> Result<(), Error> {
        if self.is_linked(target, name, digest) {
            return Ok(());
        }
        // Made here by regcache (a Schema 1 rendering, a Docker twin, an
        // upgrade and its config): the mapping log says it belongs here.
        if let Some(store) = &self.store
            && store
                .mappings()
                .find(&target.upstream.name, &target.client_name(name), digest)
                .is_some()
        {
            self.link(target, name, digest);
            return Ok(());
        }
        let client = target.client();
        let asked = match object {
            Object::Blob => client.head_blob(name.as_str(), digest).await.map(drop),
            Object::Manifest => client
                .head_manifest(name.as_str(), digest.as_str(), &ALL_MANIFEST_TYPES)
                .await
                .map(drop),
        };
        asked.map_err(Error::Upstream)?;
        self.link(target, name, digest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_parts_apart() {
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(key("up", "team/a", &d), key("up", "team/a", &d));
        assert_ne!(key("up", "team/a", &d), key("up", "team/b", &d));
        assert_ne!(key("up", "team/a", &d), key("up2", "team/a", &d));
        // The boundary between parts counts.
        assert_ne!(key("upt", "eam/a", &d), key("up", "team/a", &d));
    }
}
