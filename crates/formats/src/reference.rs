//! Repository names, tags and the `<reference>` of `/v2/<name>/manifests/<reference>`
//! (spec 05 §5.1), as validated newtypes.
//!
//! Parsing happens once, at the edge: the server turns path segments into these
//! types and every later layer (store keys, upstream URLs, Schema 1 conversion)
//! can rely on them being well formed. A malformed value becomes a
//! [`ReferenceError`] whose [`error_code`](ReferenceError::error_code) tells the
//! server which registry error to answer with.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};
use crate::error::ErrorCode;

/// Longest repository name distribution 2.8 accepts (spec 05 §5.1).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag: one leading character plus up to 127 more.
pub const MAX_TAG_LEN: usize = 128;

/// Why a name, tag or reference was refused.
///
/// The variants are split by the registry error code they map to, because
/// the server must answer `NAME_INVALID`, `TAG_INVALID` or `DIGEST_INVALID`
/// and should not have to inspect messages to decide.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The repository name does not match the OCI grammar or is too long.
    #[error("invalid repository name {name:?}: {reason}")]
    InvalidName { name: String, reason: NameProblem },
    /// The tag does not match `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error(
        "invalid tag {0:?}: tags are 1 to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
    )]
    InvalidTag(String),
    /// The reference contains ':' (so it can only be a digest) but is not a valid one.
    #[error(transparent)]
    InvalidDigest(#[from] DigestError),
}

/// What exactly is wrong with a repository name; part of the error message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong(usize),
    /// The 1-based `/`-separated component that breaks the grammar.
    BadComponent(usize),
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameProblem::Empty => f.write_str("the name is empty"),
            NameProblem::TooLong(len) => {
                write!(
                    f,
                    "the name is {len} bytes long, the limit is {MAX_NAME_LEN}"
                )
            }
            NameProblem::BadComponent(i) => write!(
                f,
                "path component {i} is not lowercase alphanumerics separated by '.', '_', '__' or '-'"
            ),
        }
    }
}

impl ReferenceError {
    /// The registry error code this error should be answered with.
    ///
    /// A bad tag maps to `TAG_INVALID`; distribution itself answers an
    /// unroutable path with a plain 404, and the spec lets the server choose
    /// (no client acts on either), so the server may override this.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ReferenceError::InvalidName { .. } => ErrorCode::NameInvalid,
            ReferenceError::InvalidTag(_) => ErrorCode::TagInvalid,
            ReferenceError::InvalidDigest(_) => ErrorCode::DigestInvalid,
        }
    }
}

/// A repository name such as `library/ubuntu`, validated against the OCI grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`,
/// at most 255 characters.
///
/// This is the strict OCI form, deliberately not distribution's looser router
/// pattern (which also admits a `Host:port` first component): regcache serves
/// one upstream per name space and never needs a domain in the name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(Box<str>);

