//! Schema 2 → Schema 1 conversion and libtrust signing of a 10-layer image
//! (20 history steps, 10 of them empty, 5.5 KB Docker config; see `mod image`).
//!
//! Inputs: config 5,520 B, Schema 2 manifest 2,434 B, canonical payload
//! 11,884 B, signed document 12,530 B.
//!
//! Run: `cargo bench -p regcache-benches --bench convert -- --warm-up-time 1 --measurement-time 3`
//!
//! Latest result, 2026-11-22, `nproc` = 2, "AMD EPYC" (2.25 GHz, /proc/cpuinfo),
//! rustc 1.95.0, `--warm-up-time 1 --measurement-time 3`; the machine was shared
//! (load average 3.5-6.3 during the run; an earlier run at 1.4-3.2 was within
//! ±15 %), so expect that much noise between runs.
//! Criterion's [low estimate high]:
//!
//! | bench                                    | time                         |
//! | ---------------------------------------- | ---------------------------- |
//! | schema1_10_layers/canonical_payload      | [39.74 µs 40.58 µs 41.65 µs] |
//! | schema1_10_layers/jws_sign               | [258.8 µs 264.9 µs 271.3 µs] |
//! | schema1_10_layers/convert_and_sign       | [310.7 µs 332.5 µs 358.0 µs] |
//! | schema1_10_layers/manifest_parse_schema2 | [10.63 µs 10.72 µs 10.84 µs] |
//! | schema1_10_layers/jws_verify             | [367.0 µs 379.9 µs 400.3 µs] |
//!
//! ECDSA P-256 dominates: signing (RFC 6979 nonce + one scalar multiplication)
//! is ~7x the conversion, verifying (two) ~10x.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use regcache_formats::manifest::Manifest;
use regcache_formats::{MediaType, jws, schema1};

use image::{
    LAYERS, NAME, SIGN_TIME, TAG, image_config, layer_digests, schema2_manifest, signing_key,
};

/// Deterministic, realistic inputs: a Docker-style config (5.5 KB, classic
/// builder output with both `config` and `container_config`) with 20 history
/// steps, 10 of them empty layers, and the 10 layer digests its manifest lists.
mod image {
    use regcache_formats::Digest;
    use regcache_formats::jws::SigningKey;
    use regcache_formats::media_type;

    /// Repository name the benches convert under.
    pub const NAME: &str = "library/bench-app";
    /// Tag the benches convert under.
    pub const TAG: &str = "1.4.2-bookworm";
    /// Signing time (`2023-11-14T22:13:20Z`).
    pub const SIGN_TIME: i64 = 1_700_000_000;

    /// The fixture P-256 key (SEC 1 PEM) the golden tests use.
    const KEY_PEM: &str = include_str!("../../crates/formats/tests/fixtures/jws-key.sec1.pem");

    /// A fixed signing key, so signatures are deterministic run to run.
    pub fn signing_key() -> SigningKey {
        SigningKey::from_pem(KEY_PEM).expect("the fixture key loads")
    }

    /// One history step: `(created_by, empty_layer)`. Non-empty steps are in
    /// layer order.
    const HISTORY: [(&str, bool); 20] = [
        (
            "/bin/sh -c #(nop) ADD file:3e5f2a1b7c9d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f in / ",
            false,
        ),
        ("/bin/sh -c #(nop)  CMD [\"bash\"]", true),
        (
            "/bin/sh -c #(nop)  LABEL maintainer=Platform Team <platform@example.com>",
            true,
        ),
        ("/bin/sh -c #(nop)  ENV LANG=C.UTF-8", true),
        (
            "/bin/sh -c set -eux && apt-get update && apt-get install -y --no-install-recommends ca-certificates curl gnupg netbase tzdata && rm -rf /var/lib/apt/lists/*",
            false,
        ),
        (
            "/bin/sh -c groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --home-dir /srv/app --shell /usr/sbin/nologin app",
            false,
        ),
        ("/bin/sh -c #(nop)  ENV PYTHON_VERSION=3.12.3", true),
        ("/bin/sh -c #(nop)  ENV TZ=UTC", true),
        (
            "/bin/sh -c set -eux && apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libffi-dev libssl-dev make && cd /usr/src/python && ./configure --enable-shared && make -j \"$(nproc)\" && make install && ldconfig && rm -rf /var/lib/apt/lists/* /usr/src/python",
            false,
        ),
        (
            "/bin/sh -c cd /usr/local/bin && ln -s idle3 idle && ln -s pydoc3 pydoc && ln -s python3 python",
            false,
        ),
        ("/bin/sh -c #(nop)  ENV PIP_NO_CACHE_DIR=1", true),
        ("/bin/sh -c #(nop) WORKDIR /srv/app", true),
        (
            "/bin/sh -c #(nop) COPY file:9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b in /srv/app/requirements.txt ",
            false,
        ),
        (
            "/bin/sh -c python3 -m venv /opt/venv && /opt/venv/bin/pip install -r requirements.txt && rm -rf /root/.cache",
            false,
        ),
        (
            "/bin/sh -c #(nop) COPY dir:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0 in /srv/app ",
            false,
        ),
        (
            "/bin/sh -c /opt/venv/bin/python -m compileall -q /srv/app && chown -R app:app /srv/app/var",
            false,
        ),
        ("/bin/sh -c #(nop)  USER app", true),
        ("/bin/sh -c #(nop)  EXPOSE 8080/tcp", true),
        (
            "/bin/sh -c /opt/venv/bin/python -m app.selfcheck --quiet && rm -rf /tmp/* /srv/app/var/cache/*",
            false,
        ),
        (
            "/bin/sh -c #(nop)  CMD [\"/opt/venv/bin/gunicorn\" \"--bind\" \"0.0.0.0:8080\" \"app.wsgi\"]",
            true,
        ),
    ];

