//! `/api/v1/agent-updates[/{id}[/cancel]]`: rollouts of a stored release to the agents of
//! many hosts, named by a selector, a saved group or a list of host ids. They read like bulk
//! operations (state, counts, paged rows), and each row shows its agent's update progress.
//!
//! Owns: the request and response shapes, and a row's `state` (the agent's update progress
//! when it started, else the rollout's state of the host). Must not: run anything (the
//! `rollouts` module owns the rollout, the `updates` module each agent's update) or match
//! hosts (the `fleet` module does).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

use super::caller::Caller;
use super::paging::PageQuery;
use super::rollout_pages::{self, RowsQuery};
use super::ts;
use crate::error::{ApiError, ApiResult};
use crate::reply;
use crate::rollouts::agent_update::{AgentUpdateKind, UpdateSpec, KIND};
use crate::rollouts::{Plan, Policy, RolloutRecord, TargetRecord, TargetState, MAX_TARGETS};
use crate::state::AppState;
use crate::store::{AgentUpdateRecord, Role};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUpdate {
    version: String,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    host_ids: Option<Vec<String>>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    max_parallel: Option<u32>,
    #[serde(default)]
    max_failures: Option<u32>,
}

/// The job kind that plans a rollout's targets.
fn kind(state: &AppState) -> AgentUpdateKind {
    AgentUpdateKind {
        updates: state.updates.clone(),
    }
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateUpdate>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(b) = body?;
    let targets = rollout_pages::targets_of(&b.selector, &b.host_ids, &b.group)?;
    let spec = UpdateSpec {
        version: b.version.clone(),
    };
    let spec_doc = serde_json::to_value(&spec).map_err(ApiError::internal)?;
    // Authority and the version first: nothing is read or created for a refused request.
    state.rollouts.check(&caller, KIND, &spec_doc).await?;
    let resolved = state.fleet.resolve(&targets, MAX_TARGETS).await?;
    let planned = kind(&state).targets(&resolved.hosts, &spec.version).await?;
    let summary = json!({
        "version": spec.version,
        "selector": b.selector,
        "group": resolved.group.as_ref().map(|g| json!({ "id": g.id, "name": g.name, "selector": g.selector })),
        "host_ids": b.host_ids.is_some(),
    });
    let plan = Plan {
        kind: KIND,
        summary,
        spec: spec_doc,
        targets: planned,
        policy: Policy {
            max_parallel: b.max_parallel.unwrap_or(Policy::default().max_parallel),
            max_failures: b.max_failures.unwrap_or(Policy::default().max_failures),
        },
    };
    let rec = state.rollouts.start(&caller, plan).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": rec.id, "hosts": rec.total, "state": rec.state })),
    ))
}

fn summary_json(rec: &RolloutRecord, counts: Option<&BTreeMap<TargetState, i64>>) -> Value {
    rollout_pages::summary_json(rec, counts, &["version"])
}

/// A row's progress: the agent's update once it started (unless the rollout ended the host
/// while the update had not), else `pending` until the host ends, then the host's state
/// (`failed`, `skipped`, `cancelled`).
fn progress<'a>(t: &TargetRecord, u: Option<&'a AgentUpdateRecord>) -> &'a str {
    let ended = t.state.is_final();
    match u {
        Some(u) if !ended || crate::updates::is_final(&u.state) => u.state.as_str(),
        _ if !ended => "pending",
        _ => t.state.as_str(),
    }
}

fn row_json(t: &TargetRecord, u: Option<&AgentUpdateRecord>) -> Value {
    let host_error = match reply::decode(&t.result) {
        Some(Err(e)) => Some(e),
        _ => None,
    };
    let error = u.and_then(|u| u.error.clone()).or(host_error);
    let state = progress(t, u);
    json!({
        "host_id": t.host_id,
        "host_name": t.host_name,
        "state": state,
        "host_state": t.state,
        "agent_id": u.map(|u| &u.agent_id),
        "update_id": u.map(|u| &u.id),
        "from_version": u.and_then(|u| u.from_version.as_ref()),
        "version": u.map(|u| &u.version),
        "bytes": u.and_then(|u| u.bytes),
        "error": if matches!(state, "succeeded") { None } else { error },
        "started_at": ts(t.started_at),
        "finished_at": ts(t.finished_at),
    })
}

/// The agent update rollout `id`; a rollout of another kind is not one.
async fn find(state: &AppState, id: &str) -> ApiResult<RolloutRecord> {
    rollout_pages::find(state, id, &[KIND], "agent update").await
}

pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<RowsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let rec = find(&state, &id).await?;
    let (counts, rows, next) =
        rollout_pages::rows_page(&state, &rec, &q, "agent-update-rows").await?;
    // Each started row records its update's id as its first command id.
    let ids: Vec<String> = rows
        .iter()
        .filter_map(|t| t.command_ids.first().cloned())
        .collect();
    let updates: HashMap<String, AgentUpdateRecord> = state
        .store
        .agent_updates_by_ids(&ids)
        .await?
        .into_iter()
        .map(|u| (u.id.clone(), u))
        .collect();
    let mut v = summary_json(&rec, Some(&counts));
    v["targets"] = rows
        .iter()
        .map(|t| row_json(t, t.command_ids.first().and_then(|id| updates.get(id))))
        .collect();
    v["next"] = json!(next);
    Ok(Json(v))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let names = ("agent-updates", "agent_updates");
    rollout_pages::list_page(&state, KIND, &q, names, summary_json).await
}

/// Stops what has not started (admins, who start them); updates already sent finish.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let rec = find(&state, &id).await?;
    let v = rollout_pages::cancel(&state, &caller, &rec, "the agent update").await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}
