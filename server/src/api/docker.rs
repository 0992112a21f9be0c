//! `ANY /api/v1/hosts/{id}/docker/{*rest}`: the Docker Engine API of a host, for the official
//! `docker` CLI (`DOCKER_HOST=tcp://SERVER:PORT/api/v1/hosts/{id}/docker`).
//!
//! Owns: the HTTP side of the passthrough: bearer authentication, the allowlist
//! (`protocol::passthrough::classify`), role checks (viewers may only read), the audit of every
//! mutating request, metrics, header hygiene (hop-by-hop headers dropped both ways), streaming
//! bodies both ways, and HTTP upgrades (attach, exec) pumped both ways with half-close.
//! Streams and hijacks hold a lease (`crate::leases`) and are cut when it ends (the token was
//! revoked or lost the role, or the host was deleted).
//! Errors are Docker-style `{"message": "..."}` so the CLI prints them.
//! Must not: reach a daemon except through `hosts::Adapters` (direct hosts) or
//! `AgentManager::open_stream` (agent hosts).

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use protocol::passthrough::{check_query, classify, is_hop_by_hop, Refusal, Route, Shape};
use protocol::{Access, ErrorBody, ErrorCode, STREAM_CHUNK};
use serde_json::json;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agents::{StreamReader, StreamRequest, StreamWriter};
use crate::auth::Caller;
use crate::leases::Lease;
use crate::metrics::Metrics;
use crate::store::{ConnectionMode, Host, Role};
use crate::AppState;

/// A Docker-style error: `{"message": "..."}` with `status`.
fn docker_error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (status, axum::Json(json!({ "message": message.into() }))).into_response();
    r.headers_mut().insert(
        HeaderName::from_static("api-version"),
        HeaderValue::from_static("1.41"),
    );
    r
}

