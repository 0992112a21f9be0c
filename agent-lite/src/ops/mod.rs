//! Running commands: parse the operation, run it through the protocol crate's one mapping
//! on a worker, and answer with exactly one `command_response` per command id.
//!
//! Owns: the worker pool, deadlines per command, `image.pull` progress, duplicate
//! deliveries, and following Docker events. Must not: map operations to Docker requests
//! (that is `protocol::docker`), or write to the WebSocket (messages go to the outbox).

pub mod events;
pub mod pool;

use crate::Agent;
use protocol::{
    CommandPayload, CommandProgressPayload, CommandResponsePayload, Envelope, ErrorBody, ErrorCode,
    Message, Operation,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many finished command ids (and idempotency keys) are remembered.
const REMEMBER: usize = 256;
/// At most one `command_progress` per this interval, unless the status text changes.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Commands in flight and recently answered, so a command delivered twice runs once.
#[derive(Default)]
pub struct Dedup {
    in_flight: HashSet<String>,
    done: VecDeque<(String, CommandResponsePayload)>,
    keys: HashMap<String, String>,
}

enum Seen {
    New,
    Running,
    Answered(CommandResponsePayload),
}

impl Dedup {
    fn check(&mut self, id: &str, key: Option<&str>) -> Seen {
        if self.in_flight.contains(id) {
            return Seen::Running;
        }
        let by_key = key.and_then(|k| self.keys.get(k)).cloned();
        for cand in [Some(id.to_string()), by_key].into_iter().flatten() {
            if self.in_flight.contains(&cand) {
                return Seen::Running;
            }
            if let Some((_, r)) = self.done.iter().find(|(d, _)| *d == cand) {
                return Seen::Answered(r.clone());
            }
        }
        self.in_flight.insert(id.to_string());
        if let Some(k) = key {
            self.keys.insert(k.to_string(), id.to_string());
            if self.keys.len() > REMEMBER * 2 {
                let live: HashSet<&String> = self
                    .done
                    .iter()
                    .map(|(d, _)| d)
                    .chain(self.in_flight.iter())
                    .collect();
                self.keys.retain(|_, v| live.contains(v));
            }
        }
        Seen::New
    }

    fn finish(&mut self, id: &str, resp: &CommandResponsePayload) {
        self.in_flight.remove(id);
        self.done.push_back((id.to_string(), resp.clone()));
        while self.done.len() > REMEMBER {
            self.done.pop_front();
        }
    }
}

/// Accepts one `command` from the session thread. Never blocks: the command runs on the
/// pool, or is answered at once (duplicate, queue full).
pub fn dispatch(
    agent: &Arc<Agent>,
    pool: &pool::Pool,
    outbox: &Sender<Envelope>,
    id: String,
    cmd: CommandPayload,
) {
    let seen = match agent.dedup.lock() {
        Ok(mut d) => d.check(&id, cmd.idempotency_key.as_deref()),
        Err(_) => Seen::New,
    };
    match seen {
        Seen::Running => {
            log::warn!(
                "command {id} ({}) is already running; ignoring the duplicate",
                cmd.operation
            );
            return;
        }
        Seen::Answered(r) => {
            log::info!(
                "command {id} ({}) was already answered; sending the same answer again",
                cmd.operation
            );
            let _ = outbox.send(Envelope::new(id, Message::CommandResponse(r)));
            return;
        }
        Seen::New => {}
    }
    let (a, out, job_id) = (agent.clone(), outbox.clone(), id.clone());
    let job: pool::Job = Box::new(move || {
        a.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let resp = CommandResponsePayload::from_result(execute(&a, &job_id, &cmd, &out));
        a.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut d) = a.dedup.lock() {
            d.finish(&job_id, &resp);
        }
        let _ = out.send(Envelope::new(job_id, Message::CommandResponse(resp)));
    });
    if pool.submit(job).is_err() {
        let resp = CommandResponsePayload::Error {
            error: ErrorBody::new(
                ErrorCode::RateLimited,
                "the agent's command queue is full; retry later",
            ),
        };
        if let Ok(mut d) = agent.dedup.lock() {
            d.finish(&id, &resp);
        }
        log::warn!("command {id} refused: queue full");
        let _ = outbox.send(Envelope::new(id, Message::CommandResponse(resp)));
    }
}

/// Runs one command to completion on the calling (worker) thread.
pub fn execute(
    agent: &Agent,
    id: &str,
    cmd: &CommandPayload,
    outbox: &Sender<Envelope>,
) -> Result<serde_json::Value, ErrorBody> {
    let secs = cmd
        .timeout
        .unwrap_or_else(|| agent.settings.command_timeout.load(Ordering::Relaxed))
        .max(1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    // The local policy first: it may refuse, add label filters or labels.
    let mut params = cmd.params.clone();
    let policy = &agent.config.policy;
    if let Err(e) = policy.check_command(agent, &cmd.operation, &mut params, deadline) {
        log::info!("command {id}: {} refused: {e}", cmd.operation);
        return Err(e);
    }
    let op = Operation::parse(&cmd.operation, &params)?;
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
            let _ = outbox.send(Envelope::new(
                id,
                Message::CommandProgress(CommandProgressPayload { data: p }),
            ));
        }
    };
    let result = protocol::docker::run(
        op,
        &mut agent.docker.transport(Some(deadline)),
        &mut progress,
    );
    let result = match result {
        Ok(mut v) if cmd.operation == "container.inspect" => {
            policy.redact(&mut v);
            Ok(v)
        }
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
    fn dedup_runs_once_and_replays_answers() {
        let mut d = Dedup::default();
        assert!(matches!(d.check("c1", Some("k")), Seen::New));
        assert!(matches!(d.check("c1", None), Seen::Running));
        assert!(matches!(d.check("c2", Some("k")), Seen::Running));
        let r = CommandResponsePayload::Success {
            data: serde_json::json!(1),
        };
        d.finish("c1", &r);
        assert!(matches!(d.check("c1", None), Seen::Answered(_)));
        assert!(matches!(d.check("c3", Some("k")), Seen::Answered(_)));
        for i in 0..(REMEMBER + 10) {
            let id = format!("x{i}");
            assert!(matches!(d.check(&id, None), Seen::New));
            d.finish(&id, &r);
        }
        assert!(d.done.len() <= REMEMBER);
    }
}
