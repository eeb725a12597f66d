//! The registry error envelope `{"errors":[{"code","message","detail"}]}` and
//! every error code of spec chapter 05 §5.10 with its HTTP status.
//!
//! Statuses are plain `u16`s so this crate needs no HTTP crate.

use serde::{Deserialize, Serialize};

/// Registry error codes (distribution 2.8 + OCI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unknown,
    Unsupported,
    Unauthorized,
    Denied,
    Unavailable,
    TooManyRequests,
    DigestInvalid,
    SizeInvalid,
    NameInvalid,
    TagInvalid,
    NameUnknown,
    ManifestUnknown,
    ManifestInvalid,
    ManifestUnverified,
    ManifestBlobUnknown,
    BlobUnknown,
    BlobUploadUnknown,
    BlobUploadInvalid,
    PaginationNumberInvalid,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::Unknown,
        ErrorCode::Unsupported,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unavailable,
        ErrorCode::TooManyRequests,
        ErrorCode::DigestInvalid,
        ErrorCode::SizeInvalid,
        ErrorCode::NameInvalid,
        ErrorCode::TagInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::ManifestUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnverified,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::PaginationNumberInvalid,
    ];

    /// The wire spelling (`MANIFEST_UNKNOWN`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnverified => "MANIFEST_UNVERIFIED",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
        }
    }

    /// Parse a wire code; clients must treat unknown codes as `UNKNOWN`.
    pub fn parse(s: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Unknown)
    }

    /// The HTTP status distribution 2.8 gives this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unknown => 500,
            ErrorCode::Unsupported => 405,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unavailable => 503,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::DigestInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::TagInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::ManifestUnverified
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::PaginationNumberInvalid => 400,
            ErrorCode::NameUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::BlobUploadInvalid => 404,
        }
    }

    /// distribution's default message for the code.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::Unknown => "unknown error",
            ErrorCode::Unsupported => "The operation is unsupported.",
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::Unavailable => "service unavailable",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            ErrorCode::SizeInvalid => "provided length did not match content length",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::TagInvalid => "manifest tag did not match URI",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::ManifestUnknown => "manifest unknown",
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::ManifestUnverified => "manifest failed signature verification",
            ErrorCode::ManifestBlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::BlobUploadInvalid => "blob upload invalid",
            ErrorCode::PaginationNumberInvalid => "invalid number of results requested",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

/// One entry of the envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistryError {
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl RegistryError {
    /// An error with the code's default message.
    pub fn new(code: ErrorCode) -> Self {
        RegistryError {
            code,
            message: code.default_message().to_owned(),
            detail: None,
        }
    }

    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        RegistryError {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// `{"errors":[…]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub errors: Vec<RegistryError>,
}

impl ErrorEnvelope {
    pub fn single(e: RegistryError) -> Self {
        ErrorEnvelope { errors: vec![e] }
    }

    /// distribution derives the status from the first error.
    pub fn status(&self) -> u16 {
        self.errors.first().map_or(500, |e| e.code.status())
    }

    /// The body as served: compact JSON and a trailing newline, as distribution writes it.
    pub fn to_body(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}"#.to_vec()
        });
        v.push(b'\n');
        v
    }

    /// Parse an upstream error body; `None` when it is not an envelope.
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice::<ErrorEnvelope>(body)
            .ok()
            .filter(|e| !e.errors.is_empty())
    }
}

/// Cut `s` to at most `limit` bytes (at a character boundary) plus `…`:
/// error messages quote their input, and may end up in a response body, so a
/// hostile input must not grow them without bound.
pub(crate) fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_at_a_char_boundary() {
        assert_eq!(truncate("short", 5), "short");
        assert_eq!(truncate("abcdef", 3), "abc…");
        // 'é' is two bytes: a cut inside it moves back.
        assert_eq!(truncate("aéb", 2), "a…");
        assert_eq!(truncate("aéb", 3), "aé…");
    }

    #[test]
    fn codes_round_trip_with_status() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), c);
            assert!((400..600).contains(&c.status()));
        }
        assert_eq!(ErrorCode::parse("SOMETHING_NEW"), ErrorCode::Unknown);
        assert_eq!(ErrorCode::BlobUploadInvalid.status(), 404);
    }

    #[test]
    fn envelope_matches_distribution_bytes() {
        let e = ErrorEnvelope::single(
            RegistryError::new(ErrorCode::ManifestUnknown)
                .detail(serde_json::json!({"Tag": "nosuch"})),
        );
        assert_eq!(
            e.to_body(),
            b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"manifest unknown\",\"detail\":{\"Tag\":\"nosuch\"}}]}\n"
        );
        assert_eq!(e.status(), 404);
        let back = ErrorEnvelope::parse(&e.to_body()).unwrap();
        assert_eq!(back, e);
        assert!(ErrorEnvelope::parse(b"<html>").is_none());
        assert!(ErrorEnvelope::parse(br#"{"errors":[]}"#).is_none());
    }
}
