//! The lock that keeps an SQLite database to one running server.
//!
//! SQLite runs one replica: two servers on one file would each believe they hold every agent
//! session. `serve` (and `quickstart`) take an exclusive `flock` on `DB.serve.lock` beside
//! the database file for as long as they run; a second one fails at once with a clear error.
//! The kernel drops the lock when the process ends, even on `kill -9`, so a stale lock file
//! never blocks a restart. The short commands (`token create`, `user create`, `release add`,
//! `enrol-token create`, `audit verify`) never take it and run beside a server.
//!
//! Owns: the lock file and its error. Must not: touch the database itself.

use anyhow::Context;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Held while the server runs; dropping it releases the lock.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
    path: PathBuf,
}

impl ServeLock {
    /// Takes the lock of the SQLite database `db_file`.
    ///
    /// Errors: another process holds it (a server already runs on this database), or the
    /// lock file cannot be created.
    pub fn take(db_file: &Path) -> anyhow::Result<ServeLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut name = db_file.as_os_str().to_owned();
        name.push(".serve.lock");
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating the lock file {}", path.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(ServeLock { _file: file, path }),
            Err(rustix::io::Errno::WOULDBLOCK) => anyhow::bail!(
                "another server is already running on the SQLite database {} (it holds {}). \
                 SQLite runs a single server; to run several replicas, give them one PostgreSQL \
                 database (database_url)",
                db_file.display(),
                path.display()
            ),
            Err(e) => {
                Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display()))
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_database_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("docker-ctl.db");
        let first = ServeLock::take(&db).unwrap();
        let err = ServeLock::take(&db).unwrap_err();
        assert!(
            format!("{err:#}").contains("already running on the SQLite database"),
            "{err:#}"
        );
        assert!(first.path().ends_with("docker-ctl.db.serve.lock"));
        drop(first);
        ServeLock::take(&db).expect("free again once the first holder is gone");
    }
}
