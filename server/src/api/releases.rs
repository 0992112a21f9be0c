//! `GET /api/v1/releases` (the stored releases), the downloads agents update from
//! (`GET /api/v1/releases/{version}/{target}/signature|binary`), and
//! `POST /api/v1/agents/{agent_id}/update` (update one agent now).
//!
//! Downloads take an agent's own credentials (HTTP Basic: agent id and token, checked like
//! its WebSocket's) or a user token. The binary is streamed from its file in 64 KiB pieces,
//! with `Range: bytes=N-` (and `If-Range` on its ETag, the SHA-256) so an agent resumes
//! after a dropped link.
//!
//! Owns: these routes' HTTP. Must not: check or store releases (the shelf does) or send
//! updates itself (the updates module does).

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::forwarded::ClientIp;
use crate::releases::Release;
use crate::state::AppState;
use crate::store::Role;

/// Bytes read from the release file at a time.
const CHUNK: usize = 64 * 1024;

fn release_json(r: &Release) -> Value {
    json!({
        "version": r.version,
        "target": r.target,
        "size": r.size,
        "sha256": r.sha256,
        "key_id": r.key_id,
        "added_at": super::ts(Some(r.added_at)),
        "path": crate::updates::release_path(r),
    })
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let all: Vec<Value> = state
        .updates
        .shelf()
        .list()
        .iter()
        .map(release_json)
        .collect();
    Ok(Json(json!({ "releases": all })))
}

/// An agent (Basic, its id and token) or a user (Bearer, viewer or more).
async fn authorise(state: &AppState, ip: Option<std::net::IpAddr>, req: Request) -> ApiResult<()> {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .map(str::to_owned);
    let Some(basic) = basic else {
        let (mut parts, _) = req.into_parts();
        let caller = Caller::from_request_parts(&mut parts, state).await?;
        return caller.require(Role::Viewer);
    };
    let fail = || {
        if let Some(ip) = ip {
            state.api_auth_limiter.record_failure(ip);
        }
        ApiError::unauthorized("invalid agent credentials")
    };
    if ip.is_some_and(|ip| state.api_auth_limiter.blocked(ip)) {
        return Err(fail());
    }
    use base64::Engine as _;
    let pair = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(fail)?;
    let (agent_id, token) = pair.split_once(':').ok_or_else(fail)?;
    if !crate::auth::valid_agent_id(agent_id) {
        return Err(fail());
    }
    let agent = state.store.get_agent(agent_id).await?.ok_or_else(fail)?;
    crate::auth::verify_agent_token(&agent, token, ip).map_err(|_| fail())
}

fn find(state: &AppState, version: &str, target: &str) -> ApiResult<Release> {
    state
        .updates
        .shelf()
        .get(version, target)
        .ok_or_else(|| ApiError::not_found(format!("no release {version} for {target}")))
}

pub async fn signature(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path((version, target)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    authorise(&state, ip, req).await?;
    let r = find(&state, &version, &target)?;
    let text = state
        .updates
        .shelf()
        .signature(&r)
        .ok_or_else(|| ApiError::not_found("the release's signature is missing"))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// The first byte asked for by `Range: bytes=N-` or `bytes=N-M` (only a range that runs to
/// the end is served partially; another is answered whole), unless `If-Range` names another
/// ETag. `Err` for a start at or past the end.
fn range_start(headers: &HeaderMap, etag: &str, size: u64) -> Result<u64, ()> {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(0);
    };
    if let Some(tag) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if tag != etag {
            return Ok(0);
        }
    }
    let Some((start, end)) = range
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
    else {
        return Ok(0);
    };
    let Ok(start) = start.parse::<u64>() else {
        return Ok(0);
    };
    if !end.is_empty() && end.parse::<u64>().map_or(true, |e| e + 1 < size) {
        return Ok(0);
    }
    if start >= size {
        return Err(());
    }
    Ok(start)
}

pub async fn binary(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path((version, target)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let headers = req.headers().clone();
    authorise(&state, ip, req).await?;
    let r = find(&state, &version, &target)?;
    let path = state
        .updates
        .shelf()
        .binary_path(&r)
        .ok_or_else(|| ApiError::not_found("the release's binary is missing"))?;
    let etag = format!("\"{}\"", r.sha256);
    let Ok(start) = range_start(&headers, &etag, r.size) else {
        let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", r.size)) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        return Ok(resp);
    };
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("opening {}: {e}", path.display())))?;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("seeking {}: {e}", path.display())))?;
    let left = r.size - start;
    let stream = futures_util::stream::unfold((file, left), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(buf)),
                    (f, left - n as u64),
                ))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(left));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if start > 0 {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let range = format!("bytes {start}-{}/{}", r.size - 1, r.size);
        if let Ok(v) = HeaderValue::from_str(&range) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    version: String,
}

/// `POST /api/v1/agents/{agent_id}/update` `{"version"}`: 202 with the update's row.
pub async fn update_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
    body: Result<Json<UpdateBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    let Json(body) = body?;
    let agent = state
        .store
        .get_agent(&agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent {agent_id:?} not found")))?;
    let row = state
        .updates
        .start(&agent, &body.version, None)
        .await
        .map_err(ApiError::from)?;
    state
        .audit
        .user(
            &caller,
            "agent.update",
            agent.host_id.as_deref(),
            Some(&agent.agent_id),
            "success",
            None,
            Some(
                json!({ "agent_id": agent.agent_id, "version": body.version, "update_id": row.id }),
            ),
        )
        .await;
    Ok((StatusCode::ACCEPTED, Json(json!(row))).into_response())
}
