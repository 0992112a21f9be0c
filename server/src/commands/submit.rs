//! Submitting a command: authority, validation, idempotency, the history row, then sending
//! it now or queueing it.
//!
//! Every command gets a history row and an idempotency key (the caller's, or its id) that
//! travels with it to the agent. A second submission with the same key for the same host
//! answers with the first one's command and result instead of running again. A queued
//! command for a host that cannot take it now waits (for its agent) and is delivered, in
//! order, when the agent connects. A command sent now without a caller's key is recorded
//! behind the request (the store's journal): nothing waits for its row to exist first.
//!
//! Owns: the steps of a submission, in order. Must not: answer HTTP.

use protocol::ops::access_of;
use protocol::{ErrorBody, ErrorCode, Operation};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CommandRecord, CommandState, Commands, Finished, Principal, Reply};
use crate::auth::role_for;
use crate::error::{ApiError, ApiResult};
use crate::hosts::{host_not_found, Call, HostAdapter, Route};
use crate::reply::Outcome;
use crate::store::{now_ms, Host, NewCommand, StoreError};

/// Default and largest `expires_in` of a queued command.
pub const DEFAULT_QUEUE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
pub const MAX_QUEUE_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest `timeout` a submission may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A command to run on a host, as a caller asks for it. `Debug` leaves the params out (they
/// may hold environment values).
#[derive(Clone, Default, PartialEq)]
pub struct Submission {
    pub host_id: String,
    /// A catalog operation name, e.g. `container.list`.
    pub operation: String,
    pub params: Value,
    /// Keep the command until the host can take it (hosts whose agent dials in).
    pub queue: bool,
    /// How long a queued command waits before it expires (default 24 h, at most 7 days).
    pub expires_in: Option<Duration>,
    /// The caller's key: a repeated submission with the same key answers with the first
    /// command's result. 1 to 200 characters without control characters.
    pub idempotency_key: Option<String>,
    /// How long to wait for the result (default: the server's `agent.command_timeout`;
    /// 1 s to 1 h).
    pub timeout: Option<Duration>,
    /// What started the command besides its requester, e.g. `bulk:ID`: stored with it, in
    /// its audit entry and in its [`super::Finished`] event.
    pub origin: Option<String>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("host_id", &self.host_id)
            .field("operation", &self.operation)
            .field("queue", &self.queue)
            .field("idempotency_key", &self.idempotency_key)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// A submission on its way, after validation.
struct Flight<'a> {
    who: &'a Principal,
    host: Host,
    op: Operation,
    adapter: Arc<dyn HostAdapter>,
    route: Route,
    id: String,
    key: String,
    client_key: bool,
    timeout: Duration,
    expires_at: i64,
    origin: Option<String>,
    /// `operation.NAME`, the audit's action.
    action: String,
    /// The object the operation targets, for the audit.
    target: Option<String>,
}

/// The object an operation targets, for the audit log (never the whole params).
fn target_of(params: &Value) -> Option<String> {
    ["id", "name", "image"]
        .iter()
        .find_map(|k| params.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

fn check_key(key: &str) -> ApiResult<()> {
    if key.is_empty() || key.len() > 200 || key.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(
            "idempotency_key must be 1 to 200 characters without control characters",
        ));
    }
    Ok(())
}

/// `value` (or `default`) when it lies within 1 s and `max`.
fn bounded(
    value: Option<Duration>,
    default: Duration,
    max: Duration,
    name: &str,
) -> ApiResult<Duration> {
    match value {
        None => Ok(default),
        Some(d) if d >= Duration::from_secs(1) && d <= max => Ok(d),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be 1 to {} seconds",
            max.as_secs()
        ))),
    }
}

impl Commands {
    /// Submits a command for `who`. The reply holds the outcome when the command finished
    /// (or, for a repeated key, the first command's), else its state (queued or running).
    ///
    /// Errors (no command was recorded): `forbidden` (the operation needs a higher role;
    /// audited as denied), `not_found` (host), `invalid_params` (operation, parameters,
    /// limits, key), `unsupported` (agent mode disabled), `conflict` (the key was used for
    /// another operation, or for a command without a result), `internal` (a queued command
    /// could not be stored).
    pub async fn submit(&self, who: &Principal, sub: Submission) -> Result<Reply, ApiError> {
        let action = format!("operation.{}", sub.operation);
        let target = target_of(&sub.params);
        if let Err(e) = who.require(role_for(access_of(&sub.operation))) {
            let (host, target) = (Some(sub.host_id.as_str()), target.as_deref());
            self.audit
                .user(
                    who,
                    &action,
                    host,
                    target,
                    "denied",
                    Some("forbidden"),
                    None,
                )
                .await;
            return Err(e);
        }
        let host = self
            .store
            .get_host_cached(&sub.host_id)
            .await?
            .ok_or_else(|| host_not_found(&sub.host_id))?;
        let op = Operation::parse(&sub.operation, &sub.params)?;
        let timeout = bounded(sub.timeout, self.default_timeout, MAX_TIMEOUT, "timeout")?;
        let expires_in = bounded(
            sub.expires_in,
            DEFAULT_QUEUE_EXPIRY,
            MAX_QUEUE_EXPIRY,
            "expires_in",
        )?;
        if let Some(k) = &sub.idempotency_key {
            check_key(k)?;
            if let Some(existing) = self.store.find_command_by_key(&host.id, k).await? {
                return self.replay(&host, existing, op.name(), timeout).await;
            }
        }
        let adapter = self.adapters.for_host(&host)?;
        let route = adapter.route();
        let queued = sub.queue && route.queueable;
        let id = uuid::Uuid::new_v4().to_string();
        let f = Flight {
            who,
            key: sub.idempotency_key.clone().unwrap_or_else(|| id.clone()),
            client_key: sub.idempotency_key.is_some(),
            expires_at: now_ms() + if queued { expires_in } else { timeout }.as_millis() as i64,
            host,
            op,
            adapter,
            route,
            id,
            timeout,
            origin: sub.origin,
            action,
            target,
        };
        if queued {
            return self.enqueue(f).await;
        }
        self.send_now(f).await
    }

