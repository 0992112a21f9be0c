//! Delivery of queued commands (`"queue": true`) to a host's agent.
//!
//! One deliverer task per host at a time. It runs when an agent of the host authenticates
//! and when a command is queued while an agent is online. It takes the host's queued rows
//! in creation order and, for each: expires it when its expiry passed (never sent), else
//! marks it `sent`, sends it with its idempotency key, waits for the answer and stores it
//! (`succeeded` / `failed`). One command at a time, so the agent sees them in order. When
//! the link drops, the row stays `sent` and is sent again, with the same key, on the next
//! connection (the agent answers a repeated key from its memory instead of running it again).

use protocol::{CommandPayload, Envelope, ErrorBody, ErrorCode, Message, Operation};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{check_capability, AgentManager};
use crate::store::{now_ms, CommandRecord};

/// Extra time the deliverer gives an agent beyond the command's own timeout.
const GRACE: Duration = Duration::from_secs(5);

impl AgentManager {
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
        let mgr = self.clone();
        let host = host_id.to_string();
        tokio::spawn(async move {
            mgr.deliver_queue(&host).await;
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
        let store = &self.inner.store;
        // Commands that got no answer in this run (the agent is slow or old): not again now.
        let mut attempted: HashSet<String> = HashSet::new();
        let mut db_failures = 0u32;
        loop {
            if self.is_shutting_down() {
                self.deliverer_done(host_id);
                return;
            }
            let rows = match store
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
                self.expire(&row).await;
                continue;
            }
            let Some(session) = self.session_for_host(host_id, row.agent_ref.as_deref()) else {
                self.deliverer_done(host_id);
                return;
            };
            match self.deliver_one(&session, &row).await {
                Delivered::Done => {}
                Delivered::NoAnswer => {
                    attempted.insert(row.id.clone());
                }
                Delivered::LinkDropped => {}
            }
        }
    }

    async fn expire(&self, row: &CommandRecord) {
        let store = &self.inner.store;
        let err = if row.state.as_deref() == Some("queued") {
            let _ = store.expire_command(&row.id).await;
            ErrorBody::new(
                ErrorCode::Timeout,
                "the command expired before the agent could run it",
            )
        } else {
            let msg = "the command expired after it was sent and no answer arrived; it may or may not have run";
            let _ = store.command_outcome_unknown(&row.id, msg).await;
            ErrorBody::new(ErrorCode::OutcomeUnknown, msg)
        };
        self.notify_watchers(&row.id, Err(err));
        tracing::info!(command = %row.id, "queued command expired");
    }

    /// Hands `result` to whoever waits for `id` (no host check: the server itself decided).
    fn notify_watchers(&self, id: &str, result: Result<Value, ErrorBody>) {
        let ws = self.watchers().remove(id);
        for w in ws.into_iter().flatten() {
            let _ = w.tx.send(result.clone());
        }
    }

    async fn finish(
        &self,
        row: &CommandRecord,
        session: &super::Session,
        result: Result<Value, ErrorBody>,
        took: Duration,
    ) {
        if let Err(e) = self
            .inner
            .store
            .complete_command(&row.id, &result, Some(took.as_millis() as i64))
            .await
        {
            tracing::error!(command = %row.id, error = %e, "could not store the command result");
        }
        let (outcome, code) = match &result {
            Ok(_) => ("success", None),
            Err(e) => ("error", Some(e.code.as_str())),
        };
        self.inner
            .metrics
            .command(&row.operation, code.unwrap_or("success"), took);
        self.inner
            .audit
            .agent(
                &session.agent_id,
                &format!("command.{}", row.operation),
                row.host_id.as_deref(),
                outcome,
                code,
                Some(
                    json!({ "command_id": row.id, "queued": true, "requested_by": row.requested_by,
                    "attempts": row.attempts + 1, "duration_ms": took.as_millis() as u64 }),
                ),
                None,
            )
            .await;
        self.notify_watchers(&row.id, result);
    }

    async fn deliver_one(
        &self,
        session: &std::sync::Arc<super::Session>,
        row: &CommandRecord,
    ) -> Delivered {
        let params: Value = match row.params_enc.as_deref() {
            None => json!({}),
            Some(enc) => match self
                .inner
                .keys
                .decrypt(enc)
                .ok()
                .and_then(|p| serde_json::from_str(p.expose()).ok())
            {
                Some(v) => v,
                None => {
                    let err =
                        ErrorBody::internal("the queued command's params cannot be decrypted");
                    self.finish(row, session, Err(err), Duration::ZERO).await;
                    return Delivered::Done;
                }
            },
        };
        match Operation::parse(&row.operation, &params) {
            Ok(op) => {
                if let Err(e) = check_capability(session, &op) {
                    self.finish(row, session, Err(e), Duration::ZERO).await;
                    return Delivered::Done;
                }
            }
            Err(e) => {
                self.finish(row, session, Err(e), Duration::ZERO).await;
                return Delivered::Done;
            }
        }
        let timeout = Duration::from_secs(row.timeout_secs.unwrap_or(300).max(1) as u64);
        let rx = self.watch(&row.id, row.host_id.as_deref());
        if let Err(e) = self
            .inner
            .store
            .mark_command_sent(&row.id, &session.agent_ref)
            .await
        {
            // Not fatal: the row stays queued and would be sent again with the same key.
            tracing::warn!(command = %row.id, error = %e, "could not mark the command sent");
        }
        let env = Envelope::new(
            row.id.clone(),
            Message::Command(CommandPayload {
                operation: row.operation.clone(),
                params,
                timeout: Some(timeout.as_secs()),
                idempotency_key: row.idempotency_key.clone().or_else(|| Some(row.id.clone())),
            }),
        );
        let started = Instant::now();
        let sent = tokio::time::timeout(GRACE, session.tx.send(env)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Delivered::LinkDropped;
        }
        tracing::debug!(command = %row.id, agent_id = %session.agent_id, "queued command sent");
        tokio::select! {
            r = rx => match r {
                Ok(result) => {
                    self.finish(row, session, result, started.elapsed()).await;
                    Delivered::Done
                }
                // Somebody else finished it (expiry) and dropped the watchers.
                Err(_) => Delivered::Done,
            },
            _ = session.ended() => Delivered::LinkDropped,
            _ = tokio::time::sleep(timeout + GRACE) => {
                tracing::warn!(command = %row.id, agent_id = %session.agent_id, "no answer to a queued command; sent again on the next connection");
                Delivered::NoAnswer
            }
        }
    }
}

enum Delivered {
    Done,
    NoAnswer,
    LinkDropped,
}
