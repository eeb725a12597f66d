//! The OCI 1.1 referrers API through regcache.
//!
//! * Against [`ReferrersUpstream`], which has the API: regcache lists what
//!   the upstream lists, filters by `artifactType` itself (with
//!   `OCI-Filters-Applied`), answers the second request from its cache (one
//!   upstream request), reads a paginated list to its end, passes an
//!   upstream's own `OCI-Filters-Applied` through (and keeps no such partial
//!   list), and turns an upstream 5xx into an error naming the upstream.
//! * Against the real distribution 2.8, which has no such API: regcache
//!   answers from the referrers tag schema's fallback tag `sha256-<hex>`
//!   (an OCI index pushed by the test), filtered on request; without that
//!   tag, the empty index; and a cosign-style `sha256-<hex>.sig` tag pulls
//!   as any tag does.

use regcache_tests::image::media;
use regcache_tests::referrers::{ReferrersUpstream, artifact_descriptor};
use regcache_tests::skopeo::CopyOptions;
use regcache_tests::{
    Fetched, ManifestFormat, OciLayout, Platform, Regcache, RegcacheOptions, RegistryClient,
    Skopeo, SkopeoFormat,
};
use serde_json::{Value, json};

use crate::support::{FULL_ACCEPT, Mode, Upstream, assert_api_version, assert_error, settle};

const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM: &str = "application/spdx+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

async fn get(client: &RegistryClient, method: reqwest::Method, path: &str) -> Fetched {
    client
        .request(method, path, &[], None)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A 200 OCI index answer, checked header by header; its `manifests`.
fn listed(what: &str, r: &Fetched) -> Vec<Value> {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert_api_version(what, r);
    assert_eq!(r.content_type(), Some(media::OCI_INDEX), "{what}");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "{what}"
    );
    let doc: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["schemaVersion"], 2, "{what}: {doc}");
    assert_eq!(doc["mediaType"], media::OCI_INDEX, "{what}: {doc}");
    doc["manifests"].as_array().unwrap().clone()
}

fn escaped(media_type: &str) -> String {
    media_type.replace('/', "%2F").replace('+', "%2B")
}