    /// The history row of `f`.
    fn record_of(&self, f: &Flight<'_>, params_enc: Option<String>) -> NewCommand {
        NewCommand {
            id: f.id.clone(),
            host_id: f.host.id.clone(),
            agent_id: f.route.agent_id.clone(),
            agent_ref: f.route.target.clone(),
            operation: f.op.name().to_string(),
            params_enc,
            requested_by: f.who.user.clone(),
            queued: false,
            timeout_secs: f.timeout.as_secs() as i64,
            expires_at: f.expires_at,
            idempotency_key: f.key.clone(),
            client_key: f.client_key,
            origin: f.origin.clone(),
        }
    }

    /// Records `row`; a concurrent submission with the same key that won the race is
    /// replayed (`Err(Ok(reply))`).
    async fn create(
        &self,
        f: &Flight<'_>,
        row: &NewCommand,
    ) -> Result<CommandRecord, Result<Reply, ApiError>> {
        match self.store.create_command(row).await {
            Ok(c) => Ok(c),
            Err(StoreError::Conflict(_)) => {
                match self.store.find_command_by_key(&f.host.id, &f.key).await {
                    Ok(Some(existing)) => {
                        Err(self.replay(&f.host, existing, f.op.name(), f.timeout).await)
                    }
                    Ok(None) => Err(Err(ApiError::conflict("idempotency_key already in use"))),
                    Err(e) => Err(Err(e.into())),
                }
            }
            Err(e) => Err(Err(e.into())),
        }
    }

    /// A queued command: stored (params encrypted), audited, then delivered by the queue.
    /// While the host's agent is online the submission waits for the result like any other.
    async fn enqueue(&self, f: Flight<'_>) -> Result<Reply, ApiError> {
        let params = self
            .keys
            .encrypt(&f.op.params().to_string())
            .map_err(ApiError::internal)?;
        let mut record = self.record_of(&f, Some(params));
        record.queued = true;
        // Without the database nothing can be queued.
        let row = match self.create(&f, &record).await {
            Ok(row) => row,
            Err(answer) => return answer,
        };
        let detail = json!({ "command_id": f.id, "via": f.route.via, "queued": true,
            "idempotency_key_from_client": f.client_key, "origin": f.origin });
        let (host, target) = (Some(f.host.id.as_str()), f.target.as_deref());
        self.audit
            .user(
                f.who,
                &f.action,
                host,
                target,
                "queued",
                None,
                Some(strip_nulls(detail)),
            )
            .await;
        if !f.adapter.route().online {
            // The agent may have connected (here, or to another replica) since the route was
            // read, its queue kicked before this row existed: a session seen now (after the
            // insert) gets a kick of its own, and the other replicas are woken.
            self.hand_off_queue(&f.host.id);
            tracing::info!(host = %f.host.id, operation = f.op.name(), command = %f.id, "operation queued for an offline agent");
            return Ok(Reply::of(&row, false));
        }
        // Online (here, or held by another replica, which delivers it): it goes through the
        // queue (behind older queued commands) and we wait.
        let mut waiter = self.inner.finals.watch(&f.id);
        self.hand_off_queue(&f.host.id);
        if let Ok(Some((state, outcome))) = tokio::time::timeout(f.timeout, waiter.recv()).await {
            return Ok(Reply {
                outcome: Some(outcome),
                state,
                ..Reply::of(&row, false)
            });
        }
        let now = self.store.get_command(&f.id).await?.unwrap_or(row);
        if now.state != CommandState::Sent {
            return Ok(Reply::of(&now, false));
        }
        let e = ErrorBody::new(
            ErrorCode::OutcomeUnknown,
            "the command was sent but no answer arrived in time; it stays queued and is sent \
             again (same idempotency key) when the agent reconnects: poll GET /api/v1/commands/{id}",
        )
        .with_details(json!({ "command_id": f.id, "state": CommandState::Sent }));
        Ok(Reply {
            outcome: Some(Err(e)),
            ..Reply::of(&now, false)
        })
    }

