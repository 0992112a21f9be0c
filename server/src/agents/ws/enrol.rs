//! `GET /ws/enrol`: an agent without credentials presents an enrolment token, once, and gets
//! its own agent id and token back (see `docs/protocol.md`, "Enrolment").
//!
//! The socket carries exactly one `enrol` (read within `auth_timeout`, at most
//! [`MAX_ENROL_SIZE`] bytes, checked against the bounds of `crate::enrolment` before any
//! lookup) and one `enrol_response`, then closes. The enrolment itself is one store
//! transaction: a refused one writes no host, no agent and no use. Failed enrolments count
//! against the source address like failed handshakes (a valid token is never refused for
//! them), and are sampled into the audit log; successful ones are always audited.
//!
//! Owns: the endpoint, the answer, and what follows an enrolment (the replaced agents'
//! sessions closed, the agent's event, the audit, the live feed). Must not: decide what a
//! token allows (`crate::enrolment`) or write SQL (`crate::store`).

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use protocol::{
    EnrolPayload, EnrolResponsePayload, EnrolStatus, Envelope, ErrorCode, Message, Secret,
};
use serde_json::json;
use std::net::IpAddr;

use super::super::sampling::Sample;
use super::{close, send, AgentEndpoint, CLOSE_NORMAL, CLOSE_POLICY};
use crate::auth::{generate_token, hash_token, hashes_equal, AGENT_TOKEN_PREFIX};
use crate::cluster::WakeUp;
use crate::enrolment::{self, Refusal};
use crate::error::ApiError;
use crate::forwarded::ClientIp;
use crate::metrics::Dir;
use crate::store::{now_ms, Enrolled, Enrolment, EnrolmentToken, NewAudit, NotEnrolled};

/// The largest `enrol` message accepted.
pub const MAX_ENROL_SIZE: usize = 16 * 1024;

pub async fn enrol_ws(
    State(ep): State<AgentEndpoint>,
    ClientIp(ip): ClientIp,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
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
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(MAX_ENROL_SIZE)
        .max_frame_size(MAX_ENROL_SIZE)
        .on_upgrade(move |socket| async move {
            serve_enrol(ep, ip, socket).await;
        })
}

/// One enrolment: the `enrol` message, the enrolment, the answer, the close.
async fn serve_enrol(ep: AgentEndpoint, ip: Option<IpAddr>, mut socket: WebSocket) {
    let (id, request) = match read_enrol(&ep, &mut socket).await {
        Some(Ok(x)) => x,
        Some(Err((id, refusal))) => {
            record_refusal(&ep, &refusal, None, None, ip).await;
            answer(&ep, &mut socket, &id, Err(refusal)).await;
            return;
        }
        None => return,
    };
    let outcome = enrol(&ep, &request, ip).await;
    match &outcome {
        Ok((enrolled, token, _)) => record_enrolled(&ep, enrolled, token, ip).await,
        Err((refusal, token)) => {
            record_refusal(&ep, refusal, token.as_ref(), Some(&request.name), ip).await
        }
    }
    let reply = outcome
        .map(|(e, _, secret)| (e, secret))
        .map_err(|(r, _)| r);
    answer(&ep, &mut socket, &id, reply).await;
}

/// The first frame as an `enrol` message: `None` when the socket went away, else the
/// message or why it is not one (with the id to answer to).
async fn read_enrol(
    ep: &AgentEndpoint,
    socket: &mut WebSocket,
) -> Option<Result<(String, EnrolPayload), (String, Refusal)>> {
    let first = tokio::time::timeout(ep.config.auth_timeout.get(), socket.recv()).await;
    let text = match first {
        Ok(Some(Ok(WsMessage::Text(t)))) => t,
        Ok(None) | Ok(Some(Err(_))) => return None,
        Err(_) => {
            let why = Refusal::Invalid("no enrol message in time".into());
            return Some(Err(("enrol".into(), why)));
        }
        Ok(Some(Ok(_))) => {
            let why = Refusal::Invalid("the first message must be a text enrol message".into());
            return Some(Err(("enrol".into(), why)));
        }
    };
    ep.metrics.ws(Dir::In, text.len());
    let env = match Envelope::decode(text.as_bytes()) {
        Ok(env) => env,
        Err(e) => return Some(Err(("enrol".into(), Refusal::Invalid(e.to_string())))),
    };
    match env.message {
        Message::Enrol(p) => Some(Ok((env.id, p))),
        other => {
            let why = format!(
                "the first message must be enrol, not {}",
                other.message_type().as_str()
            );
            Some(Err((env.id, Refusal::Invalid(why))))
        }
    }
}

