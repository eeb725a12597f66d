//! The shared S3 tier from `[shared]`: built at start-up, and checked once.

use std::time::Duration;

use regcache_store::{SharedConfig, SharedTier, StoreError};

use crate::config::SharedSettings;

/// How long the start-up check of the bucket may take.
const CHECK_WAIT: Duration = Duration::from_secs(10);

/// The tier `[shared]` describes. A bucket that can't be reached at start-up
/// is logged, not fatal: the replica serves from its own tiers and the
/// upstream, and uses the bucket once it answers (each lookup asks again).
/// A configuration the store refuses (an empty bucket, a key without its
/// secret) is fatal.
pub async fn shared_tier(settings: &SharedSettings) -> Result<SharedTier, StoreError> {
    let mut config = SharedConfig::new(settings.bucket.clone());
    config.prefix = settings.prefix.clone();
    config.endpoint = settings.endpoint.clone();
    config.region = settings.region.clone();
    config.path_style = settings.path_style;
    config.access_key_id = settings.access_key_id.clone();
    config.secret_access_key = settings.secret_access_key.clone();
    let tier = SharedTier::new(config)?;
    match tokio::time::timeout(CHECK_WAIT, tier.check()).await {
        Ok(Ok(())) => tracing::info!(
            bucket = %settings.bucket,
            prefix = %settings.prefix,
            endpoint = settings.endpoint.as_deref().unwrap_or("aws"),
            "shared tier"
        ),
        Ok(Err(error)) => tracing::warn!(
            bucket = %settings.bucket,
            %error,
            "shared tier not usable now; serving from this replica's cache and the upstream until it answers"
        ),
        Err(_) => tracing::warn!(
            bucket = %settings.bucket,
            "shared tier did not answer within 10 s; serving from this replica's cache and the upstream until it answers"
        ),
    }
    Ok(tier)
}
