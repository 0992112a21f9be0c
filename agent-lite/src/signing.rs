//! The agent's side of message signing (`agent.signing_key`, see `protocol::signing`): the
//! validated key, the nonces of what it sends, and the nonce cache of what it received.
//!
//! Owns: the key's syntax and its masking, sealing outgoing envelopes and verifying incoming
//! ones. Must not: decide what happens to a refused message (the session answers it).

use protocol::signing::{Direction, NonceCache, SignatureError, KEY_LEN};
use protocol::Secret;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The per-agent HMAC key, validated. `Debug` never shows it.
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Parses the key as the server shows it, 64 hex digits (`protocol::signing::parse_key`),
    /// or the same 32 bytes in base64. The error never contains the key.
    pub fn parse(k: &Secret) -> Result<SigningKey, String> {
        use base64::Engine as _;
        let t = k.expose().trim();
        if let Ok(key) = protocol::signing::parse_key(t) {
            return Ok(SigningKey(key));
        }
        match base64::engine::general_purpose::STANDARD.decode(t) {
            Ok(key) if key.len() == KEY_LEN => Ok(SigningKey(key)),
            _ => Err(format!(
                "agent.signing_key must be {} hex digits as the server shows it (or {KEY_LEN} bytes in base64)",
                KEY_LEN * 2
            )),
        }
    }

    /// The key bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Signs what the agent sends and verifies what it receives, with one key.
#[derive(Debug)]
pub struct Signer {
    key: SigningKey,
    /// Nonces of verified messages (replay protection across sessions).
    nonces: Mutex<NonceCache>,
    sent: AtomicU64,
}

impl Signer {
    pub fn new(key: SigningKey) -> Self {
        Signer {
            key,
            nonces: Mutex::new(NonceCache::default()),
            sent: AtomicU64::new(1),
        }
    }

    /// A fresh nonce: 16 random hex digits and a counter.
    fn next_nonce(&self) -> String {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:x}", crate::random::random_u64())
    }

    /// Signs an encoded envelope the agent sends.
    pub fn seal(&self, text: String) -> String {
        let nonce = self.next_nonce();
        match protocol::signing::sign(self.key.expose(), Direction::AgentToServer, &text, &nonce) {
            Ok(signed) => signed,
            Err(e) => {
                // Our own envelopes always encode as objects; send it unsigned (the server
                // refuses it) rather than lose it silently.
                log::error!("cannot sign an outgoing message: {e}");
                text
            }
        }
    }

    /// Verifies a JSON message of the server: signature, timestamp window, fresh nonce.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), SignatureError> {
        let now = crate::state::now_secs() as i64;
        let mut nonces = match self.nonces.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        protocol::signing::verify(
            self.key.expose(),
            Direction::ServerToAgent,
            bytes,
            now,
            &mut |n| nonces.check_and_insert(n, now),
        )
    }
}

/// Seals `text` when the agent signs (`signer` is set), else returns it as it is.
pub fn seal(signer: Option<&Signer>, text: String) -> String {
    match signer {
        Some(s) => s.seal(text),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_hex_or_base64_and_errors_without_the_key() {
        let hex_key = SigningKey::parse(&Secret::new("ab".repeat(32))).unwrap();
        assert_eq!(hex_key.expose(), &[0xab; 32][..]);
        assert!(!format!("{hex_key:?}").contains("ab"));
        let b64 = SigningKey::parse(&Secret::new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="))
            .unwrap();
        assert_eq!(b64.expose(), (0u8..32).collect::<Vec<_>>());
        for bad in ["", "abcd", "not a key!", "zz"] {
            let err = SigningKey::parse(&Secret::new(bad)).unwrap_err();
            assert!(err.contains("agent.signing_key"), "{err}");
            if bad.len() > 2 {
                assert!(!err.contains(bad));
            }
        }
        assert!(SigningKey::parse(&Secret::new("ab".repeat(16))).is_err());
    }
}
