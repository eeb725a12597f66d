//! Carrying out a [`PurgePlan`] on an open store: tags, then manifests,
//! then blobs (see the module docs of [`super`] for why that order).

use regcache_formats::Digest;
use regcache_store::Store;

use super::inventory::PurgePlan;

/// Removes what `plan` lists. `forget` drops a digest from caches above the
/// store (the parsed-manifest cache). Failures are collected in
/// `plan.errors`; the rest goes on.
pub async fn execute(store: &Store, plan: &mut PurgePlan, forget: &(dyn Fn(&Digest) + Sync)) {
    for t in &plan.tags {
        if let Err(e) = store.tags().remove(&t.upstream, &t.repository, &t.tag) {
            plan.errors.push(format!(
                "tag {}/{}:{}: {e}",
                t.upstream, t.repository, t.tag
            ));
        }
    }
    for entry in &plan.remove {
        forget(&entry.digest);
        if let Err(e) = store.remove(&entry.digest).await {
            plan.errors.push(format!("{}: {e}", entry.digest));
        }
    }
    tracing::info!(
        tags = plan.tags.len(),
        entries = plan.remove.len(),
        bytes = plan.bytes,
        errors = plan.errors.len(),
        "cache purge"
    );
}