fn status_of(e: &ErrorBody) -> StatusCode {
    let code = if e.code == ErrorCode::Unknown {
        ErrorCode::DockerError
    } else {
        e.code
    };
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY)
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
fn forward_headers(headers: &HeaderMap) -> Vec<(String, String)> {
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
fn wants_upgrade(headers: &HeaderMap) -> bool {
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

fn has_body(headers: &HeaderMap) -> bool {
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
fn response_head<'a>(
    status: u16,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    upgrade: bool,
) -> axum::http::response::Builder {
    let mut b =
        Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (k, v) in headers {
        if is_hop_by_hop(k) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
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

pub async fn passthrough(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let Some((host_id, below)) = split_path(&raw_path) else {
        return docker_error(StatusCode::NOT_FOUND, "page not found");
    };
    let (host_id, below) = (host_id.to_string(), below.to_string());
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err(e) => return docker_error(e.status(), e.body.message),
    };
    let method = parts.method.as_str().to_ascii_uppercase();
    let mut ex = Exchange {
        state: state.clone(),
        caller,
        host_id,
        route: None,
        method,
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
            return docker_error(
                StatusCode::BAD_REQUEST,
                format!("invalid Docker API path: {why}"),
            );
        }
        Err(r @ Refusal::NotAllowed { .. }) => {
            ex.finish("refused", 403, "none", Some("forbidden")).await;
            return docker_error(
                StatusCode::FORBIDDEN,
                format!("docker-ctl refused the request: {r}"),
            );
        }
    };
    ex.route = Some(route.clone());
    let needed = match route.access {
        Access::Read => Role::Viewer,
        Access::Write => Role::Operator,
    };
    if ex.caller.require(needed).is_err() {
        ex.finish("denied", 403, "none", Some("forbidden")).await;
        return docker_error(
            StatusCode::FORBIDDEN,
            format!(
                "permission denied: {} ({} {}) needs the {} role; token of {:?} has the {} role",
                route.action,
                ex.method,
                route.path,
                needed.as_str(),
                ex.caller.user,
                ex.caller.role.as_str()
            ),
        );
    }
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
        ex.lease = Some(state.leases.take(&ex.caller, Some(&host.id), needed));
    }
    // Only a real connection can be hijacked (not, say, a request routed in-process).
    let on_upgrade = if route.shape == Shape::Upgrade && wants_upgrade(&parts.headers) {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let upgrade = on_upgrade.is_some();
    let target = match &query {
        Some(q) => format!("{below}?{q}"),
        None => below.clone(),
    };
    let headers = forward_headers(&parts.headers);
    let body_present = has_body(&parts.headers);
    let method = parts.method.clone();
    match host.connection_mode {
        ConnectionMode::Direct => {
            direct(
                ex,
                &host,
                method,
                target,
                headers,
                body,
                body_present,
                on_upgrade,
            )
            .await
        }
        ConnectionMode::Agent => {
            let spec = StreamRequest {
                method: method.as_str().to_string(),
                path: target,
                headers,
                body: body_present,
                upgrade,
            };
            agent(ex, &host, spec, body, on_upgrade).await
        }
    }
}

/// A body wrapper that counts data bytes and says when the body ended.
struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    up: bool,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                    this.metrics.passthrough_bytes(this.up, d.len() as u64);
                }
            }
            Poll::Ready(None) => {
                if let Some(tx) = this.done.take() {
                    let _ = tx.send(());
                }
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves when `rx` fires or its sender is dropped.
async fn signalled(rx: Option<tokio::sync::oneshot::Receiver<()>>) {
    if let Some(rx) = rx {
        let _ = rx.await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn direct(
    mut ex: Exchange,
    host: &Host,
    method: Method,
    target: String,
    headers: Vec<(String, String)>,
    body: Body,
    body_present: bool,
    on_upgrade: Option<OnUpgrade>,
) -> Response {
    let state = ex.state.clone();
    let lease = ex.lease.take();
    let adapter = match state.adapters.direct_for(host) {
        Ok(a) => a,
        Err(e) => {
            ex.finish(
                e.code.as_str(),
                status_of(&e).as_u16(),
                "direct",
                Some(e.code.as_str()),
            )
            .await;
            return docker_error(status_of(&e), message_of(&e));
        }
    };
    let open = state.metrics.passthrough_opened();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let up_count = Arc::new(AtomicU64::new(0));
    let body = if body_present {
        Body::new(Counted {
            inner: body,
            count: up_count.clone(),
            metrics: state.metrics.clone(),
            up: true,
            done: Some(done_tx),
        })
    } else {
        drop(done_tx);
        Body::empty()
    };
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(target.as_str());
    for (k, v) in &headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if on_upgrade.is_some() {
        b = b
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "tcp");
    }
    let req = match b.body(body) {
        Ok(r) => r,
        Err(e) => {
            ex.finish("refused", 400, "direct", Some("invalid_params"))
                .await;
            return docker_error(StatusCode::BAD_REQUEST, format!("invalid request: {e}"));
        }
    };
    let timeout = state.config.agent.command_timeout.get();
    let deadline = async {
        signalled(Some(done_rx)).await;
        tokio::time::sleep(timeout).await;
    };
    let result = tokio::select! {
        r = adapter.proxy(req) => r,
        _ = deadline => Err(ErrorBody::new(
            ErrorCode::Timeout,
            format!("the daemon did not answer within {} s", timeout.as_secs_f64()),
        )),
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let status = status_of(&e);
            ex.finish(
                e.code.as_str(),
                status.as_u16(),
                "direct",
                Some(e.code.as_str()),
            )
            .await;
            return docker_error(status, message_of(&e));
        }
    };
    let status = resp.status().as_u16();
    ex.finish(outcome_of_status(status), status, "direct", None)
        .await;
    let hijacked = status == 101 && on_upgrade.is_some();
    let head = response_head(
        status,
        resp.headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
        hijacked,
    );
    if let (true, Some(client)) = (hijacked, on_upgrade) {
        let daemon = hyper::upgrade::on(&mut resp);
        tokio::spawn(pump_direct(
            client,
            daemon,
            lease,
            state.metrics.clone(),
            open,
        ));
        return head
            .body(Body::empty())
            .unwrap_or_else(|_| docker_error(StatusCode::BAD_GATEWAY, "invalid upgrade response"));
    }
    let body = resp.into_body();
    let counted = Counted {
        inner: OpenGuardBody {
            inner: body,
            _open: open,
        },
        count: Arc::new(AtomicU64::new(0)),
        metrics: state.metrics.clone(),
        up: false,
        done: None,
    };
    head.body(leased(Body::new(counted), lease))
        .unwrap_or_else(|_| docker_error(StatusCode::BAD_GATEWAY, "invalid daemon response"))
}

/// Pumps a hijacked connection of a direct host both ways until either side ends or the
/// lease ends (then both connections are dropped).
async fn pump_direct(
    client: OnUpgrade,
    daemon: OnUpgrade,
    lease: Option<Lease>,
    metrics: Arc<Metrics>,
    _open: crate::metrics::OpenPassthrough,
) {
    let (client, daemon) = match tokio::join!(client, daemon) {
        (Ok(c), Ok(d)) => (c, d),
        (c, d) => {
            tracing::debug!(client = c.is_ok(), daemon = d.is_ok(), "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut daemon = TokioIo::new(daemon);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut daemon);
    tokio::select! {
        r = copy => match r {
            Ok((up, down)) => {
                metrics.passthrough_bytes(true, up);
                metrics.passthrough_bytes(false, down);
            }
            Err(e) => tracing::debug!(error = %e, "hijacked connection ended with an error"),
        },
        reason = until_ended(lease.as_ref()) => {
            tracing::info!(%reason, "hijacked connection cut: its lease ended");
        }
    }
}

/// Completes when `lease` ends; never without one.
async fn until_ended(lease: Option<&Lease>) -> String {
    match lease {
        Some(l) => l.ended().await,
        None => std::future::pending().await,
    }
}

/// `body`, cut when `lease` ends.
fn leased(body: Body, lease: Option<Lease>) -> Body {
    match lease {
        Some(lease) => Body::new(LeasedBody {
            inner: body,
            ended: lease.ended_boxed(),
            _lease: lease,
            cut: false,
        }),
        None => body,
    }
}

/// A response body that fails (hyper then aborts the connection) once its lease ends: the
/// client of a followed stream sees its connection cut.
struct LeasedBody {
    inner: Body,
    ended: Pin<Box<dyn std::future::Future<Output = String> + Send>>,
    _lease: Lease,
    cut: bool,
}

impl HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.cut {
            return Poll::Ready(None);
        }
        if let Poll::Ready(reason) = self.ended.as_mut().poll(cx) {
            self.cut = true;
            tracing::info!(%reason, "streamed response cut: its lease ended");
            return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::other(reason)))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Keeps the open-exchange gauge up while a response body streams.
struct OpenGuardBody<B> {
    inner: B,
    _open: crate::metrics::OpenPassthrough,
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for OpenGuardBody<B> {
    type Data = Bytes;
    type Error = B::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Streams the client's request body to the agent, then `stream_end`.
async fn upload(body: Body, mut w: StreamWriter, metrics: Arc<Metrics>) -> Result<(), ErrorBody> {
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        match chunk {
            Ok(b) => {
                let n = b.len() as u64;
                w.write(b).await?;
                metrics.passthrough_bytes(true, n);
            }
            Err(e) => {
                w.cancel("the client's request body broke");
                return Err(ErrorBody::new(
                    ErrorCode::InvalidParams,
                    format!("reading the request body: {e}"),
                ));
            }
        }
    }
    w.end().await
}

async fn agent(
    mut ex: Exchange,
    host: &Host,
    spec: StreamRequest,
    body: Body,
    on_upgrade: Option<OnUpgrade>,
) -> Response {
    let state = ex.state.clone();
    let lease = ex.lease.take();
    let agents = &state.agents;
    let ex = &ex;
    let fail = |e: ErrorBody| async move {
        let status = status_of(&e);
        ex.finish(
            e.code.as_str(),
            status.as_u16(),
            "agent",
            Some(e.code.as_str()),
        )
        .await;
        docker_error(status, message_of(&e))
    };
    if !agents.config().enable_agent_mode {
        return fail(ErrorBody::new(
            ErrorCode::Unsupported,
            "agent mode is disabled on this server",
        ))
        .await;
    }
    let Some(agent_ref) = agents.online_agent_for_host(&host.id, host.agent_ref.as_deref()) else {
        let why = if host.agent_ref.is_some() {
            "the host's agent is not connected"
        } else {
            "the host has no agent: enrol one with POST /api/v1/agents"
        };
        return fail(ErrorBody::new(ErrorCode::AgentOffline, why)).await;
    };
    let timeout = agents.command_timeout_of(&agent_ref);
    let body_present = spec.body;
    let mut stream = match agents.open_stream(&host.id, &agent_ref, spec) {
        Ok(s) => s,
        Err(e) => return fail(e).await,
    };
    let open = state.metrics.passthrough_opened();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let uploader = if body_present {
        let w = stream.writer();
        let metrics = state.metrics.clone();
        Some(tokio::spawn(async move {
            let r = upload(body, w, metrics).await;
            let _ = done_tx.send(());
            r
        }))
    } else {
        drop(done_tx);
        drop(body);
        None
    };
    let head = match stream.head(timeout, signalled(Some(done_rx))).await {
        Ok(h) => h,
        Err(e) => {
            stream.cancel(&format!("no response: {}", e.message));
            return fail(e).await;
        }
    };
    ex.finish(outcome_of_status(head.status), head.status, "agent", None)
        .await;
    let hijacked = head.status == 101 && on_upgrade.is_some();
    let builder = response_head(
        head.status,
        head.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
        hijacked,
    );
    if let (true, Some(client)) = (hijacked, on_upgrade) {
        // The request body (if any) must be complete before raw bytes follow.
        if let Some(u) = uploader {
            match u.await {
                Ok(Ok(())) => {}
                _ => {
                    stream.cancel("the request body did not complete");
                    return docker_error(
                        StatusCode::BAD_GATEWAY,
                        "the request body did not complete",
                    );
                }
            }
        }
        stream.reopen_for_upgrade();
        let writer = stream.writer();
        let reader = stream.reader();
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            let _open = open;
            match client.await {
                Ok(io) => {
                    tokio::select! {
                        _ = pump(TokioIo::new(io), reader, writer, metrics) => {}
                        reason = until_ended(lease.as_ref()) => {
                            // Dropping the pump cancels the stream and closes the client.
                            tracing::info!(%reason, "hijacked connection cut: its lease ended");
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "client upgrade failed");
                    reader.cancel("the client upgrade failed");
                }
            }
        });
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| docker_error(StatusCode::BAD_GATEWAY, "invalid upgrade response"));
    }
    let reader = stream.reader();
    let metrics = state.metrics.clone();
    let body_stream = futures_util::stream::unfold(
        (reader, metrics, open),
        |(mut reader, metrics, open)| async move {
            match reader.next().await {
                Some(Ok(b)) => {
                    metrics.passthrough_bytes(false, b.len() as u64);
                    Some((Ok::<Bytes, std::io::Error>(b), (reader, metrics, open)))
                }
                Some(Err(e)) => Some((
                    Err(std::io::Error::other(e.message)),
                    (reader, metrics, open),
                )),
                None => None,
            }
        },
    );
    // After an error item the stream ends (hyper aborts the connection).
    let body_stream = body_stream.scan(false, |failed, item| {
        let out = if *failed { None } else { Some(item) };
        if let Some(Err(_)) = &out {
            *failed = true;
        }
        futures_util::future::ready(out)
    });
    builder
        .body(leased(Body::from_stream(body_stream), lease))
        .unwrap_or_else(|_| {
            docker_error(StatusCode::BAD_GATEWAY, "invalid response from the agent")
        })
}

/// Pumps a hijacked connection: client bytes to the agent (credit-limited), agent bytes to
/// the client. The client's half-close becomes `stream_end`; the agent's `stream_end` shuts
/// the client's read side down. Ends when both directions ended, or at once when either
/// side fails or cancels.
async fn pump<IO>(io: IO, mut reader: StreamReader, mut writer: StreamWriter, metrics: Arc<Metrics>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(io);
    let up_metrics = metrics.clone();
    let up = async move {
        let mut buf = vec![0u8; STREAM_CHUNK];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) => return writer.end().await.is_ok(),
                Ok(n) => {
                    if writer
                        .write(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    up_metrics.passthrough_bytes(true, n as u64);
                }
                Err(_) => {
                    writer.cancel("the client's connection failed");
                    return false;
                }
            }
        }
    };
    let down = async move {
        loop {
            match reader.next().await {
                Some(Ok(b)) => {
                    if cw.write_all(&b).await.is_err() || cw.flush().await.is_err() {
                        reader.cancel("the client's connection failed");
                        return false;
                    }
                    metrics.passthrough_bytes(false, b.len() as u64);
                }
                None => {
                    let _ = cw.shutdown().await;
                    return true;
                }
                Some(Err(_)) => return false,
            }
        }
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            ok = &mut up, if !up_done => {
                up_done = true;
                if !ok { break; }
            }
            ok = &mut down, if !down_done => {
                down_done = true;
                if !ok { break; }
            }
        }
    }
}
