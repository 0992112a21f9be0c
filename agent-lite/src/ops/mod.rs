//! Running commands: parse the operation, run it through the protocol crate's one mapping
//! on a worker, and answer with exactly one `command_response` per command id.
//!
//! Owns: the worker pool, deadlines per command, `image.pull` progress, duplicate
//! deliveries, and following Docker events. Must not: map operations to Docker requests
//! (that is `protocol::mapping`), or write to the WebSocket (messages go to the outbox).

pub mod events;
pub mod outbox;
pub mod pool;

use crate::state::KeyStore;
use crate::Agent;
use outbox::Outbox;
use protocol::{
    CommandPayload, CommandProgressPayload, CommandResponsePayload, Envelope, ErrorBody, ErrorCode,
    Message, Operation,
};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many finished command ids (and idempotency keys) are remembered in memory.
const REMEMBER: usize = 256;
/// At most one `command_progress` per this interval, unless the status text changes.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

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
    resp: CommandResponsePayload,
}

enum Seen {
    /// Run it.
    New,
    /// This very id is running: its answer will come.
    Running,
    /// Another id with the same key is running: this id gets its answer too.
    Waiting(String),
    /// Answered before: send the same answer.
    Answered(CommandResponsePayload),
}

impl Dedup {
    /// A dedup memory with `keys` loaded from the state file.
    pub fn with_keys(keys: KeyStore) -> Self {
        Dedup {
            keys,
            ..Default::default()
        }
    }

