//! `regcache check --config FILE`: load and validate everything `serve`
//! would (the file, the environment and flags; TLS certificate and key,
//! htpasswd file, upstream password files, the admin token file), without
//! binding or writing anything. Every problem is printed at once (exit 78,
//! `EX_CONFIG`); a good configuration gets a one-line summary (exit 0).

use crate::config::Settings;

/// The one line `check` prints for a good configuration.
pub fn summary(settings: &Settings) -> String {
    let upstreams: Vec<String> = (settings.upstreams.iter())
        .enumerate()
        .map(|(i, u)| {
            let default = if i == settings.default_upstream {
                ", default"
            } else {
                ""
            };
            format!("{} ({}{default})", u.name, u.url)
        })
        .collect();
    let mut extra = String::new();
    if let Some(c) = &settings.cluster {
        let peers = match &c.peers {
            crate::config::PeerSource::Static(list) => format!("{} static peer(s)", list.len()),
            crate::config::PeerSource::Dns { host, port } => format!("peers from {host}:{port}"),
        };
        extra.push_str(&format!(
            "; cluster {} as {}, {peers}",
            c.listen, c.advertise
        ));
    }
    if let Some(sh) = &settings.shared {
        extra.push_str(&format!("; shared tier s3://{}/{}", sh.bucket, sh.prefix));
    }
    format!(
        "configuration ok: {} upstream(s): {}; {} policy rule(s); {} access rule(s); listen {} ({}), admin {}{extra}",
        settings.upstreams.len(),
        upstreams.join(", "),
        settings.policies.len(),
        settings.auth.rules.len(),
        settings.listen,
        if settings.tls.is_some() {
            "https"
        } else {
            "http"
        },
        settings.admin_listen,
    )
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::env;
    use crate::config::{Config, Overrides};

    #[test]
    fn the_summary_names_what_serve_would_run() {
        let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            super::summary(&s),
            "configuration ok: 1 upstream(s): docker.io (https://registry-1.docker.io/, default); 0 policy rule(s); 0 access rule(s); listen 0.0.0.0:5000 (http), admin 127.0.0.1:5001"
        );
        let (_d, file) = crate::config::test_support::config_file(
            "[cluster]\nlisten = \"10.0.0.5:5002\"\npeers_dns = \"peers.local:5002\"\n[shared]\nbucket = \"b\"\nprefix = \"rc/\"\n",
        );
        let s = Config::load(
            Some(&file),
            &env(&[("REGCACHE_CLUSTER_SECRET", "0123456789abcdef0123")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(
            super::summary(&s).ends_with(
                "admin 127.0.0.1:5001; cluster 10.0.0.5:5002 as 10.0.0.5:5002, peers from peers.local:5002; shared tier s3://b/rc/"
            ),
            "{}",
            super::summary(&s)
        );
    }
}
