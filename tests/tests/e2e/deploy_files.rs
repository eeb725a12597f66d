//! Every file in `deploy/` loads or lints, with the tool that would read it:
//!
//! * Kubernetes: each overlay renders with `kubectl kustomize` and validates
//!   offline with `kubernetes-validate --strict`; every container runs
//!   non-root, read-only, without privilege escalation or capabilities,
//!   under seccomp `RuntimeDefault`, from a pinned image tag; probes, a
//!   PodDisruptionBudget and a ServiceMonitor are there. The replicated
//!   overlay runs the cluster: port 5002 on the pods and on the headless
//!   Service its `[cluster] peers_dns` names, the advertised pod IP, the
//!   cluster secret and S3 keys from a generated Secret, a NetworkPolicy
//!   that admits only regcache's pods to 5002.
//! * systemd: `systemd-analyze verify` accepts the unit and
//!   `systemd-analyze security` scores it at most 2.5 ("OK").
//! * Dockerfile: `hadolint` reports nothing; multi-stage, a stripped
//!   (`dist` profile) binary, a numeric non-root user, a `.dockerignore`
//!   that keeps `target/` and `.git` out.
//! * regcache's own TOML files: `regcache check` accepts them.
//! * Client configurations: podman parses `registries.conf` (`podman info`),
//!   containerd's `hosts.toml` and Docker's `daemon.json` parse and name the
//!   mirror.
//!
//! [`every_file_in_deploy_has_a_check`] fails when a file is added to
//! `deploy/` without one.

use std::path::{Path, PathBuf};
use std::process::Command;

use regcache_tests::tools::{
    require_program, require_venv_program, run_with_stdin, workspace_root,
};
use serde_json::Value;

/// Which check covers each file of `deploy/` (by path relative to it).
fn check_of(relative: &str) -> Option<&'static str> {
    let ext = Path::new(relative).extension().and_then(|e| e.to_str());
    Some(match (relative, ext) {
        (_, Some("md")) => "documentation",
        (r, _) if r.starts_with("kubernetes/") => "kubernetes_overlays_render_and_validate",
        ("regcache.service", _) => "systemd_unit_verifies_and_is_hardened",
        ("Dockerfile", _) => "dockerfile_lints_clean_and_ships_a_stripped_non_root_binary",
        ("regcache.toml" | "multi-registry.toml", _) => {
            "shipped_configurations_pass_regcache_check"
        }
        ("podman/registries.conf", _) => "client_configurations_load",
        (r, _) if r.starts_with("containerd/") && r.ends_with("/hosts.toml") => {
            "client_configurations_load"
        }
        ("docker/daemon.json", _) => "client_configurations_load",
        (r, Some("json")) if r.starts_with("grafana/") => {
            "observability::a_pull_is_logged_counted_and_lints_clean_and_the_dashboard_finds_its_metrics"
        }
        _ => return None,
    })
}

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_file_in_deploy_has_a_check() {
    let root = deploy_dir();
    let mut unchecked = Vec::new();
    for file in files_under(&root) {
        let relative = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        match check_of(&relative) {
            Some(check) => println!("deploy/{relative}: {check}"),
            None => unchecked.push(relative),
        }
    }
    assert!(
        unchecked.is_empty(),
        "files in deploy/ that no test loads or lints (add a check and list it in check_of): {unchecked:?}"
    );
}

