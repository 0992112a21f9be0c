//! Minisign public keys and signatures, and a streaming verifier for release binaries.
//!
//! Owns: the two public file formats and the verification of prehashed Ed25519 signatures.
//! A public key file (`release.pub`):
//!
//! ```text
//! untrusted comment: minisign public key 7F53E2DD3A2BB1A5
//! base64("Ed" || key id (8 bytes) || Ed25519 public key (32 bytes))
//! ```
//!
//! A signature file (`F.minisig`):
//!
//! ```text
//! untrusted comment: <anything>
//! base64("ED" || key id (8 bytes) || Ed25519 signature of BLAKE2b-512(F) (64 bytes))
//! trusted comment: timestamp:1700000000 file:docker-ctl-agent version:1.2.3 target:...
//! base64(Ed25519 signature of (the 64-byte signature above || the trusted comment's bytes))
//! ```
//!
//! The key id is shown as minisign shows it: the 8 bytes read as a little-endian integer,
//! in 16 uppercase hex digits. Only prehashed (`ED`) signatures are accepted: a legacy
//! `Ed` signature covers the whole file, which would have to be held in memory; minisign
//! has made prehashed signatures by default since 0.10.
//!
//! A [`Verifier`] first checks the key id and the trusted comment's signature (so the
//! caller can check the signed version and target before downloading anything), then is
//! fed the file in chunks and finishes with the file's signature. Memory stays flat.
//!
//! Must not: do I/O, allocate in proportion to the file, or know about secret keys (signing
//! lives where releases are built).

mod blake2b;

pub use blake2b::{blake2b, Blake2b};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::fmt;

/// Length of a key id.
pub const KEY_ID_LEN: usize = 8;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// The largest `.minisig` file [`Signature::parse`] reads: read no more than this.
pub const MAX_SIGNATURE_FILE_LEN: usize = 16 * 1024;
/// The largest public key file [`PublicKey::parse`] reads.
pub const MAX_PUBLIC_KEY_FILE_LEN: usize = 4 * 1024;
/// The longest trusted comment, in bytes (minisign's own limit).
pub const MAX_TRUSTED_COMMENT_LEN: usize = 8173;
/// The longest untrusted comment line accepted (minisign's own limit).
const MAX_COMMENT_LINE_LEN: usize = 1024;

const UNTRUSTED_PREFIX: &str = "untrusted comment:";
const TRUSTED_PREFIX: &str = "trusted comment: ";
const ALG_KEY: &[u8; 2] = b"Ed";
const ALG_PREHASHED: &[u8; 2] = b"ED";

/// `Result` with a [`MinisignError`].
pub type Result<T, E = MinisignError> = std::result::Result<T, E>;

/// Why a key or signature was refused. None of these is worth retrying with the same
/// bytes: the update must be refused and the reason reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MinisignError {
    /// The public key is not in minisign's format. Fix the key file.
    #[error("not a minisign public key: {0}")]
    PublicKeyMalformed(&'static str),
    /// The signature is not in minisign's format. Fetch or make the `.minisig` again.
    #[error("not a minisign signature: {0}")]
    SignatureMalformed(&'static str),
    /// A legacy (non-prehashed, algorithm `Ed`) signature. Sign again with a current
    /// minisign (prehashed is its default) or `docker-ctl-server release sign`.
    #[error("legacy minisign signature (algorithm Ed, not prehashed) refused: sign again with prehashing (algorithm ED)")]
    LegacySignature,
    /// The signature names another key: it was made with a key this side does not trust.
    #[error(
        "the signature was made with key {signature}, but the trusted public key is {trusted}"
    )]
    KeyIdMismatch { signature: KeyId, trusted: KeyId },
    /// The trusted comment does not match its signature: it was altered, or signed with
    /// another key under the same key id.
    #[error(
        "the trusted comment's signature does not match (altered, or signed with another key)"
    )]
    CommentMismatch,
    /// The file does not match its signature: it was altered or truncated, or it is not
    /// the file that was signed.
    #[error("the file does not match its signature (altered, truncated or another file)")]
    FileMismatch,
    /// A trusted comment that cannot be written into a signature file.
    #[error("invalid trusted comment: {0}")]
    CommentInvalid(&'static str),
    /// A signed `key:value` field of the trusted comment is not what the caller expected.
    #[error("the signed {field} is {found}, expected {expected}")]
    FieldMismatch {
        field: String,
        expected: String,
        /// The signed value, or `missing` / `ambiguous` (the field appears twice).
        found: String,
    },
}

