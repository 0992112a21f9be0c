//! The live feed across replicas: every replica offers its own events at
//! [`FEED_PATH`] (`GET /internal/v1/feed`, cluster credential, one JSON line per event,
//! [`line_of`]), and follows that feed of every other live replica ([`follow`]),
//! republishing what it reads into its own [`Feed`] marked with the replica it came from.
//!
//! - Only a replica's own events are offered ([`line_of`] skips republished ones), so an
//!   event crosses one hop and never loops.
//! - One connection per live peer, opened again with backoff (100 ms doubling to 5 s) while
//!   the peer heartbeats; the follower of a peer that stops heartbeating (or restarts with a
//!   new epoch) is stopped within one refresh of the view.
//! - Memory is bounded: a line longer than [`MAX_LINE`] ends the connection, the offering
//!   side reads from the broadcast channel (a slow follower lags and is told how many events
//!   it missed, as a local subscriber is), and HTTP flow control does the rest. The offering
//!   side sends an empty line every [`KEEPALIVE`]; a connection silent for three of them is
//!   dropped and opened again.
//!
//! Owns: following the peers' feeds. Must not: filter for callers (the stream does, for
//! remote and local events alike), or offer a republished event again.

use axum::body::Body;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{credential, Cluster};
use crate::feed::{Feed, FeedEvent};
use crate::store::ReplicaRecord;

/// Where a replica offers its own events.
pub const FEED_PATH: &str = "/internal/v1/feed";
/// The longest line a follower reads.
pub const MAX_LINE: usize = 256 * 1024;
/// How often the offering side sends an empty line when there is nothing else.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// One event on the internal feed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Line {
    pub host_id: Option<String>,
    pub event: Value,
}

/// The line (with its newline) that offers `ev`; `None` for an event another replica
/// published (it is never offered again).
pub fn line_of(ev: &FeedEvent) -> Option<String> {
    if ev.origin.is_some() {
        return None;
    }
    let line = Line {
        host_id: ev.host_id.clone(),
        event: ev.body.clone(),
    };
    serde_json::to_string(&line).ok().map(|mut s| {
        s.push('\n');
        s
    })
}

type FeedClient = super::transport::ReplicaClient;

/// Follows the feed of every live peer until `stop` turns true.
pub async fn follow(cluster: Cluster, feed: Feed, stop: watch::Receiver<bool>) {
    let client = cluster.client();
    let mut followers: HashMap<(String, i64), JoinHandle<()>> = HashMap::new();
    let mut ticks = super::Ticks::new(cluster.interval(), stop);
    while ticks.next().await {
        let peers = cluster.peers();
        followers.retain(|(id, epoch), task| {
            let live = peers.iter().any(|p| p.id == *id && p.epoch == *epoch);
            if !live {
                tracing::info!(replica = %id, "no longer following the replica's feed");
                task.abort();
            }
            live && !task.is_finished()
        });
        for p in peers {
            let key = (p.id.clone(), p.epoch);
            if followers.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(follow_one(client.clone(), cluster.clone(), p, feed.clone()));
            followers.insert(key, task);
        }
    }
    for (_, t) in followers {
        t.abort();
    }
}

/// Follows one peer's feed, connecting again with backoff, until aborted.
async fn follow_one(client: FeedClient, cluster: Cluster, peer: ReplicaRecord, feed: Feed) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match read_feed(&client, &cluster, &peer, &feed).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::debug!(replica = %peer.id, error = %e, "following the replica's feed failed")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection to the peer's feed: republishes its lines until it ends. `Ok` when the
/// feed was open (the peer ended it).
async fn read_feed(
    client: &FeedClient,
    cluster: &Cluster,
    peer: &ReplicaRecord,
    feed: &Feed,
) -> Result<(), String> {
    let req = hyper::Request::get(format!("{}{FEED_PATH}", peer.advertise_url))
        .header(credential::HEADER, cluster.credential().expose())
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    tracing::info!(replica = %peer.id, "following the replica's feed");
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::time::timeout(KEEPALIVE * 3, body.frame())
            .await
            .map_err(|_| "the feed went silent".to_string())?;
        let Some(frame) = frame else {
            return Ok(());
        };
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(n) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=n).collect();
            republish(feed, &peer.id, &line[..n]);
        }
        if buf.len() > MAX_LINE {
            return Err("a line of the feed is too long".into());
        }
    }
}

fn republish(feed: &Feed, origin: &str, line: &[u8]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match serde_json::from_slice::<Line>(line) {
        Ok(l) => feed.republish(origin, l.host_id, l.event),
        Err(e) => tracing::debug!(replica = %origin, error = %e, "an unreadable feed line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_own_events_are_offered_and_read_back_as_remote() {
        let here = Feed::new(16);
        let mut rx = here.subscribe();
        here.publish(
            "health",
            Some("h1"),
            serde_json::json!({ "agent_id": "a1" }),
        );
        here.republish(
            "b",
            Some("h2".into()),
            serde_json::json!({ "type": "health" }),
        );
        let own = rx.recv().await.unwrap();
        let line = line_of(&own).expect("an own event is offered");
        assert!(line.ends_with('\n'));
        let remote = rx.recv().await.unwrap();
        assert_eq!(remote.origin.as_deref(), Some("b"));
        assert!(
            line_of(&remote).is_none(),
            "a republished event is never offered again"
        );

        let there = Feed::new(16);
        let mut rx = there.subscribe();
        republish(&there, "a", line.trim_end().as_bytes());
        republish(&there, "a", b"");
        republish(&there, "a", b"not json");
        let got = rx.recv().await.unwrap();
        assert_eq!(got.origin.as_deref(), Some("a"));
        assert_eq!(got.host_id.as_deref(), Some("h1"));
        assert_eq!(got.body["agent_id"], "a1");
        assert!(
            rx.try_recv().is_err(),
            "blank and unreadable lines are dropped"
        );
    }
}
