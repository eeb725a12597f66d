//! The TOML file as written: the serde types, their defaults (which are the
//! run-anywhere setup), and parsing with every unknown key reported.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// The whole file as written; its `Default` is the run-anywhere setup.
/// (`deny_unknown_fields` here and below is a backstop: [`Config::from_toml`]
/// takes unknown keys out, and reports them all, before serde sees them.)
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where registry clients connect.
    pub listen: String,
    /// Metrics, health and admin endpoints; kept off the client port so a mirror
    /// exposed to a fleet does not expose its internals.
    pub admin_listen: String,
    /// Root of the disk cache, the tag index and the signing key.
    pub data_dir: PathBuf,
    /// PEM certificate chain (leaf first) for the API listener. With
    /// `tls_key_file`, the API listener speaks TLS only; both or neither.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) of the leaf in `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// `auto`: kernel TLS (`sendfile` over TLS) where the kernel has it,
    /// rustls elsewhere; `off`: rustls always (see `kernel_tls.rs`).
    pub kernel_tls: crate::kernel_tls::KernelTls,
    pub admin: super::AdminSection,
    pub limits: super::LimitsSection,
    pub log: LogSection,
    pub cache: CacheSection,
    /// One `[upstream]` table, or several `[[upstream]]` tables (one may say
    /// `default = true`; otherwise the first is the default).
    pub upstream: UpstreamSections,
    pub schema1: Schema1Section,
    /// Ordered `[[policy]]` rules (see `policy.rs`); first match wins.
    pub policy: Vec<crate::policy::RuleConfig>,
    /// Client authentication (see `auth/mod.rs`).
    pub auth: super::auth::AuthSection,
    /// `[[access]]` rules granting actions to users and groups
    /// (see `auth/access.rs`); only with client authentication.
    pub access: Vec<crate::auth::access::AccessRuleConfig>,
    /// Replicas sharing one cache (see `cluster.rs`); absent: one replica.
    pub cluster: Option<super::ClusterSection>,
    /// The S3-compatible shared tier (see `shared.rs`); absent: none.
    pub shared: Option<super::SharedSection>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `regcache_server=debug,info`.
    pub level: String,
    /// The access log (target `regcache::access`): `info`, `debug` or `off`.
    pub access: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// Memory tier budget (manifests, configs, small blobs), e.g. `"256MiB"`.
    pub memory_size: ByteSize,
    /// Largest object kept in the memory tier.
    pub memory_max_object: ByteSize,
    /// Disk tier budget; least recently used entries are evicted beyond it.
    pub disk_size: ByteSize,
}

/// The upstream list: accepts a single `[upstream]` table or `[[upstream]]` tables.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamSections(pub Vec<UpstreamSection>);

