//! Recovering the canonical payload of a signed ("pretty JWS") Schema 1
//! manifest, written independently of `regcache_formats` from spec 04 §4.5,
//! so the differential tests don't check regcache against itself:
//!
//! ```text
//! for each signature: ph = b64u_decode(protected) as JSON;
//!     fl = ph.formatLength, ft = b64u_decode(ph.formatTail)   (all must agree)
//! payload = S[0 : fl] ++ ft
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// The canonical payload of the signed manifest `signed`.
pub fn payload_of(signed: &[u8]) -> Result<Vec<u8>, String> {
    let doc: Value =
        serde_json::from_slice(signed).map_err(|e| format!("signed manifest is not JSON: {e}"))?;
    let signatures = doc["signatures"]
        .as_array()
        .filter(|s| !s.is_empty())
        .ok_or("no `signatures` array")?;
    let mut format: Option<(usize, Vec<u8>)> = None;
    for signature in signatures {
        let protected = signature["protected"]
            .as_str()
            .ok_or("a signature has no `protected` string")?;
        let header = b64u_decode(protected)?;
        let header: Value = serde_json::from_slice(&header)
            .map_err(|e| format!("protected header is not JSON: {e}"))?;
        let length = header["formatLength"]
            .as_u64()
            .ok_or("protected header has no numeric `formatLength`")?;
        let length = usize::try_from(length).map_err(|_| "formatLength too large")?;
        let tail = header["formatTail"]
            .as_str()
            .ok_or("protected header has no `formatTail` string")?;
        let tail = b64u_decode(tail)?;
        match &format {
            None => format = Some((length, tail)),
            Some(seen) if *seen == (length, tail.clone()) => {}
            Some(_) => return Err("signatures disagree on formatLength/formatTail".into()),
        }
    }
    let (length, tail) = format.ok_or("no signatures")?;
    if length > signed.len() {
        return Err(format!(
            "formatLength {length} exceeds the document ({} bytes)",
            signed.len()
        ));
    }
    let mut payload = signed[..length].to_vec();
    payload.extend_from_slice(&tail);
    Ok(payload)
}

/// The decoded protected headers of every signature (for checks on `time`).
pub fn protected_headers(signed: &[u8]) -> Result<Vec<Value>, String> {
    let doc: Value = serde_json::from_slice(signed).map_err(|e| e.to_string())?;
    doc["signatures"]
        .as_array()
        .ok_or("no `signatures` array")?
        .iter()
        .map(|s| {
            let p = s["protected"].as_str().ok_or("no `protected`")?;
            serde_json::from_slice(&b64u_decode(p)?).map_err(|e| e.to_string())
        })
        .collect()
}

/// base64url without padding (a trailing `=` is tolerated).
fn b64u_decode(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("bad base64url {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signed sample from spec 04 §4.4 is not vendored here; build one
    /// by hand instead: payload `{\n   "a": 1\n}` signed with a fake signature.
    #[test]
    fn recovers_the_payload() {
        let payload = b"{\n   \"a\": 1\n}";
        let length = payload.len() - 2;
        let protected = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"formatLength":{length},"formatTail":"Cn0","time":"2026-01-01T00:00:00Z"}}"#
        ));
        let signed = format!(
            "{},\n   \"signatures\": [\n      {{\n         \"signature\": \"x\",\n         \"protected\": \"{protected}\"\n      }}\n   ]\n}}",
            std::str::from_utf8(&payload[..length]).unwrap()
        );
        assert_eq!(payload_of(signed.as_bytes()).unwrap(), payload);
        assert_eq!(
            protected_headers(signed.as_bytes()).unwrap()[0]["formatTail"],
            "Cn0"
        );
    }

    #[test]
    fn rejects_unsigned() {
        assert!(payload_of(b"{\"schemaVersion\":1}").is_err());
    }
}