impl RepositoryName {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let problem = if s.is_empty() {
            Some(NameProblem::Empty)
        } else if s.len() > MAX_NAME_LEN {
            Some(NameProblem::TooLong(s.len()))
        } else {
            s.split('/')
                .position(|c| !valid_name_component(c.as_bytes()))
                .map(|i| NameProblem::BadComponent(i + 1))
        };
        match problem {
            None => Ok(RepositoryName(s.into())),
            Some(reason) => Err(ReferenceError::InvalidName {
                name: truncate(s),
                reason,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated components, in order (`library`, `ubuntu`).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// One component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
///
/// Hand-written instead of a regex so the crate stays dependency-light and the
/// matcher is linear with no backtracking on hostile input.
fn valid_name_component(c: &[u8]) -> bool {
    let n = c.len();
    let mut i = 0;
    loop {
        let run_start = i;
        while i < n && matches!(c[i], b'a'..=b'z' | b'0'..=b'9') {
            i += 1;
        }
        if i == run_start {
            // Empty component, leading separator, or a separator not followed by alnum.
            return false;
        }
        if i == n {
            return true;
        }
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < n && c[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < n && c[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
///
/// Tags never contain ':', which is what lets [`Reference::parse`] tell them
/// from digests.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Box<str>);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let b = s.as_bytes();
        let ok = match b.split_first() {
            None => false,
            Some((first, rest)) => {
                b.len() <= MAX_TAG_LEN
                    && (first.is_ascii_alphanumeric() || *first == b'_')
                    && rest
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
            }
        };
        if ok {
            Ok(Tag(s.into()))
        } else {
            Err(ReferenceError::InvalidTag(truncate(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `<reference>` of a manifest path: a tag or a digest.
///
/// Anything containing ':' is taken to be a digest, because tags cannot
/// contain ':'. A malformed digest is therefore a `DIGEST_INVALID` error, not
/// a tag lookup. (distribution 2.8 instead treats e.g. `sha256:AAAA…` as a tag
/// and fails with 500 `UNKNOWN` from its storage; spec 05 §5.1 tells the
/// proxy to answer 400 `DIGEST_INVALID`.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        }
    }

    pub fn is_digest(&self) -> bool {
        matches!(self, Reference::Digest(_))
    }

    pub fn as_tag(&self) -> Option<&Tag> {
        match self {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }

    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        }
    }
}

impl From<Tag> for Reference {
    fn from(t: Tag) -> Self {
        Reference::Tag(t)
    }
}

impl From<Digest> for Reference {
    fn from(d: Digest) -> Self {
        Reference::Digest(d)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Reference::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Display, Debug, FromStr, AsRef, Borrow and serde for the string newtypes.
///
/// `Borrow<str>` is sound because `Eq`/`Hash`/`Ord` are derived from the inner
/// string, and it lets maps keyed by these types be queried with a `&str`.
macro_rules! string_newtype {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($ty), "({:?})"), &*self.0)
            }
        }

        impl FromStr for $ty {
            type Err = ReferenceError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::parse(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $ty::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(RepositoryName);
string_newtype!(Tag);

/// Error messages quote the input (they may end up in a response body); keep a
/// hostile path segment from growing them without bound.
fn truncate(s: &str) -> String {
    crate::error::truncate(s, 160)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn valid_names() {
        for n in [
            "a",
            "library/ubuntu",
            "a.b_c__d-e--f/g0",
            "0/1/2/3",
            "foo---bar",
            "my.registry_x/sub__dir/image-name",
        ] {
            let name = RepositoryName::parse(n).unwrap();
            assert_eq!(name.as_str(), n);
            assert_eq!(name.to_string(), n);
            assert_eq!(n.parse::<RepositoryName>().unwrap(), name);
        }
        let n = RepositoryName::parse("library/ubuntu").unwrap();
        assert_eq!(n.components().collect::<Vec<_>>(), ["library", "ubuntu"]);
        let max = "a".repeat(MAX_NAME_LEN);
        assert!(RepositoryName::parse(&max).is_ok());
    }

    #[test]
    fn invalid_names() {
        for n in [
            "",
            "/",
            "a/",
            "/a",
            "a//b",
            "UPPER",
            "a/B",
            ".a",
            "a.",
            "a..b",
            "a___b",
            "a_-b",
            "a-",
            "-a",
            "a:5000/b",
            "Example.com:5000/app",
            "a b",
            "é",
            "a\0",
        ] {
            let err = RepositoryName::parse(n).unwrap_err();
            assert_eq!(err.error_code(), ErrorCode::NameInvalid, "{n:?}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let err = RepositoryName::parse(&long).unwrap_err();
        assert!(matches!(
            err,
            ReferenceError::InvalidName {
                reason: NameProblem::TooLong(256),
                ..
            }
        ));
        assert!(err.to_string().len() < 400, "{err}");
        let err = RepositoryName::parse("ok/Bad").unwrap_err();
        assert!(err.to_string().contains("component 2"), "{err}");
    }

    #[test]
    fn tags() {
        for t in [
            "latest",
            "_",
            "0",
            "v1.2.3-rc.1",
            "A_b.c-D",
            &"x".repeat(128),
        ] {
            let tag = Tag::parse(t).unwrap();
            assert_eq!(tag.as_str(), t);
            assert_eq!(tag.to_string(), t);
        }
        for t in [
            "",
            ".hidden",
            "-x",
            "a:b",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(129),
        ] {
            let err = Tag::parse(t).unwrap_err();
            assert_eq!(err.error_code(), ErrorCode::TagInvalid, "{t:?}");
        }
    }

    #[test]
    fn references_split_on_colon() {
        assert_eq!(
            Reference::parse("latest").unwrap(),
            Reference::Tag(Tag::parse("latest").unwrap())
        );
        let r = Reference::parse(D).unwrap();
        assert!(r.is_digest());
        assert_eq!(r.as_digest().unwrap().as_str(), D);
        assert_eq!(r.to_string(), D);
        // Contains ':' => must be a digest; distribution would have tried it as a tag.
        for bad in ["sha256:AAAA", &D.to_uppercase(), "md5:00", "latest:", ":"] {
            let err = Reference::parse(bad).unwrap_err();
            assert_eq!(err.error_code(), ErrorCode::DigestInvalid, "{bad:?}");
        }
        assert_eq!(
            Reference::parse("-bad").unwrap_err().error_code(),
            ErrorCode::TagInvalid
        );
    }

    #[test]
    fn serde_round_trip() {
        let name = RepositoryName::parse("library/ubuntu").unwrap();
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"library/ubuntu\"");
        assert_eq!(serde_json::from_str::<RepositoryName>(&json).unwrap(), name);
        assert!(serde_json::from_str::<RepositoryName>("\"UP\"").is_err());

        let tag = Tag::parse("v1").unwrap();
        assert_eq!(serde_json::to_string(&tag).unwrap(), "\"v1\"");
        assert_eq!(serde_json::from_str::<Tag>("\"v1\"").unwrap(), tag);
        assert!(serde_json::from_str::<Tag>("\".v1\"").is_err());

        for r in ["v1", D] {
            let reference = Reference::parse(r).unwrap();
            let json = serde_json::to_string(&reference).unwrap();
            assert_eq!(json, format!("\"{r}\""));
            assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), reference);
        }
        assert!(serde_json::from_str::<Reference>("\"sha256:00\"").is_err());
    }

    #[test]
    fn borrow_allows_str_lookups() {
        let mut m = std::collections::HashMap::new();
        m.insert(Tag::parse("latest").unwrap(), 1);
        assert_eq!(m.get("latest"), Some(&1));
        assert_eq!(
            format!("{:?}", Tag::parse("latest").unwrap()),
            "Tag(\"latest\")"
        );
    }

    #[test]
    fn long_hostile_input_gives_short_message() {
        let long = "A".repeat(100_000);
        assert!(Tag::parse(&long).unwrap_err().to_string().len() < 400);
        assert!(RepositoryName::parse(&long).unwrap_err().to_string().len() < 400);
        let multibyte = "é".repeat(1000);
        assert!(Tag::parse(&multibyte).unwrap_err().to_string().len() < 400);
    }
}
