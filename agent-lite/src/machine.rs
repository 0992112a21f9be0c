//! What identifies this machine to an enrolment: its hostname (the default host name) and its
//! machine id, sent only as an application-specific hash.
//!
//! The machine id is `/etc/machine-id`, else `/var/lib/dbus/machine-id`, else a random id the
//! state file keeps. What leaves the machine is the SHA-256 of [`MACHINE_ID_CONTEXT`] followed
//! by the id (as `machine-id(5)` asks of applications), so the id itself is never sent.
//!
//! Owns: reading and hashing these. Must not: talk to the server or write files (the caller
//! keeps a random id in the state file).

use sha2::{Digest, Sha256};
use std::path::Path;

/// Where the machine id is looked for, in order.
pub const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];
/// What the machine id is hashed with.
pub const MACHINE_ID_CONTEXT: &str = "docker-ctl machine-id:";

/// The first usable machine id of `files`: one line of 1 to 128 printable characters.
pub fn read_machine_id(files: &[&str]) -> Option<String> {
    files.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        let id = text.trim();
        (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| id.to_string())
    })
}

/// A new random machine id: 32 hex digits (128 bits from the OS).
pub fn random_machine_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if from_os.is_err() {
        b[..8].copy_from_slice(&crate::random::random_u64().to_le_bytes());
        b[8..].copy_from_slice(&crate::random::random_u64().to_le_bytes());
    }
    hex::encode(b)
}

/// What an enrolment sends for `id`: lowercase hex SHA-256 of the context and the id.
pub fn hashed(id: &str) -> String {
    let mut h = Sha256::new();
    h.update(MACHINE_ID_CONTEXT.as_bytes());
    h.update(id.as_bytes());
    hex::encode(h.finalize())
}

/// The machine's hostname (`/proc/sys/kernel/hostname`, else `/etc/hostname`).
pub fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|f| first_line(Path::new(f)))
}

fn first_line(p: &Path) -> Option<String> {
    let text = std::fs::read_to_string(p).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty() && !line.chars().any(char::is_control)).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_read_in_order_and_only_its_hash_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        let good = dir.path().join("good");
        std::fs::write(&empty, "\n").unwrap();
        std::fs::write(&good, "3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap();
        let missing = dir.path().join("missing");
        let files = [
            missing.to_str().unwrap(),
            empty.to_str().unwrap(),
            good.to_str().unwrap(),
        ];
        let id = read_machine_id(&files).unwrap();
        assert_eq!(id, "3d1219c7c4c5404aaa1f6d2a48adfda4");
        assert_eq!(read_machine_id(&files[..2]), None);
        let h = hashed(&id);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&id));
        assert_eq!(h, hashed(&id), "stable");
        assert_ne!(h, hashed("another"));
        let r = random_machine_id();
        assert_eq!(r.len(), 32);
        assert_ne!(r, random_machine_id());
    }
}
