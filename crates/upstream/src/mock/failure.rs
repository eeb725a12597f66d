//! [`FailureUpstream`] (feature `mock`): a wrapper around any
//! [`UpstreamApi`] — the real [`crate::UpstreamClient`] pointed at a real
//! registry, or a [`MemoryRegistry`](super::MemoryRegistry) — that injects faults into chosen calls, after mountpoint-s3's
//! `failure_client.rs`. Real protocol behaviour is kept for every call that
//! has no fault.
//!
//! ```no_run
//! # use regcache_upstream::*;
//! # fn demo(real: UpstreamClient) {
//! let up = FailureUpstream::new(real);
//! // The next two manifest HEADs fail as if the upstream were down…
//! up.inject_times(Op::HeadManifest, Fault::unavailable(), 2);
//! // …and every blob download breaks after 1 KiB.
//! up.inject(Op::GetBlob, Fault::TruncateBody { after: 1024 });
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use regcache_formats::{Digest, ErrorCode, ErrorEnvelope, RegistryError};

use crate::api::{
    BlobBody, BlobHead, ByteStream, ManifestBody, ManifestHead, RawRequest, RawResponse,
    UpstreamApi, forward_upstream_api,
};
use crate::error::{TimeoutPhase, UpstreamError};
use crate::stats::UpstreamStats;

use super::Op;
use super::control::{Control, Gate};

/// What to do to a call.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Fail with this error; the inner client is not called. An empty
    /// `upstream` name in the error is filled with the inner client's name.
    Error(UpstreamError),
    /// Wait, then call the inner client.
    Delay(Duration),
    /// Call the inner client, then end the body (blob or raw response)
    /// with a transport error after `after` bytes. Other ops: no effect.
    TruncateBody { after: u64 },
    /// Call the inner client, then flip the bits of the body byte at
    /// `offset` (blob, manifest or raw body).
    CorruptBody { offset: u64 },
}

impl Fault {
    /// `503 UNAVAILABLE` from the registry.
    pub fn unavailable() -> Self {
        Fault::status(503, ErrorCode::Unavailable)
    }

    /// A registry error with this status and an envelope with `code`.
    pub fn status(status: u16, code: ErrorCode) -> Self {
        Fault::Error(UpstreamError::Registry {
            upstream: String::new(),
            status,
            envelope: Some(ErrorEnvelope::single(RegistryError::new(code))),
            retry_after: None,
        })
    }

    /// Connection refused.
    pub fn connect_refused() -> Self {
        Fault::Error(UpstreamError::Transport {
            upstream: String::new(),
            source: Arc::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "injected: connection refused",
            )),
        })
    }

    /// First-byte timeout.
    pub fn timeout() -> Self {
        Fault::Error(UpstreamError::Timeout {
            upstream: String::new(),
            phase: TimeoutPhase::FirstByte,
        })
    }
}

struct Rule {
    op: Op,
    repo: Option<String>,
    fault: Fault,
    /// `None`: forever.
    remaining: Option<u32>,
}

/// A fault-injecting wrapper; see the module docs.
pub struct FailureUpstream<U> {
    inner: U,
    rules: Mutex<Vec<Rule>>,
    control: Control,
}

impl<U: UpstreamApi> fmt::Debug for FailureUpstream<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureUpstream")
            .field("upstream", &self.inner.name())
            .field("rules", &self.rules.lock().len())
            .field("control", &self.control)
            .finish()
    }
}

impl<U: UpstreamApi> FailureUpstream<U> {
    pub fn new(inner: U) -> Self {
        FailureUpstream {
            inner,
            rules: Mutex::new(Vec::new()),
            control: Control::default(),
        }
    }

    pub fn inner(&self) -> &U {
        &self.inner
    }

    /// Apply `fault` to every call of `op`.
    pub fn inject(&self, op: Op, fault: Fault) {
        self.add(op, None, fault, None);
    }

    /// Apply `fault` to the next `times` calls of `op`.
    pub fn inject_times(&self, op: Op, fault: Fault, times: u32) {
        self.add(op, None, fault, Some(times));
    }

    /// Apply `fault` to calls of `op` for repository `repo` (`None` times:
    /// forever). For [`Op::Send`] the repository is matched in the path.
    pub fn inject_for_repo(&self, op: Op, repo: &str, fault: Fault, times: Option<u32>) {
        self.add(op, Some(repo.to_owned()), fault, times);
    }

    /// Remove every fault.
    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    /// Calls of `op` so far, faulted or not.
    pub fn calls(&self, op: Op) -> u64 {
        self.control.calls(op)
    }

    /// Hold calls of `op` until the gate lets them through; a held call is
    /// counted at once, and takes its fault when it passes.
    pub fn hold(&self, op: Op) -> Gate {
        self.control.hold(op)
    }

    fn add(&self, op: Op, repo: Option<String>, fault: Fault, remaining: Option<u32>) {
        if remaining == Some(0) {
            return;
        }
        self.rules.lock().push(Rule {
            op,
            repo,
            fault,
            remaining,
        });
    }

