//! Test doubles for [`UpstreamApi`](crate::UpstreamApi) (feature `mock`,
//! never enabled in the binary), after mountpoint-s3's mock and failure
//! clients:
//!
//! * [`FailureUpstream`]: wraps any implementation and injects faults into
//!   chosen calls.
//!
//! It counts calls per [`Op`] and can [`hold`](FailureUpstream::hold)
//! an operation at a [`Gate`] until the test lets it through, so a test can
//! tell whether a request waited for an upstream call.

mod control;
mod failure;

pub use control::Gate;
pub use failure::{FailureUpstream, Fault};

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
