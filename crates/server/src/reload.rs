//! Configuration reload: SIGHUP and `POST /reload` on the admin listener.
//!
//! The file is read again through the same layers as at start-up (defaults,
//! the file, the environment, the flags `serve` was started with) and
//! validated completely first. A bad configuration changes nothing: the
//! problems are logged at error, counted in
//! `regcache_config_reloads_total{result="error"}`, and are the answer.
//! A good one is applied where that needs no restart:
//!
//! - the `[[policy]]` rules ([`crate::handlers::App::set_policies`]);
//! - the `[[access]]` rules and the htpasswd file's path
//!   ([`crate::auth::Auth::reload`]);
//! - each upstream's credentials (username and password, password_file,
//!   password_env): its clients go on with the new ones and drop the tokens
//!   fetched with the old ones; other upstreams keep theirs, and every
//!   connection pool stays ([`regcache_upstream::UpstreamClient::set_credentials`]);
//! - each upstream's tag lifetimes (`tag_ttl_secs`, `stale_if_error_secs`,
//!   `stale_while_revalidate_secs`).
//!
//! Each is swapped whole (arc-swap): a request reads the old set or the
//! new one, never half of each. What only a restart changes (listen
//! addresses, data dir, cache sizes, upstreams added, removed or pointed
//! elsewhere, their timeouts, retries, writes and breakers, the auth mode
//! and token settings, TLS file paths, limits, the admin token, logging) is
//! reported as "needs a restart" in the log and the answer; the rest is
//! applied all the same. The TLS certificate's contents reload on SIGHUP
//! as before ([`crate::tls`]).

use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use regcache_upstream::{Credentials, UpstreamClient};

use crate::config::{Config, ConfigError, Overrides, ServeEnv, Settings, UpstreamSettings};
use crate::handlers::App;
use crate::request::Ttls;

/// Where the configuration came from at start-up: read again on reload.
#[derive(Debug, Clone, Default)]
pub struct ReloadSource {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadResult {
    /// `ok` (applied) or `error` (the configuration was bad; nothing changed).
    pub result: &'static str,
}

/// `regcache_config_reloads_total{result}` and
/// `regcache_config_last_reload_success_timestamp_seconds`.
#[derive(Debug, Clone, Default)]
pub struct ReloadMetrics {
    ok: Counter,
    error: Counter,
    last_success: Gauge,
}

impl ReloadMetrics {
    pub fn register(registry: &mut Registry) -> ReloadMetrics {
        let family = Family::<ReloadResult, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, POST /reload) by result (ok: applied; error: the configuration was bad, the previous one stays)",
            family.clone(),
        );
        let last_success = Gauge::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (start-up or reload), in seconds since the epoch",
            last_success.clone(),
        );
        let ok = family.get_or_create(&ReloadResult { result: "ok" }).clone();
        let error = (family.get_or_create(&ReloadResult { result: "error" })).clone();
        let m = ReloadMetrics {
            ok,
            error,
            last_success,
        };
        m.stamp();
        m
    }

    fn stamp(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_success
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }
}

/// An upstream's registry clients whose credentials a reload replaces: the
/// one requests use and its breaker's probe.
#[derive(Debug, Clone)]
pub struct UpstreamClients {
    pub name: String,
    pub clients: Vec<UpstreamClient>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// What changed and is in force now.
    pub applied: Vec<String>,
    /// What changed in the file but keeps its start-up value until a restart.
    pub needs_restart: Vec<String>,
}

/// Reloads the configuration into a running regcache.
#[derive(Debug)]
pub struct ConfigReloader {
    source: ReloadSource,
    /// As started: what restart-only settings are compared with.
    started: Settings,
    app: Arc<App>,
    clients: Vec<UpstreamClients>,
    /// One reload at a time (SIGHUP and POST /reload may race).
    running: parking_lot::Mutex<()>,
}

impl ConfigReloader {
    pub fn new(
        source: ReloadSource,
        started: Settings,
        app: Arc<App>,
        clients: Vec<UpstreamClients>,
    ) -> ConfigReloader {
        ConfigReloader {
            source,
            started,
            app,
            clients,
            running: parking_lot::Mutex::new(()),
        }
    }

