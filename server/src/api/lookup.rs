//! Reads several handlers share: a host by id (`not_found` otherwise) and the status of an
//! agent as the API shows it.
//!
//! Owns: these two answers, so handlers do not import each other. Must not: write.

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
pub(super) fn agent_status(state: &AppState, a: &Agent) -> &'static str {
    if a.revoked_at.is_some() {
        return "revoked";
    }
    match state.agents.status(&a.id) {
        Some(l) if l.online => "online",
        Some(_) => "offline",
        None => "disconnected",
    }
}