impl MinisignError {
    /// A stable, machine-readable code for reports.
    pub fn code(&self) -> &'static str {
        match self {
            MinisignError::PublicKeyMalformed(_) => "invalid_public_key",
            MinisignError::SignatureMalformed(_) => "invalid_signature",
            MinisignError::LegacySignature => "legacy_signature",
            MinisignError::KeyIdMismatch { .. } => "key_id_mismatch",
            MinisignError::CommentMismatch => "comment_signature_mismatch",
            MinisignError::FileMismatch => "signature_mismatch",
            MinisignError::CommentInvalid(_) => "invalid_trusted_comment",
            MinisignError::FieldMismatch { .. } => "signed_field_mismatch",
        }
    }
}

/// A key id: 8 random bytes chosen when the key pair was made, carried by every signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A minisign Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_id: KeyId,
    key: [u8; PUBLIC_KEY_LEN],
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.key_id, self.to_base64())
    }
}

impl PublicKey {
    pub fn new(key_id: KeyId, key: [u8; PUBLIC_KEY_LEN]) -> PublicKey {
        PublicKey { key_id, key }
    }

    /// Parses a public key file: an optional `untrusted comment:` line, then the base64
    /// line (the bare base64 line alone, as `minisign -P` takes it, is accepted too).
    pub fn parse(text: &[u8]) -> Result<PublicKey> {
        let bad = MinisignError::PublicKeyMalformed;
        if text.len() > MAX_PUBLIC_KEY_FILE_LEN {
            return Err(bad("the file is too large"));
        }
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8 text"))?;
        let mut lines = split_lines(text);
        if lines
            .first()
            .is_some_and(|l| l.starts_with(UNTRUSTED_PREFIX))
        {
            lines.remove(0);
        }
        let [line] = lines[..] else {
            return Err(bad("expected one base64 line after the comment"));
        };
        let raw: [u8; 2 + KEY_ID_LEN + PUBLIC_KEY_LEN] =
            decode_exact(line).ok_or(bad("the key line is not base64 of 42 bytes"))?;
        if &raw[..2] != ALG_KEY {
            return Err(bad("unknown key algorithm (expected Ed25519, `Ed`)"));
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&raw[2..10]);
        let mut key = [0u8; PUBLIC_KEY_LEN];
        key.copy_from_slice(&raw[10..]);
        Ok(PublicKey::new(KeyId(key_id), key))
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The raw Ed25519 public key.
    pub fn key_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.key
    }

    /// The base64 line (what `minisign -P` takes).
    pub fn to_base64(&self) -> String {
        let mut raw = Vec::with_capacity(2 + KEY_ID_LEN + PUBLIC_KEY_LEN);
        raw.extend_from_slice(ALG_KEY);
        raw.extend_from_slice(&self.key_id.0);
        raw.extend_from_slice(&self.key);
        B64.encode(raw)
    }

    /// The whole public key file, as `minisign -G` writes it.
    pub fn to_file_text(&self) -> String {
        format!(
            "{UNTRUSTED_PREFIX} minisign public key {}\n{}\n",
            self.key_id,
            self.to_base64()
        )
    }

    fn verifies(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.key)
            .verify(message, signature)
            .is_ok()
    }
}

/// A parsed prehashed (`ED`) signature file. Nothing in it is trusted until a
/// [`Verifier`] has checked it; the trusted comment is only handed out by the verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    key_id: KeyId,
    signature: [u8; SIGNATURE_LEN],
    trusted_comment: String,
    global_signature: [u8; SIGNATURE_LEN],
}

