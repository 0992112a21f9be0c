//! The REST API (`/api/v1/...`), the user WebSocket, and the operational endpoints.
//!
//! Owns: routing, request and response JSON, the caller extractor ([`caller`]: bearer token
//! or session cookie), paging ([`paging`]), role checks and auditing of user actions on hosts,
//! agents, tokens, groups, users and sessions, and serving the embedded web UI ([`ui`]).
//! Must not: take a step of a command's life (the `commands` module owns it), reach Docker
//! except through a host's adapter, or touch the agent registry except through
//! `AgentManager`'s methods.

mod agent_updates;
mod agents;
mod bulk;
mod caller;
pub mod enrolment;
mod groups;
mod hosts;
mod lookup;
mod operations;
mod paging;
mod passthrough;
mod peer_feed;
mod records;
mod releases;
mod replicas;
pub(crate) mod revoke;
mod rollout_pages;
mod session;
mod stacks;
mod stream;
mod system;
mod tokens;
pub mod ui;
mod users;

pub use caller::Caller;
pub use tokens::issue_user_token as tokens_issue;
pub use users::create_user;

use axum::routing::{any, delete, get, post, put};
use axum::Router;

use crate::state::AppState;

/// Unix ms as RFC 3339, or null.
pub(crate) fn ts(ms: Option<i64>) -> serde_json::Value {
    match ms {
        Some(ms) => serde_json::Value::String(protocol::time::format_rfc3339(
            ms.div_euclid(1000),
            ms.rem_euclid(1000) as u32,
        )),
        None => serde_json::Value::Null,
    }
}

/// Parses a time filter: Unix milliseconds or RFC 3339.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    protocol::time::parse_rfc3339(s).map(|secs| secs * 1000)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route("/ws/agents/{agent_id}", get(crate::agents::ws::agent_ws))
        .route("/ws/enrol", get(crate::agents::ws::enrol_ws))
        .merge(host_routes())
        .merge(people_routes())
        .merge(fleet_routes())
        .route("/assets/{version}/{*path}", get(ui::asset))
        .fallback(ui::fallback)
}

/// Hosts, their Docker API and their agents, and the releases agents update to.
fn host_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/hosts", get(hosts::list).post(hosts::create))
        .route(
            "/api/v1/hosts/{id}",
            get(hosts::get_one)
                .patch(hosts::patch)
                .delete(hosts::delete),
        )
        .route("/api/v1/hosts/{id}/operations", post(operations::post))
        .route("/api/v1/hosts/{id}/approve", post(enrolment::approve))
        .route("/api/v1/hosts/{id}/reject", post(enrolment::reject))
        .route("/api/v1/hosts/{id}/events", get(records::host_events))
        .route("/api/v1/hosts/{id}/commands", get(records::host_commands))
        .route("/api/v1/hosts/{id}/docker", any(passthrough::handle))
        .route("/internal/v1/hosts/{id}/run", post(replicas::run))
        .route(crate::cluster::peer_feed::FEED_PATH, get(peer_feed::offer))
        .route(
            "/internal/v1/hosts/{id}/docker/{*rest}",
            any(replicas::docker),
        )
        .route(
            "/api/v1/hosts/{id}/docker/{*rest}",
            any(passthrough::handle),
        )
        .route(
            "/api/v1/hosts/{id}/exec/{exec_id}/terminal",
            get(passthrough::terminal),
        )
        .route("/api/v1/agents", get(agents::list).post(agents::create))
        .route(
            "/api/v1/agents/{agent_id}",
            get(agents::get_one)
                .patch(agents::patch)
                .delete(agents::revoke),
        )
        .route(
            "/api/v1/agents/{agent_id}/rotate-token",
            post(agents::rotate),
        )
        .route(
            "/api/v1/agents/{agent_id}/rotate-signing-key",
            post(agents::rotate_signing_key),
        )
        .route("/api/v1/agents/{agent_id}/events", get(agents::events))
        .route(
            "/api/v1/agents/{agent_id}/update",
            post(releases::update_agent),
        )
        .route(
            "/api/v1/agent-updates",
            get(agent_updates::list).post(agent_updates::create),
        )
        .route("/api/v1/agent-updates/{id}", get(agent_updates::get_one))
        .route(
            "/api/v1/agent-updates/{id}/cancel",
            post(agent_updates::cancel),
        )
        .route("/api/v1/releases", get(releases::list))
        .route(
            "/api/v1/releases/{version}/{target}/signature",
            get(releases::signature),
        )
        .route(
            "/api/v1/releases/{version}/{target}/binary",
            get(releases::binary),
        )
}

/// Tokens, enrolment tokens, sign-in sessions and users.
fn people_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route(
            "/api/v1/enrolment-tokens",
            get(enrolment::list).post(enrolment::create),
        )
        .route(
            "/api/v1/enrolment-tokens/{id}",
            get(enrolment::get_one).delete(enrolment::revoke),
        )
        .route(
            "/api/v1/enrolment-tokens/{id}/revoke",
            post(enrolment::revoke),
        )
        .route(
            "/api/v1/session",
            get(session::show)
                .post(session::create)
                .delete(session::delete),
        )
        .route("/api/v1/me", get(session::show))
        .route("/api/v1/me/password", put(users::change_password))
        .route(
            "/api/v1/me/tokens",
            get(users::my_tokens).post(users::create_my_token),
        )
        .route("/api/v1/me/tokens/{id}", delete(users::revoke_my_token))
        .route("/api/v1/users", get(users::list).post(users::create))
        .route(
            "/api/v1/users/{name}",
            axum::routing::patch(users::patch).delete(users::delete),
        )
        .route(
            "/api/v1/users/{name}/sessions",
            get(users::sessions).delete(users::revoke_sessions),
        )
}

/// Groups, bulk operations, the audit log, command records, the live feed and stacks.
fn fleet_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/groups", get(groups::list).post(groups::create))
        .route(
            "/api/v1/groups/{id}",
            get(groups::get_one)
                .patch(groups::patch)
                .delete(groups::delete),
        )
        .route(
            "/api/v1/bulk-operations",
            get(bulk::list).post(bulk::create),
        )
        .route("/api/v1/bulk-operations/{id}", get(bulk::get_one))
        .route("/api/v1/bulk-operations/{id}/cancel", post(bulk::cancel))
        .route("/api/v1/audit", get(records::audit))
        .route("/api/v1/audit/verify", get(records::audit_verify))
        .route("/api/v1/commands/{id}", get(records::command))
        .route("/api/v1/stream", get(stream::stream))
        .route("/api/v1/stacks", get(stacks::list).post(stacks::create))
        .route(
            "/api/v1/stacks/{name}",
            get(stacks::get_one)
                .put(stacks::update)
                .delete(stacks::delete),
        )
        .route("/api/v1/stacks/{name}/redeploy", post(stacks::redeploy))
        .route(
            "/api/v1/registries",
            get(stacks::registries).post(stacks::add_registry),
        )
        .route(
            "/api/v1/registries/{id}",
            axum::routing::delete(stacks::delete_registry),
        )
}