impl<'de> Deserialize<'de> for UpstreamSections {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, value::MapAccessDeserializer};

        struct OneOrMany;

        impl<'de> serde::de::Visitor<'de> for OneOrMany {
            type Value = UpstreamSections;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("upstream as a table or an array of tables")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<UpstreamSections, A::Error> {
                UpstreamSection::deserialize(MapAccessDeserializer::new(map))
                    .map(|u| UpstreamSections(vec![u]))
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<UpstreamSections, A::Error> {
                // A failing item's error passes unchanged (with its span):
                // `Config::from_toml` names the item and the key.
                let mut all = Vec::new();
                while let Some(u) = seq.next_element::<UpstreamSection>()? {
                    all.push(u);
                }
                Ok(UpstreamSections(all))
            }
        }

        // Asked for as a struct with `UpstreamSection`'s fields, so the keys
        // of a single `[upstream]` table are checked like any section's.
        let fields = super::keys::struct_fields::<UpstreamSection>();
        d.deserialize_struct("UpstreamSection", fields, OneOrMany)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSection {
    /// The registry this upstream stands for, as clients name it: what
    /// containerd's `ns=` and a path prefix (`/v2/<name>/…`) are matched
    /// against, and the key of its tags, policies and metrics. Defaults to
    /// the URL's host (`docker.io` for Docker Hub).
    pub name: Option<String>,
    pub url: String,
    /// Other registry names that route here (e.g. `index.docker.io`).
    pub aliases: Vec<String>,
    /// Requests with no `ns=` and no registry path prefix go to the default upstream.
    pub default: bool,
    pub username: Option<String>,
    /// Inline password; prefer `password_file` or `password_env`.
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// How long a tag → digest answer is trusted before a HEAD revalidates it.
    pub tag_ttl_secs: u64,
    /// How long past its TTL a tag may still be served when the upstream fails.
    pub stale_if_error_secs: u64,
    /// How long past its TTL a tag is answered at once from the cache while
    /// one background HEAD revalidates it (0: off, requests wait for the HEAD).
    pub stale_while_revalidate_secs: u64,
    pub connect_timeout_secs: u64,
    pub first_byte_timeout_secs: u64,
    /// Longest pause between two chunks of a response body; a blob download
    /// that stalls longer resumes from the byte it reached.
    pub body_stall_timeout_secs: u64,
    pub retry_attempts: u32,
    /// Token realm hosts (`host` or `host:port`) besides the upstream's own
    /// origin that may receive its credentials; `["auth.docker.io"]` for
    /// Docker Hub when unset. A challenge naming any other realm gets an
    /// anonymous token request.
    pub auth_realms: Option<Vec<String>>,
    /// Pushes, uploads, mounts and deletes: `off` (405), `client-credentials`
    /// (the client's own `Authorization`, passed through) or
    /// `stored-credentials` (regcache's; see [`crate::writes`]).
    pub writes: crate::writes::Forwarding,
    /// `/v2/_catalog`: the same three values; `off` refuses it (403).
    pub catalog: crate::writes::Forwarding,
    /// Consecutive failed upstream calls (no connection, timeout, 5xx; each
    /// after its retries) that open the circuit breaker; 0 turns it off.
    pub breaker_failures: u32,
    /// While the breaker is open, `GET /v2/` probes the upstream this often
    /// (and a refused request's `Retry-After`).
    pub breaker_probe_secs: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Schema1Section {
    /// PEM (SEC1 or PKCS#8) or JWK P-256 key (told apart by content) used to
    /// sign converted manifests; generated and saved here on first start if
    /// absent (as a JWK when named `.json`/`.jwk`).
    /// Relative paths are under `data_dir`.
    pub signing_key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".into(),
            admin_listen: "127.0.0.1:5001".into(),
            data_dir: PathBuf::from("./regcache-data"),
            tls_cert_file: None,
            tls_key_file: None,
            kernel_tls: crate::kernel_tls::KernelTls::Auto,
            admin: super::AdminSection::default(),
            limits: super::LimitsSection::default(),
            log: LogSection::default(),
            cache: CacheSection::default(),
            upstream: UpstreamSections(vec![UpstreamSection::default()]),
            schema1: Schema1Section::default(),
            policy: Vec::new(),
            auth: super::auth::AuthSection::default(),
            access: Vec::new(),
            cluster: None,
            shared: None,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "text".into(),
            level: "info".into(),
            access: "info".into(),
        }
    }
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            memory_size: ByteSize(256 << 20),
            memory_max_object: ByteSize(4 << 20),
            disk_size: ByteSize(50 << 30),
        }
    }
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            name: None,
            url: "https://registry-1.docker.io".into(),
            aliases: Vec::new(),
            default: false,
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            tag_ttl_secs: 60,
            stale_if_error_secs: 24 * 3600,
            stale_while_revalidate_secs: 0,
            connect_timeout_secs: 10,
            first_byte_timeout_secs: 30,
            body_stall_timeout_secs: 60,
            retry_attempts: 3,
            auth_realms: None,
            writes: crate::writes::Forwarding::Off,
            catalog: crate::writes::Forwarding::Off,
            breaker_failures: 3,
            breaker_probe_secs: 2,
        }
    }
}

