//! Optional message signing (the seed's HMAC option): HMAC-SHA256 over a canonical form of
//! each envelope, with a nonce and a timestamp window against replay.
//!
//! A signed envelope carries two extra top-level fields, which unsigned peers ignore:
//!
//! ```json
//! {"id": "...", "type": "...", "timestamp": "...", "payload": {...},
//!  "nonce": "9f2c4e1a7b3d5f60", "sig": "<64 hex digits>"}
//! ```
//!
//! `sig` is the lowercase hex HMAC-SHA256, under the agent's signing key, of
//! `v2 \n direction \n id \n type \n timestamp \n nonce \n canonical(payload)`, where
//! `direction` is `server->agent` or `agent->server` (see [`Direction`]) and `canonical` is
//! JSON with object keys sorted at every level and no whitespace (an absent payload is
//! `null`). The direction makes a message signed by one side worthless when reflected back
//! at it. This is signing version 2 ([`SIGNING_VERSION`]); the agent advertises it in `auth`
//! (`signing_version`), and a server refuses a signing agent that does not, naming the
//! upgrade. Version 1 (no version line, no direction) is neither produced nor accepted.
//!
//! Owns: the canonical form, signing and verification, the key length ([`KEY_LEN`]) and the
//! bounded nonce cache ([`NonceCache`]) both sides use. The caller keeps its caches and
//! supplies the clock and the nonce. Must not: do I/O.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The canonical form this build signs and accepts (see the module docs).
pub const SIGNING_VERSION: u32 = 2;

/// Which way a signed message travels: part of what is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ServerToAgent,
    AgentToServer,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ServerToAgent => "server->agent",
            Direction::AgentToServer => "agent->server",
        }
    }
}

/// How far a signed message's timestamp may be from the receiver's clock, in seconds.
pub const TIMESTAMP_WINDOW_SECS: i64 = 60;

/// The length of a per-agent signing key, in bytes. Keys travel as 64 hex digits.
pub const KEY_LEN: usize = 32;

/// Parses a signing key written as 64 hex digits.
pub fn parse_key(text: &str) -> Result<Vec<u8>, SignatureError> {
    let key = hex::decode(text.trim()).map_err(|_| SignatureError::BadKey)?;
    if key.len() != KEY_LEN {
        return Err(SignatureError::BadKey);
    }
    Ok(key)
}

/// Why a signed message was refused. Answer with an `error` (code `unauthorized`: the message
/// could not be authenticated) and do not act on it; after a few, close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signing key must be {KEY_LEN} bytes written as {} hex digits", KEY_LEN * 2)]
    BadKey,
    #[error("the message is not a JSON envelope")]
    Malformed,
    #[error("the message is not signed")]
    Missing,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the message's timestamp is outside the {TIMESTAMP_WINDOW_SECS} s window")]
    Stale,
    #[error("the nonce was already used (replay)")]
    Replayed,
}

