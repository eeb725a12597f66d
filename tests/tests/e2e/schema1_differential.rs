//! Differential test of the Schema 2 → Schema 1 conversion: docker/distribution
//! 2.8 (the Debian `docker-registry`) against `regcache convert`.
//!
//! Every shape is generated from a seed, pushed to one registry (skopeo from
//! an OCI layout with `--format v2s2`, or the upload API for exact bytes), and
//! then:
//!
//! 1. the registry is asked for the tag with only
//!    `Accept: application/vnd.docker.distribution.manifest.v1+prettyjws`;
//!    its canonical payload is recovered from the signed body (independently,
//!    and cross-checked with `regcache_formats::jws::payload_of`), and must
//!    hash to its `Docker-Content-Digest`;
//! 2. the stored manifest (and for lists the linux/amd64 child) and the config
//!    blob are fetched back from the registry, written to files, and given to
//!    `regcache convert --payload`;
//! 3. where the registry converts, regcache must print the identical bytes
//!    (so the same digest); where the registry refuses (400, 404, or a
//!    dropped connection), regcache must exit 1 with one line on stderr
//!    naming the problem.
//!
//! OCI manifests are never converted by distribution (404 for a client
//! without OCI support), while `regcache convert` accepts them. For those
//! shapes the same image is first pushed as Docker Schema 2 under the same
//! name and tag, the registry's conversion of that twin is recorded, and then
//! the OCI manifest (same config bytes and layer digests, checked) replaces
//! it under the tag; regcache converts the OCI manifest and must match the
//! twin's result.

use std::fmt::Write as _;
use std::path::Path;

use futures_util::StreamExt as _;
use regcache_tests::image::{History, ListEntry, config, default_history, media};
use regcache_tests::regcache::{ConvertArgs, ConvertOutput, convert};
use regcache_tests::{
    Fetched, Image, ImageGen, ManifestFormat, OciLayout, Platform, Registry, RegistryClient,
    RegistryOptions, Skopeo, SkopeoFormat, sha256_digest,
};
use serde_json::{Value, json};

/// What a client that knows only Schema 1 sends.
const V1_ONLY: &[&str] = &[media::SCHEMA1_SIGNED];
/// What we send to read back the stored object unchanged.
const NATIVE: &[&str] = &[
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
    media::OCI_MANIFEST,
    media::OCI_INDEX,
];
/// Shapes processed at once (each is a few HTTP requests, maybe a skopeo
/// run, and a `regcache convert`); the machine has 2 cores.
const PARALLEL: usize = 3;

/// How a shape gets into the registry.
enum Push {
    /// `skopeo copy oci:LAYOUT:<shape> docker://…/<repo>:<tag> --format v2s2`.
    Skopeo(Image),
    /// The upload API with the generator's exact Docker manifest.
    Upload(Image),
    /// The upload API with the generator's exact OCI manifest (never converted
    /// by the registry).
    Oci(Image),
    /// Docker Schema 2 twin first (recorded), then the OCI manifest of the
    /// same image under the same tag (see the module docs).
    OciTwin { image: Image, via_skopeo: bool },
    /// Children by digest, then a hand-made Docker manifest list.
    List {
        images: Vec<Image>,
        entries: Vec<ListEntry>,
    },
}

impl Push {
    fn label(&self) -> &'static str {
        match self {
            Push::Skopeo(_) => "skopeo",
            Push::Upload(_) => "upload",
            Push::Oci(_) => "upload-oci",
            Push::OciTwin {
                via_skopeo: true, ..
            } => "skopeo-oci",
            Push::OciTwin { .. } => "upload-oci",
            Push::List { .. } => "upload-list",
        }
    }
}

/// What the registry is expected to do on a Schema 1 GET by tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Converts,
    Refuses(u16, &'static str),
    Drops,
}

/// What `regcache convert` is expected to do.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Byte-identical payload to the registry's.
    Same,
    /// Exit 1, one line on stderr containing one of these words
    /// (case-insensitive).
    Fails(&'static [&'static str]),
}

struct Shape {
    name: &'static str,
    repo: String,
    tag: &'static str,
    push: Push,
    registry: Reg,
    regcache: Want,
}

/// What the registry did.
#[derive(Debug, Clone)]
enum Observed {
    Converted {
        digest: String,
        payload: Vec<u8>,
    },
    Refused {
        status: u16,
        code: String,
        body: String,
    },
    Dropped(String),
}

impl Observed {
    fn class(&self) -> Reg {
        match self {
            Observed::Converted { .. } => Reg::Converts,
            Observed::Refused { status, code, .. } => {
                // Leak-free comparison: map to the static codes we expect.
                let code: &'static str = match code.as_str() {
                    "MANIFEST_INVALID" => "MANIFEST_INVALID",
                    "MANIFEST_UNKNOWN" => "MANIFEST_UNKNOWN",
                    "UNKNOWN" => "UNKNOWN",
                    _ => "OTHER",
                };
                Reg::Refuses(*status, code)
            }
            Observed::Dropped(_) => Reg::Drops,
        }
    }

    fn summary(&self) -> String {
        match self {
            Observed::Converted { digest, .. } => format!("200 {}", short(digest)),
            Observed::Refused { status, code, .. } => format!("{status} {code}"),
            Observed::Dropped(_) => "connection dropped".into(),
        }
    }
}

/// One line of the summary table, with the verdict.
struct Row {
    name: &'static str,
    push: &'static str,
    registry: String,
    regcache: String,
    verdict: Result<(), String>,
    notes: Vec<String>,
}

