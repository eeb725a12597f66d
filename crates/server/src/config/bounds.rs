//! Limits of the numeric settings, and upstream hosts that cannot be
//! connected to. Every bound is here, in one table each, so the messages,
//! the documentation (deploy/regcache.toml) and the tests agree.
//!
//! The upper bounds catch typos and nonsense (`retry_attempts = 4294967295`
//! made a failing request take 27 s; a TTL of a century pins tags forever),
//! not tuning: each is far above any sane value.

use super::{CacheSection, UpstreamSection};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const DAY: u64 = 24 * 3600;

/// `(key, min, max)` of the per-upstream numbers, in seconds or counts.
pub(super) const UPSTREAM_BOUNDS: [(&str, u64, u64); 7] = [
    ("tag_ttl_secs", 0, 7 * DAY),
    ("stale_if_error_secs", 0, 30 * DAY),
    ("stale_while_revalidate_secs", 0, 7 * DAY),
    ("connect_timeout_secs", 1, 300),
    ("first_byte_timeout_secs", 1, 3600),
    ("body_stall_timeout_secs", 1, 3600),
    ("retry_attempts", 0, 10),
];

/// `(key, min, max)` of the per-upstream circuit breaker's numbers.
pub(super) const BREAKER_BOUNDS: [(&str, u64, u64); 2] =
    [("breaker_failures", 0, 100), ("breaker_probe_secs", 1, 300)];

/// `(key, min, max)` of the `[cache]` sizes, in bytes.
pub(super) const CACHE_BOUNDS: [(&str, u64, u64); 3] = [
    ("cache.memory_size", 0, TIB),
    ("cache.memory_max_object", 0, GIB),
    ("cache.disk_size", MIB, 1 << 50),
];

fn upstream_values(up: &UpstreamSection) -> [u64; 7] {
    [
        up.tag_ttl_secs,
        up.stale_if_error_secs,
        up.stale_while_revalidate_secs,
        up.connect_timeout_secs,
        up.first_byte_timeout_secs,
        up.body_stall_timeout_secs,
        u64::from(up.retry_attempts),
    ]
}

/// A problem for every per-upstream number out of its bounds.
pub(super) fn check_upstream(label: &str, up: &UpstreamSection, problems: &mut Vec<String>) {
    let breaker = [u64::from(up.breaker_failures), up.breaker_probe_secs];
    let numbers = UPSTREAM_BOUNDS
        .iter()
        .zip(upstream_values(up))
        .chain(BREAKER_BOUNDS.iter().zip(breaker));
    for ((key, min, max), value) in numbers {
        if !(*min..=*max).contains(&value) {
            problems.push(format!(
                "{label}: {key} = {value} is out of range: give {min} to {max}"
            ));
        }
    }
}

