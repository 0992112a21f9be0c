//! The release key pair: generation and the secret key file.
//!
//! The secret key file is minisign's, unencrypted (as `minisign -G -W` writes it):
//!
//! ```text
//! untrusted comment: <anything>
//! base64 of 158 bytes:
//!   "Ed"             signature algorithm
//!   00 00            key derivation: none (unencrypted; "Sc" would be scrypt)
//!   "B2"             checksum algorithm: BLAKE2b-256
//!   32 x 00          kdf salt (unused)
//!   8 x 00, 8 x 00   kdf opslimit and memlimit, little-endian (unused)
//!   key id           8 bytes
//!   secret key       64 bytes: the Ed25519 seed (32) then the public key (32)
//!   checksum         32 bytes: BLAKE2b-256("Ed" || key id || secret key)
//! ```
//!
//! We always write the checksum. minisign leaves it zero in the unencrypted keys it writes
//! and does not read it; we accept a zero checksum for those and check every other one. The
//! seed and the stored public key must agree in any case.
//!
//! Owns: the secret key's bytes; [`SecretKey`] never prints them (`Debug` masks the seed).
//! Must not: write a secret key with a mode wider than 0600.

use protocol::minisign::{KeyId, PublicKey, KEY_ID_LEN, PUBLIC_KEY_LEN};
use protocol::Secret;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::fmt;
use std::path::{Path, PathBuf};

use super::{io, write_atomic, ReleaseError, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// The secret key's file name in `keygen --out DIR`.
pub const SECRET_KEY_FILE: &str = "release.key";
/// The public key's file name in `keygen --out DIR`.
pub const PUBLIC_KEY_FILE: &str = "release.pub";

const SEED_LEN: usize = 32;
const FILE_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + KEY_ID_LEN + SEED_LEN + PUBLIC_KEY_LEN + 32;
const KDF_NONE: [u8; 2] = [0, 0];
const KDF_SCRYPT: &[u8; 2] = b"Sc";
const ALG: &[u8; 2] = b"Ed";
const CHK_ALG: &[u8; 2] = b"B2";
/// Offset of the key id in the decoded file.
const KEYNUM_AT: usize = 2 + 2 + 2 + 32 + 8 + 8;
/// Largest secret key file read (a comment line and the base64 line).
const MAX_FILE_LEN: usize = 4096;

/// An Ed25519 release signing key with its key id.
pub struct SecretKey {
    key_id: KeyId,
    seed: [u8; SEED_LEN],
    public: [u8; PUBLIC_KEY_LEN],
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("key_id", &self.key_id)
            .field("seed", &"***")
            .finish()
    }
}

