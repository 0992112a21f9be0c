//! Replacing the agent's binary and starting it again in place.
//!
//! Installing: the new binary was written next to the running one (same file system) and
//! synced; the running one is kept as `<binary>.prev` (a hard link, so the binary's path
//! never disappears), the new one is renamed over the binary (atomic), and the directory
//! is synced. Restoring renames `.prev` back over the binary. [`Relaunch::exec`] then
//! replaces the process image with `execve`: the PID stays, so systemd and procd see no
//! exit at all.
//!
//! Owns: the files of the swap and the re-execution. Must not: decide whether to swap
//! (that is [`super::Updater`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `<binary>.prev`.
pub fn previous_of(binary: &Path) -> PathBuf {
    with_suffix(binary, ".prev")
}

/// `.<name>.update` next to `binary`: where a download is written.
pub fn download_path(binary: &Path) -> PathBuf {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "docker-ctl-agent".into());
    binary.with_file_name(format!(".{name}.update"))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_dir(of: &Path) -> std::io::Result<()> {
    let dir = match of.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Checks that files can be created next to `binary` (where the download goes and the
/// rename happens).
pub fn check_writable(binary: &Path) -> Result<(), String> {
    let probe = with_suffix(&download_path(binary), ".probe");
    std::fs::File::create(&probe)
        .map(|_| ())
        .map_err(|e| format!("cannot write next to {}: {e}", binary.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Keeps `binary` as `previous` and renames `new` over `binary`; syncs the directory.
pub fn install(new: &Path, binary: &Path, previous: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(previous);
    if std::fs::hard_link(binary, previous).is_err() {
        // A file system without hard links: a copy keeps the old binary all the same.
        std::fs::copy(binary, previous)?;
        std::fs::File::open(previous)?.sync_all()?;
    }
    std::fs::rename(new, binary)?;
    sync_dir(binary)
}

/// Renames `previous` back over `binary`; syncs the directory.
pub fn restore(previous: &Path, binary: &Path) -> std::io::Result<()> {
    std::fs::rename(previous, binary)?;
    sync_dir(binary)
}

/// How this process starts itself again: its binary's path and arguments, taken at start
/// (before any swap: afterwards `/proc/self/exe` names the replaced file), and the launcher
/// (`DOCKER_CTL_LAUNCHER`, e.g. `qemu-aarch64` on a host that runs the agent under an
/// emulator without binfmt).
#[derive(Debug, Clone)]
pub struct Relaunch {
    pub binary: Option<PathBuf>,
    args: Vec<OsString>,
    pub launcher: Vec<String>,
}

impl Relaunch {
    /// This process, as it was started.
    pub fn capture() -> Relaunch {
        let binary = std::env::current_exe()
            .ok()
            .filter(|p| !p.to_string_lossy().ends_with(" (deleted)"));
        let launcher = std::env::var("DOCKER_CTL_LAUNCHER")
            .ok()
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Relaunch {
            binary,
            args: std::env::args_os().skip(1).collect(),
            launcher,
        }
    }

    /// Replaces this process with its binary (same PID, same arguments and environment).
    /// Returns only when `execve` failed.
    pub fn exec(&self) -> std::io::Error {
        use std::os::unix::process::CommandExt;
        let Some(binary) = &self.binary else {
            return std::io::Error::other("the agent's binary is unknown");
        };
        let mut cmd = match self.launcher.split_first() {
            Some((prog, rest)) => {
                let mut c = std::process::Command::new(prog);
                c.args(rest).arg(binary);
                c
            }
            None => std::process::Command::new(binary),
        };
        cmd.args(&self.args).exec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_keeps_the_previous_binary_and_restore_brings_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("docker-ctl-agent");
        std::fs::write(&binary, b"old").unwrap();
        check_writable(&binary).unwrap();
        let new = download_path(&binary);
        assert_eq!(new, dir.path().join(".docker-ctl-agent.update"));
        std::fs::write(&new, b"new").unwrap();
        let prev = previous_of(&binary);
        std::fs::write(&prev, b"older").unwrap();
        install(&new, &binary, &prev).unwrap();
        assert_eq!(std::fs::read(&binary).unwrap(), b"new");
        assert_eq!(std::fs::read(&prev).unwrap(), b"old");
        assert!(!new.exists());
        restore(&prev, &binary).unwrap();
        assert_eq!(std::fs::read(&binary).unwrap(), b"old");
        assert!(!prev.exists());
        assert!(check_writable(&dir.path().join("missing/docker-ctl-agent")).is_err());
    }
}