impl Signature {
    /// Assembles a signature from its parts (for signers). `signature` signs the file's
    /// BLAKE2b-512; `global_signature` signs [`comment_message`]`(signature, trusted_comment)`.
    pub fn new(
        key_id: KeyId,
        signature: [u8; SIGNATURE_LEN],
        trusted_comment: &str,
        global_signature: [u8; SIGNATURE_LEN],
    ) -> Result<Signature> {
        check_comment(trusted_comment)?;
        Ok(Signature {
            key_id,
            signature,
            trusted_comment: trusted_comment.to_owned(),
            global_signature,
        })
    }

    /// Parses a `.minisig` file (`\n` or `\r\n` line ends; trailing blank lines ignored).
    pub fn parse(text: &[u8]) -> Result<Signature> {
        let bad = MinisignError::SignatureMalformed;
        if text.len() > MAX_SIGNATURE_FILE_LEN {
            return Err(bad("the file is too large"));
        }
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8 text"))?;
        let [untrusted, sig_line, trusted, global_line] = split_lines(text)[..] else {
            return Err(bad("expected four lines"));
        };
        if !untrusted.starts_with(UNTRUSTED_PREFIX) || untrusted.len() > MAX_COMMENT_LINE_LEN {
            return Err(bad("the first line must be an untrusted comment"));
        }
        let raw: [u8; 2 + KEY_ID_LEN + SIGNATURE_LEN] =
            decode_exact(sig_line).ok_or(bad("the signature line is not base64 of 74 bytes"))?;
        if &raw[..2] == ALG_KEY {
            return Err(MinisignError::LegacySignature);
        }
        if &raw[..2] != ALG_PREHASHED {
            return Err(bad("unknown signature algorithm"));
        }
        let comment = trusted
            .strip_prefix(TRUSTED_PREFIX)
            .ok_or(bad("the third line must start with `trusted comment: `"))?;
        check_comment(comment)
            .map_err(|_| bad("the trusted comment is too long or has control characters"))?;
        let global_signature = decode_exact(global_line)
            .ok_or(bad("the comment signature line is not base64 of 64 bytes"))?;
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&raw[2..10]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&raw[10..]);
        Ok(Signature {
            key_id: KeyId(key_id),
            signature,
            trusted_comment: comment.to_owned(),
            global_signature,
        })
    }

    /// The id of the key that made this signature (as claimed; checked by the verifier).
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The whole `.minisig` file, as `minisign -S` writes it.
    pub fn to_file_text(&self) -> String {
        let mut raw = Vec::with_capacity(2 + KEY_ID_LEN + SIGNATURE_LEN);
        raw.extend_from_slice(ALG_PREHASHED);
        raw.extend_from_slice(&self.key_id.0);
        raw.extend_from_slice(&self.signature);
        format!(
            "{UNTRUSTED_PREFIX} signature from minisign secret key\n{}\n{TRUSTED_PREFIX}{}\n{}\n",
            B64.encode(raw),
            self.trusted_comment,
            B64.encode(self.global_signature)
        )
    }
}

/// What the global signature signs: the file's signature followed by the trusted comment.
pub fn comment_message(signature: &[u8; SIGNATURE_LEN], trusted_comment: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_LEN + trusted_comment.len());
    m.extend_from_slice(signature);
    m.extend_from_slice(trusted_comment.as_bytes());
    m
}

/// A trusted comment whose signature has been checked against the trusted key. Only a
/// [`Verifier`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedComment(String);

impl TrustedComment {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value of a `name:value` word (words are separated by spaces or tabs), e.g.
    /// `version` in `timestamp:1700000000 file:docker-ctl-agent version:1.2.3`. `None` when
    /// the field is absent or appears more than once.
    pub fn field(&self, name: &str) -> Option<&str> {
        match self.values(name) {
            (1, v) => v,
            _ => None,
        }
    }

    /// Checks that the signed field `name` is exactly `expected`.
    pub fn expect_field(&self, name: &str, expected: &str) -> Result<()> {
        let found = match self.values(name) {
            (1, Some(v)) if v == expected => return Ok(()),
            (1, Some(v)) => v.to_owned(),
            (0, _) => "missing".to_owned(),
            _ => "ambiguous".to_owned(),
        };
        Err(MinisignError::FieldMismatch {
            field: name.to_owned(),
            expected: expected.to_owned(),
            found,
        })
    }

