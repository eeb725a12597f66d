//! Settings of the shared tier and the object_store client built from them.
//!
//! Credentials: explicit keys in the config win; without them the builder
//! starts from `AmazonS3Builder::from_env`, so `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity (EKS/IRSA), the
//! ECS container endpoint and instance metadata work as in every other AWS
//! tool. The settings in this struct are applied after the environment, so
//! they override any `AWS_*` variable of the same meaning.
//!
//! The secret key and session token are redacted in `Debug`: the config is
//! logged at start-up and shown by `regcache check`.

use std::fmt;
use std::time::Duration;

use object_store::aws::{
    AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut, S3CopyIfNotExists,
};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use crate::error::StoreError;

/// S3 refuses multipart parts below 5 MiB (except the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Default multipart part size.
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// Default limit of what `Tier::get` reads into memory.
pub const DEFAULT_SMALL_OBJECT_MAX: u64 = 1024 * 1024;
/// Connect timeout of every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a failed request (object_store retries 5xx, 429 and
/// connection errors with backoff). A cache would rather fall back to the
/// upstream than wait minutes for a sick store.
const MAX_RETRIES: usize = 3;

/// Settings of the shared object-store tier. Debug redacts the secret key
/// and the session token.
#[derive(Clone)]
#[non_exhaustive]
pub struct SharedConfig {
    pub bucket: String,
    /// `""` or a folder such as `"regcache/"`. Blobs live at
    /// `{prefix}blobs/<algorithm>/<hex>`, tags at
    /// `{prefix}tags/<upstream>/<repository>/<tag>`, uploads in progress at
    /// `{prefix}tmp/<random>`.
    pub prefix: String,
    /// For example `"http://127.0.0.1:9000"`; `None` is AWS itself (the
    /// `AWS_ENDPOINT` variable still applies). Plain `http://` is allowed
    /// only because it is written here explicitly.
    pub endpoint: Option<String>,
    /// Default `"us-east-1"`.
    pub region: String,
    /// `true`: `http://endpoint/bucket/key` (minio, moto, Ceph). `false`:
    /// virtual-hosted style; with an explicit endpoint, object_store then uses
    /// the endpoint as the bucket's own host (it must name the bucket).
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Per request (default 30 s); the connect timeout is 5 s.
    pub request_timeout: Duration,
    /// `Tier::get` reads objects up to this size into memory (default 1 MiB);
    /// larger blobs are streamed with `SharedTier::open`.
    pub small_object_max: u64,
    /// Multipart part size (default 16 MiB, at least 5 MiB as S3 requires).
    /// One part is in memory at a time per upload.
    pub part_size: usize,
}

impl SharedConfig {
    /// Defaults for everything but the bucket: no prefix, AWS, `us-east-1`,
    /// virtual-hosted style, credentials from the environment.
    pub fn new(bucket: impl Into<String>) -> Self {
        SharedConfig {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            request_timeout: Duration::from_secs(30),
            small_object_max: DEFAULT_SMALL_OBJECT_MAX,
            part_size: DEFAULT_PART_SIZE,
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        if self.bucket.is_empty() {
            return Err(StoreError::SharedConfig("the bucket name is empty".into()));
        }
        if self.part_size < MIN_PART_SIZE {
            return Err(StoreError::SharedConfig(format!(
                "part_size {} is below the S3 minimum of {MIN_PART_SIZE} bytes",
                self.part_size
            )));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(StoreError::SharedConfig(
                "access_key_id and secret_access_key must be given together".into(),
            ));
        }
        if self.session_token.is_some() && self.access_key_id.is_none() {
            return Err(StoreError::SharedConfig(
                "session_token needs access_key_id and secret_access_key".into(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(StoreError::SharedConfig("request_timeout is zero".into()));
        }
        Ok(())
    }

    /// The object_store client. No I/O: credentials from instance metadata
    /// or web identity are fetched on the first request.
    ///
    /// Conditional writes: `PutMode::Create` sends `If-None-Match: *`
    /// (`S3ConditionalPut::ETagMatch`), and `copy_if_not_exists` is a
    /// multipart upload-part-copy completed with `If-None-Match: *`
    /// (`S3CopyIfNotExists::Multipart`); see the module docs of `shared`.
    pub(crate) fn build(&self) -> Result<AmazonS3, StoreError> {
        self.validate()?;
        let mut options = ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(CONNECT_TIMEOUT);
        if let Some(endpoint) = &self.endpoint
            && endpoint.starts_with("http://")
        {
            options = options.with_allow_http(true);
        }
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: MAX_RETRIES,
            retry_timeout: self.request_timeout.saturating_mul(2),
        };
        let mut builder = from_env_non_empty()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_client_options(options)
            .with_retry(retry)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = &self.session_token {
                builder = builder.with_token(token);
            }
        }
        builder.build().map_err(StoreError::shared("configure"))
    }
}

impl fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("SharedConfig")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("request_timeout", &self.request_timeout)
            .field("small_object_max", &self.small_object_max)
            .field("part_size", &self.part_size)
            .finish()
    }
}

/// `AmazonS3Builder::from_env`, except that empty `AWS_*` variables are
/// skipped: a Kubernetes Secret with an empty `AWS_ACCESS_KEY_ID`
/// placeholder must leave the web-identity / instance-role chain in charge,
/// not sign with empty keys.
fn from_env_non_empty() -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new();
    for (key, value) in std::env::vars_os() {
        let (Some(key), Some(value)) = (key.to_str(), value.to_str()) else {
            continue;
        };
        if !key.starts_with("AWS_") || value.is_empty() {
            continue;
        }
        if let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(config_key, value);
        }
    }
    builder
}
