//! The wiring on top: [`app`] builds the router from an [`AppState`] (tests drive it with
//! `oneshot`), [`serve`] runs it on a listener (plain or TLS) until a shutdown future
//! completes, [`run`] does both from a [`Config`], and the retention loop prunes what is
//! kept for a bounded time.
//!
//! Owns: the listener, connections (HTTP/1 with upgrades, header timeout, graceful drain),
//! the request span and the client address middleware. Must not: be imported by anything
//! below it.

use anyhow::Context;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::Config;
use crate::forwarded::{resolve_client_ip, TlsConnection};
use crate::state::AppState;
use crate::store::now_ms;

/// One span per request, so a handler's logged errors carry the method and path.
async fn trace_request(req: Request, next: Next) -> Response {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    async move {
        let res = next.run(req).await;
        if res.status().is_server_error() {
            tracing::warn!(status = res.status().as_u16(), "request failed");
        } else {
            tracing::debug!(status = res.status().as_u16(), "request");
        }
        res
    }
    .instrument(span)
    .await
}

/// The whole HTTP surface: REST API, agent and user WebSockets, probes, metrics.
pub fn app(state: AppState) -> Router {
    let proxies = Arc::new(state.config.trusted_proxies.clone());
    crate::api::router()
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            proxies,
            resolve_client_ip,
        ))
        .layer(axum::middleware::from_fn(crate::api::ui::security_headers))
        .layer(axum::middleware::from_fn(trace_request))
}

/// Binds `config.listen` and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listen = config.listen;
    // Held until the server stops: a second server on the same SQLite file refuses to start.
    let _lock = crate::cluster::serve_lock(&config)?;
    let state = AppState::new(config).await?;
    let listener = bind(listen).with_context(|| format!("binding {listen}"))?;
    serve(listener, state, shutdown).await
}

/// Connections the kernel may hold fully established until the accept loop takes them
/// (capped by `net.core.somaxconn`, 4096 by default on Linux). tokio's `TcpListener::bind`
/// asks for 1,024: when thousands of agents reconnect at once after a restart, the rest of
/// their handshakes were dropped and waited for the client's SYN retransmission (1 s, then
/// 3 s, 7 s ...), which pushes TLS handshakes towards their deadline.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (address reuse on, as `TcpListener::bind` does on Unix) with
/// [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn tls_config(config: &Config) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::server_config(cert, key)?)),
        _ => Ok(None),
    }
}

/// What every connection task shares.
#[derive(Clone)]
struct Conns {
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    header_timeout: Duration,
    /// Each connection holds a sender; draining means waiting until every one is dropped.
    alive: mpsc::Sender<()>,
    /// Turns true when connections should finish their request in flight and close.
    stop: watch::Receiver<bool>,
}

/// Serves `state` on `listener` (https when the config names a certificate) until
/// `shutdown` completes; then stops accepting, closes every agent session and lets
/// in-flight requests finish within `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = tls_config(&state.config)?;
    let (conns_tx, mut conns_rx) = mpsc::channel::<()>(1);
    let (conn_stop_tx, conn_stop_rx) = watch::channel(false);
    let conns = Conns {
        router: app(state.clone()),
        tls,
        header_timeout: state.config.http_header_timeout.get(),
        alive: conns_tx,
        stop: conn_stop_rx,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = conns.tls.is_some(), "listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let retention = tokio::spawn(retention_loop(state.clone(), stop_rx.clone()));
    let heartbeat = tokio::spawn(state.cluster.clone().run(stop_rx.clone()));
    crate::api::revoke::listen(
        state.cluster.notifier(),
        state.agents.clone(),
        state.leases.clone(),
        state.store.clone(),
    );
    let wake_ups = tokio::spawn(state.cluster.notifier().clone().run(stop_rx.clone()));
    let peer_feeds = tokio::spawn(crate::cluster::peer_feed::follow(
        state.cluster.clone(),
        state.feed.clone(),
        stop_rx,
    ));
    accept_until(&listener, &conns, shutdown).await;
    drop(listener);
    let deadline = state.config.shutdown_timeout.get();
    tracing::info!(
        deadline_secs = deadline.as_secs_f64(),
        "shutting down: closing agents, finishing requests"
    );
    let _ = stop_tx.send(true);
    // Rollouts stay `running` and continue at the next start.
    state.rollouts.shutdown();
    let agents = state.agents.clone();
    let drain = async move {
        agents.shutdown(deadline).await;
        let _ = conn_stop_tx.send(true);
        drop(conns);
        // Returns None once every connection task has dropped its sender.
        let _ = conns_rx.recv().await;
    };
    if tokio::time::timeout(deadline, drain).await.is_err() {
        tracing::warn!("in-flight requests did not finish before the deadline");
    }
    let _ = retention.await;
    let _ = heartbeat.await;
    let _ = wake_ups.await;
    let _ = peer_feeds.await;
    state.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Accepts connections, each served on its own task, until `shutdown` completes.
async fn accept_until(listener: &TcpListener, conns: &Conns, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: log, back off briefly, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, peer, conns.clone()));
    }
}

/// One connection: the TLS handshake (when configured), then HTTP/1 with upgrades.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, conns: Conns) {
    let router = conns.router.clone();
    let tls = conns.tls.is_some();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if tls {
            req.extensions_mut().insert(TlsConnection);
        }
        let router = router.clone();
        async move { tower::ServiceExt::oneshot(router, req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(conns.header_timeout);
    let result = match conns.tls {
        Some(tls) => {
            let s = match tokio::time::timeout(
                Duration::from_secs(10),
                crate::tls::accept(tls, stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let conn = builder
                .serve_connection(TokioIo::new(s), svc)
                .with_upgrades();
            serve_conn(conn, conns.stop).await
        }
        None => {
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            serve_conn(conn, conns.stop).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    drop(conns.alive);
}

/// Serves one connection; when `stop` turns true, lets the request in flight finish and
/// closes the connection (keep-alive ends).
async fn serve_conn<C, E>(conn: C, mut stop: watch::Receiver<bool>) -> Result<(), E>
where
    C: Future<Output = Result<(), E>> + GracefulConn,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = stop.wait_for(|v| *v) => conn.as_mut().shutdown_gracefully(),
    }
    conn.await
}

/// hyper's graceful shutdown of an HTTP/1 connection that supports upgrades.
trait GracefulConn {
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> GracefulConn for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

/// Bounded retention of Docker events, command records, finished rollouts and agent events:
/// every minute.
async fn retention_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => retain(&state).await,
            _ = stop.changed() => return,
        }
    }
}

async fn retain(state: &AppState) {
    let a = &state.config.agent;
    let age = a.event_retention_age.get().as_millis() as i64;
    match state
        .store
        .prune_docker_events(a.event_retention_count, age)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::debug!(pruned = n, "pruned Docker events"),
        Err(e) => tracing::warn!(error = %e, "pruning Docker events failed"),
    }
    match state.commands.expire_due().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, "expired queued commands"),
        Err(e) => tracing::warn!(error = %e, "expiring queued commands failed"),
    }
    if let Err(e) = state.commands.prune(a.command_retention_age.get()).await {
        tracing::warn!(error = %e, "pruning command records failed");
    }
    if let Err(e) = state.rollouts.prune(a.command_retention_age.get()).await {
        tracing::warn!(error = %e, "pruning finished rollouts failed");
    }
    let before = now_ms() - a.agent_event_retention_age.get().as_millis() as i64;
    match state.store.prune_agent_events(before).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(pruned = n, "pruned agent events"),
        Err(e) => tracing::warn!(error = %e, "pruning agent events failed"),
    }
}
