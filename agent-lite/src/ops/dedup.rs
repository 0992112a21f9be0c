//! Duplicate deliveries: a command delivered twice runs once, by envelope id and by
//! idempotency key, and the keys of commands that change something outlive a restart in the
//! state file.
//!
//! Owns: the memory of running and answered commands and writing it to the state file. Must
//! not: run commands or send answers (that is [`super`]).

use crate::state::{KeyStore, StateFile};
use protocol::CommandResponsePayload;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// How many finished command ids (and idempotency keys) are remembered in memory.
const REMEMBER: usize = 256;

/// Commands in flight and recently answered, so a command delivered twice runs once: by
/// envelope id and by idempotency key. Keys of commands that change something are also
/// kept in [`KeyStore`], which the state file persists.
#[derive(Default)]
pub struct Dedup {
    running: Vec<Running>,
    done: VecDeque<Done>,
    pub keys: KeyStore,
}

struct Running {
    id: String,
    key: Option<String>,
    /// Later command ids with the same key: they get this command's answer.
    waiters: Vec<String>,
}

struct Done {
    id: String,
    key: Option<String>,
    /// [`fingerprint`]s of `id` and `key` (0 without a key), compared before the strings:
    /// every command looks through up to [`REMEMBER`] answers, and comparing the ids
    /// themselves (the same length, a common prefix) was 2 % of the agent's CPU per command.
    id_print: u64,
    key_print: u64,
    resp: Kept,
}