/// Runs `program args…`, returning (success, stdout, stderr).
fn run(program: &Path, args: &[&str], dir: Option<&Path>) -> (bool, String, String) {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The documents of a YAML stream as JSON values (PyYAML from the test
/// virtualenv, where kubernetes-validate brought it).
fn yaml_documents(yaml: &str) -> Vec<Value> {
    let python = require_venv_program("python3");
    let out = run_with_stdin(
        &python,
        &[
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ],
        yaml.as_bytes(),
    );
    assert!(
        out.status.success(),
        "PyYAML could not read the rendered manifests"
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn workspace_version() -> String {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let table: toml::Table = manifest.parse().unwrap();
    table["workspace"]["package"]["version"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn kubernetes_overlays_render_and_validate() {
    let kubectl = require_venv_program("kubectl");
    let validate = require_venv_program("kubernetes-validate");
    let overlays = deploy_dir().join("kubernetes").join("overlays");
    let mut names: Vec<String> = std::fs::read_dir(&overlays)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["replicated", "single"],
        "the overlays this test knows"
    );
    let version = workspace_version();
    let scratch = tempfile::tempdir().unwrap();

    for name in &names {
        let dir = overlays.join(name);
        let (ok, rendered, stderr) = run(&kubectl, &["kustomize", dir.to_str().unwrap()], None);
        assert!(ok, "kubectl kustomize {name} failed: {stderr}");
        let file = scratch.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        let (ok, stdout, stderr) = run(&validate, &["--strict", file.to_str().unwrap()], None);
        println!("kubernetes-validate {name}:\n{stdout}{stderr}");
        assert!(
            ok,
            "kubernetes-validate rejected overlay {name}: {stdout}{stderr}"
        );
        // Nothing but the CRD-backed ServiceMonitor may go unvalidated.
        for line in stdout.lines().chain(stderr.lines()) {
            if line.contains("Couldn't find schema") {
                assert!(line.contains("kind ServiceMonitor"), "{line}");
            }
        }

        let docs = yaml_documents(&rendered);
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        println!("overlay {name}: {kinds:?}");
        for wanted in [
            "Namespace",
            "ConfigMap",
            "Secret",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
            "ServiceMonitor",
        ] {
            assert!(kinds.contains(&wanted), "overlay {name} has no {wanted}");
        }
        let workload = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
        check_workload(name, workload, &version);
        let replicas = workload["spec"]["replicas"].as_u64().unwrap();
        if name == "replicated" {
            assert!(
                replicas > 1,
                "the replicated overlay runs {replicas} replica(s)"
            );
            check_cluster(&docs, workload);
        } else {
            assert_eq!(replicas, 1);
            let toml = config_toml(&docs);
            assert!(
                !toml.contains_key("cluster") && !toml.contains_key("shared"),
                "the single overlay runs no cluster"
            );
        }
        // The ServiceMonitor scrapes a port the admin Service has.
        let monitor = docs.iter().find(|d| d["kind"] == "ServiceMonitor").unwrap();
        let port = monitor["spec"]["endpoints"][0]["port"].as_str().unwrap();
        let selected = &monitor["spec"]["selector"]["matchLabels"];
        let scraped: Vec<&Value> = docs
            .iter()
            .filter(|d| {
                d["kind"] == "Service"
                    && selected
                        .as_object()
                        .unwrap()
                        .iter()
                        .all(|(k, v)| d["metadata"]["labels"][k.as_str()] == *v)
            })
            .collect();
        assert_eq!(scraped.len(), 1, "the ServiceMonitor selects one Service");
        assert!(
            scraped[0]["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == port),
            "the scraped Service has no port {port}"
        );
    }

    // The validator can fail: a StatefulSet whose replicas is a string.
    let broken = scratch.path().join("broken.yaml");
    let single = std::fs::read_to_string(scratch.path().join("single.yaml")).unwrap();
    std::fs::write(&broken, single.replacen("replicas: 1", "replicas: one", 1)).unwrap();
    let (ok, stdout, stderr) = run(&validate, &["--strict", broken.to_str().unwrap()], None);
    assert!(
        !ok,
        "kubernetes-validate accepted replicas: one\n{stdout}{stderr}"
    );
}

/// The regcache.toml of the rendered ConfigMap, parsed.
fn config_toml(docs: &[Value]) -> toml::Table {
    let config = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("regcache-config"))
        })
        .expect("a regcache-config ConfigMap");
    let text = config["data"]["regcache.toml"]
        .as_str()
        .expect("the ConfigMap has regcache.toml");
    text.parse()
        .unwrap_or_else(|e| panic!("the ConfigMap's regcache.toml: {e}\n{text}"))
}

/// Whether every `key: value` of `selector` is among `labels`, and there is one.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k.as_str()] == *v))
}

/// The replicated overlay runs the cluster: the pods dial each other on the
/// port named `cluster` (5002), found through the headless Service's DNS
/// name that `[cluster] peers_dns` names, advertise their own pod IP, get the
/// cluster secret and S3 keys from a generated Secret, and a NetworkPolicy
/// admits only regcache's pods to that port.
fn check_cluster(docs: &[Value], workload: &Value) {
    let pod_labels = &workload["spec"]["template"]["metadata"]["labels"];
    let namespace = workload["metadata"]["namespace"].as_str().unwrap();
    let container = &workload["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "cluster" && p["containerPort"] == 5002),
        "the container has no port cluster/5002: {}",
        container["ports"]
    );

    // Environment: POD_IP from the downward API, then the advertised
    // address built from it (a $(VAR) reference works only to an earlier
    // variable), then the secrets.
    let env = container["env"].as_array().unwrap();
    let position = |name: &str| {
        env.iter()
            .position(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name} in {env:?}"))
    };
    let pod_ip = position("POD_IP");
    assert_eq!(
        env[pod_ip]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let advertise = position("REGCACHE_CLUSTER_ADVERTISE");
    assert_eq!(env[advertise]["value"], "$(POD_IP):5002");
    assert!(pod_ip < advertise, "POD_IP must come before its use");
    for (key, optional) in [
        ("REGCACHE_CLUSTER_SECRET", false),
        ("AWS_ACCESS_KEY_ID", true),
        ("AWS_SECRET_ACCESS_KEY", true),
    ] {
        let reference = &env[position(key)]["valueFrom"]["secretKeyRef"];
        assert_eq!(reference["key"], key);
        assert_eq!(
            reference["optional"].as_bool().unwrap_or(false),
            optional,
            "{key}"
        );
        let secret = docs
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == reference["name"])
            .unwrap_or_else(|| panic!("{key}: no Secret {}", reference["name"]));
        assert!(
            secret["data"].get(key).is_some(),
            "Secret {} has no key {key} (placeholder in cluster.env)",
            reference["name"]
        );
    }

    // The headless Service selects the pods and exposes the cluster port.
    let peers = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None")
        .expect("a headless Service for the replicas to find each other");
    let peers_name = peers["metadata"]["name"].as_str().unwrap();
    assert_eq!(peers_name, "regcache-peers");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    assert!(
        selects(&peers["spec"]["selector"], pod_labels),
        "the headless Service's selector {} does not select the pods ({pod_labels})",
        peers["spec"]["selector"]
    );
    assert!(
        peers["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "cluster" && p["port"] == 5002 && p["targetPort"] == "cluster"),
        "regcache-peers has no port cluster/5002: {}",
        peers["spec"]["ports"]
    );

    // regcache.toml: [cluster] on 5002, members from that Service's DNS name,
    // the secret from the environment; [shared] names a bucket.
    let toml = config_toml(docs);
    let cluster = toml
        .get("cluster")
        .and_then(|c| c.as_table())
        .expect("the ConfigMap's regcache.toml has [cluster]");
    assert_eq!(cluster["listen"].as_str(), Some("0.0.0.0:5002"));
    assert_eq!(
        cluster["peers_dns"].as_str(),
        Some(format!("{peers_name}.{namespace}.svc.cluster.local:5002").as_str())
    );
    assert_eq!(
        cluster["secret_env"].as_str(),
        Some("REGCACHE_CLUSTER_SECRET")
    );
    let shared = toml
        .get("shared")
        .and_then(|s| s.as_table())
        .expect("the ConfigMap's regcache.toml has [shared]");
    assert!(shared["bucket"].as_str().is_some_and(|b| !b.is_empty()));

    // The NetworkPolicy: 5002 only from regcache's pods; 5000 and 5001 stay
    // reachable (a policy that selects the pods denies everything else).
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy for the cluster port");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        pod_labels
    ));
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let opens = |rule: &Value, port: u64| {
        rule["ports"]
            .as_array()
            .is_some_and(|ports| ports.iter().any(|p| p["port"] == port))
    };
    let cluster_rules: Vec<&Value> = rules.iter().filter(|r| opens(r, 5002)).collect();
    assert!(!cluster_rules.is_empty(), "no ingress rule opens 5002");
    for rule in cluster_rules {
        let from = rule["from"].as_array().expect("5002 open to every source");
        assert!(
            !from.is_empty()
                && from.iter().all(|f| {
                    f.get("ipBlock").is_none()
                        && f.get("namespaceSelector").is_none()
                        && selects(&f["podSelector"]["matchLabels"], pod_labels)
                }),
            "5002 admits more than regcache's pods: {rule}"
        );
    }
    for port in [5000, 5001] {
        assert!(
            rules
                .iter()
                .any(|r| opens(r, port) && r.get("from").is_none()),
            "the NetworkPolicy shuts port {port}"
        );
    }
}

/// Probes, the hardened security contexts, and a pinned image.
fn check_workload(overlay: &str, workload: &Value, version: &str) {
    let pod = &workload["spec"]["template"]["spec"];
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true, "{overlay}");
    assert_ne!(pod_security["runAsUser"], 0, "{overlay}");
    assert_eq!(
        pod_security["seccompProfile"]["type"], "RuntimeDefault",
        "{overlay}"
    );
    assert_eq!(pod["automountServiceAccountToken"], false, "{overlay}");
    for container in pod["containers"].as_array().unwrap() {
        let name = container["name"].as_str().unwrap();
        let image = container["image"].as_str().unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert_eq!(
            tag, version,
            "{overlay}/{name}: image {image} is not pinned to the workspace version"
        );
        let security = &container["securityContext"];
        assert_eq!(
            security["allowPrivilegeEscalation"], false,
            "{overlay}/{name}"
        );
        assert_eq!(security["readOnlyRootFilesystem"], true, "{overlay}/{name}");
        assert_eq!(security["runAsNonRoot"], true, "{overlay}/{name}");
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert!(
                container[probe]["httpGet"]["path"].is_string(),
                "{overlay}/{name} has no {probe}"
            );
        }
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    }
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let analyze = require_program("systemd-analyze", "systemd");
    let unit = deploy_dir().join("regcache.service");
    let (_, stdout, stderr) = run(
        &analyze,
        &["security", "--offline=true", unit.to_str().unwrap()],
        None,
    );
    let text = format!("{stdout}{stderr}");
    let overall = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for regcache.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    let score: f64 = overall.split_whitespace().next().unwrap().parse().unwrap();
    println!("systemd-analyze security deploy/regcache.service: {overall}");
    assert!(score <= 2.5, "exposure {score} > 2.5:\n{text}");

    // `verify` checks the unit's syntax and that its commands exist: point
    // them at the binary the tests built.
    let bin = regcache_tests::regcache_bin();
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("regcache.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("/usr/local/bin/regcache serve"));
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/regcache", bin.to_str().unwrap()),
    )
    .unwrap();
    let (ok, stdout, stderr) = run(&analyze, &["verify", copy.to_str().unwrap()], None);
    assert!(
        ok && stderr.trim().is_empty(),
        "systemd-analyze verify: {stdout}{stderr}"
    );
}

