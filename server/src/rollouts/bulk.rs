//! The bulk operation: a catalog operation, or a short sequence of them (`steps`), run on
//! every host of a rollout.
//!
//! Each step of each host is one command through the command path
//! ([`Commands::submit`]) for the rollout's creator, with the idempotency key
//! `bulk:ID:HOST:STEP` and the origin `bulk:ID`, and `queue` set so that a command survives
//! a restart and is sent again with the same key when its agent reconnects. A restarted
//! server submits the same keys again and gets the first commands back: no host runs a step
//! twice. A failed step fails the host and its later steps do not run.
//!
//! Offline hosts: with `queue_offline` the host's command waits in the queue (the target is
//! `queued` and frees its slot); without it an offline host is `skipped` (and a host that
//! drops between the check and the submission has its queued command withdrawn). When the
//! rollout stops, a command still queued (never sent) is withdrawn and the host is
//! `cancelled`; a command already sent is waited for.
//!
//! Params are the same for every host, except that in their strings `{{host.name}}` and
//! `{{host.id}}` stand for the host's name and id ([`for_host`]): a create gives each host's
//! container its own name.
//!
//! Owns: the bulk job and its spec. Must not: take a step of a command's life itself.

use futures_util::future::BoxFuture;
use protocol::ops::access_of;
use protocol::{ErrorBody, ErrorCode, Operation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

use super::{Job, JobKind, Target, TargetEnd, TargetState};
use crate::auth::{role_for, Principal};
use crate::commands::{CommandState, Commands, Reply, Submission, MAX_QUEUE_EXPIRY, MAX_TIMEOUT};
use crate::error::ApiError;
use crate::fleet::{Fleet, HostStatus};
use crate::reply;

/// The kind of a bulk operation.
pub const KIND: &str = "bulk";
/// Steps at most per bulk operation.
pub const MAX_STEPS: usize = 10;
/// How long one wait for a command lasts before it looks again.
const WAIT: Duration = Duration::from_secs(600);

/// One step: a catalog operation and its params.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub operation: String,
    #[serde(default)]
    pub params: Value,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

/// What a bulk operation runs on each host (stored encrypted: params may hold secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkSpec {
    pub steps: Vec<Step>,
    /// Queue the commands of offline hosts (else skip those hosts).
    pub queue_offline: bool,
    /// Seconds a queued command waits for its agent.
    pub expires_in: Option<u64>,
    /// Seconds to wait for each command's answer.
    pub timeout: Option<u64>,
}

impl BulkSpec {
    /// Checks the steps and limits, and that `who` may run every step.
    pub fn check(&self, who: &Principal) -> Result<(), ApiError> {
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(ApiError::bad_request(format!(
                "a bulk operation has 1 to {MAX_STEPS} steps"
            )));
        }
        for s in &self.steps {
            who.require(role_for(access_of(&s.operation)))?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            let params = for_host(&s.params, "host", "host");
            Operation::parse(&s.operation, &params).map_err(|e| {
                ApiError::from(ErrorBody::new(
                    e.code,
                    format!("step {} ({}): {}", i + 1, s.operation, e.message),
                ))
            })?;
        }
        let within = |v: Option<u64>, max: Duration| v.is_none_or(|s| s >= 1 && s <= max.as_secs());
        if !within(self.expires_in, MAX_QUEUE_EXPIRY) {
            return Err(ApiError::bad_request(format!(
                "expires_in must be 1 to {} seconds",
                MAX_QUEUE_EXPIRY.as_secs()
            )));
        }
        if !within(self.timeout, MAX_TIMEOUT) {
            return Err(ApiError::bad_request(format!(
                "timeout must be 1 to {} seconds",
                MAX_TIMEOUT.as_secs()
            )));
        }
        Ok(())
    }

    fn parse(spec: &Value) -> Result<BulkSpec, ApiError> {
        serde_json::from_value(spec.clone())
            .map_err(|e| ApiError::bad_request(format!("bulk operation: {e}")))
    }
}

/// `params` for one host: `{{host.name}}` and `{{host.id}}` in every string replaced.
pub fn for_host(params: &Value, host_name: &str, host_id: &str) -> Value {
    match params {
        Value::String(s) if s.contains("{{host.") => Value::String(
            s.replace("{{host.name}}", host_name)
                .replace("{{host.id}}", host_id),
        ),
        Value::Array(a) => {
            Value::Array(a.iter().map(|v| for_host(v, host_name, host_id)).collect())
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), for_host(v, host_name, host_id)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Builds bulk jobs.
#[derive(Debug, Clone)]
pub struct BulkKind {
    pub commands: Commands,
    pub fleet: Fleet,
}

impl JobKind for BulkKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn check(&self, who: &Principal, spec: &Value) -> Result<(), ApiError> {
        BulkSpec::parse(spec)?.check(who)
    }

    fn build(&self, id: &str, spec: &Value) -> Result<Arc<dyn Job>, String> {
        let spec = BulkSpec::parse(spec).map_err(|e| e.body.message)?;
        Ok(Arc::new(BulkJob {
            id: id.to_string(),
            spec,
            commands: self.commands.clone(),
            fleet: self.fleet.clone(),
        }))
    }
}

struct BulkJob {
    id: String,
    spec: BulkSpec,
    commands: Commands,
    fleet: Fleet,
}

/// A target that ends with an error.
fn end_with(state: TargetState, e: ErrorBody) -> TargetEnd {
    TargetEnd {
        state,
        result: Some(reply::encode(&Err(e))),
    }
}

fn offline_error() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::AgentOffline,
        "the host is offline and the bulk operation does not queue (queue_offline is false)",
    )
}

