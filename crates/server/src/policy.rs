//! Per-repository policy: ordered `[[policy]]` rules, first match wins.
//!
//! ```toml
//! [[policy]]
//! repositories = ["legacy/*", "team/**"]   # globs over the repository name
//! upstreams = ["docker.io"]                 # optional: only for these upstreams
//! schema1 = "reject"                        # convert | reject | passthrough | force
//! schema1_digests = "serve"                 # serve | reject
//! schema2_push = "accept"                   # accept | reject
//! oci = "bridge"                            # bridge | refuse
//! schema1_upgrade = "upgrade"               # upgrade | off
//! ```
//!
//! Glob rules: `*` and `?` stay within one path component (`legacy/*` matches
//! `legacy/app` but not `legacy/a/b`), `**` spans components (`team/**` matches
//! `team/a/b`), `{a,b}` alternates and `[..]` is a class. Matching is exact-case.
//! A key a matching rule leaves out takes the default: `schema1 = "convert"`,
//! `schema1_digests = "serve"`, `schema2_push = "accept"`, `oci = "bridge"`,
//! `schema1_upgrade = "upgrade"`. A repository no rule matches gets all the
//! defaults. What each mode does to which client is
//! [`regcache_formats::negotiate`]'s table.

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;

pub use regcache_formats::negotiate::{OciMode, Schema1Mode, UpgradeMode};

/// What a pull by a digest that names a Schema 1 manifest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schema1Digests {
    #[default]
    Serve,
    /// Red Hat's behaviour since 2022: 404 `UNSUPPORTED`.
    Reject,
}

/// Whether Schema 2 / list / OCI manifest PUTs are forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schema2Push {
    #[default]
    Accept,
    /// Refused with a registry error, so Docker engines fall back to Schema 1.
    Reject,
}

/// One `[[policy]]` table as written.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub repositories: Vec<String>,
    #[serde(default)]
    pub upstreams: Option<Vec<String>>,
    #[serde(default)]
    pub schema1: Option<Schema1Mode>,
    #[serde(default)]
    pub schema1_digests: Option<Schema1Digests>,
    #[serde(default)]
    pub schema2_push: Option<Schema2Push>,
    #[serde(default)]
    pub oci: Option<OciMode>,
    #[serde(default)]
    pub schema1_upgrade: Option<UpgradeMode>,
}

/// The effective policy for one repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Policy {
    pub schema1: Schema1Mode,
    pub schema1_digests: Schema1Digests,
    pub schema2_push: Schema2Push,
    pub oci: OciMode,
    pub schema1_upgrade: UpgradeMode,
    /// Index (0-based) of the rule that matched, if any.
    pub rule: Option<usize>,
}

#[derive(Debug, Clone)]
struct Rule {
    config: RuleConfig,
    patterns: Vec<GlobMatcher>,
    upstreams: Option<Vec<GlobMatcher>>,
}

impl Policy {
    /// The keys manifest negotiation reads.
    pub fn rules(&self) -> regcache_formats::negotiate::Rules {
        regcache_formats::negotiate::Rules {
            schema1: self.schema1,
            oci: self.oci,
            upgrade: self.schema1_upgrade,
        }
    }
}

/// The compiled rule list.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    rules: Vec<Rule>,
}

fn compile(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()?
        .compile_matcher())
}

