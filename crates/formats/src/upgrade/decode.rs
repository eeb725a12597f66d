//! Go's `json.Unmarshal` of `v1Compatibility` entries, as containers/image
//! does it: into `Schema1V1Compatibility` for every entry, and (only to
//! find what it would refuse) into `Schema2V1Image` for the top one. Keys
//! select fields as Go matches them (exact, else case-insensitive; the last
//! matching key wins); `null` changes nothing.

use super::{UpgradeError, V1Compat};
use crate::gojson::{self, Kind, TimeError, Timestamp};

/// Which of `fields` the decoded key selects under Go's matching.
fn match_field(fields: &[&str], key: &str) -> Option<usize> {
    fields.iter().position(|f| *f == key).or_else(|| {
        fields
            .iter()
            .position(|f| gojson::field_name_matches(f, key))
    })
}

/// The members of the validated top value of an entry, or nothing for `null`.
fn entry_members<'a>(
    index: usize,
    doc: &'a [u8],
    go_type: &'static str,
) -> Result<Option<&'a [u8]>, UpgradeError> {
    let invalid = |error| UpgradeError::InvalidJson { index, error };
    gojson::validate(doc).map_err(invalid)?;
    let top = gojson::top_value(doc).map_err(invalid)?;
    match gojson::kind(top) {
        Kind::Object => Ok(Some(top)),
        Kind::Null => Ok(None),
        k => Err(wrong_type(index, "(v1Compatibility)", k, go_type)),
    }
}

fn wrong_type(
    index: usize,
    field: &'static str,
    found: Kind,
    go_type: &'static str,
) -> UpgradeError {
    UpgradeError::WrongType {
        index,
        field,
        found: found.go_name(),
        go_type,
    }
}

const COMPAT_FIELDS: [&str; 7] = [
    "id",
    "parent",
    "comment",
    "created",
    "container_config",
    "author",
    "throwaway",
];

/// `json.Unmarshal` of one `v1Compatibility` into `Schema1V1Compatibility`.
pub(super) fn decode_v1_compat(index: usize, doc: &[u8]) -> Result<V1Compat, UpgradeError> {
    let mut c = V1Compat::default();
    let Some(top) = entry_members(index, doc, "manifest.Schema1V1Compatibility")? else {
        return Ok(c);
    };
    let invalid = |error| UpgradeError::InvalidJson { index, error };
    for member in gojson::object_members(top) {
        let (key, v) = member.map_err(invalid)?;
        let key = gojson::unquote(key);
        match match_field(&COMPAT_FIELDS, &key) {
            Some(0) => decode_string(index, v, &mut c.id, "id")?,
            Some(1) => decode_string(index, v, &mut c.parent, "parent")?,
            Some(2) => decode_string(index, v, &mut c.comment, "comment")?,
            Some(3) => decode_time(index, v, &mut c.created)?,
            Some(4) => decode_container_config(index, v, &mut c.cmd)?,
            Some(5) => decode_string(index, v, &mut c.author, "author")?,
            Some(_) => match gojson::kind(v) {
                Kind::Null => {}
                Kind::Bool => c.throwaway = v.first() == Some(&b't'),
                k => return Err(wrong_type(index, "throwaway", k, "bool")),
            },
            None => {}
        }
    }
    Ok(c)
}

/// `container_config` into `struct { Cmd []string }`.
fn decode_container_config(
    index: usize,
    v: &[u8],
    cmd: &mut Vec<String>,
) -> Result<(), UpgradeError> {
    let invalid = |error| UpgradeError::InvalidJson { index, error };
    match gojson::kind(v) {
        Kind::Null => return Ok(()),
        Kind::Object => {}
        k => {
            return Err(wrong_type(
                index,
                "container_config",
                k,
                "manifest.schema1V1CompatibilityContainerConfig",
            ));
        }
    }
    for member in gojson::object_members(v) {
        let (key, value) = member.map_err(invalid)?;
        if match_field(&["Cmd"], &gojson::unquote(key)).is_none() {
            continue;
        }
        match gojson::kind(value) {
            Kind::Null => cmd.clear(),
            Kind::Array => {
                // Go decodes element i into the existing element i.
                let mut n = 0;
                for el in gojson::array_elements(value) {
                    let el = el.map_err(invalid)?;
                    if n == cmd.len() {
                        cmd.push(String::new());
                    }
                    if let Some(slot) = cmd.get_mut(n) {
                        decode_string(index, el, slot, "container_config.Cmd")?;
                    }
                    n += 1;
                }
                cmd.truncate(n);
            }
            k => return Err(wrong_type(index, "container_config.Cmd", k, "[]string")),
        }
    }
    Ok(())
}

