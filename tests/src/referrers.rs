//! [`ReferrersUpstream`]: a small registry that implements the OCI 1.1
//! referrers API (`GET /v2/<name>/referrers/<digest>`), which the Debian
//! `docker-registry` (distribution 2.8) lacks, so regcache's pass-through
//! path can be tested against an upstream that has it.
//!
//! It serves `/v2/` (200 `{}`) and the lists set with
//! [`ReferrersUpstream::set`], as a registry with the API does: an OCI index
//! with `Content-Type: application/vnd.oci.image.index.v1+json`, and the
//! empty index for a subject it knows nothing about (never 404). It honours
//! `?artifactType=` itself (with `OCI-Filters-Applied: artifactType`), so a
//! test can tell whether regcache forwarded a filter. A subject can also be
//! made to answer a bare status ([`ReferrersUpstream::fail`]), to claim a
//! filter it never got ([`ReferrersUpstream::claim_filters`]), or to answer
//! in pages linked by `Link: <…>; rel="next"` ([`ReferrersUpstream::paginate`]). Every request's
//! path and query is recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::http_server::{Body, ServerThread, full};
use crate::image::media;

/// How one subject answers.
#[derive(Debug, Clone, Default)]
struct Subject {
    descriptors: Vec<Value>,
    /// Answer this status (with no body) instead.
    fail: Option<u16>,
    /// Send `OCI-Filters-Applied` with this value even without a filter.
    claimed_filters: Option<String>,
    /// Answer this many descriptors per page (`?page=N`, from 0), with a
    /// `Link: <…?page=N+1>; rel="next"` while more remain.
    page_size: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    /// By `(repository, subject digest)`.
    subjects: HashMap<(String, String), Subject>,
    /// Path and query of every request, in order.
    requests: Vec<String>,
}

/// A running referrers-API registry; stops on drop.
#[derive(Debug)]
pub struct ReferrersUpstream {
    state: Arc<Mutex<State>>,
    server: ServerThread,
}

impl ReferrersUpstream {
    pub fn start() -> ReferrersUpstream {
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let server = ServerThread::spawn("referrers-upstream", move |req| {
            let state = shared.clone();
            async move {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
                state.lock().unwrap().requests.push(pq);
                answer(&state, req.method(), req.uri().path(), req.uri().query())
            }
        });
        ReferrersUpstream { state, server }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The referrers of `subject` in `repo`: these descriptors.
    pub fn set(&self, repo: &str, subject: &str, descriptors: Vec<Value>) {
        self.subject(repo, subject, |s| s.descriptors = descriptors);
    }

    /// `subject` in `repo` answers `status` with no body.
    pub fn fail(&self, repo: &str, subject: &str, status: u16) {
        self.subject(repo, subject, |s| s.fail = Some(status));
    }

    /// `subject` in `repo` answers with `OCI-Filters-Applied: <filters>`.
    pub fn claim_filters(&self, repo: &str, subject: &str, filters: &str) {
        self.subject(repo, subject, |s| s.claimed_filters = Some(filters.into()));
    }

    /// `subject` in `repo` answers in pages of `size` descriptors.
    pub fn paginate(&self, repo: &str, subject: &str, size: usize) {
        self.subject(repo, subject, |s| s.page_size = Some(size.max(1)));
    }

    fn subject(&self, repo: &str, subject: &str, f: impl FnOnce(&mut Subject)) {
        let mut state = self.state.lock().unwrap();
        f(state
            .subjects
            .entry((repo.to_owned(), subject.to_owned()))
            .or_default());
    }

    /// Requests for `subject`'s referrers so far (any repository, any query).
    pub fn referrers_requests(&self, subject: &str) -> Vec<String> {
        let needle = format!("/referrers/{subject}");
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.contains(&needle))
            .cloned()
            .collect()
    }
}

/// A descriptor of an artifact manifest of `artifact_type`.
pub fn artifact_descriptor(digest: &str, size: u64, artifact_type: &str) -> Value {
    json!({
        "mediaType": media::OCI_MANIFEST,
        "digest": digest,
        "size": size,
        "artifactType": artifact_type,
        "annotations": {"org.opencontainers.image.created": "2020-01-01T00:00:00Z"},
    })
}

fn answer(
    state: &Mutex<State>,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Response<Body> {
    if path == "/v2/" || path == "/v2" {
        return json_answer(StatusCode::OK, "application/json", b"{}".to_vec());
    }
    let Some((repo, subject)) = path
        .strip_prefix("/v2/")
        .and_then(|rest| rest.rsplit_once("/referrers/"))
    else {
        return json_answer(
            StatusCode::NOT_FOUND,
            "application/json",
            br#"{"errors":[{"code":"NAME_UNKNOWN","message":"no such repository"}]}"#.to_vec(),
        );
    };
    if method != Method::GET && method != Method::HEAD {
        return json_answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            Vec::new(),
        );
    }
    let s = state
        .lock()
        .unwrap()
        .subjects
        .get(&(repo.to_owned(), subject.to_owned()))
        .cloned()
        .unwrap_or_default();
    if let Some(status) = s.fail {
        return json_answer(
            StatusCode::from_u16(status).unwrap(),
            "text/plain",
            Vec::new(),
        );
    }
    let filter = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("artifactType="))
            .map(|v| v.replace("%2F", "/").replace("%2B", "+"))
    });
    let manifests: Vec<Value> = match &filter {
        Some(t) => s
            .descriptors
            .into_iter()
            .filter(|d| d["artifactType"] == t.as_str())
            .collect(),
        None => s.descriptors,
    };
    let (manifests, next) = match s.page_size {
        Some(size) => {
            let page: usize = query
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("page=")))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let more = manifests.len() > (page + 1) * size;
            let slice = manifests.into_iter().skip(page * size).take(size).collect();
            (slice, more.then(|| format!("{path}?page={}", page + 1)))
        }
        None => (manifests, None),
    };
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap();
    let mut r = json_answer(StatusCode::OK, media::OCI_INDEX, body);
    let filters = match (filter, s.claimed_filters) {
        (Some(_), _) => Some("artifactType".to_owned()),
        (None, claimed) => claimed,
    };
    if let Some(next) = next {
        r.headers_mut().insert(
            hyper::header::LINK,
            format!("<{next}>; rel=\"next\"").parse().unwrap(),
        );
    }
    if let Some(f) = filters {
        r.headers_mut()
            .insert("oci-filters-applied", f.parse().unwrap());
    }
    r
}

fn json_answer(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, content_type.parse().unwrap());
    h.insert(hyper::header::CONTENT_LENGTH, len.into());
    h.insert(
        "docker-distribution-api-version",
        "registry/2.0".parse().unwrap(),
    );
    r
}