/// The repository and upstream globs of one rule (`[[policy]]` and
/// `[[access]]` alike), compiled; every problem goes to `problems`, named
/// with `label`. `*` stays within a path component, `**` crosses them.
pub(crate) fn compile_scope(
    label: &str,
    repositories: &[String],
    upstreams: Option<&[String]>,
    problems: &mut Vec<String>,
) -> (Vec<GlobMatcher>, Option<Vec<GlobMatcher>>) {
    if repositories.is_empty() {
        problems.push(format!(
            "{label}: `repositories` must list at least one glob"
        ));
    }
    let mut patterns = Vec::new();
    for p in repositories {
        if p.is_empty() {
            problems.push(format!(
                "{label}: an empty repository pattern matches nothing"
            ));
            continue;
        }
        match compile(p) {
            Ok(m) => patterns.push(m),
            Err(e) => problems.push(format!("{label}: invalid glob {p:?}: {}", e.kind())),
        }
    }
    let upstreams = match upstreams {
        None => None,
        Some([]) => {
            problems.push(format!(
                "{label}: `upstreams = []` matches nothing; leave it out to match every upstream"
            ));
            None
        }
        Some(list) => {
            let mut ms = Vec::new();
            for u in list {
                match Glob::new(u) {
                    Ok(g) => ms.push(g.compile_matcher()),
                    Err(e) => problems.push(format!(
                        "{label}: invalid upstream glob {u:?}: {}",
                        e.kind()
                    )),
                }
            }
            Some(ms)
        }
    };
    (patterns, upstreams)
}

impl Policies {
    /// Compile the rules; every invalid rule is reported, naming it by number and
    /// by its first repository pattern.
    pub fn new(rules: &[RuleConfig]) -> Result<Policies, Vec<String>> {
        let mut problems = Vec::new();
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let label = format!(
                "policy rule #{} (repositories = {:?})",
                i + 1,
                r.repositories
            );
            let (patterns, upstreams) = compile_scope(
                &label,
                &r.repositories,
                r.upstreams.as_deref(),
                &mut problems,
            );
            if r.schema1.is_none()
                && r.schema1_digests.is_none()
                && r.schema2_push.is_none()
                && r.oci.is_none()
                && r.schema1_upgrade.is_none()
            {
                problems.push(format!(
                    "{label}: sets none of schema1, schema1_digests, schema2_push, oci, schema1_upgrade"
                ));
            }
            out.push(Rule {
                config: r.clone(),
                patterns,
                upstreams,
            });
        }
        if problems.is_empty() {
            Ok(Policies { rules: out })
        } else {
            Err(problems)
        }
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules: every repository gets the defaults.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The policy for `repository` reached through `upstream`.
    pub fn resolve(&self, upstream: &str, repository: &str) -> Policy {
        match self.matching(upstream, repository) {
            Some((i, rule, _)) => Policy {
                schema1: rule.config.schema1.unwrap_or_default(),
                schema1_digests: rule.config.schema1_digests.unwrap_or_default(),
                schema2_push: rule.config.schema2_push.unwrap_or_default(),
                oci: rule.config.oci.unwrap_or_default(),
                schema1_upgrade: rule.config.schema1_upgrade.unwrap_or_default(),
                rule: Some(i),
            },
            None => Policy::default(),
        }
    }

    fn matching(&self, upstream: &str, repository: &str) -> Option<(usize, &Rule, usize)> {
        self.rules.iter().enumerate().find_map(|(i, rule)| {
            if let Some(ups) = &rule.upstreams
                && !ups.iter().any(|m| m.is_match(upstream))
            {
                return None;
            }
            let p = rule.patterns.iter().position(|m| m.is_match(repository))?;
            Some((i, rule, p))
        })
    }

    /// The rules as written, in order (for the admin page).
    pub fn configs(&self) -> impl Iterator<Item = &RuleConfig> {
        self.rules.iter().map(|r| &r.config)
    }

