//! Release signing, done where releases are built: the key pair and the signatures of
//! release files, in minisign's formats, so `minisign -V` checks what we sign and a key
//! made by `minisign -G -W` signs here too.
//!
//! Owns: the secret key file (`release.key`, [`keys`]), signing ([`sign`]), and the
//! releases a server stores and serves ([`shelf`]). The public
//! formats (`release.pub`, `.minisig`) and verification belong to `protocol::minisign`,
//! which the agent shares.
//! Must not: import the rest of the server (it runs with no database, config or network),
//! or let a secret key reach a log, an error or Debug output.

pub mod keys;
pub mod shelf;
pub mod sign;

pub use keys::{write_key_pair, SecretKey, PUBLIC_KEY_FILE, SECRET_KEY_FILE};
pub use shelf::{Release, Shelf, ShelfError};
pub use sign::{default_trusted_comment, sign_file, sign_reader, signature_path};

use protocol::minisign::MinisignError;
use std::path::PathBuf;

/// Why a release key or signature could not be made or read. None is retryable as is:
/// each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A file could not be read or written.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data to sign could not be read.
    #[error("reading the data to sign")]
    Read(#[source] std::io::Error),
    /// `keygen` would replace a key pair.
    #[error("{} already exists (pass --force to replace the key pair)", path.display())]
    Exists { path: PathBuf },
    /// The secret key file is not in minisign's format.
    #[error("not a minisign secret key: {0}")]
    KeyMalformed(&'static str),
    /// A password-protected minisign key: this tool reads unencrypted keys only.
    #[error("the secret key is password-protected: remove the password with `minisign -C -W -s FILE` (keep the file offline), or make a key with `docker-ctl-server release keygen`")]
    KeyEncrypted,
    /// The checksum inside the secret key does not match it: the file is damaged.
    #[error("the secret key's checksum does not match: the key file is damaged")]
    KeyChecksum,
    /// The public half stored in the secret key is not the seed's: the file is damaged.
    #[error("the secret key's public half does not match its seed: the key file is damaged")]
    KeyInconsistent,
    /// The operating system's random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The trusted comment cannot be signed.
    #[error(transparent)]
    Minisign(#[from] MinisignError),
}

pub type Result<T, E = ReleaseError> = std::result::Result<T, E>;

fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let path = path.to_path_buf();
    move |source| ReleaseError::Io {
        action,
        path,
        source,
    }
}

/// Writes `contents` to `path` through a temporary file in the same directory, created with
/// exactly `mode`, synced and renamed into place: a reader never sees half a key or signature, and
/// a replaced file never keeps a wider mode.
fn write_atomic(path: &std::path::Path, contents: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = write_then_rename(&tmp, path, contents, mode);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(
    tmp: &std::path::Path,
    path: &std::path::Path,
    contents: &[u8],
    mode: u32,
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(io("creating", tmp))?;
    // Exactly `mode`, whatever the umask (a public key stays readable by the agent's user).
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", tmp))?;
    f.write_all(contents).map_err(io("writing", tmp))?;
    f.sync_all().map_err(io("syncing", tmp))?;
    std::fs::rename(tmp, path).map_err(io("renaming into", path))
}
