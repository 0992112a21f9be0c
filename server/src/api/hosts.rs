//! `/api/v1/hosts[/{id}]`: hosts, direct or through an agent. No GET returns TLS keys.
//!
//! Owns: checking a host's connection settings, the host JSON (which fields each connection
//! mode shows: an agent host its agent's liveness, a direct host its daemon's probe), and
//! auditing host changes. Must not: reach a host (commands and the passthrough go through
//! its adapter).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

use super::caller::Caller;
use super::ts;
use crate::error::{ApiError, ApiResult};
use crate::hosts::Endpoint;
use crate::state::AppState;
use crate::store::{ConnectionMode, Host, NewHost, Role};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateHost {
    name: String,
    #[serde(default)]
    connection_mode: Option<ConnectionMode>,
    #[serde(default)]
    docker_url: Option<String>,
    #[serde(default)]
    tls_ca: Option<String>,
    #[serde(default)]
    tls_cert: Option<String>,
    #[serde(default)]
    tls_key: Option<protocol::Secret>,
    #[serde(default)]
    tls_server_name: Option<String>,
}

/// A PATCH: absent keys keep their value; `null` or `""` clears an optional one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchHost {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    connection_mode: Option<ConnectionMode>,
    #[serde(default, deserialize_with = "double")]
    docker_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    tls_ca: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    tls_cert: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_secret")]
    tls_key: Option<Option<protocol::Secret>>,
    #[serde(default, deserialize_with = "double")]
    tls_server_name: Option<Option<String>>,
}

fn double<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(Some(v.filter(|s| !s.is_empty())))
}

fn double_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<protocol::Secret>>, D::Error> {
    let v: Option<protocol::Secret> = Option::deserialize(d)?;
    Ok(Some(v.filter(|s| !s.is_empty())))
}

fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 255 {
        return Err(ApiError::bad_request("name must be 1 to 255 characters"));
    }
    Ok(())
}

/// Checks a host's connection settings as they will be stored.
fn check_connection(h: &Host) -> ApiResult<()> {
    if h.connection_mode == ConnectionMode::Direct {
        let url = h.docker_url.as_deref().ok_or_else(|| {
            ApiError::bad_request("a direct host needs docker_url (unix://, tcp:// or https://)")
        })?;
        let ep = Endpoint::parse(url).map_err(ApiError::bad_request)?;
        let has_tls = h.tls_cert.is_some() || h.tls_key_enc.is_some() || h.tls_ca.is_some();
        if has_tls && !matches!(ep, Endpoint::Https(_)) {
            return Err(ApiError::bad_request(
                "TLS material needs an https:// docker_url",
            ));
        }
        if h.tls_cert.is_some() != h.tls_key_enc.is_some() {
            return Err(ApiError::bad_request("tls_cert and tls_key go together"));
        }
    } else if let Some(url) = &h.docker_url {
        // Kept for a later switch back to direct (the seed's rollback plan); must still parse.
        Endpoint::parse(url).map_err(ApiError::bad_request)?;
    }
    Ok(())
}

