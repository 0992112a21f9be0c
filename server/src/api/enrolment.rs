//! `/api/v1/enrolment-tokens` (admin): tokens an agent presents once to enrol itself (shown
//! once, at creation), and `/api/v1/hosts/{id}/approve|reject` (admin) for the hosts that
//! enrolled with a token that needs approval.
//!
//! Owns: the REST shapes of enrolment tokens, issuing them (the CLI calls [`issue`] too), and
//! the audit of token and approval actions. Must not: store or return a token after it was
//! shown once, or enrol anything (agents enrol on `/ws/enrol`).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

use super::caller::Caller;
use super::ts;
use crate::auth::{generate_token, hash_token, token_prefix, ENROL_TOKEN_PREFIX};
use crate::enrolment;
use crate::error::{ApiError, ApiResult};
use crate::labels::{self, Labels};
use crate::state::AppState;
use crate::store::{now_ms, EnrolmentToken, NewEnrolmentToken, Role, Store, StoreError};

/// `expires_in`: seconds, or a duration such as `7d`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ExpiresIn {
    Secs(u64),
    Text(String),
}

/// What an admin asks for (the API's body; the CLI builds the same).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    /// Given to every host enrolled with the token, as its admin labels. A repeated key is
    /// refused (a body means one thing to every reader).
    #[serde(default, deserialize_with = "token_labels")]
    pub labels: Labels,
    /// Absent: never.
    #[serde(default)]
    pub expires_in: Option<ExpiresIn>,
    /// Absent: unlimited.
    #[serde(default)]
    pub max_uses: Option<i64>,
    /// Hosts wait as `pending` until an admin approves them.
    #[serde(default)]
    pub require_approval: bool,
}

/// An object of label keys to strings (`null` or absent: none), read with the `labels`
/// module's reader, so a repeated key is refused as it is for hosts.
fn token_labels<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
    let patch = labels::deserialize_patch(d)?.flatten().unwrap_or_default();
    patch
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => Ok((k, v)),
            None => Err(serde::de::Error::custom(format!(
                "label {k:?}: the value must be a string"
            ))),
        })
        .collect()
}

impl TokenRequest {
    /// Checks every field; returns the expiry as a duration.
    pub fn check(&self) -> Result<Option<Duration>, String> {
        if self.name.trim().is_empty()
            || self.name.len() > enrolment::MAX_TOKEN_NAME_LEN
            || self.name.chars().any(char::is_control)
        {
            return Err(format!(
                "name must be 1 to {} characters",
                enrolment::MAX_TOKEN_NAME_LEN
            ));
        }
        enrolment::check_labels(&self.labels)?;
        if let Some(n) = self.max_uses {
            enrolment::check_max_uses(n)?;
        }
        match &self.expires_in {
            None => Ok(None),
            Some(ExpiresIn::Secs(s)) => {
                enrolment::check_expires_in(Duration::from_secs(*s)).map(Some)
            }
            Some(ExpiresIn::Text(t)) => enrolment::parse_duration(t).map(Some),
        }
    }
}

/// Checks the request, makes a token and stores its hash. Returns the row and the token,
/// which is not stored.
pub async fn issue(
    store: &Store,
    req: &TokenRequest,
    created_by: &str,
) -> Result<(EnrolmentToken, protocol::Secret), ApiError> {
    let expires_in = req.check().map_err(ApiError::bad_request)?;
    let token = generate_token(ENROL_TOKEN_PREFIX);
    let row = store
        .insert_enrolment_token(&NewEnrolmentToken {
            name: req.name.clone(),
            token_hash: hash_token(token.expose()),
            prefix: token_prefix(token.expose()),
            labels: req.labels.clone(),
            require_approval: req.require_approval,
            max_uses: req.max_uses,
            expires_at: expires_in.map(|d| now_ms() + d.as_millis() as i64),
            created_by: created_by.to_string(),
        })
        .await?;
    Ok((row, token))
}

/// The token as lists show it (never the token itself).
pub fn token_json(t: &EnrolmentToken) -> Value {
    let state = match enrolment::usable(t, now_ms()) {
        Ok(()) => "active",
        Err(r) => r.as_str(),
    };
    json!({
        "id": t.id,
        "name": t.name,
        "prefix": t.prefix,
        "labels": t.labels,
        "require_approval": t.require_approval,
        "max_uses": t.max_uses,
        "uses": t.uses,
        "state": state,
        "created_by": t.created_by,
        "created_at": ts(Some(t.created_at)),
        "expires_at": ts(t.expires_at),
        "revoked_at": ts(t.revoked_at),
        "last_used_at": ts(t.last_used_at),
    })
}

/// What the audit keeps of a token (never the token).
pub fn audit_detail(t: &EnrolmentToken) -> Value {
    json!({
        "token_id": t.id, "labels": t.labels, "require_approval": t.require_approval,
        "max_uses": t.max_uses, "expires_at": t.expires_at,
    })
}

