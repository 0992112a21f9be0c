//! Reading a JSON body the way dockerd's Go decoder (`encoding/json`) reads it into its
//! structs, and writing down the result in canonical form.
//!
//! What Go does, and so what this module does:
//! - Struct keys match field names case-insensitively (ASCII case, plus `ſ` for `s` and the
//!   Kelvin sign for `k`); map keys match exactly. Unknown struct keys are ignored.
//! - A repeated key is decoded again into the same place: the last scalar wins, objects are
//!   merged into the struct or map already there (a repeated `HostConfig` adds to the first),
//!   each map entry starts from zero, and a list replaces the earlier list.
//! - `null` clears pointers, lists and maps and leaves every other value as it was.
//!
//! What this module refuses (`Err`, a message for `invalid_params`), because Go's answer
//! depends on its version or because no client sends it: trailing bytes after the value, a
//! list of objects decoded over a non-empty earlier one (Go reuses the old elements and
//! merges into them), `null` inside a list or a map, a value of the wrong JSON type, and an
//! unknown key whose value is not zero (`null`, `false`, `0`, `""`, `[]`, `{}`): dropping a
//! zero value changes nothing, dropping anything else would change what the client asked for.
//!
//! The result is a `serde_json::Value` holding every known field under its canonical name,
//! with no duplicates: serialised and sent to dockerd, it decodes to exactly what was read.
//! A field read as `null` stays `null` (Go's nil or zero, which `null` decodes to again).
//!
//! Owns: the decoding rules and the type descriptions they walk ([`T`], [`F`]). Must not:
//! decide policy, or do I/O.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// A JSON value with object members in order and duplicates kept.
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Num(Number),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

struct JVisitor;

