//! Per-repository access rules: `[[access]]` tables granting actions to
//! users and groups, and [`decide`], the one pure function that evaluates
//! them.
//!
//! ```toml
//! [auth.groups]
//! devs = ["alice", "bob"]
//!
//! [[access]]
//! users = ["ci"]                 # user names; "*" = every authenticated user;
//!                                # "anonymous" = clients without credentials
//! groups = ["devs"]              # names from [auth.groups]
//! repositories = ["team/**"]     # globs, as in [[policy]]
//! upstreams = ["docker.io"]      # optional: only through these upstreams
//! actions = ["pull", "push"]     # pull | push | delete
//! ```
//!
//! Rules only grant: a request is allowed when some rule names its
//! principal, its upstream and its repository and lists its action, and
//! denied when none does (the default is deny; order does not matter, the
//! first granting rule is the one named). Anonymous clients may only be
//! granted `pull`. Globs are those of `[[policy]]`:
//! `*` and `?` stay within one path component, `**` spans components.
//! The catalog (`/v2/_catalog`) lists every repository of an upstream, so
//! only a principal granted `pull` on the literal pattern `"**"` for that
//! upstream may read it.

use std::collections::{BTreeMap, HashMap};

use globset::GlobMatcher;
use serde::Deserialize;

/// What a request does to a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// `pull`, `push`, `delete`; `*` and anything else are not actions.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// Who is asking: a client without credentials, or a user the htpasswd file
/// (or a token regcache issued) vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    Anonymous,
    User(String),
}

impl Principal {
    /// `anonymous`, or `user "NAME"`.
    pub fn describe(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".to_owned(),
            Principal::User(u) => format!("user {u:?}"),
        }
    }
}

/// The word in `users` that names clients without credentials.
pub const ANONYMOUS: &str = "anonymous";

/// One `[[access]]` table as written.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleConfig {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub repositories: Vec<String>,
    #[serde(default)]
    pub upstreams: Option<Vec<String>>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone)]
struct Rule {
    config: AccessRuleConfig,
    patterns: Vec<GlobMatcher>,
    upstreams: Option<Vec<GlobMatcher>>,
}

/// The compiled rules and the groups they name.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    rules: Vec<Rule>,
    /// user → the groups listing them.
    member_of: HashMap<String, Vec<String>>,
}

/// What [`decide`] concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Granted by the rule with this 0-based index.
    Allow { rule: usize },
    /// No rule grants it.
    Deny,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// What a request asks for: one repository, or the catalog of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    Repository(&'a str),
    Catalog,
}

/// The access decision for `principal` doing `action` on `resource` through
/// `upstream` (see the module documentation).
pub fn decide(
    principal: &Principal,
    upstream: &str,
    resource: Resource<'_>,
    action: Action,
    rules: &AccessRules,
) -> Decision {
    for (i, rule) in rules.rules.iter().enumerate() {
        if rule_grants(rule, principal, upstream, resource, action, rules) {
            return Decision::Allow { rule: i };
        }
    }
    Decision::Deny
}

fn rule_grants(
    rule: &Rule,
    principal: &Principal,
    upstream: &str,
    resource: Resource<'_>,
    action: Action,
    rules: &AccessRules,
) -> bool {
    rule.config.actions.contains(&action)
        && names_principal(rule, principal, rules)
        && names_upstream(rule, upstream)
        && names_resource(rule, resource)
}

fn names_principal(rule: &Rule, principal: &Principal, rules: &AccessRules) -> bool {
    match principal {
        Principal::Anonymous => rule.config.users.iter().any(|u| u == ANONYMOUS),
        Principal::User(name) => {
            rule.config.users.iter().any(|u| u == "*" || u == name)
                || rules
                    .member_of
                    .get(name)
                    .is_some_and(|groups| groups.iter().any(|g| rule.config.groups.contains(g)))
        }
    }
}

fn names_upstream(rule: &Rule, upstream: &str) -> bool {
    rule.upstreams
        .as_ref()
        .is_none_or(|ups| ups.iter().any(|m| m.is_match(upstream)))
}

fn names_resource(rule: &Rule, resource: Resource<'_>) -> bool {
    match resource {
        Resource::Repository(repo) => rule.patterns.iter().any(|m| m.is_match(repo)),
        Resource::Catalog => rule.config.repositories.iter().any(|p| p == "**"),
    }
}

