//! The command line and configuration as an operator meets them (issue 14):
//!
//! * `--upstream URL --upstream-name docker.io`: containerd with a
//!   `hosts.toml` mirror for `docker.io` sends `?ns=docker.io`, which only
//!   routes when the upstream is named so; without the flag the same pull
//!   gets regcache's 403 naming the configured upstream.
//! * `regcache check`: every problem at once (exit 78) or a one-line summary
//!   (exit 0), for the shipped examples too.
//! * `regcache serve --help` lists the environment variables.
//! * A listen address in use: exit 69 before anything is written to the
//!   data dir. `mappings export` without a cache: exit 66, no header.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regcache_tests::clients::Containerd;
use regcache_tests::regcache::{http_status, run_regcache};
use regcache_tests::{ManifestFormat, Platform, Registry, RegistryClient, RegistryOptions};
use regcache_tests::{free_addr, regcache_bin};

use crate::support::small_image;

/// `regcache serve` started from flags alone (no config file), killed on drop.
struct Bare {
    child: Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bare {
    fn start(extra: &[&str]) -> Bare {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("regcache.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (addr, admin) = regcache_tests::ports::free_addr_pair();
            let file = std::fs::File::create(&log).unwrap();
            let mut child = Command::new(regcache_bin())
                .arg("serve")
                .args(["--listen", &addr.to_string()])
                .args(["--admin-listen", &admin.to_string()])
                .args(["--data-dir", &dir.path().join("data").to_string_lossy()])
                .args(extra)
                .env("REGCACHE_LOG", "info,regcache_server=debug")
                .env("REGCACHE_LOG_FORMAT", "text")
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            loop {
                if http_status(admin, "/readyz") == Some(200) {
                    return Bare {
                        child,
                        addr,
                        log,
                        _dir: dir,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    // A port taken between choosing and binding: try others.
                    assert!(
                        status.code() == Some(69) && Instant::now() < deadline,
                        "regcache serve exited ({status}); log:\n{text}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "regcache serve not ready in 30 s; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DIR/docker.io/hosts.toml`: a dead primary, regcache as the mirror.
fn hosts_dir(root: &Path, mirror: std::net::SocketAddr) -> PathBuf {
    let dir = root.join("certs.d");
    std::fs::create_dir_all(dir.join("docker.io")).unwrap();
    std::fs::write(
        dir.join("docker.io").join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:9\"\n\n\
             [host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn upstream_name_flag_makes_containerd_ns_docker_io_route() {
    let containerd = std::thread::spawn(Containerd::start);
    let registry = Registry::start(RegistryOptions::default());
    let image = small_image(0x14a, Platform::linux_amd64());
    let manifest = RegistryClient::new(registry.url())
        .push_image("library/named", "1", &image, ManifestFormat::Docker)
        .await;
    let containerd = containerd
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let work = tempfile::tempdir().unwrap();
    let upstream = registry.url();

    // Named docker.io: containerd's ?ns=docker.io routes, the pull works.
    let named = Bare::start(&["--upstream", &upstream, "--upstream-name", "docker.io"]);
    assert!(
        named
            .log()
            .lines()
            .any(|l| l.contains("regcache serving") && l.contains("upstream_name=docker.io")),
        "the start-up line names the upstream:\n{}",
        named.log()
    );
    let hosts = hosts_dir(work.path(), named.addr);
    let hosts_arg = hosts.to_string_lossy().into_owned();
    let out = containerd
        .ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            &hosts_arg,
            "docker.io/library/named:1",
        ])
        .await;
    assert!(
        out.success(),
        "ctr pull through regcache --upstream-name docker.io: {out}\nregcache log:\n{}",
        named.log()
    );
    let list = containerd.ctr(&["images", "ls"]).await;
    assert!(
        list.stdout.contains(&manifest),
        "containerd has {manifest}: {list}"
    );
    assert!(
        named.log().contains("routed by ns"),
        "regcache routed by ns=:\n{}",
        named.log()
    );
    drop(named);

    // Named after the URL's host: the same pull is refused with the 403
    // that names the configured upstream.
    containerd
        .ctr(&["images", "rm", "docker.io/library/named:1"])
        .await;
    containerd.ctr(&["content", "prune", "references"]).await;
    let unnamed = Bare::start(&["--upstream", &upstream]);
    let hosts = hosts_dir(&work.path().join("second"), unnamed.addr);
    let hosts_arg = hosts.to_string_lossy().into_owned();
    let out = containerd
        .ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            &hosts_arg,
            "docker.io/library/named:1",
        ])
        .await;
    assert!(
        !out.success(),
        "without --upstream-name the pull must fail: {out}"
    );
    let host = upstream.trim_start_matches("http://").trim_end_matches('/');
    let direct = RegistryClient::new(format!("http://{}", unnamed.addr))
        .request(
            reqwest::Method::GET,
            "/v2/library/named/manifests/1?ns=docker.io",
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(direct.status, 403, "{}", direct.text());
    assert!(
        direct.text().contains("no upstream for registry")
            && direct.text().contains("docker.io")
            && direct.text().contains(host),
        "the 403 names the registry and the configured upstream: {}",
        direct.text()
    );
}

/// Writes `text` to `DIR/name` and returns the path as a string.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn check_reports_every_problem_at_once_or_one_summary_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        "listen = 5\n\
         colour = \"blue\"\n\
         [cache]\n\
         disk_size = \"12 parsecs\"\n\
         [upstream]\n\
         url = \"http://127.0.0.1:9\"\n\
         tag_ttl_secs = \"1m\"\n\
         password_file = \"/nonexistent/password\"\n\
         username = \"robot\"\n\
         [[policy]]\n\
         repositories = [\"a/*\"]\n\
         upstreams = [\"ghcr.io\"]\n\
         schema1 = \"reject\"\n",
    );
    let (code, stdout, stderr) = run_regcache(&["check", "--config", &bad], &[]).await;
    assert_eq!(code, Some(78), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for want in [
        "bad.toml:1:10: key `listen`",
        "unknown key `colour`",
        "bad.toml:4:13: key `disk_size` in [cache]: \"12 parsecs\" is not a size",
        "bad.toml:7:16: key `tag_ttl_secs` in [upstream]",
        "password_file /nonexistent/password: cannot read",
        "upstreams names \"ghcr.io\", which is no configured upstream",
    ] {
        assert!(stderr.contains(want), "{want:?} missing from:\n{stderr}");
    }
    assert!(stdout.is_empty(), "{stdout}");

    let good = write(
        dir.path(),
        "good.toml",
        "[upstream]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\n\
         [[policy]]\nrepositories = [\"legacy/**\"]\nschema1 = \"reject\"\n",
    );
    let (code, stdout, stderr) = run_regcache(
        &["check", "--config", &good, "--listen", "127.0.0.1:7000"],
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stdout,
        "configuration ok: 1 upstream(s): docker.io (http://127.0.0.1:9/, default); 1 policy rule(s); 0 access rule(s); listen 127.0.0.1:7000 (http), admin 127.0.0.1:5001\n"
    );

    // The shipped examples pass as shipped.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for example in ["deploy/regcache.toml", "deploy/multi-registry.toml"] {
        let path = root.join(example).to_string_lossy().into_owned();
        let (code, stdout, stderr) = run_regcache(&["check", "--config", &path], &[]).await;
        assert_eq!(code, Some(0), "{example}: {stdout}{stderr}");
        assert!(
            stdout.starts_with("configuration ok: "),
            "{example}: {stdout}"
        );
    }
}

#[tokio::test]
async fn serve_help_lists_every_environment_variable() {
    let (code, stdout, stderr) = run_regcache(&["serve", "--help"], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    for var in [
        "[env: REGCACHE_CONFIG=]",
        "[env: REGCACHE_LISTEN=]",
        "[env: REGCACHE_ADMIN_LISTEN=]",
        "[env: REGCACHE_UPSTREAM=]",
        "[env: REGCACHE_UPSTREAM_NAME=]",
        "[env: REGCACHE_UPSTREAM_USERNAME=]",
        "[env: REGCACHE_DATA_DIR=]",
        "[env: REGCACHE_TLS_CERT_FILE=]",
        "[env: REGCACHE_TLS_KEY_FILE=]",
        "[env: REGCACHE_LOG_FORMAT=]",
        "[env: REGCACHE_LOG=]",
        "[env: REGCACHE_MEMORY_SIZE=]",
        "[env: REGCACHE_DISK_SIZE=]",
        "[env: REGCACHE_AUTH_MODE=]",
        "[env: REGCACHE_AUTH_HTPASSWD_FILE=]",
        "REGCACHE_UPSTREAM_PASSWORD",
        "REGCACHE_ADMIN_TOKEN",
    ] {
        assert!(
            stdout.contains(var),
            "{var} missing from serve --help:\n{stdout}"
        );
    }
    // A secret's value never shows, even when set.
    let (_, stdout, _) = run_regcache(
        &["serve", "--help"],
        &[("REGCACHE_UPSTREAM_PASSWORD", "hunter2-secret")],
    )
    .await;
    assert!(!stdout.contains("hunter2-secret"), "{stdout}");
}

#[tokio::test]
async fn a_listen_address_in_use_exits_69_before_writing_the_data_dir() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let admin = free_addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_string_lossy().into_owned();
    let (code, stdout, stderr) = run_regcache(
        &[
            "serve",
            "--listen",
            &taken_addr,
            "--admin-listen",
            &admin,
            "--data-dir",
            &data_arg,
            "--upstream",
            "http://127.0.0.1:9",
        ],
        &[("REGCACHE_LOG", "info")],
    )
    .await;
    assert_eq!(code, Some(69), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {taken_addr}")),
        "the message names the address:\n{stderr}"
    );
    assert!(
        !data.exists(),
        "nothing written to the data dir before binding: {:?}",
        std::fs::read_dir(&data).map(|d| d.count())
    );
}

#[tokio::test]
async fn mappings_export_without_a_cache_exits_66_without_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let missing_arg = missing.to_string_lossy().into_owned();
    let (code, stdout, stderr) =
        run_regcache(&["mappings", "export", "--data-dir", &missing_arg], &[]).await;
    assert_eq!(code, Some(66), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.is_empty(), "no header without a cache: {stdout:?}");
    assert!(
        stderr.contains("no cache at") && stderr.contains(&missing_arg),
        "{stderr}"
    );
}
