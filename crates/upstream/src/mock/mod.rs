//! Test doubles for [`UpstreamApi`](crate::UpstreamApi) (feature `mock`,
//! never enabled in the binary), after mountpoint-s3's mock and failure
//! clients:
//!
//! * [`MemoryRegistry`]: a registry held in memory — blobs, manifests,
//!   tags, uploads — that answers the typed calls and enough of the raw
//!   registry API (`send`) for push and listing tests.
//! * [`FailureUpstream`]: wraps any implementation (the real client or a
//!   `MemoryRegistry`) and injects faults into chosen calls.
//!
//! Both count their calls per [`Op`] and can [`hold`](MemoryRegistry::hold)
//! an operation at a [`Gate`] until the test lets it through, so a test can
//! tell whether a request waited for an upstream call.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use regcache_upstream::mock::{FailureUpstream, Fault, MemoryRegistry, Op};
//! use regcache_upstream::UpstreamApi;
//!
//! let reg = MemoryRegistry::new("quay.io");
//! let digest = reg.put_blob("team/app", &b"layer"[..]);
//! let up = FailureUpstream::new(reg);
//! up.inject_times(Op::GetBlob, Fault::unavailable(), 1);
//! assert!(up.get_blob("team/app", &digest, None).await.is_err());
//! assert_eq!(up.get_blob("team/app", &digest, None).await.unwrap().status, 200);
//! assert_eq!(up.inner().calls(Op::GetBlob), 1, "the fault never reached it");
//! # }
//! ```

mod control;
mod failure;
mod memory;
mod routes;

pub use control::Gate;
pub use failure::{FailureUpstream, Fault};
pub use memory::{DEFAULT_MAX_CHUNK, MemoryRegistry};

/// The operations of [`UpstreamApi`](crate::UpstreamApi), for counting
/// calls, injecting faults and holding calls at a [`Gate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Ping,
    HeadManifest,
    GetManifest,
    HeadBlob,
    GetBlob,
    Send,
}
