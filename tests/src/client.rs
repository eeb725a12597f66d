//! A small registry client for tests: pushes exact bytes through the upload
//! API (`POST /v2/<name>/blobs/uploads/`, `PUT <location>?digest=`, then `PUT`
//! the manifest with its `Content-Type`) and fetches manifests with a chosen
//! `Accept` list, returning status, headers and body as they came.
//!
//! Use it for documents skopeo would rewrite or refuse: hand-made manifest
//! lists, foreign layers, configs that are invalid on purpose.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;

use crate::image::{Image, ListEntry, manifest_list, media};
use crate::registry::Credentials;
use crate::sha256_digest;

/// A response, whatever its status.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    /// A header as text (`None` if absent or not ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Docker-Content-Digest`.
    pub fn digest(&self) -> Option<&str> {
        self.header("docker-content-digest")
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// The `code` of the first error in a registry error envelope.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_owned)
    }

    /// The body as (lossy) text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A streamed response body, compared with the expected bytes rather than
/// kept ([`RegistryClient::get_compared`]).
#[derive(Debug, Clone)]
pub struct Streamed {
    pub status: u16,
    pub headers: HeaderMap,
    /// Body bytes received.
    pub len: u64,
    /// The first offset where the body differs from the expected bytes
    /// (including a body that is too short or too long); `None`: identical.
    pub first_difference: Option<u64>,
    /// Set when the body ended with a transport error (a short body).
    pub error: Option<String>,
}

impl Streamed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A complete 200 with exactly the expected bytes.
    pub fn is_exact(&self) -> bool {
        self.status == 200 && self.error.is_none() && self.first_difference.is_none()
    }

    /// A clean 200 (no transport error) whose bytes are wrong: what a cache
    /// must never serve.
    pub fn is_clean_but_wrong(&self) -> bool {
        self.status == 200 && self.error.is_none() && self.first_difference.is_some()
    }
}

/// An error and its sources, one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Which manifest to render for [`RegistryClient::push_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    Docker,
    Oci,
}

/// A client for one registry base URL (`http://127.0.0.1:PORT`).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    auth: Option<Credentials>,
    bearer: Option<String>,
}

