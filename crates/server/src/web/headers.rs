//! Header rewriting for answers relayed from an upstream: `Location` and
//! `Link` point back at regcache, so clients continue through it.

use http::{HeaderMap, header};

pub fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, names: &[header::HeaderName]) {
    for n in names {
        if let Some(v) = from.get(n) {
            to.insert(n.clone(), v.clone());
        }
    }
}

/// `http://upstream:5000/v2/x?_state=…` → `/v2/x?_state=…`: clients resolve a
/// relative `Location` against regcache, so the upload continues through it.
pub fn strip_origin(loc: &str) -> String {
    match url::Url::parse(loc) {
        Ok(u) => {
            let mut s = u.path().to_owned();
            if let Some(q) = u.query() {
                s.push('?');
                s.push_str(q);
            }
            s
        }
        Err(_) => loc.to_owned(),
    }
}

/// Rewrite every `<URL>` in a `Link` header to a path on regcache:
/// `client_path` maps an upstream path to the one the client must use.
pub fn rewrite_link(link: &str, client_path: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(link.len());
    let mut rest = link;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        out.push_str(&rest[..=open]);
        out.push_str(&client_path(&strip_origin(&rest[open + 1..open + close])));
        out.push('>');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}
