//! What each message of an authenticated agent does: heartbeats (liveness, health), answers
//! to commands (to their waiters, or upward when nobody waits), progress, Docker events,
//! errors, goodbye, and stream control (to the session's stream table).
//!
//! Owns: the meaning of an inbound message. Must not: read the socket or keep the budget
//! (see `super::session_loop`).

use axum::extract::ws::WebSocket;
use protocol::{
    CommandProgressPayload, Envelope, ErrorBody, ErrorCode, EventPayload, HeartbeatPayload,
    Message, STREAMS_PROTOCOL_VERSION,
};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::session::Session;
use super::super::streams::{Inbound, Routed, StreamHead};
use super::{close, error_env, send_signed, AgentEndpoint, CLOSE_NORMAL};
use crate::store::NewDockerEvent;

/// Handles one decoded message. Returns `Some(reason)` to end the session.
/// `charged` is set when a stream message turned out to be one a well-behaved agent never
/// sends (it then counts against the budget).
pub(super) async fn handle(
    ep: &AgentEndpoint,
    session: &Arc<Session>,
    socket: &mut WebSocket,
    env: Envelope,
    last_heartbeat: &mut Instant,
    charged: &mut bool,
) -> Option<String> {
    let streams = session.protocol_version >= STREAMS_PROTOCOL_VERSION;
    let routed = match env.message {
        Message::Heartbeat(hb) => {
            *last_heartbeat = Instant::now();
            heartbeat(ep, session, hb).await;
            None
        }
        Message::CommandResponse(r) => {
            ep.agents
                .command_answered(session, &env.id, r.into_result());
            None
        }
        Message::CommandProgress(p) => {
            progress(ep, session, &env.id, p);
            None
        }
        Message::Event(ev) => {
            docker_event(ep, session, ev).await;
            None
        }
        Message::Error(e) => {
            tracing::warn!(agent_id = %session.agent_id, error = %e.error, ref_id = ?e.ref_id, "agent reported an error");
            if let Some(r) = &e.ref_id {
                let _ = ep.agents.deliver_answer(session, r, Err(e.error.clone()));
            }
            None
        }
        Message::AgentUpdateProgress(p) => {
            update_progress(ep, session, &p).await;
            None
        }
        Message::Disconnect(d) => {
            let reason = d.reason.unwrap_or_else(|| "agent disconnected".into());
            close(socket, CLOSE_NORMAL, "bye").await;
            return Some(format!("agent said goodbye: {reason}"));
        }
        Message::StreamResponse(r) if streams => {
            let head = StreamHead {
                status: r.status,
                headers: r.headers,
            };
            let id = r.stream_id;
            Some((id, session.streams.control(id, Inbound::Head(head))))
        }
        Message::StreamEnd(e) if streams => {
            let id = e.stream_id;
            Some((id, session.streams.control(id, Inbound::End(e.error))))
        }
        Message::StreamCancel(c) if streams => {
            // Never answer a cancel with a cancel.
            let routed = session
                .streams
                .control(c.stream_id, Inbound::Cancel(c.reason));
            *charged = routed.charged(false);
            None
        }
        Message::StreamCredit(c) if streams => {
            let id = c.stream_id;
            Some((id, session.streams.credit(id, c.bytes)))
        }
        other => {
            refuse(ep, session, socket, env.id, other).await;
            None
        }
    };
    if let Some((id, routed)) = routed {
        *charged = after_route(ep, session, socket, id, routed, false).await;
    }
    None
}

/// A message the server does not take from an agent: a second `auth`, or one that only
/// travels the other way.
async fn refuse(
    ep: &AgentEndpoint,
    session: &Session,
    socket: &mut WebSocket,
    id: String,
    m: Message,
) {
    let body = match m {
        Message::Auth(_) => ErrorBody::invalid_params("already authenticated"),
        other => ErrorBody::new(
            ErrorCode::Unsupported,
            format!(
                "{} is a server-to-agent message",
                other.message_type().as_str()
            ),
        ),
    };
    send_signed(
        ep,
        session.signer.as_ref(),
        socket,
        &error_env(Some(id), body),
    )
    .await;
}

/// A heartbeat: the agent is online (again), its health is stored and published.
async fn heartbeat(ep: &AgentEndpoint, session: &Arc<Session>, hb: HeartbeatPayload) {
    let host = session.host_id.as_deref();
    if !session.set_online(true) {
        tracing::info!(agent_id = %session.agent_id, "agent heartbeats resumed: online");
        let _ = ep
            .store
            .add_agent_event(Some(&session.agent_ref), "heartbeat_resumed", &json!({}))
            .await;
        ep.feed.publish(
            "agent_online",
            host,
            json!({ "agent_id": session.agent_id }),
        );
    }
    let health = serde_json::to_value(&hb).unwrap_or_default();
    let rtt_ms = session.rtt().map(|d| d.as_secs_f64() * 1000.0);
    store_heartbeat(ep, session, health.clone(), rtt_ms);
    ep.feed.publish(
        "health",
        host,
        json!({ "agent_id": session.agent_id, "health": health, "rtt_ms": rtt_ms }),
    );
}

