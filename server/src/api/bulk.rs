//! `/api/v1/bulk-operations[/{id}[/cancel]]`: one operation (or a few `steps`) on many
//! hosts, named by a selector, a saved group or a list of host ids.
//!
//! Owns: the request and response shapes (a rollout's state, counts and paged rows; a row's
//! result shown only to callers whose role may run the operation). Must not: run anything
//! (the `rollouts` module owns the rollout, the `commands` module each command) or match
//! hosts (the `fleet` module does).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::caller::Caller;
use super::{paging, ts};
use crate::auth::role_for;
use crate::error::{ApiError, ApiResult};
use crate::fleet::Targets;
use crate::reply;
use crate::rollouts::bulk::{BulkSpec, Step, KIND};
use crate::rollouts::{
    full_counts, Plan, Policy, RolloutRecord, RolloutState, TargetRecord, TargetState, MAX_TARGETS,
};
use crate::state::AppState;
use crate::store::Role;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBulk {
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    host_ids: Option<Vec<String>>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    steps: Option<Vec<Step>>,
    #[serde(default)]
    max_parallel: Option<u32>,
    #[serde(default)]
    max_failures: Option<u32>,
    #[serde(default)]
    queue_offline: Option<bool>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    timeout: Option<u64>,
}

/// `GET /api/v1/bulk-operations/{id}` query: a page of the rows.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    state: Option<String>,
    limit: Option<String>,
    next: Option<String>,
}

/// `GET /api/v1/bulk-operations` query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    next: Option<String>,
}

/// Exactly one way of naming the hosts.
fn targets_of(b: &CreateBulk) -> ApiResult<Targets> {
    match (&b.selector, &b.host_ids, &b.group) {
        (Some(s), None, None) => Ok(Targets::Selector(s.clone())),
        (None, Some(ids), None) => Ok(Targets::HostIds(ids.clone())),
        (None, None, Some(g)) => Ok(Targets::Group(g.clone())),
        _ => Err(ApiError::bad_request(
            "name the hosts with exactly one of selector, host_ids and group",
        )),
    }
}

/// `operation` (+ `params`) or `steps`, not both.
fn steps_of(b: &CreateBulk) -> ApiResult<Vec<Step>> {
    match (&b.operation, &b.steps) {
        (Some(op), None) => Ok(vec![Step {
            operation: op.clone(),
            params: b.params.clone().unwrap_or(Value::Null),
        }]),
        (None, Some(steps)) if b.params.is_none() => Ok(steps.clone()),
        (None, Some(_)) => Err(ApiError::bad_request(
            "params goes with operation; with steps, each step has its params",
        )),
        _ => Err(ApiError::bad_request(
            "give exactly one of operation and steps",
        )),
    }
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateBulk>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(b) = body?;
    let targets = targets_of(&b)?;
    let spec = BulkSpec {
        steps: steps_of(&b)?,
        queue_offline: b.queue_offline.unwrap_or(true),
        expires_in: b.expires_in,
        timeout: b.timeout,
    };
    let spec_doc = serde_json::to_value(&spec).map_err(ApiError::internal)?;
    // Authority and validity first: nothing is read or created for a refused request.
    state.rollouts.check(&caller, KIND, &spec_doc).await?;
    let resolved = state.fleet.resolve(&targets, MAX_TARGETS).await?;
    let summary = json!({
        "operations": spec.steps.iter().map(|s| &s.operation).collect::<Vec<_>>(),
        "selector": b.selector,
        "group": resolved.group.as_ref().map(|g| json!({ "id": g.id, "name": g.name, "selector": g.selector })),
        "host_ids": b.host_ids.is_some(),
        "queue_offline": spec.queue_offline,
        "expires_in": spec.expires_in,
        "timeout": spec.timeout,
    });
    let plan = Plan {
        kind: KIND,
        summary,
        spec: spec_doc,
        targets: resolved
            .hosts
            .iter()
            .map(|h| (h.id.clone(), h.name.clone()))
            .collect(),
        policy: Policy {
            max_parallel: b.max_parallel.unwrap_or(Policy::default().max_parallel),
            max_failures: b.max_failures.unwrap_or(0),
        },
    };
    let rec = state.rollouts.start(&caller, plan).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": rec.id, "hosts": rec.total, "state": rec.state })),
    ))
}

