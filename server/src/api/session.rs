//! `/api/v1/session`: signing in (a password or a one-time sign-in link) gives a session
//! cookie; `GET` tells who is signed in (and the session's CSRF token); `DELETE` signs out.
//! `GET /api/v1/me` answers who the caller is for either kind of credential.
//!
//! Owns: the cookies' attributes (`HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` over
//! https or behind a trusted proxy that says so) and the audit of sign-ins and sign-outs.
//! Must not: check passwords or keep sessions itself (`crate::accounts` does).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::{cookie, same_origin, Caller};
use super::ts;
use crate::accounts::{Client, SignedIn, DEVICE_COOKIE, DEVICE_TRUST, SESSION_COOKIE};
use crate::error::{ApiError, ApiResult};
use crate::forwarded::{https_of, source_ip};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// A one-time sign-in link's secret, instead of a name and a password.
    #[serde(default)]
    link: Option<String>,
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, and `Secure` over https.
fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let mut c =
        format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// The JSON of who is signed in.
fn me_json(caller: &Caller, csrf: Option<String>, expires_at: Option<i64>) -> Value {
    json!({
        "user": {"name": caller.user, "role": caller.role},
        "via": if caller.session_id().is_some() { "session" } else { "token" },
        "csrf_token": csrf,
        "expires_at": ts(expires_at),
    })
}

/// `POST /api/v1/session`: `{"name", "password"}` or `{"link"}`.
pub async fn create(State(state): State<AppState>, req: Request) -> Response {
    match sign_in(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn sign_in(state: &AppState, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    same_origin(&parts)?;
    let json_body = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err(ApiError::bad_request(
            "send the sign-in as JSON (Content-Type: application/json)",
        ));
    }
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|_| ApiError::bad_request("the body is too large"))?;
    let b: SignIn = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid sign-in: {e}")))?;
    let client = Client {
        ip: source_ip(&parts),
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        device: cookie(&parts.headers, DEVICE_COOKIE).map(str::to_owned),
    };
    let (result, who) = match (&b.link, &b.name, &b.password) {
        (Some(link), None, None) => (state.accounts.sign_in_with_link(link, &client).await, None),
        (None, Some(name), Some(pw)) => (
            state.accounts.sign_in(name, pw, &client).await,
            Some(name.clone()),
        ),
        _ => {
            return Err(ApiError::bad_request(
                "send {\"name\", \"password\"} or {\"link\"}",
            ))
        }
    };
    let target = result
        .as_ref()
        .map(|s| s.session.user_name.clone())
        .ok()
        .or(who);
    let entry = crate::audit::Auditor::user_entry(
        &crate::auth::Principal {
            token_id: String::new(),
            user: target.clone().unwrap_or_default(),
            role: crate::store::Role::Viewer,
            ip: client.ip,
        },
        "session.create",
        None,
        target.as_deref(),
        if result.is_ok() { "success" } else { "denied" },
        result.as_ref().err().map(|e| e.body.code.as_str()),
        Some(json!({ "via": if b.link.is_some() { "link" } else { "password" } })),
    );
    state.audit.record(entry).await;
    let signed = result?;
    Ok(signed_in_response(state, https_of(&parts), signed))
}

/// 200 with the session's cookie, the device cookie and who is signed in.
fn signed_in_response(state: &AppState, secure: bool, s: SignedIn) -> Response {
    let max_age = state.accounts.policy().max_age.as_secs();
    let csrf = state.accounts.csrf_token(s.secret.expose());
    let body = json!({
        "user": {"name": s.session.user_name, "role": s.session.role},
        "via": "session",
        "csrf_token": csrf,
        "expires_at": ts(Some(s.session.expires_at)),
    });
    let mut r = (StatusCode::OK, Json(body)).into_response();
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, s.secret.expose(), "/", max_age, secure),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(
            DEVICE_COOKIE,
            &s.device,
            "/api/v1/session",
            DEVICE_TRUST.as_secs(),
            secure,
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /api/v1/session` and `GET /api/v1/me`: who is signed in (the CSRF token for a
/// session).
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (csrf, expires) = match caller.session_id() {
        Some(id) => {
            let expires = state.store.get_session(id).await?.map(|s| s.expires_at);
            let csrf = cookie(&headers, SESSION_COOKIE).map(|c| state.accounts.csrf_token(c));
            (csrf, expires)
        }
        None => (None, None),
    };
    let mut r = Json(me_json(&caller, csrf, expires)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `DELETE /api/v1/session`: signs out; what the session opened (the live feed, an exec
/// terminal, followed logs) ends too.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    req: Request<Body>,
) -> ApiResult<Response> {
    let Some(id) = caller.session_id() else {
        return Err(ApiError::bad_request(
            "this request did not come with a browser session",
        ));
    };
    state.store.revoke_session(id).await?;
    let ended = super::revoke::sessions(&state, &[id.to_string()], "signed out");
    state
        .audit
        .user(
            &caller,
            "session.delete",
            None,
            Some(&caller.user),
            "success",
            None,
            None,
        )
        .await;
    let (parts, _) = req.into_parts();
    let mut r = Json(json!({"signed_out": true, "sessions_ended": ended})).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "/", 0, https_of(&parts)),
    );
    Ok(r)
}
