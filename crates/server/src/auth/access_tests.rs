//! The `decide` table, `explain`, and rule validation.

use super::*;

fn rules(text: &str) -> Result<AccessRules, Vec<String>> {
    #[derive(Deserialize)]
    struct F {
        #[serde(default)]
        groups: BTreeMap<String, Vec<String>>,
        access: Vec<AccessRuleConfig>,
    }
    let f: F = toml::from_str(text).unwrap();
    AccessRules::new(&f.access, &f.groups)
}

const RULES: &str = r#"
[groups]
devs = ["alice", "bob"]
ops = ["carol"]

[[access]]
users = ["anonymous"]
repositories = ["public/**"]
actions = ["pull"]

[[access]]
groups = ["devs"]
repositories = ["team/*"]
actions = ["pull", "push"]

[[access]]
users = ["carol"]
repositories = ["**"]
upstreams = ["quay.io"]
actions = ["pull", "delete"]

[[access]]
users = ["*"]
repositories = ["public/**", "shared/{a,b}"]
actions = ["pull"]
"#;

#[test]
fn decide_table() {
    use Action::*;
    let r = rules(RULES).unwrap();
    let anon = Principal::Anonymous;
    let user = |n: &str| Principal::User(n.into());
    let repo = Resource::Repository;
    // (principal, upstream, resource, action, expected rule or None)
    let table: Vec<(Principal, &str, Resource<'_>, Action, Option<usize>)> = vec![
        (anon.clone(), "docker.io", repo("public/x/y"), Pull, Some(0)),
        (anon.clone(), "docker.io", repo("public/x"), Push, None),
        (anon.clone(), "docker.io", repo("team/a"), Pull, None),
        (anon.clone(), "docker.io", Resource::Catalog, Pull, None),
        // A user is not anonymous: "*" grants public/** to them.
        (user("alice"), "docker.io", repo("public/x"), Pull, Some(3)),
        (user("alice"), "docker.io", repo("team/a"), Push, Some(1)),
        (user("bob"), "quay.io", repo("team/a"), Pull, Some(1)),
        // `*` stays within one component.
        (user("alice"), "docker.io", repo("team/a/b"), Pull, None),
        (user("alice"), "docker.io", repo("team/a"), Delete, None),
        (user("dave"), "docker.io", repo("team/a"), Pull, None),
        (user("dave"), "docker.io", repo("shared/b"), Pull, Some(3)),
        (user("dave"), "docker.io", repo("shared/c"), Pull, None),
        // Per upstream.
        (user("carol"), "quay.io", repo("x/y/z"), Delete, Some(2)),
        (user("carol"), "docker.io", repo("x/y/z"), Delete, None),
        (user("carol"), "quay.io", Resource::Catalog, Pull, Some(2)),
        (user("carol"), "docker.io", Resource::Catalog, Pull, None),
        (user("carol"), "quay.io", Resource::Catalog, Push, None),
        // Exact case; "anonymous" as a user name is not the anonymous principal.
        (user("Alice"), "docker.io", repo("team/a"), Pull, None),
        (user("anonymous"), "docker.io", repo("team/a"), Pull, None),
    ];
    for (p, up, res, action, want) in table {
        let got = decide(&p, up, res, action, &r);
        let want = match want {
            Some(rule) => Decision::Allow { rule },
            None => Decision::Deny,
        };
        assert_eq!(got, want, "{p:?} {action:?} {res:?} via {up}");
    }
}

#[test]
fn no_rules_deny_everything() {
    let r = AccessRules::default();
    let d = decide(
        &Principal::User("root".into()),
        "docker.io",
        Resource::Repository("a"),
        Action::Pull,
        &r,
    );
    assert_eq!(d, Decision::Deny);
}

#[test]
fn explain_names_the_rule_or_why_not() {
    let r = rules(RULES).unwrap();
    let text = r.explain(
        &Principal::User("alice".into()),
        "docker.io",
        Resource::Repository("team/a"),
        Action::Push,
    );
    assert!(
        text.contains("allowed by access rule #2") && text.contains("groups = [\"devs\"]"),
        "{text}"
    );
    let text = r.explain(
        &Principal::User("carol".into()),
        "docker.io",
        Resource::Repository("public/a"),
        Action::Delete,
    );
    assert!(text.contains("denied: no access rule grants it"), "{text}");
    assert!(
        text.contains("rule #1: does not name this principal"),
        "{text}"
    );
    assert!(
        text.contains("rule #3: its upstreams do not include this one"),
        "{text}"
    );
    assert!(
        text.contains("rule #4: does not list this action"),
        "{text}"
    );
}

#[test]
fn invalid_rules_are_named() {
    let errs = rules(
        r#"
[groups]
g = ["anonymous", ""]

[[access]]
repositories = ["a"]
actions = ["pull"]

[[access]]
groups = ["nope"]
repositories = ["bad/[z-a", ""]
upstreams = []
actions = []

[[access]]
users = ["anonymous", "a:b"]
repositories = ["**"]
actions = ["pull", "push"]
"#,
    )
    .unwrap_err();
    let text = errs.join("\n");
    assert_eq!(errs.len(), 10, "{text}");
    assert!(
        text.contains("access rule #3")
            && text.contains("anonymous clients may only be granted pull"),
        "{text}"
    );
    assert!(text.contains("\"a:b\" matches nobody"), "{text}");
    assert!(
        text.contains("access rule #1") && text.contains("names nobody"),
        "{text}"
    );
    assert!(text.contains("group \"nope\" is not defined"), "{text}");
    assert!(text.contains("invalid glob \"bad/[z-a\""), "{text}");
    assert!(text.contains("`upstreams = []` matches nothing"), "{text}");
    assert!(text.contains("`actions` must list"), "{text}");
    assert!(
        text.contains("\"anonymous\" cannot be a user name"),
        "{text}"
    );
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct F {
        access: Vec<AccessRuleConfig>,
    }
    let e =
        toml::from_str::<F>("[[access]]\nusers=[\"a\"]\nrepositories=[\"a\"]\nactions=[\"pul\"]\n")
            .unwrap_err();
    assert!(e.to_string().contains("pul"), "{e}");
}
