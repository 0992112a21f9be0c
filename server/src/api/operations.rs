//! `POST /api/v1/hosts/{id}/operations`: run a catalog operation on a host, through its
//! agent or directly, and answer `{"status":"success","data":..}` or
//! `{"status":"error","error":{"code","message"}}` with the code's HTTP status.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::ops::{access_of, Access};
use protocol::{ErrorBody, ErrorCode, Operation};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::store::{NewCommand, Role};
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    operation: String,
    #[serde(default)]
    params: Value,
}

/// The object an operation targets, for the audit log (never the whole params).
fn target_of(params: &Value) -> Option<String> {
    ["id", "name", "image"]
        .iter()
        .find_map(|k| params.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
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
    let host = super::hosts::load(&state, &host_id).await?;
    let op = Operation::parse(name, &req.params).map_err(ApiError::from)?;
    let adapter = state.adapters.for_host(&host).map_err(ApiError::from)?;
    let command_id = uuid::Uuid::new_v4().to_string();
    let record = NewCommand {
        id: command_id.clone(),
        host_id: Some(host.id.clone()),
        agent_id: host.agent_id.clone().filter(|_| adapter.kind() == "agent"),
        operation: op.name().to_string(),
        requested_by: Some(caller.user.clone()),
    };
    if let Err(e) = state.store.insert_command(&record).await {
        tracing::error!(error = %e, "could not record command");
    }
    let started = Instant::now();
    let timeout = state.config.agent.command_timeout.get();
    let result: Result<Value, ErrorBody> = adapter.execute(&op, timeout).await;
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
    if let Err(e) = state
        .store
        .finish_command(&command_id, status, code, took.as_millis() as i64)
        .await
    {
        tracing::error!(error = %e, "could not record command result");
    }
    let detail = json!({ "command_id": command_id, "via": super::hosts::adapter_kind(adapter.as_ref()), "duration_ms": took.as_millis() as u64 });
    state
        .audit
        .user(
            &caller,
            &action,
            Some(&host.id),
            target_of(&req.params).as_deref(),
            status,
            code,
            Some(detail),
        )
        .await;
    tracing::info!(host = %host.id, operation = op.name(), outcome = %outcome, ms = took.as_millis() as u64, "operation");
    Ok(match result {
        Ok(data) => (
            StatusCode::OK,
            [("x-command-id", command_id)],
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
            (
                http,
                [("x-command-id", command_id)],
                Json(json!({ "status": "error", "error": e })),
            )
                .into_response()
        }
    })
}
