//! `GET /ws/agents/{agent_id}`: the agent's WebSocket, and `GET /ws/enrol`, where an agent
//! without credentials enrols itself once ([`enrol`]).
//!
//! Owns: the session's life: `auth` first (within `auth_timeout`), token and allowlist
//! checks ([`handshake`]), the auth response, then one task per session that reads frames,
//! writes queued commands, pings (RTT), watches heartbeats (offline after 3 missed intervals)
//! and idle time, rate-limits the agent ([`session_loop`]), acts on each message
//! ([`messages`]), and cleans up when the socket closes. [`AgentEndpoint`] holds what the endpoint
//! works with; the session registry is reached only through the [`AgentManager`]'s methods.
//! Must not: run Docker operations itself (the agent does), keep the command history (an
//! answer nobody waits for goes up as a signal), or block on slow consumers.

mod enrol;
mod handshake;
mod messages;
mod session_loop;

pub use enrol::{enrol_ws, MAX_ENROL_SIZE};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use protocol::{
    AgentSettings, AuthPayload, AuthResponsePayload, AuthStatus, Envelope, ErrorBody, ErrorCode,
    ErrorPayload, Message, MAX_MESSAGE_SIZE, PROTOCOL_VERSION, STREAMS_PROTOCOL_VERSION,
};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::sampling::FailureSampler;
use super::session::{NewSession, Session};
use super::signing::{AgentNonces, Signer};
use super::{effective_settings, AgentManager};
use crate::audit::Auditor;
use crate::auth::{AgentAuthFailure, FailureLimiter, MAX_AGENT_ID_LEN};
use crate::cluster::{ClaimError, Cluster};
use crate::config::{AgentConfig, Seconds};
use crate::crypto::KeyBox;
use crate::error::ApiError;
use crate::feed::Feed;
use crate::forwarded::ClientIp;
use crate::metrics::{Dir, Metrics};
use crate::store::{Agent, Store};

/// Close codes (RFC 6455).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;

/// The protocol version this server speaks: the protocol crate's, and at least the one that
/// adds passthrough streams (implemented here).
pub const SERVER_PROTOCOL_VERSION: u32 = if PROTOCOL_VERSION > STREAMS_PROTOCOL_VERSION {
    PROTOCOL_VERSION
} else {
    STREAMS_PROTOCOL_VERSION
};

/// How long a closing socket waits for the peer's Close before the connection is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What the agent endpoint works with. Cheap to clone.
#[derive(Clone)]
pub struct AgentEndpoint(Arc<Ctx>);

/// The parts an [`AgentEndpoint`] works with (private to this module).
pub struct Ctx {
    agents: AgentManager,
    config: AgentConfig,
    store: Store,
    metrics: Arc<Metrics>,
    feed: Feed,
    audit: Auditor,
    keys: KeyBox,
    /// This server's id, recorded with each session (sessions of a crashed run are reset).
    server_id: String,
    /// Presence: each session is claimed for this replica at the handshake and released at
    /// close.
    cluster: Cluster,
    auth_limiter: FailureLimiter,
    /// Failed enrolments per source address (apart from failed handshakes).
    enrol_limiter: FailureLimiter,
    /// Which failed handshakes are written down.
    failure_sampler: FailureSampler,
    /// Which refused enrolments are written down (apart, so that failed handshakes never
    /// hide them).
    enrol_sampler: FailureSampler,
    nonces: AgentNonces,
    /// Handshakes at their database work, half the pool at a time (see [`handshake`]).
    handshakes: handshake::Turns,
}

impl std::ops::Deref for AgentEndpoint {
    type Target = Ctx;
    fn deref(&self) -> &Ctx {
        &self.0
    }
}

impl std::fmt::Debug for AgentEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentEndpoint")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl AgentEndpoint {
    pub fn new(
        agents: AgentManager,
        store: Store,
        metrics: Arc<Metrics>,
        feed: Feed,
        audit: Auditor,
        keys: KeyBox,
        cluster: Cluster,
    ) -> AgentEndpoint {
        let config = agents.config().clone();
        AgentEndpoint(Arc::new(Ctx {
            auth_limiter: FailureLimiter::new(config.auth_failures_per_minute),
            enrol_limiter: FailureLimiter::new(config.auth_failures_per_minute),
            failure_sampler: FailureSampler::default(),
            enrol_sampler: FailureSampler::default(),
            nonces: AgentNonces::default(),
            handshakes: handshake::Turns::for_pool(store.max_connections()),
            agents,
            config,
            store,
            metrics,
            feed,
            audit,
            keys,
            server_id: cluster.id().to_string(),
            cluster,
        }))
    }
}