    fn check(&mut self, id: &str, key: Option<&str>, now: u64) -> Seen {
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
        if let Some(d) = self.done.iter().rev().find(|d| d.id == id) {
            return Seen::Answered(d.resp.clone());
        }
        if let Some(k) = key {
            if let Some(d) = self.done.iter().rev().find(|d| d.key.as_deref() == Some(k)) {
                return Seen::Answered(d.resp.clone());
            }
            if let Some(r) = self.keys.get(k, now).and_then(|e| e.response.clone()) {
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

    /// Records the answer of `id`; returns the ids waiting for it.
    fn finish(&mut self, id: &str, resp: &CommandResponsePayload) -> Vec<String> {
        let r = self.take_running(id);
        let (key, waiters) = r.map_or((None, Vec::new()), |r| (r.key, r.waiters));
        for w in waiters.iter().chain(std::iter::once(&id.to_string())) {
            self.done.push_back(Done {
                id: w.clone(),
                key: key.clone(),
                resp: resp.clone(),
            });
        }
        while self.done.len() > REMEMBER {
            self.done.pop_front();
        }
        waiters
    }

    /// Forgets `id` without remembering an answer (it never ran); returns its waiters.
    fn abandon(&mut self, id: &str) -> Vec<String> {
        self.take_running(id).map_or(Vec::new(), |r| r.waiters)
    }
}

/// Whether a command's key goes to the state file: catalog operations that change
/// something. Reads are harmless to run again.
fn persisted(cmd: &CommandPayload) -> bool {
    cmd.idempotency_key.is_some()
        && protocol::OPERATION_NAMES.contains(&cmd.operation.as_str())
        && protocol::ops::access_of(&cmd.operation) == protocol::Access::Write
}

/// Accepts one `command` from the session thread. Never blocks: the command runs on the
/// pool, or is answered at once (duplicate, queue full), or waits for the running command
/// with the same idempotency key.
pub fn dispatch(agent: &Arc<Agent>, pool: &pool::Pool, id: String, cmd: CommandPayload) {
    let key = cmd.idempotency_key.clone();
    let seen = match agent.dedup.lock() {
        Ok(mut d) => d.check(&id, key.as_deref(), crate::state::now_secs()),
        Err(_) => Seen::New,
    };
    let outbox: &Outbox = &agent.outbox;
    match seen {
        Seen::Running => {
            log::warn!(
                "command {id} ({}) is already running; ignoring the duplicate",
                cmd.operation
            );
            return;
        }
        Seen::Waiting(first) => {
            log::info!(
                "command {id} ({}) has the idempotency key of command {first}, which is still running: it gets that command's answer",
                cmd.operation
            );
            return;
        }
        Seen::Answered(r) => {
            if outbox.has_response(&id) {
                log::info!(
                    "command {id} ({}) was already answered; the answer is queued",
                    cmd.operation
                );
            } else {
                log::info!(
                    "command {id} ({}) was already executed (same id or idempotency key); sending the same answer again",
                    cmd.operation
                );
                outbox.send(Envelope::new(id, Message::CommandResponse(r)));
            }
            return;
        }
        Seen::New => {}
    }
    let (a, job_id) = (agent.clone(), id.clone());
    let job: pool::Job = Box::new(move || {
        let persist = persisted(&cmd);
        if let (true, Some(k)) = (persist, key.as_deref()) {
            if let Ok(mut d) = a.dedup.lock() {
                d.keys.start(k, &cmd.operation, crate::state::now_secs());
            }
            a.save_state();
        }
        a.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let resp = CommandResponsePayload::from_result(execute(&a, &job_id, &cmd, &a.outbox));
        a.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let waiters = match a.dedup.lock() {
            Ok(mut d) => {
                if let (true, Some(k)) = (persist, key.as_deref()) {
                    d.keys
                        .finish(k, &cmd.operation, &resp, crate::state::now_secs());
                }
                d.finish(&job_id, &resp)
            }
            Err(_) => Vec::new(),
        };
        if persist {
            // Durable before the server sees the answer.
            a.save_state();
        }
        for w in waiters {
            a.outbox
                .send(Envelope::new(w, Message::CommandResponse(resp.clone())));
        }
        a.outbox
            .send(Envelope::new(job_id, Message::CommandResponse(resp)));
    });
    if pool.submit(job).is_err() {
        let resp = CommandResponsePayload::Error {
            error: ErrorBody::new(
                ErrorCode::RateLimited,
                "the agent's command queue is full; retry later",
            ),
        };
        let waiters = match agent.dedup.lock() {
            Ok(mut d) => d.abandon(&id),
            Err(_) => Vec::new(),
        };
        log::warn!("command {id} refused: queue full");
        for w in waiters.into_iter().chain(std::iter::once(id)) {
            outbox.send(Envelope::new(w, Message::CommandResponse(resp.clone())));
        }
    }
}

/// Runs one command to completion on the calling (worker) thread.
pub fn execute(
    agent: &Agent,
    id: &str,
    cmd: &CommandPayload,
    outbox: &Outbox,
) -> Result<serde_json::Value, ErrorBody> {
    let secs = cmd
        .timeout
        .unwrap_or_else(|| agent.settings.command_timeout.load(Ordering::Relaxed))
        .max(1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    // The local policy first: the operation's name; then each Docker request it makes.
    let policy = &agent.config.policy;
    if let Err(e) = policy.check_command(&cmd.operation) {
        log::info!("command {id}: {} refused: {e}", cmd.operation);
        return Err(e);
    }
    let op = Operation::parse(&cmd.operation, &cmd.params)?;
    let started = Instant::now();
    log::debug!("command {id}: {} (timeout {secs}s)", op.name());
    let mut last_sent: Option<(Instant, Option<serde_json::Value>)> = None;
    let mut progress = |p: serde_json::Value| {
        let status = p.get("status").cloned();
        let due = match &last_sent {
            None => true,
            Some((t, s)) => t.elapsed() >= PROGRESS_EVERY || *s != status,
        };
        if due {
            last_sent = Some((Instant::now(), status));
            outbox.send(Envelope::new(
                id,
                Message::CommandProgress(CommandProgressPayload { data: p }),
            ));
        }
    };
    let daemon = crate::policy::request::AgentDaemon {
        docker: &agent.docker,
        deadline: Some(deadline),
    };
    let mut guarded = crate::policy::request::Guarded {
        scope: policy.scope(&daemon),
        inner: &mut agent.docker.transport(Some(deadline)),
    };
    let result = protocol::mapping::run_blocking(op, &mut guarded, &mut progress);
    let result = match result {
        Err(e) if e.code == ErrorCode::Timeout => Err(ErrorBody::new(
            ErrorCode::Timeout,
            format!(
                "{} did not finish within {secs}s: {}",
                cmd.operation, e.message
            ),
        )),
        r => r,
    };
    match &result {
        Ok(_) => log::debug!(
            "command {id}: {} ok in {:?}",
            cmd.operation,
            started.elapsed()
        ),
        Err(e) => log::info!(
            "command {id}: {} failed in {:?}: {e}",
            cmd.operation,
            started.elapsed()
        ),
    }
    result
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
        let waiters = d.finish("c1", &ok(1));
        assert_eq!(waiters, vec!["c2".to_string()], "one waiter, once");
        assert!(matches!(d.check("c1", None, 0), Seen::Answered(_)));
        assert!(matches!(d.check("c2", None, 0), Seen::Answered(_)));
        assert!(matches!(d.check("c3", Some("k"), 0), Seen::Answered(r) if r == ok(1)));
        for i in 0..(REMEMBER + 10) {
            let id = format!("x{i}");
            assert!(matches!(d.check(&id, None, 0), Seen::New));
            d.finish(&id, &ok(2));
        }
        assert!(d.done.len() <= REMEMBER);
    }

    #[test]
    fn persisted_keys_answer_after_the_memory_forgot() {
        let mut keys = KeyStore::default();
        keys.finish("k", "container.create", &ok(5), 100);
        let mut d = Dedup::with_keys(keys);
        assert!(matches!(d.check("new-id", Some("k"), 101), Seen::Answered(r) if r == ok(5)));
        assert!(matches!(d.check("other", Some("k2"), 101), Seen::New));
        assert!(d.abandon("other").is_empty());
        assert!(
            matches!(d.check("other", Some("k2"), 101), Seen::New),
            "abandoned commands run when sent again"
        );
    }

    #[test]
    fn only_catalog_writes_with_a_key_are_persisted() {
        let cmd = |op: &str, key: Option<&str>| CommandPayload {
            operation: op.into(),
            params: serde_json::json!({}),
            timeout: None,
            idempotency_key: key.map(str::to_owned),
        };
        assert!(persisted(&cmd("container.create", Some("k"))));
        assert!(!persisted(&cmd("container.create", None)));
        assert!(!persisted(&cmd("container.list", Some("k"))));
        assert!(!persisted(&cmd("container.explode", Some("k"))));
    }
}