impl Default for Schema1Section {
    fn default() -> Self {
        Schema1Section {
            signing_key: PathBuf::from("schema1-signing-key.pem"),
        }
    }
}

/// A byte count written as an integer or a string such as `"512MiB"`,
/// `"1.5GiB"`, `"50GB"`. Parsed by the `bytesize` crate: `KB`/`MB`/`GB`/`TB`
/// (and `K`/`M`/`G`/`T`) are decimal (10^3, 10^6, ...), `KiB`/`MiB`/`GiB`/`TiB`
/// (and `Ki`/`Mi`/...) binary (2^10, 2^20, ...), units in any case,
/// fractions allowed; a bare number is bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        const EXAMPLES: &str = "examples: 1048576, \"512MiB\", \"1.5GiB\", \"50GB\"; KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024";
        let t = s.trim();
        if t.starts_with('-') {
            return Err(format!("{s:?} is not a size ({EXAMPLES})"));
        }
        let n = t
            .parse::<bytesize::ByteSize>()
            .map_err(|e| format!("{s:?} is not a size: {e} ({EXAMPLES})"))?
            .as_u64();
        // bytesize saturates: u64::MAX from anything but itself overflowed.
        if n == u64::MAX && t != u64::MAX.to_string() {
            return Err(format!("{s:?} is too large"));
        }
        Ok(ByteSize(n))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Size;

        impl serde::de::Visitor<'_> for Size {
            type Value = ByteSize;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a size: a number of bytes, or a string such as \"512MiB\" or \"1.5GB\"",
                )
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{n} is not a size: sizes are not negative")))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                ByteSize::parse(s).map_err(E::custom)
            }
        }

        d.deserialize_any(Size)
    }
}

