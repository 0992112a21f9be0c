//! `/api/v1/users` (admin): people, their roles, passwords and sessions; `/api/v1/me/...`
//! (any role): one's own password and API tokens.
//!
//! Owns: these routes, their audit entries, and ending what a user opened when the user is
//! deleted, demoted, reset or has their sessions revoked (sessions revoked in the database,
//! live streams cut through `crate::leases` within a second). Must not: hash or check
//! passwords itself (`crate::accounts` does).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use super::ts;
use crate::accounts::{hash_password, verify_password};
use crate::auth::{generate_token, hash_token, token_prefix, USER_TOKEN_PREFIX};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{now_ms, ApiToken, NewApiToken, Role, User};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    name: String,
    role: Role,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    #[serde(default)]
    role: Option<Role>,
    /// An admin's reset: the user's sessions end.
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    /// Needed when the user has a password already.
    #[serde(default)]
    old_password: Option<String>,
    new_password: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOwnToken {
    /// Seconds until the token expires; absent: never.
    #[serde(default)]
    expires_in: Option<u64>,
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "name": u.name,
        "role": u.role,
        "has_password": u.has_password,
        "created_at": ts(Some(u.created_at)),
    })
}

pub(super) fn token_json(t: &ApiToken) -> Value {
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

fn valid_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name must be 1 to 255 characters without control characters",
        ));
    }
    Ok(())
}

/// Creates a user with an optional password (hashed with argon2id). Shared with the
/// `user create` command line.
pub async fn create_user(
    store: &crate::store::Store,
    name: &str,
    role: Role,
    password: Option<String>,
) -> ApiResult<User> {
    valid_name(name)?;
    let hash = match password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    Ok(store.create_user(name, role, hash.as_deref()).await?)
}

async fn user_of(state: &AppState, name: &str) -> ApiResult<User> {
    state
        .store
        .find_user(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {name:?} not found")))
}

/// Revokes every browser session of `user` (but `keep`) and cuts what they opened.
async fn end_sessions(
    state: &AppState,
    user: &User,
    keep: Option<&str>,
    reason: &str,
) -> ApiResult<usize> {
    let ids = state.store.revoke_user_sessions(&user.id, keep).await?;
    super::revoke::sessions(state, &ids, reason);
    Ok(ids.len())
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let users = state.store.list_users().await?;
    let mut items = Vec::with_capacity(users.len());
    for u in &users {
        let mut v = user_json(u);
        v["sessions"] = json!(state.store.list_user_sessions(&u.id).await?.len());
        items.push(v);
    }
    Ok(Json(json!({ "users": items })))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let Json(b) = body?;
    let result = create_user(&state.store, &b.name, b.role, b.password).await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    let detail = json!({ "role": b.role });
    state
        .audit
        .user(
            &caller,
            "user.create",
            None,
            Some(&b.name),
            outcome,
            None,
            Some(detail),
        )
        .await;
    Ok((StatusCode::CREATED, Json(user_json(&result?))))
}

pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: JsonBody<PatchUser>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let Json(b) = body?;
    let mut user = user_of(&state, &name).await?;
    let mut ended = 0;
    if let Some(p) = b.password {
        let hash = hash_password(p).await?;
        state.store.set_user_password(&user.id, Some(&hash)).await?;
        ended += end_sessions(&state, &user, None, "the password was reset").await?;
        user.has_password = true;
    }
    if let Some(role) = b.role.filter(|r| *r != user.role) {
        let lowered = role < user.role;
        user = state.store.set_user_role(&name, role).await?;
        if lowered {
            ended += end_sessions(&state, &user, None, "the user's role was lowered").await?;
            ended +=
                super::revoke::role_lowered(&state, &name, role, "the user's role was lowered");
        }
    }
    let detail = json!({ "role": user.role, "sessions_ended": ended });
    state
        .audit
        .user(
            &caller,
            "user.update",
            None,
            Some(&name),
            "success",
            None,
            Some(detail),
        )
        .await;
    let mut v = user_json(&user);
    v["sessions_ended"] = json!(ended);
    Ok(Json(v))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    if name == caller.user {
        return Err(ApiError::conflict("you cannot delete yourself"));
    }
    let result = state.store.delete_user(&name).await;
    let outcome = crate::audit::outcome_of(&result);
    state
        .audit
        .user(
            &caller,
            "user.delete",
            None,
            Some(&name),
            outcome,
            None,
            None,
        )
        .await;
    result.map_err(|e| match e {
        crate::store::StoreError::NotFound => {
            ApiError::not_found(format!("user {name:?} not found"))
        }
        e => e.into(),
    })?;
    let ended = super::revoke::user(&state, &name, "the user was deleted");
    Ok(Json(
        json!({ "name": name, "deleted": true, "sessions_ended": ended }),
    ))
}