/// The host as the API shows it, with its live status.
async fn host_json(state: &AppState, h: &Host, probe: bool) -> Value {
    let mut v = json!({
        "id": h.id,
        "name": h.name,
        "connection_mode": h.connection_mode,
        "docker_url": h.docker_url,
        "tls": {
            "ca": h.tls_ca.is_some(),
            "client_cert": h.tls_cert.is_some(),
            "client_key": h.tls_key_enc.is_some(),
            "server_name": h.tls_server_name,
        },
        "agent_id": h.agent_id,
        "created_at": ts(Some(h.created_at)),
        "updated_at": ts(Some(h.updated_at)),
    });
    let agent = match &h.agent_ref {
        Some(r) => state.store.get_agent_by_ref(r).await.ok().flatten(),
        None => None,
    };
    let (online, live) = state.agents.live_for_host(&h.id, h.agent_ref.as_deref());
    v["agent"] = match &agent {
        Some(a) => json!({
            "agent_id": a.agent_id,
            "connected": live.is_some(),
            "status": super::lookup::agent_status(state, a),
            "last_heartbeat": ts(a.last_heartbeat),
            "version": a.version,
            "capabilities": a.capabilities,
            "health": a.health,
            "rtt_ms": live.as_ref().and_then(|l| l.rtt).map(|d| d.as_secs_f64() * 1000.0).or(a.rtt_ms),
        }),
        None => Value::Null,
    };
    match h.connection_mode {
        ConnectionMode::Agent => {
            v["status"] = json!(if online { "online" } else { "offline" });
            v["last_heartbeat"] = ts(agent.as_ref().and_then(|a| a.last_heartbeat));
            v["version"] = json!(live
                .as_ref()
                .map(|l| l.version.clone())
                .or(agent.as_ref().and_then(|a| a.version.clone())));
            v["capabilities"] = json!(live
                .as_ref()
                .map(|l| l.capabilities.clone())
                .unwrap_or_else(|| agent
                    .as_ref()
                    .map(|a| a.capabilities.clone())
                    .unwrap_or_default()));
            v["rtt_ms"] = v["agent"]["rtt_ms"].clone();
            v["health"] = agent
                .as_ref()
                .map(|a| a.health.clone())
                .unwrap_or(Value::Null);
        }
        ConnectionMode::Direct => {
            v["last_heartbeat"] = Value::Null;
            v["capabilities"] = json!(["docker"]);
            if probe {
                let (status, version) = match state.adapters.direct_for(h) {
                    Ok(a) => {
                        match tokio::time::timeout(Duration::from_secs(3), a.api_version()).await {
                            Ok(Ok(ver)) => ("online", Some(ver)),
                            _ => ("offline", None),
                        }
                    }
                    Err(_) => ("offline", None),
                };
                v["status"] = json!(status);
                v["api_version"] = json!(version);
            } else {
                v["status"] = json!("unknown");
            }
            v["version"] = Value::Null;
        }
    }
    v
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateHost>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let Json(b) = body?;
    check_name(&b.name)?;
    let mode = b.connection_mode.unwrap_or(if b.docker_url.is_some() {
        ConnectionMode::Direct
    } else {
        ConnectionMode::Agent
    });
    let tls_key_enc = match b.tls_key.as_ref().filter(|k| !k.is_empty()) {
        Some(k) => Some(state.keys.encrypt(k.expose()).map_err(ApiError::internal)?),
        None => None,
    };
    let candidate = Host {
        id: String::new(),
        name: b.name.clone(),
        connection_mode: mode,
        docker_url: b.docker_url.clone().filter(|s| !s.is_empty()),
        tls_ca: b.tls_ca.clone().filter(|s| !s.is_empty()),
        tls_cert: b.tls_cert.clone().filter(|s| !s.is_empty()),
        tls_key_enc,
        tls_server_name: b.tls_server_name.clone().filter(|s| !s.is_empty()),
        agent_ref: None,
        agent_id: None,
        created_at: 0,
        updated_at: 0,
    };
    check_connection(&candidate)?;
    let result = state
        .store
        .create_host(&NewHost {
            name: candidate.name,
            connection_mode: candidate.connection_mode,
            docker_url: candidate.docker_url,
            tls_ca: candidate.tls_ca,
            tls_cert: candidate.tls_cert,
            tls_key_enc: candidate.tls_key_enc,
            tls_server_name: candidate.tls_server_name,
        })
        .await;
    let outcome = crate::audit::outcome_of(&result);
    let host_id = result.as_ref().ok().map(|h| h.id.clone());
    state
        .audit
        .user(
            &caller,
            "host.create",
            host_id.as_deref(),
            Some(&b.name),
            outcome,
            None,
            Some(json!({ "connection_mode": mode })),
        )
        .await;
    let host = result?;
    Ok((
        StatusCode::CREATED,
        Json(host_json(&state, &host, false).await),
    ))
}

