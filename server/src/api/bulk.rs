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
use super::paging::PageQuery;
use super::rollout_pages::{self, RowsQuery};
use super::ts;
use crate::auth::role_for;
use crate::error::{ApiError, ApiResult};
use crate::reply;
use crate::rollouts::bulk::{BulkSpec, Step, KIND};
use crate::rollouts::{Plan, Policy, RolloutRecord, TargetRecord, TargetState, MAX_TARGETS};
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
    let targets = rollout_pages::targets_of(&b.selector, &b.host_ids, &b.group)?;
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
    let fields = ["operations", "queue_offline", "expires_in", "timeout"];
    let mut v = rollout_pages::summary_json(rec, counts, &fields);
    // A stack's rollout (listed here too) names its stack, version and action.
    for f in ["stack", "version", "action"] {
        if !rec.summary[f].is_null() {
            v[f] = rec.summary[f].clone();
        }
    }
    v
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
    rollout_pages::find(state, id, &[KIND, crate::deploy::KIND], "bulk operation").await
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
    let (counts, rows, next) = rollout_pages::rows_page(&state, &rec, &q, "bulk-rows").await?;
    let show = caller.role >= result_role(&rec);
    let mut v = summary_json(&rec, Some(&counts));
    v["targets"] = rows.iter().map(|t| row_json(t, show)).collect();
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
    rollout_pages::list_page(&state, KIND, &q, ("bulk", "bulk_operations"), summary_json).await
}

/// Stops what has not started; an operator may cancel any bulk operation.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    let rec = find(&state, &id).await?;
    let v = rollout_pages::cancel(&state, &caller, &rec, "the bulk operation").await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}
