//! A token server for distribution's `auth: token:` mode (spec 05 §5.9).
//!
//! It owns a P-256 key and a self-signed certificate for it (written as the
//! registry's `rootcertbundle`), answers `GET /token?service=…&scope=…`
//! with an ES256 JWT that distribution 2.8 accepts, and records every token
//! request.
//!
//! distribution finds the verification key in the JWT header: from `x5c`
//! (the chain must verify against the bundle) or from `kid`, which must be
//! the libtrust key id of a certificate's key in the bundle. Both are
//! supported ([`TokenSigning`]); claims are `iss`, `sub`, `aud` (the service),
//! `exp`, `nbf`, `iat`, `jti` and `access: [{type, name, actions}]`.
//!
//! ```no_run
//! use regcache_tests::token::{TokenServer, TokenServerOptions};
//! use regcache_tests::{Credentials, Registry, RegistryOptions};
//! let tokens = TokenServer::start(TokenServerOptions::with_user(Credentials::new("u", "p")));
//! let registry = Registry::start(RegistryOptions {
//!     token_auth: Some(tokens.registry_auth()),
//!     ..RegistryOptions::default()
//! });
//! ```
//!
//! Authenticated users (HTTP Basic, checked against the configured users) get
//! every action they ask for; anonymous requests get `pull` only when
//! [`TokenServerOptions::anonymous_pull`] is set, else 401. Wrong credentials
//! are always 401.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::EncodePrivateKey as _;
use serde_json::{Value, json};

use crate::http_server::{Body, ServerThread, full};
use crate::registry::Credentials;

/// How the JWT names its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenSigning {
    /// `kid` = libtrust key id of the certificate's key.
    #[default]
    KeyId,
    /// `x5c` = `[base64 DER of the certificate]`.
    CertChain,
}

/// What the token server accepts and issues.
#[derive(Debug, Clone)]
pub struct TokenServerOptions {
    /// `service` (the JWT `aud`), also the registry's `auth.token.service`.
    pub service: String,
    /// `iss`, also the registry's `auth.token.issuer`.
    pub issuer: String,
    /// Users allowed every action.
    pub users: Vec<Credentials>,
    /// Whether requests without credentials get `pull`.
    pub anonymous_pull: bool,
    /// Per-user repository grants, `(user, repository)`; a repository
    /// ending in `/*` covers every name under that prefix. `None`: every
    /// user gets every repository. With grants, a user gets no action on a
    /// repository not granted to them (the token is issued, its `access`
    /// empty, so the registry answers 401 `insufficient_scope`).
    pub grants: Option<Vec<(String, String)>>,
    pub signing: TokenSigning,
    /// `expires_in` of issued tokens, seconds.
    pub expires_in: u64,
    /// Seed of the signing key.
    pub key_seed: u64,
}

impl Default for TokenServerOptions {
    fn default() -> Self {
        Self {
            service: "regcache-tests-registry".into(),
            issuer: "regcache-tests-token-issuer".into(),
            users: Vec::new(),
            anonymous_pull: false,
            grants: None,
            signing: TokenSigning::KeyId,
            expires_in: 300,
            key_seed: 0x70_6b_65_6e,
        }
    }
}

impl TokenServerOptions {
    /// Defaults with one user.
    pub fn with_user(user: Credentials) -> Self {
        Self {
            users: vec![user],
            ..Self::default()
        }
    }
}

/// The registry's `auth.token` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// PEM certificate(s) whose keys sign tokens.
    pub rootcertbundle: PathBuf,
}

/// One token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The Basic user, if credentials were sent (right or wrong).
    pub user: Option<String>,
    pub service: Option<String>,
    /// Every `scope` parameter, each split on spaces.
    pub scopes: Vec<String>,
    /// 200 or 401.
    pub status: u16,
}

