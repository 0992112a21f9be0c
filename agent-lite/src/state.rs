//! The agent's small state file: the idempotency keys of recently executed commands with
//! their final `command_response` payloads, so a command delivered again (after a
//! reconnection or an agent restart) runs once; and, for an agent that enrolled itself, the
//! credentials the server handed out ([`Credentials`]) and the random machine id used when the
//! machine has none. Both are written back with every save.
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
//! replaced by an empty memory: never a crash (an enrolled agent then enrols again, and the
//! same machine with the same name gets its host back).
//!
//! Owns: the key memory, the kept credentials and their file. Must not: run commands or talk
//! to the server.

use protocol::{CommandResponsePayload, ErrorBody, ErrorCode, Secret};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// What an enrolment handed out: the agent's own id and token, for the server it enrolled
/// with. `Debug` masks the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    pub agent_id: String,
    pub auth_token: Secret,
    pub host_id: String,
    pub host_name: String,
    /// The server URL it enrolled with (`server.url` then).
    pub server: String,
    /// Unix seconds.
    pub enrolled_at: u64,
}

/// What the file keeps besides the keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Kept {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credentials: Option<Credentials>,
    /// The random machine id of a machine without `/etc/machine-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    machine_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    idempotency: Vec<Entry>,
    #[serde(flatten)]
    kept: Kept,
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

    /// The file's text with the keys only.
    pub fn encode(&self) -> String {
        self.encode_with(&Kept::default())
    }

    fn encode_with(&self, kept: &Kept) -> String {
        serde_json::to_string(&FileFormat {
            version: 1,
            idempotency: self.entries.iter().cloned().collect(),
            kept: kept.clone(),
        })
        .unwrap_or_default()
    }

    /// Parses a state file's text. Keys without a response (their command was running when
    /// the agent stopped) are answered with `outcome_unknown` from now on.
    pub fn decode(text: &str, now: u64) -> Result<KeyStore, String> {
        Self::decode_file(text, now).map(|(keys, _)| keys)
    }

    fn decode_file(text: &str, now: u64) -> Result<(KeyStore, Kept), String> {
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
        Ok((s, f.kept))
    }
}

/// Where the state lives: a file, or memory only. Clones share what the file keeps.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: Option<PathBuf>,
    kept: Arc<Mutex<Kept>>,
}

impl StateFile {
    /// Memory only: keys are forgotten when the agent stops.
    pub fn memory() -> Self {
        StateFile::at(None)
    }

