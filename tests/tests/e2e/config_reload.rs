//! Configuration reload (issue 14): SIGHUP and `POST /reload` re-read the
//! file; a good one swaps policies and upstream credentials in the running
//! process, a broken one is refused whole with every problem listed while
//! the old configuration keeps serving.

use std::time::{Duration, Instant};

use regcache_tests::image::media;
use regcache_tests::{
    Fetched, ManifestFormat, Platform, Regcache, RegcacheOptions, RegistryClient,
};
use serde_json::Value;

use crate::support::{Mode, Upstream, get_manifest, small_image};

/// `POST /reload` on the admin listener: status and JSON body.
async fn post_reload(regcache: &Regcache) -> (u16, Value) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/reload", regcache.admin_url()))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

/// Polls `fetch` until `done` holds (deadline 30 s); the last answer.
async fn poll<F, Fut>(
    what: &str,
    regcache: &Regcache,
    fetch: F,
    done: impl Fn(&Fetched) -> bool,
) -> Fetched
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Fetched>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = fetch().await;
        if done(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} {} after 30 s; log:\n{}",
            got.status,
            got.text(),
            regcache.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sighup_swaps_policies_and_a_broken_file_is_refused_with_every_problem() {
    let upstream = Upstream::start(Mode::Plain);
    let image = small_image(0x7e1, Platform::linux_amd64());
    upstream
        .client(&["legacy/app"])
        .push_image("legacy/app", "1", &image, ManifestFormat::Docker)
        .await;
    let policy = "[[policy]]\nrepositories = [\"legacy/**\"]\nschema1 = \"reject\"\n";
    let regcache =
        Regcache::start(RegcacheOptions::new(upstream.registry.url()).extra_toml(policy));
    let client = RegistryClient::new(regcache.url());
    let old_client = || get_manifest(&client, "legacy/app", "1", &[media::SCHEMA1_SIGNED]);

    let before = old_client().await;
    assert_eq!(before.status, 404, "schema1 = reject: {}", before.text());
    assert!(before.text().contains("UNSUPPORTED"), "{}", before.text());

    // Rewrite the file, SIGHUP: the old client gets Schema 1 from now on.
    let config = std::fs::read_to_string(regcache.config_path()).unwrap();
    let converted = config.replace("schema1 = \"reject\"", "schema1 = \"convert\"");
    assert_ne!(config, converted);
    std::fs::write(regcache.config_path(), &converted).unwrap();
    regcache.signal("HUP");
    let after = poll(
        "schema1 = convert after SIGHUP",
        &regcache,
        old_client,
        |f| f.status == 200,
    )
    .await;
    assert_eq!(
        after.content_type(),
        Some(media::SCHEMA1_SIGNED),
        "{}",
        after.text()
    );
    let m = regcache
        .metrics_when(|m| m.get("regcache_config_reloads_total", &[("result", "ok")]) == Some(1.0))
        .await;
    assert!(
        m.get("regcache_config_last_reload_success_timestamp_seconds", &[])
            .is_some_and(|t| t > 1.7e9),
        "timestamp gauge"
    );
    assert!(
        regcache.log().contains("configuration reloaded"),
        "{}",
        regcache.log()
    );

    // A broken file: 422 with every problem, nothing changes.
    let broken = format!("{converted}\ncolour = \"red\"\n[limits]\nmax_connections = \"many\"\n")
        .replace(
            "schema1 = \"convert\"",
            "schema1 = \"reject\"\nschema1_digests = \"sometimes\"",
        )
        .replace("[cache]", "[cache]\nmemory_size = \"lots\"");
    std::fs::write(regcache.config_path(), &broken).unwrap();
    let (status, body) = post_reload(&regcache).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reloaded"], false, "{body}");
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "colour",
        "max_connections",
        "schema1_digests",
        "memory_size",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{want} missing from {problems:#?}"
        );
    }
    // The old configuration (convert) is still in force, the process serves.
    let still = old_client().await;
    assert_eq!(still.status, 200, "still convert: {}", still.text());
    regcache
        .metrics_when(|m| {
            m.get("regcache_config_reloads_total", &[("result", "error")]) == Some(1.0)
        })
        .await;
    assert!(
        regcache.log().contains("configuration reload failed"),
        "logged at error:\n{}",
        regcache.log()
    );

    // A restart-only change is reported, the rest applied.
    let restart = converted
        .replace("schema1 = \"convert\"", "schema1 = \"reject\"")
        .replace("[cache]", "[cache]\nmemory_size = \"64MiB\"");
    std::fs::write(regcache.config_path(), &restart).unwrap();
    let (status, body) = post_reload(&regcache).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["needs_restart"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap_or_default()
            .starts_with("cache.memory_size")),
        "{body}"
    );
    assert_eq!(old_client().await.status, 404, "reject applied");
}

#[tokio::test]
async fn a_new_upstream_password_takes_effect_on_reload() {
    let upstream = Upstream::start(Mode::Htpasswd);
    let creds = upstream.creds.clone().unwrap();
    let image = small_image(0x7e2, Platform::linux_amd64());
    upstream
        .client(&["team/app"])
        .push_image("team/app", "1", &image, ManifestFormat::Docker)
        .await;
    let work = tempfile::tempdir().unwrap();
    let password_file = work.path().join("password");
    std::fs::write(&password_file, "not-the-password\n").unwrap();
    let upstreams = format!(
        "[upstream]\nurl = {:?}\nusername = {:?}\npassword_file = {:?}\n",
        upstream.registry.url(),
        creds.username,
        password_file.to_string_lossy()
    );
    let regcache = Regcache::start(RegcacheOptions::with_upstreams_toml(upstreams));
    let client = RegistryClient::new(regcache.url());
    let pull = || get_manifest(&client, "team/app", "1", &[media::DOCKER_MANIFEST]);

    let refused = pull().await;
    assert_ne!(
        refused.status,
        200,
        "a wrong password pulls nothing: {}",
        refused.text()
    );

    std::fs::write(&password_file, format!("{}\n", creds.password)).unwrap();
    let (status, body) = post_reload(&regcache).await;
    assert_eq!(status, 200, "{body}");
    let applied = body["applied"].to_string();
    assert!(applied.contains("credentials"), "{body}");
    assert!(
        !body.to_string().contains(&creds.password),
        "no password in {body}"
    );
    let pulled = poll("pull after the new password", &regcache, pull, |f| {
        f.status == 200
    })
    .await;
    assert_eq!(pulled.content_type(), Some(media::DOCKER_MANIFEST));
    assert!(
        !regcache.log().contains(&creds.password),
        "the password never reaches the log"
    );
}