struct Issuer {
    options: TokenServerOptions,
    key: p256::ecdsa::SigningKey,
    cert_der: Vec<u8>,
    kid: String,
    next_jti: AtomicU64,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A running token server; stops on drop.
#[derive(Debug)]
pub struct TokenServer {
    issuer: Arc<Issuer>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    cert_path: PathBuf,
    server: ServerThread,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Generates the key and certificate and starts serving `/token`.
    ///
    /// # Panics
    /// When the certificate cannot be made or written.
    pub fn start(options: TokenServerOptions) -> TokenServer {
        let secret = crate::keys::p256_key(options.key_seed);
        let pkcs8 = secret
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .unwrap_or_else(|e| panic!("cannot encode the token key as PKCS#8: {e}"));
        let key_pair = rcgen::KeyPair::from_pem(&pkcs8)
            .unwrap_or_else(|e| panic!("rcgen cannot load the token key: {e}"));
        let mut params = rcgen::CertificateParams::new(vec!["regcache-tests-token".to_owned()])
            .unwrap_or_else(|e| panic!("certificate parameters: {e}"));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "regcache-tests token issuer");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params
            .self_signed(&key_pair)
            .unwrap_or_else(|e| panic!("cannot self-sign the token certificate: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("regcache-token-")
            .tempdir()
            .unwrap();
        let cert_path = dir.path().join("token-root.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();

        let key = p256::ecdsa::SigningKey::from(&secret);
        let point = secret.public_key().to_encoded_point(false);
        let kid = regcache_formats::jws::key_id_from_xy(
            &URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            &URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        )
        .unwrap_or_else(|e| panic!("libtrust key id of the token key: {e}"));
        let issuer = Arc::new(Issuer {
            options,
            key,
            cert_der: cert.der().to_vec(),
            kid,
            next_jti: AtomicU64::new(1),
        });
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (handler_issuer, handler_requests) = (Arc::clone(&issuer), Arc::clone(&requests));
        let server = ServerThread::spawn("token-server", move |request| {
            let response = answer(&handler_issuer, &handler_requests, &request);
            async move { response }
        });
        TokenServer {
            issuer,
            requests,
            cert_path,
            server,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.server.addr())
    }

    /// `host:port` of [`TokenServer::realm`].
    pub fn authority(&self) -> String {
        let realm = self.realm();
        let rest = realm.split_once("://").map_or(realm.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_owned()
    }

    pub fn service(&self) -> &str {
        &self.issuer.options.service
    }

    /// The PEM certificate of the signing key.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The libtrust key id of the signing key.
    pub fn key_id(&self) -> &str {
        &self.issuer.kid
    }

    /// What to put in [`crate::RegistryOptions::token_auth`].
    pub fn registry_auth(&self) -> TokenAuth {
        TokenAuth {
            realm: self.realm(),
            service: self.issuer.options.service.clone(),
            issuer: self.issuer.options.issuer.clone(),
            rootcertbundle: self.cert_path.clone(),
        }
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many token requests were made.
    pub fn request_count(&self) -> usize {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Mints a token for `subject` with `scopes` (`repository:NAME:ACTIONS`),
    /// as the HTTP endpoint would for a user.
    pub fn mint(&self, subject: &str, scopes: &[&str]) -> String {
        let access: Vec<Value> = scopes
            .iter()
            .filter_map(|s| access_entry(s, None))
            .collect();
        self.issuer.jwt(subject, &access)
    }
}

impl Issuer {
    fn jwt(&self, subject: &str, access: &[Value]) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut header = json!({"typ": "JWT", "alg": "ES256"});
        match self.options.signing {
            TokenSigning::KeyId => header["kid"] = self.kid.clone().into(),
            TokenSigning::CertChain => header["x5c"] = json!([STANDARD.encode(&self.cert_der)]),
        }
        let claims = json!({
            "iss": self.options.issuer,
            "sub": subject,
            "aud": self.options.service,
            "exp": now + self.options.expires_in as i64,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("regcache-tests-{}", self.next_jti.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: p256::ecdsa::Signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// `type:name:actions` → `{type, name, actions}`, keeping only `allowed`
/// actions when given. The name may contain one `:` (a `host:port`), so the
/// type is split at the first `:` and the actions at the last (spec §5.9).
fn access_entry(scope: &str, allowed: Option<&[&str]>) -> Option<Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|a| !a.is_empty())
        .filter(|a| allowed.is_none_or(|allowed| allowed.contains(a)))
        .collect();
    Some(json!({"type": kind, "name": name, "actions": actions}))
}

fn answer(
    issuer: &Issuer,
    requests: &Mutex<Vec<TokenRequest>>,
    request: &Request<Incoming>,
) -> Response<Body> {
    let mut service = None;
    let mut scopes = Vec::new();
    for (key, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
    {
        match &*key {
            "service" => service = Some(value.into_owned()),
            "scope" => scopes.extend(value.split(' ').map(str::to_owned)),
            _ => {}
        }
    }
    let basic = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let user = basic.as_ref().map(|(u, _)| u.clone());
    let authenticated = basic.as_ref().is_some_and(|(u, p)| {
        issuer
            .options
            .users
            .iter()
            .any(|c| &c.username == u && &c.password == p)
    });
    let allowed: Option<&[&str]> = if authenticated {
        None
    } else if basic.is_none() && issuer.options.anonymous_pull {
        Some(&["pull"])
    } else {
        let mut response = Response::new(full(
            json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}).to_string(),
        ));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"regcache-tests-token\""),
        );
        record(requests, user, service, scopes, 401);
        return response;
    };
    if request.uri().path() != "/token" || service.as_deref() != Some(&issuer.options.service) {
        let mut response = Response::new(full("unknown service or path"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        record(requests, user, service, scopes, 400);
        return response;
    }
    let granted = |scope: &str| -> bool {
        let (Some(grants), Some(user)) = (&issuer.options.grants, &user) else {
            return true;
        };
        let name = scope
            .split_once(':')
            .and_then(|(_, rest)| rest.rsplit_once(':'))
            .map_or("", |(name, _)| name);
        grants.iter().any(|(u, repo)| {
            u == user
                && match repo.strip_suffix("/*") {
                    Some(prefix) => name
                        .strip_prefix(prefix)
                        .is_some_and(|r| r.starts_with('/')),
                    None => repo == name,
                }
        })
    };
    let access: Vec<Value> = scopes
        .iter()
        .filter(|s| !authenticated || granted(s))
        .filter_map(|s| access_entry(s, allowed))
        .collect();
    let subject = user.clone().unwrap_or_default();
    let token = issuer.jwt(&subject, &access);
    let issued_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": issuer.options.expires_in,
        "issued_at": issued_at,
    });
    record(requests, user, service, scopes, 200);
    let mut response = Response::new(full(body.to_string()));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn record(
    requests: &Mutex<Vec<TokenRequest>>,
    user: Option<String>,
    service: Option<String>,
    scopes: Vec<String>,
    status: u16,
) {
    requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(TokenRequest {
            user,
            service,
            scopes,
            status,
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;

    #[test]
    fn scopes_split_at_first_and_last_colon() {
        assert_eq!(
            access_entry("repository:127.0.0.1:5000/a/b:pull,push", None),
            Some(
                json!({"type": "repository", "name": "127.0.0.1:5000/a/b", "actions": ["pull", "push"]})
            )
        );
        assert_eq!(
            access_entry("repository:a:pull,push", Some(&["pull"])),
            Some(json!({"type": "repository", "name": "a", "actions": ["pull"]}))
        );
        assert_eq!(access_entry("nonsense", None), None);
    }

    #[test]
    fn minted_token_verifies_with_the_certificate_key() {
        let server = TokenServer::start(TokenServerOptions::default());
        let token = server.mint("alice", &["repository:a/b:pull"]);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], server.key_id());
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], server.service());
        assert_eq!(claims["access"][0]["name"], "a/b");
        let signature =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let key = *p256::ecdsa::SigningKey::from(&crate::keys::p256_key(
            TokenServerOptions::default().key_seed,
        ))
        .verifying_key();
        key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap();
        let pem = std::fs::read_to_string(server.cert_path()).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }
}