struct Ctx {
    registry: Registry,
    client: RegistryClient,
    skopeo: Skopeo,
    layout: OciLayout,
    work: tempfile::TempDir,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema1_conversion_matches_distribution() {
    let registry = Registry::start(RegistryOptions {
        allow_foreign_urls: true,
        ..RegistryOptions::default()
    });
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&work.path().join("layout"));
    let shapes = shapes();
    for shape in &shapes {
        match &shape.push {
            Push::Skopeo(image)
            | Push::OciTwin {
                image,
                via_skopeo: true,
            } => {
                layout.add_image(shape.name, image);
            }
            _ => {}
        }
    }
    let valid = shapes
        .iter()
        .filter(|s| s.registry == Reg::Converts)
        .count();
    assert!(valid >= 30, "only {valid} converting shapes");
    let ctx = Ctx {
        client: RegistryClient::new(registry.url()),
        registry,
        skopeo: Skopeo::new(),
        layout,
        work,
    };

    let rows: Vec<Row> = futures_util::stream::iter(shapes)
        .map(|shape| run_shape(&ctx, shape))
        .buffered(PARALLEL)
        .collect()
        .await;

    let table = render_table(&rows);
    println!("{table}");
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|r| r.verdict.as_ref().err().map(|e| format!("{}: {e}", r.name)))
        .collect();
    if !failures.is_empty() {
        // Keep the inputs and both outputs of every shape for debugging:
        // <dir>/<shape>/{manifest,child,config,registry.payload,regcache.out}.json
        let kept = ctx.work.keep();
        let _ = std::fs::copy(ctx.registry.log_path(), kept.join("registry.log"));
        panic!(
            "{} of {} shapes differ:\n{}\n\n{table}\nfiles kept in {} (registry.log, <shape>/…)",
            failures.len(),
            rows.len(),
            failures.join("\n"),
            kept.display(),
        );
    }
}

async fn run_shape(ctx: &Ctx, shape: Shape) -> Row {
    let mut notes = Vec::new();
    let Shape {
        name,
        repo,
        tag,
        push,
        registry: expected_registry,
        regcache: want,
    } = shape;
    let host = ctx.registry.host();
    let docker_ref = format!("docker://{host}/{repo}:{tag}");
    let push_label = push.label();

    // 1. Push, and observe the registry's conversion.
    let mut expected_config = None;
    let mut twin_check: Result<(), String> = Ok(());
    let observed = match &push {
        Push::Skopeo(image) => {
            let src = ctx.layout.reference(name);
            ctx.skopeo
                .copy(&src, &docker_ref, Some(SkopeoFormat::V2s2), false)
                .await;
            expected_config = Some(image.config_digest());
            observe(&ctx.client, &repo, tag).await
        }
        Push::Upload(image) => {
            ctx.client
                .push_image(&repo, tag, image, ManifestFormat::Docker)
                .await;
            expected_config = Some(image.config_digest());
            observe(&ctx.client, &repo, tag).await
        }
        Push::Oci(image) => {
            ctx.client
                .push_image(&repo, tag, image, ManifestFormat::Oci)
                .await;
            expected_config = Some(image.config_digest());
            observe(&ctx.client, &repo, tag).await
        }
        Push::OciTwin { image, via_skopeo } => {
            expected_config = Some(image.config_digest());
            if *via_skopeo {
                let src = ctx.layout.reference(name);
                ctx.skopeo
                    .copy(&src, &docker_ref, Some(SkopeoFormat::V2s2), false)
                    .await;
            } else {
                ctx.client
                    .push_image(&repo, tag, image, ManifestFormat::Docker)
                    .await;
            }
            let twin_observed = observe(&ctx.client, &repo, tag).await;
            let twin_stored = stored(&ctx.client, &repo, tag).await;
            if *via_skopeo {
                let src = ctx.layout.reference(name);
                ctx.skopeo
                    .copy(&src, &docker_ref, Some(SkopeoFormat::Oci), false)
                    .await;
            } else {
                ctx.client
                    .push_image(&repo, tag, image, ManifestFormat::Oci)
                    .await;
            }
            let oci_stored = stored(&ctx.client, &repo, tag).await;
            twin_check = same_config_and_layers(&twin_stored, &oci_stored);
            notes.push(format!(
                "twin {} ({}) replaced by {} ({}); same config and layer digests: {}",
                short(&sha256_digest(&twin_stored.body)),
                twin_stored.content_type().unwrap_or("?"),
                short(&sha256_digest(&oci_stored.body)),
                oci_stored.content_type().unwrap_or("?"),
                if twin_check.is_ok() { "yes" } else { "NO" },
            ));
            let oci_observed = observe(&ctx.client, &repo, tag).await;
            notes.push(format!(
                "registry, Schema 1 GET of the OCI manifest: {}",
                describe(&oci_observed)
            ));
            if oci_observed.class() != Reg::Refuses(404, "MANIFEST_UNKNOWN") {
                twin_check = Err(format!(
                    "the registry converted an OCI manifest: {}",
                    describe(&oci_observed)
                ));
            }
            twin_observed
        }
        Push::List { images, entries } => {
            let refs: Vec<&Image> = images.iter().collect();
            ctx.client
                .push_docker_list(&repo, tag, &refs, entries)
                .await;
            observe(&ctx.client, &repo, tag).await
        }
    };
    if expected_registry != Reg::Converts {
        notes.push(format!("registry: {}", describe(&observed)));
    }

    // 2. Read back what the registry stores and convert it with regcache.
    let dir = ctx.work.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let top = stored(&ctx.client, &repo, tag).await;
    let top_path = dir.join("manifest.json");
    std::fs::write(&top_path, &top.body).unwrap();
    let top_json: Value = serde_json::from_slice(&top.body).unwrap();
    let mut child_path = None;
    let mut amd64_child = None;
    let image_json = if top.content_type() == Some(media::DOCKER_LIST) {
        let entries = top_json["manifests"].as_array().unwrap();
        let amd64 = entries
            .iter()
            .find(|e| e["platform"]["architecture"] == "amd64" && e["platform"]["os"] == "linux");
        // Without a linux/amd64 entry there is nothing to select; any
        // child's config will do for the (failing) conversion.
        let chosen = amd64.unwrap_or(&entries[0]);
        let digest = chosen["digest"].as_str().unwrap().to_owned();
        let child = stored(&ctx.client, &repo, &digest).await;
        if amd64.is_some() {
            let path = dir.join("child.json");
            std::fs::write(&path, &child.body).unwrap();
            child_path = Some(path);
            amd64_child = Some(digest);
        }
        serde_json::from_slice::<Value>(&child.body).unwrap()
    } else {
        top_json
    };
    let config_digest = image_json["config"]["digest"].as_str().unwrap().to_owned();
    let config_blob = ctx.client.get_blob(&repo, &config_digest).await.unwrap();
    assert_eq!(
        config_blob.status, 200,
        "{name}: config blob {config_digest}"
    );
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, &config_blob.body).unwrap();

    let out = convert(&ConvertArgs {
        name: &repo,
        tag,
        config: &config_path,
        manifest: &top_path,
        child: child_path.as_deref(),
        key: None,
        payload: true,
    })
    .await;

    if let Observed::Converted { payload, .. } = &observed {
        std::fs::write(dir.join("registry.payload.json"), payload).unwrap();
        let layers = image_json["layers"].as_array().map_or(0, Vec::len);
        let kept = non_empty_fs_layers(payload);
        if kept < layers {
            notes.push(format!(
                "registry left {} of {layers} layers out of the Schema 1 manifest",
                layers - kept
            ));
        }
    }
    std::fs::write(dir.join("regcache.out.json"), &out.stdout).unwrap();

    // 3. Judge.
    let mut verdict = judge(expected_registry, want, &observed, &out);
    if let (Some(expected), Ok(())) = (&expected_config, &verdict)
        && *expected != config_digest
    {
        verdict = Err(format!(
            "harness: the registry stores config {config_digest}, the generator made {expected}"
        ));
    }
    if verdict.is_ok() {
        verdict = twin_check;
    }
    if verdict.is_ok()
        && let Some(child_digest) = amd64_child
    {
        verdict = check_child_required(&repo, tag, &config_path, &top_path, &child_digest).await;
    }

    Row {
        name,
        push: push_label,
        registry: observed.summary(),
        regcache: if out.success() {
            short(&sha256_digest(&out.stdout))
        } else {
            let code = out.code.map_or("signal".to_owned(), |c| c.to_string());
            format!("exit {code}: {}", out.stderr.trim_end())
        },
        verdict,
        notes,
    }
}