#[test]
fn dockerfile_lints_clean_and_ships_a_stripped_non_root_binary() {
    let hadolint = require_venv_program("hadolint");
    let dockerfile = deploy_dir().join("Dockerfile");
    let (ok, stdout, stderr) = run(
        &hadolint,
        &[
            "--no-color",
            "--failure-threshold",
            "info",
            dockerfile.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok && stdout.trim().is_empty(), "hadolint: {stdout}{stderr}");

    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "not a multi-stage build");
    assert!(
        text.contains("--profile dist --locked"),
        "the image is not built with the dist profile"
    );
    let final_stage = text.rsplit("\nFROM ").next().unwrap();
    let user = final_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the final stage sets USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0, "the image runs as root");
    // Every COPY source of the build stage exists in the repository.
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(
                workspace_root().join(source).exists(),
                "COPY {source}: no such path"
            );
        }
    }

    let manifest: toml::Table = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let dist = &manifest["profile"]["dist"];
    assert_eq!(
        dist["strip"].as_str(),
        Some("symbols"),
        "the dist profile strips"
    );
    assert_eq!(dist["debug"].as_integer(), Some(0));

    let ignore = std::fs::read_to_string(workspace_root().join(".dockerignore"))
        .expect("a .dockerignore at the repository root");
    let lines: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        lines.first(),
        Some(&"*"),
        "the build context is an allow list"
    );
    for kept_out in ["target", ".git", "regcache-data", "fuzz"] {
        assert!(
            !lines.iter().any(
                |l| l.trim_start_matches('!').trim_end_matches('/') == kept_out
                    && l.starts_with('!')
            ),
            "{kept_out} is let into the build context"
        );
    }
    assert!(lines.contains(&"**/target"));
}

