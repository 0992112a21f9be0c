//! Host labels and label selectors, as Kubernetes writes them.
//!
//! A host carries two label sets: the admin's (`PATCH /api/v1/hosts/{id}`) and the agent's
//! (reported from `agent.labels` in `agent.yaml` at every authentication). They are stored
//! apart so that neither overwrites the other; a selector matches their union, where the
//! admin's value wins on a key both set ([`effective`]).
//!
//! Syntax (Kubernetes labels):
//! - a key is an optional prefix and a name, `prefix/name`: the prefix a DNS subdomain (at
//!   most 253 characters of lowercase letters, digits, `-` and `.`, each dot-separated part
//!   starting and ending with a letter or digit), the name 1 to 63 characters of
//!   `[A-Za-z0-9]` with `-`, `_` and `.` inside;
//! - a value is empty or like a name (at most 63 characters);
//! - a host has at most [`MAX_LABELS`] labels per set.
//!
//! Owns: checking keys and values, the map type with duplicate keys refused, and the
//! [`selector`] (parse and match). Must not: do I/O or know where labels are stored.

pub mod selector;

pub use selector::{Selector, SelectorError};

use serde::de::{Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

/// A label set: key to value, in key order.
pub type Labels = BTreeMap<String, String>;

/// The most labels one set may hold.
pub const MAX_LABELS: usize = 64;
/// The longest name part of a key, and the longest value.
pub const MAX_NAME: usize = 63;
/// The longest prefix of a key.
pub const MAX_PREFIX: usize = 253;

/// Why a label was refused: the message names the key (and the rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LabelError(pub String);

fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
}