    /// Read, validate and apply the configuration (see the module
    /// documentation); on a bad one nothing changes and the problems are
    /// the error.
    pub fn reload(&self) -> Result<Outcome, ConfigError> {
        let _one = self.running.lock();
        let metrics = &self.app.metrics.reload;
        let new = match Config::load(
            self.source.file.as_deref(),
            &ServeEnv,
            &self.source.overrides,
        ) {
            Ok(s) => s,
            Err(e) => {
                metrics.error.inc();
                tracing::error!(problems = %e.problems.join("; "), "configuration reload failed: the previous configuration stays in force");
                return Err(e);
            }
        };
        if let Err(e) = self.app.auth().reload(&new.auth) {
            metrics.error.inc();
            tracing::error!(error = %e, "configuration reload failed: the previous configuration stays in force");
            return Err(ConfigError { problems: vec![e] });
        }
        let mut out = Outcome {
            needs_restart: needs_restart(&self.started, &new),
            ..Outcome::default()
        };
        self.app.set_policies(new.policies.clone());
        out.applied
            .push(format!("policies ({} rule(s))", new.policies.len()));
        out.applied
            .push(format!("access rules ({} rule(s))", new.auth.rules.len()));
        for up in &new.upstreams {
            self.apply_upstream(up, &mut out);
        }
        metrics.ok.inc();
        metrics.stamp();
        tracing::info!(
            applied = %out.applied.join("; "),
            needs_restart = %out.needs_restart.join("; "),
            "configuration reloaded"
        );
        if !out.needs_restart.is_empty() {
            tracing::warn!(settings = %out.needs_restart.join("; "), "changed settings need a restart to take effect");
        }
        Ok(out)
    }

    /// The new credentials and tag lifetimes of an upstream that was there
    /// at start-up (a new one needs a restart, reported elsewhere).
    fn apply_upstream(&self, up: &UpstreamSettings, out: &mut Outcome) {
        let Some(running) = self.app.upstreams().iter().find(|u| u.name == up.name) else {
            return;
        };
        let ttls = Ttls::of(up);
        if running.ttls() != ttls {
            running.set_ttls(ttls);
            out.applied.push(format!(
                "upstream {:?}: tag_ttl {}s, stale_if_error {}s, stale_while_revalidate {}s",
                up.name,
                ttls.tag_ttl.as_secs(),
                ttls.stale_if_error.as_secs(),
                ttls.stale_while_revalidate.as_secs()
            ));
        }
        let credentials = match (&up.username, &up.password) {
            (Some(u), Some(p)) => Some(Credentials::new(u.clone(), p.clone())),
            _ => None,
        };
        let mut changed = false;
        for c in (self.clients.iter())
            .filter(|c| c.name == up.name)
            .flat_map(|c| &c.clients)
        {
            changed |= c.set_credentials(credentials.clone());
        }
        if changed {
            // Never the password itself.
            out.applied.push(format!(
                "upstream {:?}: credentials ({})",
                up.name,
                up.username.as_deref().unwrap_or("anonymous")
            ));
        }
    }
}

