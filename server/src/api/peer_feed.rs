//! `GET /internal/v1/feed`: this replica's own live-feed events, for the other replicas
//! (`cluster::peer_feed` follows it), one JSON line per event
//! (`{"host_id": .., "event": {..}}`), an empty line every `KEEPALIVE` when idle.
//!
//! Owns: checking the cluster credential (401 otherwise) and streaming the lines until this
//! replica stops (the shutdown does not wait for its followers). A follower
//! that falls behind gets one `{"type":"lagged","missed":N}` event instead of the events it
//! missed, as a local subscriber does. Must not: offer events that other replicas published
//! (no loops), or filter for callers (each replica's stream does).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::broadcast::{error::RecvError, Receiver};

use super::replicas::{authorised, unauthorised};
use crate::cluster::peer_feed::{line_of, Line, KEEPALIVE};
use crate::feed::FeedEvent;
use crate::state::AppState;

pub async fn offer(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorised(&state, &headers) {
        return unauthorised();
    }
    let rx = state.feed.subscribe();
    let stopping: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(state.cluster.stopping());
    let lines = stream::unfold((rx, stopping), |(mut rx, mut stopping)| async move {
        let line = tokio::select! {
            line = next_line(&mut rx) => line?,
            _ = &mut stopping => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(line), (rx, stopping)))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// The next line to send: an event of this replica, a lag report, or a keepalive; `None`
/// when the feed closed.
async fn next_line(rx: &mut Receiver<Arc<FeedEvent>>) -> Option<String> {
    loop {
        let ev = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Err(_) => return Some("\n".to_string()),
            Ok(Ok(ev)) => ev,
            Ok(Err(RecvError::Lagged(n))) => {
                let lag = Line {
                    host_id: None,
                    event: serde_json::json!({ "type": "lagged", "missed": n }),
                };
                return serde_json::to_string(&lag).ok().map(|s| s + "\n");
            }
            Ok(Err(RecvError::Closed)) => return None,
        };
        if let Some(line) = line_of(&ev) {
            return Some(line);
        }
    }
}
