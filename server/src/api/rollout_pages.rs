//! What the REST views of rollouts share (bulk operations and agent updates; a stack's deploy
//! reads as a bulk operation): naming the hosts, the summary fields every kind has, the row
//! state filter, a page of a rollout's rows, a page of rollouts, and cancel.
//!
//! Owns: those shapes. Must not: run or plan anything (the `rollouts` module does), or know
//! a kind's own fields (each kind's API module adds them).

use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::caller::Caller;
use super::{paging, ts};
use crate::error::{ApiError, ApiResult};
use crate::fleet::Targets;
use crate::rollouts::{full_counts, RolloutRecord, RolloutState, TargetRecord, TargetState};
use crate::state::AppState;

/// `GET /api/v1/{rollouts}/{id}` query: a page of the rows, optionally of one state.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsQuery {
    state: Option<String>,
    limit: Option<String>,
    next: Option<String>,
}

/// The rollout `id` if it is of one of `kinds`; else 404 naming it as a `noun` (e.g.
/// "agent update").
pub async fn find(
    state: &AppState,
    id: &str,
    kinds: &[&str],
    noun: &str,
) -> ApiResult<RolloutRecord> {
    state
        .rollouts
        .get(id)
        .await?
        .filter(|r| kinds.contains(&r.kind.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("{noun} {id:?} not found")))
}

/// The hosts a create request names: exactly one of a selector, host ids and a group.
pub fn targets_of(
    selector: &Option<String>,
    host_ids: &Option<Vec<String>>,
    group: &Option<String>,
) -> ApiResult<Targets> {
    match (selector, host_ids, group) {
        (Some(s), None, None) => Ok(Targets::Selector(s.clone())),
        (None, Some(ids), None) => Ok(Targets::HostIds(ids.clone())),
        (None, None, Some(g)) => Ok(Targets::Group(g.clone())),
        _ => Err(ApiError::bad_request(
            "name the hosts with exactly one of selector, host_ids and group",
        )),
    }
}

/// The summary every kind shows, with the kind's own `fields` copied from what it stored
/// in the rollout's summary.
pub fn summary_json(
    rec: &RolloutRecord,
    counts: Option<&BTreeMap<TargetState, i64>>,
    fields: &[&str],
) -> Value {
    let mut v = json!({
        "id": rec.id,
        "kind": rec.kind,
        "state": rec.state,
        "reason": rec.reason,
        "selector": rec.summary["selector"],
        "group": rec.summary["group"],
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
    });
    for f in fields {
        v[*f] = rec.summary[*f].clone();
    }
    v
}

/// A page of `rec`'s rows as `q` asks (cursors of the list `cursor`), with the rollout's
/// counts: the rows and the next cursor.
pub async fn rows_page(
    state: &AppState,
    rec: &RolloutRecord,
    q: &RowsQuery,
    cursor: &str,
) -> ApiResult<(
    BTreeMap<TargetState, i64>,
    Vec<TargetRecord>,
    Option<String>,
)> {
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
            paging::decode(cursor, c)?
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request("next is not a cursor of this list"))?,
        ),
        None => None,
    };
    let mut counts = state.rollouts.counts(std::slice::from_ref(&rec.id)).await?;
    let mut rows = state
        .rollouts
        .targets(&rec.id, &states, after, limit as i64 + 1)
        .await?;
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        paging::encode(cursor, &rows[limit - 1].position.to_string())
    });
    Ok((counts.remove(&rec.id).unwrap_or_default(), rows, next))
}

/// A page of the rollouts of `kind`, newest first, as `{key: [...], "next"}`, each shown by
/// `summary`.
pub async fn list_page(
    state: &AppState,
    kind: &str,
    q: &paging::PageQuery,
    (cursor, key): (&str, &str),
    summary: impl Fn(&RolloutRecord, Option<&BTreeMap<TargetState, i64>>) -> Value,
) -> ApiResult<Json<Value>> {
    let limit = paging::limit(q.limit.as_deref())?;
    let before = match q.next.as_deref() {
        Some(c) => {
            let v = paging::decode(cursor, c)?;
            let bad = || ApiError::bad_request("next is not a cursor of this list");
            let (at, id) = v.split_once(':').ok_or_else(bad)?;
            Some((at.parse::<i64>().map_err(|_| bad())?, id.to_string()))
        }
        None => None,
    };
    let before_ref = before.as_ref().map(|(at, id)| (*at, id.as_str()));
    let mut recs = state
        .rollouts
        .list(kind, before_ref, limit as i64 + 1)
        .await?;
    let next = (recs.len() > limit).then(|| {
        recs.truncate(limit);
        let last = &recs[limit - 1];
        paging::encode(cursor, &format!("{}:{}", last.created_at, last.id))
    });
    let ids: Vec<String> = recs.iter().map(|r| r.id.clone()).collect();
    let counts = state.rollouts.counts(&ids).await?;
    let items: Vec<Value> = recs.iter().map(|r| summary(r, counts.get(&r.id))).collect();
    Ok(Json(json!({ key: items, "next": next })))
}

/// Asks `rec` to stop what has not started; a conflict naming why when it cannot (`noun`
/// names the rollout in the message, e.g. "the bulk operation").
pub async fn cancel(
    state: &AppState,
    caller: &Caller,
    rec: &RolloutRecord,
    noun: &str,
) -> ApiResult<Value> {
    if !state.rollouts.cancel(caller, &rec.id).await? {
        let now = state.rollouts.get(&rec.id).await?;
        let why = match now {
            Some(now) if now.state != RolloutState::Running => {
                format!("{noun} is {}", now.state.as_str())
            }
            _ => "a cancel was already asked for".to_string(),
        };
        return Err(ApiError::conflict(why));
    }
    Ok(json!({ "id": rec.id, "state": RolloutState::Running, "cancel_requested": true }))
}