type Refused = (Refusal, Option<EnrolmentToken>);

/// Checks the request and the token, then runs the enrolment transaction. Returns what it
/// wrote, the token, and the new agent's token (not stored).
async fn enrol(
    ep: &AgentEndpoint,
    req: &EnrolPayload,
    ip: Option<IpAddr>,
) -> Result<(Enrolled, EnrolmentToken, Secret), Refused> {
    enrolment::check_request(req).map_err(|r| (r, None))?;
    // Only failures are refused for a busy address: a valid token enrols whatever others
    // did from the same address.
    let blocked = ip.is_some_and(|ip| ep.enrol_limiter.blocked(ip));
    let limited = |r: Refusal| if blocked { Refusal::RateLimited } else { r };
    let hash = hash_token(req.enrol_token.expose());
    let token = match ep.store.find_enrolment_token_by_hash(&hash).await {
        Ok(t) => t.filter(|t| hashes_equal(&t.token_hash, &hash)),
        Err(e) => {
            tracing::error!(error = %e, "enrolment token lookup failed");
            return Err((Refusal::Unavailable, None));
        }
    };
    let Some(token) = token else {
        return Err((limited(Refusal::UnknownToken), None));
    };
    if let Err(r) = enrolment::usable(&token, now_ms()) {
        return Err((limited(r), Some(token)));
    }
    let secret = generate_token(AGENT_TOKEN_PREFIX);
    let random: [u8; 6] = uuid::Uuid::new_v4().as_bytes()[..6]
        .try_into()
        .unwrap_or([0; 6]);
    let e = Enrolment {
        token_id: token.id.clone(),
        names: enrolment::candidate_names(req),
        machine_id: req.machine_id.clone(),
        agent_id: enrolment::agent_id_for(req.name.trim(), &random),
        agent_token_hash: hash_token(secret.expose()),
        agent_token_expires_at: ep
            .config
            .token_ttl
            .map(|t| now_ms() + t.get().as_millis() as i64),
    };
    match ep.store.enrol(&e).await {
        Ok(Ok(enrolled)) => Ok((enrolled, token, secret)),
        Ok(Err(NotEnrolled::NameTaken(name))) => Err((Refusal::NameTaken(name), Some(token))),
        Ok(Err(NotEnrolled::TokenUnusable)) => {
            // Used up (or revoked, expired) since the check above: say which.
            let now = ep.store.get_enrolment_token(&token.id).await.ok().flatten();
            let why = now
                .as_ref()
                .and_then(|t| enrolment::usable(t, now_ms()).err())
                .unwrap_or(Refusal::UsedUp);
            Err((why, now.or(Some(token))))
        }
        Err(crate::store::StoreError::Conflict(_)) => {
            let first = e.names.first().cloned().unwrap_or_default();
            Err((Refusal::NameTaken(first), Some(token)))
        }
        Err(err) => {
            tracing::error!(error = %err, "the enrolment could not be recorded");
            Err((Refusal::Unavailable, Some(token)))
        }
    }
}

