//! Docker Engine API passthrough streams (protocol version 2): each `stream_open` of the
//! server is one HTTP request to the daemon on its own connection (plain GET and HEAD requests
//! reuse kept-alive ones), multiplexed over the agent's single WebSocket.
//!
//! [`open`] checks a `stream_open` and starts its thread; [`hub`] holds the session's open
//! streams, flow control and the queues towards the server; [`worker`] runs one stream.
//!
//! Threads: the session thread calls [`open`] and the hub's `on_*` handlers and never blocks
//! in them; each stream runs on its own small-stack thread ([`worker`]), taken from the session's
//! idle stream threads when one waits ([`spare`]), plus one more while a request body or a
//! hijacked connection's input is written to the daemon. Must not: write to
//! the WebSocket (the session does), or decide policy (that is [`crate::policy`]).

pub mod hub;
mod spare;
pub mod worker;

pub use hub::{Hub, Item, Out};

use protocol::passthrough::{check_query, classify, Refusal};
use protocol::{ErrorBody, ErrorCode, StreamOpenPayload};
use std::sync::Arc;

/// Stack of a stream's main thread (HTTP framing, JSON policy checks).
pub(crate) const MAIN_STACK: usize = 128 * 1024;

/// `stream_open`: validates, applies the local policy, and starts the stream's thread.
pub fn open(hub: &Arc<Hub>, open: StreamOpenPayload) {
    let id = open.stream_id;
    if !hub.id_free(id) {
        return;
    }
    let (path, query) = match open.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (open.path.as_str(), None),
    };
    let checked =
        classify(&open.method, path).and_then(|r| query.map_or(Ok(()), check_query).map(|_| r));
    let route = match checked {
        Ok(r) => r,
        Err(e) => {
            let status = match e {
                Refusal::BadPath(_) => 400,
                Refusal::NotAllowed { .. } => 403,
            };
            log::info!("stream {id}: refused {} {path}: {e}", open.method);
            hub.refuse_now(id, status, &e.to_string());
            return;
        }
    };
    if let Err(rule) = hub.agent.config.policy.check_route(&route) {
        log::info!(
            "stream {id}: {} {path} forbidden by agent policy: {rule}",
            open.method
        );
        hub.refuse_now(id, 403, &format!("forbidden by agent policy: {rule}"));
        return;
    }
    let (ctl, rx) = hub.insert(id);
    log::debug!("stream {id}: {} {} ({})", open.method, path, route.action);
    let (h, c) = (hub.clone(), ctl.clone());
    let spawned = hub.spares.run(
        "stream",
        Box::new(move || worker::stream_thread(h, c, open, route, rx)),
    );
    if let Err(e) = spawned {
        log::warn!("stream {id}: cannot start a thread: {e}");
        hub.remove(&ctl);
        hub.end_now(
            id,
            ErrorBody::new(
                ErrorCode::RateLimited,
                format!("the agent cannot start a thread for the stream: {e}"),
            ),
        );
    }
}
