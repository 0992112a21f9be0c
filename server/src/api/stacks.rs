//! `/api/v1/stacks[/{name}]` and `/api/v1/registries[/{id}]`: compose stacks deployed to
//! hosts, and registry credentials for their pulls.
//!
//! Owns: the request and response shapes (202 `{"name","version","rollout_id"}` for every
//! change). Must not: check, store or deploy anything itself: `deploy::Deployer` does, and
//! audits. Registry passwords are never shown.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use super::ts;
use crate::deploy::{Accepted, RegistryRequest, StackRequest};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::store::RegistryRecord;

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn accepted(a: Accepted) -> (StatusCode, Json<Value>) {
    (StatusCode::ACCEPTED, Json(json!(a)))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Body<StackRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(req) = body?;
    Ok(accepted(state.deployer.deploy(&caller, req, None).await?))
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body<StackRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(req) = body?;
    Ok(accepted(
        state.deployer.deploy(&caller, req, Some(&name)).await?,
    ))
}

pub async fn redeploy(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok(accepted(state.deployer.redeploy(&caller, &name).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    volumes: bool,
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    q: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Query(q) = q?;
    Ok(accepted(
        state.deployer.remove(&caller, &name, q.volumes).await?,
    ))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(state.deployer.list(&caller).await?)))
}

pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(state.deployer.status(&caller, &name).await?))
}

fn registry_json(r: &RegistryRecord) -> Value {
    json!({
        "id": r.id,
        "server": r.server,
        "username": r.username,
        "created_by": r.created_by,
        "created_at": ts(Some(r.created_at)),
        "updated_at": ts(Some(r.updated_at)),
    })
}

pub async fn registries(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let list = state.deployer.registries(&caller).await?;
    Ok(Json(list.iter().map(registry_json).collect()))
}

pub async fn add_registry(
    State(state): State<AppState>,
    caller: Caller,
    body: Body<RegistryRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(req) = body?;
    let r = state.deployer.add_registry(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(registry_json(&r))))
}

pub async fn delete_registry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.deployer.delete_registry(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