pub async fn agent_ws(
    State(ep): State<AgentEndpoint>,
    Path(agent_id): Path<String>,
    ClientIp(ip): ClientIp,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    // Before any other work: an id no agent can have is refused without a lookup or a row.
    if !crate::auth::valid_agent_id(&agent_id) {
        ep.metrics.auth_failure();
        ep.metrics.auth_failure_unrecorded();
        return ApiError::bad_request(format!(
            "agent_id must be 1 to {MAX_AGENT_ID_LEN} of [A-Za-z0-9._-]"
        ))
        .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    if !ep.config.enable_agent_mode {
        return ApiError::not_found("agent mode is disabled on this server").into_response();
    }
    if ep.agents.is_shutting_down() {
        return ApiError::new(ErrorCode::AgentOffline, "the server is shutting down")
            .into_response();
    }
    // Small buffers: thousands of mostly idle agents. Writes go out at once (no batching).
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE_SIZE + 64 * 1024)
        .max_message_size(MAX_MESSAGE_SIZE)
        .max_frame_size(MAX_MESSAGE_SIZE)
        .on_upgrade(move |socket| async move {
            serve_session(ep, agent_id, ip, socket).await;
        })
}

/// One agent's connection, from its `auth` to the cleanup after its socket closed.
async fn serve_session(
    ep: AgentEndpoint,
    path_agent_id: String,
    ip: Option<IpAddr>,
    mut socket: WebSocket,
) {
    // Boxed: its state (database lookups, audit) is the largest of the session and would
    // otherwise stay in every idle session's task for as long as it lives.
    let Some((auth_env, auth, agent, turn)) = Box::pin(handshake::authenticate(
        &ep,
        &path_agent_id,
        ip,
        &mut socket,
    ))
    .await
    else {
        return;
    };
    let (heartbeat, command_timeout) = effective_settings(&ep.config, &agent);
    let agreed = auth
        .protocol_version
        .unwrap_or(1)
        .min(SERVER_PROTOCOL_VERSION);
    let (session, mut queues) = ep.agents.register(NewSession {
        agent_ref: agent.id.clone(),
        agent_id: agent.agent_id.clone(),
        host_id: agent.host_id.clone(),
        token_hash: crate::auth::hash_token(auth.auth_token.expose()),
        version: auth.version.clone(),
        capabilities: auth.capabilities.clone(),
        heartbeat,
        command_timeout,
        protocol_version: agreed,
        signer: handshake::signer_of(&ep, &agent),
    });
    // A revocation, rotation or move that landed between the token check and the
    // registration found no session to close. Look again now that the session is registered:
    // whatever lands after this look finds the session and closes it.
    if let Err(failure) = handshake::recheck(&ep, &agent, &auth, ip).await {
        ep.agents.unregister(&session);
        drop(turn);
        if failure == AgentAuthFailure::Unconfirmed {
            let why = "database busy: try again later";
            handshake::defer(&ep, &mut socket, &agent.agent_id, why).await;
            return;
        }
        tracing::warn!(agent_id = %agent.agent_id, reason = failure.reason(), "agent lost its access while authenticating");
        handshake::refuse(&ep, &mut socket, &auth_env.id, failure).await;
        return;
    }
    if !claim(&ep, &agent, &session, &mut socket).await {
        return;
    }
    record_connected(&ep, &agent, &session, &auth, ip).await;
    drop(turn);
    let reply = Envelope::new(
        auth_env.id.clone(),
        Message::AuthResponse(AuthResponsePayload {
            status: AuthStatus::Authenticated,
            session_id: Some(session.session_id.clone()),
            config: Some(AgentSettings {
                heartbeat_interval: Some(Seconds(heartbeat).whole_secs()),
                command_timeout: Some(Seconds(command_timeout).whole_secs()),
            }),
            protocol_version: Some(agreed),
            error: None,
        }),
    );
    let reason = if send_signed(&ep, session.signer.as_ref(), &mut socket, &reply).await {
        // Queued commands for this host go out now, in order, after the auth response.
        if let Some(h) = &agent.host_id {
            ep.agents.host_online(h);
        }
        session_loop::run_session(&ep, &session, &mut socket, &mut queues).await
    } else {
        "send failed".to_string()
    };
    // Cleanup: the socket is gone (or being closed).
    let current = ep.agents.unregister(&session);
    record_disconnected(&ep, &agent, &session, current, &reason, ip).await;
    ep.cluster.release(&agent.id, &session.session_id).await;
}

/// Claims the session for this replica. Refused only when a newer start of this replica id
/// replaced this process: the session is closed (the agent reconnects, to the newer one). A
/// failing database does not end the session (presence is written again at the next
/// connection).
async fn claim(
    ep: &AgentEndpoint,
    agent: &Agent,
    session: &Session,
    socket: &mut WebSocket,
) -> bool {
    match ep
        .cluster
        .claim(&agent.id, agent.host_id.as_deref(), &session.session_id)
        .await
    {
        Ok(()) => true,
        Err(ClaimError::Store(e)) => {
            tracing::error!(agent_id = %agent.agent_id, error = %e, "could not record the agent's presence");
            true
        }
        Err(e @ ClaimError::Replaced(_)) => {
            tracing::error!(agent_id = %agent.agent_id, error = %e, "agent session refused");
            ep.agents.unregister(session);
            close(socket, CLOSE_GOING_AWAY, "this server replica was replaced").await;
            false
        }
    }
}