    /// A human explanation of which rule applies and why (`regcache policy explain`).
    pub fn explain(&self, upstream: &str, repository: &str) -> String {
        let mut out = format!("repository {repository:?} via upstream {upstream:?}\n");
        let policy = self.resolve(upstream, repository);
        match self.matching(upstream, repository) {
            Some((i, rule, p)) => {
                out.push_str(&format!(
                    "  matched policy rule #{} by pattern {:?}{} (rules are tried in order; the first match wins)\n",
                    i + 1,
                    rule.config.repositories[p],
                    match &rule.config.upstreams {
                        Some(u) => format!(" and upstreams = {u:?}"),
                        None => String::new(),
                    }
                ));
                for (j, earlier) in self.rules.iter().enumerate().take(i) {
                    let why = match &earlier.upstreams {
                        Some(ups) if !ups.iter().any(|m| m.is_match(upstream)) => {
                            "its upstreams do not include this one"
                        }
                        _ => "no repository pattern matches",
                    };
                    out.push_str(&format!("  skipped rule #{}: {why}\n", j + 1));
                }
                let set = |is_set: bool| if is_set { "set by the rule" } else { "default" };
                out.push_str(&format!(
                    "  schema1 = {:?} ({})\n  schema1_digests = {:?} ({})\n  schema2_push = {:?} ({})\n",
                    mode_name(policy.schema1),
                    set(rule.config.schema1.is_some()),
                    digests_name(policy.schema1_digests),
                    set(rule.config.schema1_digests.is_some()),
                    push_name(policy.schema2_push),
                    set(rule.config.schema2_push.is_some()),
                ));
                out.push_str(&format!(
                    "  oci = {:?} ({})\n  schema1_upgrade = {:?} ({})\n",
                    policy.oci.as_str(),
                    set(rule.config.oci.is_some()),
                    policy.schema1_upgrade.as_str(),
                    set(rule.config.schema1_upgrade.is_some()),
                ));
            }
            None => {
                out.push_str(&format!(
                    "  no policy rule matches ({} rule(s) configured); the defaults apply\n",
                    self.rules.len()
                ));
                out.push_str("  schema1 = \"convert\" (default)\n  schema1_digests = \"serve\" (default)\n  schema2_push = \"accept\" (default)\n  oci = \"bridge\" (default)\n  schema1_upgrade = \"upgrade\" (default)\n");
            }
        }
        out.push_str(&regcache_formats::negotiate::explain(policy.rules()));
        out
    }
}

pub fn mode_name(m: Schema1Mode) -> &'static str {
    m.as_str()
}

pub fn digests_name(m: Schema1Digests) -> &'static str {
    match m {
        Schema1Digests::Serve => "serve",
        Schema1Digests::Reject => "reject",
    }
}

