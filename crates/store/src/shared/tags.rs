//! Tag records in the shared bucket: one small JSON object per tag, so a tag
//! resolved by one replica is known to all.
//!
//! A plain overwrite: the newest resolution wins, and a lost race only means
//! one replica's (equally fresh) answer replaces another's. A record that
//! doesn't parse (written by another version, or damaged) is logged and
//! treated as absent: the server then resolves the tag upstream and
//! overwrites it.

use object_store::{ObjectStore, PutPayload};

use super::SharedTier;
use crate::error::StoreError;
use crate::tags::TagRecord;

impl SharedTier {
    pub async fn get_tag(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagRecord>, StoreError> {
        let key = self.inner.keys.tag(upstream, repository, tag);
        let result = async {
            let got = match self.inner.store.get(&key).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(source) => {
                    return Err(StoreError::Shared {
                        op: "get tag",
                        source,
                    });
                }
            };
            got.bytes()
                .await
                .map(Some)
                .map_err(StoreError::shared("read tag"))
        }
        .await;
        let Some(bytes) = self.count(result)? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(error) => {
                tracing::warn!(%key, %error, "shared tag record does not parse; treating as absent");
                Ok(None)
            }
        }
    }

    pub async fn put_tag(
        &self,
        upstream: &str,
        repository: &str,
        tag: &str,
        record: &TagRecord,
    ) -> Result<(), StoreError> {
        let key = self.inner.keys.tag(upstream, repository, tag);
        let result = async {
            let json = serde_json::to_vec(record)?;
            self.inner
                .store
                .put(&key, PutPayload::from(json))
                .await
                .map(drop)
                .map_err(StoreError::shared("put tag"))
        }
        .await;
        self.count(result)
    }
}
