//! Read-only views: `GET /api/v1/audit`, `GET /api/v1/hosts/{id}/events`,
//! `GET /api/v1/commands/{id}`, `GET /api/v1/hosts/{id}/commands`, `GET /api/v1/audit/verify`.
//!
//! Owns: these views' shapes (a command's result only for roles that could run it). Must not:
//! change a command (expiry on read goes through `commands`).

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use super::{parse_time, ts};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{AuditFilter, CommandRecord, CommandState, Role};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    actor_kind: Option<String>,
    host_id: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before_seq: Option<i64>,
    limit: Option<i64>,
}

pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let Query(q) = q?;
    let time = |s: &Option<String>, name: &str| -> ApiResult<Option<i64>> {
        match s {
            None => Ok(None),
            Some(s) => parse_time(s).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!("{name} must be RFC 3339 or Unix milliseconds"))
            }),
        }
    };
    let filter = AuditFilter {
        actor: q.actor,
        actor_kind: q.actor_kind,
        host_id: q.host_id,
        action: q.action,
        outcome: q.outcome,
        since: time(&q.since, "since")?,
        until: time(&q.until, "until")?,
        before_seq: q.before_seq,
        limit: q.limit.unwrap_or(100),
    };
    let entries = state.store.list_audit(&filter).await?;
    let items: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            json!({
                "seq": e.seq, "at": ts(Some(e.at)), "actor_kind": e.actor_kind, "actor": e.actor,
                "host_id": e.host_id, "action": e.action, "target": e.target, "outcome": e.outcome,
                "error_code": e.error_code, "detail": e.detail, "source_ip": e.source_ip,
            })
        })
        .collect();
    Ok(Json(json!({ "entries": items })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a larger sequence number (for polling).
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn host_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let host = super::lookup::host(&state, &id).await?;
    let events = state
        .store
        .list_docker_events(
            &host.id,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(100).clamp(1, 1000),
        )
        .await?;
    let items: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "seq": e.seq, "host_id": e.host_id, "agent_id": e.agent_id, "kind": e.kind, "action": e.action,
                "actor_id": e.actor_id, "attributes": e.attributes, "time_nano": e.time_nano,
                "received_at": ts(Some(e.created_at)),
            })
        })
        .collect();
    Ok(Json(json!({ "events": items })))
}

/// A command as the API shows it. The result is shown to callers whose role could have run
/// the operation.
fn command_json(c: &CommandRecord, caller: &Caller) -> Value {
    let needed = crate::auth::role_for(protocol::ops::access_of(&c.operation));
    let (result, error) = match c.outcome() {
        Some(Ok(data)) if caller.role >= needed => (data, Value::Null),
        Some(Ok(_)) => (Value::Null, Value::Null),
        Some(Err(e)) => (Value::Null, serde_json::to_value(e).unwrap_or_default()),
        None => (Value::Null, Value::Null),
    };
    json!({
        "id": c.id, "command_id": c.id, "host_id": c.host_id, "agent_id": c.agent_id, "operation": c.operation,
        "requested_by": c.requested_by, "created_by": c.requested_by, "state": c.state, "status": c.status,
        "error_code": c.error_code, "result": result, "error": error, "queued": c.queued,
        "idempotency_key": c.idempotency_key, "attempts": c.attempts,
        "created_at": ts(Some(c.created_at)), "sent_at": ts(c.sent_at), "completed_at": ts(c.completed_at),
        "expires_at": ts(c.expires_at), "updated_at": ts(c.updated_at), "duration_ms": c.duration_ms,
        "origin": c.origin,
    })
}

pub async fn command(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let c = state
        .commands
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("command not found"))?;
    Ok(Json(command_json(&c, &caller)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsQuery {
    state: Option<String>,
    limit: Option<i64>,
}

pub async fn host_commands(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<CommandsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let wanted = match q.state.as_deref() {
        None => None,
        Some(s) => Some(CommandState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = CommandState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(format!("state must be one of {}", all.join(", ")))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let host = super::lookup::host(&state, &id).await?;
    let rows = state
        .commands
        .list_for_host(&host.id, wanted, limit)
        .await?;
    let items: Vec<Value> = rows.iter().map(|c| command_json(c, &caller)).collect();
    Ok(Json(json!({ "commands": items })))
}

/// `GET /api/v1/audit/verify` (admin): walks the audit chain.
pub async fn audit_verify(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let r = state.store.verify_audit_chain().await?;
    Ok(Json(json!({
        "ok": r.ok(), "verified": r.verified, "unchained": r.unchained, "changed": r.changed,
        "deleted": r.deleted, "problems": r.problems, "head_seq": r.head_seq, "head_hash": r.head_hash,
    })))
}
