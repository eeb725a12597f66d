//! regcache-upstream: the client regcache uses to talk to upstream
//! registries (Docker Hub, a distribution instance, …).
//!
//! * **Auth** (spec §5.9): a `401` is answered by parsing
//!   `WWW-Authenticate`; `Bearer` challenges get a token from the realm
//!   (Basic auth with the configured credentials, anonymous otherwise),
//!   cached per (upstream, [`Scope`]) until shortly before expiry and reused
//!   proactively; `Basic` challenges (htpasswd) get the credentials.
//! * **Redirects** are followed by hand; `Authorization` goes only to the
//!   upstream's own origin, never to a CDN or signed storage URL (§5.4).
//! * **Retries** for connection failures, timeouts, `5xx` and `429` on
//!   idempotent requests, with capped exponential backoff, jitter and
//!   `Retry-After`; never once a body has reached the caller
//!   ([`RetryConfig`]).
//! * **Errors** keep registry answers ([`UpstreamError::Registry`], with the
//!   parsed envelope) apart from transport failures, and say whether
//!   stale-if-error applies ([`UpstreamError::is_unavailable`]).
//! * **Secrets** live in [`Secret`], whose `Debug` is `<redacted>`; no
//!   password or token reaches a log or an error message.
//!
//! The server programs against [`UpstreamApi`]; [`UpstreamClient`] is the real
//! implementation. With feature `mock`, the [`mock`] module has test
//! doubles: `MemoryRegistry`, a registry in memory, and `FailureUpstream`,
//! which wraps any implementation to inject faults.
//!
//! ```no_run
//! # async fn demo() -> Result<(), regcache_upstream::UpstreamError> {
//! use regcache_formats::media_type::ALL_MANIFEST_TYPES;
//! use regcache_upstream::{UpstreamClient, ClientConfig};
//!
//! let hub = UpstreamClient::new(ClientConfig::default())?;
//! let head = hub.head_manifest("library/alpine", "latest", &ALL_MANIFEST_TYPES).await?;
//! println!("{:?}", head.digest);
//! # Ok(()) }
//! ```

mod api;
mod auth;
mod cause;
mod client;
mod config;
mod error;
#[cfg(feature = "mock")]
pub mod mock;
pub mod referrers;
mod retry;
mod scope;
mod stats;

pub use api::{
    BlobBody, BlobHead, ByteStream, Identity, ManifestBody, ManifestHead, RawRequest, RawResponse,
    RequestBody, UpstreamApi,
};
pub use cause::Cause;
pub use client::{MAX_MANIFEST_SIZE, UpstreamClient};
pub use config::{ClientConfig, Credentials, RetryConfig, Secret};
pub use error::{BoxError, TimeoutPhase, UpstreamError, chain};
#[cfg(feature = "mock")]
pub use mock::{FailureUpstream, Fault, Op};
pub use referrers::ReferrersAnswer;
pub use scope::Scope;
pub use stats::{DURATION_BUCKETS, Durations, UpstreamStats, status_class};
