//! The agent's small state file: the idempotency keys of recently executed commands with
//! their final `command_response` payloads, so a command delivered again (after a
//! reconnection or an agent restart) runs once.
//!
//! Bounded in entries ([`MAX_ENTRIES`]), age ([`MAX_AGE_SECS`]) and bytes ([`MAX_BYTES`]).
//! Only commands that change something (`protocol::ops::access_of` is `Write`) are kept
//! here: running a read again is harmless, and writing the file for every poll would wear
//! out the flash of small devices. Reads are de-duplicated in memory only (`ops::Dedup`).
//!
//! A key is written when its command starts (without a response) and again when it
//! finishes. A key found without a response when the file is loaded belongs to a command
//! that was running when the agent stopped: it is answered with `outcome_unknown` rather
//! than run a second time.
//!
//! The file is JSON, mode 0600, replaced atomically (temporary file, fsync, rename, fsync
//! of the directory). A corrupt file is reported, kept aside as `<file>.corrupt`, and
//! replaced by an empty memory: never a crash.
//!
//! Owns: the key memory and its file. Must not: run commands or talk to the server.

use protocol::{CommandResponsePayload, ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Keys remembered at most.
pub const MAX_ENTRIES: usize = 1000;
/// Seconds a key is remembered.
pub const MAX_AGE_SECS: u64 = 24 * 3600;
/// Bytes of stored responses at most (the oldest keys go first).
pub const MAX_BYTES: usize = 1024 * 1024;
/// A response larger than this is not stored; the key is kept with a `conflict` error
/// saying that the command ran and its result was too large to keep.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The default location of the state file.
pub const DEFAULT_PATH: &str = "/var/lib/docker-ctl/agent-state.json";

/// One remembered key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub operation: String,
    /// Unix seconds when the command started.
    pub at: u64,
    /// `None` while the command runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<CommandResponsePayload>,
    #[serde(skip)]
    size: usize,
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    idempotency: Vec<Entry>,
}

/// The bounded key memory.
#[derive(Debug)]
pub struct KeyStore {
    entries: VecDeque<Entry>,
    bytes: usize,
    max_entries: usize,
    max_age: u64,
    max_bytes: usize,
}

impl Default for KeyStore {
    fn default() -> Self {
        KeyStore::with_limits(MAX_ENTRIES, MAX_AGE_SECS, MAX_BYTES)
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn size_of(e: &Entry) -> usize {
    e.key.len()
        + e.operation.len()
        + e.response
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
            .map_or(0, |s| s.len())
}

impl KeyStore {
    pub fn with_limits(max_entries: usize, max_age: u64, max_bytes: usize) -> Self {
        KeyStore {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries: max_entries.max(1),
            max_age,
            max_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `key`, unless it has expired.
    pub fn get(&self, key: &str, now: u64) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.key == key && now.saturating_sub(e.at) <= self.max_age)
    }

    /// Records that the command with `key` starts now.
    pub fn start(&mut self, key: &str, operation: &str, now: u64) {
        self.remove(key);
        self.push(Entry {
            key: key.to_string(),
            operation: operation.to_string(),
            at: now,
            response: None,
            size: 0,
        });
        self.evict(now);
    }

    /// Records the final response of the command with `key`.
    pub fn finish(&mut self, key: &str, operation: &str, resp: &CommandResponsePayload, now: u64) {
        let at = self.get(key, now).map_or(now, |e| e.at);
        self.remove(key);
        let encoded = serde_json::to_string(resp).map_or(0, |s| s.len());
        let response = if encoded > MAX_RESPONSE_BYTES {
            CommandResponsePayload::Error {
                error: ErrorBody::new(
                    ErrorCode::Conflict,
                    format!(
                        "{operation} with this idempotency key already ran; its result ({encoded} bytes) was too large for the agent to keep"
                    ),
                ),
            }
        } else {
            resp.clone()
        };
        self.push(Entry {
            key: key.to_string(),
            operation: operation.to_string(),
            at,
            response: Some(response),
            size: 0,
        });
        self.evict(now);
    }

    fn push(&mut self, mut e: Entry) {
        e.size = size_of(&e);
        self.bytes += e.size;
        self.entries.push_back(e);
    }

    fn remove(&mut self, key: &str) {
        if let Some(i) = self.entries.iter().position(|e| e.key == key) {
            if let Some(e) = self.entries.remove(i) {
                self.bytes -= e.size;
            }
        }
    }

    /// Drops expired keys, then the oldest ones while over the entry or byte bound.
    pub fn evict(&mut self, now: u64) {
        let max_age = self.max_age;
        let before = self.entries.len();
        self.entries
            .retain(|e| now.saturating_sub(e.at) <= max_age || e.response.is_none());
        if self.entries.len() != before {
            self.bytes = self.entries.iter().map(|e| e.size).sum();
        }
        while self.entries.len() > self.max_entries
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= e.size,
                None => break,
            }
        }
    }

