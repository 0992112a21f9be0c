//! `/api/v1/agents`: enrolment (the token is shown once), listing, settings, token rotation
//! and revocation.
//!
//! Owns: the agents' REST shapes and the audit of these actions. Must not: touch a session
//! except through `AgentManager`'s methods (disconnect, push settings).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ipnet::IpNet;
use protocol::AgentSettings;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use super::ts;
use crate::auth::{generate_token, hash_token, AGENT_TOKEN_PREFIX};
use crate::config::Seconds;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{now_ms, Agent, AgentSettingsPatch, NewAgent, Role};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    agent_id: String,
    host_id: String,
    #[serde(default)]
    allowed_cidrs: Vec<IpNet>,
    /// Seconds until the token expires (default: the server's `agent.token_ttl`, or never).
    #[serde(default)]
    expires_in: Option<u64>,
    /// Give the agent an HMAC signing key (shown once): every message is then signed.
    #[serde(default)]
    signing: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchAgent {
    #[serde(default)]
    allowed_cidrs: Option<Vec<IpNet>>,
    /// Seconds; 0 returns to the server default.
    #[serde(default)]
    heartbeat_interval: Option<u64>,
    /// Seconds; 0 returns to the server default.
    #[serde(default)]
    command_timeout: Option<u64>,
    /// `false` turns message signing off (rotate-signing-key turns it on).
    #[serde(default)]
    signing: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Seconds the old token keeps working (default: `agent.token_grace_period`).
    #[serde(default)]
    grace_period: Option<f64>,
    #[serde(default)]
    expires_in: Option<u64>,
}

fn check_agent_id(id: &str) -> ApiResult<()> {
    if !crate::auth::valid_agent_id(id) {
        return Err(ApiError::bad_request(
            "agent_id must be 1 to 128 of [A-Za-z0-9._-]",
        ));
    }
    Ok(())
}

fn agent_json(state: &AppState, a: &Agent) -> Value {
    let live = state.agents.status(&a.id);
    json!({
        "target": a.target,
        "agent_id": a.agent_id,
        "host_id": a.host_id,
        "status": super::lookup::agent_status(state, a),
        "connected": super::lookup::agent_connected(state, &a.id),
        "replica": super::lookup::replica_json(state, &a.id),
        "session_id": live.as_ref().map(|l| l.session_id.clone()),
        "version": a.version,
        "capabilities": a.capabilities,
        "health": a.health,
        "rtt_ms": live.as_ref().and_then(|l| l.rtt).map(|d| d.as_secs_f64() * 1000.0).or(a.rtt_ms),
        "last_heartbeat": ts(a.last_heartbeat),
        "connected_at": ts(a.connected_at),
        "disconnected_at": ts(a.disconnected_at),
        "token_expires_at": ts(a.token_expires_at),
        "previous_token_valid_until": ts(a.prev_token_valid_until.filter(|t| *t > now_ms())),
        "revoked_at": ts(a.revoked_at),
        "allowed_cidrs": a.allowed_cidrs,
        "heartbeat_interval": a.heartbeat_interval,
        "command_timeout": a.command_timeout,
        "signing": a.signing_key_enc.is_some(),
        "created_at": ts(Some(a.created_at)),
    })
}