impl Job for BulkJob {
    fn run<'a>(&'a self, t: &'a mut Target) -> BoxFuture<'a, TargetEnd> {
        Box::pin(self.run_target(t))
    }
}

impl BulkJob {
    fn key(&self, host_id: &str, step: usize) -> String {
        format!("bulk:{}:{host_id}:{step}", self.id)
    }

    async fn offline(&self, host_id: &str) -> bool {
        match self.commands.store.get_host_cached(host_id).await {
            Ok(Some(h)) => self.fleet.status(&h) != HostStatus::Online,
            // A missing host fails at its submission, with the command path's error.
            _ => false,
        }
    }

    async fn run_target(&self, t: &mut Target) -> TargetEnd {
        // A resumed target goes on with the last step it started (its key replays it).
        let first = t.command_ids.len().saturating_sub(1);
        if t.command_ids.is_empty() && !self.spec.queue_offline && self.offline(&t.host_id).await {
            return end_with(TargetState::Skipped, offline_error());
        }
        let mut last = None;
        for step in first..self.spec.steps.len() {
            match self.run_step(t, step).await {
                Ok(doc) => last = Some(doc),
                Err(end) => return end,
            }
        }
        TargetEnd {
            state: TargetState::Succeeded,
            result: last,
        }
    }

    /// Runs step `step` on the target's host: its outcome document when it succeeded, else
    /// how the target ends.
    async fn run_step(&self, t: &mut Target, step: usize) -> Result<Value, TargetEnd> {
        t.unpark().await;
        let s = &self.spec.steps[step];
        let sub = Submission {
            host_id: t.host_id.clone(),
            operation: s.operation.clone(),
            params: for_host(&s.params, &t.host_name, &t.host_id),
            queue: true,
            expires_in: self.spec.expires_in.map(Duration::from_secs),
            idempotency_key: Some(self.key(&t.host_id, step)),
            timeout: self.spec.timeout.map(Duration::from_secs),
            origin: Some(format!("bulk:{}", self.id)),
        };
        let reply = match self.commands.submit(&t.owner, sub).await {
            Ok(r) => r,
            Err(e) => return Err(end_with(TargetState::Failed, e.body)),
        };
        t.record_command(step, &reply.command_id).await;
        let reply = if reply.state.is_final() {
            reply
        } else {
            self.wait(t, step, reply).await?
        };
        let outcome = reply.outcome.unwrap_or_else(|| {
            Err(ErrorBody::internal(
                "the command finished without an outcome",
            ))
        });
        let doc = reply::encode(&outcome);
        match reply.state {
            CommandState::Succeeded => Ok(doc),
            CommandState::Cancelled => Err(TargetEnd {
                state: TargetState::Cancelled,
                result: Some(doc),
            }),
            _ => Err(TargetEnd {
                state: TargetState::Failed,
                result: Some(doc),
            }),
        }
    }

    /// Waits for the step's command to finish, parked while it is queued. Withdraws it when
    /// the host is offline and nothing may queue, or when the rollout stops before it was
    /// sent.
    async fn wait(&self, t: &mut Target, step: usize, reply: Reply) -> Result<Reply, TargetEnd> {
        let id = reply.command_id.clone();
        if reply.state == CommandState::Queued {
            if !self.spec.queue_offline {
                let why = "the host is offline and the bulk operation does not queue";
                if let Ok(true) = self.commands.cancel(&t.owner, &id, why).await {
                    let state = if step == 0 {
                        TargetState::Skipped
                    } else {
                        TargetState::Failed
                    };
                    return Err(end_with(state, offline_error()));
                }
            } else {
                t.park().await;
            }
        }
        let mut withdraw_tried = false;
        let mut errors = 0;
        loop {
            tokio::select! {
                r = self.commands.wait(&id, WAIT) => match r {
                    Ok(r) if r.state.is_final() => return Ok(r),
                    Ok(_) => {}
                    Err(e) if e.body.code == ErrorCode::Internal && errors < 60 => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(end_with(TargetState::Failed, e.body)),
                },
                _ = t.stopping(), if !withdraw_tried => {
                    withdraw_tried = true;
                    if let Ok(true) = self.commands.cancel(&t.owner, &id, "its rollout stopped").await {
                        let e = ErrorBody::new(ErrorCode::Conflict, "cancelled before it was sent: the rollout stopped");
                        return Err(end_with(TargetState::Cancelled, e));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_name_their_host() {
        let p = json!({ "name": "web-{{host.name}}", "labels": { "h": "{{host.id}}" },
            "cmd": ["echo", "{{host.name}}", "{{other}}"], "tty": true });
        assert_eq!(
            for_host(&p, "edge-1", "id-1"),
            json!({ "name": "web-edge-1", "labels": { "h": "id-1" },
                "cmd": ["echo", "edge-1", "{{other}}"], "tty": true })
        );
    }
}
