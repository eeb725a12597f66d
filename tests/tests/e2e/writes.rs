//! Writes and the catalog through regcache, against a real htpasswd-protected
//! docker-registry 2.8 for which regcache holds credentials (issue 11):
//!
//! - by default regcache is read-only: an anonymous `skopeo copy` push, a raw
//!   upload start, a cross-repository mount, a manifest PUT and a manifest
//!   DELETE all get 405 `UNSUPPORTED` naming the key that turns writes on;
//!   `_catalog` gets 403 `DENIED`; the upstream's catalog and tags (read
//!   directly, with credentials) are unchanged and it saw no write at all;
//! - with `writes = "client-credentials"`, `skopeo copy --dest-creds` lands
//!   upstream (same digest upstream, through regcache and in skopeo's digest
//!   file), and without credentials fails with the upstream's own 401 and
//!   `Basic` challenge: regcache's stored credentials are never used to write;
//!   `catalog = "client-credentials"` lists what the client's credentials see
//!   (401 without), `"stored-credentials"` lists for anyone;
//! - the same against a token-auth registry: the client gets the upstream's
//!   `Bearer` challenge through regcache, fetches its own push token from the
//!   token service and regcache forwards it; regcache asks for no push token;
//!
//! A client's broken body and an oversize declared manifest are in
//! `client_bodies`.

use regcache_tests::image::{config, default_history, media};
use regcache_tests::registry::Credentials;
use regcache_tests::{
    Fetched, Image, ImageGen, ManifestFormat, OciLayout, Platform, Regcache, RegcacheOptions,
    Registry, RegistryClient, RegistryOptions, Skopeo, TokenServer, TokenServerOptions,
};
use serde_json::Value;

fn small_image(seed: u64) -> Image {
    let mut g = ImageGen::new(seed);
    let platform = Platform::linux_amd64();
    let layers = g.layers(2);
    let cfg = config(&platform, &layers, &default_history(2), Value::Null);
    Image::new(&cfg, layers, platform)
}

/// An htpasswd-protected registry (deletes enabled) holding `private/app:v1`,
/// and its credentials.
struct Private {
    registry: Registry,
    creds: Credentials,
    direct: RegistryClient,
    app_digest: String,
}

impl Private {
    async fn start() -> Private {
        let creds = Credentials::new("robot", "robot-secret");
        let registry = Registry::start(RegistryOptions {
            htpasswd: Some(creds.clone()),
            delete_enabled: true,
            ..RegistryOptions::default()
        });
        let direct = RegistryClient::new(registry.url()).with_basic_auth(creds.clone());
        let app_digest = direct
            .push_image(
                "private/app",
                "v1",
                &small_image(1101),
                ManifestFormat::Docker,
            )
            .await;
        Private {
            registry,
            creds,
            direct,
            app_digest,
        }
    }

    /// regcache in front of it, with the upstream credentials, `writes` as given.
    fn regcache(&self, writes: Option<&str>) -> Regcache {
        let mut options = RegcacheOptions::new(self.registry.url())
            .credentials(Some(self.creds.clone()))
            .retry_attempts(1);
        if let Some(mode) = writes {
            options = options.writes(mode);
        }
        Regcache::start(options)
    }

    /// `(catalog, tags of private/app)` as the upstream itself says.
    async fn state(&self) -> (Value, Value) {
        let json = async |path: &str| {
            let got = get(&self.direct, reqwest::Method::GET, path, &[]).await;
            assert_eq!(got.status, 200, "direct GET {path}: {}", got.text());
            serde_json::from_slice::<Value>(&got.body).unwrap()
        };
        (
            json("/v2/_catalog").await,
            json("/v2/private/app/tags/list").await,
        )
    }

