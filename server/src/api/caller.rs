//! The [`Caller`] extractor: the [`Principal`] of a REST request, from its
//! `Authorization: Bearer` user API token or, without one, its browser session cookie. Both
//! give the same kind of principal, so every endpoint works with either.
//!
//! Owns: reading the bearer token, refusing a missing, unknown, revoked or expired one (each
//! failure counts against the client's address), the token's address allowlist and its
//! request rate; for a session cookie, the cross-site checks (an `Origin` other than this
//! server's, or `Sec-Fetch-Site` other than `same-origin`/`none`, is refused: this also
//! covers WebSocket upgrades, which browsers send with an `Origin`) and, for every request
//! that is not `GET`/`HEAD`/`OPTIONS`, the session's CSRF token in `X-CSRF-Token`.
//! Must not: decide what the principal may do (handlers and the `commands` module do, with
//! [`Principal::require`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use protocol::ErrorCode;

use crate::accounts::SESSION_COOKIE;
use crate::auth::{hash_token, hashes_equal, ip_allowed, Principal, SESSION_PRINCIPAL_PREFIX};
use crate::error::ApiError;
use crate::forwarded::{https_of, source_ip};
use crate::state::AppState;
use crate::store::now_ms;

/// The authenticated user of a request (derefs to its [`Principal`]).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

/// The header the web UI sends its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of the cookie `name` (the first one, when a client sent several).
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Refuses a request a browser sent from another site: `Sec-Fetch-Site` other than
/// `same-origin` or `none`, or an `Origin` other than this server's own (scheme and `Host`).
pub fn same_origin(parts: &Parts) -> Result<(), ApiError> {
    let h = &parts.headers;
    let refuse = |why: String| {
        Err(ApiError::forbidden(format!(
            "cross-site request refused: {why}"
        )))
    };
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return refuse(format!("Sec-Fetch-Site is {site}"));
        }
    }
    let Some(origin) = h.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = h
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let scheme = if https_of(parts) { "https" } else { "http" };
    let own = format!("{scheme}://{host}");
    if host.is_empty() || !origin.eq_ignore_ascii_case(&own) {
        return refuse(format!("Origin {origin:?} is not {own:?}"));
    }
    Ok(())
}

/// The principal of a browser session cookie.
async fn session_caller(parts: &Parts, state: &AppState, secret: &str) -> Result<Caller, ApiError> {
    same_origin(parts)?;
    let s = state.accounts.authenticate(secret).await?;
    let safe = matches!(parts.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    if !safe {
        let presented = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !state.accounts.csrf_ok(secret, presented) {
            return Err(ApiError::forbidden(
                "missing or wrong CSRF token: send the session's token in X-CSRF-Token",
            ));
        }
    }
    let token_id = format!("{SESSION_PRINCIPAL_PREFIX}{}", s.id);
    if !state.api_rate.take(&token_id) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many requests for this session; slow down",
        ));
    }
    Ok(Caller(Principal {
        token_id,
        user: s.user_name,
        role: s.role,
        ip: source_ip(parts),
    }))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if !parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            if let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) {
                return session_caller(parts, state, secret).await;
            }
        }
        bearer_caller(parts, state).await
    }
}

/// The principal of a bearer token.
async fn bearer_caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let ip = source_ip(parts);
    // Only failures count, and only a failure is refused for them: a valid token is
    // never refused because others failed from the same address.
    let fail = |msg: &str| match ip {
        Some(ip) if state.api_auth_limiter.blocked(ip) => {
            state.api_auth_limiter.record_failure(ip);
            ApiError::new(
                ErrorCode::RateLimited,
                "too many failed authentications; retry later",
            )
        }
        Some(ip) => {
            state.api_auth_limiter.record_failure(ip);
            ApiError::unauthorized(msg)
        }
        None => ApiError::unauthorized(msg),
    };
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = match header.and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    }) {
        Some(t) if !t.trim().is_empty() => t.trim(),
        _ => {
            return Err(fail(
                "missing bearer token: send Authorization: Bearer TOKEN",
            ))
        }
    };
    let hash = hash_token(token);
    let record = state
        .store
        .find_api_token_by_hash(&hash)
        .await
        .map_err(ApiError::from)?;
    let Some(t) = record.filter(|t| hashes_equal(&t.token_hash, &hash)) else {
        return Err(fail("invalid token"));
    };
    if t.revoked_at.is_some() {
        return Err(fail("token revoked"));
    }
    let now = now_ms();
    if t.expires_at.is_some_and(|e| e <= now) {
        return Err(fail("token expired"));
    }
    if !ip_allowed(&t.allowed_cidrs, ip) {
        return Err(ApiError::forbidden(
            "source address not allowed for this token",
        ));
    }
    if !state.api_rate.take(&t.id) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many requests for this token; slow down",
        ));
    }
    if t.last_used_at.is_none_or(|u| now - u > 60_000) {
        if let Err(e) = state.store.touch_api_token(&t.id).await {
            tracing::warn!(error = %e, "could not record token use");
        }
    }
    Ok(Caller(Principal {
        token_id: t.id,
        user: t.user_name,
        role: t.role,
        ip,
    }))
}