/// A new session: metrics, the agent's row, its event, the audit, the live feed.
async fn record_connected(
    ep: &AgentEndpoint,
    agent: &Agent,
    session: &Session,
    auth: &AuthPayload,
    ip: Option<IpAddr>,
) {
    let reconnection = agent.connected_at.is_some();
    ep.metrics.agent_connected(reconnection);
    let target = auth
        .target
        .as_deref()
        .filter(|t| crate::releases::shelf::valid_name(t));
    if let Err(e) = ep
        .store
        .agent_connected(
            &agent.id,
            &session.session_id,
            &ep.server_id,
            &auth.version,
            &auth.capabilities,
            target,
        )
        .await
    {
        tracing::error!(error = %e, "could not record agent connection");
    }
    if let Some(u) = &auth.update {
        messages::update_progress(ep, session, u).await;
    }
    let host = agent.host_id.as_deref();
    if let Some(h) = host {
        record_agent_labels(ep, agent, h, &auth.labels).await;
    }
    let data = json!({ "session_id": session.session_id, "version": auth.version, "capabilities": auth.capabilities,
        "source_ip": ip.map(|i| i.to_string()), "reconnection": reconnection });
    let _ = ep
        .store
        .add_agent_event(Some(&agent.id), "connected", &data)
        .await;
    ep.audit
        .agent(
            &agent.agent_id,
            "agent.connect",
            host,
            "success",
            None,
            None,
            ip,
        )
        .await;
    tracing::info!(agent_id = %agent.agent_id, session = %session.session_id, version = %auth.version, "agent connected");
    ep.feed.publish(
        "agent_online",
        host,
        json!({ "agent_id": agent.agent_id, "version": auth.version, "capabilities": auth.capabilities }),
    );
}

/// The labels the agent reported, stored as its host's agent labels when they are valid;
/// invalid ones leave the stored labels as they were (a warning and an agent event say why).
async fn record_agent_labels(
    ep: &AgentEndpoint,
    agent: &Agent,
    host_id: &str,
    labels: &std::collections::BTreeMap<String, String>,
) {
    match crate::labels::check(labels) {
        Ok(()) => {
            if let Err(e) = ep.store.set_agent_labels(host_id, labels).await {
                tracing::error!(error = %e, "could not record the agent's labels");
            }
        }
        Err(e) => {
            tracing::warn!(agent_id = %agent.agent_id, error = %e, "the agent's labels were refused");
            let data = json!({ "error": e.0 });
            let _ = ep
                .store
                .add_agent_event(Some(&agent.id), "labels_refused", &data)
                .await;
        }
    }
}

/// A session ended (`current`: it was still the agent's newest one).
async fn record_disconnected(
    ep: &AgentEndpoint,
    agent: &Agent,
    session: &Session,
    current: bool,
    reason: &str,
    ip: Option<IpAddr>,
) {
    ep.metrics.agent_disconnected();
    if let Err(e) = ep
        .store
        .agent_disconnected(&agent.id, &session.session_id)
        .await
    {
        tracing::error!(error = %e, "could not record agent disconnection");
    }
    let _ = ep
        .store
        .add_agent_event(
            Some(&agent.id),
            "disconnected",
            &json!({ "session_id": session.session_id, "reason": reason }),
        )
        .await;
    let host = agent.host_id.as_deref();
    let detail = Some(json!({ "reason": reason }));
    ep.audit
        .agent(
            &agent.agent_id,
            "agent.disconnect",
            host,
            "success",
            None,
            detail,
            ip,
        )
        .await;
    if current {
        ep.feed.publish(
            "agent_offline",
            host,
            json!({ "agent_id": agent.agent_id, "reason": reason }),
        );
    }
    tracing::info!(agent_id = %agent.agent_id, session = %session.session_id, %reason, "agent disconnected");
}

async fn send(ep: &AgentEndpoint, socket: &mut WebSocket, env: &Envelope) -> bool {
    send_signed(ep, None, socket, env).await
}

/// Sends `env`, with `nonce` and `sig` when the agent signs its messages.
async fn send_signed(
    ep: &AgentEndpoint,
    signer: Option<&Signer>,
    socket: &mut WebSocket,
    env: &Envelope,
) -> bool {
    let text = match signer {
        None => env.encode(),
        Some(s) => s.sign_text(&env.encode()),
    };
    ep.metrics.ws(Dir::Out, text.len());
    socket.send(WsMessage::Text(text.into())).await.is_ok()
}

/// Sends a Close frame, then reads and discards until the peer answers with its own Close
/// (at most `CLOSE_LINGER`), as RFC 6455 asks. Dropping the connection at once while the
/// peer still writes (a flooding agent, say) makes the kernel reset it, and the reset can
/// overtake the Close frame, so the agent would never learn the code and the reason.
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.chars().take(100).collect::<String>().into(),
    };
    if socket.send(WsMessage::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, WsMessage::Close(_)) {
                return;
            }
        }
    })
    .await;
}

fn error_env(ref_id: Option<String>, error: ErrorBody) -> Envelope {
    Envelope::new(
        uuid::Uuid::new_v4().to_string(),
        Message::Error(ErrorPayload { error, ref_id }),
    )
}
