//! The [`Caller`] extractor: the [`Principal`] of a REST request, from its
//! `Authorization: Bearer` user API token.
//!
//! Owns: reading the bearer token, refusing a missing, unknown, revoked or expired one (each
//! failure counts against the client's address), the token's address allowlist and its
//! request rate. Must not: decide what the principal may do (handlers and the `commands`
//! module do, with [`Principal::require`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use protocol::ErrorCode;

use crate::auth::{hash_token, hashes_equal, ip_allowed, Principal};
use crate::error::ApiError;
use crate::forwarded::source_ip;
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

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
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
}
