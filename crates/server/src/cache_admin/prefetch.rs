//! `POST /api/prefetch`: warm images ahead of a rollout, through the same
//! services client pulls use (tags, manifests, blob fills), so everything is
//! verified and cached the normal way and a blob a client is pulling at the
//! same time is downloaded once.
//!
//! Progress goes back as NDJSON, one object a line:
//! * `{"event":"blob","image":…,"digest":…,"size":…,"done":…}` when a blob
//!   starts, at most every [`PROGRESS_EVERY`] while it streams, and when it
//!   is complete (`done == size`; `"cached":true` if it already was);
//! * `{"event":"image","image":…,"digest":…,"blobs":…,"bytes":…}` when all
//!   of an image's blobs are cached, or `{"event":"error","image":…,"error":…}`
//!   when it failed (the others go on);
//! * last, `{"event":"summary","images":…,"failed":…,"blobs":…,"bytes":…}`.
//!
//! At most [`CONCURRENT_BLOBS`] blobs are fetched at once per request. A
//! client that goes away does not stop the work: fills finish regardless.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use regcache_formats::Digest;
use regcache_formats::manifest::{Manifest, ManifestKind};
use regcache_formats::reference::Tag;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use super::imageref::Resolved;
use crate::error::Error;
use crate::handlers::App;
use crate::request::{RequestSpan, Target};
use crate::web::body::ChunkStream;

/// Blob downloads in flight per prefetch request.
pub const CONCURRENT_BLOBS: usize = 4;

/// Least time between two progress lines of one blob.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// `os/architecture[/variant]`, as `--platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformFilter {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformFilter {
    pub fn parse(s: &str) -> Result<PlatformFilter, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(PlatformFilter {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(PlatformFilter {
                    os: (*os).to_owned(),
                    architecture: (*arch).to_owned(),
                    variant: Some((*variant).to_owned()),
                })
            }
            _ => Err(format!(
                "bad platform {s:?}: expected os/architecture[/variant], e.g. linux/amd64"
            )),
        }
    }

    fn matches(&self, p: &regcache_formats::manifest::Platform) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p.variant.as_deref() == Some(v))
    }
}

/// One image to warm: as typed, and resolved.
#[derive(Debug, Clone)]
pub struct Job {
    pub typed: String,
    pub image: Resolved,
}

/// Starts the work and returns the NDJSON stream of its progress.
pub fn start(app: Arc<App>, jobs: Vec<Job>, platforms: Vec<PlatformFilter>) -> ChunkStream {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let run = Run {
            app,
            tx,
            platforms,
            slots: Arc::new(Semaphore::new(CONCURRENT_BLOBS)),
        };
        let results = futures_util::future::join_all(jobs.iter().map(|job| run.image(job))).await;
        let mut failed = 0;
        let (mut blobs, mut bytes) = (0usize, 0u64);
        for (job, result) in jobs.iter().zip(results) {
            match result {
                Ok((n, b)) => {
                    blobs += n;
                    bytes += b;
                }
                Err(e) => {
                    failed += 1;
                    run.send(json!({"event": "error", "image": job.typed, "error": e}))
                        .await;
                }
            }
        }
        run.send(json!({
            "event": "summary",
            "images": jobs.len(),
            "failed": failed,
            "blobs": blobs,
            "bytes": bytes,
        }))
        .await;
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok(line), rx))
    }))
}

struct Run {
    app: Arc<App>,
    tx: mpsc::Sender<Bytes>,
    platforms: Vec<PlatformFilter>,
    slots: Arc<Semaphore>,
}

/// What a client sees of an error: status, code and message.
fn describe(e: &Error) -> String {
    let r = crate::rescue::classify(e);
    match r.envelope.errors.first() {
        Some(first) => format!("{} {}: {}", r.status, first.code.as_str(), first.message),
        None => format!("{}: {e}", r.status),
    }
}

impl Run {
    async fn send(&self, line: serde_json::Value) {
        let mut text = line.to_string();
        text.push('\n');
        // A client that left: the work goes on (its fills finish anyway).
        let _ = self.tx.send(Bytes::from(text)).await;
    }

