//! Read-only views: `GET /api/v1/audit`, `GET /api/v1/hosts/{id}/events`,
//! `GET /api/v1/commands/{id}`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_time, ts};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{AuditFilter, Role};
use crate::AppState;

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
    let host = super::hosts::load(&state, &id).await?;
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

pub async fn command(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let c = state
        .store
        .get_command(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("command not found"))?;
    Ok(Json(json!({
        "id": c.id, "host_id": c.host_id, "agent_id": c.agent_id, "operation": c.operation,
        "requested_by": c.requested_by, "status": c.status, "error_code": c.error_code,
        "created_at": ts(Some(c.created_at)), "completed_at": ts(c.completed_at), "duration_ms": c.duration_ms,
    })))
}