pub fn push_name(m: Schema2Push) -> &'static str {
    match m {
        Schema2Push::Accept => "accept",
        Schema2Push::Reject => "reject",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Result<Policies, Vec<String>> {
        #[derive(Deserialize)]
        struct F {
            policy: Vec<RuleConfig>,
        }
        let f: F = toml::from_str(toml_text).unwrap();
        Policies::new(&f.policy)
    }

    const OVERLAPPING: &str = r#"
[[policy]]
repositories = ["legacy/special"]
schema1 = "force"

[[policy]]
repositories = ["legacy/*"]
schema1 = "reject"
schema1_digests = "reject"

[[policy]]
repositories = ["legacy/**", "old-*"]
upstreams = ["quay.io"]
schema2_push = "reject"

[[policy]]
repositories = ["**"]
schema1 = "passthrough"
"#;

    #[test]
    fn first_match_wins_in_documented_order() {
        let p = rules(OVERLAPPING).unwrap();
        let r = p.resolve("docker.io", "legacy/special");
        assert_eq!((r.schema1, r.rule), (Schema1Mode::Force, Some(0)));
        let r = p.resolve("docker.io", "legacy/app");
        assert_eq!(r.schema1, Schema1Mode::Reject);
        assert_eq!(r.schema1_digests, Schema1Digests::Reject);
        assert_eq!(
            r.schema2_push,
            Schema2Push::Accept,
            "unset keys take the default"
        );
        assert_eq!(r.rule, Some(1));
        // `*` does not cross '/': legacy/a/b skips rule 2; rule 3 needs quay.io.
        let r = p.resolve("docker.io", "legacy/a/b");
        assert_eq!((r.schema1, r.rule), (Schema1Mode::Passthrough, Some(3)));
        let r = p.resolve("quay.io", "legacy/a/b");
        assert_eq!(r.schema2_push, Schema2Push::Reject);
        assert_eq!((r.schema1, r.rule), (Schema1Mode::Convert, Some(2)));
        let r = p.resolve("quay.io", "old-thing");
        assert_eq!(r.rule, Some(2));
        let r = p.resolve("docker.io", "library/alpine");
        assert_eq!((r.schema1, r.rule), (Schema1Mode::Passthrough, Some(3)));
        // Case matters.
        let r = p.resolve("docker.io", "Legacy/app");
        assert_eq!(r.rule, Some(3));
    }

    #[test]
    fn no_rules_means_documented_defaults() {
        let p = Policies::new(&[]).unwrap();
        assert_eq!(
            p.resolve("docker.io", "x/y"),
            Policy {
                schema1: Schema1Mode::Convert,
                schema1_digests: Schema1Digests::Serve,
                schema2_push: Schema2Push::Accept,
                oci: OciMode::Bridge,
                schema1_upgrade: UpgradeMode::Upgrade,
                rule: None
            }
        );
        assert!(
            p.explain("docker.io", "x/y")
                .contains("no policy rule matches")
        );
    }

    #[test]
    fn explain_shows_what_each_client_gets() {
        let p = rules(
            r#"
[[policy]]
repositories = ["plain/*"]
oci = "refuse"
schema1_upgrade = "off"
"#,
        )
        .unwrap();
        let line = |text: &str, stored: &str, client: &str| -> String {
            let block = text.split(&format!("stored {stored}:\n")).nth(1).unwrap();
            block
                .lines()
                .find(|l| l.trim_start().starts_with(client))
                .unwrap()
                .to_owned()
        };
        let default = p.explain("docker.io", "x/y");
        assert!(line(&default, "Schema 1", "containerd").ends_with("Docker Schema 2 (upgraded)"));
        assert!(line(&default, "OCI index", "Docker 1.10-17").ends_with("Docker list of twins"));
        assert!(line(&default, "OCI image", "Docker <= 1.9").ends_with("Schema 1 (converted)"));
        let plain = p.explain("docker.io", "plain/y");
        assert!(
            plain.contains("oci = \"refuse\" (set by the rule)"),
            "{plain}"
        );
        assert!(line(&plain, "Schema 1", "containerd").ends_with("as stored"));
        assert!(
            line(&plain, "OCI index", "Docker 1.10-17").ends_with("(OCI refused)"),
            "{plain}"
        );
    }

    #[test]
    fn explain_names_the_rule_and_why() {
        let p = rules(OVERLAPPING).unwrap();
        let text = p.explain("docker.io", "legacy/a/b");
        assert!(
            text.contains("matched policy rule #4 by pattern \"**\""),
            "{text}"
        );
        assert!(
            text.contains("skipped rule #3: its upstreams do not include this one"),
            "{text}"
        );
        assert!(
            text.contains("skipped rule #2: no repository pattern matches"),
            "{text}"
        );
        assert!(
            text.contains("schema1 = \"passthrough\" (set by the rule)"),
            "{text}"
        );
        assert!(
            text.contains("schema2_push = \"accept\" (default)"),
            "{text}"
        );
    }

    #[test]
    fn invalid_rules_are_named() {
        let errs = rules(
            r#"
[[policy]]
repositories = ["ok/*"]
schema1 = "convert"

[[policy]]
repositories = ["bad/[z-a"]
schema1 = "reject"

[[policy]]
repositories = []
schema1 = "reject"

[[policy]]
repositories = ["x"]
"#,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("policy rule #2 (repositories = [\"bad/[z-a\"])"),
            "{errs:?}"
        );
        assert!(errs[1].starts_with("policy rule #3"), "{errs:?}");
        assert!(
            errs[2].contains("rule #4") && errs[2].contains("sets none"),
            "{errs:?}"
        );
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct F {
            policy: Vec<RuleConfig>,
        }
        let e = toml::from_str::<F>("[[policy]]\nrepositories=[\"a\"]\nschema1=\"convrt\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("convrt"), "{e}");
        let e = toml::from_str::<F>("[[policy]]\nrepositories=[\"a\"]\nshema1=\"convert\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("shema1"), "{e}");
    }
}
