//! Registry authentication (spec §5.9): `WWW-Authenticate` parsing, the
//! token response, and the per-scope token cache.
//!
//! The cache is keyed by [`Scope`] within one [`crate::UpstreamClient`] (so per
//! (upstream, scope)). Each scope has a slot guarded by an async mutex: the
//! first caller that needs a token fetches it while later callers for the
//! same scope wait and then reuse it, so a burst of requests for a new
//! repository costs one token request. If the fetching future is dropped
//! the lock is released and the next waiter fetches.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use url::Url;

use crate::config::Secret;
use crate::scope::Scope;

/// One parsed challenge: lowercased scheme and lowercased parameter names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parse one `WWW-Authenticate` value into its challenges (RFC 9110 §11.6.1:
/// `scheme param=value, param="quoted \"value\""`, possibly several
/// challenges in one value). Parameter names and schemes are
/// case-insensitive; a token68 after the scheme is skipped.
pub(crate) fn parse_challenges(value: &str) -> Vec<Challenge> {
    let b = value.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let is_sep = |c: u8| c == b' ' || c == b'\t' || c == b',';
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        while i < b.len() && is_sep(b[i]) {
            i += 1;
        }
        let start = i;
        while i < b.len() && !is_sep(b[i]) && b[i] != b'=' {
            i += 1;
        }
        if i == start {
            break;
        }
        let scheme = value[start..i].to_ascii_lowercase();
        let mut params = HashMap::new();
        loop {
            while i < b.len() && is_sep(b[i]) {
                i += 1;
            }
            let name_start = i;
            while i < b.len() && !is_sep(b[i]) && b[i] != b'=' {
                i += 1;
            }
            let name_end = i;
            skip_ws(&mut i);
            if name_end == name_start || i >= b.len() || b[i] != b'=' {
                if name_end == name_start && i < b.len() && b[i] == b'=' {
                    // Stray '=' (token68 padding): skip it.
                    while i < b.len() && b[i] == b'=' {
                        i += 1;
                    }
                    continue;
                }
                // Not a parameter: the next challenge's scheme (or the end).
                i = name_start;
                break;
            }
            i += 1; // '='
            skip_ws(&mut i);
            let mut val = String::new();
            if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut chars = value[i..].char_indices();
                let mut consumed = value.len() - i;
                while let Some((off, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                val.push(n);
                            }
                        }
                        '"' => {
                            consumed = off + 1;
                            break;
                        }
                        c => val.push(c),
                    }
                }
                i += consumed;
            } else {
                let vs = i;
                while i < b.len() && !is_sep(b[i]) {
                    i += 1;
                }
                val.push_str(&value[vs..i]);
            }
            if name_end > name_start && value.is_char_boundary(name_start) {
                params.insert(value[name_start..name_end].to_ascii_lowercase(), val);
            }
        }
        out.push(Challenge { scheme, params });
    }
    out
}

/// What the registry told us about how to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AuthMode {
    /// Not challenged yet: send requests without `Authorization`.
    Unknown,
    /// `/v2/` answered without a challenge: no credentials needed so far
    /// (a later `401` still switches to Basic or Bearer).
    Open,
    /// `Basic` challenge: send the configured credentials to the registry.
    Basic,
    /// `Bearer` challenge: get tokens from `realm`.
    Bearer(BearerRealm),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BearerRealm {
    pub realm: Url,
    pub service: Option<String>,
}

/// Whether a token realm may receive the upstream's credentials (the trust
/// boundary of [`crate::ClientConfig::auth_realms`]): the upstream's own
/// origin always may; another host only when the operator listed it, and
/// then over `https`, or over plain `http` only when the upstream itself is
/// plain `http` on the same host. `Err` says why not, for the log and for
/// the error a refused token request turns into.
pub(crate) fn realm_trust(realm: &Url, upstream: &Url, allowed: &[String]) -> Result<(), String> {
    if realm.origin() == upstream.origin() {
        return Ok(());
    }
    let host = realm.host_str().unwrap_or_default();
    let port = realm.port_or_known_default();
    let listed = allowed.iter().any(|entry| {
        let (h, p) = split_host_port(entry.trim());
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .eq_ignore_ascii_case(host.trim_start_matches('[').trim_end_matches(']'))
            && p.is_none_or(|p| p.parse::<u16>().ok() == port)
    });
    if !listed {
        return Err(format!(
            "token realm {host} is neither the upstream's origin nor listed in auth_realms"
        ));
    }
    if realm.scheme() == "https" {
        return Ok(());
    }
    if upstream.scheme() == "http" && upstream.host_str() == realm.host_str() {
        return Ok(());
    }
    Err(format!(
        "token realm {host} is plain http (credentials go in clear text only to the upstream's own host, when it is plain http itself)"
    ))
}