    /// A command sent now: recorded (through the journal unless the caller's key must be
    /// durable first), run through the host's adapter, and finished.
    async fn send_now(&self, f: Flight<'_>) -> Result<Reply, ApiError> {
        let record = self.record_of(&f, None);
        let journaled = !f.client_key && f.route.target.is_some();
        if journaled {
            let sent_to = f.route.target.clone().unwrap_or_default();
            self.store.journal_command_sent(record, &sent_to);
        } else {
            match self.create(&f, &record).await {
                Ok(_) => {}
                Err(Ok(replayed)) => return Ok(replayed),
                Err(Err(e)) if e.body.code == ErrorCode::Conflict => return Err(e),
                // Without the database a command sent now still runs.
                Err(Err(e)) => tracing::error!(error = ?e.source, "could not record command"),
            }
            if let Some(t) = &f.route.target {
                let _ = self.store.mark_command_sent(&f.id, t).await;
            }
        }
        let started = Instant::now();
        let call = Call {
            id: f.id.clone(),
            idempotency_key: f.key.clone(),
            timeout: f.timeout,
            caller: Some(format!("{} ({})", f.who.user, f.who.role.as_str())),
        };
        let outcome = f.adapter.run(&f.op, &call).await;
        let took = started.elapsed();
        self.finish_now(&f, journaled, &outcome, took).await;
        Ok(Reply {
            command_id: f.id,
            state: CommandState::of(&outcome),
            outcome: Some(outcome),
            expires_at: Some(f.expires_at),
            replay: false,
        })
    }

    /// A command sent now finished: metrics, history, waiters, audit.
    async fn finish_now(&self, f: &Flight<'_>, journaled: bool, outcome: &Outcome, took: Duration) {
        let code = outcome.as_ref().err().map(|e| e.code.as_str());
        self.metrics
            .command(f.op.name(), code.unwrap_or("success"), took);
        let state = CommandState::of(outcome);
        let unknown = code == Some(ErrorCode::OutcomeUnknown.as_str());
        let duration = (!unknown).then_some(took.as_millis() as i64);
        let fin = Finished {
            command_id: f.id.clone(),
            host_id: Some(f.host.id.clone()),
            state,
            origin: f.origin.clone(),
        };
        if journaled {
            self.store
                .journal_command_finished(&f.id, state, outcome, duration);
            self.inner.finals.notify(fin, outcome);
        } else {
            self.finish(fin, outcome, duration).await;
        }
        let status = if outcome.is_ok() { "success" } else { "error" };
        let detail = json!({ "command_id": f.id, "via": f.route.via,
            "duration_ms": took.as_millis() as u64, "origin": f.origin });
        let entry = crate::audit::Auditor::user_entry(
            f.who,
            &f.action,
            Some(&f.host.id),
            f.target.as_deref(),
            status,
            code,
            Some(strip_nulls(detail)),
        );
        if access_of(f.op.name()) == protocol::Access::Read {
            // A read's audit entry joins the next group commit without holding up the
            // answer; a change is answered only once its entry is committed.
            self.audit.record_background(entry);
        } else {
            self.audit.record(entry).await;
        }
        let outcome = code.unwrap_or("success");
        tracing::info!(host = %f.host.id, operation = f.op.name(), %outcome, ms = took.as_millis() as u64, "operation");
    }

    /// A repeated idempotency key: the first command's result, or its state while it runs.
    async fn replay(
        &self,
        host: &Host,
        existing: CommandRecord,
        operation: &str,
        timeout: Duration,
    ) -> Result<Reply, ApiError> {
        if existing.operation != operation {
            return Err(ApiError::conflict(format!(
                "idempotency_key was already used for {} (command {})",
                existing.operation, existing.id
            )));
        }
        if !existing.state.is_final() {
            let online = self.adapters.for_host(host).is_ok_and(|a| a.route().online);
            if !online {
                return Ok(Reply::of(&existing, true));
            }
            return self.await_final(existing, timeout, true).await;
        }
        match existing.outcome() {
            Some(_) => Ok(Reply::of(&existing, true)),
            None => Err(ApiError::conflict(format!(
                "idempotency_key was already used (command {}, {})",
                existing.id, existing.status
            ))),
        }
    }

    /// Waits up to `timeout` for `c` to reach a final state.
    pub(super) async fn await_final(
        &self,
        c: CommandRecord,
        timeout: Duration,
        replay: bool,
    ) -> Result<Reply, ApiError> {
        if c.state.is_final() {
            return Ok(Reply::of(&c, replay));
        }
        let mut waiter = self.inner.finals.watch(&c.id);
        // It may have finished between the lookup and the watch.
        let now = self.store.get_command(&c.id).await?.unwrap_or(c);
        if now.state.is_final() {
            return Ok(Reply::of(&now, replay));
        }
        if let Ok(Some((state, outcome))) = tokio::time::timeout(timeout, waiter.recv()).await {
            return Ok(Reply {
                state,
                outcome: Some(outcome),
                ..Reply::of(&now, replay)
            });
        }
        let later = self.store.get_command(&now.id).await?.unwrap_or(now);
        Ok(Reply::of(&later, replay))
    }
}

/// An audit detail without its null members (an `origin` only when there is one).
fn strip_nulls(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    v
}
