//! Checks across sections: a `[[policy]]` or `[[access]]` rule whose
//! `upstreams` names no configured upstream would silently never apply, so
//! it is a problem naming the entry and listing the configured upstreams.

/// A problem for every `upstreams` entry of `[[policy]]` and `[[access]]`
/// rules that matches no configured upstream (entries are globs, matched
/// against upstream names as requests are).
pub(super) fn check_rule_upstreams(
    config: &super::Config,
    names: &[String],
    problems: &mut Vec<String>,
) {
    let policies = (config.policy.iter()).map(|r| ("[[policy]]", r.upstreams.as_deref()));
    let access = (config.access.iter()).map(|r| ("[[access]]", r.upstreams.as_deref()));
    let mut numbers = std::collections::HashMap::new();
    for (section, list) in policies.chain(access) {
        let n = numbers.entry(section).or_insert(0);
        *n += 1;
        for entry in list.unwrap_or_default() {
            // An invalid glob is reported where the rule is compiled.
            let Ok(glob) = globset::Glob::new(entry) else {
                continue;
            };
            let m = glob.compile_matcher();
            if !names.iter().any(|name| m.is_match(name)) {
                problems.push(format!(
                    "{section} #{n}: upstreams names {entry:?}, which is no configured upstream (configured: {})",
                    names.join(", ")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{config_file, env};
    use crate::config::{Config, Overrides};

    #[test]
    fn rules_naming_an_unknown_upstream_are_problems() {
        let pw = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(pw.path(), format!("a:{}\n", bcrypt::hash("x", 4).unwrap())).unwrap();
        let (_dir, file) = config_file(&format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\n\
             [[upstream]]\nname = \"quay.io\"\nurl = \"http://127.0.0.1:10\"\n\
             [[policy]]\nrepositories = [\"a/*\"]\nupstreams = [\"docker.io\", \"ghcr.io\"]\nschema1 = \"reject\"\n\
             [[policy]]\nrepositories = [\"b/*\"]\nupstreams = [\"*.io\"]\nschema1 = \"reject\"\n\
             [auth]\nmode = \"htpasswd\"\nhtpasswd_file = {:?}\n\
             [[access]]\nusers = [\"a\"]\nrepositories = [\"**\"]\nupstreams = [\"gcr.io\"]\nactions = [\"pull\"]\n",
            pw.path().display().to_string()
        ));
        let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("[[policy]] #1: upstreams names \"ghcr.io\", which is no configured upstream (configured: docker.io, quay.io)"),
            "{text}"
        );
        assert!(
            text.contains("[[access]] #1: upstreams names \"gcr.io\""),
            "{text}"
        );
        assert!(
            !text.contains("*.io"),
            "a glob matching an upstream is fine: {text}"
        );
    }
}
