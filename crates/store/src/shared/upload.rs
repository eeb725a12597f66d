//! Uploading a committed cache file to the shared tier.
//!
//! Small files (below `part_size`) go by one conditional PUT. Larger ones go
//! by a multipart upload to a temporary key, which is then conditionally
//! copied to the final key (see the module docs of `shared` for why) and
//! deleted. Parts are read with `pread` on the blocking pool, one part in
//! memory at a time, and hashed on the way: a file that no longer matches its
//! digest (a damaged disk) is refused before the final key is touched.
//!
//! Leftovers: every path that fails, and a future dropped mid-way, aborts the
//! multipart upload and deletes the temporary key, best effort (a dropped
//! future spawns the clean-up on the current runtime). A crash can still
//! leave them; a lifecycle rule on `{prefix}tmp/` covers that.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{MultipartId, ObjectStore, PutPayload};
use regcache_formats::Digest;

use super::stats::Counters;
use super::{Inner, SharedTier, Stored};
use crate::error::StoreError;
use crate::hasher::ContentHasher;

impl SharedTier {
    /// Stores a verified file (a committed cache entry) of `len` bytes:
    /// multipart upload to `{prefix}tmp/<random>`, conditional create of the
    /// final key from it, then deletion of the temporary key. A failure
    /// leaves no final object. An object already present is not uploaded
    /// again (one HEAD first).
    pub async fn upload_file(
        &self,
        digest: &Digest,
        file: File,
        len: u64,
    ) -> Result<Stored, StoreError> {
        let result = self.upload_inner(digest, Arc::new(file), len).await;
        if result.is_ok() {
            Counters::add(&self.inner.counters.uploads, 1);
        }
        self.count(result)
    }

    async fn upload_inner(
        &self,
        digest: &Digest,
        file: Arc<File>,
        len: u64,
    ) -> Result<Stored, StoreError> {
        if self.head(digest).await?.is_some() {
            Counters::add(&self.inner.counters.puts_existing, 1);
            return Ok(Stored::AlreadyThere);
        }
        let part_size = self.inner.config.part_size;
        if len < part_size as u64 {
            let hasher = ContentHasher::new(digest.algorithm());
            let (bytes, hasher) = read_part(digest, file, 0, len as usize, hasher).await?;
            verify(digest, hasher)?;
            return self.create(digest, bytes.into()).await;
        }

        let store = &self.inner.store;
        let tmp = self.inner.keys.tmp();
        let upload_id = store
            .create_multipart(&tmp)
            .await
            .map_err(StoreError::shared("start upload"))?;
        let mut upload = TmpUpload {
            inner: Arc::clone(&self.inner),
            tmp,
            upload_id: Some(upload_id),
            done: false,
        };
        let result = self.upload_parts(digest, &mut upload, file, len).await;
        upload.clean_up().await;
        result
    }

    /// The multipart upload to the temporary key and the conditional copy.
    async fn upload_parts(
        &self,
        digest: &Digest,
        upload: &mut TmpUpload,
        file: Arc<File>,
        len: u64,
    ) -> Result<Stored, StoreError> {
        let store = &self.inner.store;
        let part_size = self.inner.config.part_size as u64;
        let Some(upload_id) = upload.upload_id.clone() else {
            return Err(StoreError::Task("upload started without an id".into()));
        };
        let mut hasher = ContentHasher::new(digest.algorithm());
        let mut parts = Vec::new();
        let mut offset = 0;
        while offset < len {
            let n = part_size.min(len - offset);
            let (data, h) =
                read_part(digest, Arc::clone(&file), offset, n as usize, hasher).await?;
            hasher = h;
            let part = store
                .put_part(&upload.tmp, &upload_id, parts.len(), PutPayload::from(data))
                .await
                .map_err(StoreError::shared("upload part"))?;
            Counters::add(&self.inner.counters.upload_bytes, n);
            parts.push(part);
            offset += n;
        }
        verify(digest, hasher)?;
        store
            .complete_multipart(&upload.tmp, &upload_id, parts)
            .await
            .map_err(StoreError::shared("complete upload"))?;
        // The upload is now an object: clean-up deletes it instead of aborting.
        upload.upload_id = None;
        let final_key = self.inner.keys.blob(digest);
        let copied = store.copy_if_not_exists(&upload.tmp, &final_key).await;
        self.created(digest, copied, "create from upload").await
    }
}

/// A temporary upload that must not outlive its `upload_file` call.
struct TmpUpload {
    inner: Arc<Inner>,
    tmp: Path,
    /// `Some` while the multipart upload is open; `None` once it completed
    /// into the temporary object.
    upload_id: Option<MultipartId>,
    done: bool,
}

impl TmpUpload {
    async fn clean_up(&mut self) {
        self.done = true;
        clean_up(
            Arc::clone(&self.inner),
            self.tmp.clone(),
            self.upload_id.take(),
        )
        .await;
    }
}

impl Drop for TmpUpload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The upload_file future was dropped mid-way.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(clean_up(
                Arc::clone(&self.inner),
                self.tmp.clone(),
                self.upload_id.take(),
            ));
        }
    }
}

/// Aborts the multipart upload if still open, and deletes the temporary
/// object (it may exist even after a failed completion, say on a timeout).
async fn clean_up(inner: Arc<Inner>, tmp: Path, upload_id: Option<MultipartId>) {
    if let Some(id) = upload_id
        && let Err(error) = inner.store.abort_multipart(&tmp, &id).await
    {
        tracing::warn!(%tmp, %error, "aborting a shared-tier upload failed; a lifecycle rule on tmp/ cleans it");
    }
    match inner.store.delete(&tmp).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(error) => {
            tracing::warn!(%tmp, %error, "deleting a shared-tier temporary object failed; a lifecycle rule on tmp/ cleans it");
        }
    }
}

/// Reads `n` bytes at `offset` on the blocking pool and hashes them.
async fn read_part(
    digest: &Digest,
    file: Arc<File>,
    offset: u64,
    n: usize,
    mut hasher: ContentHasher,
) -> Result<(Vec<u8>, ContentHasher), StoreError> {
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, offset)?;
        hasher.update(&buf);
        Ok::<_, io::Error>((buf, hasher))
    })
    .await
    .map_err(StoreError::task)?;
    read.map_err(StoreError::io(
        "read for shared upload",
        PathBuf::from(format!("<cache file of {digest}>")),
    ))
}

fn verify(digest: &Digest, hasher: ContentHasher) -> Result<(), StoreError> {
    hasher
        .verify(digest)
        .map_err(|actual| StoreError::DigestMismatch {
            expected: digest.clone(),
            actual,
        })
}