/// The settings that differ between `old` and `new` and only take effect
/// after a restart.
fn needs_restart(old: &Settings, new: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} ({a} -> {b})"));
        }
    };
    check("listen", old.listen.to_string(), new.listen.to_string());
    check(
        "admin_listen",
        old.admin_listen.to_string(),
        new.admin_listen.to_string(),
    );
    check(
        "data_dir",
        old.data_dir.display().to_string(),
        new.data_dir.display().to_string(),
    );
    check(
        "cache.memory_size",
        old.memory_size.to_string(),
        new.memory_size.to_string(),
    );
    check(
        "cache.memory_max_object",
        old.memory_max_object.to_string(),
        new.memory_max_object.to_string(),
    );
    check(
        "cache.disk_size",
        old.disk_size.to_string(),
        new.disk_size.to_string(),
    );
    check(
        "schema1.signing_key",
        old.signing_key_path.display().to_string(),
        new.signing_key_path.display().to_string(),
    );
    check("log", log_of(old), log_of(new));
    // Debug: the secrets are redacted (a changed secret alone is not named).
    check(
        "cluster",
        format!("{:?}", old.cluster),
        format!("{:?}", new.cluster),
    );
    check(
        "shared",
        format!("{:?}", old.shared),
        format!("{:?}", new.shared),
    );
    let tls = |s: &Settings| {
        s.tls.as_ref().map_or("none".to_owned(), |t| {
            format!("{} {}", t.cert_file.display(), t.key_file.display())
        })
    };
    check("tls_cert_file/tls_key_file", tls(old), tls(new));
    check(
        "limits",
        format!("{:?}", old.limits),
        format!("{:?}", new.limits),
    );
    let auth = |s: &Settings| {
        let a = &s.auth;
        format!(
            "mode {:?}, realm {:?}, service {:?}, challenge {:?}, token_ttl {:?}, allow_insecure_http {}, upstream_decision_ttl {:?}",
            a.mode,
            a.realm,
            a.service,
            a.challenge,
            a.token_ttl,
            a.allow_insecure_http,
            a.upstream_decision_ttl
        )
    };
    check("[auth]", auth(old), auth(new));
    let names = |s: &Settings| {
        let mut v: Vec<String> = s.upstreams.iter().map(upstream_identity).collect();
        v.push(format!("default {}", s.default_upstream().name));
        v.join(", ")
    };
    check("upstreams", names(old), names(new));
    for o in &old.upstreams {
        if let Some(n) = new.upstreams.iter().find(|n| n.name == o.name) {
            check(
                &format!("upstream {:?}", o.name),
                upstream_fixed(o),
                upstream_fixed(n),
            );
        }
    }
    let same_token = match (&old.admin_token, &new.admin_token) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_as(b),
        _ => false,
    };
    if !same_token {
        out.push("admin token".into());
    }
    out
}

fn log_of(s: &Settings) -> String {
    format!(
        "{} {}",
        if s.log_json { "json" } else { "text" },
        s.log_level
    )
}

/// Name, URL and aliases: changing them is another upstream.
fn upstream_identity(u: &UpstreamSettings) -> String {
    format!("{} = {} {:?}", u.name, u.url, u.aliases)
}

/// The upstream settings its clients and breaker were built with.
fn upstream_fixed(u: &UpstreamSettings) -> String {
    format!(
        "connect_timeout {:?}, first_byte_timeout {:?}, body_stall_timeout {:?}, retry_attempts {}, auth_realms {:?}, writes {}, catalog {}, breaker_failures {}, breaker_probe {:?}",
        u.connect_timeout,
        u.first_byte_timeout,
        u.body_stall_timeout,
        u.retry_attempts,
        u.auth_realms,
        u.writes.as_str(),
        u.catalog.as_str(),
        u.breaker_failures,
        u.breaker_probe
    )
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{config_file, env};
    use crate::config::{Config, Overrides};

    #[test]
    fn restart_only_changes_are_named_and_reloadable_ones_are_not() {
        let load = |text: &str| {
            let (_dir, file) = config_file(text);
            Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap()
        };
        let old = load(
            "listen = \"127.0.0.1:7000\"\n[upstream]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\ntag_ttl_secs = 5\n",
        );
        let reloadable = load(
            "listen = \"127.0.0.1:7000\"\n[upstream]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\ntag_ttl_secs = 50\n\
             [[policy]]\nrepositories = [\"x/*\"]\nschema1 = \"reject\"\n",
        );
        assert_eq!(
            super::needs_restart(&old, &reloadable),
            Vec::<String>::new()
        );
        let restart = load(
            "listen = \"127.0.0.1:7001\"\n[cache]\ndisk_size = \"2GiB\"\n\
             [upstream]\nname = \"a\"\nurl = \"http://127.0.0.1:10\"\nretry_attempts = 1\n",
        );
        let changed = super::needs_restart(&old, &restart);
        for want in [
            "listen (127.0.0.1:7000 -> 127.0.0.1:7001)",
            "cache.disk_size (",
            "upstreams (",
            "upstream \"a\" (",
        ] {
            assert!(
                changed.iter().any(|c| c.starts_with(want)),
                "{want} missing from {changed:#?}"
            );
        }
    }
}
