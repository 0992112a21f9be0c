//! `POST /api/v1/hosts/{id}/operations`: run a catalog operation on a host, through its
//! agent or directly, and answer `{"status":"success","data":..}` or
//! `{"status":"error","error":{"code","message"}}` with the code's HTTP status.
//!
//! Every operation gets a `commands` row and an idempotency key (the client's
//! `idempotency_key`, or a generated one) that travels with the command to the agent. A
//! second request with the same key for the same host returns the first one's command and
//! result instead of running again. With `"queue": true` a command for an agent that is
//! offline is kept (202) and delivered, in order, when the agent connects.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::ops::{access_of, Access};
use protocol::{ErrorBody, ErrorCode, Operation};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use crate::agents::CommandSpec;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{
    now_ms, CommandRecord, ConnectionMode, Host, NewQueuedCommand, Role, StoreError,
};
use crate::AppState;

/// Default and largest `expires_in` of a queued command.
pub const DEFAULT_QUEUE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
pub const MAX_QUEUE_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest `timeout` a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    operation: String,
    #[serde(default)]
    params: Value,
    /// Keep the command until the host's agent is online (agent hosts).
    #[serde(default)]
    queue: bool,
    /// Seconds a queued command waits for its agent before it expires (default 24 h).
    #[serde(default)]
    expires_in: Option<u64>,
    /// The client's key: a repeated request with the same key returns the first result.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Seconds to wait for the result (default: the server's `agent.command_timeout`).
    #[serde(default)]
    timeout: Option<u64>,
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

/// The answer for a finished command (or an error), with the command id header.
fn answer(command_id: &str, result: &Result<Value, ErrorBody>, replay: bool) -> Response {
    let mut resp = match result {
        Ok(data) => (
            StatusCode::OK,
            Json(json!({ "status": "success", "data": data })),
        )
            .into_response(),
        Err(e) => {
            let code = if e.code == ErrorCode::Unknown {
                ErrorCode::Internal
            } else {
                e.code
            };
            let http = StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (http, Json(json!({ "status": "error", "error": e }))).into_response()
        }
    };
    if let Ok(v) = command_id.parse() {
        resp.headers_mut().insert("x-command-id", v);
    }
    if replay {
        resp.headers_mut().insert(
            "x-idempotent-replay",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    resp
}

/// 202: the command waits in the queue (or is still running).
fn accepted(c: &CommandRecord) -> Response {
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(json!({
            "command_id": c.id,
            "state": c.state.clone().unwrap_or_else(|| "queued".into()),
            "expires_at": super::ts(c.expires_at),
        })),
    )
        .into_response();
    if let Ok(v) = c.id.parse() {
        resp.headers_mut().insert("x-command-id", v);
    }
    resp
}

/// A stored result as `Result`.
pub(crate) fn stored_result(c: &CommandRecord) -> Option<Result<Value, ErrorBody>> {
    match c.result.get("status").and_then(Value::as_str) {
        Some("success") => Some(Ok(c.result.get("data").cloned().unwrap_or(Value::Null))),
        Some("error") => Some(Err(serde_json::from_value(c.result["error"].clone())
            .unwrap_or_else(|_| ErrorBody::internal("unreadable stored error")))),
        _ => None,
    }
}

fn is_open(c: &CommandRecord) -> bool {
    matches!(c.state.as_deref(), Some("queued") | Some("sent"))
}

/// A repeated idempotency key: the first command's result, or its state while it runs.
async fn replay(
    state: &AppState,
    host: &Host,
    existing: CommandRecord,
    operation: &str,
    timeout: Duration,
) -> ApiResult<Response> {
    if existing.operation != operation {
        return Err(ApiError::conflict(format!(
            "idempotency_key was already used for {} (command {})",
            existing.operation, existing.id
        )));
    }
    if is_open(&existing) {
        if state
            .agents
            .online_agent_for_host(&host.id, host.agent_ref.as_deref())
            .is_none()
        {
            return Ok(accepted(&existing));
        }
        let rx = state.agents.watch(&existing.id, Some(&host.id));
        // It may have finished between the lookup and the watch.
        if let Some(now) = state.store.get_command(&existing.id).await? {
            if let Some(r) = stored_result(&now).filter(|_| !is_open(&now)) {
                return Ok(answer(&now.id, &r, true));
            }
        }
        return Ok(match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => answer(&existing.id, &r, true),
            _ => {
                let now = state.store.get_command(&existing.id).await?;
                match now {
                    Some(c) if !is_open(&c) => match stored_result(&c) {
                        Some(r) => answer(&c.id, &r, true),
                        None => accepted(&c),
                    },
                    Some(c) => accepted(&c),
                    None => accepted(&existing),
                }
            }
        });
    }
    match stored_result(&existing) {
        Some(r) => Ok(answer(&existing.id, &r, true)),
        None => Err(ApiError::conflict(format!(
            "idempotency_key was already used (command {}, {})",
            existing.id, existing.status
        ))),
    }
}

