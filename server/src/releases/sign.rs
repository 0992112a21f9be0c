//! Signing release files: prehashed minisign signatures (`ED`), written as `F.minisig`.
//!
//! The file is read in chunks into BLAKE2b-512, so a file of any size signs in flat memory.
//! The trusted comment is signed too: `dist.sh` puts the version and the target in it
//! (`timestamp:... file:docker-ctl-agent version:1.2.3 target:aarch64-unknown-linux-musl`)
//! and the agent checks them before it runs a binary.
//! Must not: sign with a key whose halves disagree, or write a signature `minisign -V`
//! would not accept.

use protocol::minisign::{comment_message, Blake2b, Signature, SIGNATURE_LEN};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{io, write_atomic, ReleaseError, Result, SecretKey};

/// minisign's own default trusted comment: `timestamp:<unix seconds>\tfile:<name>\thashed`.
pub fn default_trusted_comment(file_name: &str, unix_secs: u64) -> String {
    format!("timestamp:{unix_secs}\tfile:{file_name}\thashed")
}

/// Where the signature of `file` goes: `file` with `.minisig` appended.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// Signs everything `reader` yields, read in 64 KiB chunks.
pub fn sign_reader(
    key: &SecretKey,
    mut reader: impl Read,
    trusted_comment: &str,
) -> Result<Signature> {
    let mut hash = Blake2b::<64>::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hash.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReleaseError::Read(e)),
        }
    }
    sign_digest(key, &hash.finalize(), trusted_comment)
}

fn sign_digest(key: &SecretKey, digest: &[u8; 64], trusted_comment: &str) -> Result<Signature> {
    let pair = key.key_pair()?;
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(pair.sign(digest).as_ref());
    let mut global = [0u8; SIGNATURE_LEN];
    global.copy_from_slice(
        pair.sign(&comment_message(&signature, trusted_comment))
            .as_ref(),
    );
    Ok(Signature::new(
        key.key_id(),
        signature,
        trusted_comment,
        global,
    )?)
}

/// Signs `file` and writes [`signature_path`]`(file)` (mode 0644, replaced atomically).
/// Without a trusted comment, minisign's default ([`default_trusted_comment`]) is used.
/// Returns the signature's path and the signature.
pub fn sign_file(
    key: &SecretKey,
    file: &Path,
    trusted_comment: Option<&str>,
) -> Result<(PathBuf, Signature)> {
    let comment = match trusted_comment {
        Some(c) => c.to_owned(),
        None => {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            default_trusted_comment(&name, now)
        }
    };
    let f = std::fs::File::open(file).map_err(io("opening", file))?;
    let signature = match sign_reader(key, f, &comment) {
        Err(ReleaseError::Read(e)) => return Err(io("reading", file)(e)),
        other => other?,
    };
    let out = signature_path(file);
    write_atomic(&out, signature.to_file_text().as_bytes(), 0o644)?;
    Ok((out, signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::minisign::{MinisignError, Verifier};

    #[test]
    fn a_signed_file_verifies_with_the_public_key_and_shows_the_comment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("docker-ctl-agent");
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &body).unwrap();
        let key = SecretKey::generate().unwrap();
        let comment =
            "timestamp:1 file:docker-ctl-agent version:9.9.9 target:x86_64-unknown-linux-musl";
        let (path, sig) = sign_file(&key, &file, Some(comment)).unwrap();
        assert_eq!(path, dir.path().join("docker-ctl-agent.minisig"));
        let parsed = Signature::parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(parsed, sig);
        let mut v = Verifier::new(&key.public_key(), &parsed).unwrap();
        for c in body.chunks(1000) {
            v.update(c);
        }
        let got = v.finish().unwrap();
        assert_eq!(got.field("version"), Some("9.9.9"));

        // The default comment is minisign's.
        let (_, sig) = sign_file(&key, &file, None).unwrap();
        let got = protocol::minisign::verify(&key.public_key(), &sig, &body).unwrap();
        assert_eq!(got.field("file"), Some("docker-ctl-agent"));
        assert!(got.as_str().ends_with("\thashed"), "{}", got.as_str());
        assert!(got.field("timestamp").unwrap().parse::<u64>().unwrap() > 1_600_000_000);
    }

    #[test]
    fn a_comment_that_cannot_be_signed_and_a_missing_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let key = SecretKey::generate().unwrap();
        let err = sign_file(&key, &file, Some("two\nlines")).unwrap_err();
        assert!(
            matches!(
                err,
                ReleaseError::Minisign(MinisignError::CommentInvalid(_))
            ),
            "{err}"
        );
        assert!(!signature_path(&file).exists());
        let err = sign_file(&key, &dir.path().join("missing"), None).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