fn decode_string(
    index: usize,
    v: &[u8],
    slot: &mut String,
    field: &'static str,
) -> Result<(), UpgradeError> {
    match gojson::kind(v) {
        Kind::String => *slot = gojson::unquote(v).into_owned(),
        Kind::Null => {}
        k => return Err(wrong_type(index, field, k, "string")),
    }
    Ok(())
}

fn decode_time(index: usize, v: &[u8], slot: &mut Option<Timestamp>) -> Result<(), UpgradeError> {
    let bad = |error| UpgradeError::InvalidTimestamp { index, error };
    match gojson::kind(v) {
        Kind::Null => {}
        // Time.UnmarshalJSON sees the raw bytes between the quotes.
        Kind::String => {
            let inner = v.get(1..v.len().saturating_sub(1)).unwrap_or_default();
            *slot = Some(Timestamp::parse_rfc3339(inner).map_err(bad)?);
        }
        _ => return Err(bad(TimeError::NotAString)),
    }
    Ok(())
}

const IMAGE_STRINGS: [&str; 9] = [
    "id",
    "parent",
    "comment",
    "container",
    "docker_version",
    "author",
    "architecture",
    "variant",
    "os",
];

/// What `ToSchema2Config`'s `json.Unmarshal` of the top entry into
/// `Schema2V1Image` would refuse (the fields' JSON types; the container
/// configs only as objects), and the Docker < 1.8.3 re-encoding path.
pub(super) fn check_top(doc: &[u8]) -> Result<(), UpgradeError> {
    let Some(top) = entry_members(0, doc, "manifest.Schema2V1Image")? else {
        // `null` unmarshals into a nil map, which ToSchema2Config then writes to.
        return Err(wrong_type(0, "(v1Compatibility)", Kind::Null, "map"));
    };
    let invalid = |error| UpgradeError::InvalidJson { index: 0, error };
    let mut docker_version = String::new();
    let mut scratch: Option<Timestamp> = None;
    for member in gojson::object_members(top) {
        let (key, v) = member.map_err(invalid)?;
        let key = gojson::unquote(key);
        let kind = gojson::kind(v);
        if let Some(i) = match_field(&IMAGE_STRINGS, &key) {
            let mut s = String::new();
            decode_string(0, v, &mut s, IMAGE_STRINGS[i])?;
            if i == 4 && kind == Kind::String {
                docker_version = s;
            }
        } else if match_field(&["created"], &key).is_some() {
            decode_time(0, v, &mut scratch)?;
        } else if match_field(&["container_config", "config"], &key).is_some() {
            if !matches!(kind, Kind::Object | Kind::Null) {
                return Err(wrong_type(0, "config", kind, "manifest.Schema2Config"));
            }
        } else if match_field(&["Size"], &key).is_some() {
            let int = v.strip_prefix(b"-").unwrap_or(v);
            let ok = kind == Kind::Null
                || (kind == Kind::Number
                    && int.iter().all(u8::is_ascii_digit)
                    && std::str::from_utf8(v).is_ok_and(|s| s.parse::<i64>().is_ok()));
            if !ok {
                return Err(wrong_type(0, "Size", kind, "int64"));
            }
        }
    }
    if !docker_version.is_empty() && version_less(&docker_version, "1.8.3") {
        return Err(UpgradeError::LegacyDockerVersion(docker_version));
    }
    Ok(())
}

/// docker's `versions.LessThan`: dot-separated numbers, a part that is not
/// a number counts as 0, missing parts as 0.
pub(super) fn version_less(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        let y = b.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        if x != y {
            return x < y;
        }
    }
    false
}