    /// Take the first fault matching a call.
    fn pick(&self, op: Op, repo: Option<&str>, path: Option<&str>) -> Option<Fault> {
        let mut rules = self.rules.lock();
        let idx = rules.iter().position(|r| {
            r.op == op
                && match (&r.repo, repo, path) {
                    (None, _, _) => true,
                    (Some(want), Some(repo), _) => want == repo,
                    (Some(want), None, Some(path)) => path.starts_with(&format!("/v2/{want}/")),
                    (Some(_), None, None) => false,
                }
        })?;
        let rule = &mut rules[idx];
        let fault = rule.fault.clone();
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                rules.remove(idx);
            }
        }
        Some(fault)
    }

    /// Start a call: count it, wait at its gate, then apply the "before"
    /// part of its fault (error out or wait). Returns the fault again when
    /// it acts on the result.
    async fn begin(
        &self,
        op: Op,
        repo: Option<&str>,
        path: Option<&str>,
    ) -> Result<Option<Fault>, UpstreamError> {
        self.control.enter(op).await;
        match self.pick(op, repo, path) {
            None => Ok(None),
            Some(Fault::Error(e)) => Err(e.or_named(self.inner.name())),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Some(f) => Ok(Some(f)),
        }
    }

    fn wrap_stream(&self, stream: ByteStream, fault: Option<Fault>) -> ByteStream {
        match fault {
            Some(Fault::TruncateBody { after }) => truncate(stream, after, self.inner.name()),
            Some(Fault::CorruptBody { offset }) => corrupt(stream, offset),
            _ => stream,
        }
    }
}

fn truncate(stream: ByteStream, after: u64, upstream: &str) -> ByteStream {
    enum State {
        Running(ByteStream, u64),
        FailNext,
        Done,
    }
    let upstream = upstream.to_owned();
    Box::pin(futures_util::stream::unfold(
        State::Running(stream, 0),
        move |state| {
            let upstream = upstream.clone();
            async move {
                let injected = || UpstreamError::Transport {
                    upstream,
                    source: Arc::new(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "injected: body truncated",
                    )),
                };
                match state {
                    State::Done => None,
                    State::FailNext => Some((Err(injected()), State::Done)),
                    State::Running(mut s, seen) => match s.next().await {
                        None => None,
                        Some(Err(e)) => Some((Err(e), State::Done)),
                        Some(Ok(chunk)) => {
                            let len = chunk.len() as u64;
                            if seen + len < after {
                                Some((Ok(chunk), State::Running(s, seen + len)))
                            } else {
                                let keep = (after - seen) as usize;
                                if keep == 0 {
                                    Some((Err(injected()), State::Done))
                                } else {
                                    Some((Ok(chunk.slice(..keep)), State::FailNext))
                                }
                            }
                        }
                    },
                }
            }
        },
    ))
}

fn corrupt(stream: ByteStream, offset: u64) -> ByteStream {
    let mut seen = 0u64;
    Box::pin(stream.map(move |chunk| {
        let chunk = chunk?;
        let start = seen;
        seen += chunk.len() as u64;
        if offset >= start && offset < seen {
            Ok(flip(&chunk, (offset - start) as usize))
        } else {
            Ok(chunk)
        }
    }))
}

fn flip(bytes: &Bytes, at: usize) -> Bytes {
    let mut b = BytesMut::from(&bytes[..]);
    if let Some(x) = b.get_mut(at) {
        *x ^= 0xff;
    }
    b.freeze()
}

/// The calls, with their faults: what [`UpstreamApi`] runs.
impl<U: UpstreamApi> FailureUpstream<U> {
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    pub async fn ping(&self) -> Result<(), UpstreamError> {
        self.begin(Op::Ping, None, None).await?;
        self.inner.ping().await
    }

    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<ManifestHead, UpstreamError> {
        self.begin(Op::HeadManifest, Some(repo), None).await?;
        self.inner.head_manifest(repo, reference, accept).await
    }

    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<ManifestBody, UpstreamError> {
        let after = self.begin(Op::GetManifest, Some(repo), None).await?;
        let mut body = self.inner.get_manifest(repo, reference, accept).await?;
        match after {
            Some(Fault::CorruptBody { offset }) if (offset as usize) < body.bytes.len() => {
                body.bytes = flip(&body.bytes, offset as usize);
            }
            Some(Fault::TruncateBody { after }) if (after as usize) < body.bytes.len() => {
                body.bytes = body.bytes.slice(..after as usize);
            }
            _ => {}
        }
        Ok(body)
    }

    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<BlobHead, UpstreamError> {
        self.begin(Op::HeadBlob, Some(repo), None).await?;
        self.inner.head_blob(repo, digest).await
    }

    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<BlobBody, UpstreamError> {
        let after = self.begin(Op::GetBlob, Some(repo), None).await?;
        let mut body = self.inner.get_blob(repo, digest, range).await?;
        body.stream = self.wrap_stream(body.stream, after);
        Ok(body)
    }

    pub async fn send(&self, req: RawRequest) -> Result<RawResponse, UpstreamError> {
        let after = self
            .begin(Op::Send, None, Some(&req.path_and_query))
            .await?;
        let mut resp = self.inner.send(req).await?;
        resp.body = self.wrap_stream(resp.body, after);
        Ok(resp)
    }

    /// The inner client's counters.
    pub fn stats(&self) -> UpstreamStats {
        self.inner.stats()
    }
}

impl<U: UpstreamApi> UpstreamApi for FailureUpstream<U> {
    forward_upstream_api!(|this| this, Box::pin);
}