    /// Warms one image; `Ok((blobs, bytes))` once all are cached.
    async fn image(&self, job: &Job) -> Result<(usize, u64), String> {
        let r = &job.image;
        let upstream = self
            .app
            .upstreams()
            .iter()
            .find(|u| u.name == r.upstream)
            .cloned()
            .ok_or_else(|| format!("no upstream named {:?}", r.upstream))?;
        let target = Target {
            upstream,
            span: RequestSpan::default(),
            prefix: None,
            library_added: false,
            upstream_path: String::new(),
            acting_as: None,
        };
        let services = self.app.services();
        let name = &r.repository;
        let top = match (&r.digest, &r.tag) {
            (Some(d), _) => services.manifests.get(&target, name, d, None).await,
            (None, tag) => {
                let latest;
                let tag = match tag {
                    Some(t) => t,
                    None => {
                        latest = Tag::parse("latest").map_err(|e| e.to_string())?;
                        &latest
                    }
                };
                services.tags.resolve(&target, name, tag).await
            }
        }
        .map_err(|e| format!("manifest: {}", describe(&e)))?;
        let mut images: Vec<Arc<Manifest>> = Vec::new();
        match &top.kind {
            ManifestKind::Index(index) => {
                let chosen: Vec<_> = index
                    .manifests
                    .iter()
                    .filter(|d| {
                        self.platforms.is_empty()
                            || d.platform
                                .as_deref()
                                .is_some_and(|p| self.platforms.iter().any(|f| f.matches(p)))
                    })
                    .collect();
                if chosen.is_empty() {
                    return Err(format!(
                        "{} lists no manifest for the requested platform(s)",
                        top.digest
                    ));
                }
                for child in chosen {
                    let m = services
                        .manifests
                        .get(&target, name, &child.digest, Some(&child.media_type))
                        .await
                        .map_err(|e| format!("manifest {}: {}", child.digest, describe(&e)))?;
                    images.push(m);
                }
            }
            _ => images.push(top.clone()),
        }
        let mut wanted: BTreeSet<Digest> = BTreeSet::new();
        let mut ordered = Vec::new();
        for m in &images {
            let digests: Vec<Digest> = match &m.kind {
                ManifestKind::Image(i) => std::iter::once(i.config.digest.clone())
                    .chain(
                        i.layers
                            .iter()
                            .filter(|l| l.urls.is_empty())
                            .map(|l| l.digest.clone()),
                    )
                    .collect(),
                ManifestKind::Schema1(s) => s.fs_layers.clone(),
                ManifestKind::Index(_) => Vec::new(),
            };
            for d in digests {
                if wanted.insert(d.clone()) {
                    ordered.push(d);
                }
            }
        }
        let results = futures_util::future::join_all(
            ordered
                .iter()
                .map(|d| self.blob(&job.typed, &target, job, d)),
        )
        .await;
        let mut bytes = 0;
        let mut errors = Vec::new();
        for (d, r) in ordered.iter().zip(results) {
            match r {
                Ok(n) => bytes += n,
                Err(e) => errors.push(format!("blob {d}: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        self.send(json!({
            "event": "image",
            "image": job.typed,
            "digest": top.digest,
            "blobs": ordered.len(),
            "bytes": bytes,
        }))
        .await;
        Ok((ordered.len(), bytes))
    }

    /// Caches one blob (or finds it cached), reporting progress.
    async fn blob(
        &self,
        image: &str,
        target: &Target,
        job: &Job,
        digest: &Digest,
    ) -> Result<u64, String> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| "prefetch stopped".to_owned())?;
        let services = self.app.services();
        let line = |size: u64, done: u64, cached: bool| json!({"event": "blob", "image": image, "digest": digest, "size": size, "done": done, "cached": cached});
        if let Ok(Some(len)) = services.store.stat(digest).await {
            self.send(line(len, len, true)).await;
            return Ok(len);
        }
        let cold = services
            .blobs
            .cold(target, &job.image.repository, digest)
            .await
            .map_err(|e| describe(&e))?;
        let (len, mut reader) = (cold.len, cold.reader);
        self.send(line(len, 0, false)).await;
        let mut done = 0u64;
        let mut last = Instant::now();
        while let Some(chunk) = reader.next().await {
            let chunk = chunk.map_err(|e| describe(&Error::fill(e, &target.upstream.name)))?;
            done += chunk.len() as u64;
            if last.elapsed() >= PROGRESS_EVERY && done < len {
                last = Instant::now();
                self.send(line(len, done, false)).await;
            }
        }
        if done != len {
            return Err(format!("the download ended at {done} of {len} bytes"));
        }
        self.send(line(len, done, false)).await;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse() {
        let p = PlatformFilter::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(
            PlatformFilter::parse("linux/amd64").unwrap().architecture,
            "amd64"
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
            let e = PlatformFilter::parse(bad).unwrap_err();
            assert!(e.contains("os/architecture"), "{bad}: {e}");
        }
    }
}
