//! `POST /api/v1/hosts/{id}/operations`: run a catalog operation on a host, and answer
//! `{"status":"success","data":..}` or `{"status":"error","error":{"code","message"}}` with
//! the code's HTTP status, or `202` with the command's id and state while it waits in the
//! queue (`"queue": true` for an offline agent) or still runs.
//!
//! Owns: the request and response shapes (the `X-Command-Id` and `X-Idempotent-Replay`
//! headers included). Must not: take any step of the command's life itself: the
//! `commands` module validates, authorises, records, sends or queues, and audits.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

use super::caller::Caller;
use super::ts;
use crate::commands::{Reply, Submission};
use crate::error::ApiResult;
use crate::reply;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    operation: String,
    #[serde(default)]
    params: Value,
    /// Keep the command until the host's agent is online (agent hosts).
    #[serde(default)]
    queue: bool,
    /// Seconds a queued command waits for its agent before it expires (default 24 h).
    #[serde(default)]
    expires_in: Option<u64>,
    /// The client's key: a repeated request with the same key returns the first result.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Seconds to wait for the result (default: the server's `agent.command_timeout`).
    #[serde(default)]
    timeout: Option<u64>,
}

pub async fn post(
    State(state): State<AppState>,
    caller: Caller,
    Path(host_id): Path<String>,
    body: Result<Json<OperationRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let submission = Submission {
        host_id,
        operation: req.operation,
        params: req.params,
        queue: req.queue,
        expires_in: req.expires_in.map(Duration::from_secs),
        idempotency_key: req.idempotency_key,
        timeout: req.timeout.map(Duration::from_secs),
        origin: None,
    };
    let reply = state.commands.submit(&caller, submission).await?;
    Ok(respond(&reply))
}

/// The answer for a reply: its outcome (with the code's status), or 202 with its state.
fn respond(r: &Reply) -> Response {
    let mut resp = match &r.outcome {
        Some(outcome) => {
            let status = match outcome {
                Ok(_) => StatusCode::OK,
                Err(e) => reply::http_status(e.code),
            };
            (status, Json(reply::Doc(outcome))).into_response()
        }
        None => (
            StatusCode::ACCEPTED,
            Json(json!({
                "command_id": r.command_id,
                "state": r.state,
                "expires_at": ts(r.expires_at),
            })),
        )
            .into_response(),
    };
    if let Ok(v) = r.command_id.parse() {
        resp.headers_mut().insert("x-command-id", v);
    }
    if r.replay && r.outcome.is_some() {
        resp.headers_mut()
            .insert("x-idempotent-replay", HeaderValue::from_static("true"));
    }
    resp
}
