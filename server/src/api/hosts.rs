//! `/api/v1/hosts[/{id}]`: hosts, direct or through an agent. No GET returns TLS keys.
//!
//! Owns: checking a host's connection settings and admin labels, the host JSON (which fields
//! each connection mode shows: an agent host its agent's liveness, a direct host its daemon's
//! probe; both label sets), the list's query (selector, status, paging), and auditing host
//! changes. Must not: reach a host (commands and the passthrough go through its adapter) or
//! match selectors itself (the `fleet` module does).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

use super::caller::Caller;
use super::{paging, ts};
use crate::error::{ApiError, ApiResult};
use crate::fleet::{HostQuery, HostStatus};
use crate::hosts::Endpoint;
use crate::labels::{self, Selector};
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
    /// The admin's labels.
    #[serde(default, deserialize_with = "labels::deserialize_patch")]
    labels: labels::Patch,
}

/// A PATCH: absent keys keep their value; `null` or `""` clears an optional one. `labels` is
/// a JSON merge patch of the admin's labels (a string sets a key, `null` removes it; `null`
/// for the whole member removes every label).
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
    #[serde(default, deserialize_with = "labels::deserialize_patch")]
    labels: labels::Patch,
    /// The host's region (`null` or `""` clears it).
    #[serde(default, deserialize_with = "double")]
    region: Option<Option<String>>,
}

/// The longest name search `GET /api/v1/hosts?q=` takes, in bytes.
const MAX_NAME_QUERY: usize = 256;

/// `GET /api/v1/hosts` query. Strings, so each bad value gets its own message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    selector: Option<String>,
    status: Option<String>,
    /// A case-insensitive substring of the host's name.
    q: Option<String>,
    limit: Option<String>,
    next: Option<String>,
}

/// The host selection of a query: its selector and status.
pub(super) fn host_query(selector: Option<&str>, status: Option<&str>) -> ApiResult<HostQuery> {
    let selector = match selector {
        Some(s) => Selector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Selector::default(),
    };
    let status =
        match status {
            None => None,
            Some(s) => Some(HostStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request("status must be online, offline or pending")
            })?),
        };
    Ok(HostQuery {
        selector,
        status,
        name: None,
    })
}

/// The admin labels of a patch applied to `now`.
fn patched_labels(now: &labels::Labels, patch: &labels::Patch) -> ApiResult<labels::Labels> {
    match patch {
        None => Ok(now.clone()),
        Some(p) => labels::apply_patch(now, p.as_ref()).map_err(|e| ApiError::bad_request(e.0)),
    }
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

/// The host as the API shows it, with its live status (`pending` while it waits for
/// approval, whatever its agent does).
pub(super) async fn host_json(state: &AppState, h: &Host, probe: bool) -> Value {
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
        "region": h.region,
        "labels": h.labels,
        "agent_labels": h.agent_labels,
        "pending": h.is_pending(),
        "pending_since": ts(h.pending_since),
        "enrolment": h.enrolment_token_id.as_ref().map(|t| json!({
            "token_id": t,
            // A prefix only: the whole hash is what an enrolment presents.
            "machine": h.machine_id.as_deref().map(|m| m.chars().take(8).collect::<String>()),
        })),
        "created_at": ts(Some(h.created_at)),
        "updated_at": ts(Some(h.updated_at)),
    });
    let agent = match &h.agent_ref {
        Some(r) => state.store.get_agent_by_ref(r).await.ok().flatten(),
        None => None,
    };
    let (online, live) = state.agents.live_for_host(&h.id, h.agent_ref.as_deref());
    let online = online || remote_online(state, h, agent.as_ref());
    v["agent"] = match &agent {
        Some(a) => json!({
            "agent_id": a.agent_id,
            "connected": super::lookup::agent_connected(state, &a.id),
            "replica": super::lookup::replica_json(state, &a.id),
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
    if h.is_pending() {
        v["status"] = json!("pending");
    }
    v
}

/// Whether another replica, still heartbeating, holds an online session of an agent bound to
/// the host (the host's named agent counts while its row says `online`).
fn remote_online(state: &AppState, h: &Host, named: Option<&crate::store::Agent>) -> bool {
    let Some(holder) = state.cluster.holder_of_host(&h.id, h.agent_ref.as_deref()) else {
        return false;
    };
    match named {
        Some(a) if a.id == holder.agent_ref => a.status == "online",
        _ => true,
    }
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
        labels: patched_labels(&labels::Labels::new(), &b.labels)?,
        agent_labels: labels::Labels::new(),
        enrolment_token_id: None,
        machine_id: None,
        pending_since: None,
        region: None,
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
            labels: candidate.labels,
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

/// `GET /api/v1/hosts?selector=..&status=..&q=..&limit=..&next=..`: the matching hosts in
/// name order, a page at a time.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    let name = q.q.as_deref().map(str::trim);
    if name.is_some_and(|n| n.len() > MAX_NAME_QUERY) {
        return Err(ApiError::bad_request(format!(
            "q must be at most {MAX_NAME_QUERY} bytes"
        )));
    }
    let query = host_query(q.selector.as_deref(), q.status.as_deref())?.with_name(name);
    let limit = paging::limit(q.limit.as_deref())?;
    let after = match q.next.as_deref() {
        Some(c) => Some(paging::decode("hosts", c)?),
        None => None,
    };
    let page = state.fleet.page(&query, after, limit).await?;
    let futs = page.hosts.iter().map(|h| host_json(&state, h, true));
    let items = futures_util::future::join_all(futs).await;
    let next = page.next.map(|n| paging::encode("hosts", &n));
    Ok(Json(json!({ "hosts": items, "next": next })))
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
    let region_before = h.region.clone();
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
    if let Some(r) = p.region {
        if let Some(r) = &r {
            if !crate::config::valid_name(r) {
                return Err(ApiError::bad_request(
                    "region must be 1 to 64 of [A-Za-z0-9._-]",
                ));
            }
        }
        h.region = r;
    }
    let labels_before = h.labels.clone();
    h.labels = patched_labels(&h.labels, &p.labels)?;
    check_connection(&h)?;
    let result = state.store.update_host(&h).await;
    state.adapters.forget(&id);
    let mut detail = json!({ "connection_mode": { "from": before, "to": h.connection_mode } });
    if h.labels != labels_before {
        detail["labels"] = json!({ "from": labels_before, "to": h.labels });
    }
    if h.region != region_before {
        detail["region"] = json!({ "from": region_before, "to": h.region });
    }
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
        super::revoke::agent(&state, &a.id, "host deleted");
    }
    let result = state.store.delete_host(&id).await;
    state.adapters.forget(&id);
    if result.is_ok() {
        super::revoke::host(&state, &id, "host deleted");
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
