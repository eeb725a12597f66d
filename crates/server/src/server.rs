//! Start-up and the two listeners: the registry API (plain HTTP, or TLS only
//! when `tls_cert_file`/`tls_key_file` are set) and the admin endpoints
//! (always plain HTTP: they stay on loopback or a cluster network).
//!
//! SIGHUP (or `POST /tls/reload` on the admin listener) reloads the API
//! listener's certificate and key from their files ([`crate::tls`]).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use regcache_formats::jws::SigningKey;
use regcache_store::{Store, StoreConfig};
use regcache_upstream::{UpstreamApi, UpstreamClient};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::handlers::App;
use crate::listener;
use crate::request::{Upstream, Upstreams};
use crate::web::body::Body;

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
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(text.as_bytes())
                    .map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
            }
            std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), kid = key.kid(), "generated a new schema 1 signing key");
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Everything `regcache serve` runs, given validated settings and bound listeners.
pub struct Running {
    pub app: Arc<App>,
    ready: Arc<AtomicBool>,
    /// The API listener's TLS configuration (validated with the settings).
    tls: Option<crate::config::TlsSettings>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

/// Build the application state: open the store, load the key, build the upstream client.
pub async fn build(settings: &Settings) -> Result<Running, StartError> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| StartError::DataDir {
        path: settings.data_dir.display().to_string(),
        source,
    })?;
    let store = Store::open(
        StoreConfig::new(crate::admin_cli::store_root(&settings.data_dir))
            .disk_max_bytes(settings.disk_size)
            .memory_max_bytes(settings.memory_size)
            .memory_max_object_bytes(settings.memory_max_object),
    )
    .await?;
    let key = load_or_create_key(&settings.signing_key_path)?;
    tracing::info!(kid = key.kid(), path = %settings.signing_key_path.display(), "schema 1 signing key");
    let mut ups = Vec::new();
    for up in &settings.upstreams {
        let client: Arc<dyn UpstreamApi> = Arc::new(UpstreamClient::new(up.client_config())?);
        tracing::info!(name = %up.name, url = %up.url, default = std::ptr::eq(up, settings.default_upstream()), writes = up.writes.as_str(), catalog = up.catalog.as_str(), "upstream");
        ups.push(Arc::new(Upstream::new(up, client)));
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
    if let Some(tls) = &settings.tls {
        tracing::info!(
            cert = %tls.cert_file.display(),
            certificates = tls.chain_len,
            "tls on the api listener (TLS 1.2 and 1.3; h2, http/1.1)"
        );
    }
    Ok(Running {
        app,
        ready: Arc::new(AtomicBool::new(false)),
        tls: settings.tls.clone(),
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
    let Running { app, ready, tls } = running;
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
        Ok(hangups) => Some(tokio::spawn(reload_on_hangup(hangups, reloader.clone()))),
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
    let tls = tls
        .map(|t| listener::Tls::new(t.server_config, app.metrics.tls_handshake_failures.clone()));
    let api_task = tokio::spawn(listener::serve(
        api,
        move |req: Request<hyper::body::Incoming>| {
            api_app
                .clone()
                .handle(req.map(crate::web::body::ReqBody::Hyper))
        },
        Some(fast),
        tls,
        async move {
            let _ = rx1.changed().await;
        },
        grace,
    ));
    let admin_app = app.clone();
    let admin_ready = ready.clone();
    let admin_reloader = reloader;
    let mut rx2 = stop_rx.clone();
    let admin_task = tokio::spawn(listener::serve(
        admin,
        move |req| {
            let app = admin_app.clone();
            let ready = admin_ready.clone();
            let reloader = admin_reloader.clone();
            async move { admin_handle(&app, &ready, reloader.as_deref(), req) }
        },
        None,
        None,
        async move {
            let _ = rx2.changed().await;
        },
        Duration::from_secs(1),
    ));
    ready.store(true, Ordering::SeqCst);
    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing requests");
    ready.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    if let Some(task) = hangup_task {
        // The handler stays installed: a late SIGHUP is ignored, not fatal.
        task.abort();
    }
    let _ = api_task.await;
    let _ = admin_task.await;
    tracing::info!("stopped");
}

fn admin_handle(
    app: &App,
    ready: &AtomicBool,
    reloader: Option<&crate::tls::Reloader>,
    req: Request<Incoming>,
) -> Response<Body> {
    let text = |status: StatusCode, ct: &'static str, body: Bytes| {
        let mut r = Response::new(Body::full(body));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        r
    };
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/readyz" if ready.load(Ordering::SeqCst) => {
            text(StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
        }
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"not ready\n"),
        ),
        "/mappings" => {
            let records = app.store().mappings().list();
            text(
                StatusCode::OK,
                "application/json",
                Bytes::from(crate::admin_cli::to_json(&records)),
            )
        }
        "/tls/reload" if req.method() != http::Method::POST => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                Bytes::from_static(b"POST to reload the tls certificate\n"),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            r
        }
        "/tls/reload" => match reloader {
            None => text(
                StatusCode::CONFLICT,
                "text/plain",
                Bytes::from_static(b"tls is not configured: nothing to reload\n"),
            ),
            // Two small files; the admin listener can wait for them.
            Some(reloader) => match reloader.reload() {
                Ok(n) => text(
                    StatusCode::OK,
                    "text/plain",
                    Bytes::from(format!("reloaded ({n} certificate(s))\n")),
                ),
                // The problems name files, never key bytes.
                Err(e) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "text/plain",
                    Bytes::from(format!(
                        "not reloaded, still serving the previous certificate: {e}\n"
                    )),
                ),
            },
        },
        "/metrics" => {
            app.refresh_metrics();
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                Bytes::from(app.metrics.encode()),
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
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

/// Reloads the TLS certificate on every SIGHUP in `hangups` (runs until
/// aborted). Without TLS, a SIGHUP is logged and otherwise ignored.
pub async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: Option<Arc<crate::tls::Reloader>>,
) {
    while hangups.recv().await.is_some() {
        let Some(reloader) = &reloader else {
            tracing::info!("sighup: tls is not configured, nothing to reload");
            continue;
        };
        tracing::info!("sighup: reloading the tls certificate");
        let reloader = reloader.clone();
        // Logged and counted inside; the old certificate stays on failure.
        let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
    }
}

/// Bind both listeners (after the configuration validated).
pub async fn bind(settings: &Settings) -> Result<(TcpListener, TcpListener), StartError> {
    let api = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.listen,
            source,
        })?;
    let admin = TcpListener::bind(settings.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.admin_listen,
            source,
        })?;
    Ok((api, admin))
}
