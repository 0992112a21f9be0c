//! Delivery of queued commands to a host's agent.
//!
//! One deliverer task per host at a time, on the replica holding the host's agent only (it
//! needs the agent's live link). It runs when an agent of the host authenticates, when a
//! command is queued while an agent is online here, and when another replica queued one and
//! woke this one (`Commands::hand_off_queue`, the `queue` wake-up). It takes the host's queued rows
//! in creation order and, for each: expires it when its expiry passed (never sent), else
//! marks it `sent`, sends it with its idempotency key on the agent's link, waits for the
//! answer and finishes it (`succeeded` / `failed`). One command at a time, so the agent sees
//! them in order. When the link drops, the row stays `sent` and is sent again, with the same
//! key, on the next connection (the agent answers a repeated key from its memory instead of
//! running it again).
//!
//! Owns: the deliverer of each host. Must not: hold a session (an `AgentLink` is borrowed
//! for one command at a time).

use protocol::{ErrorBody, Operation};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

use super::{CommandRecord, CommandState, Commands, Finished};
use crate::agents::{AgentLink, Delivered, Outbound};
use crate::reply::Outcome;
use crate::store::now_ms;

/// How one queued command's delivery went.
enum Step {
    /// Finished (or cannot run): on to the next.
    Done,
    /// No answer in time: not again in this run.
    NoAnswer,
    /// The link dropped: the row stays for the next connection.
    LinkDropped,
}

impl Commands {
    /// Makes sure the queue of `host_id` is being delivered.
    pub fn kick_queue(&self, host_id: &str) {
        {
            let mut d = self
                .inner
                .deliverers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(dirty) = d.get_mut(host_id) {
                *dirty = true;
                return;
            }
            d.insert(host_id.to_string(), false);
        }
        let commands = self.clone();
        let host = host_id.to_string();
        tokio::spawn(async move {
            commands.deliver_queue(&host).await;
        });
    }

    /// Leaves the deliverer unless new work arrived since the last look.
    fn deliverer_done(&self, host_id: &str) -> bool {
        let mut d = self
            .inner
            .deliverers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if d.get(host_id) == Some(&true) {
            d.insert(host_id.to_string(), false);
            return false;
        }
        d.remove(host_id);
        true
    }

    async fn deliver_queue(&self, host_id: &str) {
        // Commands that got no answer in this run (the agent is slow or old): not again now.
        let mut attempted: HashSet<String> = HashSet::new();
        let mut db_failures = 0u32;
        loop {
            if self.agents.is_shutting_down() {
                self.deliverer_done(host_id);
                return;
            }
            let rows = match self
                .store
                .pending_commands(host_id, attempted.len() as i64 + 1)
                .await
            {
                Ok(r) => {
                    db_failures = 0;
                    r
                }
                Err(e) => {
                    db_failures += 1;
                    tracing::warn!(host = host_id, error = %e, "reading the command queue failed");
                    if db_failures >= 30 {
                        // Given up for now; the next connection or queued command kicks again.
                        self.deliverer_done(host_id);
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(row) = rows.into_iter().find(|r| !attempted.contains(&r.id)) else {
                if self.deliverer_done(host_id) {
                    return;
                }
                attempted.clear();
                continue;
            };
            if row.expires_at.is_some_and(|e| e < now_ms()) {
                self.expire(&row.id, row.host_id.clone(), row.origin.clone(), row.state)
                    .await;
                tracing::info!(command = %row.id, "queued command expired");
                continue;
            }
            if self.waits_for_approval(host_id).await {
                // Nothing reaches a host waiting for approval; approving it kicks the queue.
                self.deliverer_done(host_id);
                return;
            }
            let Some(link) = self.agents.link_for_host(host_id, row.agent_ref.as_deref()) else {
                self.deliverer_done(host_id);
                return;
            };
            match self.deliver_one(&link, &row).await {
                Step::Done | Step::LinkDropped => {}
                Step::NoAnswer => {
                    attempted.insert(row.id.clone());
                }
            }
        }
    }

    /// Whether the host waits for an admin's approval (an unreadable host counts as waiting:
    /// the next connection or queued command tries again).
    async fn waits_for_approval(&self, host_id: &str) -> bool {
        match self.store.get_host_cached(host_id).await {
            Ok(Some(h)) => h.is_pending(),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// The operation of a queued row, or why it cannot run on this agent.
    fn operation_of(
        &self,
        link: &AgentLink,
        row: &CommandRecord,
    ) -> Result<(Operation, Value), ErrorBody> {
        let params: Value = match row.params_enc.as_deref() {
            None => json!({}),
            Some(enc) => self
                .keys
                .decrypt(enc)
                .ok()
                .and_then(|p| serde_json::from_str(p.expose()).ok())
                .ok_or_else(|| {
                    ErrorBody::internal("the queued command's params cannot be decrypted")
                })?,
        };
        let op = Operation::parse(&row.operation, &params)?;
        link.check(&op)?;
        Ok((op, params))
    }

    async fn deliver_one(&self, link: &AgentLink, row: &CommandRecord) -> Step {
        let params = match self.operation_of(link, row) {
            Ok((_, params)) => params,
            Err(e) => {
                self.delivered(row, link, Err(e), Duration::ZERO).await;
                return Step::Done;
            }
        };
        let timeout = Duration::from_secs(row.timeout_secs.unwrap_or(300).max(1) as u64);
        match self
            .store
            .mark_command_sent(&row.id, link.agent_ref())
            .await
        {
            Ok(true) => {}
            // Expired or cancelled since it was read: it must not go out.
            Ok(false) => return Step::Done,
            // Not fatal: the row stays queued and would be sent again with the same key.
            Err(e) => {
                tracing::warn!(command = %row.id, error = %e, "could not mark the command sent")
            }
        }
        let key = row.idempotency_key.as_deref().unwrap_or(&row.id);
        let sent = link
            .send(Outbound {
                id: &row.id,
                operation: &row.operation,
                params,
                idempotency_key: key,
                timeout,
            })
            .await;
        match sent {
            Delivered::Answered { outcome, took } => {
                self.delivered(row, link, outcome, took).await;
                Step::Done
            }
            Delivered::NoAnswer => Step::NoAnswer,
            Delivered::LinkDropped => Step::LinkDropped,
        }
    }

    /// A queued command's outcome: history, metrics, the agent's audit entry, waiters.
    async fn delivered(
        &self,
        row: &CommandRecord,
        link: &AgentLink,
        outcome: Outcome,
        took: Duration,
    ) {
        let fin = Finished::of(row, CommandState::of(&outcome));
        self.finish(fin, &outcome, Some(took.as_millis() as i64))
            .await;
        if self.cluster.has_peers() {
            // Its submitter (or a stack, or a bulk run) may wait on another replica.
            self.cluster
                .notifier()
                .send(crate::cluster::WakeUp::CommandDone {
                    commands: vec![row.id.clone()],
                });
        }
        let code = outcome.as_ref().err().map(|e| e.code.as_str());
        self.metrics
            .command(&row.operation, code.unwrap_or("success"), took);
        let status = if outcome.is_ok() { "success" } else { "error" };
        let mut detail = json!({ "command_id": row.id, "queued": true, "requested_by": row.requested_by,
            "attempts": row.attempts + 1, "duration_ms": took.as_millis() as u64 });
        if let Some(o) = &row.origin {
            detail["origin"] = json!(o);
        }
        let action = format!("command.{}", row.operation);
        let host = row.host_id.as_deref();
        self.audit
            .agent(
                link.agent_id(),
                &action,
                host,
                status,
                code,
                Some(detail),
                None,
            )
            .await;
    }
}
