//! Optional per-agent message signing (HMAC-SHA256), on top of [`protocol::signing`].
//!
//! When an agent has a signing key, every JSON envelope in both directions carries two more
//! top-level fields, `nonce` and `sig`, as defined by `protocol::signing` (the one definition
//! the agent shares): `sig` is the hex HMAC-SHA256 of
//! `v2 \n direction \n id \n type \n timestamp \n nonce \n canonical(payload)`, so a message
//! the server signed does not verify when reflected back at it. The server adds what the
//! protocol crate leaves to its caller: the per-agent key (encrypted at rest), fresh nonces,
//! and a per-agent nonce cache that outlives a session (so a message cannot be replayed on a
//! new connection within the window). Binary data frames of passthrough streams are not
//! envelopes and are not signed.
//!
//! Owns: the per-agent signer and the nonce cache. Must not: hold a key in clear longer than a
//! session, or decide whether an agent signs (its row says so).

use protocol::signing::{NonceCache, KEY_LEN};
use rand::{RngCore, SeedableRng};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

pub use protocol::signing::{canonical_json, Direction, SIGNING_VERSION, TIMESTAMP_WINDOW_SECS};

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A fresh random signing key, as hex.
pub fn generate_key_hex() -> String {
    random_hex(KEY_LEN)
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

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Signer {
    /// From 64 hex characters.
    pub fn from_hex(hex_key: &str) -> Option<Signer> {
        let raw = hex::decode(hex_key.trim()).ok()?;
        Some(Signer {
            key: raw.try_into().ok()?,
        })
    }

    /// Signs an encoded envelope the server sends: the same JSON with `nonce` and `sig`.
    pub fn sign_text(&self, encoded: &str) -> String {
        self.sign_text_as(Direction::ServerToAgent, encoded)
    }

    /// Signs an encoded envelope travelling `direction` (tests play the agent with it).
    pub fn sign_text_as(&self, direction: Direction, encoded: &str) -> String {
        protocol::signing::sign(&self.key, direction, encoded, &random_hex(16))
            .unwrap_or_else(|_| encoded.to_string())
    }

    /// Adds `nonce` and `sig` for `direction` to an envelope held as JSON.
    pub fn sign_envelope(&self, direction: Direction, env: &mut Value) {
        if let Ok(v) = serde_json::from_str(&self.sign_text_as(direction, &env.to_string())) {
            *env = v;
        }
    }

    /// Checks a message the agent sent: signature (constant time, for the agent-to-server
    /// direction), timestamp window, then nonce freshness (recorded in `nonces` under
    /// `agent`).
    pub fn verify(&self, raw: &[u8], nonces: &AgentNonces, agent: &str) -> Result<(), SigError> {
        self.verify_from(Direction::AgentToServer, raw, nonces, agent)
    }

    /// [`Signer::verify`] for a message that travelled `direction`.
    pub fn verify_from(
        &self,
        direction: Direction,
        raw: &[u8],
        nonces: &AgentNonces,
        agent: &str,
    ) -> Result<(), SigError> {
        use protocol::signing::SignatureError as E;
        let now = now_secs();
        protocol::signing::verify(&self.key, direction, raw, now, &mut |n| {
            nonces.check_and_insert(agent, n, now)
        })
        .map_err(|e| match e {
            E::Malformed | E::Missing | E::BadKey => SigError::Missing,
            E::BadSignature => SigError::BadSignature,
            E::Stale => SigError::Stale,
            E::Replayed => SigError::Replayed,
        })
    }
}

/// The nonces each agent used recently: one [`protocol::signing::NonceCache`] per agent
/// (bounded in time and size there), kept across sessions so a message cannot be replayed on
/// a new connection within the window.
#[derive(Debug, Default)]
pub struct AgentNonces {
    map: Mutex<HashMap<String, NonceCache>>,
}

impl AgentNonces {
    /// Records `nonce` of `agent` seen at `now_secs`. Returns false when it was already seen.
    pub fn check_and_insert(&self, agent: &str, nonce: &str, now_secs: i64) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(agent.to_string())
            .or_default()
            .check_and_insert(nonce, now_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sign_then_verify_and_tamper() {
        let s = Signer::from_hex(&generate_key_hex()).unwrap();
        let nonces = AgentNonces::default();
        let env = json!({"id": "1", "type": "heartbeat", "timestamp": protocol::time::now_rfc3339(),
            "payload": {"docker_reachable": true}});
        let signed = s.sign_text_as(Direction::AgentToServer, &env.to_string());
        assert_eq!(s.verify(signed.as_bytes(), &nonces, "a"), Ok(()));
        // What the server itself signed does not verify when reflected back at it.
        let ours = s.sign_text(&env.to_string());
        assert_eq!(
            s.verify(ours.as_bytes(), &nonces, "a"),
            Err(SigError::BadSignature)
        );
        assert_eq!(
            s.verify(signed.as_bytes(), &nonces, "a"),
            Err(SigError::Replayed)
        );
        let mut bad: Value = serde_json::from_str(&signed).unwrap();
        bad["payload"]["docker_reachable"] = json!(false);
        assert_eq!(
            s.verify(bad.to_string().as_bytes(), &nonces, "a"),
            Err(SigError::BadSignature)
        );
        assert!(!format!("{s:?}").contains(&hex::encode(s.key)));
    }
}
