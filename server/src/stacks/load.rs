//! YAML text to a value tree, with bounded work: the text has a size cap, and the tree that
//! anchors and aliases expand to has a budget of nodes and string bytes, so a "billion laughs"
//! file is refused instead of eating the server's memory. Merge keys (`<<: *base`) are applied.
//!
//! Owns: loading. Must not: interpret any key.

use super::error::{ComposeError, ErrorKind};
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde_yaml_ng::{Mapping, Number, Value};
use std::cell::Cell;
use std::fmt;

/// The largest compose file accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// Nodes (scalars, lists, mappings) the expanded tree may have.
const MAX_NODES: usize = 100_000;
/// String bytes the expanded tree may hold.
const MAX_STRING_BYTES: usize = 8 << 20;
/// Nesting of merge keys followed before giving up.
const MAX_MERGE_ROUNDS: usize = 32;

/// Parses `text` into a mapping with merge keys applied.
pub(super) fn load(text: &str) -> Result<Mapping, ComposeError> {
    let yaml = |m: String| ComposeError::new("", ErrorKind::Yaml, m);
    let empty = || yaml("the compose file is empty".into());
    if text.len() > MAX_TEXT_BYTES {
        return Err(yaml(format!(
            "the compose file is {} bytes; the limit is {MAX_TEXT_BYTES}",
            text.len()
        )));
    }
    let budget = Budget {
        nodes: Cell::new(MAX_NODES),
        bytes: Cell::new(MAX_STRING_BYTES),
    };
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let mut value = Seed(&budget)
        .deserialize(de)
        .map_err(|e| yaml(format!("invalid YAML: {e}")).at_line(e.location().map(|l| l.line())))?;
    merge_keys(&mut value).map_err(yaml)?;
    match value {
        Value::Mapping(m) => Ok(m),
        Value::Null => Err(empty()),
        _ => Err(yaml("the compose file must be a mapping at the top".into())),
    }
}

struct Budget {
    nodes: Cell<usize>,
    bytes: Cell<usize>,
}

impl Budget {
    fn take<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let nodes = self.nodes.get().checked_sub(1);
        let left = self.bytes.get().checked_sub(bytes);
        match (nodes, left) {
            (Some(n), Some(b)) => {
                self.nodes.set(n);
                self.bytes.set(b);
                Ok(())
            }
            _ => Err(E::custom(format!(
                "the file expands to more than {MAX_NODES} values or {MAX_STRING_BYTES} bytes of text (anchors and aliases count each time they are used)"
            ))),
        }
    }
}

/// Builds a [`Value`] while counting against the budget. Tags are refused.
#[derive(Clone, Copy)]
struct Seed<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Number(Number::from(n)))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Number(Number::from(n)))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Number(Number::from(n)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.take(s.len())?;
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.0.take(s.len())?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.take(0)?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Sequence(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.take(0)?;
        let mut out = Mapping::new();
        while let Some(k) = map.next_key_seed(self)? {
            let v = map.next_value_seed(self)?;
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!(
                    "duplicate key {}",
                    describe_key(&k)
                )));
            }
            out.insert(k, v);
        }
        Ok(Value::Mapping(out))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, _data: A) -> Result<Value, A::Error> {
        Err(de::Error::custom("YAML tags (!tag) are not supported"))
    }
}

fn describe_key(k: &Value) -> String {
    match k {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "(a complex key)".into(),
    }
}

/// Applies YAML merge keys (`<<: *base` or `<<: [*a, *b]`) everywhere: keys already in the
/// mapping win, then earlier merged mappings win over later ones.
fn merge_keys(v: &mut Value) -> Result<(), String> {
    match v {
        Value::Mapping(m) => {
            let mut rounds = 0;
            while let Some(merge) = m.remove("<<") {
                rounds += 1;
                if rounds > MAX_MERGE_ROUNDS {
                    return Err("merge keys (<<) are nested too deeply".into());
                }
                let sources = match merge {
                    Value::Mapping(src) => vec![src],
                    Value::Sequence(list) => list
                        .into_iter()
                        .map(|x| match x {
                            Value::Mapping(src) => Ok(src),
                            _ => Err("a merge key (<<) takes a mapping or a list of mappings"),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => {
                        return Err("a merge key (<<) takes a mapping or a list of mappings".into())
                    }
                };
                for src in sources {
                    for (k, x) in src {
                        if !m.contains_key(&k) {
                            m.insert(k, x);
                        }
                    }
                }
            }
            for (_, x) in m.iter_mut() {
                merge_keys(x)?;
            }
            Ok(())
        }
        Value::Sequence(list) => list.iter_mut().try_for_each(merge_keys),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_mapping_and_applies_merge_keys() {
        let m = load(
            "x-base: &base\n  image: busybox\n  restart: always\nservices:\n  web:\n    <<: *base\n    restart: \"no\"\n",
        )
        .unwrap();
        let web = &m["services"]["web"];
        assert_eq!(web["image"], Value::from("busybox"));
        assert_eq!(web["restart"], Value::from("no"));
        assert!(web.get("<<").is_none());
    }

    #[test]
    fn nested_merge_keys_are_applied() {
        let m = load("a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: *b, z: 3}\n").unwrap();
        let c = &m["c"];
        assert_eq!(c["x"], Value::from(1));
        assert_eq!(c["y"], Value::from(2));
        assert!(c.get("<<").is_none());
    }

    #[test]
    fn refuses_what_is_not_a_usable_document() {
        for bad in [
            "",
            "- a\n- b\n",
            "a: [1, 2\n",
            "a: 1\na: 2\n",
            "a: !custom 1\n",
            "a: 1\n---\nb: 2\n",
            "<<: 5\n",
        ] {
            let e = load(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Yaml, "{bad:?}");
        }
    }

    #[test]
    fn an_alias_bomb_is_refused_quickly() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            let items = [prev.as_str(); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{items}]\n"));
        }
        let started = std::time::Instant::now();
        let e = load(&text).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Yaml, "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn an_oversized_text_is_refused() {
        let text = format!("a: \"{}\"\n", "x".repeat(MAX_TEXT_BYTES));
        assert!(load(&text).unwrap_err().message.contains("limit"));
    }
}
