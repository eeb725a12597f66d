//! Unknown keys, found from the serde types themselves.
//!
//! serde's derive hands every struct's field names to the deserializer
//! (`deserialize_struct(name, fields, ..)`): the very list
//! `deny_unknown_fields` checks against. [`Checked`] wraps a deserializer and,
//! at each struct, takes every key not in that list out of the way and notes
//! it, naming the known keys and where the table is, so one pass over the file
//! reports every unknown key, in every section, at once. No list of keys is
//! kept beside the types: a field added to a struct is known at once.
//!
//! It wraps the TOML deserializer itself (not a `toml::Value`), so type errors
//! keep toml's spans. Enum contents are not checked (the file has only unit
//! variants).
//!
//! serde stops at the first value that fails; [`Pass::failed_at`] says where
//! it was, and [`remove`] takes that key out of the parsed document, so
//! `Config::from_toml` reads it again and collects every failing value, one
//! pass each (a file has a few dozen keys at most).

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};

/// What one pass over a document found.
pub(super) struct Pass<T, E> {
    pub result: Result<T, E>,
    /// Every unknown key met on the way, as `unknown key `k` in [section]
    /// (known: a, b)`. Keys after a type error are not reached.
    pub unknown: Vec<String>,
    /// Where the value that failed sits (the innermost one), when it failed.
    pub failed_at: Option<Vec<Seg>>,
}

/// Deserialise `T` from `de`, noting unknown keys and where a failure was.
pub(super) fn deserialize<'de, T, D>(de: D) -> Pass<T, D::Error>
where
    T: de::Deserialize<'de>,
    D: Deserializer<'de>,
{
    let unknown = RefCell::new(Vec::new());
    let failed = RefCell::new(None);
    let ctx = Ctx {
        unknown: &unknown,
        failed: &failed,
        path: Vec::new(),
    };
    let result = T::deserialize(Checked { de, ctx });
    Pass {
        result,
        unknown: unknown.into_inner(),
        failed_at: failed.into_inner(),
    }
}

/// The field names serde's derive declares for the struct `T`.
pub(super) fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let found = Cell::new(&[][..]);
    let _ = T::deserialize(Probe(&found));
    found.get()
}

/// Asks for a struct's field names, then stops.
struct Probe<'c>(&'c Cell<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.0.set(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Seg {
    Key(String),
    /// 1-based, as the messages count.
    Index(usize),
}

/// Where the value being read sits, and where unknown keys go.
#[derive(Clone)]
struct Ctx<'a> {
    unknown: &'a RefCell<Vec<String>>,
    /// The path of the first (innermost) value that failed.
    failed: &'a RefCell<Option<Vec<Seg>>>,
    path: Vec<Seg>,
}

impl Ctx<'_> {
    fn child(&self, seg: Seg) -> Self {
        let mut path = self.path.clone();
        path.push(seg);
        Ctx {
            unknown: self.unknown,
            failed: self.failed,
            path,
        }
    }

    /// Notes this place as the failure's, unless an inner value already failed.
    fn note_failed<T, E>(&self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            let mut failed = self.failed.borrow_mut();
            if failed.is_none() {
                *failed = Some(self.path.clone());
            }
        }
        result
    }

    /// `` in [log]``, `` in [[upstream]] #2``, or nothing at the top.
    fn place(&self) -> String {
        place(&self.path)
    }

    fn note_unknown(&self, key: &str, known: &[&str]) {
        self.unknown.borrow_mut().push(format!(
            "unknown key `{key}`{} (known: {})",
            self.place(),
            known.join(", ")
        ));
    }
}

/// `` in [log]``, `` in [[upstream]] #2``, or nothing at the top, for a
/// table at `path`.
pub(super) fn place(path: &[Seg]) -> String {
    let keys: Vec<&str> = (path.iter())
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    match path.last() {
        None => String::new(),
        Some(Seg::Key(_)) => format!(" in [{}]", keys.join(".")),
        Some(Seg::Index(i)) => format!(" in [[{}]] #{i}", keys.join(".")),
    }
}

/// `key `k` in [section]: ` for the value at `path` (empty at the top).
pub(super) fn describe(path: &[Seg]) -> String {
    let Some(last) = path.iter().rposition(|s| matches!(s, Seg::Key(_))) else {
        return String::new();
    };
    let Seg::Key(key) = &path[last] else {
        return String::new();
    };
    let rest: String = path[last + 1..]
        .iter()
        .map(|s| match s {
            Seg::Index(i) => format!(" item {i}"),
            Seg::Key(k) => format!(".{k}"),
        })
        .collect();
    format!("key `{key}`{rest}{}: ", place(&path[..last]))
}

/// Takes the deepest key on `path` out of `root` (a failing array item
/// takes its whole key); false when there is no such key.
pub(super) fn remove(root: &mut toml::Spanned<toml::de::DeTable<'_>>, path: &[Seg]) -> bool {
    let Some(last) = path.iter().rposition(|s| matches!(s, Seg::Key(_))) else {
        return false;
    };
    remove_in(root.get_mut(), &path[..=last])
}

fn remove_in(table: &mut toml::de::DeTable<'_>, path: &[Seg]) -> bool {
    match path {
        [Seg::Key(key)] => {
            let found = table
                .keys()
                .find(|k| &**k.get_ref() == key.as_str())
                .cloned();
            found.is_some_and(|k| table.remove(&k).is_some())
        }
        [Seg::Key(key), rest @ ..] => table
            .iter_mut()
            .find(|(k, _)| &**k.get_ref() == key.as_str())
            .is_some_and(|(_, v)| remove_value(v.get_mut(), rest)),
        _ => false,
    }
}

