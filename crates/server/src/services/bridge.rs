//! Docker forms of OCI images for clients without the OCI types: the twin of
//! an OCI image manifest, and the Docker manifest list of an OCI index's
//! twins (formats' [`bridge`]). Each generated manifest is made once per
//! source digest, kept in the store under its own digest (so a pull by that
//! digest works, after a restart too, with the upstream down) and recorded in
//! the mapping log, from which an evicted one is rebuilt: the bytes are a
//! function of the source's bytes.

use std::sync::Arc;

use regcache_formats::bridge::{self, BridgeError, ListEntry};
use regcache_formats::manifest::{Manifest, ManifestKind};
use regcache_formats::reference::RepositoryName;
use regcache_formats::{Digest, MediaType, RegistryError};
use regcache_store::{Direction, MappingRecord, Store};

use super::manifests::ManifestService;
use super::unix_now;
use crate::error::Error;
use crate::metrics::{Kind, Metrics};
use crate::request::Target;

/// OCI → Docker Schema 2 bridging. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BridgeService {
    store: Store,
    metrics: Arc<Metrics>,
    manifests: ManifestService,
    /// Docker form by source digest.
    forms: moka::sync::Cache<Digest, Arc<Manifest>>,
}

/// Why a bridge could not be built: refused (the image has no Docker form),
/// or an error on the way (an entry that could not be fetched).
enum Failure {
    Refused(BridgeError, Digest),
    Error(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Error(e)
    }
}

impl BridgeService {
    pub fn new(store: Store, metrics: Arc<Metrics>, manifests: ManifestService) -> BridgeService {
        BridgeService {
            store,
            metrics,
            manifests,
            forms: moka::sync::Cache::builder()
                .max_capacity(16 << 20)
                .weigher(|_, m: &Arc<Manifest>| u32::try_from(m.raw.len()).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// The Docker form of the OCI manifest or index `source`, reached as
    /// `name:tag`: its twin, or the list of its entries' twins. A refusal
    /// (404 `UNSUPPORTED`) names the manifest and the layer.
    pub async fn docker_form(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &str,
        source: &Arc<Manifest>,
    ) -> Result<Arc<Manifest>, Error> {
        match self.form(target, name, tag, source).await {
            Ok(m) => Ok(m),
            Err(Failure::Error(e)) => Err(e),
            Err(Failure::Refused(e, manifest)) => Err(refusal(
                &target.client_name(name),
                tag,
                source,
                &manifest,
                &e,
                "a client without the OCI types",
            )),
        }
    }

    async fn form(
        &self,
        target: &Target,
        name: &RepositoryName,
        tag: &str,
        source: &Arc<Manifest>,
    ) -> Result<Arc<Manifest>, Failure> {
        if let Some(m) = self.forms.get(&source.digest) {
            self.metrics.hit(Kind::Bridge);
            return Ok(m);
        }
        self.metrics.miss(Kind::Bridge);
        let generated = match &source.kind {
            ManifestKind::Image(image) if source.media_type == MediaType::OciManifest => {
                bridge::docker_twin(image)
                    .map_err(|e| Failure::Refused(e, source.digest.clone()))?
            }
            ManifestKind::Index(index) if source.media_type == MediaType::OciIndex => {
                // The entries' Docker forms, fetched and built side by side.
                let forms = bridge::runnable_entries(index).map(|entry| async move {
                    let child = self
                        .manifests
                        .get(target, name, &entry.digest, Some(&entry.media_type))
                        .await?;
                    let docker = match child.media_type {
                        MediaType::Schema2 => child,
                        MediaType::OciManifest => {
                            match Box::pin(self.form(target, name, tag, &child)).await {
                                Ok(twin) => twin,
                                // An artifact listed as an image: not for a Docker engine.
                                Err(Failure::Refused(BridgeError::NotAnImage { .. }, _)) => {
                                    return Ok(None);
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        _ => return Ok(None),
                    };
                    Ok(Some((
                        entry,
                        docker.digest.clone(),
                        docker.raw.len() as u64,
                    )))
                });
                let entries: Vec<_> = futures_util::future::try_join_all(forms)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                let entries: Vec<ListEntry<'_>> = entries
                    .iter()
                    .map(|(entry, digest, size)| ListEntry {
                        entry,
                        digest: digest.clone(),
                        size: *size,
                    })
                    .collect();
                bridge::docker_list(&entries)
                    .map_err(|e| Failure::Refused(e, source.digest.clone()))?
            }
            _ => {
                return Err(Failure::Error(Error::bug(
                    "a Docker form of a manifest that is not OCI",
                )));
            }
        };
        let parsed = Manifest::parse(generated.bytes, None)
            .map_err(|e| Error::internal("parsing a generated Docker manifest", e))?;
        let m = self.manifests.keep(parsed).await?;
        let record = MappingRecord {
            upstream: target.upstream.name.clone(),
            repository: target.client_name(name),
            tag: tag.to_owned(),
            direction: Direction::OciToDocker,
            digest: m.digest.clone(),
            media_type: m.media_type.as_str().to_owned(),
            source_digest: source.digest.clone(),
            source_media_type: source.media_type.as_str().to_owned(),
            first_seen_unix: unix_now(),
        };
        if let Err(e) = self.store.mappings().append(record) {
            tracing::warn!(digest = %m.digest, error = %e, "could not record the Docker twin's mapping");
        }
        tracing::info!(repo = %target.client_name(name), %tag, source = %source.digest, docker = %m.digest, "bridged OCI to Docker");
        self.forms.insert(source.digest.clone(), m.clone());
        Ok(m)
    }

    /// A Docker form regcache made for this repository but no longer holds,
    /// rebuilt from its source; `None` when `digest` is not one of them.
    pub async fn regenerated(
        &self,
        target: &Target,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Arc<Manifest>>, Error> {
        let Some(rec) = self.store.mappings().find_made(
            &target.upstream.name,
            &target.client_name(name),
            digest,
            Direction::OciToDocker,
        ) else {
            return Ok(None);
        };
        let source = self.manifests.source_of(target, name, &rec).await?;
        self.forms.invalidate(&rec.source_digest);
        let m = self.docker_form(target, name, &rec.tag, &source).await?;
        Ok((m.digest == *digest).then_some(m))
    }
}

/// 404 `UNSUPPORTED`: the image has no form the client (`client`, in words)
/// can read. `manifest` is the entry at fault when it is not `source`.
pub fn refusal(
    repository: &str,
    tag: &str,
    source: &Manifest,
    manifest: &Digest,
    e: &BridgeError,
    client: &str,
) -> Error {
    let mut message = format!("{repository}:{tag} ({}) ", source.digest);
    if *manifest != source.digest {
        message.push_str(&format!("has an entry {manifest} that "));
    }
    message.push_str(&format!("cannot be served to {client}: {e}"));
    let mut detail = serde_json::json!({
        "repository": repository,
        "tag": tag,
        "manifest": manifest.as_str(),
    });
    if let Some(layer) = e.layer() {
        detail["layer"] = serde_json::Value::String(layer.to_string());
    }
    Error::policy(
        404,
        RegistryError::with_message(e.error_code(), message).detail(detail),
    )
}