/// `host` and the optional port of `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(entry: &str) -> (&str, Option<&str>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (rest, None),
        };
    }
    match entry.split_once(':') {
        Some((h, p)) if !p.contains(':') => (h, Some(p)),
        _ => (entry, None),
    }
}

/// A token as the client keeps it.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub secret: Secret,
    /// Reuse until this instant (expiry minus a safety margin).
    pub usable_until: Instant,
}

impl Token {
    pub fn usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

/// The JSON answer of a token realm. No `Debug`: it holds raw tokens.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Number>,
    #[serde(default)]
    issued_at: Option<String>,
}

/// Default and minimum token lifetime (spec §5.9).
const MIN_EXPIRES_IN: u64 = 60;

impl TokenResponse {
    /// Turn the response into a [`Token`]. `access_token` wins when both are
    /// present (as distribution's client does); lifetime defaults to and is
    /// at least 60 s. Returns `None` without a non-empty token.
    pub fn into_token(self, received: Instant, now_utc: time::OffsetDateTime) -> Option<Token> {
        let secret = self
            .access_token
            .filter(|t| !t.is_empty())
            .or(self.token.filter(|t| !t.is_empty()))?;
        let expires_in = self
            .expires_in
            .and_then(|n| n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)))
            .unwrap_or(MIN_EXPIRES_IN)
            .max(MIN_EXPIRES_IN);
        // Seconds already elapsed since issue. A clock that disagrees with
        // ours (issue time in the future, or older than the lifetime) is
        // skew, not expiry: then count from receipt.
        let elapsed = self
            .issued_at
            .as_deref()
            .and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|issued| (now_utc - issued).whole_seconds())
            .filter(|e| *e >= 0 && (*e as u64) < expires_in)
            .unwrap_or(0) as u64;
        let remaining = expires_in - elapsed;
        // Margin: a fifth of the lifetime, at most 30 s.
        let margin = (expires_in / 5).min(30);
        let usable = Duration::from_secs(remaining.saturating_sub(margin));
        Some(Token {
            secret: Secret::new(secret),
            usable_until: received + usable,
        })
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Tokens per scope. `Debug` lists scopes and expiry, never tokens.
#[derive(Default)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<Scope, Slot>>,
}

/// Above this many scopes, expired and idle slots are pruned on insert.
const PRUNE_ABOVE: usize = 1024;