fn remove_value(value: &mut toml::de::DeValue<'_>, path: &[Seg]) -> bool {
    use toml::de::DeValue;
    match (value, path) {
        (DeValue::Table(t), [Seg::Key(_), ..]) => remove_in(t, path),
        (DeValue::Array(a), [Seg::Index(i), rest @ ..]) => a
            .as_mut()
            .get_mut(i.saturating_sub(1))
            .is_some_and(|v| remove_value(v.get_mut(), rest)),
        _ => false,
    }
}

/// A deserializer whose structs drop (and note) their unknown keys.
struct Checked<'a, D> {
    de: D,
    ctx: Ctx<'a>,
}

/// The visitor given to the wrapped deserializer: wraps what it is handed.
struct Visit<'a, V> {
    v: V,
    ctx: Ctx<'a>,
    /// The struct's fields when a struct was asked for.
    fields: Option<&'static [&'static str]>,
}

impl<'a, V> Visit<'a, V> {
    fn new(v: V, ctx: Ctx<'a>) -> Self {
        Visit {
            v,
            ctx,
            fields: None,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.de.$method($($arg,)* Visit::new(visitor, self.ctx))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Checked<'_, D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visit = Visit {
            v: visitor,
            ctx: self.ctx,
            fields: Some(fields),
        };
        self.de.deserialize_struct(name, fields, visit)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }

    forward_deserialize! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf();
        deserialize_option(); deserialize_unit(); deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str); deserialize_seq();
        deserialize_tuple(len: usize); deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map(); deserialize_identifier(); deserialize_ignored_any();
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.v.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.v.visit_map(Map {
            map,
            ctx: self.ctx,
            fields: self.fields,
            key: None,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.v.visit_seq(Seq {
            seq,
            ctx: self.ctx,
            index: 0,
        })
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.v.visit_some(Checked { de, ctx: self.ctx })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.v.visit_newtype_struct(Checked { de, ctx: self.ctx })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.v.visit_enum(data)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.v.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.v.visit_unit()
    }

    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char);
        visit_str(&str); visit_borrowed_str(&'de str); visit_string(String);
        visit_bytes(&[u8]); visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }
}

/// A table: keys are read as strings (TOML's keys are); a struct's unknown
/// keys are noted and their values skipped.
struct Map<'a, A> {
    map: A,
    ctx: Ctx<'a>,
    fields: Option<&'static [&'static str]>,
    /// The key whose value comes next.
    key: Option<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<String>()? {
            if let Some(fields) = self.fields
                && !fields.contains(&key.as_str())
            {
                self.ctx.note_unknown(&key, fields);
                self.map.next_value::<IgnoredAny>()?;
                continue;
            }
            let out = seed.deserialize(StrDeserializer::<A::Error>::new(&key))?;
            self.key = Some(key);
            return Ok(Some(out));
        }
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let key = self.key.take().unwrap_or_default();
        let ctx = self.ctx.child(Seg::Key(key));
        let result = self.map.next_value_seed(Seed {
            seed,
            ctx: ctx.clone(),
        });
        ctx.note_failed(result)
    }
}

/// An array: each element is checked under its 1-based number.
struct Seq<'a, A> {
    seq: A,
    ctx: Ctx<'a>,
    index: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.index += 1;
        let ctx = self.ctx.child(Seg::Index(self.index));
        let result = self.seq.next_element_seed(Seed {
            seed,
            ctx: ctx.clone(),
        });
        ctx.note_failed(result)
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

/// A seed whose deserializer is wrapped in [`Checked`].
struct Seed<'a, S> {
    seed: S,
    ctx: Ctx<'a>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Checked { de, ctx: self.ctx })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
        #[serde(default)]
        b: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        top: String,
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
    }

    fn parse<T: DeserializeOwned>(text: &str) -> (Result<T, toml::de::Error>, Vec<String>) {
        let pass = deserialize(toml::Deserializer::parse(text).unwrap());
        (pass.result, pass.unknown)
    }

    #[test]
    fn unknown_keys_at_every_level_are_noted_and_skipped() {
        let (out, unknown) = parse::<Outer>(
            "top = \"t\"\nextra = 1\n[inner]\na = 1\nc = 2\n[[list]]\na = 2\n[[list]]\na = 3\nd = [1]\nb = \"x\"\n",
        );
        assert_eq!(
            unknown,
            [
                "unknown key `extra` (known: top, inner, list)",
                "unknown key `c` in [inner] (known: a, b)",
                "unknown key `d` in [[list]] #2 (known: a, b)",
            ]
        );
        let out = out.expect("deny_unknown_fields never sees the noted keys");
        assert_eq!(out.inner.a, 1);
        assert_eq!(out.list[1].b.as_deref(), Some("x"));
    }

    #[test]
    fn type_errors_keep_toml_positions_and_their_path() {
        let pass = deserialize::<Outer, _>(
            toml::Deserializer::parse("top = \"t\"\n[inner]\na = \"one\"\n").unwrap(),
        );
        assert!(pass.unknown.is_empty());
        let text = pass.result.unwrap_err().to_string();
        assert!(text.contains("line 3"), "{text}");
        assert_eq!(
            pass.failed_at,
            Some(vec![Seg::Key("inner".into()), Seg::Key("a".into())])
        );
    }

    #[test]
    fn struct_fields_come_from_the_derive() {
        assert_eq!(struct_fields::<Outer>(), ["top", "inner", "list"]);
        assert_eq!(struct_fields::<Inner>(), ["a", "b"]);
        assert!(struct_fields::<u32>().is_empty());
    }
}