/// FNV-1a of `s`: cheap, and enough to skip almost every string compare.
fn fingerprint(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An answer remembered as its JSON text ([`written`]): one allocation, shared by the ids it
/// answers, and sent again as is. Kept as a tree of values, a `container.list` answer is
/// hundreds of small allocations, and [`REMEMBER`] of them held the allocator's pages (about
/// 14 MiB of RSS on a musl build after a few hundred lists).
type Kept = Arc<str>;

/// A command's answer as its payload's JSON text, written once: kept here for duplicate
/// deliveries and sent as is (`Envelope::encode_with_payload`).
pub(crate) fn written(resp: &CommandResponsePayload) -> Arc<str> {
    // Our payload types serialise infallibly (string keys only).
    serde_json::to_string(resp).unwrap_or_default().into()
}

pub(crate) enum Seen {
    /// Run it.
    New,
    /// This very id is running: its answer will come.
    Running,
    /// Another id with the same key is running: this id gets its answer too.
    Waiting(String),
    /// Answered before: send the same answer (as [`written`]).
    Answered(Kept),
}

impl Dedup {
    /// A dedup memory with `keys` loaded from the state file.
    pub fn with_keys(keys: KeyStore) -> Self {
        Dedup {
            keys,
            ..Default::default()
        }
    }

    pub(crate) fn check(&mut self, id: &str, key: Option<&str>, now: u64) -> Seen {
        if self.running.iter().any(|r| r.id == id) {
            return Seen::Running;
        }
        if let Some(k) = key {
            if let Some(r) = self
                .running
                .iter_mut()
                .find(|r| r.key.as_deref() == Some(k))
            {
                if !r.waiters.iter().any(|w| w == id) {
                    r.waiters.push(id.to_string());
                }
                return Seen::Waiting(r.id.clone());
            }
        }
        let print = fingerprint(id);
        let same_id = |d: &&Done| d.id_print == print && d.id == id;
        if let Some(d) = self.done.iter().rev().find(same_id) {
            return Seen::Answered(d.resp.clone());
        }
        if let Some(k) = key {
            let print = fingerprint(k);
            let same_key = |d: &&Done| d.key_print == print && d.key.as_deref() == Some(k);
            if let Some(d) = self.done.iter().rev().find(same_key) {
                return Seen::Answered(d.resp.clone());
            }
            if let Some(r) = self
                .keys
                .get(k, now)
                .and_then(|e| e.response.as_ref().map(written))
            {
                return Seen::Answered(r);
            }
        }
        self.running.push(Running {
            id: id.to_string(),
            key: key.map(str::to_owned),
            waiters: Vec::new(),
        });
        Seen::New
    }

    fn take_running(&mut self, id: &str) -> Option<Running> {
        let i = self.running.iter().position(|r| r.id == id)?;
        Some(self.running.swap_remove(i))
    }

    /// Records the answer of `id`, as [`written`]; returns the ids waiting for it.
    pub(crate) fn finish(&mut self, id: &str, written: &Arc<str>) -> Vec<String> {
        let r = self.take_running(id);
        let (key, waiters) = r.map_or((None, Vec::new()), |r| (r.key, r.waiters));
        let key_print = key.as_deref().map_or(0, fingerprint);
        for w in waiters.iter().chain(std::iter::once(&id.to_string())) {
            self.done.push_back(Done {
                id: w.clone(),
                key: key.clone(),
                id_print: fingerprint(w),
                key_print,
                resp: written.clone(),
            });
        }
        while self.done.len() > REMEMBER {
            self.done.pop_front();
        }
        waiters
    }

    /// Forgets `id` without remembering an answer (it never ran); returns its waiters.
    pub(crate) fn abandon(&mut self, id: &str) -> Vec<String> {
        self.take_running(id).map_or(Vec::new(), |r| r.waiters)
    }
}

/// The agent's [`Dedup`] with the state file that keeps its keys.
pub struct Memory {
    dedup: Mutex<Dedup>,
    file: StateFile,
    /// One writer at a time, each writing the latest state.
    writer: Mutex<()>,
}

impl Memory {
    /// Loads the keys kept in `file`.
    pub fn load(file: StateFile, now: u64) -> Self {
        let keys = file.load(now);
        Self::with_keys(file, keys)
    }

    /// The memory of `keys`, already loaded from `file`.
    pub fn with_keys(file: StateFile, keys: KeyStore) -> Self {
        Memory {
            dedup: Mutex::new(Dedup::with_keys(keys)),
            file,
            writer: Mutex::new(()),
        }
    }

    /// The memory, or `None` when a thread panicked holding it.
    pub fn lock(&self) -> Option<MutexGuard<'_, Dedup>> {
        self.dedup.lock().ok()
    }

    /// Writes the idempotency keys to the state file (atomically).
    pub fn save(&self) {
        let Some(path) = self.file.path() else {
            return;
        };
        let Ok(_w) = self.writer.lock() else {
            return;
        };
        let text = match self.dedup.lock() {
            Ok(d) => self.file.encode(&d.keys),
            Err(_) => return,
        };
        if let Err(e) = self.file.write(&text) {
            log::error!(
                "cannot write the state file {}: {e}; idempotency keys may be forgotten on restart",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(n: i64) -> CommandResponsePayload {
        CommandResponsePayload::Success {
            data: serde_json::json!(n),
        }
    }

    #[test]
    fn dedup_runs_once_and_replays_answers() {
        let mut d = Dedup::default();
        assert!(matches!(d.check("c1", Some("k"), 0), Seen::New));
        assert!(matches!(d.check("c1", None, 0), Seen::Running));
        assert!(matches!(d.check("c2", Some("k"), 0), Seen::Waiting(f) if f == "c1"));
        assert!(matches!(d.check("c2", Some("k"), 0), Seen::Waiting(_)));
        let waiters = d.finish("c1", &written(&ok(1)));
        assert_eq!(waiters, vec!["c2".to_string()], "one waiter, once");
        assert!(matches!(d.check("c1", None, 0), Seen::Answered(r) if *r == *written(&ok(1))));
        assert!(matches!(d.check("c2", None, 0), Seen::Answered(_)));
        assert!(matches!(d.check("c3", Some("k"), 0), Seen::Answered(r) if *r == *written(&ok(1))));
        for i in 0..(REMEMBER + 10) {
            let id = format!("x{i}");
            assert!(matches!(d.check(&id, None, 0), Seen::New));
            d.finish(&id, &written(&ok(2)));
        }
        assert!(d.done.len() <= REMEMBER);
        assert!(
            matches!(d.check("c3", Some("k"), 0), Seen::New),
            "the oldest answers and their key are forgotten"
        );
    }

    #[test]
    fn the_newest_answer_for_an_id_or_key_wins() {
        let mut d = Dedup::default();
        assert!(matches!(d.check("a", Some("k"), 0), Seen::New));
        d.finish("a", &written(&ok(1)));
        // The same id and key answered again later: the newer answer is the one replayed.
        d.running.push(Running {
            id: "a".into(),
            key: Some("k".into()),
            waiters: Vec::new(),
        });
        d.finish("a", &written(&ok(2)));
        assert!(matches!(d.check("a", None, 0), Seen::Answered(r) if *r == *written(&ok(2))));
        assert!(matches!(d.check("b", Some("k"), 0), Seen::Answered(r) if *r == *written(&ok(2))));
        assert!(
            matches!(d.check("ab", Some("kk"), 0), Seen::New),
            "no false match"
        );
        assert_ne!(fingerprint("a"), fingerprint("b"));
    }

    #[test]
    fn persisted_keys_answer_after_the_memory_forgot() {
        let mut keys = KeyStore::default();
        keys.finish("k", "container.create", &ok(5), 100);
        let mut d = Dedup::with_keys(keys);
        assert!(
            matches!(d.check("new-id", Some("k"), 101), Seen::Answered(r) if *r == *written(&ok(5)))
        );
        assert!(matches!(d.check("other", Some("k2"), 101), Seen::New));
        assert!(d.abandon("other").is_empty());
        assert!(
            matches!(d.check("other", Some("k2"), 101), Seen::New),
            "abandoned commands run when sent again"
        );
    }
}
