//! `GET /ws/agents/{agent_id}`: the agent's WebSocket.
//!
//! Owns: the session's life: `auth` first (within `auth_timeout`), token and allowlist
//! checks, the auth response, then one task per session that reads frames, writes queued
//! commands, pings (RTT), watches heartbeats (offline after 3 missed intervals) and idle
//! time, rate-limits the agent, and cleans up when the socket closes.
//! Must not: run Docker operations itself (the agent does) or block on slow consumers.

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use protocol::{
    AgentSettings, AuthPayload, AuthResponsePayload, AuthStatus, Envelope, ErrorBody, ErrorCode,
    ErrorPayload, Message, StreamCancelPayload, MAX_MESSAGE_SIZE, PROTOCOL_VERSION,
    STREAMS_PROTOCOL_VERSION,
};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::signing::{SigError, Signer};
use super::streams::{DataOut, Inbound, Routed, StreamHead};
use super::{disconnect_envelope, effective_settings, AgentManager, Queues, Session};
use crate::auth::{verify_agent_token, AgentAuthFailure, MAX_AGENT_ID_LEN};
use crate::error::ApiError;
use crate::metrics::Dir;
use crate::store::{Agent, NewDockerEvent};
use crate::{AppState, ClientIp};

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

/// The largest `auth` message accepted before the agent is known.
const MAX_AUTH_SIZE: usize = 16 * 1024;

pub async fn agent_ws(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ClientIp(ip): ClientIp,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let mgr = state.agents.clone();
    // Before any other work: an id no agent can have is refused without a lookup or a row.
    if !crate::auth::valid_agent_id(&agent_id) {
        mgr.inner.metrics.auth_failure();
        mgr.inner.metrics.auth_failure_unrecorded();
        return ApiError::bad_request(format!(
            "agent_id must be 1 to {MAX_AGENT_ID_LEN} of [A-Za-z0-9._-]"
        ))
        .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    if !mgr.config().enable_agent_mode {
        return ApiError::not_found("agent mode is disabled on this server").into_response();
    }
    if mgr.is_shutting_down() {
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
            run(mgr, agent_id, ip, socket).await;
        })
}

async fn send(mgr: &AgentManager, socket: &mut WebSocket, env: &Envelope) -> bool {
    send_signed(mgr, None, socket, env).await
}

/// Sends `env`, with `nonce` and `sig` when the agent signs its messages.
async fn send_signed(
    mgr: &AgentManager,
    signer: Option<&Signer>,
    socket: &mut WebSocket,
    env: &Envelope,
) -> bool {
    let text = match signer {
        None => env.encode(),
        Some(s) => s.sign_text(&env.encode()),
    };
    mgr.inner.metrics.ws(Dir::Out, text.len());
    socket.send(WsMessage::Text(text.into())).await.is_ok()
}

/// How long a closing socket waits for the peer's Close before the connection is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

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

