//! The loop of one authenticated session: it writes the session's queues (commands and
//! control first, then stream control, then stream data), reads the agent's frames, pings for
//! the RTT, watches heartbeats and idle time, and keeps the agent within its message budget.
//!
//! Owns: the socket while the session lives and the budget. Must not: act on a message's
//! meaning (see `super::messages`).

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket};
use protocol::{Envelope, ErrorBody, ErrorCode, Message, STREAMS_PROTOCOL_VERSION};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::session::{disconnect_envelope, Queues, Session};
use super::super::signing::SigError;
use super::super::streams::DataOut;
use super::messages::after_route;
use super::{
    close, error_env, send_signed, AgentEndpoint, CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY,
    CLOSE_TOO_BIG,
};
use crate::metrics::Dir;

/// Whether the loop goes on.
pub(super) enum Flow {
    Continue,
    /// The session ends, for this reason.
    End(String),
}

/// What the loop keeps between frames.
struct LoopState {
    last_inbound: Instant,
    last_heartbeat: Instant,
    ping_seq: u64,
    ping_sent: Option<(u64, Instant)>,
    budget: Budget,
    bad_sigs: u32,
}

/// The session's main loop. Returns why it ended.
pub(super) async fn run_session(
    ep: &AgentEndpoint,
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
    let cfg = &ep.config;
    let start = tokio::time::Instant::now();
    let mut ping =
        tokio::time::interval_at(start + cfg.ping_interval.get(), cfg.ping_interval.get());
    let check_every =
        (session.heartbeat_interval() / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
    let mut check = tokio::time::interval_at(start + check_every, check_every);
    let mut st = LoopState {
        last_inbound: Instant::now(),
        last_heartbeat: Instant::now(),
        ping_seq: 0,
        ping_sent: None,
        budget: Budget::new(cfg.max_messages_per_second),
        bad_sigs: 0,
    };
    let signer = session.signer.as_ref();
    loop {
        // Priority: close, commands and other control, stream control, inbound frames,
        // timers, then stream data, so a busy stream never delays heartbeats or commands.
        let flow = tokio::select! {
            biased;
            changed = close_rx.changed() => {
                let reason = match changed {
                    Ok(()) => close_rx.borrow().clone().unwrap_or_else(|| "closed".into()),
                    Err(_) => "closed".into(),
                };
                send_signed(ep, signer, socket, &disconnect_envelope(&reason)).await;
                close(socket, CLOSE_NORMAL, &reason).await;
                Flow::End(reason)
            }
            out = rx.recv() => match out {
                None => Flow::End("session dropped".into()),
                Some(env) => sent(send_signed(ep, signer, socket, &env).await),
            },
            Some(env) = stream_control.recv() => sent(send_signed(ep, signer, socket, &env).await),
            frame = socket.recv() => on_frame(ep, session, socket, &mut st, frame).await,
            _ = ping.tick() => send_ping(socket, &mut st).await,
            _ = check.tick() => check_liveness(ep, session, socket, &st).await,
            Some(out) = data.recv() => {
                let ok = match out {
                    DataOut::Data(id, bytes) => {
                        let frame = protocol::encode_data_frame(id, &bytes);
                        ep.metrics.ws(Dir::Out, frame.len());
                        socket.send(WsMessage::Binary(frame.into())).await.is_ok()
                    }
                    DataOut::Text(env) => send_signed(ep, signer, socket, &env).await,
                };
                sent(ok)
            }
        };
        if let Flow::End(reason) = flow {
            return reason;
        }
    }
}

fn sent(ok: bool) -> Flow {
    if ok {
        Flow::Continue
    } else {
        Flow::End("send failed".into())
    }
}

async fn send_ping(socket: &mut WebSocket, st: &mut LoopState) -> Flow {
    st.ping_seq += 1;
    st.ping_sent = Some((st.ping_seq, Instant::now()));
    let payload = st.ping_seq.to_be_bytes().to_vec();
    sent(socket.send(WsMessage::Ping(payload.into())).await.is_ok())
}

/// Idle time and missed heartbeats.
async fn check_liveness(
    ep: &AgentEndpoint,
    session: &Session,
    socket: &mut WebSocket,
    st: &LoopState,
) -> Flow {
    if st.last_inbound.elapsed() > ep.config.websocket_timeout.get() {
        close(socket, CLOSE_GOING_AWAY, "idle timeout").await;
        return Flow::End("idle timeout".into());
    }
    if session.is_online() && st.last_heartbeat.elapsed() > session.heartbeat_interval() * 3 {
        session.set_online(false);
        let secs = st.last_heartbeat.elapsed().as_secs_f64();
        tracing::warn!(agent_id = %session.agent_id, silent_secs = secs, "agent missed 3 heartbeats: offline");
        let _ = ep
            .store
            .agent_session_status(&session.agent_ref, &session.session_id, "offline")
            .await;
        let _ = ep
            .store
            .add_agent_event(
                Some(&session.agent_ref),
                "heartbeat_missed",
                &json!({ "silent_secs": secs }),
            )
            .await;
        ep.feed.publish(
            "agent_offline",
            session.host_id.as_deref(),
            json!({ "agent_id": session.agent_id, "reason": "missed heartbeats" }),
        );
    }
    Flow::Continue
}

/// One frame (or the socket's end or error) from the agent.
async fn on_frame(
    ep: &AgentEndpoint,
    session: &Arc<Session>,
    socket: &mut WebSocket,
    st: &mut LoopState,
    frame: Option<Result<WsMessage, axum::Error>>,
) -> Flow {
    let frame = match frame {
        None => return Flow::End("socket closed".into()),
        Some(Err(e)) => return socket_error(socket, e).await,
        Some(Ok(f)) => f,
    };
    st.last_inbound = Instant::now();
    match frame {
        WsMessage::Text(t) => on_text(ep, session, socket, st, t).await,
        WsMessage::Binary(b) => on_binary(ep, session, socket, st, &b).await,
        WsMessage::Pong(p) => {
            if let (Some((seq, at)), Ok(bytes)) = (st.ping_sent, <[u8; 8]>::try_from(p.as_ref())) {
                if u64::from_be_bytes(bytes) == seq {
                    let rtt = at.elapsed();
                    session.set_rtt(rtt);
                    ep.metrics.rtt(rtt);
                    st.ping_sent = None;
                }
            }
            Flow::Continue
        }
        WsMessage::Ping(_) => Flow::Continue,
        WsMessage::Close(_) => Flow::End("agent closed the socket".into()),
    }
}

/// The socket failed: invalid UTF-8 and oversized messages are told to the agent.
async fn socket_error(socket: &mut WebSocket, e: axum::Error) -> Flow {
    let text = e.to_string();
    if text.contains("UTF-8") || text.contains("utf-8") || text.contains("Utf8") {
        close(socket, 1007, "invalid UTF-8 in a text frame").await;
        return Flow::End("invalid UTF-8 in a text frame".into());
    }
    if text.contains("too long") || text.contains("Space limit") || text.contains("capacity") {
        close(socket, CLOSE_TOO_BIG, "message too large").await;
        return Flow::End("message too large".into());
    }
    Flow::End(format!("socket error: {text}"))
}

/// A text frame: its signature (signing agents), the budget, then the message itself.
async fn on_text(
    ep: &AgentEndpoint,
    session: &Arc<Session>,
    socket: &mut WebSocket,
    st: &mut LoopState,
    t: Utf8Bytes,
) -> Flow {
    ep.metrics.ws(Dir::In, t.len());
    let signer = session.signer.as_ref();
    let decoded = match signer {
        None => Envelope::decode(t.as_bytes()),
        Some(s) => match verify_signed(ep, session, s, t.as_bytes()) {
            Ok(v) => Envelope::from_value(v),
            Err(e) => return bad_signature(ep, session, socket, st, e).await,
        },
    };
    // Stream control is paced by flow control: a stream's expected messages are free, and
    // whatever else the agent sends on streams is charged after routing (see
    // `streams::Routed::charged`). Answers to commands the server sent are paced by the
    // server itself: only answers nobody waits for count against the budget.
    let free = decoded.as_ref().is_ok_and(|e| {
        (session.protocol_version >= STREAMS_PROTOCOL_VERSION && is_stream_message(&e.message))
            || (matches!(
                e.message,
                Message::CommandResponse(_) | Message::CommandProgress(_)
            ) && ep.agents.awaits_answer(&e.id))
    });
    if !free {
        match st.budget.take() {
            Ok(true) => {}
            Ok(false) => {
                let body = ErrorBody::new(ErrorCode::RateLimited, "too many messages; slow down");
                send_signed(ep, signer, socket, &error_env(None, body)).await;
                return Flow::Continue;
            }
            Err(()) => return over_budget(socket).await,
        }
    }
    let env = match decoded {
        Ok(env) => env,
        Err(e) => {
            send_signed(ep, signer, socket, &error_env(None, e.to_error_body())).await;
            return Flow::Continue;
        }
    };
    let mut charged = false;
    let last_heartbeat = &mut st.last_heartbeat;
    if let Some(reason) =
        super::messages::handle(ep, session, socket, env, last_heartbeat, &mut charged).await
    {
        return Flow::End(reason);
    }
    if charged && st.budget.take().is_err() {
        return over_budget(socket).await;
    }
    Flow::Continue
}

/// A message whose signature did not verify: refused; too many in a row end the session.
async fn bad_signature(
    ep: &AgentEndpoint,
    session: &Session,
    socket: &mut WebSocket,
    st: &mut LoopState,
    e: SigError,
) -> Flow {
    st.bad_sigs += 1;
    ep.metrics.auth_failure();
    tracing::warn!(agent_id = %session.agent_id, reason = e.message(), "message signature refused");
    let err = error_env(None, ErrorBody::new(ErrorCode::Unauthorized, e.message()));
    send_signed(ep, session.signer.as_ref(), socket, &err).await;
    if st.bad_sigs >= ep.config.max_bad_signatures.max(1) {
        close(socket, CLOSE_POLICY, "too many bad signatures").await;
        return Flow::End("too many bad signatures".into());
    }
    Flow::Continue
}

/// A binary frame: stream data (protocol 2 and later).
async fn on_binary(
    ep: &AgentEndpoint,
    session: &Session,
    socket: &mut WebSocket,
    st: &mut LoopState,
    b: &[u8],
) -> Flow {
    ep.metrics.ws(Dir::In, b.len());
    let signer = session.signer.as_ref();
    if session.protocol_version < STREAMS_PROTOCOL_VERSION {
        let body = ErrorBody::invalid_params("binary frames are not supported; send JSON text");
        send_signed(ep, signer, socket, &error_env(None, body)).await;
        return Flow::Continue;
    }
    let charged = match protocol::decode_data_frame(b) {
        Ok((id, bytes)) => {
            let r = session.streams.data(id, bytes);
            after_route(ep, session, socket, id, r, true).await
        }
        Err(e) => {
            send_signed(ep, signer, socket, &error_env(None, e.to_error_body())).await;
            true
        }
    };
    if charged && st.budget.take().is_err() {
        return over_budget(socket).await;
    }
    Flow::Continue
}

/// Parses a text frame of a signing agent and checks its signature, timestamp and nonce.
fn verify_signed(
    ep: &AgentEndpoint,
    session: &Session,
    signer: &super::super::signing::Signer,
    bytes: &[u8],
) -> Result<serde_json::Value, SigError> {
    signer.verify(bytes, &ep.nonces, &session.agent_ref)?;
    serde_json::from_slice(bytes).map_err(|_| SigError::Missing)
}

/// Closes a socket whose agent kept sending far past its message budget.
async fn over_budget(socket: &mut WebSocket) -> Flow {
    close(socket, CLOSE_POLICY, "rate limit exceeded").await;
    Flow::End("rate limit exceeded".into())
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