impl AccessRules {
    /// Compile `rules` against `groups` (`[auth.groups]`); every problem is
    /// reported, naming the rule by number.
    pub fn new(
        rules: &[AccessRuleConfig],
        groups: &BTreeMap<String, Vec<String>>,
    ) -> Result<AccessRules, Vec<String>> {
        let mut problems = Vec::new();
        let mut member_of: HashMap<String, Vec<String>> = HashMap::new();
        for (group, users) in groups {
            if group.is_empty() {
                problems.push("[auth.groups]: a group name must not be empty".into());
            }
            for u in users {
                if u.is_empty() || u == ANONYMOUS || u == "*" || u.contains(':') {
                    problems.push(format!(
                        "[auth.groups] {group}: {u:?} cannot be a user name (empty, \"*\", \"anonymous\" and names with ':' are reserved)"
                    ));
                }
                member_of.entry(u.clone()).or_default().push(group.clone());
            }
        }
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let label = format!(
                "access rule #{} (repositories = {:?})",
                i + 1,
                r.repositories
            );
            if r.users.is_empty() && r.groups.is_empty() {
                problems.push(format!(
                    "{label}: names nobody; list `users` (\"*\" for every authenticated user, \"anonymous\" for clients without credentials) or `groups`"
                ));
            }
            for u in &r.users {
                if u.is_empty() || u.contains(':') {
                    problems.push(format!(
                        "{label}: {u:?} matches nobody (user names are not empty and hold no ':')"
                    ));
                }
            }
            if r.users.iter().any(|u| u == ANONYMOUS)
                && r.actions.iter().any(|a| *a != Action::Pull)
            {
                problems.push(format!(
                    "{label}: anonymous clients may only be granted pull; give push and delete to users or groups in a rule of their own"
                ));
            }
            for g in &r.groups {
                if !groups.contains_key(g) {
                    problems.push(format!(
                        "{label}: group {g:?} is not defined in [auth.groups]"
                    ));
                }
            }
            if r.actions.is_empty() {
                problems.push(format!(
                    "{label}: `actions` must list at least one of pull, push, delete"
                ));
            }
            let (patterns, upstreams) = crate::policy::compile_scope(
                &label,
                &r.repositories,
                r.upstreams.as_deref(),
                &mut problems,
            );
            out.push(Rule {
                config: r.clone(),
                patterns,
                upstreams,
            });
        }
        if problems.is_empty() {
            Ok(AccessRules {
                rules: out,
                member_of,
            })
        } else {
            Err(problems)
        }
    }

    /// The rules as written, in order (for the admin page).
    pub fn configs(&self) -> impl Iterator<Item = &AccessRuleConfig> {
        self.rules.iter().map(|r| &r.config)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// `regcache policy explain --user`: the decision and the rule that made
    /// it, or why each rule did not grant it.
    pub fn explain(
        &self,
        principal: &Principal,
        upstream: &str,
        resource: Resource<'_>,
        action: Action,
    ) -> String {
        let what = match resource {
            Resource::Repository(r) => format!("repository {r:?}"),
            Resource::Catalog => "the catalog".to_owned(),
        };
        let mut out = format!(
            "access: {} {} {what} via upstream {upstream:?}\n",
            principal.describe(),
            action.as_str()
        );
        match decide(principal, upstream, resource, action, self) {
            Decision::Allow { rule } => {
                let r = &self.rules[rule].config;
                out.push_str(&format!(
                    "  allowed by access rule #{} (users = {:?}, groups = {:?}, repositories = {:?}{}, actions = {:?})\n",
                    rule + 1,
                    r.users,
                    r.groups,
                    r.repositories,
                    match &r.upstreams {
                        Some(u) => format!(", upstreams = {u:?}"),
                        None => String::new(),
                    },
                    r.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                ));
            }
            Decision::Deny => {
                out.push_str(&format!(
                    "  denied: no access rule grants it ({} rule(s) configured; the default is deny)\n",
                    self.rules.len()
                ));
                for (i, rule) in self.rules.iter().enumerate() {
                    let why = if !names_principal(rule, principal, self) {
                        "does not name this principal"
                    } else if !names_upstream(rule, upstream) {
                        "its upstreams do not include this one"
                    } else if !names_resource(rule, resource) {
                        match resource {
                            Resource::Repository(_) => "no repository pattern matches",
                            Resource::Catalog => "the catalog needs the pattern \"**\"",
                        }
                    } else {
                        "does not list this action"
                    };
                    out.push_str(&format!("  rule #{}: {why}\n", i + 1));
                }
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