pub async fn run(
    State(state): State<AppState>,
    caller: Caller,
    Path(host_id): Path<String>,
    body: Result<Json<OperationRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let name = req.operation.as_str();
    let action = format!("operation.{name}");
    let needed = match access_of(name) {
        Access::Read => Role::Viewer,
        Access::Write => Role::Operator,
    };
    if let Err(e) = caller.require(needed) {
        state
            .audit
            .user(
                &caller,
                &action,
                Some(&host_id),
                target_of(&req.params).as_deref(),
                "denied",
                Some("forbidden"),
                None,
            )
            .await;
        return Err(e);
    }
    let host = super::hosts::load_cached(&state, &host_id).await?;
    let op = Operation::parse(name, &req.params).map_err(ApiError::from)?;
    let timeout = match req.timeout {
        None => state.config.agent.command_timeout.get(),
        Some(s) if (1..=MAX_TIMEOUT.as_secs()).contains(&s) => Duration::from_secs(s),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "timeout must be 1 to {} seconds",
                MAX_TIMEOUT.as_secs()
            )))
        }
    };
    let expires_in = match req.expires_in {
        None => DEFAULT_QUEUE_EXPIRY,
        Some(s) if (1..=MAX_QUEUE_EXPIRY.as_secs()).contains(&s) => Duration::from_secs(s),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "expires_in must be 1 to {} seconds",
                MAX_QUEUE_EXPIRY.as_secs()
            )))
        }
    };
    if let Some(k) = &req.idempotency_key {
        check_key(k)?;
        if let Some(existing) = state.store.find_command_by_key(&host.id, k).await? {
            return replay(&state, &host, existing, op.name(), timeout).await;
        }
    }
    let agent_mode = host.connection_mode == ConnectionMode::Agent;
    let adapter = state.adapters.for_host(&host).map_err(ApiError::from)?;
    let agent_ref = if agent_mode {
        state
            .agents
            .online_agent_for_host(&host.id, host.agent_ref.as_deref())
            .or_else(|| host.agent_ref.clone())
    } else {
        None
    };
    let queued = req.queue && agent_mode;
    let command_id = uuid::Uuid::new_v4().to_string();
    let key = req
        .idempotency_key
        .clone()
        .unwrap_or_else(|| command_id.clone());
    let params_enc = if queued {
        let text = op.params().to_string();
        Some(state.keys.encrypt(&text).map_err(ApiError::internal)?)
    } else {
        None
    };
    let record = NewQueuedCommand {
        id: command_id.clone(),
        host_id: host.id.clone(),
        agent_id: host.agent_id.clone().filter(|_| agent_mode),
        agent_ref: agent_ref.clone(),
        operation: op.name().to_string(),
        params_enc,
        requested_by: caller.user.clone(),
        queued,
        timeout_secs: timeout.as_secs() as i64,
        expires_at: now_ms() + if queued { expires_in } else { timeout }.as_millis() as i64,
        idempotency_key: key.clone(),
        client_key: req.idempotency_key.is_some(),
    };
    // A direct command without a client key is recorded behind the request (the store's
    // command journal): nothing waits for it, and nothing needs its row to exist first.
    let journaled =
        !queued && req.idempotency_key.is_none() && (!agent_mode || agent_ref.is_some());
    let recorded = if journaled {
        let sent_to = agent_ref.clone().unwrap_or_else(|| "direct".into());
        state.store.journal_command_sent(record, &sent_to);
        None
    } else {
        match state.store.create_command(&record).await {
            Ok(c) => Some(c),
            Err(StoreError::Conflict(_)) => {
                // A concurrent request with the same key won the race.
                if let Some(existing) = state.store.find_command_by_key(&host.id, &key).await? {
                    return replay(&state, &host, existing, op.name(), timeout).await;
                }
                return Err(ApiError::conflict("idempotency_key already in use"));
            }
            // Without the database nothing can be queued; a direct command still runs.
            Err(e) if queued => return Err(e.into()),
            Err(e) => {
                tracing::error!(error = %e, "could not record command");
                None
            }
        }
    };
    let target = target_of(&req.params);
    let started = Instant::now();

    if queued {
        let online = state
            .agents
            .online_agent_for_host(&host.id, host.agent_ref.as_deref())
            .is_some();
        let row = recorded.ok_or_else(|| ApiError::internal(anyhow::anyhow!("no command row")))?;
        let detail = json!({ "command_id": command_id, "via": "agent", "queued": true,
            "idempotency_key_from_client": req.idempotency_key.is_some() });
        state
            .audit
            .user(
                &caller,
                &action,
                Some(&host.id),
                target.as_deref(),
                "queued",
                None,
                Some(detail),
            )
            .await;
        if !online {
            tracing::info!(host = %host.id, operation = op.name(), command = %command_id, "operation queued for an offline agent");
            return Ok(accepted(&row));
        }
        // Online: it goes through the queue (behind older queued commands) and we wait.
        let rx = state.agents.watch(&command_id, Some(&host.id));
        state.agents.kick_queue(&host.id);
        return Ok(match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => {
                let _ = state
                    .store
                    .complete_command(
                        &command_id,
                        &result,
                        Some(started.elapsed().as_millis() as i64),
                    )
                    .await;
                answer(&command_id, &result, false)
            }
            _ => {
                let now = state.store.get_command(&command_id).await?.unwrap_or(row);
                match now.state.as_deref() {
                    Some("sent") => {
                        let e = ErrorBody::new(
                            ErrorCode::OutcomeUnknown,
                            "the command was sent but no answer arrived in time; it stays queued and is sent \
                             again (same idempotency key) when the agent reconnects: poll GET /api/v1/commands/{id}",
                        )
                        .with_details(json!({ "command_id": command_id, "state": "sent" }));
                        answer(&command_id, &Err(e), false)
                    }
                    _ if !is_open(&now) => match stored_result(&now) {
                        Some(r) => answer(&command_id, &r, false),
                        None => accepted(&now),
                    },
                    _ => accepted(&now),
                }
            }
        });
    }

    if journaled {
        // Recorded as sent already.
    } else if let Some(r) = &agent_ref {
        let _ = state.store.mark_command_sent(&command_id, r).await;
    } else if !agent_mode {
        let _ = state.store.mark_command_sent(&command_id, "direct").await;
    }
    let result: Result<Value, ErrorBody> = match (agent_mode, &agent_ref) {
        (true, Some(a)) => {
            let spec = CommandSpec {
                id: command_id.clone(),
                idempotency_key: key,
                host_id: Some(host.id.clone()),
                timeout,
            };
            state.agents.run(a, &op, &spec).await
        }
        (true, None) => Err(ErrorBody::new(
            ErrorCode::AgentOffline,
            "the host has no agent: enrol one with POST /api/v1/agents",
        )),
        (false, _) => adapter.execute(&op, timeout).await,
    };
    let took = started.elapsed();
    let outcome = match &result {
        Ok(_) => "success".to_string(),
        Err(e) => e.code.as_str().to_string(),
    };
    state.metrics.command(op.name(), &outcome, took);
    let (status, code) = match &result {
        Ok(_) => ("success", None),
        Err(e) => ("error", Some(e.code.as_str())),
    };
    let stored = match &result {
        r if journaled => {
            state
                .store
                .journal_command_finished(&command_id, r, Some(took.as_millis() as i64));
            Ok(true)
        }
        Err(e) if e.code == ErrorCode::OutcomeUnknown => {
            state
                .store
                .command_outcome_unknown(&command_id, &e.message)
                .await
        }
        r => {
            state
                .store
                .complete_command(&command_id, r, Some(took.as_millis() as i64))
                .await
        }
    };
    if let Err(e) = stored {
        tracing::error!(error = %e, "could not record command result");
    }
    let detail = json!({ "command_id": command_id, "via": super::hosts::adapter_kind(adapter.as_ref()), "duration_ms": took.as_millis() as u64 });
    let entry = crate::audit::Auditor::user_entry(
        &caller,
        &action,
        Some(&host.id),
        target.as_deref(),
        status,
        code,
        Some(detail),
    );
    if access_of(op.name()) == Access::Read {
        // A read's audit entry joins the next group commit without holding up the answer;
        // a change is answered only once its entry is committed.
        state.audit.record_background(entry);
    } else {
        state.audit.record(entry).await;
    }
    tracing::info!(host = %host.id, operation = op.name(), outcome = %outcome, ms = took.as_millis() as u64, "operation");
    Ok(answer(&command_id, &result, false))
}