/// `GET` by tag as a Schema-1-only client.
async fn observe(client: &RegistryClient, repo: &str, tag: &str) -> Observed {
    match client.get_manifest(repo, tag, V1_ONLY).await {
        Err(e) => Observed::Dropped(e.to_string()),
        Ok(answer) if answer.status == 200 => converted(repo, tag, &answer),
        Ok(answer) => Observed::Refused {
            status: answer.status,
            code: answer.error_code().unwrap_or_default(),
            body: answer.text(),
        },
    }
}

/// Checks a 200 Schema 1 answer and recovers its payload.
///
/// # Panics
/// When the answer is not a well-formed signed Schema 1 manifest whose
/// payload hashes to `Docker-Content-Digest` (the harness's assumptions).
fn converted(repo: &str, tag: &str, answer: &Fetched) -> Observed {
    assert_eq!(
        answer.content_type(),
        Some(media::SCHEMA1_SIGNED),
        "{repo}:{tag}: Content-Type of a Schema 1 answer"
    );
    let payload = regcache_tests::jws::payload_of(&answer.body)
        .unwrap_or_else(|e| panic!("{repo}:{tag}: cannot recover the payload: {e}"));
    let digest = sha256_digest(&payload);
    assert_eq!(
        answer.digest(),
        Some(digest.as_str()),
        "{repo}:{tag}: Docker-Content-Digest is the payload's digest"
    );
    let (formats_payload, formats_digest) = regcache_formats::jws::payload_of(&answer.body)
        .unwrap_or_else(|e| panic!("{repo}:{tag}: regcache_formats::jws::payload_of: {e}"));
    assert_eq!(
        formats_payload, payload,
        "{repo}:{tag}: regcache_formats::jws::payload_of disagrees with the harness"
    );
    assert_eq!(formats_digest.as_str(), digest);
    Observed::Converted { digest, payload }
}

/// The stored object, as a client accepting every native type gets it.
async fn stored(client: &RegistryClient, repo: &str, reference: &str) -> Fetched {
    let answer = client
        .get_manifest(repo, reference, NATIVE)
        .await
        .unwrap_or_else(|e| panic!("GET {repo}:{reference}: {e}"));
    assert_eq!(
        answer.status,
        200,
        "GET {repo}:{reference}: {}",
        answer.text()
    );
    answer
}

fn same_config_and_layers(a: &Fetched, b: &Fetched) -> Result<(), String> {
    let parse = |f: &Fetched| -> (Value, Vec<Value>) {
        let v: Value = serde_json::from_slice(&f.body).unwrap();
        let layers = v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].clone())
            .collect();
        (v["config"]["digest"].clone(), layers)
    };
    let (a_config, a_layers) = parse(a);
    let (b_config, b_layers) = parse(b);
    if a_config == b_config && a_layers == b_layers {
        Ok(())
    } else {
        Err(format!(
            "harness: the OCI manifest differs from its Schema 2 twin: config {a_config} vs {b_config}, layers {a_layers:?} vs {b_layers:?}"
        ))
    }
}

