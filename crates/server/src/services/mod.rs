//! What regcache does, without HTTP: tag resolution and revalidation,
//! manifests by digest, the blob fill pump, Schema 1 rendering and signing.
//! Each service owns its state (caches, flights in progress); the handlers
//! in [`crate::handlers`] sit on top and speak HTTP.
//!
//! Dependencies point one way: tags → manifests; referrers → tags;
//! schema1 → manifests and blobs. Nothing here knows about hyper.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use regcache_formats::jws::SigningKey;
use regcache_store::Store;

use crate::metrics::Metrics;

pub mod blobs;
pub mod bridge;
mod cluster_fill;
pub mod coalesce;
mod diffid;
pub mod links;
pub mod manifests;
pub mod referrers;
mod resume;
pub mod schema1;
pub mod tags;
pub mod upgrade;

pub use blobs::BlobService;
pub use bridge::BridgeService;
pub use cluster_fill::ClusterFill;
pub use manifests::ManifestService;
pub use referrers::ReferrersService;
pub use schema1::Schema1Service;
pub use tags::TagService;
pub use upgrade::UpgradeService;

/// Every service, built over one store.
#[derive(Clone, Debug)]
pub struct Services {
    pub store: Store,
    pub blobs: BlobService,
    pub manifests: ManifestService,
    pub tags: TagService,
    /// Referrers lists (OCI 1.1), over the tags for the fallback tag.
    pub referrers: ReferrersService,
    pub schema1: Schema1Service,
    /// Docker forms of OCI images.
    pub bridge: BridgeService,
    /// Schema 1 images upgraded to Docker Schema 2.
    pub upgrade: UpgradeService,
    /// Which content belongs to which repository (with client auth on).
    pub links: links::Links,
}

impl Services {
    pub fn new(store: Store, key: SigningKey, metrics: Arc<Metrics>) -> Services {
        let blobs = BlobService::new(store.clone(), metrics.clone());
        let manifests = ManifestService::new(store.clone(), metrics.clone());
        let tags = TagService::new(store.clone(), metrics.clone(), manifests.clone());
        let bridge = BridgeService::new(store.clone(), metrics.clone(), manifests.clone());
        let referrers = ReferrersService::new(metrics.clone(), tags.clone());
        let schema1 = Schema1Service::new(
            key,
            store.clone(),
            metrics.clone(),
            manifests.clone(),
            blobs.clone(),
        );
        let links = links::Links::with_store(store.clone());
        let upgrade = UpgradeService::new(
            store.clone(),
            metrics,
            manifests.clone(),
            blobs.clone(),
            links.clone(),
        );
        Services {
            store,
            blobs,
            manifests,
            tags,
            referrers,
            schema1,
            bridge,
            upgrade,
            links,
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Services over a temporary store, and targets on test upstreams.

    use std::sync::Arc;
    use std::time::Duration;

    use regcache_formats::jws::SigningKey;
    use regcache_store::{Store, StoreConfig};
    use regcache_upstream::UpstreamApi;

    use super::Services;
    use crate::metrics::Metrics;
    use crate::request::{Target, Upstream};

    pub async fn temp_services() -> (tempfile::TempDir, Services) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path())).await.unwrap();
        let services = Services::new(store, SigningKey::generate(), Arc::new(Metrics::new()));
        (dir, services)
    }

    /// An upstream named after `client`, with `tweak` applied.
    pub fn upstream_for(
        client: Arc<dyn UpstreamApi>,
        tweak: impl FnOnce(&mut Upstream),
    ) -> Arc<Upstream> {
        let breaker =
            crate::breaker::Breaker::new(client.name(), 0, Duration::from_secs(2), client.clone());
        let mut up = Upstream {
            breaker,
            name: client.name().to_owned(),
            aliases: vec![],
            host: format!("{}.test", client.name()),
            docker_hub: false,
            client,
            ttls: arc_swap::ArcSwap::from_pointee(crate::request::Ttls {
                tag_ttl: Duration::from_secs(10),
                stale_if_error: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
            }),
            writes: crate::writes::Forwarding::Off,
            catalog: crate::writes::Forwarding::Off,
        };
        tweak(&mut up);
        Arc::new(up)
    }

    /// A request target on `client`, no prefix.
    pub fn target_for(client: Arc<dyn UpstreamApi>, tweak: impl FnOnce(&mut Upstream)) -> Target {
        Target {
            upstream: upstream_for(client, tweak),
            span: Default::default(),
            prefix: None,
            library_added: false,
            upstream_path: String::new(),
            acting_as: None,
        }
    }
}
