//! `GET /api/v1/stream[?host_id=ID]`: a WebSocket that pushes agent online/offline changes,
//! health and Docker events as JSON text messages. Authenticated with the same bearer token
//! as the REST API (viewer and up). The feed holds a lease (`crate::leases`): revoking the
//! token (or deleting the filtered host) closes it with code 1008 and the reason.
//!
//! Owns: the feed's socket while it lives. Must not: publish (the `feed` module does).

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::caller::Caller;
use crate::error::ApiResult;
use crate::leases::Lease;
use crate::state::AppState;
use crate::store::Role;

#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    /// Only events of this host.
    host_id: Option<String>,
}

pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    // Subscribe before the upgrade so nothing published after the 101 is missed.
    let rx = state.feed.subscribe();
    let lease = state
        .leases
        .take(&caller, q.host_id.as_deref(), Role::Viewer);
    Ok(ws
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| pump_feed(socket, rx, q.host_id, lease)))
}

/// Sends the feed's events (of one host, when filtered) until the client leaves or the lease ends.
async fn pump_feed(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::feed::FeedEvent>>,
    host: Option<String>,
    lease: Lease,
) {
    let ended = lease.ended();
    tokio::pin!(ended);
    let hello = json!({ "type": "subscribed", "host_id": host });
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            reason = &mut ended => {
                let frame = CloseFrame { code: 1008, reason: reason.chars().take(100).collect::<String>().into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
            ev = rx.recv() => {
                let text = match ev {
                    Ok(ev) => {
                        if host.as_deref().is_some_and(|h| ev.host_id.as_deref() != Some(h)) {
                            continue;
                        }
                        ev.body.to_string()
                    }
                    Err(RecvError::Lagged(n)) => json!({ "type": "lagged", "missed": n }).to_string(),
                    Err(RecvError::Closed) => return,
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}
