//! Query strings as dockerd reads them (Go's `url.ParseQuery`: keys and values
//! percent-decoded, `+` is a space, and `Get` takes a key's first value), and our own
//! encoding of the decoded pairs, which is what the agent sends.
//!
//! Refused, because Go versions disagree or the result would be ambiguous: a `;` (older Go
//! splits on it, newer Go drops the pair), a bad `%` escape, bytes that are not UTF-8 once
//! decoded, and a repeated key among those the policy reads ([`SCOPED`]).
//!
//! Owns: decoding, encoding, and the label filter added to `filters`. Must not: do I/O.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Query keys the policy reads on some route: one value each.
pub const SCOPED: &[&str] = &["filters", "container", "fromSrc", "remote", "networkmode"];

pub type Pairs = Vec<(String, String)>;

fn unescape(s: &str) -> Result<String, String> {
    decode(s, true)
}

/// Decodes `%XX` in a path segment, where `+` is itself.
pub fn unescape_path(s: &str) -> Result<String, String> {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("invalid escape near {:?}", &s[i..]))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "an escape decodes to bytes that are not UTF-8".into())
}

/// Decodes a raw query into its pairs, in order, as Go does, refusing what Go versions read
/// differently and repeats of [`SCOPED`] keys.
pub fn parse(raw: Option<&str>) -> Result<Pairs, String> {
    let raw = raw.unwrap_or("");
    if raw.contains(';') {
        return Err("the query has a ';' (use '&' between parameters)".into());
    }
    let mut pairs = Pairs::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((unescape(k)?, unescape(v)?));
    }
    for k in SCOPED {
        if pairs.iter().filter(|(x, _)| x == k).count() > 1 {
            return Err(format!("the query parameter {k} is repeated"));
        }
    }
    Ok(pairs)
}

/// The first value of `key`, as Go's `Get`.
pub fn get<'a>(pairs: &'a Pairs, key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Sets the first value of `key` (or adds the pair).
pub fn set(pairs: &mut Pairs, key: &str, value: String) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(p) => p.1 = value,
        None => pairs.push((key.to_string(), value)),
    }
}

/// `k=v&...` with everything but RFC 3986's unreserved characters escaped.
pub fn encode(pairs: &Pairs) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                protocol::mapping::percent_encode(k),
                protocol::mapping::percent_encode(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Adds our labels to a Docker `filters` JSON value: `label` in the list, string or legacy
/// map form is kept and ours join it (Docker ANDs label filters). A value that is not an
/// object (dockerd would refuse it) becomes one holding only our labels.
pub fn add_label_filters(filters: &mut Value, labels: &BTreeMap<String, String>) {
    if labels.is_empty() {
        return;
    }
    if !filters.is_object() {
        *filters = Value::Object(Map::new());
    }
    let Some(obj) = filters.as_object_mut() else {
        return;
    };
    let ours = labels.iter().map(|(k, v)| format!("{k}={v}"));
    let entry = obj.entry("label").or_insert(Value::Array(Vec::new()));
    match entry {
        Value::Object(m) => m.extend(ours.map(|l| (l, Value::Bool(true)))),
        Value::Array(a) => a.extend(ours.map(Value::String)),
        other => {
            let mut a = vec![other.clone()];
            a.extend(ours.map(Value::String));
            *other = Value::Array(a);
        }
    }
}

/// The `filters` parameter with our labels added (one is added when there was none).
pub fn scope_filters(pairs: &mut Pairs, labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.is_empty() {
        return Ok(());
    }
    // dockerd refuses filters it cannot parse, so a value that is not JSON is refused here
    // rather than replaced.
    let mut filters = match get(pairs, "filters") {
        Some(f) if !f.trim().is_empty() => super::gojson::parse(f.as_bytes())
            .and_then(|j| filters_value(&j))
            .map_err(|e| format!("the filters parameter: {e}"))?,
        _ => Value::Null,
    };
    add_label_filters(&mut filters, labels);
    set(pairs, "filters", filters.to_string());
    Ok(())
}

/// Docker's filters are `map[string]map[string]bool` (or the legacy `map[string][]string`):
/// an object whose repeated keys keep their last value, as in Go; no key folding. A key
/// repeated inside one filter's values is refused.
fn filters_value(j: &super::gojson::J) -> Result<Value, String> {
    use super::gojson::T;
    let mut slot = Value::Null;
    super::gojson::decode(T::Map(&T::Opaque), j, &mut slot, "filters")?;
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_keys_and_values_as_go_does() {
        let p = parse(Some("all=1&%66ilters=%7B%7D&a+b=c+d&empty&&x=")).unwrap();
        assert_eq!(
            p,
            vec![
                ("all".into(), "1".into()),
                ("filters".into(), "{}".into()),
                ("a b".into(), "c d".into()),
                ("empty".into(), "".into()),
                ("x".into(), "".into()),
            ]
        );
        assert_eq!(
            get(&parse(Some("%63ontainer=v")).unwrap(), "container"),
            Some("v")
        );
        assert_eq!(encode(&p), "all=1&filters=%7B%7D&a%20b=c%20d&empty=&x=");
        assert_eq!(parse(Some(&encode(&p))).unwrap(), p);
        for bad in [
            "filters=1&%66ilters=2",
            "container=a&container=b",
            "a=1;filters=2",
            "a=%zz",
            "a=%4",
            "a=%ff",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
        // Keys the policy does not read may repeat (docker save a b sends names twice).
        assert_eq!(parse(Some("names=a&names=b")).unwrap().len(), 2);
    }

    #[test]
    fn label_filters_join_every_form() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let mut p = parse(Some(
            "all=1&filters=%7B%22status%22%3A%5B%22running%22%5D%7D",
        ))
        .unwrap();
        scope_filters(&mut p, &labels).unwrap();
        let f: Value = serde_json::from_str(get(&p, "filters").unwrap()).unwrap();
        assert_eq!(f, json!({"status": ["running"], "label": ["team=a"]}));
        let mut p = Pairs::new();
        scope_filters(&mut p, &labels).unwrap();
        assert_eq!(get(&p, "filters"), Some(r#"{"label":["team=a"]}"#));
        let mut p = vec![(
            "filters".to_string(),
            r#"{"label":{"x=1":true},"label":{}}"#.to_string(),
        )];
        scope_filters(&mut p, &labels).unwrap();
        let f: Value = serde_json::from_str(get(&p, "filters").unwrap()).unwrap();
        assert_eq!(f, json!({"label": {"team=a": true}}));
        let mut p = vec![("filters".to_string(), "not json".to_string())];
        assert!(scope_filters(&mut p, &labels).is_err());
    }
}