async fn load(state: &AppState, agent_id: &str) -> ApiResult<Agent> {
    state
        .store
        .get_agent(agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent {agent_id:?} not found")))
}

fn expiry(state: &AppState, expires_in: Option<u64>) -> Option<i64> {
    let ttl = expires_in.map(|s| Seconds::secs(s).get()).or(state
        .config
        .agent
        .token_ttl
        .map(|s| s.get()));
    ttl.map(|d| now_ms() + d.as_millis() as i64)
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateAgent>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let Json(b) = body?;
    check_agent_id(&b.agent_id)?;
    let host = super::lookup::host(&state, &b.host_id).await?;
    let max = state.config.agent.max_agents_per_host as i64;
    if state.store.count_active_agents(&host.id).await? >= max {
        return Err(ApiError::conflict(format!(
            "host already has {max} agents (max_agents_per_host)"
        )));
    }
    // A revoked agent enrolled again for another host moves there (audited as such).
    let moved_from = state
        .store
        .get_agent(&b.agent_id)
        .await?
        .filter(|a| a.revoked_at.is_some())
        .and_then(|a| a.host_id)
        .filter(|h| *h != host.id);
    let token = generate_token(AGENT_TOKEN_PREFIX);
    let expires_at = expiry(&state, b.expires_in);
    let result = state
        .store
        .create_agent(&NewAgent {
            agent_id: b.agent_id.clone(),
            host_id: host.id.clone(),
            token_hash: hash_token(token.expose()),
            token_expires_at: expires_at,
            allowed_cidrs: b.allowed_cidrs.clone(),
        })
        .await;
    let (action, detail) = match &moved_from {
        Some(from) => (
            "agent.move",
            Some(json!({ "from_host_id": from, "to_host_id": host.id })),
        ),
        None => ("agent.create", None),
    };
    state
        .audit
        .user(
            &caller,
            action,
            Some(&host.id),
            Some(&b.agent_id),
            crate::audit::outcome_of(&result),
            None,
            detail,
        )
        .await;
    let agent = result?;
    if let Some(from) = &moved_from {
        // No session of the old enrolment survives: the revocation closed it, and one that
        // authenticated around the revocation closed itself when it read the agent again.
        tracing::info!(agent_id = %agent.agent_id, from = %from, to = %host.id, "agent moved to another host");
    }
    let signing_key = if b.signing {
        Some(new_signing_key(&state, &agent.agent_id).await?)
    } else {
        None
    };
    let _ = state
        .store
        .add_agent_event(
            Some(&agent.id),
            "enrolled",
            &json!({ "by": caller.user, "signing": b.signing, "moved_from_host_id": moved_from }),
        )
        .await;
    let mut body = json!({
        "agent_id": agent.agent_id,
        "host_id": host.id,
        "token": token.expose(),
        "token_expires_at": ts(expires_at),
        "signing": b.signing,
    });
    if let Some(k) = signing_key {
        body["signing_key"] = json!(k.expose());
    }
    Ok((StatusCode::CREATED, Json(body)))
}

/// Generates, encrypts and stores a new signing key; returns it (to show once).
async fn new_signing_key(state: &AppState, agent_id: &str) -> ApiResult<protocol::Secret> {
    let key = protocol::Secret::new(crate::agents::signing::generate_key_hex());
    let enc = state
        .keys
        .encrypt(key.expose())
        .map_err(ApiError::internal)?;
    state
        .store
        .set_agent_signing_key(agent_id, Some(&enc))
        .await?;
    Ok(key)
}

/// `POST /api/v1/agents/{agent_id}/rotate-signing-key`: a new HMAC key (shown once); signing
/// is on from now. The live session closes: the agent must reconnect with the new key.
pub async fn rotate_signing_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let a = load(&state, &agent_id).await?;
    if a.revoked_at.is_some() {
        return Err(ApiError::conflict("the agent is revoked"));
    }
    let result = new_signing_key(&state, &agent_id).await;
    state
        .audit
        .user(
            &caller,
            "agent.rotate_signing_key",
            a.host_id.as_deref(),
            Some(&agent_id),
            crate::audit::outcome_of(&result),
            None,
            None,
        )
        .await;
    let key = result?;
    let disconnected = super::revoke::reconnect_agent(
        &state,
        &a.id,
        "signing key rotated; reconnect with the new key",
    );
    Ok(Json(json!({
        "agent_id": agent_id,
        "signing": true,
        "signing_key": key.expose(),
        "disconnected": disconnected,
    })))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let agents = state.store.list_agents().await?;
    Ok(Json(
        json!({ "agents": agents.iter().map(|a| agent_json(&state, a)).collect::<Vec<_>>() }),
    ))
}

pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let a = load(&state, &agent_id).await?;
    let mut v = agent_json(&state, &a);
    // The agent's last self-update (see `POST /api/v1/agents/{agent_id}/update`).
    let last = state.store.agent_updates_of(&a.id, 1).await?;
    v["update"] = json!(last.first());
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let a = load(&state, &agent_id).await?;
    let events = state
        .store
        .list_agent_events(Some(&a.id), q.limit.clamp(1, 1000))
        .await?;
    let items: Vec<Value> = events
        .into_iter()
        .map(|e| json!({ "id": e.id, "agent_id": e.agent_id, "event_type": e.event_type, "event_data": e.event_data, "created_at": ts(Some(e.created_at)) }))
        .collect();
    Ok(Json(json!({ "events": items })))
}

pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
    body: Result<Json<PatchAgent>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let Json(p) = body?;
    let a = load(&state, &agent_id).await?;
    let to_opt = |v: Option<u64>| v.map(|s| if s == 0 { None } else { Some(s as i64) });
    let patch = AgentSettingsPatch {
        allowed_cidrs: p.allowed_cidrs.clone(),
        heartbeat_interval: to_opt(p.heartbeat_interval),
        command_timeout: to_opt(p.command_timeout),
    };
    let result = state.store.update_agent_settings(&agent_id, &patch).await;
    state
        .audit
        .user(
            &caller,
            "agent.update",
            a.host_id.as_deref(),
            Some(&agent_id),
            crate::audit::outcome_of(&result),
            None,
            None,
        )
        .await;
    result?;
    if p.signing == Some(true) {
        return Err(ApiError::bad_request(
            "turn signing on with POST /api/v1/agents/{agent_id}/rotate-signing-key (the key is shown once)",
        ));
    }
    if p.signing == Some(false) && a.signing_key_enc.is_some() {
        state.store.set_agent_signing_key(&agent_id, None).await?;
        super::revoke::reconnect_agent(&state, &a.id, "message signing turned off; reconnect");
    }
    let updated = load(&state, &agent_id).await?;
    if p.heartbeat_interval.is_some() || p.command_timeout.is_some() {
        let (hb, ct) = crate::agents::effective_settings(&state.config.agent, &updated);
        let settings = AgentSettings {
            heartbeat_interval: p.heartbeat_interval.map(|_| Seconds(hb).whole_secs()),
            command_timeout: p.command_timeout.map(|_| Seconds(ct).whole_secs()),
        };
        state.agents.push_settings(&updated.id, settings);
    }
    if p.allowed_cidrs.is_some() {
        // The live session was checked against the old list: make it authenticate again.
        super::revoke::reconnect_agent(&state, &updated.id, "allowlist changed; reconnect");
    }
    Ok(Json(agent_json(&state, &updated)))
}

pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
    body: Option<Json<RotateBody>>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let a = load(&state, &agent_id).await?;
    if a.revoked_at.is_some() {
        return Err(ApiError::conflict(
            "the agent is revoked; enrol it again with POST /api/v1/agents",
        ));
    }
    let grace = match b.grace_period {
        Some(g) if !(0.0..=1e7).contains(&g) => {
            return Err(ApiError::bad_request("grace_period out of range"))
        }
        Some(g) => std::time::Duration::from_secs_f64(g),
        None => state.config.agent.token_grace_period.get(),
    };
    let grace_until = if grace.is_zero() {
        None
    } else {
        Some(now_ms() + grace.as_millis() as i64)
    };
    let token = generate_token(AGENT_TOKEN_PREFIX);
    let expires_at = expiry(&state, b.expires_in);
    let result = state
        .store
        .rotate_agent_token(
            &agent_id,
            &hash_token(token.expose()),
            expires_at,
            grace_until,
        )
        .await;
    state
        .audit
        .user(
            &caller,
            "agent.rotate_token",
            a.host_id.as_deref(),
            Some(&agent_id),
            crate::audit::outcome_of(&result),
            None,
            None,
        )
        .await;
    result?;
    end_old_token_sessions(&state, &agent_id, grace).await;
    let _ = state
        .store
        .add_agent_event(
            Some(&a.id),
            "token_rotated",
            &json!({ "by": caller.user, "grace_secs": grace.as_secs_f64() }),
        )
        .await;
    Ok(Json(json!({
        "agent_id": agent_id,
        "token": token.expose(),
        "token_expires_at": ts(expires_at),
        "previous_token_valid_until": ts(grace_until),
    })))
}

/// A session opened with the old token ends when the old token stops working: at once
/// without a grace period, else when the grace period ends.
async fn end_old_token_sessions(state: &AppState, agent_id: &str, grace: std::time::Duration) {
    let st = state.clone();
    let agent_id = agent_id.to_string();
    let check = async move {
        match st.store.get_agent(&agent_id).await {
            Ok(Some(row)) => {
                super::revoke::agent_token(
                    &st,
                    &row,
                    "the agent token was rotated; reconnect with the new token",
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not check the agent's session after a rotation")
            }
        }
    };
    if grace.is_zero() {
        // Within the request: the answer comes after the old session was told to close.
        check.await;
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            check.await;
        });
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let a = load(&state, &agent_id).await?;
    let result = state.store.revoke_agent(&agent_id).await;
    state
        .audit
        .user(
            &caller,
            "agent.revoke",
            a.host_id.as_deref(),
            Some(&agent_id),
            crate::audit::outcome_of(&result),
            None,
            None,
        )
        .await;
    result.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::conflict("the agent is already revoked"),
        other => other.into(),
    })?;
    let disconnected = super::revoke::agent(&state, &a.id, "agent revoked");
    let _ = state
        .store
        .add_agent_event(Some(&a.id), "revoked", &json!({ "by": caller.user }))
        .await;
    Ok(Json(
        json!({ "agent_id": agent_id, "revoked": true, "disconnected": disconnected }),
    ))
}
