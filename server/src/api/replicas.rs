//! The internal endpoint other replicas forward to when this replica holds a host's agent:
//! `POST /internal/v1/hosts/{id}/run` (one command) and
//! `ANY /internal/v1/hosts/{id}/docker/{*rest}` (one Docker API exchange, streams and
//! hijacks included).
//!
//! Owns: checking the cluster credential (constant time; anything else is 401 with no
//! detail), and running the request on this replica's own agent adapter, never forwarding it
//! again. When the agent is not held here (any more), the answer is 503 with
//! [`NOT_HELD_HEADER`], so the forwarding replica looks for the agent elsewhere. Must not:
//! authorise or audit (the replica the caller reached did, with the caller's role), or accept
//! a request without the credential.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use protocol::{ErrorBody, ErrorCode, Operation};
use serde::Deserialize;
use std::time::Duration;

use super::passthrough::{docker_error, forward_headers, has_body, response_head, wants_upgrade};
use crate::cluster::credential;
use crate::hosts::forward::{CALLER_HEADER, NOT_HELD_HEADER};
use crate::hosts::{Call, HostAdapter, StreamRequest, StreamResponse};
use crate::reply;
use crate::state::AppState;

/// The longest command a forwarded request may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    operation: Operation,
    command_id: String,
    idempotency_key: String,
    timeout_ms: u64,
}

pub(super) fn authorised(state: &AppState, headers: &HeaderMap) -> bool {
    headers
        .get(credential::HEADER)
        .is_some_and(|v| state.cluster.credential().check(v.as_bytes()))
}

pub(super) fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({ "message": "unauthorized" })),
    )
        .into_response()
}

fn not_held(message: &str) -> Response {
    let mut r = docker_error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(NOT_HELD_HEADER, axum::http::HeaderValue::from_static("1"));
    r
}

fn caller_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CALLER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect())
}

/// This replica's adapter for the host, when it holds the host's agent.
async fn held_here(
    state: &AppState,
    host_id: &str,
) -> Result<std::sync::Arc<dyn HostAdapter>, Response> {
    let host = match state.store.get_host_cached(host_id).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err(docker_error(StatusCode::NOT_FOUND, "host not found")),
        Err(e) => {
            tracing::error!(error = %e, "host lookup failed");
            return Err(docker_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error",
            ));
        }
    };
    match state.adapters.held_here(&host) {
        Some(a) => Ok(a),
        None => Err(not_held("the agent is not held by this replica")),
    }
}

/// `POST /internal/v1/hosts/{id}/run`: runs one command on the agent held here and answers
/// its outcome (`{"status":"success","data":..}` or `{"status":"error","error":..}`).
pub async fn run(
    State(state): State<AppState>,
    Path(host_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&state, &headers) {
        return unauthorised();
    }
    let req: RunRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let err = ErrorBody::invalid_params(format!("invalid forwarded command: {e}"));
            return (StatusCode::BAD_REQUEST, axum::Json(reply::error_doc(&err))).into_response();
        }
    };
    let adapter = match held_here(&state, &host_id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let caller = caller_of(&headers);
    tracing::info!(host = %host_id, command = %req.command_id, caller = caller.as_deref().unwrap_or("-"), "running a forwarded command");
    let call = Call {
        id: req.command_id,
        idempotency_key: req.idempotency_key,
        timeout: Duration::from_millis(req.timeout_ms).min(MAX_TIMEOUT),
        caller,
    };
    let outcome = adapter.run(&req.operation, &call).await;
    axum::Json(reply::encode(&outcome)).into_response()
}

/// `ANY /internal/v1/hosts/{id}/docker/{*rest}`: one Docker API exchange on the agent held
/// here, streamed both ways; a hijack is pumped between the forwarding replica's upgraded
/// connection and the agent.
pub async fn docker(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    if !authorised(&state, &parts.headers) {
        return unauthorised();
    }
    let path = parts.uri.path().to_string();
    let Some((host_id, below)) = split(&path) else {
        return docker_error(StatusCode::NOT_FOUND, "page not found");
    };
    let adapter = match held_here(&state, host_id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let target = match parts.uri.query() {
        Some(q) => format!("{below}?{q}"),
        None => below.to_string(),
    };
    let on_upgrade = if wants_upgrade(&parts.headers) {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let headers = forward_headers(&parts.headers)
        .into_iter()
        .filter(|(k, _)| k != credential::HEADER && k != CALLER_HEADER)
        .collect();
    let sreq = StreamRequest {
        method: parts.method.clone(),
        target,
        headers,
        body: has_body(&parts.headers).then_some(body),
        upgrade: on_upgrade.is_some(),
        caller: caller_of(&parts.headers),
    };
    match adapter.open_stream(sreq).await {
        Ok(resp) => answer(&state, resp, on_upgrade),
        Err(e) if e.code == ErrorCode::AgentOffline => not_held(&e.message),
        Err(e) => docker_error(reply::http_status(e.code), e.message),
    }
}

/// The response to the forwarding replica: the daemon's head, the body streaming, or after
/// a `101` the tunnel pumped on a task.
fn answer(state: &AppState, resp: StreamResponse, on_upgrade: Option<OnUpgrade>) -> Response {
    let StreamResponse {
        status,
        headers,
        body,
        tunnel,
    } = resp;
    let head = response_head(status, &headers, tunnel.is_some());
    if let (Some(tunnel), Some(client)) = (tunnel, on_upgrade) {
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            match client.await {
                Ok(c) => {
                    tunnel
                        .pump(Box::new(hyper_util::rt::TokioIo::new(c)), metrics)
                        .await
                }
                Err(e) => tracing::debug!(error = %e, "forwarding replica's upgrade failed"),
            }
        });
        return head
            .body(Body::empty())
            .unwrap_or_else(|_| docker_error(StatusCode::BAD_GATEWAY, "invalid upgrade response"));
    }
    head.body(body)
        .unwrap_or_else(|_| docker_error(StatusCode::BAD_GATEWAY, "invalid daemon response"))
}

/// `(host_id, path below /docker)` of `/internal/v1/hosts/{id}/docker/...`.
fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/internal/v1/hosts/")?;
    let (host, rest) = rest.split_once('/')?;
    let below = rest.strip_prefix("docker")?;
    if !(below.is_empty() || below.starts_with('/')) || host.is_empty() {
        return None;
    }
    Some((host, if below.is_empty() { "/" } else { below }))
}
