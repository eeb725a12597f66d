//! Start-up and the two listeners: the registry API (plain HTTP, or TLS only
//! when `tls_cert_file`/`tls_key_file` are set) and the admin endpoints
//! (always plain HTTP: they stay on loopback or a cluster network); with
//! `[cluster]`, a third: the internal listener other replicas ask for blobs
//! ([`crate::cluster`]; [`bind_internal`], [`Running::with_internal_listener`]).
//!
//! SIGHUP reloads the configuration ([`crate::reload`]; also `POST /reload`
//! on the admin listener) and the API listener's certificate and key from
//! their files ([`crate::tls`]; also `POST /tls/reload`).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use regcache_formats::jws::SigningKey;
use regcache_store::{Store, StoreConfig};
use regcache_upstream::{UpstreamApi, UpstreamClient};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::handlers::App;
use crate::listener;
use crate::request::{Upstream, Upstreams};

/// Why start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the cache: {0}")]
    Store(#[from] regcache_store::StoreError),
    #[error("signing key {path}: {message}")]
    Key { path: String, message: String },
    #[error("client authentication: {0}")]
    Auth(String),
    #[error("upstream: {0}")]
    Upstream(#[from] regcache_upstream::UpstreamError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Load the Schema 1 signing key, or generate and save one (mode 0600) so the
/// `kid` and signatures stay stable across restarts.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, StartError> {
    let err = |message: String| StartError::Key {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(path) {
        // The format is told by the content; the file name only picks the
        // format of a newly generated key (below).
        Ok(text) => SigningKey::from_key_text(&text).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate();
            let text = if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("json" | "jwk")
            ) {
                key.to_jwk()
            } else {
                key.to_pem()
            };
            match save_key(path, &text) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), kid = key.kid(), "generated a new schema 1 signing key");
                }
                // A full or read-only data directory must not stop regcache:
                // the key lives in memory until the next start (signatures
                // and tokens made with it then no longer verify).
                Err(e)
                    if regcache_store::WriteErrorKind::of(&e)
                        != regcache_store::WriteErrorKind::Io =>
                {
                    tracing::warn!(path = %path.display(), kid = key.kid(), error = %e, "could not save the new signing key; it is kept in memory only and changes at the next start");
                }
                Err(e) => return Err(err(e.to_string())),
            }
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes a new key file (mode 0600) atomically; the temp file is removed
/// when the write fails.
fn save_key(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Everything `regcache serve` runs, given validated settings and bound listeners.
pub struct Running {
    pub app: Arc<App>,
    ready: Arc<AtomicBool>,
    /// The API listener's TLS configuration (validated with the settings).
    tls: Option<crate::config::TlsSettings>,
    limits: crate::config::ConnLimits,
    admin_access: crate::admin::AdminAccess,
    /// The settings it started with, and the clients whose credentials a
    /// configuration reload replaces.
    settings: Settings,
    clients: Vec<crate::reload::UpstreamClients>,
    /// Where the configuration is read again on SIGHUP and `POST /reload`;
    /// `None`: no reload (tests building a server from settings).
    reload: Option<crate::reload::ReloadSource>,
    /// The internal listener (`[cluster]`), bound by [`bind_internal`];
    /// `None`: not served.
    internal: Option<TcpListener>,
    /// What the internal listener serves blobs from.
    internal_blobs: Arc<dyn crate::cluster::InternalBlobs>,
}

impl Running {
    /// Reload the configuration from `source` on SIGHUP and `POST /reload`.
    pub fn with_reload(mut self, source: crate::reload::ReloadSource) -> Running {
        self.reload = Some(source);
        self
    }

    /// Serve the internal endpoints on `listener` (from [`bind_internal`];
    /// only with `[cluster]`, which [`build`] made the app a member of).
    pub fn with_internal_listener(mut self, listener: Option<TcpListener>) -> Running {
        self.internal = listener;
        self
    }

    /// Serve peers' blob requests from `blobs` instead of the app's own
    /// blob path ([`crate::handlers::peer::PeerBlobs`], what [`build`] sets).
    pub fn with_internal_blobs(mut self, blobs: Arc<dyn crate::cluster::InternalBlobs>) -> Running {
        self.internal_blobs = blobs;
        self
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

/// Build the application state: open the store, load the key, build the upstream client.
pub async fn build(settings: &Settings) -> Result<Running, StartError> {
    if let Err(source) = std::fs::create_dir_all(&settings.data_dir)
        && !settings.data_dir.is_dir()
    {
        return Err(StartError::DataDir {
            path: settings.data_dir.display().to_string(),
            source,
        });
    }
    let mut store_config = StoreConfig::new(crate::admin_cli::store_root(&settings.data_dir))
        .disk_max_bytes(settings.disk_size)
        .memory_max_bytes(settings.memory_size)
        .memory_max_object_bytes(settings.memory_max_object);
    if let Some(shared) = &settings.shared {
        store_config = store_config.shared(crate::cluster::shared_tier(shared).await?);
    }
    let store = Store::open(store_config).await?;
    let key = load_or_create_key(&settings.signing_key_path)?;
    tracing::info!(kid = key.kid(), path = %settings.signing_key_path.display(), "schema 1 signing key");
    let mut ups = Vec::new();
    let mut clients = Vec::new();
    for up in &settings.upstreams {
        let typed = UpstreamClient::new(up.client_config())?;
        // The breaker's probe: regcache's own identity, one attempt a probe.
        let mut probe_config = up.client_config();
        probe_config.retry = regcache_upstream::RetryConfig::none();
        // The breaker logs the outage once; its probe's failures are debug.
        probe_config.quiet_failures = true;
        let typed_probe = UpstreamClient::new(probe_config)?;
        clients.push(crate::reload::UpstreamClients {
            name: up.name.clone(),
            clients: vec![typed.clone(), typed_probe.clone()],
        });
        let client: Arc<dyn UpstreamApi> = Arc::new(typed);
        let probe: Arc<dyn UpstreamApi> = Arc::new(typed_probe);
        let breaker = crate::breaker::Breaker::new(
            up.name.clone(),
            up.breaker_failures,
            up.breaker_probe,
            probe,
        );
        tracing::info!(name = %up.name, url = %up.url, default = std::ptr::eq(up, settings.default_upstream()), writes = up.writes.as_str(), catalog = up.catalog.as_str(), breaker_failures = up.breaker_failures, "upstream");
        ups.push(Arc::new(Upstream::new(up, client, breaker)));
    }
    let token_key = match settings.auth.mode {
        crate::config::AuthMode::None => None,
        _ => {
            let k = load_or_create_key(&settings.auth.token_key_path)?;
            tracing::info!(
                mode = ?settings.auth.mode,
                kid = k.kid(),
                path = %settings.auth.token_key_path.display(),
                rules = settings.auth.rules.len(),
                "client authentication on; token signing key"
            );
            if settings.tls.is_none() && !settings.auth.allow_insecure_http {
                tracing::warn!(
                    "client authentication on a plain-HTTP listener: Basic credentials will be refused (set tls_cert_file/tls_key_file, or [auth] allow_insecure_http = true on a trusted network)"
                );
            }
            Some(crate::auth::token::TokenKey::new(
                k.ecdsa().clone(),
                k.kid(),
            ))
        }
    };
    let app = App::with_auth(
        store,
        key,
        Upstreams::new(ups, settings.default_upstream),
        settings.policies.clone(),
        |metrics| match token_key {
            None => Ok(crate::auth::Auth::disabled()),
            Some(k) => crate::auth::Auth::new(
                &settings.auth,
                k,
                settings.tls.is_some(),
                settings.listen,
                metrics,
            )
            .map_err(StartError::Auth),
        },
    )?;
    app.set_access_log(settings.log_access);
    app.metrics
        .http
        .cache_budget
        .get_or_create(&crate::metrics_http::Tier { tier: "memory" })
        .set(i64::try_from(settings.memory_size).unwrap_or(i64::MAX));
    if let Some(tls) = &settings.tls {
        tracing::info!(
            cert = %tls.cert_file.display(),
            certificates = tls.chain_len,
            "tls on the api listener (TLS 1.2 and 1.3; h2, http/1.1)"
        );
    }
    app.cockpit
        .set_setup(crate::cockpit::setup::Setup::from_settings(settings));
    let admin_access =
        crate::admin::AdminAccess::new(settings.admin_listen, settings.admin_token.clone());
    match &admin_access {
        crate::admin::AdminAccess::Loopback => {}
        crate::admin::AdminAccess::Token(_) => {
            tracing::info!("admin endpoints that change state require the admin token")
        }
        crate::admin::AdminAccess::Refused { listen } => tracing::warn!(
            %listen,
            "admin_listen is not a loopback address and no admin token is set: state-changing admin endpoints are refused (set [admin] token_file or REGCACHE_ADMIN_TOKEN)"
        ),
    }
    if let Some(c) = &settings.cluster {
        let cluster = crate::cluster::Cluster::start_with_metrics(c, app.metrics.cluster.clone());
        tracing::info!(me = %cluster.me(), members = cluster.members().len(), "cluster member");
        app.set_cluster(cluster);
    }
    app.services()
        .blobs
        .join_cluster(crate::services::ClusterFill::new(
            app.store().shared().cloned(),
            app.cluster().cloned(),
            app.metrics.cluster.clone(),
        ));
    let internal_blobs: Arc<dyn crate::cluster::InternalBlobs> =
        Arc::new(crate::handlers::peer::PeerBlobs::new(app.clone()));
    let l = &settings.limits;
    tracing::info!(
        max_connections = l.max_connections,
        per_client = ?l.max_connections_per_client,
        rate = ?l.rate,
        header_timeout = ?l.header_timeout,
        write_timeout = ?l.write_timeout,
        body_timeout = ?l.body_timeout,
        "connection limits"
    );
    Ok(Running {
        app,
        ready: Arc::new(AtomicBool::new(false)),
        tls: settings.tls.clone(),
        limits: settings.limits.clone(),
        admin_access,
        settings: settings.clone(),
        clients,
        reload: None,
        internal: None,
        internal_blobs,
    })
}

/// Serve the registry API on `api` and the admin endpoints on `admin` until
/// `shutdown` resolves; then stop accepting, let requests finish (bounded).
pub async fn serve(
    running: Running,
    api: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let Running {
        app,
        ready,
        tls,
        limits,
        admin_access,
        settings,
        clients,
        reload,
        internal,
        internal_blobs,
    } = running;
    let config_reloader = reload.map(|source| {
        Arc::new(crate::reload::ConfigReloader::new(
            source,
            settings,
            app.clone(),
            clients,
        ))
    });
    let api_guard = Arc::new(crate::conn::Guard::new(
        "api",
        limits.clone(),
        &app.metrics,
        true,
    ));
    // The admin listener: the same timeouts, no rate limit (probes and
    // scrapers poll it), a small connection cap of its own.
    let admin_limits = crate::config::ConnLimits {
        max_connections: 64,
        max_connections_per_client: None,
        ..limits.clone()
    };
    let admin_guard = Arc::new(crate::conn::Guard::new(
        "admin",
        admin_limits,
        &app.metrics,
        false,
    ));
    let reloader = tls.as_ref().map(|t| {
        Arc::new(crate::tls::Reloader::new(
            t.cert_file.clone(),
            t.key_file.clone(),
            t.resolver.clone(),
            app.metrics.tls_reload_ok.clone(),
            app.metrics.tls_reload_error.clone(),
        ))
    });
    // Installed before readiness is reported: from then on SIGHUP reloads
    // (or is logged as a no-op) instead of terminating the process.
    let hangup_task = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => Some(tokio::spawn(reload_on_hangup(
            hangups,
            reloader.clone(),
            config_reloader.clone(),
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; the tls certificate cannot be reloaded by signal");
            None
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grace = Duration::from_secs(10);
    let api_app = app.clone();
    let mut rx1 = stop_rx.clone();
    let fast: Arc<dyn crate::fastpath::FastPath> = app.clone();
    let tls = tls.map(|t| {
        listener::Tls::new(
            t.server_config,
            app.metrics.tls_handshake_failures.clone(),
            app.metrics.tls_connections.clone(),
            t.kernel,
        )
    });
    let api_task = tokio::spawn(listener::serve(
        api,
        move |req: Request<crate::conn::TrackedBody>| {
            api_app
                .clone()
                .handle(req.map(crate::web::body::ReqBody::Hyper))
        },
        Some(fast),
        tls,
        api_guard.clone(),
        async move {
            let _ = rx1.changed().await;
        },
        grace,
    ));
    let admin_state = Arc::new(crate::admin::Admin {
        app: app.clone(),
        ready: ready.clone(),
        reloader,
        config_reloader,
        api: api_guard,
        access: admin_access,
    });
    let mut rx2 = stop_rx.clone();
    let admin_task = tokio::spawn(listener::serve(
        admin,
        move |req| {
            let admin = admin_state.clone();
            async move { admin.handle(req).await }
        },
        None,
        None,
        admin_guard,
        async move {
            let _ = rx2.changed().await;
        },
        Duration::from_secs(1),
    ));
    // The internal listener (`[cluster]`): other replicas, no rate limit
    // (a peer asks for many blobs at once), the API's connection cap.
    let internal_task = match (internal, app.cluster().cloned()) {
        (Some(listener), Some(cluster)) => {
            let guard = Arc::new(crate::conn::Guard::new(
                "internal",
                crate::config::ConnLimits {
                    max_connections_per_client: None,
                    ..limits
                },
                &app.metrics,
                false,
            ));
            let mut rx3 = stop_rx.clone();
            Some(tokio::spawn(crate::cluster::serve_internal(
                listener,
                cluster,
                internal_blobs,
                guard,
                async move {
                    let _ = rx3.changed().await;
                },
            )))
        }
        (Some(_), None) => {
            tracing::warn!("an internal listener without [cluster]: not served");
            None
        }
        _ => None,
    };
    let sampler = crate::cockpit::spawn_sampler(&app);
    ready.store(true, Ordering::SeqCst);
    shutdown.await;
    sampler.abort();
    tracing::info!("shutting down: no new connections, finishing requests");
    ready.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    if let Some(task) = hangup_task {
        // The handler stays installed: a late SIGHUP is ignored, not fatal.
        task.abort();
    }
    let _ = api_task.await;
    let _ = admin_task.await;
    if let Some(task) = internal_task {
        let _ = task.await;
    }
    save_cache_index(&app).await;
    tracing::info!("stopped");
}

/// Leaves the disk cache's index snapshot for a fast next start (a crash
/// leaves none, and the next start scans every file instead).
async fn save_cache_index(app: &Arc<crate::handlers::App>) {
    let disk = app.store().disk().clone();
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || disk.save_index()).await {
        Ok(Ok(entries)) => tracing::info!(
            entries,
            ms = started.elapsed().as_millis() as u64,
            "saved the cache index for the next start"
        ),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot save the cache index; the next start scans the cache")
        }
        Err(error) => {
            tracing::warn!(%error, "cannot save the cache index; the next start scans the cache")
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// On every SIGHUP in `hangups` (runs until aborted): reloads the
/// configuration (when regcache was started from one) and the TLS
/// certificate (when TLS is on). Each logs and counts its own result.
pub async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: Option<Arc<crate::tls::Reloader>>,
    config: Option<Arc<crate::reload::ConfigReloader>>,
) {
    while hangups.recv().await.is_some() {
        if let Some(config) = &config {
            tracing::info!("sighup: reloading the configuration");
            let config = config.clone();
            // Logged and counted inside; a bad file changes nothing.
            let _ = tokio::task::spawn_blocking(move || config.reload()).await;
        }
        let Some(reloader) = &reloader else {
            tracing::info!("sighup: tls is not configured: no certificate, nothing to reload");
            continue;
        };
        tracing::info!("sighup: reloading the tls certificate");
        let reloader = reloader.clone();
        // Logged and counted inside; the old certificate stays on failure.
        let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
    }
}

/// Raise the soft limit on open files to the hard limit: each connection is
/// a descriptor, and a soft limit of 1,024 (a common default) would make
/// `max_connections = 4096` a promise regcache cannot keep. Logged when it
/// stays below what the limits need.
pub fn raise_open_files(limits: &crate::config::ConnLimits) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let have = getrlimit(Resource::Nofile);
    let mut now = have.current;
    if let Some(hard) = have.maximum
        && have.current.is_some_and(|soft| soft < hard)
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => now = Some(hard),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
    // Connections on both listeners, cache files, upstream sockets.
    let need = (limits.max_connections as u64).saturating_add(256);
    match now {
        Some(n) if n < need => tracing::warn!(
            open_files = n,
            max_connections = limits.max_connections,
            "the open-files limit is below limits.max_connections; accepts will fail with EMFILE before the connection limit is reached"
        ),
        _ => tracing::debug!(open_files = ?now, "open-files limit"),
    }
}

/// The accept queue's length (the kernel caps it at `net.core.somaxconn`).
/// std's (and so tokio's `TcpListener::bind`) is 128: a burst of more
/// connections than the accept loop takes at once would drop SYNs, and each
/// dropped one costs its client a one-second retransmission.
const ACCEPT_BACKLOG: u32 = 1024;

/// A listening socket on `addr` with [`ACCEPT_BACKLOG`].
fn listen(addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(ACCEPT_BACKLOG).map_err(err)
}

/// Bind both listeners (after the configuration validated, before
/// [`build`]: an address in use fails before anything is written to the
/// data dir; `regcache serve` exits 69 then).
pub async fn bind(settings: &Settings) -> Result<(TcpListener, TcpListener), StartError> {
    let api = listen(settings.listen)?;
    let admin = listen(settings.admin_listen)?;
    Ok((api, admin))
}

/// Bind the internal listener when `[cluster]` is set (with [`bind`]:
/// before [`build`]; an address in use exits 69 as theirs does).
pub async fn bind_internal(settings: &Settings) -> Result<Option<TcpListener>, StartError> {
    settings
        .cluster
        .as_ref()
        .map(|c| listen(c.listen))
        .transpose()
}