fn judge(
    expected: Reg,
    want: Want,
    observed: &Observed,
    out: &ConvertOutput,
) -> Result<(), String> {
    if observed.class() != expected {
        return Err(format!(
            "registry: expected {expected:?}, got {}",
            describe(observed)
        ));
    }
    match want {
        Want::Same => {
            let Observed::Converted { digest, payload } = observed else {
                unreachable!("Want::Same is only used with Reg::Converts")
            };
            if !out.success() {
                return Err(format!(
                    "regcache failed (exit {:?}) where the registry converted: {}\n  {}",
                    out.code,
                    out.stderr.trim_end(),
                    out.command
                ));
            }
            if out.stdout != *payload {
                return Err(format!(
                    "payload differs from the registry's ({digest} vs {}): {}",
                    sha256_digest(&out.stdout),
                    first_difference(payload, &out.stdout)
                ));
            }
            Ok(())
        }
        Want::Fails(words) => {
            if out.code != Some(1) {
                return Err(format!(
                    "regcache should exit 1 (registry: {}), got exit {:?}; stderr: {}",
                    observed.summary(),
                    out.code,
                    out.stderr.trim_end()
                ));
            }
            let message = out.stderr.trim_end();
            if message.is_empty() || message.contains('\n') {
                return Err(format!(
                    "regcache's error must be one line on stderr, got {message:?}"
                ));
            }
            let lower = message.to_lowercase();
            if !words.iter().any(|w| lower.contains(&w.to_lowercase())) {
                return Err(format!(
                    "regcache's error {message:?} names none of {words:?}"
                ));
            }
            Ok(())
        }
    }
}

/// Without `--child`, converting a list must fail and name the child needed.
async fn check_child_required(
    repo: &str,
    tag: &str,
    config: &Path,
    list: &Path,
    child_digest: &str,
) -> Result<(), String> {
    let out = convert(&ConvertArgs {
        name: repo,
        tag,
        config,
        manifest: list,
        child: None,
        key: None,
        payload: true,
    })
    .await;
    if out.code == Some(1)
        && out.stderr.contains(child_digest)
        && out.stderr.trim().lines().count() == 1
    {
        Ok(())
    } else {
        Err(format!(
            "without --child regcache should exit 1 naming {child_digest}; got exit {:?}: {}",
            out.code,
            out.stderr.trim_end()
        ))
    }
}

/// `fsLayers` entries that are not the empty-layer blob.
fn non_empty_fs_layers(payload: &[u8]) -> usize {
    let doc: Value = serde_json::from_slice(payload).unwrap();
    doc["fsLayers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["blobSum"] != regcache_tests::EMPTY_LAYER_DIGEST)
        .count()
}

fn describe(observed: &Observed) -> String {
    match observed {
        Observed::Converted { digest, .. } => format!("200, converted to {digest}"),
        Observed::Refused { status, body, .. } => format!("{status} {}", body.trim_end()),
        Observed::Dropped(e) => format!("connection dropped ({e})"),
    }
}

fn short(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 16).collect()
}

/// Where two byte strings first differ, with some context from each.
fn first_difference(expected: &[u8], actual: &[u8]) -> String {
    let at = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    let window = |bytes: &[u8]| {
        let start = at.saturating_sub(60);
        let end = (at + 60).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..end]).into_owned()
    };
    format!(
        "first difference at byte {at} (lengths {} vs {})\n  registry: …{:?}…\n  regcache: …{:?}…",
        expected.len(),
        actual.len(),
        window(expected),
        window(actual)
    )
}

fn render_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nSchema 1 differential: docker-registry 2.8 vs `regcache convert` ({} shapes)",
        rows.len()
    );
    let _ = writeln!(
        out,
        "{:<38} {:<11} {:<28} {:<28} match",
        "shape", "push", "registry", "regcache"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<38} {:<11} {:<28} {:<28} {}",
            row.name,
            row.push,
            row.registry,
            truncate(&row.regcache, 28),
            if row.verdict.is_ok() { "yes" } else { "FAIL" },
        );
    }
    let noted: Vec<&Row> = rows.iter().filter(|r| !r.notes.is_empty()).collect();
    if !noted.is_empty() {
        let _ = writeln!(out, "\nnotes:");
        for row in noted {
            for note in &row.notes {
                let _ = writeln!(out, "  {}: {note}", row.name);
            }
        }
    }
    let regcache_errors: Vec<&Row> = rows
        .iter()
        .filter(|r| r.regcache.starts_with("exit"))
        .collect();
    if !regcache_errors.is_empty() {
        let _ = writeln!(out, "\nregcache errors:");
        for row in regcache_errors {
            let _ = writeln!(out, "  {}: {}", row.name, row.regcache);
        }
    }
    out
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() > width {
        format!("{}…", text.chars().take(width - 1).collect::<String>())
    } else {
        text.to_owned()
    }
}

// ---------------------------------------------------------------------------
// The shapes.
// ---------------------------------------------------------------------------

