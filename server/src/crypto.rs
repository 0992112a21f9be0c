//! Encryption at rest for secrets the server must be able to read back: the TLS client keys
//! of direct hosts; and keyed MACs derived from the same key (the sign-in device cookies).
//!
//! Owns: the AES-256-GCM key (from `encryption_key` in the config, or the 0600 file
//! `DATA_DIR/secret.key`, created on first start) and the `v1:` ciphertext format
//! (base64 of a 12-byte random nonce followed by the ciphertext and tag). The key never
//! goes into the database. Must not: log plaintext or the key.

use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use protocol::Secret;
use rand::{RngCore, SeedableRng};
use std::io::Write;
use std::path::Path;

const PREFIX: &str = "v1:";

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(data);
    m.finalize().into_bytes().into()
}

#[derive(Clone)]
pub struct KeyBox {
    cipher: Aes256Gcm,
    /// HMAC-SHA256(key, "docker-ctl mac v1"): the root of [`KeyBox::mac`], never the
    /// encryption key itself.
    mac_root: [u8; 32],
}

impl std::fmt::Debug for KeyBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBox(***)")
    }
}

fn decode_key(b64: &str) -> anyhow::Result<[u8; 32]> {
    let raw = STANDARD
        .decode(b64.trim())
        .context("the encryption key is not base64")?;
    raw.try_into()
        .map_err(|_| anyhow!("the encryption key must be 32 bytes (base64 of 32 bytes)"))
}

impl KeyBox {
    pub fn from_key(key: &[u8; 32]) -> KeyBox {
        KeyBox {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
            mac_root: hmac_sha256(key, b"docker-ctl mac v1"),
        }
    }

    /// An HMAC-SHA256 of `data` for the purpose `label` (a key derived from the at-rest key,
    /// so the value survives restarts and is the same on every replica).
    pub fn mac(&self, label: &str, data: &[u8]) -> [u8; 32] {
        let mut msg = Vec::with_capacity(label.len() + 1 + data.len());
        msg.extend_from_slice(label.as_bytes());
        msg.push(0);
        msg.extend_from_slice(data);
        hmac_sha256(&self.mac_root, &msg)
    }

    /// The configured key, or the key file in `data_dir` (created with mode 0600 when missing).
    pub fn load(configured: Option<&Secret>, data_dir: &Path) -> anyhow::Result<KeyBox> {
        if let Some(k) = configured {
            return Ok(KeyBox::from_key(&decode_key(k.expose())?));
        }
        let path = data_dir.join("secret.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(KeyBox::from_key(
                &decode_key(&text).with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir)
                    .with_context(|| format!("creating {}", data_dir.display()))?;
                let mut key = [0u8; 32];
                rand::rngs::StdRng::from_os_rng().fill_bytes(&mut key);
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                match opts.open(&path) {
                    Ok(mut f) => {
                        f.write_all(STANDARD.encode(key).as_bytes())?;
                        f.sync_all()?;
                        Ok(KeyBox::from_key(&key))
                    }
                    // Another process made it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        KeyBox::load(None, data_dir)
                    }
                    Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
                }
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn encrypt(&self, plaintext: &str) -> anyhow::Result<String> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(&nonce, plaintext.as_bytes())
            .map_err(|_| anyhow!("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    pub fn decrypt(&self, stored: &str) -> anyhow::Result<Secret> {
        let Some(b64) = stored.strip_prefix(PREFIX) else {
            bail!("unknown ciphertext format")
        };
        let raw = STANDARD.decode(b64).context("ciphertext is not base64")?;
        if raw.len() < 12 + 16 {
            bail!("ciphertext too short");
        }
        let (nonce, ct) = raw.split_at(12);
        let pt = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| anyhow!("decryption failed: wrong key or tampered data"))?;
        Ok(Secret::new(
            String::from_utf8(pt).context("plaintext is not UTF-8")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_key_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let kb = KeyBox::load(None, dir.path()).unwrap();
        let ct = kb.encrypt("-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!ct.contains("PRIVATE"));
        let again = KeyBox::load(None, dir.path()).unwrap();
        assert_eq!(
            again.decrypt(&ct).unwrap().expose(),
            "-----BEGIN PRIVATE KEY-----"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secret.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = KeyBox::from_key(&[7u8; 32]);
        assert!(other.decrypt(&ct).is_err());
    }
}