impl SecretKey {
    /// A new key pair from the system's random generator.
    pub fn generate() -> Result<SecretKey> {
        let rng = SystemRandom::new();
        let mut seed = [0u8; SEED_LEN];
        let mut key_id = [0u8; KEY_ID_LEN];
        rng.fill(&mut seed).map_err(|_| ReleaseError::Random)?;
        rng.fill(&mut key_id).map_err(|_| ReleaseError::Random)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| ReleaseError::KeyInconsistent)?;
        let mut public = [0u8; PUBLIC_KEY_LEN];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(SecretKey {
            key_id: KeyId(key_id),
            seed,
            public,
        })
    }

    /// Reads and checks a secret key file.
    pub fn read(path: &Path) -> Result<SecretKey> {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(io("opening", path))?;
        let mut text = Vec::new();
        f.take(MAX_FILE_LEN as u64 + 1)
            .read_to_end(&mut text)
            .map_err(io("reading", path))?;
        let key = SecretKey::parse(&text);
        text.fill(0);
        key
    }

    /// Parses a secret key file (see the module docs).
    pub fn parse(text: &[u8]) -> Result<SecretKey> {
        let bad = ReleaseError::KeyMalformed;
        if text.len() > MAX_FILE_LEN {
            return Err(bad("the file is too large"));
        }
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8 text"))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let [comment, line] = lines[..] else {
            return Err(bad("expected a comment line and a base64 line"));
        };
        if !comment.starts_with("untrusted comment:") {
            return Err(bad("the first line must be an untrusted comment"));
        }
        let mut raw = B64
            .decode(line.trim())
            .map_err(|_| bad("the key line is not base64"))?;
        let key = SecretKey::from_raw(&raw);
        raw.fill(0);
        key
    }

    fn from_raw(raw: &[u8]) -> Result<SecretKey> {
        let bad = ReleaseError::KeyMalformed;
        if raw.len() != FILE_LEN {
            return Err(bad("the key line does not hold 158 bytes"));
        }
        if &raw[0..2] != ALG {
            return Err(bad("unknown signature algorithm (expected Ed25519, `Ed`)"));
        }
        if &raw[2..4] == KDF_SCRYPT {
            return Err(ReleaseError::KeyEncrypted);
        }
        if raw[2..4] != KDF_NONE {
            return Err(bad("unknown key derivation function"));
        }
        if &raw[4..6] != CHK_ALG {
            return Err(bad("unknown checksum algorithm (expected BLAKE2b, `B2`)"));
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&raw[KEYNUM_AT..KEYNUM_AT + KEY_ID_LEN]);
        let sk_at = KEYNUM_AT + KEY_ID_LEN;
        let mut seed = [0u8; SEED_LEN];
        seed.copy_from_slice(&raw[sk_at..sk_at + SEED_LEN]);
        let mut public = [0u8; PUBLIC_KEY_LEN];
        public.copy_from_slice(&raw[sk_at + SEED_LEN..sk_at + SEED_LEN + PUBLIC_KEY_LEN]);
        let key = SecretKey {
            key_id: KeyId(key_id),
            seed,
            public,
        };
        let stored = &raw[FILE_LEN - 32..];
        if stored.iter().any(|&b| b != 0) && stored != key.checksum() {
            return Err(ReleaseError::KeyChecksum);
        }
        key.key_pair()?;
        Ok(key)
    }

    /// The secret key file's text. It holds the secret: write it with mode 0600 only.
    pub fn to_file_text(&self) -> Secret {
        let mut raw = Vec::with_capacity(FILE_LEN);
        raw.extend_from_slice(ALG);
        raw.extend_from_slice(&KDF_NONE);
        raw.extend_from_slice(CHK_ALG);
        raw.extend_from_slice(&[0u8; 32 + 8 + 8]);
        raw.extend_from_slice(&self.key_id.0);
        raw.extend_from_slice(&self.seed);
        raw.extend_from_slice(&self.public);
        raw.extend_from_slice(&self.checksum());
        let text = format!(
            "untrusted comment: minisign secret key {} (unencrypted)\n{}\n",
            self.key_id,
            B64.encode(&raw)
        );
        raw.fill(0);
        Secret::new(text)
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::new(self.key_id, self.public)
    }

    /// The ring key pair, checking that the stored public key is the seed's.
    pub(super) fn key_pair(&self) -> Result<Ed25519KeyPair> {
        Ed25519KeyPair::from_seed_and_public_key(&self.seed, &self.public)
            .map_err(|_| ReleaseError::KeyInconsistent)
    }

    /// BLAKE2b-256 of the algorithm, the key id and the 64-byte secret key.
    fn checksum(&self) -> [u8; 32] {
        let mut h = protocol::minisign::Blake2b::<32>::new();
        h.update(ALG);
        h.update(&self.key_id.0);
        h.update(&self.seed);
        h.update(&self.public);
        h.finalize()
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.seed.fill(0);
    }
}

