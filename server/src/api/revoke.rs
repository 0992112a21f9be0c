//! What a revocation ends, on every replica: the live sessions on this replica at once, and
//! on the others through a wake-up (`cluster::notify`), which [`listen`] applies there. A
//! session lives on one replica only (an agent's WebSocket, a followed stream, a hijacked
//! exec, the live feed), so each revocation is sent once to all and acted on where its
//! sessions are.
//!
//! Each function returns what ended here (the counts an answer shows); the wake-up to the
//! other replicas leaves before it returns, and PostgreSQL delivers it within milliseconds.
//!
//! Owns: pairing each local end with its wake-up, and applying the wake-ups of the others.
//! Must not: write the revocation (the handlers did, before calling here), or decide who may
//! revoke.

use crate::agents::AgentManager;
use crate::cluster::{Event, Notifier, WakeUp};
use crate::leases::Leases;
use crate::state::AppState;
use crate::store::{Role, Store};

/// The reason an agent hears when another replica revoked it.
const AGENT_REVOKED: &str = "agent revoked";
/// The reason an agent hears when its settings changed on another replica.
const RECONNECT: &str = "the agent's settings changed; reconnect";
/// The reason an agent hears when its token was rotated on another replica.
const TOKEN_ROTATED: &str = "the agent token was rotated; reconnect with the new token";

fn send(state: &AppState, w: WakeUp) {
    state.cluster.notifier().send(w);
}

/// The agent (row id `agent_ref`) was revoked, or its host deleted or rejected: its session
/// ends wherever it is. Returns whether it was held here.
pub fn agent(state: &AppState, agent_ref: &str, reason: &str) -> bool {
    send(
        state,
        WakeUp::RevokeAgent {
            agent: agent_ref.to_string(),
        },
    );
    state.agents.disconnect(agent_ref, reason)
}

/// Settings the agent's session was opened with changed: it ends wherever it is, and the
/// agent reconnects. Returns whether it was held here.
pub fn reconnect_agent(state: &AppState, agent_ref: &str, reason: &str) -> bool {
    send(
        state,
        WakeUp::ReconnectAgent {
            agent: agent_ref.to_string(),
        },
    );
    state.agents.disconnect(agent_ref, reason)
}

/// The agent's token changed: a session opened with a token no longer valid ends wherever
/// it is. `agent` is the agent's row as stored now.
pub fn agent_token(state: &AppState, agent: &crate::store::Agent, reason: &str) -> bool {
    send(
        state,
        WakeUp::AgentToken {
            agent: agent.id.clone(),
        },
    );
    state.agents.end_session_without_valid_token(agent, reason)
}

/// The API token was revoked: what it opened ends.
pub fn token(state: &AppState, token_id: &str, reason: &str) -> usize {
    send(
        state,
        WakeUp::RevokeToken {
            token: token_id.to_string(),
        },
    );
    state.leases.end_token(token_id, reason)
}

/// These browser sessions were revoked: what they opened ends.
pub fn sessions(state: &AppState, ids: &[String], reason: &str) -> usize {
    if ids.is_empty() {
        return 0;
    }
    send(
        state,
        WakeUp::RevokeSessions {
            sessions: ids.to_vec(),
        },
    );
    state.leases.end_sessions(ids, reason)
}

/// The user was deleted: every live session of theirs ends.
pub fn user(state: &AppState, name: &str, reason: &str) -> usize {
    send(
        state,
        WakeUp::RevokeUser {
            user: name.to_string(),
        },
    );
    state.leases.end_user(name, reason)
}

/// The user's role is now `role`: live sessions that need more end.
pub fn role_lowered(state: &AppState, name: &str, role: Role, reason: &str) -> usize {
    send(
        state,
        WakeUp::LowerRole {
            user: name.to_string(),
            role,
        },
    );
    state.leases.end_role_below(name, role, reason)
}

/// The host was deleted or rejected: live sessions on it end (its agents' sessions end
/// with [`agent`]).
pub fn host(state: &AppState, host_id: &str, reason: &str) -> usize {
    send(
        state,
        WakeUp::RevokeHost {
            host: host_id.to_string(),
        },
    );
    state.leases.end_host(host_id, reason)
}

/// Applies the other replicas' revocations here, for as long as the notifier lives.
pub fn listen(notifier: &Notifier, agents: AgentManager, leases: Leases, store: Store) {
    notifier.on(move |e| match e {
        Event::WakeUp(w) => apply(w, &agents, &leases, &store),
        Event::Resync => {
            let (agents, leases, store) = (agents.clone(), leases.clone(), store.clone());
            tokio::spawn(async move { recheck(&agents, &leases, &store).await });
        }
    });
}

/// Wake-ups may have been missed: every live session here is checked against the database
/// (a revoked agent or token, a token rotated, a user demoted or deleted, a host deleted).
async fn recheck(agents: &AgentManager, leases: &Leases, store: &Store) {
    for agent in agents.live_agents() {
        check_agent(agents, store, &agent).await;
    }
    leases.recheck_all().await;
}

/// The live session of agent `agent_ref` against its row: it ends when the agent is gone or
/// revoked, or when the token it opened with is no longer valid.
async fn check_agent(agents: &AgentManager, store: &Store, agent_ref: &str) {
    match store.get_agent_by_ref(agent_ref).await {
        Ok(Some(row)) if row.revoked_at.is_none() => {
            agents.end_session_without_valid_token(&row, TOKEN_ROTATED);
        }
        Ok(_) => {
            agents.disconnect(agent_ref, AGENT_REVOKED);
        }
        Err(e) => tracing::warn!(error = %e, "could not check a live agent session again"),
    }
}

fn apply(w: &WakeUp, agents: &AgentManager, leases: &Leases, store: &Store) {
    match w {
        WakeUp::RevokeAgent { agent } => {
            agents.disconnect(agent, AGENT_REVOKED);
        }
        WakeUp::ReconnectAgent { agent } => {
            agents.disconnect(agent, RECONNECT);
        }
        WakeUp::AgentToken { agent } => {
            if !agents.is_online(agent) {
                return;
            }
            let (agents, store, agent) = (agents.clone(), store.clone(), agent.clone());
            tokio::spawn(async move { check_agent(&agents, &store, &agent).await });
        }
        WakeUp::RevokeToken { token } => {
            leases.end_token(token, "token revoked");
        }
        WakeUp::RevokeSessions { sessions } => {
            leases.end_sessions(sessions, "signed out");
        }
        WakeUp::RevokeUser { user } => {
            leases.end_user(user, "the user was deleted");
        }
        WakeUp::LowerRole { user, role } => {
            leases.end_role_below(user, *role, "the user's role was lowered");
        }
        WakeUp::RevokeHost { host } => {
            leases.end_host(host, "host deleted");
        }
        _ => {}
    }
}