/// The URL the install lines dial: `public_url`, else this server as the caller reached it
/// (its `Host`, when that is a plain host and port), else the listen address.
fn install_url(config: &crate::config::Config, headers: &HeaderMap) -> String {
    let (url, guessed) = config.agent_url();
    if !guessed {
        return url;
    }
    let scheme = if config.tls_cert.is_some() {
        "wss"
    } else {
        "ws"
    };
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!("{scheme}://{h}"))
        .unwrap_or(url)
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let Json(b) = body?;
    let result = issue(&state.store, &b, &caller.user).await;
    let name: String = b.name.chars().take(enrolment::MAX_TOKEN_NAME_LEN).collect();
    let (outcome, code, detail) = match &result {
        Ok((t, _)) => ("success", None, Some(audit_detail(t))),
        Err(e) => ("error", Some(e.body.code.as_str()), None),
    };
    state
        .audit
        .user(
            &caller,
            "enrolment_token.create",
            None,
            Some(&name),
            outcome,
            code,
            detail,
        )
        .await;
    let (row, token) = result?;
    let mut v = token_json(&row);
    v["token"] = json!(token.expose());
    // Shown with the token, once: it holds the token.
    let url = install_url(&state.config, &headers);
    v["install_lines"] = enrolment::install_lines(&url, token.expose(), protocol::VERSION)
        .into_iter()
        .map(|(cpu, line)| json!({ "cpu": cpu, "line": line }))
        .collect();
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let tokens = state.store.list_enrolment_tokens().await?;
    Ok(Json(
        json!({ "enrolment_tokens": tokens.iter().map(token_json).collect::<Vec<_>>() }),
    ))
}

pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let t = state
        .store
        .get_enrolment_token(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("enrolment token {id:?} not found")))?;
    Ok(Json(token_json(&t)))
}

/// `DELETE /api/v1/enrolment-tokens/{id}` and `POST .../{id}/revoke`: no new enrolment with
/// it; the hosts it enrolled keep working.
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let result = state.store.revoke_enrolment_token(&id).await;
    let target = result
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or(id.clone());
    state
        .audit
        .user(
            &caller,
            "enrolment_token.revoke",
            None,
            Some(&target),
            crate::audit::outcome_of(&result),
            None,
            Some(json!({ "token_id": id })),
        )
        .await;
    let t = result.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found(format!("enrolment token {id:?} not found")),
        other => other.into(),
    })?;
    let mut v = token_json(&t);
    v["revoked"] = json!(true);
    Ok(Json(v))
}

/// `POST /api/v1/hosts/{id}/approve`: a pending host gets commands and streams from now on
/// (commands queued for it go out).
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let result = state.store.approve_host(&id).await;
    let name = result.as_ref().ok().map(|h| h.name.clone());
    state
        .audit
        .user(
            &caller,
            "host.approve",
            Some(&id),
            name.as_deref(),
            crate::audit::outcome_of(&result),
            None,
            None,
        )
        .await;
    let host = result.map_err(|e| pending_error(&id, e))?;
    state.adapters.forget(&id);
    state.commands.hand_off_queue(&id);
    state.feed.publish(
        "host_approved",
        Some(&id),
        json!({ "name": host.name, "by": caller.user }),
    );
    Ok(Json(super::hosts::host_json(&state, &host, false).await))
}

/// `POST /api/v1/hosts/{id}/reject`: a pending host is removed and its agents revoked (their
/// sessions close). A host that is not pending is deleted with `DELETE /api/v1/hosts/{id}`.
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let before = state.store.get_host(&id).await.ok().flatten();
    let result = state.store.reject_host(&id).await;
    let revoked: Vec<String> = result
        .as_ref()
        .map(|a| a.iter().map(|a| a.agent_id.clone()).collect())
        .unwrap_or_default();
    state
        .audit
        .user(
            &caller,
            "host.reject",
            Some(&id),
            before.as_ref().map(|h| h.name.as_str()),
            crate::audit::outcome_of(&result),
            None,
            Some(json!({ "agents_revoked": revoked })),
        )
        .await;
    let agents = result.map_err(|e| pending_error(&id, e))?;
    for a in &agents {
        super::revoke::agent(&state, &a.id, "host rejected");
        let _ = state
            .store
            .add_agent_event(
                Some(&a.id),
                "revoked",
                &json!({ "by": caller.user, "reason": "host rejected" }),
            )
            .await;
    }
    state.adapters.forget(&id);
    super::revoke::host(&state, &id, "host rejected");
    state
        .feed
        .publish("host_rejected", Some(&id), json!({ "by": caller.user }));
    Ok(Json(
        json!({ "id": id, "rejected": true, "agents_revoked": revoked }),
    ))
}

fn pending_error(id: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::from(crate::hosts::host_not_found(id)),
        other => other.into(),
    }
}
