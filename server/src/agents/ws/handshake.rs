//! The first message of an agent's socket: `auth`, read within `auth_timeout`, checked
//! against the agent's row (token, expiry, revocation, allowlist, signature), and answered
//! with `rejected` on failure. Failed handshakes are counted, limited per address and
//! sampled into `agent_events` and the audit log (see `super::super::sampling`).
//!
//! Handshakes take turns ([`Turns`]): at most half the database pool's connections' worth
//! of them do their database work at once, the others wait (FIFO) up to [`TURN_WAIT`]. One
//! that gets no turn in time, or whose lookup the database did not answer, is closed with
//! 1013 (try again later) and no `auth_response`, so the agent retries after its ordinary
//! backoff: a reconnect storm of thousands of agents queues here instead of exhausting the
//! pool, and a busy server never tells an agent that its credentials are wrong.
//!
//! Owns: the checks before a session exists, the turns, and the check again right after
//! it registered. Must not: register sessions (the caller does) or tell a wrong token
//! anything about the agent.

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket};
use protocol::{
    AuthPayload, AuthResponsePayload, AuthStatus, Envelope, ErrorBody, ErrorCode, Message,
};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::super::sampling::Sample;
use super::super::signing::{self, Signer};
use super::{close, send, AgentEndpoint, CLOSE_POLICY, CLOSE_TOO_BIG, SERVER_PROTOCOL_VERSION};
use crate::auth::{verify_agent_token, AgentAuthFailure, MAX_AGENT_ID_LEN};
use crate::metrics::Dir;
use crate::store::Agent;

/// The largest `auth` message accepted before the agent is known.
const MAX_AUTH_SIZE: usize = 16 * 1024;

/// RFC 6455 "Try Again Later": the server cannot serve this handshake now.
pub(super) const CLOSE_TRY_AGAIN: u16 = 1013;

/// How long a handshake waits for its turn: well below the 30 s an agent waits for its
/// `auth_response`, long enough to drain a queue of thousands at the pace the database takes.
pub(super) const TURN_WAIT: Duration = Duration::from_secs(15);

/// The turns of handshakes at their database work (lookups, the session's rows, events,
/// audit): half the pool's connections, at least one, so that heartbeats, commands and the
/// API keep the other half while a storm of agents reconnects.
#[derive(Debug)]
pub(super) struct Turns(Arc<Semaphore>);

/// A handshake's turn; dropping it lets the next one in.
pub(super) type Turn = OwnedSemaphorePermit;

impl Turns {
    pub(super) fn for_pool(max_connections: u32) -> Turns {
        let n = (max_connections / 2).max(1) as usize;
        Turns(Arc::new(Semaphore::new(n)))
    }