/// Sends `enrol_response` and closes the socket.
async fn answer(
    ep: &AgentEndpoint,
    socket: &mut WebSocket,
    id: &str,
    outcome: Result<(Enrolled, Secret), Refusal>,
) {
    let (payload, code, reason) = match outcome {
        Ok((e, secret)) => (
            EnrolResponsePayload {
                status: EnrolStatus::Enrolled,
                agent_id: Some(e.agent.agent_id.clone()),
                auth_token: Some(secret),
                host_id: Some(e.host.id.clone()),
                host_name: Some(e.host.name.clone()),
                pending: e.host.is_pending(),
                error: None,
            },
            CLOSE_NORMAL,
            "enrolled".to_string(),
        ),
        Err(r) => (
            EnrolResponsePayload {
                status: EnrolStatus::Rejected,
                agent_id: None,
                auth_token: None,
                host_id: None,
                host_name: None,
                pending: false,
                error: Some(r.body()),
            },
            CLOSE_POLICY,
            r.reason(),
        ),
    };
    let env = Envelope::new(id, Message::EnrolResponse(payload));
    send(ep, socket, &env).await;
    close(socket, code, &reason).await;
}

/// A committed enrolment: the replaced agents' sessions close, then the event, the audit, the
/// live feed.
async fn record_enrolled(
    ep: &AgentEndpoint,
    e: &Enrolled,
    token: &EnrolmentToken,
    ip: Option<IpAddr>,
) {
    for old in &e.revoked {
        // Wherever the replaced agent's session is held.
        ep.cluster.notifier().send(WakeUp::RevokeAgent {
            agent: old.id.clone(),
        });
        ep.agents.disconnect(
            &old.id,
            "the machine enrolled again: these credentials were replaced",
        );
    }
    let revoked: Vec<&str> = e.revoked.iter().map(|a| a.agent_id.as_str()).collect();
    let pending = e.host.is_pending();
    let detail = json!({
        "token_id": token.id, "token_name": token.name, "host_name": e.host.name,
        "reclaimed": e.reclaimed, "pending": pending, "revoked_agents": revoked, "uses": e.uses,
    });
    let mut data = detail.clone();
    data["source_ip"] = json!(ip.map(|i| i.to_string()));
    let _ = ep
        .store
        .add_agent_event(Some(&e.agent.id), "enrolled", &data)
        .await;
    ep.audit
        .agent(
            &e.agent.agent_id,
            "host.enrol",
            Some(&e.host.id),
            "success",
            None,
            Some(detail),
            ip,
        )
        .await;
    ep.feed.publish(
        "host_enrolled",
        Some(&e.host.id),
        json!({ "name": e.host.name, "agent_id": e.agent.agent_id, "pending": pending, "reclaimed": e.reclaimed }),
    );
    tracing::info!(host = %e.host.name, host_id = %e.host.id, agent_id = %e.agent.agent_id,
        token = %token.name, reclaimed = e.reclaimed, pending, "host enrolled");
}

/// A refused enrolment: the address limiter always (unless the server failed); the audit log
/// and the warning as the sampler decides.
async fn record_refusal(
    ep: &AgentEndpoint,
    refusal: &Refusal,
    token: Option<&EnrolmentToken>,
    name: Option<&str>,
    ip: Option<IpAddr>,
) {
    if !matches!(refusal, Refusal::Unavailable | Refusal::Disabled) {
        if let Some(ip) = ip {
            ep.enrol_limiter.record_failure(ip);
        }
    }
    let skipped = match ep.enrol_sampler.sample(ip) {
        Sample::Write { skipped } => skipped,
        Sample::Skip => {
            tracing::debug!(
                ?ip,
                reason = refusal.as_str(),
                "enrolment refused (sampled out)"
            );
            return;
        }
    };
    let name: Option<String> = name.map(|n| n.chars().take(enrolment::MAX_NAME_LEN).collect());
    tracing::warn!(?ip, reason = refusal.as_str(), name = ?name, skipped, "enrolment refused");
    let detail = json!({
        "reason": refusal.reason(), "token_id": token.map(|t| &t.id),
        "token_name": token.map(|t| &t.name), "skipped_since_last": skipped,
    });
    ep.audit
        .record(NewAudit {
            actor_kind: "agent".into(),
            actor: "(enrolling)".into(),
            host_id: None,
            action: "host.enrol".into(),
            target: name,
            outcome: "denied".into(),
            error_code: Some(refusal.as_str().into()),
            detail: Some(detail),
            source_ip: ip.map(|i| i.to_string()),
        })
        .await;
}