#[tokio::test]
async fn shipped_configurations_pass_regcache_check() {
    let files = [
        deploy_dir().join("regcache.toml"),
        deploy_dir().join("multi-registry.toml"),
        deploy_dir().join("kubernetes/base/regcache.toml"),
    ];
    // The replicated overlay's file as its pods read it: the secret and the
    // advertised address come from the environment (the Secret and POD_IP).
    let replicated = deploy_dir().join("kubernetes/overlays/replicated/regcache.toml");
    let pod_env = [
        (
            "REGCACHE_CLUSTER_SECRET",
            "0123456789abcdef0123456789abcdef",
        ),
        ("REGCACHE_CLUSTER_ADVERTISE", "10.0.0.5:5002"),
    ];
    let (code, stdout, stderr) = regcache_tests::regcache::run_regcache(
        &["check", "--config", replicated.to_str().unwrap()],
        &pod_env,
    )
    .await;
    println!(
        "regcache check --config {} (pod env): {code:?}\n{stdout}{stderr}",
        replicated.display()
    );
    assert_eq!(code, Some(0), "{}: {stdout}{stderr}", replicated.display());
    assert!(
        stdout.contains("cluster") && stdout.contains("shared tier"),
        "check names the cluster and the shared tier: {stdout}"
    );
    // Without the pod's environment it is refused: no secret, and 0.0.0.0
    // can't be advertised.
    let (code, _, stderr) = regcache_tests::regcache::run_regcache(
        &["check", "--config", replicated.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    for file in &files {
        let (code, stdout, stderr) = regcache_tests::regcache::run_regcache(
            &["check", "--config", file.to_str().unwrap()],
            &[],
        )
        .await;
        println!(
            "regcache check --config {}: {code:?}\n{stdout}{stderr}",
            file.display()
        );
        assert_eq!(code, Some(0), "{}: {stdout}{stderr}", file.display());
    }
}

#[test]
fn client_configurations_load() {
    // podman parses registries.conf and sees both mirrors.
    let podman = require_program("podman", "podman");
    let conf = deploy_dir().join("podman/registries.conf");
    let out = Command::new(&podman)
        .args(["info", "--format", "{{json .Registries}}"])
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podman info with {}: {stdout}{}",
        conf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let registries: Value = serde_json::from_str(stdout.trim()).unwrap();
    for registry in ["docker.io", "quay.io"] {
        let mirror = registries[registry]["Mirrors"][0]["Location"]
            .as_str()
            .unwrap();
        assert_eq!(mirror, format!("regcache.internal:5000/{registry}"));
    }

    // containerd: one hosts.toml per registry, each with regcache as a pull
    // and resolve host.
    let certs = deploy_dir().join("containerd/certs.d");
    for file in files_under(&certs) {
        let table: toml::Table = std::fs::read_to_string(&file)
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(table["server"].as_str().unwrap().starts_with("https://"));
        let hosts = table["host"].as_table().unwrap();
        let mirror = &hosts["http://regcache.internal:5000"];
        let capabilities: Vec<&str> = mirror["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        assert_eq!(capabilities, ["pull", "resolve"], "{}", file.display());
    }

    // Docker: daemon.json names regcache as its mirror and lets it be plain
    // HTTP only as an insecure registry.
    let daemon: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("docker/daemon.json")).unwrap(),
    )
    .unwrap();
    let mirrors = daemon["registry-mirrors"].as_array().unwrap();
    assert_eq!(mirrors.len(), 1);
    let mirror = url::Url::parse(mirrors[0].as_str().unwrap()).unwrap();
    let host_port = format!("{}:{}", mirror.host_str().unwrap(), mirror.port().unwrap());
    if mirror.scheme() == "http" {
        assert!(
            daemon["insecure-registries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == host_port.as_str())
        );
    }
}
