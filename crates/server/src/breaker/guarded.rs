//! [`Guarded`]: an upstream client behind its upstream's [`Breaker`]. Every
//! call asks the breaker first (refused at once with
//! [`UpstreamError::Down`] while it is open) and reports how it went.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use regcache_formats::Digest;
use regcache_upstream::{
    BlobBody, BlobHead, Credentials, ManifestBody, ManifestHead, RawRequest, RawResponse,
    UpstreamApi, UpstreamError, UpstreamStats,
};

use super::{Breaker, Outcome, judge};

/// `inner`, guarded by `breaker`.
pub struct Guarded {
    inner: Arc<dyn UpstreamApi>,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("upstream", &self.inner.name())
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl Guarded {
    pub fn new(inner: Arc<dyn UpstreamApi>, breaker: Arc<Breaker>) -> Guarded {
        Guarded { inner, breaker }
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, UpstreamError>>,
        judge: impl FnOnce(&Result<T, UpstreamError>) -> (Outcome, Option<String>),
    ) -> Result<T, UpstreamError> {
        let permit = self.breaker.admit()?;
        // Futures are lazy: nothing was sent before the permit.
        let result = call.await;
        let (outcome, failure) = judge(&result);
        permit.finish(outcome, failure);
        result
    }
}

/// A pass-through answer with a `5xx` is a failure like a registry error.
fn judge_raw(result: &Result<RawResponse, UpstreamError>) -> (Outcome, Option<String>) {
    match result {
        Ok(r) if r.status.is_server_error() => (
            Outcome::Failed,
            Some(format!(
                "upstream {} answered HTTP {}",
                r.upstream,
                r.status.as_u16()
            )),
        ),
        other => judge(other),
    }
}

impl UpstreamApi for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), UpstreamError>> {
        Box::pin(self.call(self.inner.ping(), judge))
    }

    fn head_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        accept: &'a [&'a str],
    ) -> BoxFuture<'a, Result<ManifestHead, UpstreamError>> {
        Box::pin(self.call(self.inner.head_manifest(repo, reference, accept), judge))
    }

    fn get_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        accept: &'a [&'a str],
    ) -> BoxFuture<'a, Result<ManifestBody, UpstreamError>> {
        Box::pin(self.call(self.inner.get_manifest(repo, reference, accept), judge))
    }

    fn head_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<BlobHead, UpstreamError>> {
        Box::pin(self.call(self.inner.head_blob(repo, digest), judge))
    }

    fn get_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        range: Option<(u64, Option<u64>)>,
    ) -> BoxFuture<'a, Result<BlobBody, UpstreamError>> {
        Box::pin(self.call(self.inner.get_blob(repo, digest, range), judge))
    }

    fn send(&self, req: RawRequest) -> BoxFuture<'_, Result<RawResponse, UpstreamError>> {
        Box::pin(self.call(self.inner.send(req), judge_raw))
    }

    fn stats(&self) -> UpstreamStats {
        self.inner.stats()
    }

    /// The identity shares this upstream's breaker.
    fn identity(&self, credentials: Option<Credentials>) -> Option<Arc<dyn UpstreamApi>> {
        let inner = self.inner.identity(credentials)?;
        Some(Arc::new(Guarded::new(inner, self.breaker.clone())))
    }
}
