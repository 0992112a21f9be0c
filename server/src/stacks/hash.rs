//! The config hash: SHA-256 over a canonical JSON text (object keys sorted at every level,
//! no whitespace), so it does not depend on the order of keys in the file or in memory.
//!
//! Owns: canonical JSON and the hash. Must not: decide what goes into the hash.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The lowercase hex SHA-256 of `v`'s canonical JSON.
pub(super) fn sha256_hex(v: &Value) -> String {
    let mut text = String::new();
    canonical(v, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_matter_but_values_and_list_order_do() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(sha256_hex(&a), sha256_hex(&b));
        assert_ne!(
            sha256_hex(&a),
            sha256_hex(&json!({"b": 1, "a": {"y": [2, 1], "x": "s"}}))
        );
        assert_ne!(
            sha256_hex(&a),
            sha256_hex(&json!({"b": 2, "a": {"y": [1, 2], "x": "s"}}))
        );
        assert_eq!(sha256_hex(&a).len(), 64);
    }
}