/// Reads and checks the first message. On failure the socket is answered and closed.
async fn authenticate(
    mgr: &AgentManager,
    path_agent_id: &str,
    ip: Option<IpAddr>,
    socket: &mut WebSocket,
) -> Option<(Envelope, AuthPayload, Agent)> {
    let inner = &mgr.inner;
    let first = tokio::time::timeout(inner.config.auth_timeout.get(), socket.recv()).await;
    let text = match first {
        Err(_) => {
            record_failure(
                mgr,
                path_agent_id,
                None,
                ip,
                "auth_timeout",
                "no auth message in time",
            )
            .await;
            let env = rejected(
                "auth",
                ErrorBody::new(ErrorCode::Timeout, "auth must be the first message"),
            );
            send(mgr, socket, &env).await;
            close(socket, CLOSE_POLICY, "auth timeout").await;
            return None;
        }
        Ok(None) | Ok(Some(Err(_))) => return None,
        Ok(Some(Ok(WsMessage::Text(t)))) if t.len() <= MAX_AUTH_SIZE => t,
        Ok(Some(Ok(WsMessage::Text(_)))) => {
            record_failure(
                mgr,
                path_agent_id,
                None,
                ip,
                "auth_invalid",
                "auth message too large",
            )
            .await;
            close(socket, CLOSE_TOO_BIG, "auth message too large").await;
            return None;
        }
        Ok(Some(Ok(_))) => {
            record_failure(
                mgr,
                path_agent_id,
                None,
                ip,
                "auth_invalid",
                "first frame is not a text auth message",
            )
            .await;
            let env = rejected(
                "auth",
                ErrorBody::new(ErrorCode::Unauthorized, "the first message must be auth"),
            );
            send(mgr, socket, &env).await;
            close(socket, CLOSE_POLICY, "not authenticated").await;
            return None;
        }
    };
    inner.metrics.ws(Dir::In, text.len());
    let env = match Envelope::decode(text.as_bytes()) {
        Ok(env) => env,
        Err(e) => {
            record_failure(mgr, path_agent_id, None, ip, "auth_invalid", &e.to_string()).await;
            let env = rejected(
                "auth",
                ErrorBody::new(
                    ErrorCode::Unauthorized,
                    format!("the first message must be auth: {e}"),
                ),
            );
            send(mgr, socket, &env).await;
            close(socket, CLOSE_POLICY, "not authenticated").await;
            return None;
        }
    };
    let auth = match &env.message {
        Message::Auth(a) => a.clone(),
        other => {
            let msg = format!(
                "the first message must be auth, not {}",
                other.message_type().as_str()
            );
            record_failure(mgr, path_agent_id, None, ip, "auth_invalid", &msg).await;
            send(
                mgr,
                socket,
                &rejected(&env.id, ErrorBody::new(ErrorCode::Unauthorized, msg)),
            )
            .await;
            close(socket, CLOSE_POLICY, "not authenticated").await;
            return None;
        }
    };
    let check = async {
        if auth.agent_id != path_agent_id {
            return Err((AgentAuthFailure::UnknownAgent, None));
        }
        let agent = match inner.store.get_agent(path_agent_id).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                // Hash anyway so unknown and known agents take the same time.
                let _ = crate::auth::hash_token(auth.auth_token.expose());
                return Err((AgentAuthFailure::UnknownAgent, None));
            }
            Err(e) => {
                tracing::error!(error = %e, "agent lookup failed");
                return Err((AgentAuthFailure::UnknownAgent, None));
            }
        };
        if let Err(f) = verify_agent_token(&agent, auth.auth_token.expose(), ip) {
            return Err((f, Some(agent)));
        }
        // A signing agent signs its auth message too, in the current canonical form.
        if let Some(signer) = signer_of(mgr, &agent) {
            if auth.signing_version.unwrap_or(1) < super::signing::SIGNING_VERSION {
                return Err((AgentAuthFailure::OldSigning, Some(agent)));
            }
            if let Err(e) = signer.verify(text.as_bytes(), &inner.nonces, &agent.id) {
                tracing::warn!(agent_id = %agent.agent_id, reason = e.message(), "auth message signature refused");
                return Err((AgentAuthFailure::BadSignature, Some(agent)));
            }
        }
        Ok(agent)
    };
    // Only failures count against the address, and only failures are refused for it: an
    // agent with a valid token connects whatever others did from the same address.
    let verdict = check.await.map_err(|(failure, agent)| {
        if ip.is_some_and(|ip| inner.auth_limiter.blocked(ip)) {
            (AgentAuthFailure::RateLimited, agent)
        } else {
            (failure, agent)
        }
    });
    match verdict {
        Ok(agent) => Some((env, auth, agent)),
        Err((failure, agent)) => {
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
            record_failure(
                mgr,
                path_agent_id,
                agent.as_ref(),
                ip,
                "auth_failed",
                &detail,
            )
            .await;
            refuse(mgr, socket, &env.id, failure).await;
            None
        }
    }
}

/// Answers `auth` with `rejected` and closes with the reason.
async fn refuse(
    mgr: &AgentManager,
    socket: &mut WebSocket,
    auth_id: &str,
    failure: AgentAuthFailure,
) {
    let body = ErrorBody::new(failure.code(), failure.reason());
    send(mgr, socket, &rejected(auth_id, body)).await;
    close(socket, CLOSE_POLICY, failure.reason()).await;
}

