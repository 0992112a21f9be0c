//! The server's releases: agent binaries and their signatures, stored in the data directory
//! and served to agents that update themselves.
//!
//! ```text
//! <data_dir>/releases/<version>/<target>/docker-ctl-agent          the binary (0644)
//! <data_dir>/releases/<version>/<target>/docker-ctl-agent.minisig  its signature
//! <data_dir>/releases/<version>/<target>/release.json              size, sha256, key id, added_at
//! ```
//!
//! A release is checked before it is stored: its signature against the server's
//! `release_public_key`, and the signed trusted comment's `version:` and `target:` against
//! the ones given. It is written into a temporary directory beside the others and renamed
//! into place, so a running server (which reads the directory at each request) lists and
//! serves it at once, and never sees half of it.
//!
//! Owns: the release directory's layout and its checks. Must not: trust a release because
//! the server holds it (each agent verifies against its own key), or need the database.

use protocol::minisign::{PublicKey, Signature, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The binary's file name inside a release directory.
pub const BINARY_FILE: &str = "docker-ctl-agent";
/// The signature's file name inside a release directory.
pub const SIGNATURE_FILE: &str = "docker-ctl-agent.minisig";
const META_FILE: &str = "release.json";
/// The largest release accepted.
pub const MAX_RELEASE: u64 = 256 * 1024 * 1024;

/// Why a release was not stored or cannot be read. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ShelfError {
    #[error("{0}")]
    Invalid(String),
    #[error("release {version} for {target} already exists")]
    Exists { version: String, target: String },
    #[error("the signature does not verify against release_public_key: {0}")]
    Signature(#[from] protocol::minisign::MinisignError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ShelfError {
    let path = path.to_path_buf();
    move |source| ShelfError::Io {
        action,
        path,
        source,
    }
}

/// One stored release, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub target: String,
    /// The binary's size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the binary (also its download's ETag).
    pub sha256: String,
    /// The minisign key id that signed it (hex).
    pub key_id: String,
    /// Unix ms.
    pub added_at: i64,
}

/// A version or target names a directory: one word of `[A-Za-z0-9._+-]`, not starting
/// with a dot, at most 64 bytes.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// The releases under a data directory.
#[derive(Debug, Clone)]
pub struct Shelf {
    root: PathBuf,
}

impl Shelf {
    /// The shelf of `data_dir` (`data_dir/releases`).
    pub fn new(data_dir: &Path) -> Shelf {
        Shelf {
            root: data_dir.join("releases"),
        }
    }

    fn dir(&self, version: &str, target: &str) -> Option<PathBuf> {
        (valid_name(version) && valid_name(target)).then(|| self.root.join(version).join(target))
    }

    /// Checks and stores a release (see the module's doc).
    pub fn add(
        &self,
        key: &PublicKey,
        binary: &Path,
        signature: &Path,
        target: &str,
        version: &str,
    ) -> Result<Release, ShelfError> {
        let dir = self.dir(version, target).ok_or_else(|| {
            ShelfError::Invalid(format!(
                "version {version:?} and target {target:?} must be one word of [A-Za-z0-9._+-] (at most 64 bytes)"
            ))
        })?;
        if dir.exists() {
            return Err(ShelfError::Exists {
                version: version.into(),
                target: target.into(),
            });
        }
        let sig_text = std::fs::read(signature).map_err(io("reading", signature))?;
        let sig = Signature::parse(&sig_text)?;
        let mut verifier = Verifier::new(key, &sig)?;
        for (field, want) in [("version", version), ("target", target)] {
            verifier.trusted_comment().expect_field(field, want)?;
        }
        let parent = dir.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
        let tmp = parent.join(format!(".{target}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = (|| {
            std::fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
            let (size, sha256) = copy_verified(binary, &tmp.join(BINARY_FILE), &mut verifier)?;
            verifier.finish()?;
            write_synced(&tmp.join(SIGNATURE_FILE), &sig_text)?;
            let release = Release {
                version: version.into(),
                target: target.into(),
                size,
                sha256,
                key_id: sig.key_id().to_string(),
                added_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            };
            let meta = serde_json::to_vec_pretty(&release).unwrap_or_default();
            write_synced(&tmp.join(META_FILE), &meta)?;
            std::fs::rename(&tmp, &dir).map_err(io("renaming into", &dir))?;
            if let Ok(d) = std::fs::File::open(&parent) {
                let _ = d.sync_all();
            }
            Ok(release)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Every stored release, by version then target.
    pub fn list(&self) -> Vec<Release> {
        let mut out = Vec::new();
        let Ok(versions) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for v in versions.flatten() {
            let Ok(targets) = std::fs::read_dir(v.path()) else {
                continue;
            };
            for t in targets.flatten() {
                let (version, target) = (
                    v.file_name().to_string_lossy().into_owned(),
                    t.file_name().to_string_lossy().into_owned(),
                );
                if let Some(r) = self.get(&version, &target) {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| (&a.version, &a.target).cmp(&(&b.version, &b.target)));
        out
    }

    /// Release `version` for `target`, when stored.
    pub fn get(&self, version: &str, target: &str) -> Option<Release> {
        let dir = self.dir(version, target)?;
        let text = std::fs::read(dir.join(META_FILE)).ok()?;
        serde_json::from_slice::<Release>(&text)
            .ok()
            .filter(|r| r.version == version && r.target == target)
    }

    /// The binary's path of a stored release.
    pub fn binary_path(&self, r: &Release) -> Option<PathBuf> {
        Some(self.dir(&r.version, &r.target)?.join(BINARY_FILE))
    }

    /// The signature file's text of a stored release.
    pub fn signature(&self, r: &Release) -> Option<Vec<u8>> {
        std::fs::read(self.dir(&r.version, &r.target)?.join(SIGNATURE_FILE)).ok()
    }
}

/// Copies `from` to `to` (0644, synced), feeding `verifier`; returns the size and SHA-256.
fn copy_verified(
    from: &Path,
    to: &Path,
    verifier: &mut Verifier,
) -> Result<(u64, String), ShelfError> {
    use std::io::Write;
    let mut src = std::fs::File::open(from).map_err(io("opening", from))?;
    let mut dst = std::fs::File::create(to).map_err(io("creating", to))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("reading", from)(e)),
        };
        size += n as u64;
        if size > MAX_RELEASE {
            return Err(ShelfError::Invalid(format!(
                "{} is larger than {MAX_RELEASE} bytes",
                from.display()
            )));
        }
        verifier.update(&buf[..n]);
        sha.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(io("writing", to))?;
    }
    if size == 0 {
        return Err(ShelfError::Invalid(format!("{} is empty", from.display())));
    }
    dst.sync_all().map_err(io("syncing", to))?;
    Ok((size, hex::encode(sha.finalize())))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ShelfError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io("creating", path))?;
    f.write_all(bytes).map_err(io("writing", path))?;
    f.sync_all().map_err(io("syncing", path))
}

/// Reads the server's `release_public_key`.
pub fn read_public_key(path: &Path) -> Result<PublicKey, ShelfError> {
    let text = std::fs::read(path).map_err(io("reading", path))?;
    Ok(PublicKey::parse(&text)?)
}