/// The role a caller needs to see the rows' results: the highest any step needs.
fn result_role(rec: &RolloutRecord) -> Role {
    let ops = rec.summary["operations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ops.iter()
        .filter_map(Value::as_str)
        .map(|op| role_for(protocol::ops::access_of(op)))
        .max()
        .unwrap_or(Role::Operator)
}

fn summary_json(rec: &RolloutRecord, counts: Option<&BTreeMap<TargetState, i64>>) -> Value {
    let s = &rec.summary;
    json!({
        "id": rec.id,
        "kind": rec.kind,
        "state": rec.state,
        "reason": rec.reason,
        "operations": s["operations"],
        "selector": s["selector"],
        "group": s["group"],
        "queue_offline": s["queue_offline"],
        "expires_in": s["expires_in"],
        "timeout": s["timeout"],
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

fn row_json(t: &TargetRecord, show_result: bool) -> Value {
    let (data, error) = match reply::decode(&t.result) {
        Some(Ok(d)) => (show_result.then_some(d), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    json!({
        "host_id": t.host_id,
        "host_name": t.host_name,
        "state": t.state,
        "command_ids": t.command_ids,
        "result": data,
        "error": error,
        "started_at": ts(t.started_at),
        "finished_at": ts(t.finished_at),
    })
}

/// The bulk operation `id`: a bulk rollout, or a stack's (`POST /api/v1/stacks` names it);
/// a rollout of another kind is not one.
async fn find(state: &AppState, id: &str) -> ApiResult<RolloutRecord> {
    state
        .rollouts
        .get(id)
        .await?
        .filter(|r| r.kind == KIND || r.kind == crate::deploy::KIND)
        .ok_or_else(|| ApiError::not_found(format!("bulk operation {id:?} not found")))
}

pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let states = match q.state.as_deref() {
        None => Vec::new(),
        Some(s) => vec![TargetState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = TargetState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(format!("state must be one of {}", all.join(", ")))
        })?],
    };
    let limit = paging::limit(q.limit.as_deref())?;
    let after = match q.next.as_deref() {
        Some(c) => Some(
            paging::decode("bulk-rows", c)?
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
        paging::encode("bulk-rows", &rows[limit - 1].position.to_string())
    });
    let show = caller.role >= result_role(&rec);
    let mut v = summary_json(&rec, counts.get(&rec.id));
    v["targets"] = rows.iter().map(|t| row_json(t, show)).collect();
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
            let v = paging::decode("bulk", c)?;
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
        paging::encode("bulk", &format!("{}:{}", last.created_at, last.id))
    });
    let ids: Vec<String> = recs.iter().map(|r| r.id.clone()).collect();
    let counts = state.rollouts.counts(&ids).await?;
    let items: Vec<Value> = recs
        .iter()
        .map(|r| summary_json(r, counts.get(&r.id)))
        .collect();
    Ok(Json(json!({ "bulk_operations": items, "next": next })))
}

/// Stops what has not started; an operator may cancel any bulk operation.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    let rec = find(&state, &id).await?;
    if !state.rollouts.cancel(&caller, &rec.id).await? {
        let now = find(&state, &id).await?;
        let why = if now.state == RolloutState::Running {
            "a cancel was already asked for".to_string()
        } else {
            format!("the bulk operation is {}", now.state.as_str())
        };
        return Err(ApiError::conflict(why));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": rec.id, "state": RolloutState::Running, "cancel_requested": true })),
    ))
}