pub async fn sessions(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let user = user_of(&state, &name).await?;
    let list = state.store.list_user_sessions(&user.id).await?;
    let now = now_ms();
    let items: Vec<Value> = list
        .iter()
        .filter(|s| state.accounts.check_live(s).is_ok() && s.expires_at > now)
        .map(|s| {
            json!({
                "id": s.id, "created_at": ts(Some(s.created_at)),
                "last_seen_at": ts(Some(s.last_seen_at)), "expires_at": ts(Some(s.expires_at)),
                "source_ip": s.source_ip, "user_agent": s.user_agent,
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": items })))
}

pub async fn revoke_sessions(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let user = user_of(&state, &name).await?;
    let ended = end_sessions(&state, &user, None, "an admin ended the user's sessions").await?;
    state
        .audit
        .user(
            &caller,
            "user.sessions.revoke",
            None,
            Some(&name),
            "success",
            None,
            None,
        )
        .await;
    Ok(Json(json!({ "name": name, "sessions_ended": ended })))
}

/// `PUT /api/v1/me/password`: the old password (when there is one) and a new one. The
/// user's other sessions end.
pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<ChangePassword>,
) -> ApiResult<Json<Value>> {
    let Json(b) = body?;
    let Some((user, phc)) = state.store.user_with_password(&caller.user).await? else {
        return Err(ApiError::not_found("your user no longer exists"));
    };
    if let Some(phc) = phc {
        let old = b.old_password.unwrap_or_default();
        if !verify_password(old, phc).await {
            state
                .audit
                .user(
                    &caller,
                    "user.password",
                    None,
                    Some(&caller.user),
                    "denied",
                    None,
                    None,
                )
                .await;
            return Err(ApiError::forbidden("the old password is wrong"));
        }
    }
    let hash = hash_password(b.new_password).await?;
    state.store.set_user_password(&user.id, Some(&hash)).await?;
    let ended = end_sessions(
        &state,
        &user,
        caller.session_id(),
        "the password was changed",
    )
    .await?;
    state
        .audit
        .user(
            &caller,
            "user.password",
            None,
            Some(&caller.user),
            "success",
            None,
            None,
        )
        .await;
    Ok(Json(json!({ "changed": true, "sessions_ended": ended })))
}

/// `GET /api/v1/me/tokens`: the caller's own API tokens.
pub async fn my_tokens(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let user = user_of(&state, &caller.user).await?;
    let tokens = state.store.list_user_api_tokens(&user.id).await?;
    Ok(Json(
        json!({ "tokens": tokens.iter().map(token_json).collect::<Vec<_>>() }),
    ))
}

/// `POST /api/v1/me/tokens` (any role): a token of the caller's own user, so with the
/// caller's role. Shown once.
pub async fn create_my_token(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateOwnToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(b) = body?;
    let user = user_of(&state, &caller.user).await?;
    let token = generate_token(USER_TOKEN_PREFIX);
    let expires_at = b
        .expires_in
        .map(|s| now_ms() + (s.min(10 * 365 * 86400) as i64) * 1000);
    let result = state
        .store
        .insert_api_token(&NewApiToken {
            user_id: user.id.clone(),
            token_hash: hash_token(token.expose()),
            prefix: token_prefix(token.expose()),
            allowed_cidrs: Vec::new(),
            expires_at,
        })
        .await;
    let outcome = crate::audit::outcome_of(&result);
    let detail = json!({ "role": user.role, "own": true });
    state
        .audit
        .user(
            &caller,
            "token.create",
            None,
            Some(&caller.user),
            outcome,
            None,
            Some(detail),
        )
        .await;
    let id = result?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id, "name": user.name, "role": user.role, "token": token.expose(),
            "prefix": token_prefix(token.expose()), "expires_at": ts(expires_at),
        })),
    ))
}

/// `DELETE /api/v1/me/tokens/{id}`: revokes one of the caller's own tokens (another user's
/// token is `not_found`).
pub async fn revoke_my_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let owned = state
        .store
        .get_api_token(&id)
        .await?
        .is_some_and(|t| t.user_name == caller.user);
    if !owned {
        return Err(ApiError::not_found(format!("token {id:?} not found")));
    }
    state.store.revoke_api_token(&id).await?;
    let ended = super::revoke::token(&state, &id, "token revoked");
    state
        .audit
        .user(
            &caller,
            "token.revoke",
            None,
            Some(&id),
            "success",
            None,
            None,
        )
        .await;
    Ok(Json(
        json!({ "id": id, "revoked": true, "sessions_ended": ended }),
    ))
}
