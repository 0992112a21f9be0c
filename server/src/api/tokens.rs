//! `/api/v1/tokens`: user API tokens (admin only). The token is shown once, at creation.
//!
//! Owns: issuing, listing and revoking user tokens, and ending a revoked token's live sessions.
//! Must not: store or return a token after it was shown once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use super::ts;
use crate::auth::{generate_token, hash_token, token_prefix, USER_TOKEN_PREFIX};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{now_ms, ApiToken, NewApiToken, Role, Store};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
    /// Seconds until the token expires; absent: never.
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    allowed_cidrs: Vec<IpNet>,
}

/// Creates a user (or reuses it, setting its role) and a token for it. Returns the token
/// id and the token, which is not stored.
pub async fn issue_user_token(
    store: &Store,
    name: &str,
    role: Role,
    expires_in: Option<u64>,
    allowed_cidrs: Vec<IpNet>,
) -> crate::store::Result<(String, protocol::Secret, Option<i64>)> {
    let user = store.upsert_user(name, role).await?;
    let token = generate_token(USER_TOKEN_PREFIX);
    let expires_at = expires_in.map(|s| now_ms() + (s as i64) * 1000);
    let id = store
        .insert_api_token(&NewApiToken {
            user_id: user.id,
            token_hash: hash_token(token.expose()),
            prefix: token_prefix(token.expose()),
            allowed_cidrs,
            expires_at,
        })
        .await?;
    Ok((id, token, expires_at))
}

fn token_json(t: &ApiToken) -> Value {
    json!({
        "id": t.id,
        "name": t.user_name,
        "role": t.role,
        "prefix": t.prefix,
        "allowed_cidrs": t.allowed_cidrs,
        "created_at": ts(Some(t.created_at)),
        "expires_at": ts(t.expires_at),
        "revoked_at": ts(t.revoked_at),
        "last_used_at": ts(t.last_used_at),
    })
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let Json(b) = body?;
    if b.name.trim().is_empty() || b.name.len() > 255 {
        return Err(ApiError::bad_request("name must be 1 to 255 characters"));
    }
    let result =
        issue_user_token(&state.store, &b.name, b.role, b.expires_in, b.allowed_cidrs).await;
    state
        .audit
        .user(
            &caller,
            "token.create",
            None,
            Some(&b.name),
            crate::audit::outcome_of(&result),
            None,
            Some(json!({ "role": b.role })),
        )
        .await;
    let (id, token, expires_at) = result?;
    // A lower role for an existing user ends the live sessions that needed more.
    let ended = state
        .leases
        .end_role_below(&b.name, b.role, "the user's role was lowered");
    if ended > 0 {
        tracing::info!(user = %b.name, role = b.role.as_str(), ended, "role lowered: live sessions ended");
    }
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": id, "name": b.name, "role": b.role, "token": token.expose(), "expires_at": ts(expires_at) }),
        ),
    ))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let tokens = state.store.list_api_tokens().await?;
    Ok(Json(
        json!({ "tokens": tokens.iter().map(token_json).collect::<Vec<_>>() }),
    ))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let result = state.store.revoke_api_token(&id).await;
    state
        .audit
        .user(
            &caller,
            "token.revoke",
            None,
            Some(&id),
            crate::audit::outcome_of(&result),
            None,
            None,
        )
        .await;
    result?;
    // Its live sessions (hijacks, followed streams, the live feed) end now too.
    let ended = super::revoke::token(&state, &id, "token revoked");
    Ok(Json(
        json!({ "id": id, "revoked": true, "sessions_ended": ended }),
    ))
}
