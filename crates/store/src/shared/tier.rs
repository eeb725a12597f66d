//! The shared tier as one more [`Tier`] behind memory and disk.
//!
//! `get` serves only small objects (manifests, configs: up to
//! `small_object_max`), read whole and re-hashed, because a `Source` is bytes
//! or a local file; large blobs are streamed by the server through
//! [`SharedTier::open`]. `remove` does nothing (see the module docs of
//! `shared`).

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use regcache_formats::Digest;

use super::SharedTier;
use crate::error::StoreError;
use crate::hasher::verify_bytes;
use crate::source::Source;
use crate::tier::Tier;

impl SharedTier {
    async fn tier_get(&self, digest: &Digest) -> Result<Option<Source>, StoreError> {
        match self.head(digest).await? {
            Some(len) if len <= self.config().small_object_max => {}
            _ => return Ok(None),
        }
        let result = self.get_bytes(digest).await;
        let Some(bytes) = self.count(result)? else {
            return Ok(None);
        };
        if let Err(actual) = verify_bytes(digest, &bytes) {
            tracing::warn!(%digest, %actual, "shared object does not match its digest; treating as a miss");
            return Ok(None);
        }
        Ok(Some(Source::Bytes(bytes)))
    }
}

impl Tier for SharedTier {
    fn name(&self) -> &'static str {
        "shared"
    }

    fn max_object_bytes(&self) -> u64 {
        self.config().small_object_max
    }

    fn get<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<Source>, StoreError>> {
        self.tier_get(digest).boxed()
    }

    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        self.head(digest).boxed()
    }

    fn put<'a>(
        &'a self,
        digest: &'a Digest,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.put_bytes(digest, bytes).map(|r| r.map(drop)).boxed()
    }

    /// Does nothing and returns `Ok(false)`: a purge is per replica, and the
    /// shared copy is verified content the other replicas use.
    fn remove<'a>(&'a self, _digest: &'a Digest) -> BoxFuture<'a, Result<bool, StoreError>> {
        std::future::ready(Ok(false)).boxed()
    }
}