    /// A turn within `wait` (first come, first served), or `None`.
    async fn take(&self, wait: Duration) -> Option<Turn> {
        match tokio::time::timeout(wait, self.0.clone().acquire_owned()).await {
            Ok(Ok(turn)) => Some(turn),
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

/// Closes a handshake the server cannot serve now with 1013 and no `auth_response`: the
/// agent's backoff brings it back. Not an authentication failure: nothing is counted
/// against the agent or its address.
pub(super) async fn defer(ep: &AgentEndpoint, socket: &mut WebSocket, agent_id: &str, why: &str) {
    ep.metrics.handshake_deferred();
    tracing::debug!(
        agent_id,
        reason = why,
        "agent handshake deferred: try again later"
    );
    close(socket, CLOSE_TRY_AGAIN, why).await;
}

/// Reads and checks the first message, in its turn. On failure the socket is answered and
/// closed. The turn comes back with the agent: the caller holds it until the session's rows
/// are written.
pub(super) async fn authenticate(
    ep: &AgentEndpoint,
    path_agent_id: &str,
    ip: Option<IpAddr>,
    socket: &mut WebSocket,
) -> Option<(Envelope, AuthPayload, Agent, Turn)> {
    let text = read_first(ep, path_agent_id, ip, socket).await?;
    let (env, auth) = decode_auth(ep, path_agent_id, ip, socket, &text).await?;
    let Some(turn) = ep.handshakes.take(TURN_WAIT).await else {
        defer(ep, socket, path_agent_id, "server busy: try again later").await;
        return None;
    };
    // Only failures count against the address, and only failures are refused for it: an
    // agent with a valid token connects whatever others did from the same address.
    let (failure, agent) = match check(ep, path_agent_id, &auth, &text, ip).await {
        Ok(agent) => return Some((env, auth, agent, turn)),
        Err((AgentAuthFailure::Unconfirmed, _)) => {
            drop(turn);
            defer(ep, socket, path_agent_id, "database busy: try again later").await;
            return None;
        }
        Err((_, agent)) if ip.is_some_and(|ip| ep.auth_limiter.blocked(ip)) => {
            (AgentAuthFailure::RateLimited, agent)
        }
        Err(e) => e,
    };
    let detail = if auth.agent_id != path_agent_id {
        let named: String = auth.agent_id.chars().take(MAX_AGENT_ID_LEN).collect();
        format!(
            "{} (path agent_id {:?} differs from auth agent_id {:?})",
            failure.as_str(),
            path_agent_id,
            named
        )
    } else {
        failure.as_str().to_string()
    };
    let event = "auth_failed";
    record_failure(ep, path_agent_id, agent.as_ref(), ip, event, &detail).await;
    // The answer and the close (which waits for the agent's Close) need no database.
    drop(turn);
    refuse(ep, socket, &env.id, failure).await;
    None
}

/// A first message that is no `auth` at all: recorded, answered (when `answer` says how) and
/// closed.
#[allow(clippy::too_many_arguments)]
async fn refuse_first(
    ep: &AgentEndpoint,
    socket: &mut WebSocket,
    path_agent_id: &str,
    ip: Option<IpAddr>,
    event: &str,
    detail: &str,
    answer: Option<(&str, ErrorBody)>,
    close_with: (u16, &str),
) {
    record_failure(ep, path_agent_id, None, ip, event, detail).await;
    if let Some((id, body)) = answer {
        send(ep, socket, &rejected(id, body)).await;
    }
    close(socket, close_with.0, close_with.1).await;
}

/// The first frame's text, within `auth_timeout` and [`MAX_AUTH_SIZE`].
async fn read_first(
    ep: &AgentEndpoint,
    path_agent_id: &str,
    ip: Option<IpAddr>,
    socket: &mut WebSocket,
) -> Option<Utf8Bytes> {
    let first = tokio::time::timeout(ep.config.auth_timeout.get(), socket.recv()).await;
    let (event, detail, answer, close_with) = match first {
        Ok(Some(Ok(WsMessage::Text(t)))) if t.len() <= MAX_AUTH_SIZE => {
            ep.metrics.ws(Dir::In, t.len());
            return Some(t);
        }
        Ok(None) | Ok(Some(Err(_))) => return None,
        Err(_) => (
            "auth_timeout",
            "no auth message in time",
            Some(ErrorBody::new(
                ErrorCode::Timeout,
                "auth must be the first message",
            )),
            (CLOSE_POLICY, "auth timeout"),
        ),
        Ok(Some(Ok(WsMessage::Text(_)))) => (
            "auth_invalid",
            "auth message too large",
            None,
            (CLOSE_TOO_BIG, "auth message too large"),
        ),
        Ok(Some(Ok(_))) => (
            "auth_invalid",
            "first frame is not a text auth message",
            Some(ErrorBody::new(
                ErrorCode::Unauthorized,
                "the first message must be auth",
            )),
            (CLOSE_POLICY, "not authenticated"),
        ),
    };
    let answer = answer.map(|b| ("auth", b));
    refuse_first(
        ep,
        socket,
        path_agent_id,
        ip,
        event,
        detail,
        answer,
        close_with,
    )
    .await;
    None
}

/// The first message as an envelope holding `auth`.
async fn decode_auth(
    ep: &AgentEndpoint,
    path_agent_id: &str,
    ip: Option<IpAddr>,
    socket: &mut WebSocket,
    text: &str,
) -> Option<(Envelope, AuthPayload)> {
    let not_auth = (CLOSE_POLICY, "not authenticated");
    let env = match Envelope::decode(text.as_bytes()) {
        Ok(env) => env,
        Err(e) => {
            let body = ErrorBody::new(
                ErrorCode::Unauthorized,
                format!("the first message must be auth: {e}"),
            );
            let detail = e.to_string();
            let answer = Some(("auth", body));
            refuse_first(
                ep,
                socket,
                path_agent_id,
                ip,
                "auth_invalid",
                &detail,
                answer,
                not_auth,
            )
            .await;
            return None;
        }
    };
    match &env.message {
        Message::Auth(a) => Some((env.clone(), a.clone())),
        other => {
            let msg = format!(
                "the first message must be auth, not {}",
                other.message_type().as_str()
            );
            let answer = Some((
                env.id.as_str(),
                ErrorBody::new(ErrorCode::Unauthorized, msg.clone()),
            ));
            refuse_first(
                ep,
                socket,
                path_agent_id,
                ip,
                "auth_invalid",
                &msg,
                answer,
                not_auth,
            )
            .await;
            None
        }
    }
}

/// The agent's row, when the token (and the signature of a signing agent) checks out.
async fn check(
    ep: &AgentEndpoint,
    path_agent_id: &str,
    auth: &AuthPayload,
    text: &str,
    ip: Option<IpAddr>,
) -> Result<Agent, (AgentAuthFailure, Option<Agent>)> {
    if auth.agent_id != path_agent_id {
        return Err((AgentAuthFailure::UnknownAgent, None));
    }
    let agent = match ep.store.get_agent(path_agent_id).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            // Hash anyway so unknown and known agents take the same time.
            let _ = crate::auth::hash_token(auth.auth_token.expose());
            return Err((AgentAuthFailure::UnknownAgent, None));
        }
        Err(e) => {
            // The database's fault, not the agent's: the caller defers the handshake.
            tracing::warn!(error = %e, "agent lookup failed");
            return Err((AgentAuthFailure::Unconfirmed, None));
        }
    };
    if let Err(f) = verify_agent_token(&agent, auth.auth_token.expose(), ip) {
        return Err((f, Some(agent)));
    }
    // A signing agent signs its auth message too, in the current canonical form.
    if let Some(signer) = signer_of(ep, &agent) {
        if auth.signing_version.unwrap_or(1) < signing::SIGNING_VERSION {
            return Err((AgentAuthFailure::OldSigning, Some(agent)));
        }
        if let Err(e) = signer.verify(text.as_bytes(), &ep.nonces, &agent.id) {
            tracing::warn!(agent_id = %agent.agent_id, reason = e.message(), "auth message signature refused");
            return Err((AgentAuthFailure::BadSignature, Some(agent)));
        }
    }
    Ok(agent)
}

/// Answers `auth` with `rejected` and closes with the reason.
pub(super) async fn refuse(
    ep: &AgentEndpoint,
    socket: &mut WebSocket,
    auth_id: &str,
    failure: AgentAuthFailure,
) {
    let body = ErrorBody::new(failure.code(), failure.reason());
    send(ep, socket, &rejected(auth_id, body)).await;
    close(socket, CLOSE_POLICY, failure.reason()).await;
}

/// Reads the agent's row again after its session was registered: the same enrolment, bound
/// to the same host, and the presented token still valid.
pub(super) async fn recheck(
    ep: &AgentEndpoint,
    agent: &Agent,
    auth: &AuthPayload,
    ip: Option<IpAddr>,
) -> Result<(), AgentAuthFailure> {
    let now = match ep.store.get_agent(&agent.agent_id).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err(AgentAuthFailure::Revoked),
        Err(e) => {
            tracing::warn!(error = %e, "agent lookup failed");
            return Err(AgentAuthFailure::Unconfirmed);
        }
    };
    if now.id != agent.id || now.host_id != agent.host_id {
        return Err(AgentAuthFailure::Revoked);
    }
    verify_agent_token(&now, auth.auth_token.expose(), ip)
}