/// Writes `v` as JSON with object keys sorted at every level and no whitespace.
pub fn canonical_json(v: &Value, out: &mut String) {
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
                canonical_json(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn signing_input(env: &Value, direction: Direction, nonce: &str) -> Option<String> {
    let id = env.get("id")?.as_str()?;
    let kind = env.get("type")?.as_str()?;
    let ts = env.get("timestamp")?.as_str()?;
    let mut s = format!(
        "v{SIGNING_VERSION}\n{}\n{id}\n{kind}\n{ts}\n{nonce}\n",
        direction.as_str()
    );
    canonical_json(env.get("payload").unwrap_or(&Value::Null), &mut s);
    Some(s)
}

fn mac(key: &[u8], input: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(input.as_bytes());
    m
}

/// Signs an encoded envelope travelling `direction`: returns the same JSON with `nonce` and
/// `sig` added. `nonce` must be unique per message for this key (for example 16 random hex
/// digits).
pub fn sign(
    key: &[u8],
    direction: Direction,
    encoded: &str,
    nonce: &str,
) -> Result<String, SignatureError> {
    let mut env: Value = serde_json::from_str(encoded).map_err(|_| SignatureError::Malformed)?;
    let input = signing_input(&env, direction, nonce).ok_or(SignatureError::Malformed)?;
    let tag = mac(key, &input).finalize().into_bytes();
    let obj = env.as_object_mut().ok_or(SignatureError::Malformed)?;
    obj.insert("nonce".into(), Value::String(nonce.to_string()));
    obj.insert("sig".into(), Value::String(hex::encode(tag)));
    Ok(env.to_string())
}

/// Verifies a signed message that travelled `direction` (a receiver passes the direction
/// towards itself, so its own messages reflected back do not verify). `now_secs` is the
/// receiver's Unix time; `seen` decides whether the nonce was used before (and records it):
/// return `true` for a fresh nonce. The signature is compared in constant time.
pub fn verify(
    key: &[u8],
    direction: Direction,
    raw: &[u8],
    now_secs: i64,
    seen: &mut dyn FnMut(&str) -> bool,
) -> Result<(), SignatureError> {
    let env: Value = serde_json::from_slice(raw).map_err(|_| SignatureError::Malformed)?;
    let nonce = env
        .get("nonce")
        .and_then(Value::as_str)
        .ok_or(SignatureError::Missing)?;
    let sig = env
        .get("sig")
        .and_then(Value::as_str)
        .ok_or(SignatureError::Missing)?;
    if nonce.is_empty() || nonce.len() > 128 {
        return Err(SignatureError::Malformed);
    }
    let tag = hex::decode(sig).map_err(|_| SignatureError::BadSignature)?;
    let input = signing_input(&env, direction, nonce).ok_or(SignatureError::Malformed)?;
    mac(key, &input)
        .verify_slice(&tag)
        .map_err(|_| SignatureError::BadSignature)?;
    let ts = env
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(crate::time::parse_rfc3339);
    match ts {
        Some(t) if (t - now_secs).abs() <= TIMESTAMP_WINDOW_SECS => {}
        _ => return Err(SignatureError::Stale),
    }
    if !seen(nonce) {
        return Err(SignatureError::Replayed);
    }
    Ok(())
}

/// The most nonces one [`NonceCache`] remembers. A well-behaved peer sends far fewer messages
/// within twice the timestamp window; past this, the oldest are forgotten first.
pub const MAX_NONCES: usize = 50_000;

/// A bounded memory of the nonces one peer used recently, for [`verify`]'s `seen` callback:
/// the one nonce cache of both sides (the agent keeps one for its server, the server one per
/// agent). A nonce is kept for twice [`TIMESTAMP_WINDOW_SECS`] (an older message is refused as
/// stale anyway) and at most [`MAX_NONCES`] are kept.
#[derive(Debug, Default)]
pub struct NonceCache {
    order: std::collections::VecDeque<(i64, String)>,
    set: std::collections::HashSet<String>,
}

impl NonceCache {
    /// Records `nonce` seen at `now_secs` (Unix seconds); `false` when it was already seen.
    pub fn check_and_insert(&mut self, nonce: &str, now_secs: i64) -> bool {
        while let Some((t, _)) = self.order.front() {
            if now_secs - *t > 2 * TIMESTAMP_WINDOW_SECS || self.order.len() >= MAX_NONCES {
                if let Some((_, n)) = self.order.pop_front() {
                    self.set.remove(&n);
                }
            } else {
                break;
            }
        }
        if self.set.contains(nonce) {
            return false;
        }
        self.set.insert(nonce.to_string());
        self.order.push_back((now_secs, nonce.to_string()));
        true
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, HeartbeatPayload, Message};

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn signed_heartbeat(nonce: &str) -> (String, i64) {
        let env = Envelope::new(
            "hb-1",
            Message::Heartbeat(HeartbeatPayload {
                docker_reachable: Some(true),
                ..Default::default()
            }),
        );
        let now = crate::time::parse_rfc3339(&env.timestamp).unwrap();
        (sign(KEY, A2S, &env.encode(), nonce).unwrap(), now)
    }

    const A2S: Direction = Direction::AgentToServer;
    const S2A: Direction = Direction::ServerToAgent;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":"q"}}"#).unwrap();
        let mut s = String::new();
        canonical_json(&v, &mut s);
        assert_eq!(s, r#"{"a":{"c":"q","z":[{"x":2,"y":1}]},"b":1}"#);
    }

    #[test]
    fn a_signed_message_verifies_and_still_decodes() {
        let (text, now) = signed_heartbeat("n-1");
        let mut cache = NonceCache::default();
        assert_eq!(
            verify(KEY, A2S, text.as_bytes(), now, &mut |n| cache
                .check_and_insert(n, now)),
            Ok(())
        );
        assert!(
            Envelope::decode(text.as_bytes()).is_ok(),
            "unsigned peers ignore the extra fields"
        );
    }

    #[test]
    fn altered_replayed_stale_and_unsigned_messages_are_refused() {
        let (text, now) = signed_heartbeat("n-2");
        let mut cache = NonceCache::default();
        let altered = text.replace("\"docker_reachable\":true", "\"docker_reachable\":false");
        assert_ne!(altered, text);
        assert_eq!(
            verify(KEY, A2S, altered.as_bytes(), now, &mut |n| cache
                .check_and_insert(n, now)),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(b"another key", A2S, text.as_bytes(), now, &mut |_| true),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(KEY, A2S, text.as_bytes(), now, &mut |n| cache
                .check_and_insert(n, now)),
            Ok(())
        );
        assert_eq!(
            verify(KEY, A2S, text.as_bytes(), now, &mut |n| cache
                .check_and_insert(n, now)),
            Err(SignatureError::Replayed)
        );
        assert_eq!(
            verify(KEY, A2S, text.as_bytes(), now + 3600, &mut |_| true),
            Err(SignatureError::Stale)
        );
        let plain = Envelope::new("x", Message::Heartbeat(HeartbeatPayload::default())).encode();
        assert_eq!(
            verify(KEY, A2S, plain.as_bytes(), now, &mut |_| true),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(KEY, A2S, b"garbage", now, &mut |_| true),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn a_message_reflected_back_to_its_signer_is_refused() {
        let (text, now) = signed_heartbeat("n-3");
        // Signed by the agent: the server accepts it, the agent itself must not.
        assert_eq!(
            verify(KEY, S2A, text.as_bytes(), now, &mut |_| true),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(KEY, A2S, text.as_bytes(), now, &mut |_| true),
            Ok(())
        );
    }

    #[test]
    fn the_old_form_without_version_and_direction_is_refused() {
        let env = Envelope::new("hb-9", Message::Heartbeat(HeartbeatPayload::default()));
        let now = crate::time::parse_rfc3339(&env.timestamp).unwrap();
        let v: Value = serde_json::from_str(&env.encode()).unwrap();
        let mut input = format!("hb-9\nheartbeat\n{}\nold-1\n", env.timestamp);
        canonical_json(&v["payload"], &mut input);
        let tag = mac(KEY, &input).finalize().into_bytes();
        let mut old = v.clone();
        old["nonce"] = Value::String("old-1".into());
        old["sig"] = Value::String(hex::encode(tag));
        for dir in [A2S, S2A] {
            assert_eq!(
                verify(KEY, dir, old.to_string().as_bytes(), now, &mut |_| true),
                Err(SignatureError::BadSignature)
            );
        }
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert_eq!(parse_key(&"ab".repeat(32)).unwrap().len(), KEY_LEN);
        assert_eq!(parse_key("abcd"), Err(SignatureError::BadKey));
        assert_eq!(parse_key(&"zz".repeat(32)), Err(SignatureError::BadKey));
    }

    #[test]
    fn the_nonce_cache_is_bounded_by_time() {
        let mut c = NonceCache::default();
        assert!(c.check_and_insert("a", 0));
        assert!(!c.check_and_insert("a", 1));
        assert!(c.check_and_insert("b", 1000));
        assert_eq!(c.len(), 1, "old nonces are forgotten");
    }

    #[test]
    fn the_nonce_cache_is_bounded_by_size() {
        let mut c = NonceCache::default();
        for i in 0..MAX_NONCES + 10 {
            assert!(c.check_and_insert(&i.to_string(), 5));
        }
        assert_eq!(c.len(), MAX_NONCES);
        assert!(!c.check_and_insert(&(MAX_NONCES + 9).to_string(), 5));
        assert!(
            c.check_and_insert("0", 5),
            "the oldest were forgotten first"
        );
    }
}