impl Config {
    /// Parse a TOML document, reporting every problem at once: a syntax
    /// error is one problem (with its line and column); past it, every
    /// unknown key, and every value of the wrong type or refused by its
    /// parser, each with its line, column and key. A value that fails is
    /// taken out (its default applies) and the document read again, until
    /// nothing fails.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        match Config::from_toml_lenient(text, origin)? {
            (config, problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(ConfigError { problems }),
        }
    }

    /// As [`Config::from_toml`], but past a syntax error the file is
    /// returned with its problems (every failing value at its default), so
    /// that validation can report its own problems in the same run.
    pub(super) fn from_toml_lenient(
        text: &str,
        origin: &str,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut root = toml::de::DeTable::parse(text).map_err(|e| ConfigError {
            problems: vec![format!("{origin}: {}", e.to_string().trim_end())],
        })?;
        let mut unknown: Vec<String> = Vec::new();
        let mut problems = Vec::new();
        loop {
            let pass =
                super::keys::deserialize::<Config, _>(toml::de::Deserializer::from(root.clone()));
            for u in pass.unknown {
                if !unknown.contains(&u) {
                    unknown.push(u);
                }
            }
            let e = match pass.result {
                Ok(config) => {
                    let mut all: Vec<String> =
                        unknown.iter().map(|p| format!("{origin}: {p}")).collect();
                    all.append(&mut problems);
                    return Ok((config, all));
                }
                Err(e) => e,
            };
            let at = e
                .span()
                .map(|span| line_column(text, span.start))
                .map_or_else(String::new, |(l, c)| format!(":{l}:{c}"));
            let path = pass.failed_at.unwrap_or_default();
            let key = super::keys::describe(&path);
            problems.push(format!("{origin}{at}: {key}{}", e.message().trim_end()));
            if !super::keys::remove(&mut root, &path) {
                // Nothing left to take out: report what there is.
                let mut all: Vec<String> =
                    unknown.iter().map(|p| format!("{origin}: {p}")).collect();
                all.append(&mut problems);
                return Err(ConfigError { problems: all });
            }
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

impl UpstreamSections {
    /// The one marked `default = true`, else the first.
    pub fn default_index(&self) -> usize {
        self.0.iter().position(|u| u.default).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use crate::config::test_support::{config_file, env};

    #[test]
    fn every_unknown_key_is_reported() {
        let err = Config::from_toml(
            "colour = 1\n[log]\nverbosity = 2\n[cache]\ndisk_sise = 3\n[upstream]\ntag_tll_secs = 4\n[[policy]]\nrepositories = [\"a\"]\nschema = \"x\"\n",
            "f.toml",
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 5, "{text}");
        for key in [
            "colour",
            "verbosity",
            "disk_sise",
            "tag_tll_secs",
            "schema`",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert!(text.contains("in [[policy]] #1"), "{text}");
    }

    #[test]
    fn unknown_keys_come_with_a_type_error() {
        let err = Config::from_toml("colour = 1\nlisten = 5\n", "f.toml").unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.problems[0].contains("unknown key `colour`"), "{err}");
        assert!(
            err.problems[1].starts_with("f.toml:2:10: key `listen`: ")
                && err.problems[1].contains("expected a string"),
            "{err}"
        );
    }

    #[test]
    fn every_type_error_is_reported_in_one_run() {
        let text = concat!(
            "listen = 5\n",
            "colour = \"red\"\n",
            "[cache]\n",
            "disk_size = \"12 parsecs\"\n",
            "memory_size = true\n",
            "[upstream]\n",
            "tag_ttl_secs = \"1m\"\n",
            "writes = \"sometimes\"\n",
            "[[policy]]\n",
            "repositories = [\"a/*\"]\n",
            "schema1 = \"maybe\"\n",
        );
        let err = Config::from_toml(text, "f.toml").unwrap_err();
        let all = err.to_string();
        assert_eq!(err.problems.len(), 7, "{all}");
        for want in [
            "f.toml: unknown key `colour`",
            "f.toml:1:10: key `listen`: invalid type",
            "f.toml:4:13: key `disk_size` in [cache]: \"12 parsecs\" is not a size",
            "f.toml:5:15: key `memory_size` in [cache]:",
            "f.toml:7:16: key `tag_ttl_secs` in [upstream]:",
            "key `writes` in [upstream]:",
            "key `schema1` in [[policy]] #1:",
        ] {
            assert!(all.contains(want), "{want:?} missing from {all}");
        }
        // In an array of tables, each item's keys too.
        let err = Config::from_toml(
            "[[upstream]]\nurl = \"http://a:1\"\nretry_attempts = \"x\"\n\
             [[upstream]]\nurl = \"http://b:1\"\ntag_ttl_secs = -1\nwrites = 3\n",
            "f.toml",
        )
        .unwrap_err();
        let all = err.to_string();
        assert_eq!(err.problems.len(), 3, "{all}");
        for want in [
            "f.toml:3:18: key `retry_attempts` in [[upstream]] #1: invalid type: string \"x\", expected u32\n",
            "key `tag_ttl_secs` in [[upstream]] #2",
            "key `writes` in [[upstream]] #2",
        ] {
            assert!(all.contains(want), "{want:?} missing from {all}");
        }
        // A syntax error is one problem, with its line and column.
        let err = Config::from_toml("listen = \"a\"\n[cache\n", "f.toml").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("line 2, column"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("listne = \"x\"\n", "f.toml").unwrap_err();
        assert!(err.problems[0].contains("listne"), "{err}");
        let err = Config::from_toml("[upstream]\nurll = \"x\"\n", "f.toml").unwrap_err();
        assert!(err.problems[0].contains("urll"), "{err}");
    }

    #[test]
    fn the_documented_example_loads() {
        // deploy/regcache.toml documents every key; loading it keeps it honest.
        let text = include_str!("../../../../deploy/regcache.toml");
        let cfg = Config::from_toml(text, "deploy/regcache.toml").unwrap();
        let d = Config::default();
        assert_eq!(cfg.listen, d.listen);
        assert_eq!(cfg.admin_listen, d.admin_listen);
        assert_eq!(cfg.data_dir, d.data_dir);
        assert_eq!(cfg.tls_cert_file, None);
        assert_eq!(cfg.tls_key_file, None);
        assert_eq!(cfg.log, d.log);
        assert_eq!(cfg.cache, d.cache);
        assert_eq!(cfg.upstream, d.upstream);
        assert_eq!(cfg.schema1, d.schema1);
        assert_eq!(cfg.policy.len(), 2);
        assert_eq!(cfg.auth, d.auth);
        assert!(cfg.access.is_empty());
        let (_dir, file) = config_file(text);
        let s = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
        let p = s.policies.resolve("docker.io", "legacy/a/b");
        assert_eq!(p.schema2_push, crate::policy::Schema2Push::Reject);
        let p = s.policies.resolve("docker.io", "ubi8/ubi");
        assert_eq!(p.schema1, crate::policy::Schema1Mode::Reject);
        let p = s.policies.resolve("docker.io", "library/alpine");
        assert_eq!(p.rule, None);
    }

    #[test]
    fn the_multi_registry_example_loads() {
        let text = include_str!("../../../../deploy/multi-registry.toml");
        let cfg = Config::from_toml(text, "deploy/multi-registry.toml").unwrap();
        assert_eq!(cfg.upstream.0.len(), 3);
        assert_eq!(cfg.upstream.default_index(), 0);
        // As shipped, it validates completely (what `regcache check` does).
        let (_dir, file) = config_file(text);
        let s = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.upstreams.len(), 3);
    }

    #[test]
    fn the_kubernetes_configmap_config_loads() {
        // The kustomize base makes its ConfigMap from this file.
        let text = include_str!("../../../../deploy/kubernetes/base/regcache.toml");
        let cfg = Config::from_toml(text, "deploy/kubernetes/base/regcache.toml").unwrap();
        assert_eq!(cfg.upstream.0.len(), 2);
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/regcache"));
    }

    #[test]
    fn tls_key_typos_are_unknown_keys() {
        let err = Config::from_toml("tls_cert = \"a\"\n", "f.toml").unwrap_err();
        assert!(err.problems[0].contains("tls_cert_file"), "{err}");
        let cfg = Config::from_toml(
            "tls_cert_file = \"a.pem\"\ntls_key_file = \"b.pem\"\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(cfg.tls_cert_file, Some(PathBuf::from("a.pem")));
        assert_eq!(cfg.tls_key_file, Some(PathBuf::from("b.pem")));
    }

    #[test]
    fn byte_sizes() {
        let parse = |s: &str| ByteSize::parse(s).map(|b| b.0);
        assert_eq!(parse("512MiB"), Ok(512 << 20));
        assert_eq!(parse("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse("50G"), Ok(50_000_000_000), "G is decimal, as GB");
        assert_eq!(parse("50GB"), Ok(50_000_000_000));
        assert_eq!(parse("10gb"), Ok(10_000_000_000));
        assert_eq!(parse("2 TiB"), Ok(2 << 40));
        assert_eq!(parse("1024"), Ok(1024));
        assert_eq!(parse("42"), Ok(42));
        assert!(parse("x").is_err());
        assert!(parse("-1GiB").is_err());
        assert!(
            parse("12 parsecs")
                .unwrap_err()
                .contains("\"12 parsecs\" is not a size")
        );
        assert!(
            parse("99999999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
        // In the file, a bad size names its key.
        let err = Config::from_toml("[cache]\ndisk_size = \"5 XB\"\n", "f.toml").unwrap_err();
        assert!(
            err.problems[0].starts_with("f.toml:2:13: key `disk_size` in [cache]: \"5 XB\""),
            "{err}"
        );
        let cfg = Config::from_toml("[cache]\ndisk_size = \"1.5GiB\"\n", "f.toml").unwrap();
        assert_eq!(cfg.cache.disk_size, ByteSize(3 << 29));
    }
}