/// The agent's signer, when it has a signing key (decrypted with the at-rest key).
pub(super) fn signer_of(ep: &AgentEndpoint, agent: &Agent) -> Option<Signer> {
    let enc = agent.signing_key_enc.as_deref()?;
    match ep.keys.decrypt(enc) {
        Ok(k) => Signer::from_hex(k.expose()),
        Err(e) => {
            tracing::error!(agent_id = %agent.agent_id, error = %e, "cannot decrypt the agent's signing key");
            // Fail closed: a key that cannot be read verifies nothing.
            Signer::from_hex(&signing::generate_key_hex())
        }
    }
}

fn rejected(id: &str, error: ErrorBody) -> Envelope {
    Envelope::new(
        id,
        Message::AuthResponse(AuthResponsePayload {
            status: AuthStatus::Rejected,
            session_id: None,
            config: None,
            protocol_version: Some(SERVER_PROTOCOL_VERSION),
            error: Some(error),
        }),
    )
}

/// A failed authentication: the metrics and the IP limiter always; `agent_events`, the audit
/// log and the warning log as the sampler decides.
async fn record_failure(
    ep: &AgentEndpoint,
    agent_id: &str,
    agent: Option<&Agent>,
    ip: Option<IpAddr>,
    event: &str,
    detail: &str,
) {
    ep.metrics.auth_failure();
    if let Some(ip) = ip {
        ep.auth_limiter.record_failure(ip);
    }
    let skipped = match ep.failure_sampler.sample(ip) {
        Sample::Write { skipped } => skipped,
        Sample::Skip => {
            ep.metrics.auth_failure_unrecorded();
            tracing::debug!(
                agent_id,
                ?ip,
                reason = detail,
                "agent authentication failed (sampled out)"
            );
            return;
        }
    };
    tracing::warn!(
        agent_id,
        ?ip,
        reason = detail,
        skipped,
        "agent authentication failed"
    );
    let data = json!({ "agent_id": agent_id, "source_ip": ip.map(|i| i.to_string()), "reason": detail,
        "skipped_since_last": skipped });
    if let Err(e) = ep
        .store
        .add_agent_event(agent.map(|a| a.id.as_str()), event, &data)
        .await
    {
        tracing::error!(error = %e, "could not record agent event");
    }
    let host = agent.and_then(|a| a.host_id.as_deref());
    let detail = Some(json!({ "reason": detail, "skipped_since_last": skipped }));
    ep.audit
        .agent(
            agent_id,
            "agent.auth",
            host,
            "denied",
            Some(event),
            detail,
            ip,
        )
        .await;
}
