//! `GET /api/v1/hosts/{id}/exec/{exec_id}/terminal`: the web UI's exec terminal. A WebSocket
//! whose binary messages are the exec's raw TTY bytes both ways, bridged to the same exec
//! machinery the docker CLI uses: the exec (created with `POST .../docker/containers/{id}/exec`)
//! is started as the CLI starts it (`POST /exec/{id}/start`, hijacked) through the host's
//! adapter, and its tunnel is pumped into one end of an in-memory pipe whose other end is this
//! socket. Resizing is the CLI's `POST .../docker/exec/{id}/resize?h=&w=`.
//!
//! Owns: that bridge. The caller, role (operator), audit, metrics and lease are the
//! passthrough's, as for the CLI's hijack. Must not: reach a host except through its adapter.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use protocol::passthrough::classify;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{docker_error, outcome_of_status, Exchange};
use crate::api::caller::Caller;
use crate::hosts::{StreamRequest, StreamResponse, Tunnel};
use crate::leases::Lease;
use crate::reply;
use crate::state::AppState;
use crate::store::Role;

/// Bytes the pipe between the socket and the tunnel buffers each way.
const PIPE: usize = 64 * 1024;

pub async fn terminal(
    State(state): State<AppState>,
    Path((host_id, exec_id)): Path<(String, String)>,
    req: Request,
) -> Response {
    let (mut parts, _) = req.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let below = format!("/exec/{exec_id}/start");
    let route = match classify("POST", &below) {
        Ok(r) => r,
        Err(e) => return docker_error(StatusCode::BAD_REQUEST, format!("invalid exec id: {e}")),
    };
    let mut ex = Exchange {
        state: state.clone(),
        caller,
        host_id: host_id.clone(),
        route: Some(route),
        method: "POST".into(),
        lease: None,
    };
    if let Err(e) = ex.caller.require(Role::Operator) {
        ex.finish("denied", 403, "none", Some("forbidden")).await;
        return e.into_response();
    }
    match open(&mut ex, &below).await {
        Ok((tunnel, lease)) => ws
            .max_message_size(64 * 1024)
            .on_upgrade(move |socket| bridge(socket, tunnel, lease, state)),
        Err(resp) => resp,
    }
}

/// Starts the exec through the host's adapter; the tunnel and the lease that bounds it.
async fn open(ex: &mut Exchange, below: &str) -> Result<(Box<dyn Tunnel>, Lease), Response> {
    let state = ex.state.clone();
    let host = match state.store.get_host_cached(&ex.host_id).await {
        Ok(Some(h)) => h,
        _ => {
            ex.finish("not_found", 404, "none", Some("not_found")).await;
            return Err(docker_error(StatusCode::NOT_FOUND, "host not found"));
        }
    };
    let lease = state
        .leases
        .take(&ex.caller, Some(&host.id), Role::Operator);
    let body = br#"{"Detach":false,"Tty":true}"#;
    let req = StreamRequest {
        method: Method::POST,
        target: below.to_string(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), body.len().to_string()),
        ],
        body: Some(axum::body::Body::from(&body[..])),
        upgrade: true,
        caller: Some(format!("{} ({})", ex.caller.user, ex.caller.role.as_str())),
    };
    let opened = match state.adapters.for_host(&host) {
        Ok(a) => {
            let via = a.route().via;
            (a.open_stream(req).await, via)
        }
        Err(e) => (Err(e), host.connection_mode.as_str()),
    };
    match opened {
        (
            Ok(StreamResponse {
                status,
                tunnel: Some(t),
                ..
            }),
            via,
        ) => {
            ex.finish(outcome_of_status(status), status, via, None)
                .await;
            Ok((t, lease))
        }
        (Ok(r), via) => {
            ex.finish(outcome_of_status(r.status), r.status, via, None)
                .await;
            let bytes = axum::body::to_bytes(r.body, 64 * 1024)
                .await
                .unwrap_or_default();
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("the daemon answered {} without a terminal", r.status));
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            Err(docker_error(status, msg))
        }
        (Err(e), via) => {
            let status = reply::http_status(e.code);
            ex.finish(e.code.as_str(), status.as_u16(), via, Some(e.code.as_str()))
                .await;
            Err(docker_error(status, e.message))
        }
    }
}

/// Pumps bytes between the socket and the tunnel until either ends or the lease does.
async fn bridge(socket: WebSocket, tunnel: Box<dyn Tunnel>, lease: Lease, state: AppState) {
    let (near, far) = tokio::io::duplex(PIPE);
    // The pump owns the far end: when the exec ends it drops it, and the reader below sees
    // the end after the last bytes.
    let pump = tokio::spawn(tunnel.pump(Box::new(far), state.metrics.clone()));
    let (mut rd, mut wr) = tokio::io::split(near);
    let (mut tx, mut rx) = socket.split();
    let up = async {
        while let Some(Ok(m)) = rx.next().await {
            let data = match m {
                Message::Binary(b) => b,
                Message::Text(t) => bytes::Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    let b = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if tx.send(Message::Binary(b)).await.is_err() {
                        return false;
                    }
                }
            }
        }
    };
    let close = tokio::select! {
        open = down => open.then(|| (1000, "the exec ended".to_string())),
        _ = up => None,
        r = lease.ended() => Some((1008, r)),
    };
    pump.abort();
    if let Some((code, reason)) = close {
        let reason = reason.chars().take(100).collect::<String>().into();
        let _ = tx
            .send(Message::Close(Some(CloseFrame { code, reason })))
            .await;
    }
}