/// A problem for every cache size out of its bounds.
pub(super) fn check_cache(cache: &CacheSection, problems: &mut Vec<String>) {
    let values = [
        cache.memory_size.0,
        cache.memory_max_object.0,
        cache.disk_size.0,
    ];
    for ((key, min, max), value) in CACHE_BOUNDS.iter().zip(values) {
        if !(*min..=*max).contains(&value) {
            problems.push(format!(
                "{key} = {value} bytes is out of range: give {} to {}",
                bytes(*min),
                bytes(*max)
            ));
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % TIB == 0 => format!("{}TiB", n / TIB),
        n if n % GIB == 0 => format!("{}GiB", n / GIB),
        n if n % MIB == 0 => format!("{}MiB", n / MIB),
        n => n.to_string(),
    }
}

/// Why `host` is no registry to connect to, if it is not: an unspecified
/// address (`0.0.0.0`, `::`, and `0`, which URLs read as `0.0.0.0`), the
/// rest of `0.0.0.0/8`, broadcast or multicast.
pub(super) fn unroutable(host: &url::Host<&str>) -> Option<&'static str> {
    use std::net::Ipv4Addr;
    let v4 = |a: &Ipv4Addr| {
        if a.is_unspecified() {
            Some("the unspecified address (it means \"any\" to a listener, no host to connect to)")
        } else if a.octets()[0] == 0 {
            Some("in 0.0.0.0/8 (\"this network\", not a host to connect to)")
        } else if a.is_broadcast() {
            Some("the broadcast address")
        } else if a.is_multicast() {
            Some("a multicast address")
        } else {
            None
        }
    };
    match host {
        url::Host::Domain(_) => None,
        url::Host::Ipv4(a) => v4(a),
        url::Host::Ipv6(a) => {
            if a.is_unspecified() {
                Some(
                    "the unspecified address (it means \"any\" to a listener, no host to connect to)",
                )
            } else if a.is_multicast() {
                Some("a multicast address")
            } else {
                a.to_ipv4_mapped().as_ref().and_then(v4)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{config_file, env};
    use crate::config::{Config, Overrides};

    fn load(text: &str) -> Result<crate::config::Settings, crate::config::ConfigError> {
        let (_dir, file) = config_file(text);
        Config::load(Some(&file), &env(&[]), &Overrides::default())
    }

    #[test]
    fn unroutable_upstream_hosts_are_refused() {
        for url in [
            "http://0.0.0.0:5000",
            "http://0:5000",
            "http://0.0.0.0.:5000",
            "http://0.1.2.3",
            "http://[::]:5000",
            "http://[::ffff:0.0.0.0]:5000",
            "http://255.255.255.255",
            "http://224.0.0.1",
            "http://[ff02::1]",
        ] {
            let err = load(&format!("[upstream]\nurl = {url:?}\n")).unwrap_err();
            let text = err.to_string();
            assert_eq!(err.problems.len(), 1, "{url}: {text}");
            assert!(
                text.contains("is not a registry to connect to") && text.contains("url ="),
                "{url}: {text}"
            );
        }
        for url in [
            "http://127.0.0.1:5000",
            "http://[::1]:5000",
            "http://10.0.0.1",
            "https://registry-1.docker.io",
            "http://localhost:5000",
        ] {
            load(&format!("[upstream]\nurl = {url:?}\n")).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        // The environment and flag layers are checked the same way.
        let err = Config::load(
            None,
            &env(&[("REGCACHE_UPSTREAM", "http://0.0.0.0:1")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unspecified"), "{err}");
    }

    #[test]
    fn every_number_has_bounds_and_the_message_names_them() {
        // Each bound, one past it: one problem naming the key and the range.
        for (key, min, max) in UPSTREAM_BOUNDS.into_iter().chain(BREAKER_BOUNDS) {
            let mut bad = vec![max + 1];
            if min > 0 {
                bad.push(min - 1);
            }
            for value in bad {
                let err = load(&format!("[upstream]\n{key} = {value}\n")).unwrap_err();
                let text = err.to_string();
                assert_eq!(err.problems.len(), 1, "{key} = {value}: {text}");
                assert!(
                    text.contains(&format!(
                        "{key} = {value} is out of range: give {min} to {max}"
                    )),
                    "{text}"
                );
            }
            load(&format!("[upstream]\n{key} = {max}\n")).unwrap_or_else(|e| panic!("{e}"));
        }
        let err = load("[upstream]\nretry_attempts = 4294967295\n").unwrap_err();
        assert!(err.to_string().contains("give 0 to 10"), "{err}");
        let err = load(
            "[cache]\nmemory_size = \"2TiB\"\nmemory_max_object = \"2GiB\"\ndisk_size = \"2000TB\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for want in [
            "cache.memory_size = 2199023255552 bytes is out of range: give 0 to 1TiB",
            "cache.memory_max_object = 2147483648 bytes is out of range: give 0 to 1GiB",
            "cache.disk_size = 2000000000000000 bytes is out of range: give 1MiB to 1024TiB",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        let err = load("[cache]\ndisk_size = 1000\n").unwrap_err();
        assert!(err.to_string().contains("give 1MiB to"), "{err}");
    }
}