    /// Number of layers of [`ten_layer_image`].
    pub const LAYERS: usize = 10;

    /// Escape `s` as a JSON string literal (the texts above need `"` and `\`).
    fn json_string(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// The container config block Docker writes twice (`config`, `container_config`).
    fn container_config(cmd: &str) -> String {
        format!(
            concat!(
                r#"{{"Hostname":"","Domainname":"","User":"app","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"#,
                r#""ExposedPorts":{{"8080/tcp":{{}}}},"Tty":false,"OpenStdin":false,"StdinOnce":false,"#,
                r#""Env":["PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8","#,
                r#""PYTHON_VERSION=3.12.3","TZ=UTC","PIP_NO_CACHE_DIR=1"],"#,
                r#""Cmd":{cmd},"#,
                r#""Image":"sha256:5b0c8f3e9d2a1c4b6e8f0a2c4e6a8c0e2a4c6e8a0c2e4a6c8e0a2c4e6a8c0e2a","#,
                r#""Volumes":null,"WorkingDir":"/srv/app","Entrypoint":null,"OnBuild":null,"#,
                r#""Labels":{{"maintainer":"Platform Team <platform@example.com>","org.opencontainers.image.version":"1.4.2"}}}}"#,
            ),
            cmd = cmd
        )
    }

    /// The layer digests (base first) of [`ten_layer_image`].
    pub fn layer_digests() -> Vec<Digest> {
        (0..LAYERS)
            .map(|i| Digest::sha256_of(format!("bench layer {i}").as_bytes()))
            .collect()
    }

    /// A realistic Docker image config: 20 history steps (10 empty), 10
    /// `diff_ids`, about 5 KB.
    pub fn image_config() -> Vec<u8> {
        let mut history = Vec::with_capacity(HISTORY.len());
        for (i, (created_by, empty)) in HISTORY.iter().enumerate() {
            // Steps a few seconds apart, with Docker's nanosecond timestamps.
            let secs = 10 + i * 7;
            let mut entry = format!(
                r#"{{"created":"2024-05-14T09:{:02}:{:02}.{:09}Z","created_by":{}"#,
                secs / 60,
                secs % 60,
                123_456_789 - i * 1_000_003,
                json_string(created_by)
            );
            if *empty {
                entry.push_str(r#","empty_layer":true"#);
            }
            entry.push('}');
            history.push(entry);
        }
        let diff_ids: Vec<String> = (0..LAYERS)
            .map(|i| json_string(Digest::sha256_of(format!("bench diff {i}").as_bytes()).as_str()))
            .collect();
        let config = format!(
            concat!(
                r#"{{"architecture":"amd64","config":{config},"container":"3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e","#,
                r#""container_config":{container_config},"created":"2024-05-14T09:02:31.987654321Z","docker_version":"24.0.7","#,
                r#""history":[{history}],"os":"linux","rootfs":{{"type":"layers","diff_ids":[{diff_ids}]}}}}"#,
            ),
            config = container_config(
                r#"["/opt/venv/bin/gunicorn","--bind","0.0.0.0:8080","app.wsgi"]"#
            ),
            container_config = container_config(
                r##"["/bin/sh","-c","#(nop) ","CMD [\"/opt/venv/bin/gunicorn\" \"--bind\" \"0.0.0.0:8080\" \"app.wsgi\"]"]"##
            ),
            history = history.join(","),
            diff_ids = diff_ids.join(","),
        );
        config.into_bytes()
    }

    /// The Schema 2 manifest (Docker's 3-space indented layout) for `config`
    /// and `layers`.
    pub fn schema2_manifest(config: &[u8], layers: &[Digest]) -> Vec<u8> {
        let descriptor = |media_type: &str, size: usize, digest: &Digest| {
            format!(
                "{{\n         \"mediaType\": \"{media_type}\",\n         \"size\": {size},\n         \"digest\": \"{digest}\"\n      }}"
            )
        };
        let layer_list: Vec<String> = layers
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let size = 1_000_000 + i * 7_654_321 % 40_000_000;
                descriptor(media_type::DOCKER_LAYER_GZIP, size, d)
            })
            .collect();
        let config_descriptor = descriptor(
            media_type::DOCKER_CONFIG,
            config.len(),
            &Digest::sha256_of(config),
        )
        .replace("\n         ", "\n      ")
        .replace("\n      }", "\n   }");
        format!(
            "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{}\",\n   \"config\": {},\n   \"layers\": [\n      {}\n   ]\n}}",
            media_type::SCHEMA2,
            config_descriptor,
            layer_list.join(",\n      ")
        )
        .into_bytes()
    }
}