/// Whether `s` is a label name (or a non-empty value): 1 to 63 characters of `[A-Za-z0-9]`
/// with `-`, `_`, `.` inside.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b.iter().all(|&c| name_char(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Whether `s` is a DNS subdomain (RFC 1123): lowercase, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PREFIX
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Checks a label key.
pub fn check_key(key: &str) -> Result<(), LabelError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(LabelError(format!(
                "label key {key:?}: the prefix must be a lowercase DNS subdomain of at most {MAX_PREFIX} characters"
            )));
        }
    }
    if !is_name(name) {
        return Err(LabelError(format!(
            "label key {key:?}: the name must be 1 to {MAX_NAME} characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Checks a label value (it may be empty).
pub fn check_value(key: &str, value: &str) -> Result<(), LabelError> {
    if value.is_empty() || is_name(value) {
        return Ok(());
    }
    Err(LabelError(format!(
        "label {key:?}: the value must be empty or at most {MAX_NAME} characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    )))
}

/// Checks a whole label set.
pub fn check(labels: &Labels) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError(format!(
            "at most {MAX_LABELS} labels, got {}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        check_key(k)?;
        check_value(k, v)?;
    }
    Ok(())
}

/// The labels a selector sees: the agent's, with the admin's on top (the admin wins on a
/// key both set).
pub fn effective(admin: &Labels, agent: &Labels) -> Labels {
    let mut all = agent.clone();
    all.extend(admin.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

/// A label set as stored (JSON text); an unreadable or absent one is empty.
pub fn from_json(text: Option<&str>) -> Labels {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// The stored form of a label set.
pub fn to_json(labels: &Labels) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

/// A label merge patch as a request body holds it: absent (`None`, with `#[serde(default)]`),
/// `null` (`Some(None)`: remove every label) or an object of strings and `null`s, read with
/// a repeated key refused, so a body means one thing to every reader.
pub type Patch = Option<Option<BTreeMap<String, Option<String>>>>;

/// Reads a [`Patch`] (use with `#[serde(default, deserialize_with = ...)]`).
pub fn deserialize_patch<'de, D: Deserializer<'de>>(d: D) -> Result<Patch, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<BTreeMap<String, Option<String>>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of label keys to string values (or null), or null")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_map(V)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, Option<String>>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "label key {k:?} appears twice"
                    )));
                }
                out.insert(k, v);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(V).map(Some)
}

/// Applies a JSON merge patch (RFC 7386) to `labels`: a string sets the key, `null` removes
/// it; `None` (the whole `labels` member is `null`) removes every label. The result is
/// checked.
pub fn apply_patch(
    labels: &Labels,
    patch: Option<&BTreeMap<String, Option<String>>>,
) -> Result<Labels, LabelError> {
    let Some(patch) = patch else {
        return Ok(Labels::new());
    };
    let mut out = labels.clone();
    for (k, v) in patch {
        check_key(k)?;
        match v {
            Some(v) => {
                check_value(k, v)?;
                out.insert(k.clone(), v.clone());
            }
            None => {
                out.remove(k);
            }
        }
    }
    check(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_follow_kubernetes() {
        for ok in [
            "site",
            "a",
            "tier.role_1-x",
            "example.com/site",
            "k8s.io/arch",
            "a-b.c/Name",
            &"n".repeat(63),
            &format!("{}/x", "p".repeat(253)),
        ] {
            assert_eq!(check_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-site",
            "site-",
            "si te",
            "site/",
            "/site",
            "Example.com/site",
            "a..b/site",
            "-a.com/site",
            "a/b/c",
            "ké",
            &"n".repeat(64),
            &format!("{}/x", "p".repeat(254)),
        ] {
            let e = check_key(bad).expect_err(bad);
            assert!(e.0.contains("label key"), "{e}");
        }
    }

    #[test]
    fn values_may_be_empty_and_are_bounded() {
        for ok in ["", "berlin", "v1.2_3-x", "A", &"v".repeat(63)] {
            assert_eq!(check_value("k", ok), Ok(()), "{ok}");
        }
        for bad in ["-x", "x-", "a b", "a/b", "a=b", "ä", &"v".repeat(64)] {
            assert!(check_value("k", bad).is_err(), "{bad}");
        }
        let too_many: Labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(check(&too_many).is_err());
    }

    #[test]
    fn the_admin_wins_on_a_shared_key() {
        let admin = labels(&[("site", "berlin"), ("role", "gw")]);
        let agent = labels(&[("site", "paris"), ("arch", "arm64")]);
        assert_eq!(
            effective(&admin, &agent),
            labels(&[("site", "berlin"), ("role", "gw"), ("arch", "arm64")])
        );
    }

    #[test]
    fn a_merge_patch_sets_removes_and_clears() {
        let now = labels(&[("site", "berlin"), ("old", "x")]);
        let mut patch = BTreeMap::new();
        patch.insert("tier".to_string(), Some("edge".to_string()));
        patch.insert("old".to_string(), None);
        assert_eq!(
            apply_patch(&now, Some(&patch)),
            Ok(labels(&[("site", "berlin"), ("tier", "edge")]))
        );
        assert_eq!(apply_patch(&now, None), Ok(Labels::new()));
        patch.insert("bad key".to_string(), Some("v".into()));
        assert!(apply_patch(&now, Some(&patch)).is_err());
    }

    #[test]
    fn a_repeated_key_is_refused() {
        #[derive(serde::Deserialize, Debug)]
        struct B {
            #[serde(default, deserialize_with = "deserialize_patch")]
            labels: Patch,
        }
        let e = serde_json::from_str::<B>(r#"{"labels": {"a": "1", "a": "2"}}"#).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        let b: B = serde_json::from_str(r#"{"labels": {"a": "1", "b": null}}"#).unwrap();
        assert_eq!(b.labels.flatten().unwrap().len(), 2);
        let b: B = serde_json::from_str(r#"{"labels": null}"#).unwrap();
        assert_eq!(b.labels, Some(None), "null clears");
        let b: B = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(b.labels, None, "absent keeps");
        assert!(serde_json::from_str::<B>(r#"{"labels": {"a": 1}}"#).is_err());
    }

    #[test]
    fn stored_json_round_trips() {
        let l = labels(&[("example.com/site", "berlin"), ("empty", "")]);
        assert_eq!(from_json(Some(&to_json(&l))), l);
        assert_eq!(from_json(None), Labels::new());
        assert_eq!(from_json(Some("not json")), Labels::new());
    }
}
