//! docker-ctl-server: the control server. Agents dial in over WebSocket; operators use the
//! REST API to manage every host, whether its agent dials in or the server dials its daemon.
//!
//! Entry points: [`app`] builds the router from an [`AppState`] (tests drive it with
//! `oneshot`), [`serve`] runs it on a listener until a shutdown future completes, and [`run`]
//! does both from a [`config::Config`].

pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod error;
pub mod feed;
pub mod forwarded;
pub mod hosts;
pub mod leases;
pub mod metrics;
pub mod quickstart;
pub mod releases;
pub mod stacks;
pub mod store;

use anyhow::Context;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::agents::AgentManager;
use crate::audit::Auditor;
use crate::auth::FailureLimiter;
use crate::config::Config;
use crate::crypto::KeyBox;
use crate::feed::Feed;
use crate::hosts::Adapters;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub agents: AgentManager,
    pub adapters: Adapters,
    pub metrics: Arc<Metrics>,
    pub feed: Feed,
    pub audit: Auditor,
    pub keys: KeyBox,
    pub api_auth_limiter: Arc<FailureLimiter>,
    /// REST requests per API token.
    pub api_rate: Arc<auth::RateLimiter>,
    /// Live user sessions (hijacks, followed streams, the live feed), ended on revocation.
    pub leases: leases::Leases,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("agents", &self.agents)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Opens the database (applying migrations) and builds the state.
    pub async fn new(config: Config) -> anyhow::Result<AppState> {
        let store = Store::open(config.database_url(), &config.data_dir)
            .await
            .context("opening the database")?;
        AppState::with_store(config, store).await
    }

    /// Builds the state on an already opened store.
    pub async fn with_store(config: Config, store: Store) -> anyhow::Result<AppState> {
        let keys = KeyBox::load(config.encryption_key.as_ref(), &config.data_dir)
            .context("loading the encryption key")?;
        let metrics = Arc::new(Metrics::default());
        let feed = Feed::default();
        let audit = Auditor::new(store.clone());
        let server_id = config
            .server_id
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let stale = store.reset_sessions_of(&server_id).await?;
        if stale > 0 {
            tracing::info!(
                stale,
                "marked agent sessions left by a previous run as disconnected"
            );
        }
        let agents = AgentManager::new(
            config.agent.clone(),
            store.clone(),
            metrics.clone(),
            feed.clone(),
            audit.clone(),
            server_id,
            keys.clone(),
        );
        match store.fail_orphaned_commands().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                n,
                "commands in flight when the server stopped: marked outcome_unknown"
            ),
            Err(e) => tracing::warn!(error = %e, "could not close orphaned commands"),
        }
        let adapters = Adapters::new(agents.clone(), keys.clone());
        let api_auth_limiter = Arc::new(FailureLimiter::new(config.api_auth_failures_per_minute));
        let api_rate = Arc::new(auth::RateLimiter::new(config.api_requests_per_second));
        Ok(AppState {
            api_rate,
            leases: leases::Leases::new(store.clone()),
            config: Arc::new(config),
            store,
            agents,
            adapters,
            metrics,
            feed,
            audit,
            keys,
            api_auth_limiter,
        })
    }
}

/// The client's address, when the server was started with connection info: the peer, or
/// the forwarded address when the peer is a trusted proxy (see [`forwarded`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

/// Decides each request's client address once, before any handler runs.
async fn resolve_client_ip(
    axum::extract::State(proxies): axum::extract::State<Arc<Vec<ipnet::IpNet>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let ip = forwarded::client_ip(peer, req.headers(), &proxies);
    req.extensions_mut().insert(ClientIp(ip));
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(ClientIp(auth::source_ip(parts)))
    }
}

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
    api::router()
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            proxies,
            resolve_client_ip,
        ))
        .layer(axum::middleware::from_fn(trace_request))
}

/// Binds `config.listen` and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = AppState::new(config).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    serve(listener, state, shutdown).await
}

fn tls_acceptor(config: &Config) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("parsing {}", key.display()))?
        .with_context(|| format!("{} holds no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit")?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(sc))))
}

/// Serves `state` on `listener` (https when the config names a certificate) until
/// `shutdown` completes; then stops accepting, closes every agent session and lets
/// in-flight requests finish within `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = tls_acceptor(&state.config)?;
    let router = app(state.clone());
    // Each connection holds a sender; draining means waiting until every one is dropped.
    let (conns_tx, mut conns_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (conn_stop_tx, conn_stop_rx) = tokio::sync::watch::channel(false);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), "listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let retention = tokio::spawn(retention_loop(state.clone(), stop_rx));
    let header_timeout = state.config.http_header_timeout.get();
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
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        let alive = conns_tx.clone();
        let stop = conn_stop_rx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move { tower::ServiceExt::oneshot(router, req).await }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => {
                            serve_conn(
                                builder
                                    .serve_connection(TokioIo::new(s), svc)
                                    .with_upgrades(),
                                stop,
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => {
                    serve_conn(
                        builder
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades(),
                        stop,
                    )
                    .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(alive);
        });
    }
    drop(listener);
    let deadline = state.config.shutdown_timeout.get();
    tracing::info!(
        deadline_secs = deadline.as_secs_f64(),
        "shutting down: closing agents, finishing requests"
    );
    let _ = stop_tx.send(true);
    let agents = state.agents.clone();
    let drain = async move {
        agents.shutdown(deadline).await;
        let _ = conn_stop_tx.send(true);
        drop(conns_tx);
        // Returns None once every connection task has dropped its sender.
        let _ = conns_rx.recv().await;
    };
    if tokio::time::timeout(deadline, drain).await.is_err() {
        tracing::warn!("in-flight requests did not finish before the deadline");
    }
    let _ = retention.await;
    state.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves one connection; when `stop` turns true, lets the request in flight finish and
/// closes the connection (keep-alive ends).
async fn serve_conn<C, E>(conn: C, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<(), E>
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

/// Bounded retention of Docker events, command records and agent events: every minute.
async fn retention_loop(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let a = &state.config.agent;
                match state.store.prune_docker_events(a.event_retention_count, a.event_retention_age.get().as_millis() as i64).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "pruned Docker events"),
                    Err(e) => tracing::warn!(error = %e, "pruning Docker events failed"),
                }
                match state.store.expire_due_commands().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(n, "expired queued commands"),
                    Err(e) => tracing::warn!(error = %e, "expiring queued commands failed"),
                }
                if let Err(e) = state.store.prune_commands(a.command_retention_age.get().as_millis() as i64).await {
                    tracing::warn!(error = %e, "pruning command records failed");
                }
                let before = store::now_ms() - a.agent_event_retention_age.get().as_millis() as i64;
                match state.store.prune_agent_events(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "pruned agent events"),
                    Err(e) => tracing::warn!(error = %e, "pruning agent events failed"),
                }
            }
            _ = stop.changed() => return,
        }
    }
}
