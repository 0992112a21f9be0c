//! `/api/v1/groups[/{id}]`: saved groups, each a name and a stored label selector. Admins
//! write them, viewers read them; a group is addressed by its id or its name.
//!
//! Owns: the group's request and response shapes, checking its name, description and
//! selector (stored in canonical form), and auditing changes. Must not: match hosts itself
//! (the `fleet` module does).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use super::hosts::{host_json, host_query};
use super::{paging, ts};
use crate::error::{ApiError, ApiResult};
use crate::fleet::HostQuery;
use crate::labels::Selector;
use crate::state::AppState;
use crate::store::{Group, Role};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    name: String,
    selector: String,
    #[serde(default)]
    description: Option<String>,
}

/// A PATCH: absent keys keep their value; `description: null` clears it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchGroup {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default, deserialize_with = "double")]
    description: Option<Option<String>>,
}

fn double<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(Some(v.filter(|s| !s.is_empty())))
}

/// `GET /api/v1/groups/{id}` query: a page of the member hosts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupQuery {
    status: Option<String>,
    limit: Option<String>,
    next: Option<String>,
}

/// A group name: 1 to 63 of `[A-Za-z0-9._-]`, starting with a letter or digit.
fn check_name(name: &str) -> ApiResult<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if !ok {
        return Err(ApiError::bad_request(
            "name must be 1 to 63 of letters, digits, '.', '_' and '-', starting with a letter or digit",
        ));
    }
    Ok(())
}

fn check_description(d: Option<&str>) -> ApiResult<()> {
    if d.is_some_and(|d| d.chars().count() > 1000 || d.chars().any(|c| c.is_control() && c != '\n'))
    {
        return Err(ApiError::bad_request(
            "description must be at most 1000 characters without control characters",
        ));
    }
    Ok(())
}

/// The selector's canonical text (what is stored and shown).
fn canonical(selector: &str) -> ApiResult<String> {
    Selector::parse(selector)
        .map(|s| s.to_string())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(super) fn group_json(g: &Group) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "selector": g.selector,
        "description": g.description,
        "created_by": g.created_by,
        "created_at": ts(Some(g.created_at)),
        "updated_at": ts(Some(g.updated_at)),
    })
}

/// The group with this id or name.
async fn find(state: &AppState, id_or_name: &str) -> ApiResult<Group> {
    state
        .fleet
        .group(id_or_name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("group {id_or_name:?} not found")))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateGroup>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let Json(b) = body?;
    check_name(&b.name)?;
    let description = b.description.filter(|d| !d.is_empty());
    check_description(description.as_deref())?;
    let selector = canonical(&b.selector)?;
    let result = state
        .store
        .create_group(&b.name, &selector, description.as_deref(), &caller.user)
        .await;
    let id = result.as_ref().ok().map(|g| g.id.clone());
    let detail = json!({ "id": id, "selector": selector });
    state
        .audit
        .user(
            &caller,
            "group.create",
            None,
            Some(&b.name),
            crate::audit::outcome_of(&result),
            None,
            Some(detail),
        )
        .await;
    Ok((StatusCode::CREATED, Json(group_json(&result?))))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<super::paging::PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let limit = paging::limit(q.limit.as_deref())?;
    let after = match q.next.as_deref() {
        Some(c) => Some(paging::decode("groups", c)?),
        None => None,
    };
    let mut groups = state
        .store
        .list_groups(after.as_deref(), limit as i64 + 1)
        .await?;
    let next = (groups.len() > limit).then(|| {
        groups.truncate(limit);
        paging::encode("groups", &groups[limit - 1].name)
    });
    let items: Vec<Value> = groups.iter().map(group_json).collect();
    Ok(Json(json!({ "groups": items, "next": next })))
}

/// One group, with how many hosts it selects now and a page of them.
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<GroupQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let g = find(&state, &id).await?;
    let query = HostQuery {
        selector: Selector::parse(&g.selector).map_err(ApiError::internal)?,
        status: host_query(None, q.status.as_deref())?.status,
        name: None,
    };
    let limit = paging::limit(q.limit.as_deref())?;
    let after = match q.next.as_deref() {
        Some(c) => Some(paging::decode("hosts", c)?),
        None => None,
    };
    let total = state.fleet.count(&query).await?;
    let page = state.fleet.page(&query, after, limit).await?;
    let futs = page.hosts.iter().map(|h| host_json(&state, h, false));
    let hosts = futures_util::future::join_all(futs).await;
    let mut v = group_json(&g);
    v["hosts_total"] = json!(total);
    v["hosts"] = json!(hosts);
    v["next"] = json!(page.next.map(|n| paging::encode("hosts", &n)));
    Ok(Json(v))
}

pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<PatchGroup>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let Json(p) = body?;
    let mut g = find(&state, &id).await?;
    let before = group_json(&g);
    if let Some(n) = p.name {
        check_name(&n)?;
        g.name = n;
    }
    if let Some(s) = p.selector {
        g.selector = canonical(&s)?;
    }
    if let Some(d) = p.description {
        check_description(d.as_deref())?;
        g.description = d;
    }
    let result = state.store.update_group(&g).await;
    let detail = json!({ "id": g.id, "from": { "name": before["name"], "selector": before["selector"] },
        "to": { "name": g.name, "selector": g.selector } });
    state
        .audit
        .user(
            &caller,
            "group.update",
            None,
            Some(&g.name),
            crate::audit::outcome_of(&result),
            None,
            Some(detail),
        )
        .await;
    Ok(Json(group_json(&result?)))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let g = find(&state, &id).await?;
    let result = state.store.delete_group(&g.id).await;
    state
        .audit
        .user(
            &caller,
            "group.delete",
            None,
            Some(&g.name),
            crate::audit::outcome_of(&result),
            None,
            Some(json!({ "id": g.id, "selector": g.selector })),
        )
        .await;
    result?;
    Ok(Json(json!({ "id": g.id, "deleted": true })))
}
