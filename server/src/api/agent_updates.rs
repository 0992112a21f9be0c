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
use super::{paging, ts};
use crate::error::{ApiError, ApiResult};
use crate::fleet::Targets;
use crate::reply;
use crate::rollouts::agent_update::{AgentUpdateKind, UpdateSpec, KIND};
use crate::rollouts::{
    full_counts, Plan, Policy, RolloutRecord, RolloutState, TargetRecord, TargetState, MAX_TARGETS,
};
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

/// `GET /api/v1/agent-updates/{id}` query: a page of the rows.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    state: Option<String>,
    limit: Option<String>,
    next: Option<String>,
}

/// `GET /api/v1/agent-updates` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    next: Option<String>,
}

/// Exactly one way of naming the hosts.
fn targets_of(b: &CreateUpdate) -> ApiResult<Targets> {
    match (&b.selector, &b.host_ids, &b.group) {
        (Some(s), None, None) => Ok(Targets::Selector(s.clone())),
        (None, Some(ids), None) => Ok(Targets::HostIds(ids.clone())),
        (None, None, Some(g)) => Ok(Targets::Group(g.clone())),
        _ => Err(ApiError::bad_request(
            "name the hosts with exactly one of selector, host_ids and group",
        )),
    }
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
    let targets = targets_of(&b)?;
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
    let s = &rec.summary;
    json!({
        "id": rec.id,
        "kind": rec.kind,
        "state": rec.state,
        "reason": rec.reason,
        "version": s["version"],
        "selector": s["selector"],
        "group": s["group"],
        "max_parallel": rec.max_parallel,
        "max_failures": rec.max_failures,
        "hosts": rec.total,
        "counts": full_counts(counts),
        "cancel_requested": rec.cancel_requested_at.is_some(),
        "cancelled_by": rec.cancelled_by,
        "created_by": rec.created_by,
        "created_at": ts(Some(rec.created_at)),
        "updated_at": ts(Some(rec.updated_at)),
        "finished_at": ts(rec.finished_at),
    })
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
    state
        .rollouts
        .get(id)
        .await?
        .filter(|r| r.kind == KIND)
        .ok_or_else(|| ApiError::not_found(format!("agent update {id:?} not found")))
}

fn parse_state(s: Option<&str>) -> ApiResult<Vec<TargetState>> {
    match s {
        None => Ok(Vec::new()),
        Some(s) => Ok(vec![TargetState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = TargetState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(format!("state must be one of {}", all.join(", ")))
        })?]),
    }
}

pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let states = parse_state(q.state.as_deref())?;
    let limit = paging::limit(q.limit.as_deref())?;
    let after = match q.next.as_deref() {
        Some(c) => Some(
            paging::decode("agent-update-rows", c)?
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request("next is not a cursor of this list"))?,
        ),
        None => None,
    };
    let rec = find(&state, &id).await?;
    let counts = state.rollouts.counts(std::slice::from_ref(&rec.id)).await?;
    let mut rows = state
        .rollouts
        .targets(&rec.id, &states, after, limit as i64 + 1)
        .await?;
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        paging::encode("agent-update-rows", &rows[limit - 1].position.to_string())
    });
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
    let mut v = summary_json(&rec, counts.get(&rec.id));
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
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let limit = paging::limit(q.limit.as_deref())?;
    let before = match q.next.as_deref() {
        Some(c) => {
            let v = paging::decode("agent-updates", c)?;
            let bad = || ApiError::bad_request("next is not a cursor of this list");
            let (at, id) = v.split_once(':').ok_or_else(bad)?;
            Some((at.parse::<i64>().map_err(|_| bad())?, id.to_string()))
        }
        None => None,
    };
    let before_ref = before.as_ref().map(|(at, id)| (*at, id.as_str()));
    let mut recs = state
        .rollouts
        .list(KIND, before_ref, limit as i64 + 1)
        .await?;
    let next = (recs.len() > limit).then(|| {
        recs.truncate(limit);
        let last = &recs[limit - 1];
        paging::encode("agent-updates", &format!("{}:{}", last.created_at, last.id))
    });
    let ids: Vec<String> = recs.iter().map(|r| r.id.clone()).collect();
    let counts = state.rollouts.counts(&ids).await?;
    let items: Vec<Value> = recs
        .iter()
        .map(|r| summary_json(r, counts.get(&r.id)))
        .collect();
    Ok(Json(json!({ "agent_updates": items, "next": next })))
}

/// Stops what has not started (admins, who start them); updates already sent finish.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let rec = find(&state, &id).await?;
    if !state.rollouts.cancel(&caller, &rec.id).await? {
        let now = find(&state, &id).await?;
        let why = if now.state == RolloutState::Running {
            "a cancel was already asked for".to_string()
        } else {
            format!("the agent update is {}", now.state.as_str())
        };
        return Err(ApiError::conflict(why));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": rec.id, "state": RolloutState::Running, "cancel_requested": true })),
    ))
}