#[tokio::test]
async fn an_upstream_with_the_api_is_listed_filtered_and_cached() {
    const REPO: &str = "team/app";
    let subject = format!("sha256:{}", "a1".repeat(32));
    let partial = format!("sha256:{}", "b2".repeat(32));
    let nothing = format!("sha256:{}", "c3".repeat(32));
    let failing = format!("sha256:{}", "d4".repeat(32));
    let sig = artifact_descriptor(&format!("sha256:{}", "01".repeat(32)), 512, SIG);
    let sbom = artifact_descriptor(&format!("sha256:{}", "02".repeat(32)), 2048, SBOM);
    let upstream = ReferrersUpstream::start();
    upstream.set(REPO, &subject, vec![sig.clone(), sbom.clone()]);
    upstream.set(REPO, &partial, vec![sig.clone()]);
    upstream.claim_filters(REPO, &partial, "annotation");
    upstream.fail(REPO, &failing, 503);
    let regcache = Regcache::start(RegcacheOptions::new(upstream.url()).retry_attempts(1));
    let client = RegistryClient::new(regcache.url());
    let path = format!("/v2/{REPO}/referrers/{subject}");

    let all = get(&client, reqwest::Method::GET, &path).await;
    assert_eq!(listed("unfiltered", &all), vec![sig.clone(), sbom.clone()]);
    assert_eq!(all.header("oci-filters-applied"), None);

    let sigs = get(
        &client,
        reqwest::Method::GET,
        &format!("{path}?artifactType={}", escaped(SIG)),
    )
    .await;
    assert_eq!(listed("artifactType=sig", &sigs), vec![sig.clone()]);
    assert_eq!(sigs.header("oci-filters-applied"), Some("artifactType"));
    // An unescaped '+' is the media type's, not a space.
    let sboms = get(
        &client,
        reqwest::Method::GET,
        &format!("{path}?artifactType={SBOM}"),
    )
    .await;
    assert_eq!(listed("artifactType=sbom", &sboms), vec![sbom.clone()]);
    assert_eq!(sboms.header("oci-filters-applied"), Some("artifactType"));
    let none = get(
        &client,
        reqwest::Method::GET,
        &format!("{path}?artifactType=application%2Fnone"),
    )
    .await;
    assert!(listed("artifactType=none", &none).is_empty());

    let head = get(&client, reqwest::Method::HEAD, &path).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.content_type(), Some(media::OCI_INDEX));
    assert_eq!(head.header("content-length"), all.header("content-length"));

    // Five answers, one upstream request, and the filter was never sent.
    assert_eq!(
        upstream.referrers_requests(&subject),
        vec![format!("/v2/{REPO}/referrers/{subject}")]
    );
    let m = regcache.metrics().await;
    let hits = m.get(
        "regcache_cache_lookups_total",
        &[("kind", "referrers"), ("result", "hit")],
    );
    assert_eq!(hits, Some(4.0), "cache hits");

    // A subject nothing refers to: the upstream's empty index.
    let empty = get(
        &client,
        reqwest::Method::GET,
        &format!("/v2/{REPO}/referrers/{nothing}"),
    )
    .await;
    assert!(listed("nothing", &empty).is_empty());

    // The upstream filtered on its own: its header comes through (with
    // regcache's own filter added), and the partial list is not kept.
    let p = format!("/v2/{REPO}/referrers/{partial}");
    let first = get(&client, reqwest::Method::GET, &p).await;
    assert_eq!(listed("partial", &first), vec![sig.clone()]);
    assert_eq!(first.header("oci-filters-applied"), Some("annotation"));
    let filtered = get(
        &client,
        reqwest::Method::GET,
        &format!("{p}?artifactType={}", escaped(SIG)),
    )
    .await;
    assert_eq!(listed("partial, filtered", &filtered), vec![sig.clone()]);
    assert_eq!(
        filtered.header("oci-filters-applied"),
        Some("annotation,artifactType")
    );
    assert_eq!(upstream.referrers_requests(&partial).len(), 2);

    // A paginated list is read to its end, kept whole and filtered whole.
    let paged = format!("sha256:{}", "e5".repeat(32));
    let third = artifact_descriptor(&format!("sha256:{}", "03".repeat(32)), 99, SIG);
    upstream.set(REPO, &paged, vec![sig.clone(), sbom.clone(), third.clone()]);
    upstream.paginate(REPO, &paged, 2);
    let pp = format!("/v2/{REPO}/referrers/{paged}");
    let whole = get(&client, reqwest::Method::GET, &pp).await;
    assert_eq!(
        listed("paginated", &whole),
        vec![sig.clone(), sbom.clone(), third.clone()]
    );
    assert_eq!(whole.header("link"), None);
    let paged_sigs = get(
        &client,
        reqwest::Method::GET,
        &format!("{pp}?artifactType={}", escaped(SIG)),
    )
    .await;
    assert_eq!(
        listed("paginated, sig", &paged_sigs),
        vec![sig.clone(), third]
    );
    assert_eq!(
        upstream.referrers_requests(&paged),
        vec![pp.clone(), format!("{pp}?page=1")]
    );

    // A malformed digest never leaves regcache.
    let bad = get(
        &client,
        reqwest::Method::GET,
        &format!("/v2/{REPO}/referrers/sha256:1234"),
    )
    .await;
    assert_error("bad digest", &bad, 400, "DIGEST_INVALID");
    let bad_name = get(
        &client,
        reqwest::Method::GET,
        &format!("/v2/Team/referrers/{subject}"),
    )
    .await;
    assert_error("bad name", &bad_name, 400, "NAME_INVALID");

    // The upstream failing is the upstream's fault, said so.
    let failed = get(
        &client,
        reqwest::Method::GET,
        &format!("/v2/{REPO}/referrers/{failing}"),
    )
    .await;
    assert_error("upstream 503", &failed, 503, "UNKNOWN");
    let message = serde_json::from_slice::<Value>(&failed.body).unwrap()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("upstream e2e-upstream") && message.contains("503"),
        "{message}"
    );
}

/// An artifact manifest of `artifact_type` whose `subject` is `subject`
/// (an OCI image manifest of `subject_size` bytes), pushed by digest to
/// `repo` with its one layer; its bytes and digest.
async fn push_artifact(
    client: &RegistryClient,
    repo: &str,
    artifact_type: &str,
    payload: &str,
    subject: &str,
    subject_size: usize,
) -> (Vec<u8>, String) {
    let config = client.push_blob(repo, "{}".into()).await;
    let layer = client.push_blob(repo, payload.to_owned().into()).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": artifact_type, "digest": layer, "size": payload.len()}],
        "subject": {"mediaType": media::OCI_MANIFEST, "digest": subject, "size": subject_size},
        "annotations": {"org.opencontainers.image.created": "2020-01-01T00:00:00Z"},
    }))
    .unwrap();
    let digest = regcache_tests::sha256_digest(&manifest);
    let pushed = client
        .push_manifest(repo, &digest, media::OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(pushed, digest);
    (manifest, digest)
}