/// Builds every shape from one seeded generator (same digests every run).
fn shapes() -> Vec<Shape> {
    let mut g = ImageGen::new(0x5c4e_3a11);
    let amd64 = Platform::linux_amd64();
    let mut shapes = Vec::new();

    // --- valid, pushed with skopeo (OCI layout → v2s2) -------------------
    let mut valid = |name: &'static str, tag: &'static str, image: Image| {
        shapes.push(Shape {
            name,
            repo: format!("diff/{name}"),
            tag,
            push: Push::Skopeo(image),
            registry: Reg::Converts,
            regcache: Want::Same,
        });
    };
    valid("basic", "latest", img(&mut g, default_history(2), |_| {}));
    valid("single-layer", "1", img(&mut g, default_history(1), |_| {}));
    valid(
        "empty-first",
        "latest",
        img(
            &mut g,
            vec![
                History::empty("/bin/sh -c #(nop)  ARG VERSION=1"),
                History::layer("/bin/sh -c #(nop) ADD file:abc in / "),
                History::layer("/bin/sh -c apk add curl"),
            ],
            |_| {},
        ),
    );
    valid(
        "empty-middle",
        "v1.2.3",
        img(
            &mut g,
            vec![
                History::layer("ADD rootfs.tar /"),
                History::empty("ENV A=1"),
                History::empty("WORKDIR /app"),
                History::layer("COPY . /app"),
            ],
            |_| {},
        ),
    );
    valid(
        "empty-last",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("ADD rootfs.tar /"),
                History::layer("RUN make"),
                History::empty("CMD [\"/bin/sh\"]"),
            ],
            |_| {},
        ),
    );
    valid(
        "empty-everywhere",
        "latest",
        img(
            &mut g,
            vec![
                History::empty("ARG A"),
                History::layer("ADD a /"),
                History::empty("ENV B=2"),
                History::empty("LABEL x=y"),
                History::layer("RUN b"),
                History::empty("ENTRYPOINT [\"/b\"]"),
                History::empty("CMD []"),
            ],
            |_| {},
        ),
    );
    valid(
        "no-created-by",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("x").created_by(None),
                History::empty("x").created_by(None),
                History::layer("RUN y"),
                History::layer("x").created_by(None),
            ],
            |_| {},
        ),
    );
    valid(
        "no-created",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("ADD a /").created(None),
                History::empty("ENV A=1").created(None),
                History::layer("RUN b").created(None),
            ],
            |c| {
                c.as_object_mut().unwrap().remove("created");
            },
        ),
    );
    valid(
        "created-null",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("ADD a /"),
                History::empty("ENV A=1"),
                History::layer("RUN b"),
            ],
            |c| {
                c["history"][0]["created"] = Value::Null;
                c["history"][1]["created"] = Value::Null;
                c["created"] = Value::Null;
            },
        ),
    );
    valid(
        "ts-utc-offset",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("a").created(Some("2024-03-01T10:20:30+00:00")),
                History::empty("b").created(Some("2020-01-01T00:00:00.000000000+00:00")),
                History::layer("c").created(Some("2020-01-01T00:00:00.5-00:00")),
                History::layer("d").created(Some("2024-03-01T10:20:30+00:00")),
            ],
            |c| c["created"] = "2024-03-01T10:20:30+00:00".into(),
        ),
    );
    valid(
        "ts-negative-offset",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("a").created(Some("2024-03-01T10:20:30-07:30")),
                History::empty("b").created(Some("1999-12-31T23:59:59+05:45")),
                History::layer("c").created(Some("2024-02-29T12:00:00-12:00")),
                History::empty("d").created(Some("2024-03-01T00:00:00+14:00")),
            ],
            |_| {},
        ),
    );
    valid(
        "ts-fraction-9-digits",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("a").created(Some("2024-03-01T10:20:30.123456789Z")),
                History::empty("b").created(Some("2024-03-01T10:20:30.000000001Z")),
                History::layer("c").created(Some("2024-03-01T10:20:30.999999999+01:00")),
                History::empty("d").created(Some("2024-03-01T10:20:30.123456789Z")),
            ],
            |_| {},
        ),
    );
    valid(
        "ts-fraction-1-digit",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("a").created(Some("2024-03-01T10:20:30.5Z")),
                History::empty("b").created(Some("2024-03-01T10:20:30.1-07:30")),
                History::layer("c").created(Some("2024-03-01T10:20:29.5+01:00")),
            ],
            |_| {},
        ),
    );
    valid(
        "ts-trailing-zeros",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("a").created(Some("2024-03-01T10:20:30.100Z")),
                History::empty("b").created(Some("2024-03-01T10:20:30.120000000+01:00")),
                History::layer("c").created(Some("2024-03-01T10:20:30.000Z")),
                History::layer("d").created(Some("2024-03-01T10:20:30.10Z")),
            ],
            |c| c["created"] = "2024-03-01T10:20:30.100000Z".into(),
        ),
    );
    valid(
        "html-escapes",
        "latest",
        img(
            &mut g,
            vec![
                History::layer(
                    "/bin/sh -c apk add --no-cache curl && rm -rf /tmp/* > /dev/null 2>&1",
                )
                .author("Jane <jane@example.com>"),
                History::empty("LABEL a=<b> & c").comment("<&>"),
                History::layer("RUN [ \"$A\" -lt 3 ] && echo '<ok>'"),
            ],
            |c| {
                c["config"]["Env"] = json!(["A=<&>", "URL=http://x/?a=1&b=2"]);
                c["author"] = "Tom & Jerry <tj@example.com>".into();
            },
        ),
    );
    valid(
        "unicode",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("RUN echo héllo wörld 日本語 🚀"),
                History::empty("LABEL maintainer=Zoë ✓").author("Zoë Ñúñez"),
                History::layer("RUN printf 'Ω≈ç√∫'"),
            ],
            |c| {
                c["config"]["Labels"] = json!({"maintainer": "Zoë ✓", "desc": "日本語 🚀"});
            },
        ),
    );
    valid(
        "line-separators",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("RUN echo a\u{2028}b\u{2029}c"),
                History::empty("ENV X=\u{2028}"),
                History::layer("RUN true"),
            ],
            |c| {
                c["config"]["Env"] = json!(["LS=\u{2028}", "PS=\u{2029}"]);
                c["config"]["Labels"] = json!({"sep\u{2028}key": "v\u{2029}"});
            },
        ),
    );
    valid(
        "control-chars",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("RUN a\u{1}b\u{8}c\u{c}d\te\nf\rg\u{1f}h\u{7f}i\u{0}j"),
                History::empty("ENV \"QUOTED\"=\\back\\slash"),
                History::layer("RUN printf '\\x1b[0m'"),
            ],
            |c| {
                c["config"]["Env"] = json!(["CTL=\u{1}\u{8}\u{c}\u{1b}", "TAB=\t", "NL=\n"]);
                c["comment"] = "bell\u{7}".into();
            },
        ),
    );
    valid(
        "labels",
        "latest",
        img(&mut g, default_history(2), |c| {
            let mut labels = serde_json::Map::new();
            for i in 0..20 {
                labels.insert(
                    format!("org.opencontainers.image.label{i:02}"),
                    format!("value/{i}?x=y").into(),
                );
            }
            labels.insert("com.example.empty".into(), "".into());
            c["config"]["Labels"] = Value::Object(labels);
        }),
    );
    valid(
        "healthcheck",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("ADD a /"),
                History::empty(
                    "HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://localhost/ || exit 1\"] \"30s\" \"3s\" \"0s\" '\\x03'}",
                ),
            ],
            |c| {
                c["config"]["Healthcheck"] = json!({
                    "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
                    "Interval": 30_000_000_000u64,
                    "Timeout": 3_000_000_000u64,
                    "StartPeriod": 5_000_000_000u64,
                    "Retries": 3
                });
            },
        ),
    );
    valid(
        "history-120",
        "latest",
        img(&mut g, long_history(120), |_| {}),
    );
    valid(
        "comment-author",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("ADD a /").comment("buildkit.dockerfile.v0"),
                History::empty("ENV A=1")
                    .comment("buildkit.dockerfile.v0")
                    .author("ops"),
                History::layer("RUN b").author("Jane Doe").comment(""),
                History::empty("CMD x").author("").comment("last"),
            ],
            |_| {},
        ),
    );
    valid(
        "many-layers",
        "latest",
        img(&mut g, default_history(12), |_| {}),
    );
    valid("duplicate-layer", "latest", {
        let layers = g.layers(2);
        let layers = vec![layers[0].clone(), layers[1].clone(), layers[0].clone()];
        let cfg = config(&amd64, &layers, &default_history(3), Value::Null);
        Image::new(&cfg, layers, amd64.clone())
    });
    valid("arm64-variant", "latest", {
        let platform = Platform::new("linux", "arm64", Some("v8"));
        let layers = g.layers(2);
        let cfg = config(&platform, &layers, &default_history(2), Value::Null);
        Image::new(&cfg, layers, platform)
    });
    valid(
        "docker-style-config",
        "latest",
        img(
            &mut g,
            vec![
                History::layer("/bin/sh -c #(nop) ADD file:0123 in / "),
                History::empty("/bin/sh -c #(nop)  CMD [\"bash\"]"),
            ],
            |c| {
                let obj = c.as_object_mut().unwrap();
                obj.insert("container".into(), "3c7b8f1e9e2a".into());
                obj.insert("docker_version".into(), "20.10.24".into());
                obj.insert(
                    "container_config".into(),
                    json!({
                        "Hostname": "3c7b8f1e9e2a", "Domainname": "", "User": "",
                        "AttachStdin": false, "Tty": false, "OpenStdin": false,
                        "Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh", "-c", "#(nop) ", "CMD [\"bash\"]"],
                        "Image": "sha256:0123", "Volumes": null, "WorkingDir": "",
                        "Entrypoint": null, "OnBuild": null, "Labels": {}
                    }),
                );
                c["config"]["ExposedPorts"] = json!({"80/tcp": {}, "443/tcp": {}});
                c["config"]["Volumes"] = json!({"/data": {}});
                c["config"]["StopSignal"] = "SIGTERM".into();
                c["config"]["Entrypoint"] = json!(["/docker-entrypoint.sh"]);
            },
        ),
    );

    // --- valid, exact bytes through the upload API ----------------------
    let mut upload = |name: &'static str, tag: &'static str, image: Image| {
        shapes.push(Shape {
            name,
            repo: format!("diff/{name}"),
            tag,
            push: Push::Upload(image),
            registry: Reg::Converts,
            regcache: Want::Same,
        });
    };
    upload(
        "no-architecture",
        "latest",
        img(&mut g, default_history(2), |c| {
            let obj = c.as_object_mut().unwrap();
            obj.remove("architecture");
        }),
    );
    upload("no-layers", "latest", {
        let cfg = config(
            &amd64,
            &[],
            &[History::empty("CMD [\"true\"]")],
            Value::Null,
        );
        Image::new(&cfg, Vec::new(), amd64.clone())
    });
    upload("pretty-config", "latest", {
        let layers = g.layers(2);
        let history = vec![
            History::layer("RUN a && b"),
            History::empty("ENV  SPACED = \" x \""),
            History::layer("RUN c"),
        ];
        let cfg = config(&amd64, &layers, &history, Value::Null);
        let pretty = String::from_utf8(serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        // CRLF line ends and tab indentation: all whitespace E3 removes.
        let pretty = pretty.replace("\n  ", "\n\t").replace('\n', "\r\n") + "\n";
        Image::from_raw_config(pretty.into_bytes(), layers, amd64.clone())
    });
    upload("raw-escapes", "latest", {
        let layers = g.layers(1);
        let raw = format!(
            r#"{{"os":"linux","config":{{"Env":["CAF\u00c9=caf\u00e9","PATH=\/usr\/bin"],"Cmd":["\/bin\/sh"],"Labels":{{"z":"1","a":"2"}}}},"weird":{{"z":1.0,"a":1e3,"m":-0,"n":[1.50,2E-2,0.1e+2],"e":"\u0041\ud83d\ude80\/"}},"architecture":"amd64","created":"2024-03-01T10:20:30.000Z","history":[{{"created":"2024-03-01T10:20:30Z","created_by":"caf\u00e9 \/ \"quoted\" \ud83d\ude80 \u003c\u0026"}}],"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            layers[0].diff_id
        );
        Image::from_raw_config(raw.into_bytes(), layers, amd64.clone())
    });
    upload("duplicate-keys", "latest", {
        let layers = g.layers(2);
        let raw = format!(
            r#"{{"os":"windows","architecture":"arm64","config":{{"Cmd":["a"]}},"os":"linux","history":[{{"created_by":"first"}}],"architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{0}","{1}"]}},"history":[{{"created_by":"RUN a","created":"2024-01-01T00:00:00Z"}},{{"created_by":"RUN b","created":"2024-01-01T00:00:01Z"}}],"config":{{"Cmd":["b"],"Env":[]}}}}"#,
            layers[0].diff_id, layers[1].diff_id
        );
        Image::from_raw_config(raw.into_bytes(), layers, amd64.clone())
    });
    upload("case-insensitive-keys", "latest", {
        let layers = g.layers(2);
        let raw = format!(
            r#"{{"Architecture":"arm64","architecture":"amd64","os":"linux","History":[{{"Created_By":"RUN A","CREATED":"2024-01-01T00:00:00+02:00"}},{{"created_by":"RUN b","Empty_Layer":false,"Author":"me"}}],"RootFS":{{"type":"layers","Diff_IDs":["{0}","{1}"]}}}}"#,
            layers[0].diff_id, layers[1].diff_id
        );
        Image::from_raw_config(raw.into_bytes(), layers, amd64.clone())
    });
    upload(
        "config-has-id-parent",
        "latest",
        img(&mut g, default_history(1), |c| {
            c["id"] = "0000000000000000000000000000000000000000000000000000000000000000".into();
            c["parent"] = "cafe".into();
            c["throwaway"] = false.into();
        }),
    );
    upload("base-layer", "latest", {
        let platform = Platform::new("windows", "amd64", None);
        let layers = g.layers(2);
        let mut cfg = config(&platform, &layers, &default_history(2), Value::Null);
        cfg["rootfs"]["type"] = "layers+base".into();
        cfg["rootfs"]["base_layer"] =
            "sha256:1f2c7e09e4d33d3cec8e9d0e0b8e5b4f1b7d0c7f5e1d3b2a9c8d7e6f5a4b3c2d".into();
        Image::new(&cfg, layers, platform)
    });
    upload("foreign-layer", "ltsc2019", {
        let platform = Platform::new("windows", "amd64", None);
        let layers = vec![
            g.foreign_layer(&[
                "https://mcr.example.com/v2/windows/servercore/blobs/sha256:abc",
                "http://mirror.example.com/layer.tar.gz",
            ]),
            g.layer(),
        ];
        let mut cfg = config(
            &platform,
            &layers,
            &[
                History::layer("Apply image 10.0.17763.1234"),
                History::layer("cmd /S /C powershell -Command Install-Feature"),
            ],
            Value::Null,
        );
        cfg["os.version"] = "10.0.17763.1234".into();
        Image::new(&cfg, layers, platform)
    });
    upload("fewer-non-empty", "latest", {
        // Three layers, but only two non-empty history entries: distribution
        // silently leaves the third layer out.
        let layers = g.layers(3);
        let cfg = config(&amd64, &layers, &default_history(2), Value::Null);
        Image::new(&cfg, layers, amd64.clone())
    });

    // --- manifest lists (upload API) -------------------------------------
    let list = |shapes: &mut Vec<Shape>,
                name: &'static str,
                images: Vec<Image>,
                entries: Vec<ListEntry>,
                registry: Reg,
                regcache: Want| {
        shapes.push(Shape {
            name,
            repo: format!("diff/lists/{name}"),
            tag: "multi",
            push: Push::List { images, entries },
            registry,
            regcache,
        });
    };
    {
        let images = vec![
            platform_image(&mut g, Platform::new("linux", "arm64", Some("v8"))),
            platform_image(&mut g, amd64.clone()),
        ];
        let entries = images.iter().map(ListEntry::docker).collect();
        list(
            &mut shapes,
            "list-amd64-second",
            images,
            entries,
            Reg::Converts,
            Want::Same,
        );
    }
    {
        let images = vec![
            platform_image(&mut g, Platform::new("linux", "arm", Some("v7"))),
            platform_image(&mut g, Platform::new("linux", "amd64", Some("v3"))),
            platform_image(&mut g, Platform::new("linux", "amd64", None)),
        ];
        let entries = images.iter().map(ListEntry::docker).collect();
        list(
            &mut shapes,
            "list-armv7-first-amd64-variant",
            images,
            entries,
            Reg::Converts,
            Want::Same,
        );
    }
    {
        let images = vec![
            platform_image(&mut g, Platform::new("windows", "amd64", None)),
            platform_image(&mut g, amd64.clone()),
        ];
        let entries = images.iter().map(ListEntry::docker).collect();
        list(
            &mut shapes,
            "list-windows-amd64-first",
            images,
            entries,
            Reg::Converts,
            Want::Same,
        );
    }
    {
        // No platform object, then "AMD64" (case matters), then linux/amd64.
        let images = vec![
            platform_image(&mut g, amd64.clone()),
            platform_image(&mut g, Platform::new("linux", "AMD64", None)),
            platform_image(&mut g, amd64.clone()),
        ];
        let mut entries: Vec<ListEntry> = images.iter().map(ListEntry::docker).collect();
        entries[0].platform = None;
        list(
            &mut shapes,
            "list-no-platform-and-uppercase-first",
            images,
            entries,
            Reg::Converts,
            Want::Same,
        );
    }
    {
        let images = vec![
            platform_image(&mut g, Platform::new("linux", "arm64", Some("v8"))),
            platform_image(&mut g, Platform::new("linux", "arm", Some("v7"))),
            platform_image(&mut g, Platform::new("windows", "arm64", None)),
        ];
        let entries = images.iter().map(ListEntry::docker).collect();
        list(
            &mut shapes,
            "list-no-amd64",
            images,
            entries,
            Reg::Refuses(404, "MANIFEST_UNKNOWN"),
            Want::Fails(&["amd64"]),
        );
    }

    // --- OCI manifests ---------------------------------------------------
    shapes.push(Shape {
        name: "oci-twin-skopeo",
        repo: "diff/oci-twin-skopeo".into(),
        tag: "latest",
        push: Push::OciTwin {
            image: img(
                &mut g,
                vec![
                    History::empty("ARG X"),
                    History::layer("ADD a /"),
                    History::layer("RUN b && c"),
                    History::empty("CMD d"),
                ],
                |_| {},
            ),
            via_skopeo: true,
        },
        registry: Reg::Converts,
        regcache: Want::Same,
    });
    shapes.push(Shape {
        name: "oci-twin-upload",
        repo: "diff/oci-twin-upload".into(),
        tag: "v2",
        push: Push::OciTwin {
            image: img(&mut g, default_history(3), |c| {
                c["config"]["Labels"] = json!({"org.opencontainers.image.title": "<oci>"});
            }),
            via_skopeo: false,
        },
        registry: Reg::Converts,
        regcache: Want::Same,
    });

    // --- zstd: the registry's behaviour is recorded, regcache refuses ----
    shapes.push(Shape {
        name: "zstd-oci",
        repo: "diff/zstd-oci".into(),
        tag: "latest",
        push: Push::Oci(zstd_image(&mut g)),
        registry: Reg::Refuses(404, "MANIFEST_UNKNOWN"),
        regcache: Want::Fails(&["zstd"]),
    });
    shapes.push(Shape {
        name: "zstd-in-docker-manifest",
        repo: "diff/zstd-in-docker-manifest".into(),
        tag: "latest",
        push: Push::Upload(zstd_image(&mut g)),
        // distribution ignores layer media types and converts; regcache
        // refuses, because a Schema 1 client cannot decompress zstd.
        registry: Reg::Converts,
        regcache: Want::Fails(&["zstd"]),
    });

    // --- configs the registry cannot convert ------------------------------
    let mut invalid =
        |name: &'static str, registry: Reg, words: &'static [&'static str], image: Image| {
            shapes.push(Shape {
                name,
                repo: format!("diff/invalid/{name}"),
                tag: "latest",
                push: Push::Upload(image),
                registry,
                regcache: Want::Fails(words),
            });
        };
    const BAD: Reg = Reg::Refuses(400, "MANIFEST_INVALID");
    invalid(
        "empty-history",
        BAD,
        &["history"],
        img(&mut g, default_history(1), |c| c["history"] = json!([])),
    );
    invalid(
        "absent-history",
        BAD,
        &["history"],
        img(&mut g, default_history(1), |c| {
            c.as_object_mut().unwrap().remove("history");
        }),
    );
    invalid(
        "history-not-an-array",
        BAD,
        &["history"],
        img(&mut g, default_history(1), |c| {
            c["history"] = json!({"a": 1})
        }),
    );
    invalid("too-many-non-empty", BAD, &["history", "layer"], {
        let layers = g.layers(1);
        let cfg = config(&amd64, &layers, &default_history(2), Value::Null);
        Image::new(&cfg, layers, amd64.clone())
    });
    invalid("diff-ids-mismatch", BAD, &["diff_id", "layer"], {
        let layers = g.layers(1);
        let mut cfg = config(&amd64, &layers, &default_history(1), Value::Null);
        cfg["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(layers[0].diff_id.clone().into());
        Image::new(&cfg, layers, amd64.clone())
    });
    invalid(
        "no-rootfs",
        Reg::Drops,
        &["rootfs"],
        img(&mut g, default_history(1), |c| {
            c.as_object_mut().unwrap().remove("rootfs");
        }),
    );
    invalid(
        "empty-layer-string",
        BAD,
        &["empty_layer"],
        img(
            &mut g,
            vec![History::layer("a"), History::empty("b")],
            |c| {
                c["history"][1]["empty_layer"] = "true".into();
            },
        ),
    );
    invalid(
        "bad-created",
        BAD,
        &["created", "time"],
        img(&mut g, default_history(2), |c| {
            c["history"][0]["created"] = "yesterday".into();
        }),
    );
    invalid("config-not-json", BAD, &["json", "config"], {
        let layers = g.layers(1);
        Image::from_raw_config(b"{\"architecture\": amd64 not json".to_vec(), layers, amd64)
    });

    shapes
}

/// An amd64 image whose layer count follows the history's non-empty entries;
/// `tweak` may edit the config before it is serialised.
fn img(g: &mut ImageGen, history: Vec<History>, tweak: impl FnOnce(&mut Value)) -> Image {
    let platform = Platform::linux_amd64();
    let layers = g.layers(history.iter().filter(|h| !h.empty_layer).count());
    let mut cfg = config(&platform, &layers, &history, Value::Null);
    tweak(&mut cfg);
    Image::new(&cfg, layers, platform)
}

/// A small image for `platform` (config architecture/os/variant set).
fn platform_image(g: &mut ImageGen, platform: Platform) -> Image {
    let layers = g.layers(2);
    let history = vec![
        History::layer(&format!("ADD {}-{} /", platform.os, platform.architecture)),
        History::empty("ENV PLATFORM=1"),
        History::layer("RUN build"),
    ];
    let cfg = config(&platform, &layers, &history, Value::Null);
    Image::new(&cfg, layers, platform)
}

/// One gzip layer and one zstd layer.
fn zstd_image(g: &mut ImageGen) -> Image {
    let platform = Platform::linux_amd64();
    let layers = vec![g.layer(), g.zstd_layer()];
    let cfg = config(&platform, &layers, &default_history(2), Value::Null);
    Image::new(&cfg, layers, platform)
}

/// `n` history entries with layers at a few positions (first, thirds, last)
/// and timestamps with varying fractions.
fn long_history(n: usize) -> Vec<History> {
    (0..n)
        .map(|i| {
            let created = format!(
                "2024-03-01T10:{:02}:{:02}.{}Z",
                i / 60,
                i % 60,
                (i * 7) % 1000
            );
            let entry = if i == 0 || i == n / 3 || i == 2 * n / 3 || i == n - 1 {
                History::layer(&format!("RUN step {i}"))
            } else {
                History::empty(&format!("ENV STEP_{i}=\"{i} & more\""))
            };
            entry.created(Some(&created))
        })
        .collect()
}