fn convert(c: &mut Criterion) {
    let config = image_config();
    let layers = layer_digests();
    let key = signing_key();
    let payload =
        schema1::canonical_payload(&config, &layers, NAME, TAG).expect("the bench image converts");
    let signed = jws::sign(&payload, &key, SIGN_TIME).expect("the payload signs");
    let manifest = schema2_manifest(&config, &layers);

    // Sanity: the inputs are what the names say.
    let parsed = Manifest::parse(manifest.clone(), None).expect("the Schema 2 manifest parses");
    assert_eq!(parsed.media_type, MediaType::Schema2);
    assert_eq!(parsed.as_image().map(|m| m.layers.len()), Some(LAYERS));
    let s1 = Manifest::parse(payload.clone(), None).expect("the payload parses");
    let s1 = s1.as_schema1().expect("the payload is Schema 1");
    assert_eq!(s1.history.len(), 20);
    let non_empty = s1
        .fs_layers
        .iter()
        .filter(|d| d.as_str() != schema1::EMPTY_LAYER_DIGEST)
        .count();
    assert_eq!(non_empty, LAYERS);
    let verified = jws::verify(&signed).expect("the signed output verifies");
    assert_eq!(verified.payload, payload);
    eprintln!(
        "inputs: config {} B, Schema 2 manifest {} B, canonical payload {} B, signed {} B",
        config.len(),
        manifest.len(),
        payload.len(),
        signed.len()
    );

    let mut g = c.benchmark_group("schema1_10_layers");
    g.throughput(Throughput::Bytes(config.len() as u64));
    g.bench_function("canonical_payload", |b| {
        b.iter(|| {
            schema1::canonical_payload(
                black_box(&config),
                black_box(&layers),
                black_box(NAME),
                black_box(TAG),
            )
        })
    });
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("jws_sign", |b| {
        b.iter(|| jws::sign(black_box(&payload), black_box(&key), black_box(SIGN_TIME)))
    });
    g.throughput(Throughput::Bytes(config.len() as u64));
    g.bench_function("convert_and_sign", |b| {
        b.iter(|| {
            let payload = schema1::canonical_payload(
                black_box(&config),
                black_box(&layers),
                black_box(NAME),
                black_box(TAG),
            )
            .expect("converts");
            let digest = schema1::canonical_digest(&payload);
            (jws::sign(&payload, black_box(&key), SIGN_TIME), digest)
        })
    });
    g.throughput(Throughput::Bytes(manifest.len() as u64));
    g.bench_function("manifest_parse_schema2", |b| {
        b.iter(|| Manifest::parse(black_box(manifest.as_slice()), None))
    });
    g.throughput(Throughput::Bytes(signed.len() as u64));
    g.bench_function("jws_verify", |b| b.iter(|| jws::verify(black_box(&signed))));
    g.finish();
}

criterion_group!(benches, convert);
criterion_main!(benches);