#[tokio::test]
async fn without_the_api_the_fallback_tag_answers() {
    const REPO: &str = "signed/app";
    let upstream = Upstream::start(Mode::Plain);
    let direct = upstream.client(&[REPO]);

    // The signed image, pushed with skopeo from an OCI layout.
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(work.path());
    layout.add_image(
        "signed",
        &crate::support::small_image(9101, Platform::linux_amd64()),
    );
    Skopeo::new()
        .try_copy(
            &layout.reference("signed"),
            &format!("docker://{}/{REPO}:v1", upstream.registry.host()),
            Some(SkopeoFormat::Oci),
            false,
            &CopyOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let image = direct.get_manifest(REPO, "v1", FULL_ACCEPT).await.unwrap();
    assert_eq!(image.content_type(), Some(media::OCI_MANIFEST));
    let subject = image.digest().unwrap().to_owned();
    // An unsigned image: no fallback tag.
    let unsigned = direct
        .push_image(
            REPO,
            "v2",
            &crate::support::small_image(9102, Platform::linux_amd64()),
            ManifestFormat::Oci,
        )
        .await;

    let (sig_bytes, sig) =
        push_artifact(&direct, REPO, SIG, "signature", &subject, image.body.len()).await;
    let (sbom_bytes, sbom) = push_artifact(
        &direct,
        REPO,
        SBOM,
        "{\"spdx\":1}",
        &subject,
        image.body.len(),
    )
    .await;
    let sig_desc = json!({"mediaType": media::OCI_MANIFEST, "digest": sig,
        "size": sig_bytes.len(), "artifactType": SIG, "annotations": {"kind": "sig"}});
    let sbom_desc = json!({"mediaType": media::OCI_MANIFEST, "digest": sbom,
        "size": sbom_bytes.len(), "artifactType": SBOM});
    let fallback = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [sig_desc, sbom_desc],
    }))
    .unwrap();
    let hex = subject.strip_prefix("sha256:").unwrap();
    direct
        .push_manifest(REPO, &format!("sha256-{hex}"), media::OCI_INDEX, &fallback)
        .await;
    // cosign's own tag for the signature.
    direct
        .push_manifest(
            REPO,
            &format!("sha256-{hex}.sig"),
            media::OCI_MANIFEST,
            &sig_bytes,
        )
        .await;

    let regcache = upstream.start_regcache();
    let client = RegistryClient::new(regcache.url());
    let path = format!("/v2/{REPO}/referrers/{subject}");
    let all = get(&client, reqwest::Method::GET, &path).await;
    assert_eq!(
        listed("fallback", &all),
        vec![sig_desc.clone(), sbom_desc.clone()]
    );
    assert_eq!(all.header("oci-filters-applied"), None);
    let sigs = get(
        &client,
        reqwest::Method::GET,
        &format!("{path}?artifactType={}", escaped(SIG)),
    )
    .await;
    assert_eq!(listed("fallback, sig", &sigs), vec![sig_desc.clone()]);
    assert_eq!(sigs.header("oci-filters-applied"), Some("artifactType"));
    let head = get(&client, reqwest::Method::HEAD, &path).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), all.header("content-length"));

    // No fallback tag: the empty index, as a registry with the API answers.
    let none = get(
        &client,
        reqwest::Method::GET,
        &format!("/v2/{REPO}/referrers/{unsigned}"),
    )
    .await;
    assert!(listed("no fallback tag", &none).is_empty());
    assert_eq!(
        serde_json::from_slice::<Value>(&none.body).unwrap(),
        json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": []})
    );

    // Asked once, the upstream is known to lack the API: the second subject
    // went straight to its fallback tag.
    settle(&upstream.registry, std::time::Duration::from_millis(300)).await;
    let asked: Vec<String> = upstream
        .registry
        .access_entries()
        .into_iter()
        .filter(|e| e.path.contains("/referrers/"))
        .map(|e| e.path)
        .collect();
    assert_eq!(asked, vec![path.clone()]);

    // The cosign-style tag is an ordinary tag through regcache.
    let sig_tag = client
        .get_manifest(REPO, &format!("sha256-{hex}.sig"), FULL_ACCEPT)
        .await
        .unwrap();
    assert_eq!(sig_tag.status, 200, "{}", sig_tag.text());
    assert_eq!(&sig_tag.body[..], &sig_bytes[..]);
    assert_eq!(sig_tag.digest(), Some(sig.as_str()));
    assert_eq!(sig_tag.content_type(), Some(media::OCI_MANIFEST));
}