/// Stores a heartbeat off the session loop, one write at a time: a slow or unreachable
/// database skips heartbeats instead of stalling the session.
fn store_heartbeat(
    ep: &AgentEndpoint,
    session: &Arc<Session>,
    health: serde_json::Value,
    rtt_ms: Option<f64>,
) {
    use std::sync::atomic::Ordering;
    if session.heartbeat_write.swap(true, Ordering::AcqRel) {
        tracing::debug!(agent_id = %session.agent_id, "previous heartbeat still being stored: skipped");
        return;
    }
    let store = ep.store.clone();
    let s = session.clone();
    tokio::spawn(async move {
        let w = tokio::time::timeout(
            Duration::from_secs(10),
            store.agent_heartbeat(&s.agent_ref, &s.session_id, &health, rtt_ms),
        )
        .await;
        match w {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not store heartbeat (skipped)"),
            Err(_) => tracing::warn!("storing a heartbeat timed out (skipped)"),
        }
        s.heartbeat_write.store(false, Ordering::Release);
    });
}

/// Where an update of this agent stands (`agent_update_progress`, or the `update` of its
/// `auth`): stored on the update's row (only this agent's, and never out of a final state)
/// and published.
pub(super) async fn update_progress(
    ep: &AgentEndpoint,
    session: &Session,
    p: &protocol::AgentUpdateProgressPayload,
) {
    let bytes = p.bytes.map(|b| b.min(i64::MAX as u64) as i64);
    let changed = ep
        .store
        .set_agent_update_state(
            &p.update_id,
            &session.agent_ref,
            p.state.as_str(),
            bytes,
            p.error.as_ref(),
        )
        .await;
    match changed {
        Ok(true) => {
            tracing::info!(agent_id = %session.agent_id, update_id = %p.update_id, state = p.state.as_str(), "agent update progress");
            ep.feed.publish(
                "agent_update_progress",
                session.host_id.as_deref(),
                json!({ "agent_id": session.agent_id, "update_id": p.update_id, "state": p.state,
                        "version": p.version, "bytes": p.bytes, "error": p.error }),
            );
        }
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "could not store agent update progress"),
    }
}

/// Progress of a command somebody waits for goes to the live feed.
fn progress(ep: &AgentEndpoint, session: &Session, id: &str, p: CommandProgressPayload) {
    if ep.agents.awaits_answer(id) {
        ep.feed.publish(
            "command_progress",
            session.host_id.as_deref(),
            json!({ "agent_id": session.agent_id, "command_id": id, "data": p.data }),
        );
    }
}

/// A Docker event of the agent's host: stored and published.
async fn docker_event(ep: &AgentEndpoint, session: &Session, ev: EventPayload) {
    ep.metrics.docker_event();
    let host = session.host_id.as_deref();
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
        if let Err(e) = ep.store.add_docker_event(&rec).await {
            tracing::error!(error = %e, "could not store Docker event");
        }
    }
    ep.feed.publish(
        "docker_event",
        host,
        json!({ "agent_id": session.agent_id, "event": ev }),
    );
}

/// Sends `stream_cancel` for a stream the agent named but we do not (or no longer) know.
async fn cancel_unknown(
    ep: &AgentEndpoint,
    session: &Session,
    socket: &mut WebSocket,
    id: u32,
    why: &str,
) {
    let env = Envelope::new(
        uuid::Uuid::new_v4().to_string(),
        Message::StreamCancel(protocol::StreamCancelPayload {
            stream_id: id,
            reason: Some(why.to_string()),
        }),
    );
    send_signed(ep, session.signer.as_ref(), socket, &env).await;
}

/// Acts on what [`super::super::streams::Table`] said about an inbound stream frame.
/// Returns whether the frame counts against the agent's message budget.
pub(super) async fn after_route(
    ep: &AgentEndpoint,
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
        Routed::Unknown => cancel_unknown(ep, session, socket, id, "unknown stream id").await,
        Routed::Overrun => {
            tracing::warn!(agent_id = %session.agent_id, stream = id, "agent overran the stream window: cancelling");
            session.streams.control(
                id,
                Inbound::Cancel(Some("the agent overran the flow-control window".into())),
            );
            cancel_unknown(ep, session, socket, id, "flow-control window exceeded").await;
        }
    }
    charged
}
