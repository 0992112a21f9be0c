//! The live feed behind the user WebSocket `GET /api/v1/stream`.
//!
//! Owns: a broadcast channel of events (agent online/offline, health, Docker events, command
//! progress), each tagged with its host and, when another replica published it, with that
//! replica (republished here by `cluster::peer_feed`; only this replica's own events are
//! offered to the other replicas, so nothing loops). Must not: block publishers: a slow
//! subscriber misses events (it is told how many) instead of slowing agents down.

use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub host_id: Option<String>,
    /// `{"type": "...", ...}`, sent to subscribers as it is.
    pub body: Value,
    /// The replica that published it, when not this one.
    pub origin: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<FeedEvent>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new(1024)
    }
}

impl Feed {
    pub fn new(capacity: usize) -> Feed {
        Feed {
            tx: broadcast::channel(capacity).0,
        }
    }

    /// Publishes `{"type": kind, "host_id": .., "at": now, ...fields}`.
    pub fn publish(&self, kind: &str, host_id: Option<&str>, fields: Value) {
        let mut body =
            json!({ "type": kind, "host_id": host_id, "at": protocol::time::now_rfc3339() });
        if let (Some(b), Value::Object(f)) = (body.as_object_mut(), fields) {
            b.extend(f);
        }
        // No subscribers is fine.
        let _ = self.tx.send(Arc::new(FeedEvent {
            host_id: host_id.map(str::to_owned),
            body,
            origin: None,
        }));
    }

    /// Publishes an event replica `origin` published (as it sent it).
    pub fn republish(&self, origin: &str, host_id: Option<String>, body: Value) {
        let _ = self.tx.send(Arc::new(FeedEvent {
            host_id,
            body,
            origin: Some(origin.to_string()),
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.tx.subscribe()
    }
}
