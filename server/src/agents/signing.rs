//! Optional per-agent message signing (HMAC-SHA256).
//!
//! When an agent has a signing key, every JSON envelope in both directions carries two more
//! top-level fields: `nonce` (random, unique per message, 16 to 128 characters) and `sig`
//! (lowercase hex of HMAC-SHA256(key, signing input)). The signing input is
//!
//! ```text
//! id|type|timestamp|nonce|canonical-payload
//! ```
//!
//! where canonical-payload is the payload as compact JSON with object keys sorted
//! (recursively) and serde_json's number and string formatting. The receiver rejects a bad
//! signature, a nonce it has seen in the window, and a timestamp more than the window away
//! from its clock. Binary data frames of passthrough streams are not envelopes and are not
//! signed.
//!
//! These helpers belong in the protocol crate so the agent can share them; until they move,
//! the server keeps its copy here.

use hmac::{Hmac, Mac};
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use sha2::Sha256;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

type HmacSha256 = Hmac<Sha256>;

/// The length of a signing key in bytes (shown to the operator as 64 hex characters).
pub const KEY_LEN: usize = 32;

/// A fresh random signing key, as hex.
pub fn generate_key_hex() -> String {
    let mut key = [0u8; KEY_LEN];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut key);
    hex::encode(key)
}

/// Compact JSON with object keys sorted at every level.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `id|type|timestamp|nonce|canonical-payload`.
pub fn signing_input(
    id: &str,
    kind: &str,
    timestamp: &str,
    nonce: &str,
    payload: &Value,
) -> String {
    let payload = if payload.is_null() {
        "{}".to_string()
    } else {
        canonical_json(payload)
    };
    format!("{id}|{kind}|{timestamp}|{nonce}|{payload}")
}

/// A per-agent signing key. `Debug` never shows it.
#[derive(Clone)]
pub struct Signer {
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

/// Why a signed message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigError {
    Missing,
    BadSignature,
    Replayed,
    Stale,
}

impl SigError {
    pub fn message(&self) -> &'static str {
        match self {
            SigError::Missing => "this agent signs its messages: nonce and sig are required",
            SigError::BadSignature => "bad message signature",
            SigError::Replayed => "replayed message (nonce already seen)",
            SigError::Stale => "message timestamp outside the accepted window",
        }
    }
}

impl Signer {
    /// From 64 hex characters.
    pub fn from_hex(hex_key: &str) -> Option<Signer> {
        let raw = hex::decode(hex_key.trim()).ok()?;
        Some(Signer {
            key: raw.try_into().ok()?,
        })
    }

    fn mac(&self, input: &str) -> HmacSha256 {
        // HMAC accepts keys of any length; ours is 32 bytes.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(input.as_bytes());
        m
    }

    /// The hex signature of `input`.
    pub fn sign(&self, input: &str) -> String {
        hex::encode(self.mac(input).finalize().into_bytes())
    }

    /// Adds `nonce` and `sig` to an encoded envelope (a JSON object).
    pub fn sign_envelope(&self, env: &mut Value) {
        let mut n = [0u8; 16];
        rand::rngs::StdRng::from_os_rng().fill_bytes(&mut n);
        let nonce = hex::encode(n);
        let text = |k: &str| env.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let input = signing_input(
            &text("id"),
            &text("type"),
            &text("timestamp"),
            &nonce,
            env.get("payload").unwrap_or(&Value::Null),
        );
        let sig = self.sign(&input);
        if let Some(m) = env.as_object_mut() {
            m.insert("nonce".into(), Value::String(nonce));
            m.insert("sig".into(), Value::String(sig));
        }
    }

    /// Checks a received envelope (already parsed as JSON): signature (constant time), then
    /// timestamp window, then nonce freshness (recorded in `nonces` under `agent`).
    pub fn verify(
        &self,
        env: &Value,
        window: Duration,
        nonces: &NonceCache,
        agent: &str,
    ) -> Result<(), SigError> {
        let text = |k: &str| env.get(k).and_then(Value::as_str);
        let (Some(nonce), Some(sig)) = (text("nonce"), text("sig")) else {
            return Err(SigError::Missing);
        };
        if !(16..=128).contains(&nonce.len()) {
            return Err(SigError::Missing);
        }
        let input = signing_input(
            text("id").unwrap_or(""),
            text("type").unwrap_or(""),
            text("timestamp").unwrap_or(""),
            nonce,
            env.get("payload").unwrap_or(&Value::Null),
        );
        let Ok(raw_sig) = hex::decode(sig) else {
            return Err(SigError::BadSignature);
        };
        self.mac(&input)
            .verify_slice(&raw_sig)
            .map_err(|_| SigError::BadSignature)?;
        let ts = text("timestamp")
            .and_then(protocol::time::parse_rfc3339)
            .ok_or(SigError::Stale)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if (now - ts).unsigned_abs() > window.as_secs() {
            return Err(SigError::Stale);
        }
        if !nonces.insert(agent, nonce, window) {
            return Err(SigError::Replayed);
        }
        Ok(())
    }
}

/// Nonces seen per agent within the window: bounded in time (twice the window) and size.
#[derive(Debug, Default)]
pub struct NonceCache {
    map: Mutex<HashMap<String, AgentNonces>>,
}

#[derive(Debug, Default)]
struct AgentNonces {
    seen: HashSet<String>,
    order: VecDeque<(String, Instant)>,
}

/// The most nonces remembered per agent (the message rate limit keeps a well-behaved agent
/// far below this within a window).
pub const MAX_NONCES_PER_AGENT: usize = 50_000;

impl NonceCache {
    /// Records `nonce` for `agent`. Returns false when it was already seen.
    pub fn insert(&self, agent: &str, nonce: &str, window: Duration) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(agent.to_string()).or_default();
        let keep = window * 2;
        while let Some((n, at)) = e.order.front() {
            if at.elapsed() > keep || e.order.len() >= MAX_NONCES_PER_AGENT {
                e.seen.remove(n);
                e.order.pop_front();
            } else {
                break;
            }
        }
        if !e.seen.insert(nonce.to_string()) {
            return false;
        }
        e.order.push_back((nonce.to_string(), Instant::now()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [1, {"z": 0, "y": "x"}], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[1,{"y":"x","z":0}]},"b":1}"#
        );
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let s = Signer::from_hex(&generate_key_hex()).unwrap();
        let nonces = NonceCache::default();
        let mut env = json!({"id": "1", "type": "heartbeat", "timestamp": protocol::time::now_rfc3339(),
            "payload": {"docker_reachable": true}});
        s.sign_envelope(&mut env);
        let w = Duration::from_secs(60);
        assert_eq!(s.verify(&env, w, &nonces, "a"), Ok(()));
        assert_eq!(s.verify(&env, w, &nonces, "a"), Err(SigError::Replayed));
        let mut bad = env.clone();
        bad["payload"]["docker_reachable"] = json!(false);
        assert_eq!(s.verify(&bad, w, &nonces, "a"), Err(SigError::BadSignature));
        assert!(!format!("{s:?}").contains(&hex::encode(s.key)));
    }
}