impl<'de> Visitor<'de> for JVisitor {
    type Value = J;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<J, E> {
        Ok(J::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<J, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<J, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<J, E> {
        Number::from_f64(v)
            .map(J::Num)
            .ok_or_else(|| E::custom("a number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<J, E> {
        Ok(J::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<J, E> {
        Ok(J::Str(v))
    }
    fn visit_unit<E>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_none<E>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<J, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = s.next_element()? {
            v.push(x);
        }
        Ok(J::Arr(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<J, A::Error> {
        let mut v = Vec::new();
        while let Some(kv) = m.next_entry::<String, J>()? {
            v.push(kv);
        }
        Ok(J::Obj(v))
    }
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        d.deserialize_any(JVisitor)
    }
}

/// How deep objects and lists may nest. Docker bodies nest 5 levels at most; the limit keeps
/// the recursive reading well inside a stream thread's small stack.
pub const MAX_DEPTH: usize = 32;

/// Parses one JSON value, keeping duplicate keys; bytes after it are refused, and so is
/// nesting deeper than [`MAX_DEPTH`].
pub fn parse(bytes: &[u8]) -> Result<J, String> {
    if protocol::nesting::deeper_than(bytes, MAX_DEPTH).is_some() {
        return Err(format!(
            "invalid JSON: nested deeper than {MAX_DEPTH} levels"
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let j = J::deserialize(&mut de).map_err(|e| format!("invalid JSON: {e}"))?;
    de.end()
        .map_err(|_| "invalid JSON: more data after the JSON value".to_string())?;
    Ok(j)
}

/// A struct: its fields, in groups (an embedded Go struct adds its fields as a group).
#[derive(Debug)]
pub struct S(pub &'static [&'static [F]]);

/// A field of a Go struct: its JSON name and type.
#[derive(Debug)]
pub struct F(pub &'static str, pub T);

/// The Go type a JSON value is decoded into.
#[derive(Debug, Clone, Copy)]
pub enum T {
    Bool,
    Int,
    Str,
    /// `*bool`, `*int`: like `Bool`/`Int`, but `null` clears them.
    PBool,
    PInt,
    /// `[]string`.
    Strs,
    /// Docker's `strslice.StrSlice`: a string or a list of strings.
    StrSlice,
    /// `map[string]string`.
    StrMap,
    /// `map[string]struct{}` (exposed ports, volumes): each value an object, written `{}`.
    Set,
    /// A struct held by value: `null` leaves it as it was.
    Obj(&'static S),
    /// A pointer to a struct: `null` clears it.
    PObj(&'static S),
    /// `[]T` of a struct, pointer or map type.
    List(&'static T),
    /// `map[string]T`.
    Map(&'static T),
    /// Kept as sent (fixed-size arrays and nested string lists no policy reads); the last
    /// occurrence wins, and objects inside it must not repeat a key.
    Opaque,
}

impl T {
    fn nullable(self) -> bool {
        !matches!(self, T::Bool | T::Int | T::Str | T::Obj(_) | T::Opaque)
    }
}

/// Whether `key` names `name` for Go: ASCII case folded, `ſ` is `s`, the Kelvin sign `k`.
pub fn key_is(key: &str, name: &str) -> bool {
    let mut k = key.chars();
    for n in name.bytes() {
        let same = match k.next() {
            Some(c) if c.is_ascii() => (c as u8).eq_ignore_ascii_case(&n),
            Some('\u{17F}') => n.eq_ignore_ascii_case(&b's'),
            Some('\u{212A}') => n.eq_ignore_ascii_case(&b'k'),
            _ => false,
        };
        if !same {
            return false;
        }
    }
    k.next().is_none()
}

/// The field of `s` that `key` names.
pub fn field(s: &'static S, key: &str) -> Option<&'static F> {
    s.0.iter().flat_map(|g| g.iter()).find(|f| key_is(key, f.0))
}

fn is_zero(j: &J) -> bool {
    match j {
        J::Null => true,
        J::Bool(b) => !b,
        J::Num(n) => n.as_f64() == Some(0.0),
        J::Str(s) => s.is_empty(),
        J::Arr(a) => a.is_empty(),
        J::Obj(o) => o.is_empty(),
    }
}

fn kind(j: &J) -> &'static str {
    match j {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Num(_) => "a number",
        J::Str(_) => "a string",
        J::Arr(_) => "a list",
        J::Obj(_) => "an object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn wrong(path: &str, want: &str, j: &J) -> String {
    format!("{path}: expected {want}, got {}", kind(j))
}

/// Decodes `j` into `slot` as Go decodes into a value of type `t` (`Null`: Go's nil or
/// zero value).
pub fn decode(t: T, j: &J, slot: &mut Value, path: &str) -> Result<(), String> {
    if let J::Null = j {
        if t.nullable() {
            *slot = Value::Null;
        }
        return Ok(());
    }
    match (t, j) {
        (T::Bool | T::PBool, J::Bool(b)) => *slot = Value::Bool(*b),
        (T::Int | T::PInt, J::Num(n)) => *slot = Value::Number(n.clone()),
        (T::Str, J::Str(s)) => *slot = Value::String(s.clone()),
        (T::Strs | T::StrSlice, J::Arr(items)) => *slot = strings(items, path)?,
        (T::StrSlice, J::Str(s)) => *slot = Value::Array(vec![Value::String(s.clone())]),
        (T::StrMap | T::Set | T::Map(_), J::Obj(members)) => map(t, members, slot, path)?,
        (T::Obj(s) | T::PObj(s), J::Obj(members)) => {
            let mut m = match slot.take() {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            object(s, members, &mut m, path)?;
            *slot = Value::Object(m);
        }
        (T::List(elem), J::Arr(items)) => {
            if slot.as_array().is_some_and(|a| !a.is_empty()) && !items.is_empty() {
                return Err(format!(
                    "{path} is repeated with a list of objects: dockerd would merge the lists element by element"
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let J::Null = item {
                    return Err(format!("{p}: null in a list"));
                }
                let mut e = Value::Null;
                decode(*elem, item, &mut e, &p)?;
                out.push(e);
            }
            *slot = Value::Array(out);
        }
        (T::Opaque, _) => *slot = opaque(j, path)?,
        (T::Bool | T::PBool, _) => return Err(wrong(path, "a boolean", j)),
        (T::Int | T::PInt, _) => return Err(wrong(path, "a number", j)),
        (T::Str, _) => return Err(wrong(path, "a string", j)),
        (T::Strs | T::List(_), _) => return Err(wrong(path, "a list", j)),
        (T::StrSlice, _) => return Err(wrong(path, "a string or a list", j)),
        (T::StrMap | T::Set | T::Map(_) | T::Obj(_) | T::PObj(_), _) => {
            return Err(wrong(path, "an object", j))
        }
    }
    Ok(())
}

fn strings(items: &[J], path: &str) -> Result<Value, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| match x {
            J::Str(s) => Ok(Value::String(s.clone())),
            other => Err(wrong(&format!("{path}[{i}]"), "a string", other)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// Decodes map members into the map already in `slot` (Go adds to a non-nil map); each
/// entry starts from zero, and the last of a repeated key wins.
fn map(t: T, members: &[(String, J)], slot: &mut Value, path: &str) -> Result<(), String> {
    let mut m = match slot.take() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (k, v) in members {
        let p = join(path, k);
        let value = match (t, v) {
            (_, J::Null) => return Err(format!("{p}: null in a map")),
            (T::StrMap, J::Str(s)) => Value::String(s.clone()),
            (T::StrMap, other) => return Err(wrong(&p, "a string", other)),
            (T::Set, J::Obj(_)) => Value::Object(Map::new()),
            (T::Set, other) => return Err(wrong(&p, "an object", other)),
            (T::Map(elem), _) => {
                let mut e = Value::Null;
                decode(*elem, v, &mut e, &p)?;
                e
            }
            _ => return Err(format!("{p}: not a map")),
        };
        m.insert(k.clone(), value);
    }
    *slot = Value::Object(m);
    Ok(())
}

/// Decodes struct members into `m` (canonical names), in order, as Go does.
pub fn object(
    s: &'static S,
    members: &[(String, J)],
    m: &mut Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    for (k, v) in members {
        let Some(f) = field(s, k) else {
            if is_zero(v) {
                continue;
            }
            return Err(format!(
                "{}: unknown field; the agent forwards only fields it can check",
                join(path, k)
            ));
        };
        let slot = m.entry(f.0).or_insert(Value::Null);
        decode(f.1, v, slot, &join(path, f.0))?;
    }
    Ok(())
}

/// An opaque value as sent; objects inside must not repeat a key (exactly).
fn opaque(j: &J, path: &str) -> Result<Value, String> {
    Ok(match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Num(n) => Value::Number(n.clone()),
        J::Str(s) => Value::String(s.clone()),
        J::Arr(a) => Value::Array(
            a.iter()
                .map(|x| opaque(x, path))
                .collect::<Result<_, _>>()?,
        ),
        J::Obj(o) => {
            let mut m = Map::new();
            for (k, v) in o {
                if m.insert(k.clone(), opaque(v, path)?).is_some() {
                    return Err(format!("{path}: the key {k:?} is repeated"));
                }
            }
            Value::Object(m)
        }
    })
}

/// Reads a whole body as a struct of type `s`: the canonical object.
pub fn read(s: &'static S, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match parse(bytes)? {
        J::Obj(members) => {
            let mut m = Map::new();
            object(s, &members, &mut m, "")?;
            Ok(m)
        }
        other => Err(format!(
            "the body must be a JSON object, not {}",
            kind(&other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fold_as_go_folds_them() {
        assert!(key_is("privileged", "Privileged"));
        assert!(key_is("PRIVILEGED", "Privileged"));
        assert!(key_is("Bind\u{17F}", "Binds"));
        assert!(key_is("\u{212A}ernelMemory", "KernelMemory"));
        assert!(!key_is("Privilege", "Privileged"));
        assert!(!key_is("Privilegedx", "Privileged"));
        assert!(!key_is("Priv\u{130}leged", "Privileged"));
        assert!(!key_is("Cpu_Shares", "CpuShares"));
    }

    #[test]
    fn one_value_with_duplicates_kept_and_nothing_after_it() {
        assert_eq!(
            parse(br#" {"a":1,"a":null} "#).unwrap(),
            J::Obj(vec![("a".into(), J::Num(1.into())), ("a".into(), J::Null)])
        );
        for bad in [&b"{} {}"[..], b"{}x", b"", b"{\"a\":1,}", b"\"\\ud800\""] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn deep_nesting_is_refused_within_a_stream_threads_stack() {
        // A passthrough stream thread has a 128 KiB stack.
        let t = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let deep = |n: usize| {
                    format!(
                        r#"{{"HostConfig":{{"ConsoleSize":{}{}}}}}"#,
                        "[".repeat(n),
                        "]".repeat(n)
                    )
                };
                assert!(read(
                    &crate::policy::schema::CREATE,
                    deep(MAX_DEPTH - 2).as_bytes()
                )
                .is_ok());
                assert!(read(&crate::policy::schema::CREATE, deep(MAX_DEPTH).as_bytes()).is_err());
                // Brackets inside strings do not count.
                let s = format!(r#"{{"Labels":{{"a":"{}"}}}}"#, "[{".repeat(100));
                assert!(read(&crate::policy::schema::CREATE, s.as_bytes()).is_ok());
                assert!(read(&crate::policy::schema::CREATE, deep(5000).as_bytes()).is_err());
                let objs = format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000));
                assert!(parse(objs.as_bytes()).is_err());
            })
            .unwrap();
        t.join().expect("no stack overflow");
    }
}