/// `GET /api/v1/hosts` filters and pages on the server, so a fleet of any size lists fast.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only hosts whose name contains this (case-insensitive).
    #[serde(default)]
    q: Option<String>,
    /// `online` or `offline`: agent hosts by their agent's live connection, direct hosts
    /// by a probe of their daemon.
    #[serde(default)]
    status: Option<String>,
    /// At most this many hosts (1 to 1000); absent: all.
    #[serde(default)]
    limit: Option<usize>,
    /// Skip this many hosts of the filtered list (ordered by name).
    #[serde(default)]
    offset: Option<usize>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let axum::extract::Query(q) = q?;
    if q.limit.is_some_and(|l| l == 0 || l > 1000) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let want_online = match q.status.as_deref() {
        None | Some("") => None,
        Some("online") => Some(true),
        Some("offline") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status must be online or offline, not {other:?}"
            )))
        }
    };
    let mut hosts = state.store.list_hosts().await?;
    if let Some(needle) =
        q.q.as_deref()
            .map(str::to_lowercase)
            .filter(|n| !n.is_empty())
    {
        hosts.retain(|h| h.name.to_lowercase().contains(&needle));
    }
    hosts.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    if let Some(online) = want_online {
        let mut kept = Vec::with_capacity(hosts.len());
        for h in hosts {
            if is_online(&state, &h).await == online {
                kept.push(h);
            }
        }
        hosts = kept;
    }
    let total = hosts.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let end = q.limit.map_or(total, |l| (offset + l).min(total));
    let futs = hosts[offset..end]
        .iter()
        .map(|h| host_json(&state, h, true));
    let items = futures_util::future::join_all(futs).await;
    Ok(Json(
        json!({ "hosts": items, "total": total, "offset": offset }),
    ))
}

/// Whether the host answers now: its agent is connected, or its daemon answers a probe.
async fn is_online(state: &AppState, h: &Host) -> bool {
    match h.connection_mode {
        ConnectionMode::Agent => state.agents.live_for_host(&h.id, h.agent_ref.as_deref()).0,
        ConnectionMode::Direct => match state.adapters.direct_for(h) {
            Ok(a) => matches!(
                tokio::time::timeout(Duration::from_secs(3), a.api_version()).await,
                Ok(Ok(_))
            ),
            Err(_) => false,
        },
    }
}

pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let h = super::lookup::host(&state, &id).await?;
    Ok(Json(host_json(&state, &h, true).await))
}

pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<PatchHost>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let Json(p) = body?;
    let mut h = super::lookup::host(&state, &id).await?;
    let before = h.connection_mode;
    if let Some(n) = p.name {
        check_name(&n)?;
        h.name = n;
    }
    if let Some(m) = p.connection_mode {
        h.connection_mode = m;
    }
    if let Some(v) = p.docker_url {
        h.docker_url = v;
    }
    if let Some(v) = p.tls_ca {
        h.tls_ca = v;
    }
    if let Some(v) = p.tls_cert {
        h.tls_cert = v;
    }
    if let Some(v) = p.tls_key {
        h.tls_key_enc = match v {
            Some(k) => Some(state.keys.encrypt(k.expose()).map_err(ApiError::internal)?),
            None => None,
        };
    }
    if let Some(v) = p.tls_server_name {
        h.tls_server_name = v;
    }
    check_connection(&h)?;
    let result = state.store.update_host(&h).await;
    state.adapters.forget(&id);
    let detail = json!({ "connection_mode": { "from": before, "to": h.connection_mode } });
    state
        .audit
        .user(
            &caller,
            "host.update",
            Some(&id),
            Some(&h.name),
            crate::audit::outcome_of(&result),
            None,
            Some(detail),
        )
        .await;
    let host = result?;
    Ok(Json(host_json(&state, &host, false).await))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let h = super::lookup::host(&state, &id).await?;
    // The host's agents go with it: revoked, and their sessions closed.
    let agents = state.store.agents_of_host(&id).await?;
    for a in agents.iter().filter(|a| a.revoked_at.is_none()) {
        state.store.revoke_agent(&a.agent_id).await?;
        state.agents.disconnect(&a.id, "host deleted");
    }
    let result = state.store.delete_host(&id).await;
    state.adapters.forget(&id);
    if result.is_ok() {
        state.leases.end_host(&id, "host deleted");
    }
    state
        .audit
        .user(
            &caller,
            "host.delete",
            Some(&id),
            Some(&h.name),
            crate::audit::outcome_of(&result),
            None,
            None,
        )
        .await;
    result?;
    Ok(Json(
        json!({ "id": id, "deleted": true, "agents_revoked": agents.iter().map(|a| &a.agent_id).collect::<Vec<_>>() }),
    ))
}