    fn at(path: Option<PathBuf>) -> Self {
        StateFile {
            path,
            kept: Arc::default(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Chooses the file. `configured` (`agent.state_file`) must be usable: its directory is
    /// created (mode 0700) when missing and must be writable, else the error says why.
    /// Without it, [`DEFAULT_PATH`] is tried, then `$HOME/.local/state/docker-ctl/`, then
    /// memory only (with a warning) unless `required` (an agent that enrols keeps its
    /// credentials there, never in memory only): then it is an error.
    pub fn choose(
        configured: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        required: bool,
    ) -> Result<Self, String> {
        if let Some(p) = configured {
            return usable(p)
                .map(|()| StateFile::at(Some(p.to_path_buf())))
                .map_err(|e| format!("agent.state_file {}: {e}", p.display()));
        }
        let mut candidates = vec![PathBuf::from(DEFAULT_PATH)];
        if let Some(home) = env("HOME").filter(|h| !h.is_empty()) {
            candidates.push(Path::new(&home).join(".local/state/docker-ctl/agent-state.json"));
        }
        Self::first_usable(candidates, required)
    }

    /// The first usable of `candidates`; else memory only (with a warning), or an error when
    /// a file is `required`.
    fn first_usable(candidates: Vec<PathBuf>, required: bool) -> Result<Self, String> {
        let mut why = Vec::new();
        for c in candidates {
            match usable(&c) {
                Ok(()) => {
                    if !why.is_empty() {
                        log::warn!(
                            "using the state file {} ({}); set agent.state_file to choose",
                            c.display(),
                            why.join("; ")
                        );
                    }
                    return Ok(StateFile::at(Some(c)));
                }
                Err(e) => why.push(format!("{} is not usable: {e}", c.display())),
            }
        }
        if required {
            return Err(format!(
                "an agent that enrols with agent.enrol_token keeps the credentials it is given in its state file, and none is writable ({}): set agent.state_file (--state-file) to a writable path",
                why.join("; ")
            ));
        }
        log::warn!(
            "no usable state file ({}): idempotency keys are kept in memory only and forgotten when the agent stops; set agent.state_file",
            why.join("; ")
        );
        Ok(StateFile::memory())
    }

    /// Loads the keys (and keeps what else the file holds, for later saves). A missing file
    /// is an empty memory; a corrupt one is reported, moved to `<file>.corrupt` and replaced.
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
        match KeyStore::decode_file(&text, now) {
            Ok((s, kept)) => {
                log::info!(
                    "loaded {} idempotency keys from {}",
                    s.len(),
                    path.display()
                );
                *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = kept;
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
                if let Err(e) = self.save(&empty) {
                    log::error!("cannot write the state file {}: {e}", path.display());
                }
                empty
            }
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The credentials an enrolment stored, if any.
    pub fn credentials(&self) -> Option<Credentials> {
        self.kept().credentials.clone()
    }

    /// The random machine id kept for a machine without one, if any.
    pub fn machine_id(&self) -> Option<String> {
        self.kept().machine_id.clone()
    }

    /// Stores the credentials of an enrolment and writes the file (with `keys`) at once: the
    /// caller uses them only after this returned `Ok`. Memory only: an error.
    pub fn keep_credentials(&self, c: Credentials, keys: &KeyStore) -> std::io::Result<()> {
        self.keep(keys, |k| k.credentials = Some(c))
    }

    /// Stores a random machine id and writes the file (with `keys`) at once.
    pub fn keep_machine_id(&self, id: String, keys: &KeyStore) -> std::io::Result<()> {
        self.keep(keys, |k| k.machine_id = Some(id))
    }

    fn keep(&self, keys: &KeyStore, change: impl FnOnce(&mut Kept)) -> std::io::Result<()> {
        if self.path.is_none() {
            return Err(std::io::Error::other("no state file (memory only)"));
        }
        let before = self.kept().clone();
        let mut after = before.clone();
        change(&mut after);
        *self.kept() = after;
        let written = self.save(keys);
        if written.is_err() {
            // Not on disk: not kept.
            *self.kept() = before;
        }
        written
    }

    /// The file's text: `keys` with what else the file keeps.
    pub fn encode(&self, keys: &KeyStore) -> String {
        keys.encode_with(&self.kept())
    }

    /// Replaces the file with `keys` (and what else it keeps) atomically. Memory only:
    /// nothing to do.
    pub fn save(&self, keys: &KeyStore) -> std::io::Result<()> {
        self.write(&self.encode(keys))
    }

    /// Replaces the file with `text` (from [`StateFile::encode`]) atomically. Memory only:
    /// nothing to do.
    pub fn write(&self, text: &str) -> std::io::Result<()> {
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
        let f = StateFile::choose(Some(&path), &|_| None, false).unwrap();
        let mut s = KeyStore::default();
        s.finish("k", "container.create", &ok(1), now_secs());
        f.save(&s).unwrap();
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
        let err = StateFile::choose(Some(&bad), &|_| None, true).unwrap_err();
        assert!(
            err.contains("agent.state_file") && err.contains("cannot create"),
            "{err}"
        );
        let err = StateFile::choose(Some(dir.path()), &|_| None, false).unwrap_err();
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn credentials_survive_key_saves_and_a_reload() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let f = StateFile::choose(Some(&path), &|_| None, true).unwrap();
        let mut keys = f.load(now_secs());
        assert!(f.credentials().is_none());
        let c = Credentials {
            agent_id: "pi-7-0a0b".into(),
            auth_token: Secret::new("dctl_a_s3cret"),
            host_id: "h1".into(),
            host_name: "pi-7".into(),
            server: "wss://ctl.example".into(),
            enrolled_at: 1,
        };
        f.keep_credentials(c.clone(), &keys).unwrap();
        f.keep_machine_id("m".repeat(32), &keys).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!format!("{f:?} {c:?}").contains("s3cret"));
        // The command memory saves the keys: the credentials stay in the file.
        keys.finish("k", "container.create", &ok(1), now_secs());
        f.save(&keys).unwrap();
        let again = StateFile::choose(Some(&path), &|_| None, true).unwrap();
        let loaded = again.load(now_secs());
        assert_eq!(again.credentials(), Some(c));
        assert_eq!(again.machine_id(), Some("m".repeat(32)));
        assert!(loaded.get("k", now_secs()).is_some());
        // Memory only keeps nothing, and says so.
        let mem = StateFile::memory();
        assert!(mem.keep_machine_id("x".into(), &keys).is_err());
        assert!(mem.machine_id().is_none());
    }

    #[test]
    fn an_agent_that_enrols_never_falls_back_to_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let unusable = vec![file.join("a/state.json"), dir.path().to_path_buf()];
        let mem = StateFile::first_usable(unusable.clone(), false).unwrap();
        assert!(mem.path().is_none(), "without enrolment: memory only");
        let err = StateFile::first_usable(unusable, true).unwrap_err();
        assert!(
            err.contains("agent.enrol_token") && err.contains("--state-file"),
            "{err}"
        );
        let ok = dir.path().join("sub/state.json");
        let f = StateFile::first_usable(vec![file.join("x"), ok.clone()], true).unwrap();
        assert_eq!(f.path(), Some(ok.as_path()));
    }
}