impl TokenCache {
    /// The slot for `scope`, created on first use.
    pub fn slot(&self, scope: &Scope) -> Slot {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(scope) {
            return slot.clone();
        }
        if slots.len() >= PRUNE_ABOVE {
            let now = Instant::now();
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(guard) => guard.as_ref().is_some_and(|t| t.usable(now)),
                Err(_) => true, // a fetch is running
            });
        }
        let slot = Slot::default();
        slots.insert(scope.clone(), slot.clone());
        slot
    }

    /// A usable cached token, without waiting for a running fetch.
    pub fn peek(&self, scope: &Scope) -> Option<Secret> {
        let slot = self.slots.lock().get(scope)?.clone();
        let guard = slot.try_lock().ok()?;
        guard
            .as_ref()
            .filter(|t| t.usable(Instant::now()))
            .map(|t| t.secret.clone())
    }

    /// Drop every cached token (e.g. after credentials changed).
    pub fn clear(&self) {
        self.slots.lock().clear();
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slots = self.slots.lock();
        let now = Instant::now();
        let mut m = f.debug_map();
        for (scope, slot) in slots.iter() {
            match slot.try_lock() {
                Ok(guard) => match guard.as_ref() {
                    Some(t) => m.entry(
                        &scope.as_str(),
                        &format_args!(
                            "token=<redacted> usable_for={:?}",
                            t.usable_until.saturating_duration_since(now)
                        ),
                    ),
                    None => m.entry(&scope.as_str(), &"empty"),
                },
                Err(_) => m.entry(&scope.as_str(), &"fetching"),
            };
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn parses_case_quotes_and_several_challenges() {
        let c = parse_challenges(
            r#"BEARER Realm="http://h/t?x=1", SERVICE=reg , scope="a b",error="insufficient_scope", Basic realm="q\"uote\\d""#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("http://h/t?x=1"));
        assert_eq!(c[0].param("service"), Some("reg"));
        assert_eq!(c[0].param("scope"), Some("a b"));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));
        assert_eq!(c[1].scheme, "basic");
        assert_eq!(c[1].param("realm"), Some(r#"q"uote\d"#));
        assert_eq!(parse_challenges("Basic").len(), 1);
        assert_eq!(parse_challenges("Negotiate abc==, Basic realm=x").len(), 2);
        assert!(parse_challenges("").is_empty());
        // Unterminated quote and non-ASCII do not panic.
        assert_eq!(parse_challenges("Bearer realm=\"é").len(), 1);
        assert_eq!(parse_challenges("Bearer é=\"x\"")[0].param("é"), Some("x"));
    }

    #[test]
    fn realm_trust_boundary() {
        let u = |s: &str| Url::parse(s).unwrap();
        let hub = u("https://registry-1.docker.io");
        let listed = ["auth.docker.io".to_owned()];
        // The upstream's own origin: always.
        assert!(realm_trust(&u("https://registry-1.docker.io/token"), &hub, &[]).is_ok());
        // Another host: only when listed.
        assert!(realm_trust(&u("https://auth.docker.io/token"), &hub, &[]).is_err());
        assert!(realm_trust(&u("https://auth.docker.io/token"), &hub, &listed).is_ok());
        assert!(realm_trust(&u("https://AUTH.docker.io/token"), &hub, &listed).is_ok());
        assert!(realm_trust(&u("https://evil.example/token"), &hub, &listed).is_err());
        // Listed but plain http while the upstream is https: refused.
        assert!(realm_trust(&u("http://auth.docker.io/token"), &hub, &listed).is_err());
        // Same scheme and host but another port is another origin.
        let local = u("http://127.0.0.1:5000");
        assert!(realm_trust(&u("http://127.0.0.1:6000/token"), &local, &[]).is_err());
        // host:port entries match that port only; plain http on the
        // upstream's own (plain http) host is allowed once listed.
        let port_listed = ["127.0.0.1:6000".to_owned()];
        assert!(realm_trust(&u("http://127.0.0.1:6000/token"), &local, &port_listed).is_ok());
        assert!(realm_trust(&u("http://127.0.0.1:6001/token"), &local, &port_listed).is_err());
        // A bare host matches any port.
        assert!(
            realm_trust(
                &u("http://127.0.0.1:6001/token"),
                &local,
                &["127.0.0.1".into()]
            )
            .is_ok()
        );
        // Plain http to another host, even listed: refused.
        assert!(
            realm_trust(
                &u("http://127.0.0.2:6000/token"),
                &local,
                &["127.0.0.2".into()]
            )
            .is_err()
        );
        // Over https another listed host is fine for a plain http upstream.
        assert!(
            realm_trust(
                &u("https://127.0.0.2:6000/token"),
                &local,
                &["127.0.0.2".into()]
            )
            .is_ok()
        );
    }

    fn response(json: &str) -> TokenResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn token_lifetimes() {
        let now = Instant::now();
        let utc = time::OffsetDateTime::now_utc();
        // Defaults to 60 s, margin 12 s.
        let t = response(r#"{"token":"a"}"#).into_token(now, utc).unwrap();
        assert_eq!(t.secret.expose(), "a");
        assert_eq!(t.usable_until - now, Duration::from_secs(48));
        // Below the minimum counts as 60.
        let t = response(r#"{"token":"a","expires_in":5}"#)
            .into_token(now, utc)
            .unwrap();
        assert_eq!(t.usable_until - now, Duration::from_secs(48));
        // access_token wins; 300 s minus 30 s margin.
        let t = response(r#"{"token":"a","access_token":"b","expires_in":300}"#)
            .into_token(now, utc)
            .unwrap();
        assert_eq!(t.secret.expose(), "b");
        assert_eq!(t.usable_until - now, Duration::from_secs(270));
        // issued 50 s ago, 60 s lifetime: 10 s left, below the margin.
        let issued = (utc - time::Duration::seconds(50))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let t = response(&format!(
            r#"{{"token":"a","expires_in":60,"issued_at":"{issued}"}}"#
        ))
        .into_token(now, utc)
        .unwrap();
        assert!(!t.usable(now));
        // Issued in the future (skew): counted from receipt.
        let t = response(r#"{"token":"a","expires_in":60,"issued_at":"2999-01-01T00:00:00Z"}"#)
            .into_token(now, utc)
            .unwrap();
        assert_eq!(t.usable_until - now, Duration::from_secs(48));
        assert!(response(r#"{"token":""}"#).into_token(now, utc).is_none());
        assert!(response(r#"{}"#).into_token(now, utc).is_none());
    }

    #[tokio::test]
    async fn cache_debug_redacts() {
        let cache = TokenCache::default();
        let slot = cache.slot(&Scope::pull("a"));
        *slot.lock().await = Some(Token {
            secret: Secret::new("tok-SECRET-123"),
            usable_until: Instant::now() + Duration::from_secs(60),
        });
        let dbg = format!("{cache:?}");
        assert!(dbg.contains("repository:a:pull"), "{dbg}");
        assert!(!dbg.contains("tok-SECRET-123"), "{dbg}");
        assert_eq!(
            cache.peek(&Scope::pull("a")).unwrap().expose(),
            "tok-SECRET-123"
        );
        assert!(cache.peek(&Scope::pull("b")).is_none());
    }
}
