//! Running commands: parse the operation, run it through the protocol crate's one mapping
//! on a worker, and answer with exactly one `command_response` per command id.
//!
//! Owns: the worker pool, deadlines per command, `image.pull` progress, duplicate
//! deliveries ([`dedup`]), and following Docker events ([`events`]). Must not: map operations to Docker requests
//! (that is `protocol::mapping`), or write to the WebSocket (messages go to the outbox).

pub mod dedup;
pub mod events;
pub mod outbox;
pub mod pool;

use crate::agent::Agent;
use crate::policy::request::{AgentDaemon, Guarded};
use crate::policy::scope::Scope;
use crate::state::now_secs;
use dedup::Seen;
use outbox::Outbox;
use protocol::{
    Access, CommandPayload, CommandProgressPayload, CommandResponsePayload, Envelope, ErrorBody,
    ErrorCode, Message, MessageType, Operation,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most one `command_progress` per this interval, unless the status text changes.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Whether a command's key goes to the state file: catalog operations that change
/// something. Reads are harmless to run again.
fn persisted(cmd: &CommandPayload) -> bool {
    cmd.idempotency_key.is_some()
        && protocol::ops::lookup(&cmd.operation).is_some_and(|o| o.access == Access::Write)
}

/// Accepts one `command` from the session thread. Never blocks: the command runs on the
/// pool, or is answered at once (duplicate, queue full), or waits for the running command
/// with the same idempotency key.
pub fn dispatch(agent: &Arc<Agent>, pool: &pool::Pool, id: String, cmd: CommandPayload) {
    let key = cmd.idempotency_key.clone();
    let seen = match agent.commands.lock() {
        Some(mut d) => d.check(&id, key.as_deref(), now_secs()),
        None => Seen::New,
    };
    if !matches!(seen, Seen::New) {
        return answer_duplicate(agent, &id, &cmd.operation, seen);
    }
    let (a, job_id) = (agent.clone(), id.clone());
    let job: pool::Job = Box::new(move || run_job(&a, job_id, &cmd));
    if pool.submit(job).is_err() {
        let resp = CommandResponsePayload::Error {
            error: ErrorBody::new(
                ErrorCode::RateLimited,
                "the agent's command queue is full; retry later",
            ),
        };
        let waiters = match agent.commands.lock() {
            Some(mut d) => d.abandon(&id),
            None => Vec::new(),
        };
        log::warn!("command {id} refused: queue full");
        let text = dedup::written(&resp);
        for w in waiters.into_iter().chain(std::iter::once(id)) {
            send_answer(&agent.outbox, w, &text);
        }
    }
}

/// A command seen before: its answer comes (or came) from the first delivery.
fn answer_duplicate(agent: &Agent, id: &str, operation: &str, seen: Seen) {
    match seen {
        Seen::Running => {
            log::warn!("command {id} ({operation}) is already running; ignoring the duplicate")
        }
        Seen::Waiting(first) => log::info!(
            "command {id} ({operation}) has the idempotency key of command {first}, which is still running: it gets that command's answer"
        ),
        Seen::Answered(_) if agent.outbox.has_response(id) => {
            log::info!("command {id} ({operation}) was already answered; the answer is queued")
        }
        Seen::Answered(r) => {
            log::info!(
                "command {id} ({operation}) was already executed (same id or idempotency key); sending the same answer again"
            );
            send_answer(&agent.outbox, id.to_string(), &r);
        }
        Seen::New => {}
    }
}

/// A command's job on a worker: run it, remember and persist its answer, answer it and the
/// commands waiting for it.
fn run_job(a: &Agent, id: String, cmd: &CommandPayload) {
    let persist = persisted(cmd);
    let key = cmd.idempotency_key.as_deref().filter(|_| persist);
    if let Some(k) = key {
        if let Some(mut d) = a.commands.lock() {
            d.keys.start(k, &cmd.operation, now_secs());
        }
        a.commands.save();
    }
    a.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let resp = CommandResponsePayload::from_result(execute(a, &id, cmd, &a.outbox));
    a.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    // Written once: the same text is remembered and sent.
    let text = dedup::written(&resp);
    let waiters = match a.commands.lock() {
        Some(mut d) => {
            if let Some(k) = key {
                d.keys.finish(k, &cmd.operation, &resp, now_secs());
            }
            d.finish(&id, &text)
        }
        None => Vec::new(),
    };
    if persist {
        // Durable before the server sees the answer.
        a.commands.save();
    }
    for w in waiters.into_iter().chain(std::iter::once(id)) {
        send_answer(&a.outbox, w, &text);
    }
    // The answer's tree is freed only now, while the session sends it.
    drop(resp);
}

/// Queues the `command_response` of command `id` whose payload is `written`
/// ([`dedup::written`]): every answer (fresh, to a waiter, again to a duplicate, a refusal)
/// leaves as the text written once.
fn send_answer(outbox: &Outbox, id: String, written: &str) {
    let kind = MessageType::CommandResponse;
    let text = Envelope::encode_with_payload(&id, kind, written);
    outbox.send_text(id, kind, text);
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
    let daemon = AgentDaemon {
        client: &agent.daemon,
        deadline: Some(deadline),
    };
    let mut guarded = Guarded {
        scope: Scope::new(policy, &daemon),
        inner: &mut agent.daemon.transport(Some(deadline)),
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