    /// How many words are `name:...`, and the first one's value.
    fn values(&self, name: &str) -> (usize, Option<&str>) {
        let mut values = self
            .0
            .split([' ', '\t'])
            .filter_map(|w| w.split_once(':'))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v);
        let first = values.next();
        (usize::from(first.is_some()) + values.count(), first)
    }
}

/// Verifies one file against one signature, fed in chunks.
///
/// ```
/// # use protocol::minisign::{PublicKey, Signature, Verifier};
/// # fn check(key: &PublicKey, minisig: &[u8], chunks: &[&[u8]]) -> protocol::minisign::Result<()> {
/// let sig = Signature::parse(minisig)?;
/// let mut v = Verifier::new(key, &sig)?; // key id and trusted comment checked here
/// v.trusted_comment().expect_field("version", "1.2.3")?;
/// for chunk in chunks {
///     v.update(chunk);
/// }
/// let comment = v.finish()?; // the file's signature checked here
/// # let _ = comment; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Verifier {
    key: PublicKey,
    signature: [u8; SIGNATURE_LEN],
    comment: TrustedComment,
    hash: Blake2b<64>,
    len: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("key_id", &self.key.key_id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Starts verifying against `key`: refuses a signature made with another key id and
    /// checks the trusted comment's signature, so [`Verifier::trusted_comment`] can be
    /// relied on before the file arrives (it is not yet bound to the file: act on it only
    /// after [`Verifier::finish`]).
    pub fn new(key: &PublicKey, signature: &Signature) -> Result<Verifier> {
        if signature.key_id != key.key_id {
            return Err(MinisignError::KeyIdMismatch {
                signature: signature.key_id,
                trusted: key.key_id,
            });
        }
        let message = comment_message(&signature.signature, &signature.trusted_comment);
        if !key.verifies(&message, &signature.global_signature) {
            return Err(MinisignError::CommentMismatch);
        }
        Ok(Verifier {
            key: key.clone(),
            signature: signature.signature,
            comment: TrustedComment(signature.trusted_comment.clone()),
            hash: Blake2b::new(),
            len: 0,
        })
    }

    /// The signed trusted comment.
    pub fn trusted_comment(&self) -> &TrustedComment {
        &self.comment
    }

    /// Feeds the next chunk of the file.
    pub fn update(&mut self, chunk: &[u8]) {
        self.hash.update(chunk);
        self.len = self.len.saturating_add(chunk.len() as u64);
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the file's signature; returns the signed trusted comment.
    pub fn finish(self) -> Result<TrustedComment> {
        let digest = self.hash.finalize();
        if !self.key.verifies(&digest, &self.signature) {
            return Err(MinisignError::FileMismatch);
        }
        Ok(self.comment)
    }
}

/// Verifies a file held in memory (tests, small files); returns the signed trusted comment.
pub fn verify(key: &PublicKey, signature: &Signature, file: &[u8]) -> Result<TrustedComment> {
    let mut v = Verifier::new(key, signature)?;
    v.update(file);
    v.finish()
}

/// A trusted comment must fit on one line of a signature file and survive minisign's C
/// strings: no control characters other than tab, and not too long.
fn check_comment(comment: &str) -> Result<()> {
    if comment.len() > MAX_TRUSTED_COMMENT_LEN {
        return Err(MinisignError::CommentInvalid("too long"));
    }
    if comment.chars().any(|c| c.is_control() && c != '\t') {
        return Err(MinisignError::CommentInvalid(
            "control characters (line breaks, NUL) are not allowed",
        ));
    }
    Ok(())
}

/// Lines without their `\n` / `\r\n` ends, trailing blank lines dropped.
fn split_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

/// Decodes a base64 line (surrounding spaces ignored) of exactly `N` bytes.
fn decode_exact<const N: usize>(line: &str) -> Option<[u8; N]> {
    let line = line.trim();
    if line.len() != N.div_ceil(3) * 4 {
        return None;
    }
    let raw = B64.decode(line).ok()?;
    raw.try_into().ok()
}

#[cfg(test)]
mod tests;
