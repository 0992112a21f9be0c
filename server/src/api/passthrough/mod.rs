//! `ANY /api/v1/hosts/{id}/docker/{*rest}`: the Docker Engine API of a host, for the official
//! `docker` CLI (`DOCKER_HOST=tcp://SERVER:PORT/api/v1/hosts/{id}/docker`).
//!
//! Owns: the HTTP side of the passthrough: bearer authentication, the allowlist
//! (`protocol::passthrough::classify`), role checks (viewers may only read), the audit of every
//! mutating request, metrics, header hygiene (hop-by-hop headers dropped both ways), and
//! handing the exchange to the host's adapter (`HostAdapter::open_stream`): the request body
//! streams up, the response body streams down ([`bodies`]), and an HTTP upgrade (attach,
//! exec) becomes the adapter's tunnel, pumped until either side ends. Streams and hijacks hold
//! a lease (`crate::leases`) and are cut when it ends (the token was revoked or lost the role,
//! or the host was deleted).
//! Errors are Docker-style `{"message": "..."}` so the CLI prints them.
//! Must not: reach a daemon or an agent except through the host's adapter, or branch on the
//! kind of host.

mod bodies;
mod terminal;

pub use terminal::terminal;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use protocol::passthrough::{check_query, classify, is_hop_by_hop, Refusal, Route, Shape};
use protocol::{Access, ErrorBody, ErrorCode};
use serde_json::json;

use self::bodies::{leased, until_ended, Counted, OpenGuardBody};
use super::caller::Caller;
use crate::auth::role_for;
use crate::hosts::{StreamRequest, StreamResponse};
use crate::leases::Lease;
use crate::reply;
use crate::state::AppState;
use crate::store::Host;

/// A Docker-style error: `{"message": "..."}` with `status`.
pub(super) fn docker_error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (status, axum::Json(json!({ "message": message.into() }))).into_response();
    r.headers_mut().insert(
        HeaderName::from_static("api-version"),
        HeaderValue::from_static("1.41"),
    );
    r
}

/// The message the CLI shows for an error of ours.
fn message_of(e: &ErrorBody) -> String {
    match e.code {
        ErrorCode::AgentOffline => format!("agent offline: {}", e.message),
        _ => e.message.clone(),
    }
}

/// `(host_id, path below /docker)` from the raw request path, without percent-decoding (the
/// allowlist sees exactly what would be forwarded).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/hosts/")?;
    let (host, rest) = rest.split_once('/')?;
    let below = rest.strip_prefix("docker")?;
    if !(below.is_empty() || below.starts_with('/')) || host.is_empty() {
        return None;
    }
    Some((host, if below.is_empty() { "/" } else { below }))
}

/// End-to-end request headers as (name, value) pairs.
pub(super) fn forward_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let connection_named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(k, _)| {
            // The request's Content-Length is kept: the agent then sends the body with it
            // (dockerd must see an exactly delimited body before it hijacks an exec/attach).
            (*k == header::CONTENT_LENGTH || !is_hop_by_hop(k.as_str()))
                && !connection_named.iter().any(|c| c == k.as_str())
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// Whether the client asked to hijack the connection (`Connection: Upgrade`, `Upgrade: tcp`).
pub(super) fn wants_upgrade(headers: &HeaderMap) -> bool {
    let conn = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    conn && headers.contains_key(header::UPGRADE)
}

pub(super) fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Builds the client's response head from the daemon's status and headers.
pub(super) fn response_head(
    status: u16,
    headers: &HeaderMap,
    upgrade: bool,
) -> axum::http::response::Builder {
    let mut b =
        Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (k, v) in headers {
        if !is_hop_by_hop(k.as_str()) {
            b = b.header(k, v);
        }
    }
    if upgrade {
        b = b
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "tcp");
    }
    b
}

/// Outcome label of a daemon status.
fn outcome_of_status(status: u16) -> &'static str {
    match status {
        0..=399 => "success",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

/// What one passthrough request is, for the audit and the metrics.
struct Exchange {
    state: AppState,
    caller: Caller,
    host_id: String,
    route: Option<Route>,
    method: String,
    /// Held by streams and hijacks for as long as they run.
    lease: Option<Lease>,
}

impl Exchange {
    fn action(&self) -> &'static str {
        self.route.as_ref().map(|r| r.action).unwrap_or("unknown")
    }

    /// Records the outcome: metrics always, audit for mutating requests (and refusals of
    /// non-read methods).
    async fn finish(&self, outcome: &str, status: u16, via: &str, error: Option<&str>) {
        self.state.metrics.passthrough(self.action(), outcome);
        let write = match &self.route {
            Some(r) => r.access == Access::Write,
            None => !matches!(self.method.as_str(), "GET" | "HEAD"),
        };
        if !write {
            return;
        }
        let audit_outcome = match outcome {
            "success" => "success",
            "denied" | "refused" => "denied",
            _ => "error",
        };
        let code = error
            .map(str::to_string)
            .or_else(|| (audit_outcome == "error").then(|| format!("http_{status}")));
        let detail = json!({
            "method": self.method,
            "path": self.route.as_ref().map(|r| r.path.clone()),
            "api_version": self.route.as_ref().and_then(|r| r.version.clone()),
            "status": status,
            "via": via,
        });
        self.state
            .audit
            .user(
                &self.caller,
                &format!("docker.{}", self.action()),
                Some(&self.host_id),
                self.route.as_ref().and_then(|r| r.object.as_deref()),
                audit_outcome,
                code.as_deref(),
                Some(detail),
            )
            .await;
    }
}

pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let (mut ex, route, target) = match admit(&state, &mut parts).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let host = match state.store.get_host_cached(&ex.host_id).await {
        Ok(Some(h)) => h,
        Ok(None) => {
            ex.finish("not_found", 404, "none", Some("not_found")).await;
            return docker_error(
                StatusCode::NOT_FOUND,
                format!("docker-ctl: host {:?} not found", ex.host_id),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "host lookup failed");
            ex.finish("internal", 500, "none", Some("internal")).await;
            return docker_error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error");
        }
    };
    if matches!(route.shape, Shape::Stream | Shape::Upgrade) {
        let needed = role_for(route.access);
        ex.lease = Some(state.leases.take(&ex.caller, Some(&host.id), needed));
    }
    // Only a real connection can be hijacked (not, say, a request routed in-process).
    let on_upgrade = if route.shape == Shape::Upgrade && wants_upgrade(&parts.headers) {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let body = has_body(&parts.headers).then(|| {
        Body::new(Counted {
            inner: body,
            metrics: state.metrics.clone(),
            up: true,
        })
    });
    let req = StreamRequest {
        method: parts.method.clone(),
        target,
        headers: forward_headers(&parts.headers),
        body,
        upgrade: on_upgrade.is_some(),
        caller: Some(format!("{} ({})", ex.caller.user, ex.caller.role.as_str())),
    };
    exchange(ex, &host, req, on_upgrade).await
}

/// Who asks for what: the path, the caller, the allowlist and the role. Returns the exchange,
/// its route and the target below the host's base path, or the refusal to send.
async fn admit(state: &AppState, parts: &mut Parts) -> Result<(Exchange, Route, String), Response> {
    let raw_path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let Some((host_id, below)) = split_path(&raw_path) else {
        return Err(docker_error(StatusCode::NOT_FOUND, "page not found"));
    };
    let (host_id, below) = (host_id.to_string(), below.to_string());
    let caller = match Caller::from_request_parts(parts, state).await {
        Ok(c) => c,
        Err(e) => return Err(docker_error(e.status(), e.body.message)),
    };
    let mut ex = Exchange {
        state: state.clone(),
        caller,
        host_id,
        route: None,
        method: parts.method.as_str().to_ascii_uppercase(),
        lease: None,
    };
    let refusal = query
        .as_deref()
        .map(check_query)
        .transpose()
        .err()
        .map(Err)
        .unwrap_or_else(|| classify(&ex.method, &below));
    let route = match refusal {
        Ok(r) => r,
        Err(Refusal::BadPath(why)) => {
            ex.finish("refused", 400, "none", Some("invalid_params"))
                .await;
            let msg = format!("invalid Docker API path: {why}");
            return Err(docker_error(StatusCode::BAD_REQUEST, msg));
        }
        Err(r @ Refusal::NotAllowed { .. }) => {
            ex.finish("refused", 403, "none", Some("forbidden")).await;
            let msg = format!("docker-ctl refused the request: {r}");
            return Err(docker_error(StatusCode::FORBIDDEN, msg));
        }
    };
    ex.route = Some(route.clone());
    let needed = role_for(route.access);
    if ex.caller.require(needed).is_err() {
        ex.finish("denied", 403, "none", Some("forbidden")).await;
        let msg = format!(
            "permission denied: {} ({} {}) needs the {} role; token of {:?} has the {} role",
            route.action,
            ex.method,
            route.path,
            needed.as_str(),
            ex.caller.user,
            ex.caller.role.as_str()
        );
        return Err(docker_error(StatusCode::FORBIDDEN, msg));
    }
    let target = match &query {
        Some(q) => format!("{below}?{q}"),
        None => below,
    };
    Ok((ex, route, target))
}

/// Hands the exchange to the host's adapter and streams its answer back.
async fn exchange(
    mut ex: Exchange,
    host: &Host,
    req: StreamRequest,
    on_upgrade: Option<OnUpgrade>,
) -> Response {
    let state = ex.state.clone();
    let lease = ex.lease.take();
    let open = state.metrics.passthrough_opened();
    let opened = match state.adapters.for_host(host) {
        Ok(adapter) => {
            let via = adapter.route().via;
            (adapter.open_stream(req).await, via)
        }
        Err(e) => (Err(e), host.connection_mode.as_str()),
    };
    let resp = match opened {
        (Ok(r), via) => {
            ex.finish(outcome_of_status(r.status), r.status, via, None)
                .await;
            r
        }
        (Err(e), via) => {
            let status = reply::http_status(e.code);
            let code = e.code.as_str();
            ex.finish(code, status.as_u16(), via, Some(code)).await;
            return docker_error(status, message_of(&e));
        }
    };
    let StreamResponse {
        status,
        headers,
        body,
        tunnel,
    } = resp;
    let head = response_head(status, &headers, tunnel.is_some());
    if let (Some(tunnel), Some(client)) = (tunnel, on_upgrade) {
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            let _open = open;
            let client = match client.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "client upgrade failed");
                    return;
                }
            };
            tokio::select! {
                _ = tunnel.pump(Box::new(hyper_util::rt::TokioIo::new(client)), metrics) => {}
                reason = until_ended(lease.as_ref()) => {
                    // Dropping the pump cuts both connections.
                    tracing::info!(%reason, "hijacked connection cut: its lease ended");
                }
            }
        });
        return head
            .body(Body::empty())
            .unwrap_or_else(|_| docker_error(StatusCode::BAD_GATEWAY, "invalid upgrade response"));
    }
    let body = Counted {
        inner: OpenGuardBody {
            inner: body,
            _open: open,
        },
        metrics: state.metrics.clone(),
        up: false,
    };
    head.body(leased(Body::new(body), lease))
        .unwrap_or_else(|_| docker_error(StatusCode::BAD_GATEWAY, "invalid daemon response"))
}
