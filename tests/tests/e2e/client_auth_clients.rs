//! Client authentication with the container engines: podman
//! (`podman login`), the Docker 20.10 daemon (`docker login` to regcache as
//! a registry) and containerd (`ctr --user`) pull with the right
//! credentials, by tag and by digest, fail without, and get `denied`
//! outside the rules. The fixture is `client_auth`'s.

use regcache_tests::clients::{Containerd, DockerDaemon, Podman};

use crate::client_auth::{ALICE, BOB, fixture};

#[tokio::test]
async fn podman_logs_in_and_pulls() {
    let fx = fixture("bearer", 0xa1a0).await;
    let rc = &fx.regcache;
    let host = rc.host();
    let podman = Podman::new();
    let by_tag = format!("{host}/team/app:v1");
    let by_digest = format!("{host}/team/app@{}", fx.team);

    let out = podman.pull(&by_tag).await;
    assert!(!out.success(), "an anonymous pull must fail: {out}");
    assert!(out.output().contains("authentication required"), "{out}");

    podman
        .podman(&[
            "login",
            "--tls-verify=false",
            "-u",
            ALICE.0,
            "-p",
            ALICE.1,
            &host,
        ])
        .await
        .expect_success("podman login as alice");
    for reference in [&by_tag, &by_digest] {
        podman
            .pull(reference)
            .await
            .expect_success("podman pull as alice");
    }
    let inspect = podman.inspect_image(&by_tag).await;
    assert_eq!(inspect["Digest"], fx.team.as_str(), "{inspect:#}");

    let out = podman
        .podman(&[
            "login",
            "--tls-verify=false",
            "-u",
            ALICE.0,
            "-p",
            "wrong",
            &host,
        ])
        .await;
    assert!(!out.success(), "a wrong password must not log in: {out}");

    podman
        .podman(&[
            "login",
            "--tls-verify=false",
            "-u",
            BOB.0,
            "-p",
            BOB.1,
            &host,
        ])
        .await
        .expect_success("podman login as bob");
    let out = podman.pull(&by_digest).await;
    assert!(!out.success(), "bob may not pull team/app: {out}");
    assert!(out.output().contains("denied"), "{out}");
    podman
        .pull(&format!("{host}/other/app:v1"))
        .await
        .expect_success("podman pull other/app as bob");
}

#[tokio::test]
async fn docker_20_10_logs_in_and_pulls() {
    let fx = fixture("bearer", 0xa1b0).await;
    let rc = &fx.regcache;
    let host = rc.host();
    let docker = DockerDaemon::shared();
    let by_tag = format!("{host}/team/app:v1");
    let by_digest = format!("{host}/team/app@{}", fx.team);

    let out = docker.docker(&["pull", &by_tag]).await;
    assert!(!out.success(), "an anonymous pull must fail: {out}");
    assert!(
        out.output().contains("authentication required") || out.output().contains("unauthorized"),
        "{out}"
    );

    let out = docker
        .docker(&["login", "-u", ALICE.0, "-p", "wrong", &host])
        .await;
    assert!(!out.success(), "a wrong password must not log in: {out}");
    docker
        .docker(&["login", "-u", ALICE.0, "-p", ALICE.1, &host])
        .await
        .expect_success("docker login as alice");
    let out = docker
        .docker(&["pull", &by_tag])
        .await
        .expect_success("docker pull as alice");
    assert!(out.stdout.contains(&fx.team), "{out}");
    docker
        .docker(&["pull", &by_digest])
        .await
        .expect_success("docker pull by digest as alice");

    docker
        .docker(&["login", "-u", BOB.0, "-p", BOB.1, &host])
        .await
        .expect_success("docker login as bob");
    let _ = docker.docker(&["image", "rm", &by_tag, &by_digest]).await;
    let out = docker.docker(&["pull", &by_digest]).await;
    assert!(!out.success(), "bob may not pull team/app: {out}");
    assert!(out.output().contains("denied"), "{out}");
    docker
        .docker(&["pull", &format!("{host}/other/app:v1")])
        .await
        .expect_success("docker pull other/app as bob");
    let _ = docker.docker(&["logout", &host]).await;
    // Logged out: anonymous access where a rule allows it (an anonymous token).
    let public = format!("{host}/public/app:v1");
    docker
        .docker(&["pull", &public])
        .await
        .expect_success("anonymous docker pull of public/app");
    let out = docker.docker(&["pull", &by_digest]).await;
    assert!(!out.success(), "logged out, team/app is refused: {out}");
    let _ = docker
        .docker(&["image", "rm", &format!("{host}/other/app:v1"), &public])
        .await;
}

#[tokio::test]
async fn containerd_pulls_with_credentials() {
    let fx = fixture("bearer", 0xa1c0).await;
    let rc = &fx.regcache;
    let host = rc.host();
    let containerd = Containerd::start();
    let by_tag = format!("{host}/team/app:v1");
    let out = containerd
        .ctr(&["images", "pull", "--plain-http", &by_tag])
        .await;
    assert!(!out.success(), "an anonymous pull must fail: {out}");
    assert!(out.output().contains("401"), "{out}");
    // containerd tries the OAuth2 POST first; regcache's 404 sends it to GET.
    let user = format!("{}:{}", ALICE.0, ALICE.1);
    let out = containerd
        .ctr(&["images", "pull", "--plain-http", "--user", &user, &by_tag])
        .await;
    assert!(
        out.success(),
        "ctr pull as alice: {out}\n{}",
        containerd.log()
    );
    assert!(out.stdout.contains(&fx.team), "{out}");
    let user = format!("{}:{}", BOB.0, BOB.1);
    let out = containerd
        .ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--user",
            &user,
            &format!("{host}/team/app@{}", fx.team),
        ])
        .await;
    assert!(!out.success(), "bob may not pull team/app: {out}");
    assert!(out.output().contains("403"), "{out}");
}