impl RegistryClient {
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy() // loopback only, whatever the environment says
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_else(|e| panic!("cannot build a reqwest client: {e}"));
        Self {
            base: base_url.into().trim_end_matches('/').to_owned(),
            http,
            auth: None,
            bearer: None,
        }
    }

    /// Sends HTTP Basic credentials with every request.
    pub fn with_basic_auth(mut self, creds: Credentials) -> Self {
        self.auth = Some(creds);
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request (instead of
    /// Basic credentials).
    pub fn with_bearer(mut self, token: impl Into<String>) -> Self {
        self.auth = None;
        self.bearer = Some(token.into());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Any request; `path` starts with `/` (or is an absolute URL). Transport
    /// failures (refused, dropped connection) are `Err`.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Fetched, reqwest::Error> {
        let mut request = self.build(method, path, headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok(Fetched {
            status,
            headers,
            body,
        })
    }

    /// The request for `path` (relative to the registry, or an absolute URL such
    /// as an upload `Location`) with `headers` and this client's credentials.
    fn build(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut request = self.http.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(creds) = &self.auth {
            request = request.basic_auth(&creds.username, Some(&creds.password));
        }
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Sends a request and returns the response with its body unread, for
    /// tests that stream (and maybe abandon) large bodies.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response, reqwest::Error> {
        let request = self.build(method, path, headers);
        request.send().await
    }

    /// `GET` with `headers`, comparing the body as it streams in with
    /// `expected` (nothing is kept in memory; comparing is much faster than
    /// hashing in an unoptimised test build). A transport error *after* the
    /// headers is reported in [`Streamed::error`], with the bytes that did
    /// arrive counted.
    pub async fn get_compared(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        expected: &[u8],
    ) -> Result<Streamed, reqwest::Error> {
        let mut response = self.send(reqwest::Method::GET, path, headers).await?;
        let status = response.status().as_u16();
        let response_headers = response.headers().clone();
        let mut len = 0usize;
        let mut first_difference = None;
        let mut error = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if first_difference.is_none() {
                        let want = expected.get(len..(len + chunk.len()).min(expected.len()));
                        if want != Some(&chunk[..]) {
                            let at = want
                                .and_then(|w| w.iter().zip(&chunk[..]).position(|(a, b)| a != b))
                                .unwrap_or_else(|| expected.len().saturating_sub(len));
                            first_difference = Some((len + at) as u64);
                        }
                    }
                    len += chunk.len();
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(error_chain(&e));
                    break;
                }
            }
        }
        if first_difference.is_none() && len < expected.len() {
            first_difference = Some(len as u64);
        }
        Ok(Streamed {
            status,
            headers: response_headers,
            len: len as u64,
            first_difference,
            error,
        })
    }

    /// `GET /v2/<repo>/manifests/<reference>`, one `Accept` line per entry
    /// (none when `accept` is empty).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<Fetched, reqwest::Error> {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        self.request(
            reqwest::Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &headers,
            None,
        )
        .await
    }

    /// `GET /v2/<repo>/blobs/<digest>`.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Fetched, reqwest::Error> {
        self.request(
            reqwest::Method::GET,
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            None,
        )
        .await
    }

    /// Uploads `bytes` as a blob (monolithic upload) unless it is already
    /// there; returns its digest.
    ///
    /// # Panics
    /// On any failure, with the registry's answer.
    pub async fn push_blob(&self, repo: &str, bytes: Bytes) -> String {
        let digest = sha256_digest(&bytes);
        let head = self
            .request(
                reqwest::Method::HEAD,
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("HEAD blob {digest} in {repo}: {e}"));
        if head.status == 200 {
            return digest;
        }
        let started = self
            .request(
                reqwest::Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("starting an upload to {repo}: {e}"));
        assert_eq!(
            started.status,
            202,
            "POST /v2/{repo}/blobs/uploads/: {}",
            started.text()
        );
        let location = started
            .header("location")
            .unwrap_or_else(|| panic!("upload to {repo} answered without Location"));
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{separator}digest={digest}");
        let done = self
            .request(
                reqwest::Method::PUT,
                &put,
                &[("content-type", "application/octet-stream")],
                Some(bytes),
            )
            .await
            .unwrap_or_else(|e| panic!("finishing the upload of {digest} to {repo}: {e}"));
        assert_eq!(
            done.status,
            201,
            "PUT blob {digest} to {repo}: {}",
            done.text()
        );
        digest
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `content_type`; returns
    /// the answer whatever its status.
    ///
    /// # Panics
    /// On a transport failure.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: &str,
        body: &[u8],
    ) -> Fetched {
        self.request(
            reqwest::Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", content_type)],
            Some(Bytes::copy_from_slice(body)),
        )
        .await
        .unwrap_or_else(|e| panic!("PUT manifest {repo}:{reference}: {e}"))
    }

    /// [`RegistryClient::put_manifest`] that must succeed (201); returns the
    /// `Docker-Content-Digest`, checked against the bytes' sha256.
    ///
    /// # Panics
    /// When the registry refuses the manifest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: &str,
        body: &[u8],
    ) -> String {
        let answer = self.put_manifest(repo, reference, content_type, body).await;
        assert_eq!(
            answer.status,
            201,
            "PUT manifest {repo}:{reference} ({content_type}): {}",
            answer.text()
        );
        let digest = sha256_digest(body);
        assert_eq!(answer.digest(), Some(digest.as_str()), "registry digest");
        digest
    }

    /// Pushes the image's blobs (config and non-foreign layers, in parallel)
    /// and then its manifest under `reference`; returns the manifest digest.
    pub async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        image: &Image,
        format: ManifestFormat,
    ) -> String {
        self.push_blobs(repo, image).await;
        let (content_type, manifest) = match format {
            ManifestFormat::Docker => (media::DOCKER_MANIFEST, image.docker_manifest()),
            ManifestFormat::Oci => (media::OCI_MANIFEST, image.oci_manifest()),
        };
        self.push_manifest(repo, reference, content_type, &manifest)
            .await
    }

    /// Pushes the image's blobs only.
    pub async fn push_blobs(&self, repo: &str, image: &Image) {
        let uploads = image
            .blobs()
            .into_iter()
            .map(|(_, bytes)| self.push_blob(repo, bytes));
        futures_util::future::join_all(uploads).await;
    }

    /// Pushes every image by digest (as Docker manifests), then a Docker
    /// manifest list over `entries` under `tag`; returns the list digest.
    /// `entries` must describe the pushed images' Docker manifests (see
    /// [`ListEntry::docker`]).
    pub async fn push_docker_list(
        &self,
        repo: &str,
        tag: &str,
        images: &[&Image],
        entries: &[ListEntry],
    ) -> String {
        for image in images {
            let digest = sha256_digest(&image.docker_manifest());
            self.push_image(repo, &digest, image, ManifestFormat::Docker)
                .await;
        }
        let list = manifest_list(entries);
        self.push_manifest(repo, tag, media::DOCKER_LIST, &list)
            .await
    }
}

/// Headers as `(name, value)` pairs, for messages.
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").to_owned()))
        .collect()
}