    /// Write requests the registry saw from regcache (its user agent).
    fn writes_from_regcache(&self) -> Vec<String> {
        self.registry
            .access_entries()
            .into_iter()
            .filter(|e| e.user_agent.starts_with("regcache/"))
            .filter(|e| matches!(e.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE"))
            .map(|e| format!("{} {} {}", e.method, e.path, e.status))
            .collect()
    }
}

async fn get(
    client: &RegistryClient,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Fetched {
    client
        .request(method.clone(), path, headers, None)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// An OCI layout with one image under `app`.
fn layout(seed: u64) -> (tempfile::TempDir, String) {
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&work.path().join("layout"));
    layout.add_image("app", &small_image(seed));
    let reference = layout.reference("app");
    (work, reference)
}

/// `skopeo copy` of `src` to `dst`, with `--dest-creds` or `--dest-no-creds`,
/// writing the pushed manifest's digest to `digest_file`.
async fn skopeo_push(
    src: &str,
    dst: &str,
    creds: Option<&Credentials>,
    digest_file: &std::path::Path,
) -> Result<(), regcache_tests::skopeo::SkopeoError> {
    let mut args: Vec<String> = vec![
        "--insecure-policy".into(),
        "copy".into(),
        "--dest-tls-verify=false".into(),
        "--digestfile".into(),
        digest_file.display().to_string(),
    ];
    match creds {
        Some(c) => {
            args.push("--dest-creds".into());
            args.push(format!("{}:{}", c.username, c.password));
        }
        None => args.push("--dest-no-creds".into()),
    }
    args.push(src.into());
    args.push(dst.into());
    Skopeo::new().run(args).await.map(drop)
}

fn assert_read_only(answer: &Fetched, context: &str) {
    assert_eq!(answer.status, 405, "{context}: {}", answer.text());
    assert_eq!(
        answer.error_code().as_deref(),
        Some("UNSUPPORTED"),
        "{context}: {}",
        answer.text()
    );
    let text = answer.text();
    assert!(
        text.contains("writes = \\\"client-credentials\\\"") && text.contains("e2e-upstream"),
        "{context}: the message says how to enable writes: {text}"
    );
}

#[tokio::test]
async fn a_default_regcache_is_read_only_and_lists_no_catalog() {
    let private = Private::start().await;
    let regcache = private.regcache(None);
    let before = private.state().await;
    let anonymous = RegistryClient::new(regcache.url());

    // Reads still work, with regcache's stored credentials.
    let pulled = get(
        &anonymous,
        reqwest::Method::GET,
        "/v2/private/app/manifests/v1",
        &[("accept", media::DOCKER_MANIFEST)],
    )
    .await;
    assert_eq!(pulled.status, 200, "{}", pulled.text());
    assert_eq!(pulled.digest(), Some(private.app_digest.as_str()));

    // An anonymous skopeo push fails, with regcache's explanation.
    let (_work, src) = layout(1102);
    let digest_file = regcache.work_dir().join("anon.digest");
    let err = skopeo_push(
        &src,
        &format!("docker://{}/private/pushed-anon:v1", regcache.host()),
        None,
        &digest_file,
    )
    .await
    .expect_err("an anonymous push through a default regcache must fail");
    assert!(
        err.stderr.contains("read-only cache")
            || err.stderr.contains("UNSUPPORTED")
            || err.stderr.contains("405"),
        "{err}"
    );

    // Raw writes: upload start, mount, manifest PUT, manifest and blob DELETE.
    let config_digest = small_image(1101).config_digest();
    for (method, path) in [
        (
            reqwest::Method::POST,
            "/v2/private/app/blobs/uploads/".to_owned(),
        ),
        (
            reqwest::Method::POST,
            format!("/v2/private/other/blobs/uploads/?mount={config_digest}&from=private/app"),
        ),
        (
            reqwest::Method::PATCH,
            "/v2/private/app/blobs/uploads/0d4b5fd6-0000-4000-8000-000000000000".to_owned(),
        ),
        (
            reqwest::Method::PUT,
            "/v2/private/app/manifests/v2".to_owned(),
        ),
        (
            reqwest::Method::DELETE,
            format!("/v2/private/app/manifests/{}", private.app_digest),
        ),
        (
            reqwest::Method::DELETE,
            format!("/v2/private/app/blobs/{config_digest}"),
        ),
    ] {
        let answer = get(&anonymous, method.clone(), &path, &[]).await;
        assert_read_only(&answer, &format!("{method} {path}"));
        // A client's own credentials change nothing while writes are off.
        let authed = RegistryClient::new(regcache.url()).with_basic_auth(private.creds.clone());
        let answer = get(&authed, method.clone(), &path, &[]).await;
        assert_read_only(&answer, &format!("{method} {path} with credentials"));
    }

    // The catalog would list every private repository: refused.
    let catalog = get(&anonymous, reqwest::Method::GET, "/v2/_catalog", &[]).await;
    assert_eq!(catalog.status, 403, "{}", catalog.text());
    assert_eq!(catalog.error_code().as_deref(), Some("DENIED"));
    assert!(
        catalog
            .text()
            .contains("catalog = \\\"client-credentials\\\""),
        "{}",
        catalog.text()
    );
    assert!(
        !catalog.text().contains("private/app"),
        "{}",
        catalog.text()
    );

    // The upstream is untouched, and saw no write from regcache at all.
    assert_eq!(private.state().await, before);
    let still = get(
        &private.direct,
        reqwest::Method::HEAD,
        &format!("/v2/private/app/manifests/{}", private.app_digest),
        &[("accept", media::DOCKER_MANIFEST)],
    )
    .await;
    assert_eq!(still.status, 200, "the image is still there");
    assert_eq!(private.writes_from_regcache(), Vec::<String>::new());
    let log = regcache.log();
    assert!(!log.contains("robot-secret"), "a secret reached the log");
}

#[tokio::test]
async fn client_credential_writes_land_upstream_and_anonymous_ones_get_the_upstreams_401() {
    let private = Private::start().await;
    let regcache = private.regcache(Some("client-credentials"));
    let (_work, src) = layout(1103);

    // With the client's own credentials the push lands upstream.
    let digest_file = regcache.work_dir().join("pushed.digest");
    skopeo_push(
        &src,
        &format!("docker://{}/private/pushed:v1", regcache.host()),
        Some(&private.creds),
        &digest_file,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nregcache log:\n{}", regcache.log()));
    let pushed = std::fs::read_to_string(&digest_file).unwrap();
    let upstream = get(
        &private.direct,
        reqwest::Method::GET,
        "/v2/private/pushed/manifests/v1",
        &[
            ("accept", media::OCI_MANIFEST),
            ("accept", media::DOCKER_MANIFEST),
        ],
    )
    .await;
    assert_eq!(upstream.status, 200, "{}", upstream.text());
    assert_eq!(upstream.digest(), Some(pushed.trim()), "upstream vs skopeo");
    assert_eq!(regcache_tests::sha256_digest(&upstream.body), pushed.trim());
    let through = get(
        &RegistryClient::new(regcache.url()),
        reqwest::Method::GET,
        "/v2/private/pushed/manifests/v1",
        &[
            ("accept", media::OCI_MANIFEST),
            ("accept", media::DOCKER_MANIFEST),
        ],
    )
    .await;
    assert_eq!(through.digest(), Some(pushed.trim()), "through regcache");
    assert_eq!(through.body, upstream.body);

    // Without credentials: the upstream's own 401 and challenge, and skopeo
    // fails; regcache's stored credentials are never used for a write.
    let before = private.state().await;
    let writes_before = private.writes_from_regcache().len();
    let anon_file = regcache.work_dir().join("anon.digest");
    let err = skopeo_push(
        &src,
        &format!("docker://{}/private/pushed-anon:v1", regcache.host()),
        None,
        &anon_file,
    )
    .await
    .expect_err("an anonymous push must fail");
    assert!(
        err.stderr.contains("authentication required")
            || err.stderr.contains("401")
            || err.stderr.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    let anonymous = RegistryClient::new(regcache.url());
    for (method, path) in [
        (reqwest::Method::GET, "/v2/".to_owned()),
        (
            reqwest::Method::POST,
            "/v2/private/app/blobs/uploads/".to_owned(),
        ),
        (
            reqwest::Method::DELETE,
            format!("/v2/private/app/manifests/{}", private.app_digest),
        ),
    ] {
        let answer = get(&anonymous, method.clone(), &path, &[]).await;
        assert_eq!(answer.status, 401, "{method} {path}: {}", answer.text());
        assert_eq!(
            answer.header("www-authenticate"),
            Some("Basic realm=\"regcache-tests\""),
            "{method} {path}: the upstream's challenge, unchanged"
        );
        assert_eq!(answer.error_code().as_deref(), Some("UNAUTHORIZED"));
    }
    let wrong = RegistryClient::new(regcache.url())
        .with_basic_auth(Credentials::new("robot", "not-the-password"));
    let answer = get(
        &wrong,
        reqwest::Method::POST,
        "/v2/private/app/blobs/uploads/",
        &[],
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert_eq!(private.state().await, before, "nothing landed");
    let refused: Vec<String> = private.writes_from_regcache()[writes_before..]
        .iter()
        .filter(|w| !w.ends_with(" 401"))
        .cloned()
        .collect();
    assert_eq!(
        refused,
        Vec::<String>::new(),
        "every anonymous write got 401"
    );

    // The catalog has its own key, still off.
    let catalog = get(&anonymous, reqwest::Method::GET, "/v2/_catalog", &[]).await;
    assert_eq!(catalog.status, 403, "{}", catalog.text());

    // catalog = "client-credentials": the upstream lists what the client's
    // own credentials may see; "stored-credentials": regcache's, for anyone.
    for (mode, anonymous_status) in [("client-credentials", 401), ("stored-credentials", 200)] {
        let listing = Regcache::start(
            RegcacheOptions::new(private.registry.url())
                .credentials(Some(private.creds.clone()))
                .catalog(mode),
        );
        let anonymous = RegistryClient::new(listing.url());
        let got = get(&anonymous, reqwest::Method::GET, "/v2/_catalog", &[]).await;
        assert_eq!(got.status, anonymous_status, "{mode}: {}", got.text());
        let authed = RegistryClient::new(listing.url()).with_basic_auth(private.creds.clone());
        let got = get(&authed, reqwest::Method::GET, "/v2/_catalog", &[]).await;
        assert_eq!(got.status, 200, "{mode}: {}", got.text());
        let repositories: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(repositories, before.0, "{mode}: the upstream's own catalog");
    }
}

/// Whether a scope (`repository:NAME:ACTIONS`) asks for `push`.
fn asks_push(scope: &str) -> bool {
    scope
        .rsplit(':')
        .next()
        .is_some_and(|actions| actions.split(',').any(|a| a == "push" || a == "*"))
}

#[tokio::test]
async fn client_credential_writes_carry_the_clients_own_bearer_token() {
    let alice = Credentials::new("alice", "alice-secret");
    let robot = Credentials::new("robot", "robot-secret");
    let mut options = TokenServerOptions::with_user(alice.clone());
    options.users.push(robot.clone());
    let tokens = TokenServer::start(options);
    let registry = Registry::start(RegistryOptions {
        token_auth: Some(tokens.registry_auth()),
        ..RegistryOptions::default()
    });
    let mut options = RegcacheOptions::new(registry.url())
        .credentials(Some(robot.clone()))
        .writes("client-credentials")
        .retry_attempts(1);
    // Reads (the blob HEADs of a push) go with the robot's credentials,
    // which its token server (another origin) gets only when listed.
    options.auth_realms = vec![tokens.authority()];
    let regcache = Regcache::start(options);
    let (_work, src) = layout(1104);
    let digest_file = regcache.work_dir().join("bearer.digest");
    skopeo_push(
        &src,
        &format!("docker://{}/team/pushed:v1", regcache.host()),
        Some(&alice),
        &digest_file,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nregcache log:\n{}", regcache.log()));
    let pushed = std::fs::read_to_string(&digest_file).unwrap();
    let token = tokens.mint("check", &["repository:team/pushed:pull"]);
    let upstream = get(
        &RegistryClient::new(registry.url()).with_bearer(token),
        reqwest::Method::GET,
        "/v2/team/pushed/manifests/v1",
        &[
            ("accept", media::OCI_MANIFEST),
            ("accept", media::DOCKER_MANIFEST),
        ],
    )
    .await;
    assert_eq!(upstream.status, 200, "{}", upstream.text());
    assert_eq!(upstream.digest(), Some(pushed.trim()));
    let requests = tokens.requests();
    assert!(
        requests.iter().any(|r| r.user.as_deref() == Some("alice")
            && r.status == 200
            && r.scopes
                .iter()
                .any(|s| s.contains("team/pushed") && asks_push(s))),
        "skopeo fetched alice's own push token: {requests:#?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.user.as_deref() == Some("robot") && r.scopes.iter().any(|s| asks_push(s))),
        "regcache asked for no push token of its own: {requests:#?}"
    );

    // Without credentials the token service refuses skopeo: nothing lands.
    let anon_file = regcache.work_dir().join("bearer-anon.digest");
    skopeo_push(
        &src,
        &format!("docker://{}/team/anon:v1", regcache.host()),
        None,
        &anon_file,
    )
    .await
    .expect_err("an anonymous push must fail");
    let ping = get(
        &RegistryClient::new(regcache.url()),
        reqwest::Method::GET,
        "/v2/",
        &[],
    )
    .await;
    assert_eq!(ping.status, 401);
    assert!(
        ping.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer realm=") && h.contains(&tokens.realm())),
        "the upstream's Bearer challenge: {:?}",
        ping.headers
    );
}
