//! Reads several handlers share: a host by id (`not_found` otherwise), and the status of an
//! agent as the API shows it, cluster-wide: a session on this replica, or on another replica
//! that still heartbeats.
//!
//! Owns: these answers, so handlers do not import each other. Must not: write.

use serde_json::{json, Value};

use crate::cluster::Holder;
use crate::error::ApiResult;
use crate::hosts::host_not_found;
use crate::state::AppState;
use crate::store::{Agent, Host};

/// The host `id`, read from the database.
pub(super) async fn host(state: &AppState, id: &str) -> ApiResult<Host> {
    Ok(state
        .store
        .get_host(id)
        .await?
        .ok_or_else(|| host_not_found(id))?)
}

/// `online` (live, heartbeating), `offline` (live socket, silent), `disconnected`, `revoked`.
/// A session held by another replica counts while that replica heartbeats; its agent's
/// silence is what that replica wrote to the agent's row.
pub(super) fn agent_status(state: &AppState, a: &Agent) -> &'static str {
    if a.revoked_at.is_some() {
        return "revoked";
    }
    match state.agents.status(&a.id) {
        Some(l) if l.online => "online",
        Some(_) => "offline",
        None => match remote_holder(state, &a.id) {
            Some(_) if a.status == "online" => "online",
            Some(_) => "offline",
            None => "disconnected",
        },
    }
}

/// Whether the agent has a session on any live replica.
pub(super) fn agent_connected(state: &AppState, agent_ref: &str) -> bool {
    state.agents.status(agent_ref).is_some() || remote_holder(state, agent_ref).is_some()
}

/// Another replica, still heartbeating, that holds the agent's session.
pub(super) fn remote_holder(state: &AppState, agent_ref: &str) -> Option<Holder> {
    state
        .cluster
        .holder_of_agent(agent_ref)
        .filter(|h| h.replica.id != state.cluster.id())
}

/// The replica holding the agent's session, `{"id", "region"}`, or `null`.
pub(super) fn replica_json(state: &AppState, agent_ref: &str) -> Value {
    if state.agents.status(agent_ref).is_some() {
        let me = state.cluster.identity();
        return json!({ "id": me.id, "region": me.region });
    }
    match remote_holder(state, agent_ref) {
        Some(h) => json!({ "id": h.replica.id, "region": h.replica.region }),
        None => Value::Null,
    }
}