/// Reads the agent's row again after its session was registered: the same enrolment, bound
/// to the same host, and the presented token still valid.
async fn recheck(
    mgr: &AgentManager,
    agent: &Agent,
    auth: &AuthPayload,
    ip: Option<IpAddr>,
) -> Result<(), AgentAuthFailure> {
    let now = match mgr.inner.store.get_agent(&agent.agent_id).await {
        Ok(Some(a)) => a,
        Ok(None) => return Err(AgentAuthFailure::Revoked),
        Err(e) => {
            tracing::error!(error = %e, "agent lookup failed");
            return Err(AgentAuthFailure::Unconfirmed);
        }
    };
    if now.id != agent.id || now.host_id != agent.host_id {
        return Err(AgentAuthFailure::Revoked);
    }
    verify_agent_token(&now, auth.auth_token.expose(), ip)
}

/// The agent's signer, when it has a signing key (decrypted with the at-rest key).
pub(crate) fn signer_of(mgr: &AgentManager, agent: &Agent) -> Option<Signer> {
    let enc = agent.signing_key_enc.as_deref()?;
    match mgr.inner.keys.decrypt(enc) {
        Ok(k) => Signer::from_hex(k.expose()),
        Err(e) => {
            tracing::error!(agent_id = %agent.agent_id, error = %e, "cannot decrypt the agent's signing key");
            // Fail closed: a key that cannot be read verifies nothing.
            Signer::from_hex(&super::signing::generate_key_hex())
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
/// log and the warning log as the sampler decides (see `super::sampling`).
async fn record_failure(
    mgr: &AgentManager,
    agent_id: &str,
    agent: Option<&Agent>,
    ip: Option<IpAddr>,
    event: &str,
    detail: &str,
) {
    let inner = &mgr.inner;
    inner.metrics.auth_failure();
    if let Some(ip) = ip {
        inner.auth_limiter.record_failure(ip);
    }
    let skipped = match inner.failure_sampler.sample(ip) {
        super::sampling::Sample::Write { skipped } => skipped,
        super::sampling::Sample::Skip => {
            inner.metrics.auth_failure_unrecorded();
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
    if let Err(e) = inner
        .store
        .add_agent_event(agent.map(|a| a.id.as_str()), event, &data)
        .await
    {
        tracing::error!(error = %e, "could not record agent event");
    }
    let host = agent.and_then(|a| a.host_id.as_deref());
    inner
        .audit
        .agent(
            agent_id,
            "agent.auth",
            host,
            "denied",
            Some(event),
            Some(json!({ "reason": detail, "skipped_since_last": skipped })),
            ip,
        )
        .await;
}

async fn run(mgr: AgentManager, path_agent_id: String, ip: Option<IpAddr>, mut socket: WebSocket) {
    // Boxed: its state (database lookups, audit) is the largest of the session and would
    // otherwise stay in every idle session's task for as long as it lives.
    let Some((auth_env, auth, agent)) =
        Box::pin(authenticate(&mgr, &path_agent_id, ip, &mut socket)).await
    else {
        return;
    };
    let inner = mgr.inner.clone();
    let (heartbeat, command_timeout) = effective_settings(&inner.config, &agent);
    let agreed = auth
        .protocol_version
        .unwrap_or(1)
        .min(SERVER_PROTOCOL_VERSION);
    let signer = signer_of(&mgr, &agent);
    let (session, mut queues) = mgr.register(
        &agent.id,
        &agent.agent_id,
        agent.host_id.clone(),
        crate::auth::hash_token(auth.auth_token.expose()),
        auth.version.clone(),
        auth.capabilities.clone(),
        heartbeat,
        command_timeout,
        agreed,
        signer,
    );
    // A revocation, rotation or move that landed between the token check and the
    // registration found no session to close. Look again now that the session is registered:
    // whatever lands after this look finds the session and closes it.
    if let Err(failure) = recheck(&mgr, &agent, &auth, ip).await {
        mgr.unregister(&session);
        tracing::warn!(agent_id = %agent.agent_id, reason = failure.reason(), "agent lost its access while authenticating");
        refuse(&mgr, &mut socket, &auth_env.id, failure).await;
        return;
    }
    let reconnection = agent.connected_at.is_some();
    inner.metrics.agent_connected(reconnection);
    if let Err(e) = inner
        .store
        .agent_connected(
            &agent.id,
            &session.session_id,
            &inner.server_id,
            &auth.version,
            &auth.capabilities,
        )
        .await
    {
        tracing::error!(error = %e, "could not record agent connection");
    }
    let host = agent.host_id.clone();
    let data = json!({ "session_id": session.session_id, "version": auth.version, "capabilities": auth.capabilities,
        "source_ip": ip.map(|i| i.to_string()), "reconnection": reconnection });
    let _ = inner
        .store
        .add_agent_event(Some(&agent.id), "connected", &data)
        .await;
    inner
        .audit
        .agent(
            &agent.agent_id,
            "agent.connect",
            host.as_deref(),
            "success",
            None,
            None,
            ip,
        )
        .await;
    tracing::info!(agent_id = %agent.agent_id, session = %session.session_id, version = %auth.version, "agent connected");

    let reply = Envelope::new(
        auth_env.id.clone(),
        Message::AuthResponse(AuthResponsePayload {
            status: AuthStatus::Authenticated,
            session_id: Some(session.session_id.clone()),
            config: Some(AgentSettings {
                heartbeat_interval: Some(crate::config::Seconds(heartbeat).whole_secs()),
                command_timeout: Some(crate::config::Seconds(command_timeout).whole_secs()),
            }),
            protocol_version: Some(agreed),
            error: None,
        }),
    );
    inner.feed.publish(
        "agent_online",
        host.as_deref(),
        json!({ "agent_id": agent.agent_id, "version": auth.version, "capabilities": auth.capabilities }),
    );
    let reason = if send_signed(&mgr, session.signer.as_ref(), &mut socket, &reply).await {
        // Queued commands for this host go out now, in order, after the auth response.
        if let Some(h) = &host {
            mgr.kick_queue(h);
        }
        session_loop(&mgr, &session, &mut socket, &mut queues).await
    } else {
        "send failed".to_string()
    };

    // Cleanup: the socket is gone (or being closed).
    let current = mgr.unregister(&session);
    inner.metrics.agent_disconnected();
    if let Err(e) = inner
        .store
        .agent_disconnected(&agent.id, &session.session_id)
        .await
    {
        tracing::error!(error = %e, "could not record agent disconnection");
    }
    let _ = inner
        .store
        .add_agent_event(
            Some(&agent.id),
            "disconnected",
            &json!({ "session_id": session.session_id, "reason": reason }),
        )
        .await;
    inner
        .audit
        .agent(
            &agent.agent_id,
            "agent.disconnect",
            host.as_deref(),
            "success",
            None,
            Some(json!({ "reason": reason })),
            ip,
        )
        .await;
    if current {
        inner.feed.publish(
            "agent_offline",
            host.as_deref(),
            json!({ "agent_id": agent.agent_id, "reason": reason }),
        );
    }
    tracing::info!(agent_id = %agent.agent_id, session = %session.session_id, %reason, "agent disconnected");
}

/// A token bucket: `rate` per second, `2 * rate` burst.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate: rate as f64,
            tokens: rate as f64 * 2.0,
            at: Instant::now(),
        }
    }
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.rate * 2.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The session's main loop. Returns why it ended.
async fn session_loop(
    mgr: &AgentManager,
    session: &Arc<Session>,
    socket: &mut WebSocket,
    queues: &mut Queues,
) -> String {
    let Queues {
        commands: rx,
        stream_control,
        data,
        close: close_rx,
    } = queues;
    let inner = &mgr.inner;
    let cfg = &inner.config;
    let start = tokio::time::Instant::now();
    let mut ping =
        tokio::time::interval_at(start + cfg.ping_interval.get(), cfg.ping_interval.get());
    let check_every =
        (session.heartbeat_interval() / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
    let mut check = tokio::time::interval_at(start + check_every, check_every);
    let mut last_inbound = Instant::now();
    let mut last_heartbeat = Instant::now();
    let mut ping_seq: u64 = 0;
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut budget = Budget::new(cfg.max_messages_per_second);
    let mut bad_sigs = 0u32;
    loop {
        // Priority: close, commands and other control, stream control, inbound frames,
        // timers, then stream data, so a busy stream never delays heartbeats or commands.
        tokio::select! {
            biased;
            changed = close_rx.changed() => {
                let reason = match changed {
                    Ok(()) => close_rx.borrow().clone().unwrap_or_else(|| "closed".into()),
                    Err(_) => "closed".into(),
                };
                send_signed(mgr, session.signer.as_ref(), socket, &disconnect_envelope(&reason)).await;
                close(socket, CLOSE_NORMAL, &reason).await;
                return reason;
            }
            out = rx.recv() => {
                let Some(env) = out else { return "session dropped".into() };
                if !send_signed(mgr, session.signer.as_ref(), socket, &env).await {
                    return "send failed".into();
                }
            }
            Some(env) = stream_control.recv() => {
                if !send_signed(mgr, session.signer.as_ref(), socket, &env).await {
                    return "send failed".into();
                }
            }
            frame = socket.recv() => {
                let frame = match frame {
                    None => return "socket closed".into(),
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("UTF-8") || text.contains("utf-8") || text.contains("Utf8") {
                            close(socket, 1007, "invalid UTF-8 in a text frame").await;
                            return "invalid UTF-8 in a text frame".into();
                        }
                        if text.contains("too long") || text.contains("Space limit") || text.contains("capacity") {
                            close(socket, CLOSE_TOO_BIG, "message too large").await;
                            return "message too large".into();
                        }
                        return format!("socket error: {text}");
                    }
                    Some(Ok(f)) => f,
                };
                last_inbound = Instant::now();
                match frame {
                    WsMessage::Text(t) => {
                        inner.metrics.ws(Dir::In, t.len());
                        let decoded = match &session.signer {
                            None => Envelope::decode(t.as_bytes()),
                            Some(signer) => match verify_signed(mgr, session, signer, t.as_bytes()) {
                                Ok(v) => Envelope::from_value(v),
                                Err(e) => {
                                    bad_sigs += 1;
                                    inner.metrics.auth_failure();
                                    tracing::warn!(agent_id = %session.agent_id, reason = e.message(), "message signature refused");
                                    let err = error_env(None, ErrorBody::new(ErrorCode::Unauthorized, e.message()));
                                    send_signed(mgr, session.signer.as_ref(), socket, &err).await;
                                    if bad_sigs >= cfg.max_bad_signatures.max(1) {
                                        close(socket, CLOSE_POLICY, "too many bad signatures").await;
                                        return "too many bad signatures".into();
                                    }
                                    continue;
                                }
                            },
                        };
                        // Stream control is paced by flow control: a stream's expected messages
                        // are free, and whatever else the agent sends on streams is charged
                        // after routing (see `streams::Routed::charged`).
                        let streaming = session.protocol_version >= STREAMS_PROTOCOL_VERSION
                            && decoded.as_ref().is_ok_and(|e| is_stream_message(&e.message));
                        // Answers to commands the server sent are paced by the server itself:
                        // only answers nobody waits for count against the budget.
                        let awaited = decoded.as_ref().is_ok_and(|e| {
                            matches!(e.message, Message::CommandResponse(_) | Message::CommandProgress(_))
                                && mgr.awaits_answer(&e.id)
                        });
                        if !(streaming || awaited) {
                            match budget.take() {
                                Ok(true) => {}
                                Ok(false) => {
                                    let err = error_env(None, ErrorBody::new(ErrorCode::RateLimited, "too many messages; slow down"));
                                    send_signed(mgr, session.signer.as_ref(), socket, &err).await;
                                    continue;
                                }
                                Err(()) => return over_budget(socket).await,
                            }
                        }
                        match decoded {
                            Ok(env) => {
                                let mut charged = false;
                                if let Some(reason) = handle(mgr, session, socket, env, &mut last_heartbeat, &mut charged).await {
                                    return reason;
                                }
                                if charged && budget.take().is_err() {
                                    return over_budget(socket).await;
                                }
                            }
                            Err(e) => {
                                let err = error_env(None, e.to_error_body());
                                send_signed(mgr, session.signer.as_ref(), socket, &err).await;
                            }
                        }
                    }
                    WsMessage::Binary(b) => {
                        inner.metrics.ws(Dir::In, b.len());
                        if session.protocol_version < STREAMS_PROTOCOL_VERSION {
                            let err = error_env(None, ErrorBody::invalid_params("binary frames are not supported; send JSON text"));
                            send_signed(mgr, session.signer.as_ref(), socket, &err).await;
                            continue;
                        }
                        let charged = match protocol::decode_data_frame(&b) {
                            Ok((id, bytes)) => {
                                let r = session.streams.data(id, bytes);
                                after_route(mgr, session, socket, id, r, true).await
                            }
                            Err(e) => {
                                let err = error_env(None, e.to_error_body());
                                send_signed(mgr, session.signer.as_ref(), socket, &err).await;
                                true
                            }
                        };
                        if charged && budget.take().is_err() {
                            return over_budget(socket).await;
                        }
                    }
                    WsMessage::Pong(p) => {
                        if let (Some((seq, at)), Ok(bytes)) = (ping_sent, <[u8; 8]>::try_from(p.as_ref())) {
                            if u64::from_be_bytes(bytes) == seq {
                                let rtt = at.elapsed();
                                session.set_rtt(rtt);
                                inner.metrics.rtt(rtt);
                                ping_sent = None;
                            }
                        }
                    }
                    WsMessage::Ping(_) => {}
                    WsMessage::Close(_) => return "agent closed the socket".into(),
                }
            }
            _ = ping.tick() => {
                ping_seq += 1;
                ping_sent = Some((ping_seq, Instant::now()));
                if socket.send(WsMessage::Ping(ping_seq.to_be_bytes().to_vec().into())).await.is_err() {
                    return "send failed".into();
                }
            }
            _ = check.tick() => {
                if last_inbound.elapsed() > cfg.websocket_timeout.get() {
                    close(socket, CLOSE_GOING_AWAY, "idle timeout").await;
                    return "idle timeout".into();
                }
                if session.is_online() && last_heartbeat.elapsed() > session.heartbeat_interval() * 3 {
                    session.set_online(false);
                    let secs = last_heartbeat.elapsed().as_secs_f64();
                    tracing::warn!(agent_id = %session.agent_id, silent_secs = secs, "agent missed 3 heartbeats: offline");
                    let _ = inner.store.agent_session_status(&session.agent_ref, &session.session_id, "offline").await;
                    let _ = inner.store.add_agent_event(Some(&session.agent_ref), "heartbeat_missed",
                        &json!({ "silent_secs": secs })).await;
                    inner.feed.publish("agent_offline", session.host_id.as_deref(),
                        json!({ "agent_id": session.agent_id, "reason": "missed heartbeats" }));
                }
            }
            Some(out) = data.recv() => {
                let ok = match out {
                    DataOut::Data(id, bytes) => {
                        let frame = protocol::encode_data_frame(id, &bytes);
                        inner.metrics.ws(Dir::Out, frame.len());
                        socket.send(WsMessage::Binary(frame.into())).await.is_ok()
                    }
                    DataOut::Text(env) => send_signed(mgr, session.signer.as_ref(), socket, &env).await,
                };
                if !ok {
                    return "send failed".into();
                }
            }
        }
    }
}

/// Parses a text frame of a signing agent and checks its signature, timestamp and nonce.
fn verify_signed(
    mgr: &AgentManager,
    session: &Session,
    signer: &Signer,
    bytes: &[u8],
) -> Result<serde_json::Value, SigError> {
    signer.verify(bytes, &mgr.inner.nonces, &session.agent_ref)?;
    serde_json::from_slice(bytes).map_err(|_| SigError::Missing)
}

/// Sends `stream_cancel` for a stream the agent named but we do not (or no longer) know.
async fn cancel_unknown(
    mgr: &AgentManager,
    session: &Session,
    socket: &mut WebSocket,
    id: u32,
    why: &str,
) {
    let env = Envelope::new(
        uuid::Uuid::new_v4().to_string(),
        Message::StreamCancel(StreamCancelPayload {
            stream_id: id,
            reason: Some(why.to_string()),
        }),
    );
    send_signed(mgr, session.signer.as_ref(), socket, &env).await;
}

/// Acts on what [`super::streams::Table`] said about an inbound stream frame. Returns
/// whether the frame counts against the agent's message budget.
async fn after_route(
    mgr: &AgentManager,
    session: &Session,
    socket: &mut WebSocket,
    id: u32,
    r: Routed,
    binary: bool,
) -> bool {
    let charged = r.charged(binary);
    match r {
        Routed::Delivered | Routed::Stale => {}
        Routed::Unexpected => {
            tracing::debug!(agent_id = %session.agent_id, stream = id, "unexpected stream frame dropped");
        }
        Routed::Unknown => cancel_unknown(mgr, session, socket, id, "unknown stream id").await,
        Routed::Overrun => {
            tracing::warn!(agent_id = %session.agent_id, stream = id, "agent overran the stream window: cancelling");
            session.streams.control(
                id,
                Inbound::Cancel(Some("the agent overran the flow-control window".into())),
            );
            cancel_unknown(mgr, session, socket, id, "flow-control window exceeded").await;
        }
    }
    charged
}

/// Closes a socket whose agent kept sending far past its message budget.
async fn over_budget(socket: &mut WebSocket) -> String {
    close(socket, CLOSE_POLICY, "rate limit exceeded").await;
    "rate limit exceeded".into()
}

/// The agent's message budget: a token bucket, and the strikes of messages refused for it in
/// a row. Over `10 × rate` strikes the session closes.
struct Budget {
    bucket: Bucket,
    strikes: u32,
    limit: u32,
}

impl Budget {
    fn new(rate: u32) -> Budget {
        Budget {
            bucket: Bucket::new(rate),
            strikes: 0,
            limit: rate.saturating_mul(10),
        }
    }

    /// Takes one message from the budget: `Ok(true)` when it fits, `Ok(false)` when it must
    /// be refused, `Err(())` when the agent kept going far past it.
    fn take(&mut self) -> Result<bool, ()> {
        if self.bucket.take() {
            self.strikes = 0;
            return Ok(true);
        }
        self.strikes += 1;
        if self.strikes > self.limit {
            return Err(());
        }
        Ok(false)
    }
}

fn is_stream_message(m: &Message) -> bool {
    matches!(
        m,
        Message::StreamResponse(_)
            | Message::StreamEnd(_)
            | Message::StreamCancel(_)
            | Message::StreamCredit(_)
    )
}

/// Handles one decoded message. Returns `Some(reason)` to end the session.
/// `charged` is set when a stream message turned out to be one a well-behaved agent never
/// sends (it then counts against the budget).
async fn handle(
    mgr: &AgentManager,
    session: &Arc<Session>,
    socket: &mut WebSocket,
    env: Envelope,
    last_heartbeat: &mut Instant,
    charged: &mut bool,
) -> Option<String> {
    let inner = &mgr.inner;
    let host = session.host_id.as_deref();
    match env.message {
        Message::Heartbeat(hb) => {
            *last_heartbeat = Instant::now();
            if !session.set_online(true) {
                tracing::info!(agent_id = %session.agent_id, "agent heartbeats resumed: online");
                let _ = inner
                    .store
                    .add_agent_event(Some(&session.agent_ref), "heartbeat_resumed", &json!({}))
                    .await;
                inner.feed.publish(
                    "agent_online",
                    host,
                    json!({ "agent_id": session.agent_id }),
                );
            }
            let health = serde_json::to_value(&hb).unwrap_or_default();
            let rtt_ms = session.rtt().map(|d| d.as_secs_f64() * 1000.0);
            // Stored off the session loop, one write at a time: a slow or unreachable
            // database skips heartbeats instead of stalling the session.
            if !session
                .heartbeat_write
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                let store = inner.store.clone();
                let s = session.clone();
                let health = health.clone();
                tokio::spawn(async move {
                    let w = tokio::time::timeout(
                        Duration::from_secs(10),
                        store.agent_heartbeat(&s.agent_ref, &s.session_id, &health, rtt_ms),
                    )
                    .await;
                    match w {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not store heartbeat (skipped)")
                        }
                        Err(_) => tracing::warn!("storing a heartbeat timed out (skipped)"),
                    }
                    s.heartbeat_write
                        .store(false, std::sync::atomic::Ordering::Release);
                });
            } else {
                tracing::debug!(agent_id = %session.agent_id, "previous heartbeat still being stored: skipped");
            }
            inner.feed.publish(
                "health",
                host,
                json!({ "agent_id": session.agent_id, "health": health, "rtt_ms": rtt_ms }),
            );
        }
        Message::CommandResponse(r) => {
            let result = r.into_result();
            if !mgr.deliver_answer(session, &env.id, result.clone()) {
                // Nobody waits any more (late answer, or after a server restart): still
                // store it, if the command is one of this host's.
                tracing::debug!(agent_id = %session.agent_id, id = %env.id, "answer for no waiting command: storing it");
                let store = inner.store.clone();
                let host = session.host_id.clone();
                let id = env.id.clone();
                tokio::spawn(async move {
                    if let Ok(Some(c)) = store.get_command(&id).await {
                        if c.host_id.is_some() && c.host_id == host {
                            let _ = store.complete_command(&id, &result, None).await;
                        }
                    }
                });
            }
        }
        Message::CommandProgress(p) => {
            if mgr.is_watched(&env.id) {
                inner.feed.publish(
                    "command_progress",
                    host,
                    json!({ "agent_id": session.agent_id, "command_id": env.id, "data": p.data }),
                );
            }
        }
        Message::Event(ev) => {
            inner.metrics.docker_event();
            if let Some(host_id) = host {
                let rec = NewDockerEvent {
                    host_id: host_id.to_string(),
                    agent_id: Some(session.agent_id.clone()),
                    kind: ev.kind.clone(),
                    action: ev.action.clone(),
                    actor_id: ev.actor_id.clone(),
                    attributes: serde_json::to_value(&ev.attributes).unwrap_or_default(),
                    time_nano: ev.time_nano,
                };
                if let Err(e) = inner.store.add_docker_event(&rec).await {
                    tracing::error!(error = %e, "could not store Docker event");
                }
            }
            inner.feed.publish(
                "docker_event",
                host,
                json!({ "agent_id": session.agent_id, "event": ev }),
            );
        }
        Message::Error(e) => {
            tracing::warn!(agent_id = %session.agent_id, error = %e.error, ref_id = ?e.ref_id, "agent reported an error");
            if let Some(r) = &e.ref_id {
                mgr.deliver_answer(session, r, Err(e.error.clone()));
            }
        }
        Message::Disconnect(d) => {
            let reason = d.reason.unwrap_or_else(|| "agent disconnected".into());
            close(socket, CLOSE_NORMAL, "bye").await;
            return Some(format!("agent said goodbye: {reason}"));
        }
        Message::StreamResponse(r) if session.protocol_version >= STREAMS_PROTOCOL_VERSION => {
            let head = StreamHead {
                status: r.status,
                headers: r.headers,
            };
            let routed = session.streams.control(r.stream_id, Inbound::Head(head));
            *charged = after_route(mgr, session, socket, r.stream_id, routed, false).await;
        }
        Message::StreamEnd(e) if session.protocol_version >= STREAMS_PROTOCOL_VERSION => {
            let routed = session.streams.control(e.stream_id, Inbound::End(e.error));
            *charged = after_route(mgr, session, socket, e.stream_id, routed, false).await;
        }
        Message::StreamCancel(c) if session.protocol_version >= STREAMS_PROTOCOL_VERSION => {
            // Never answer a cancel with a cancel.
            let routed = session
                .streams
                .control(c.stream_id, Inbound::Cancel(c.reason));
            *charged = routed.charged(false);
        }
        Message::StreamCredit(c) if session.protocol_version >= STREAMS_PROTOCOL_VERSION => {
            let routed = session.streams.credit(c.stream_id, c.bytes);
            *charged = after_route(mgr, session, socket, c.stream_id, routed, false).await;
        }
        Message::Auth(_) => {
            let err = error_env(
                Some(env.id),
                ErrorBody::invalid_params("already authenticated"),
            );
            send_signed(mgr, session.signer.as_ref(), socket, &err).await;
        }
        other => {
            let err = error_env(
                Some(env.id),
                ErrorBody::new(
                    ErrorCode::Unsupported,
                    format!(
                        "{} is a server-to-agent message",
                        other.message_type().as_str()
                    ),
                ),
            );
            send_signed(mgr, session.signer.as_ref(), socket, &err).await;
        }
    }
    None
}