/// Makes a key pair and writes `DIR/release.key` (mode 0600) and `DIR/release.pub`
/// (mode 0644), creating `DIR` (mode 0700) when missing. Refuses to replace an existing
/// file unless `force`. Returns the key and the two paths.
pub fn write_key_pair(dir: &Path, force: bool) -> Result<(SecretKey, PathBuf, PathBuf)> {
    use std::os::unix::fs::DirBuilderExt;
    let key_path = dir.join(SECRET_KEY_FILE);
    let pub_path = dir.join(PUBLIC_KEY_FILE);
    if !force {
        for p in [&key_path, &pub_path] {
            if p.symlink_metadata().is_ok() {
                return Err(ReleaseError::Exists { path: p.clone() });
            }
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))?;
    let key = SecretKey::generate()?;
    write_atomic(&key_path, key.to_file_text().expose().as_bytes(), 0o600)?;
    write_atomic(&pub_path, key.public_key().to_file_text().as_bytes(), 0o644)?;
    Ok((key, key_path, pub_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_key_reads_back_with_its_checksum_and_never_prints_its_seed() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_file_text();
        assert_eq!(format!("{text:?}"), "\"***\"");
        let back = SecretKey::parse(text.expose().as_bytes()).unwrap();
        assert_eq!(back.key_id(), key.key_id());
        assert_eq!(back.public_key(), key.public_key());
        let raw = B64.decode(text.expose().lines().nth(1).unwrap()).unwrap();
        assert_eq!(raw.len(), 158);
        assert_eq!(&raw[..6], b"Ed\0\0B2");
        assert!(raw[6..KEYNUM_AT].iter().all(|&b| b == 0));
        // The checksum covers "Ed" || key id || seed || public key.
        assert_eq!(
            raw[FILE_LEN - 32..],
            protocol::minisign::blake2b::<32>(
                &[&raw[..2], &raw[KEYNUM_AT..FILE_LEN - 32]].concat()
            )
        );
        let debug = format!("{key:?}");
        let seed_b64 = B64.encode(&raw[KEYNUM_AT + 8..KEYNUM_AT + 40]);
        assert!(
            debug.contains("***") && !debug.contains(&seed_b64),
            "{debug}"
        );
        assert!(debug.contains(&key.key_id().to_string()));
    }

    #[test]
    fn damaged_encrypted_and_foreign_keys_are_refused_by_name() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_file_text().expose().to_owned();
        let raw = B64.decode(text.lines().nth(1).unwrap()).unwrap();
        let reencode = |raw: &[u8]| format!("untrusted comment: x\n{}\n", B64.encode(raw));
        let mut flipped_seed = raw.clone();
        flipped_seed[KEYNUM_AT + 8] ^= 1;
        assert!(matches!(
            SecretKey::parse(reencode(&flipped_seed).as_bytes()),
            Err(ReleaseError::KeyChecksum)
        ));
        // With the checksum zeroed (as minisign writes unencrypted keys), a seed that does
        // not match the stored public key is still caught.
        flipped_seed[FILE_LEN - 32..].fill(0);
        assert!(matches!(
            SecretKey::parse(reencode(&flipped_seed).as_bytes()),
            Err(ReleaseError::KeyInconsistent)
        ));
        let mut zero_chk = raw.clone();
        zero_chk[FILE_LEN - 32..].fill(0);
        assert_eq!(
            SecretKey::parse(reencode(&zero_chk).as_bytes())
                .unwrap()
                .public_key(),
            key.public_key()
        );
        let mut encrypted = raw.clone();
        encrypted[2..4].copy_from_slice(b"Sc");
        let err = SecretKey::parse(reencode(&encrypted).as_bytes()).unwrap_err();
        assert!(matches!(err, ReleaseError::KeyEncrypted));
        assert!(err.to_string().contains("minisign -C -W"), "{err}");
        for (at, bytes, what) in [
            (0, b"EE", "signature algorithm"),
            (2, b"Zz", "key derivation"),
            (4, b"B3", "checksum algorithm"),
        ] {
            let mut r = raw.clone();
            r[at..at + 2].copy_from_slice(bytes);
            let err = SecretKey::parse(reencode(&r).as_bytes()).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
        for junk in [
            &b""[..],
            b"untrusted comment: x\n",
            b"untrusted comment: x\nAAAA\n",
            b"no comment\nAAAA\n",
            b"\xff",
            &[b'A'; 5000],
        ] {
            let err = SecretKey::parse(junk).unwrap_err();
            assert!(matches!(err, ReleaseError::KeyMalformed(_)), "{err}");
        }
        // A public key file is not a secret key.
        let err = SecretKey::parse(key.public_key().to_file_text().as_bytes()).unwrap_err();
        assert!(matches!(err, ReleaseError::KeyMalformed(_)), "{err}");
    }

    #[test]
    fn keygen_writes_0600_and_0644_files_and_refuses_to_replace_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let (key, key_path, pub_path) = write_key_pair(&out, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&pub_path), 0o644);
        assert_eq!(mode(&out), 0o700);
        let public = PublicKey::parse(&std::fs::read(&pub_path).unwrap()).unwrap();
        assert_eq!(public, key.public_key());
        assert_eq!(
            SecretKey::read(&key_path).unwrap().public_key(),
            key.public_key()
        );
        let err = write_key_pair(&out, false).unwrap_err();
        assert!(matches!(err, ReleaseError::Exists { .. }), "{err}");
        assert_eq!(
            PublicKey::parse(&std::fs::read(&pub_path).unwrap()).unwrap(),
            public,
            "the refused keygen left the old pair"
        );
        // --force replaces both, and a widened key file is written back at 0600.
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (again, _, _) = write_key_pair(&out, true).unwrap();
        assert_ne!(again.public_key(), public);
        assert_eq!(mode(&key_path), 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "no temporary files left: {leftovers:?}");
    }
}