    /// The file's text.
    pub fn encode(&self) -> String {
        serde_json::to_string(&FileFormat {
            version: 1,
            idempotency: self.entries.iter().cloned().collect(),
        })
        .unwrap_or_default()
    }

    /// Parses a state file's text. Keys without a response (their command was running when
    /// the agent stopped) are answered with `outcome_unknown` from now on.
    pub fn decode(text: &str, now: u64) -> Result<KeyStore, String> {
        let f: FileFormat = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if f.version != 1 {
            return Err(format!("unknown state file version {}", f.version));
        }
        let mut s = KeyStore::default();
        for mut e in f.idempotency {
            if e.response.is_none() {
                e.response = Some(CommandResponsePayload::Error {
                    error: ErrorBody::new(
                        ErrorCode::OutcomeUnknown,
                        format!(
                            "the agent stopped while {} with this idempotency key was running; it may or may not have run, and it is not run again",
                            e.operation
                        ),
                    ),
                });
            }
            s.remove(&e.key);
            s.push(e);
        }
        s.evict(now);
        Ok(s)
    }
}

/// Where the state lives: a file, or memory only.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: Option<PathBuf>,
}

impl StateFile {
    /// Memory only: keys are forgotten when the agent stops.
    pub fn memory() -> Self {
        StateFile { path: None }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Chooses the file. `configured` (`agent.state_file`) must be usable: its directory is
    /// created (mode 0700) when missing and must be writable, else the error says why.
    /// Without it, [`DEFAULT_PATH`] is tried, then `$HOME/.local/state/docker-ctl/`, then
    /// memory only (with a warning).
    pub fn choose(
        configured: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        if let Some(p) = configured {
            return usable(p)
                .map(|()| StateFile {
                    path: Some(p.to_path_buf()),
                })
                .map_err(|e| format!("agent.state_file {}: {e}", p.display()));
        }
        let mut candidates = vec![PathBuf::from(DEFAULT_PATH)];
        if let Some(home) = env("HOME").filter(|h| !h.is_empty()) {
            candidates.push(Path::new(&home).join(".local/state/docker-ctl/agent-state.json"));
        }
        let mut why = Vec::new();
        for c in candidates {
            match usable(&c) {
                Ok(()) => {
                    if why.is_empty() {
                        return Ok(StateFile { path: Some(c) });
                    }
                    log::warn!(
                        "using the state file {} ({}); set agent.state_file to choose",
                        c.display(),
                        why.join("; ")
                    );
                    return Ok(StateFile { path: Some(c) });
                }
                Err(e) => why.push(format!("{} is not usable: {e}", c.display())),
            }
        }
        log::warn!(
            "no usable state file ({}): idempotency keys are kept in memory only and forgotten when the agent stops; set agent.state_file",
            why.join("; ")
        );
        Ok(StateFile::memory())
    }

    /// Loads the keys. A missing file is an empty memory; a corrupt one is reported, moved
    /// to `<file>.corrupt` and replaced.
    pub fn load(&self, now: u64) -> KeyStore {
        let Some(path) = &self.path else {
            return KeyStore::default();
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return KeyStore::default(),
            Err(e) => {
                log::error!(
                    "cannot read the state file {}: {e}; starting with no remembered idempotency keys",
                    path.display()
                );
                return KeyStore::default();
            }
        };
        match KeyStore::decode(&text, now) {
            Ok(s) => {
                log::info!(
                    "loaded {} idempotency keys from {}",
                    s.len(),
                    path.display()
                );
                s
            }
            Err(e) => {
                let aside = append_ext(path, "corrupt");
                log::error!(
                    "the state file {} is corrupt ({e}); it is kept as {} and replaced by an empty one",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(path, &aside);
                let empty = KeyStore::default();
                if let Err(e) = self.save(&empty.encode()) {
                    log::error!("cannot write the state file {}: {e}", path.display());
                }
                empty
            }
        }
    }

    /// Replaces the file with `text` atomically. Memory only: nothing to do.
    pub fn save(&self, text: &str) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        write_atomic(path, text.as_bytes())
    }
}

fn append_ext(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Creates the directory when missing and checks that a file can be written next to `p`.
fn usable(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if p.as_os_str().is_empty() || p.file_name().is_none() {
        return Err("not a file path".into());
    }
    if p.is_dir() {
        return Err("is a directory".into());
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    let probe = append_ext(p, "probe");
    open_private(&probe)
        .map_err(|e| format!("the directory {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn open_private(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
}

/// Writes `bytes` to a temporary file next to `path` (mode 0600), fsyncs it, renames it
/// over `path` and fsyncs the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = append_ext(path, "tmp");
    let result = (|| {
        let mut f = open_private(&tmp)?;
        // An old temporary file may have had another mode.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(n: u64) -> CommandResponsePayload {
        CommandResponsePayload::Success {
            data: json!({ "n": n }),
        }
    }

    #[test]
    fn remembers_responses_and_running_keys() {
        let mut s = KeyStore::default();
        assert!(s.get("k", 0).is_none());
        s.start("k", "container.create", 10);
        assert!(s.get("k", 10).unwrap().response.is_none());
        s.finish("k", "container.create", &ok(1), 11);
        let e = s.get("k", 12).unwrap();
        assert_eq!(e.response, Some(ok(1)));
        assert_eq!(e.at, 10, "the start time is kept");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn bounded_in_entries() {
        let mut s = KeyStore::with_limits(3, MAX_AGE_SECS, MAX_BYTES);
        for i in 0..5 {
            s.finish(&format!("k{i}"), "container.start", &ok(i), 100 + i);
        }
        assert_eq!(s.len(), 3);
        assert!(s.get("k0", 200).is_none() && s.get("k1", 200).is_none());
        assert_eq!(s.get("k4", 200).unwrap().response, Some(ok(4)));
    }

    #[test]
    fn bounded_in_time() {
        let mut s = KeyStore::with_limits(100, 60, MAX_BYTES);
        s.finish("old", "container.start", &ok(1), 1000);
        s.finish("new", "container.start", &ok(2), 1050);
        assert!(s.get("old", 1059).is_some());
        assert!(
            s.get("old", 1061).is_none(),
            "expired keys are not answered"
        );
        s.evict(1061);
        assert_eq!(s.len(), 1, "expired keys are dropped");
        assert!(s.get("new", 1061).is_some());
        s.evict(10_000);
        assert!(s.is_empty());
    }

    #[test]
    fn bounded_in_bytes_and_huge_results_are_not_kept() {
        let mut s = KeyStore::with_limits(100, MAX_AGE_SECS, 2000);
        let big = CommandResponsePayload::Success {
            data: json!("x".repeat(900)),
        };
        for i in 0..4 {
            s.finish(&format!("k{i}"), "container.exec", &big, 10);
        }
        assert!(s.bytes <= 2000, "{}", s.bytes);
        assert_eq!(s.len(), 2);
        let huge = CommandResponsePayload::Success {
            data: json!("y".repeat(MAX_RESPONSE_BYTES + 1)),
        };
        let mut s = KeyStore::default();
        s.finish("h", "container.exec", &huge, 10);
        match &s.get("h", 10).unwrap().response {
            Some(CommandResponsePayload::Error { error }) => {
                assert_eq!(error.code, ErrorCode::Conflict);
                assert!(error.message.contains("already ran"), "{}", error.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trips_and_running_keys_become_outcome_unknown() {
        let mut s = KeyStore::default();
        s.finish("done", "container.create", &ok(7), 100);
        s.start("running", "container.remove", 101);
        let text = s.encode();
        let back = KeyStore::decode(&text, 102).unwrap();
        assert_eq!(back.get("done", 102).unwrap().response, Some(ok(7)));
        match &back.get("running", 102).unwrap().response {
            Some(CommandResponsePayload::Error { error }) => {
                assert_eq!(error.code, ErrorCode::OutcomeUnknown)
            }
            other => panic!("{other:?}"),
        }
        assert!(KeyStore::decode("{not json", 0).is_err());
        assert!(KeyStore::decode(r#"{"version":9,"idempotency":[]}"#, 0).is_err());
    }

    #[test]
    fn file_is_private_atomic_and_a_corrupt_one_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let f = StateFile::choose(Some(&path), &|_| None).unwrap();
        let mut s = KeyStore::default();
        s.finish("k", "container.create", &ok(1), now_secs());
        f.save(&s.encode()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!append_ext(&path, "tmp").exists());
        assert_eq!(
            f.load(now_secs()).get("k", now_secs()).unwrap().response,
            Some(ok(1))
        );

        std::fs::write(&path, b"\x00garbage{").unwrap();
        let loaded = f.load(now_secs());
        assert!(loaded.is_empty());
        assert!(
            append_ext(&path, "corrupt").exists(),
            "the bad file is kept"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(KeyStore::decode(&text, 0).unwrap().is_empty(), "{text}");
    }

    #[test]
    fn an_unusable_configured_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        // A directory path below a regular file cannot be created.
        let bad = file.join("state.json");
        let err = StateFile::choose(Some(&bad), &|_| None).unwrap_err();
        assert!(
            err.contains("agent.state_file") && err.contains("cannot create"),
            "{err}"
        );
        let err = StateFile::choose(Some(dir.path()), &|_| None).unwrap_err();
        assert!(err.contains("is a directory"), "{err}");
    }
}
