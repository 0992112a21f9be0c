//! How the server reaches a host's Docker daemon: one [`HostAdapter`] seam per kind of host.
//!
//! - [`agent::AgentHostAdapter`]: over the agent's WebSocket, through the `AgentManager`.
//! - [`direct::DirectHostAdapter`]: the server dials the daemon itself ([`dial`]: `unix://`,
//!   `tcp://`, `https://` with client TLS).
//! - [`forward::ForwardHostAdapter`]: the host's agent is held by another replica; the
//!   request is forwarded to it. Picked in [`Adapters::for_host`]; no caller changes.
//!
//! Callers never branch on the kind of host: a command runs with
//! [`HostAdapter::run`], a Docker API exchange (passthrough, exec and attach hijacks,
//! followed logs and events) opens with [`HostAdapter::open_stream`], and what the history
//! and the queue need to know comes from [`HostAdapter::route`].
//!
//! Both adapters end in the protocol crate's one operation mapping (the agent runs it on its
//! side; the direct adapter drives `protocol::mapping::Plan` here). [`Adapters`] picks the
//! adapter from the host's current row, so a PATCH of `connection_mode` takes effect on the
//! next request.
//!
//! Owns: the seam, the choice of adapter for a host, and the cache of direct adapters (their
//! connection pools and negotiated API versions). Must not: map operations to Docker requests itself, keep command history,
//! or know the REST API (HTTP bodies and headers cross the seam as they are).

pub mod agent;
mod dial;
pub mod direct;
pub mod forward;

pub use crate::agents::Call;
pub use dial::{Endpoint, TlsMaterial};

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use futures_util::future::BoxFuture;
use protocol::{ErrorBody, ErrorCode, Operation};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agents::AgentManager;
use crate::cluster::Cluster;
use crate::crypto::KeyBox;
use crate::metrics::Metrics;
use crate::reply::Outcome;
use crate::store::{ConnectionMode, Host};

/// Where a host's commands go now, as the command's history and queue need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `agent` or `direct`: the audit's `via`.
    pub via: &'static str,
    /// The destination the history records (`agent_ref`): the agent's row id, or `direct`;
    /// `None` when there is nowhere to send (no agent enrolled).
    pub target: Option<String>,
    /// The external id of the host's agent (shown with the command).
    pub agent_id: Option<String>,
    /// Whether a command may wait in the queue until the host can take it.
    pub queueable: bool,
    /// Whether the host can take a command right now.
    pub online: bool,
}

/// One Docker Engine API exchange, as the client sent it. `Debug` shows header names only
/// (`X-Registry-Auth` carries credentials).
pub struct StreamRequest {
    pub method: Method,
    /// Origin-form target below the host's base path: `/v1.41/containers/json?all=1`.
    pub target: String,
    /// End-to-end headers only (the request's `Content-Length` included).
    pub headers: Vec<(String, String)>,
    /// The request body, streamed; `None` when there is none.
    pub body: Option<Body>,
    /// The client asked to hijack the connection, and its connection can be hijacked.
    pub upgrade: bool,
    /// Who asked (`NAME (ROLE)`), for the log of a replica the exchange is forwarded to.
    pub caller: Option<String>,
}

impl std::fmt::Debug for StreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("StreamRequest")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("headers", &names)
            .field("body", &self.body.is_some())
            .field("upgrade", &self.upgrade)
            .finish()
    }
}

/// The daemon's answer to a [`StreamRequest`]: the head, and the body still streaming.
pub struct StreamResponse {
    pub status: u16,
    /// As the daemon sent them (hop-by-hop headers included: the caller drops them).
    pub headers: HeaderMap,
    pub body: Body,
    /// When the daemon switched protocols (`101`) for an upgrade request: the raw
    /// connection's far end.
    pub tunnel: Option<Box<dyn Tunnel>>,
}

impl std::fmt::Debug for StreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResponse")
            .field("status", &self.status)
            .field("tunnel", &self.tunnel.is_some())
            .finish_non_exhaustive()
    }
}

/// The client's end of a hijacked connection: the client's upgraded HTTP connection (the
/// docker CLI), or one end of an in-memory pipe (the web UI's exec terminal, whose other end
/// is its WebSocket).
pub trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> ClientIo for T {}

/// The far end of a hijacked connection (exec, attach).
pub trait Tunnel: Send {
    /// Pumps bytes both ways between `client` and the daemon until both directions ended
    /// or either side failed. Dropping the future cuts both connections.
    fn pump(
        self: Box<Self>,
        client: Box<dyn ClientIo>,
        metrics: Arc<Metrics>,
    ) -> BoxFuture<'static, ()>;
}

/// The far end of a hijacked connection that is an upgraded HTTP connection: the daemon's
/// (a direct host) or the holding replica's (a forwarded one); `peer` names it in logs.
pub struct UpgradedTunnel {
    pub upgrade: hyper::upgrade::OnUpgrade,
    pub peer: &'static str,
}

impl Tunnel for UpgradedTunnel {
    fn pump(
        self: Box<Self>,
        client: Box<dyn ClientIo>,
        metrics: Arc<Metrics>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let peer = self.peer;
            let far = match self.upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, peer, "the upgrade failed");
                    return;
                }
            };
            let mut client = client;
            let mut far = hyper_util::rt::TokioIo::new(far);
            match tokio::io::copy_bidirectional(&mut client, &mut far).await {
                Ok((up, down)) => {
                    metrics.passthrough_bytes(true, up);
                    metrics.passthrough_bytes(false, down);
                }
                Err(e) => {
                    tracing::debug!(error = %e, peer, "hijacked connection ended with an error")
                }
            }
        })
    }
}

/// The one seam for a kind of host.
pub trait HostAdapter: Send + Sync {
    /// Where the host's commands go now.
    fn route(&self) -> Route;
    /// Runs `op` as command `call` (its id and idempotency key travel with it) within
    /// `call.timeout`. Errors carry the stable codes of [`ErrorCode`].
    fn run<'a>(&'a self, op: &'a Operation, call: &'a Call) -> BoxFuture<'a, Outcome>;
    /// Opens one Docker API exchange and returns the daemon's response head with its body
    /// streaming (and, after a `101`, the tunnel). Errors: `agent_offline`, `timeout` (no
    /// head in time after the request body was sent), `docker_unreachable`, `unsupported`,
    /// `rate_limited`, `invalid_params`.
    fn open_stream(&self, req: StreamRequest) -> BoxFuture<'_, Result<StreamResponse, ErrorBody>>;
}

type DirectCache = HashMap<String, (i64, Arc<direct::DirectHostAdapter>)>;

/// Builds (and caches) the adapter for a host.
#[derive(Clone)]
pub struct Adapters {
    agents: AgentManager,
    keys: KeyBox,
    /// How long a direct passthrough exchange waits for the daemon's response head.
    direct_timeout: Duration,
    /// Direct adapters by host id, with the `updated_at` they were built from, so the
    /// negotiated API version and the connection pool survive between requests.
    direct: Arc<Mutex<DirectCache>>,
    /// Who holds the agents of other replicas.
    cluster: Cluster,
    /// The pool forwarded requests go out on.
    forward_client: forward::ForwardClient,
}

impl std::fmt::Debug for Adapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Adapters")
    }
}

/// `not_found` for a host id.
pub fn host_not_found(id: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("host {id:?} not found"))
}

/// `host_pending`: the host enrolled itself and waits for an admin's approval.
pub fn host_pending(host: &Host) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::HostPending,
        format!(
            "host {:?} is waiting for approval: nothing reaches it until an admin approves it (POST /api/v1/hosts/{}/approve)",
            host.name, host.id
        ),
    )
}

impl Adapters {
    pub fn new(
        agents: AgentManager,
        keys: KeyBox,
        direct_timeout: Duration,
        cluster: Cluster,
    ) -> Adapters {
        Adapters {
            agents,
            keys,
            direct_timeout,
            direct: Arc::new(Mutex::new(HashMap::new())),
            forward_client: cluster.client(),
            cluster,
        }
    }

    /// The adapter for `host` as it is now. A host waiting for approval has none: no
    /// command or stream reaches it.
    ///
    /// Errors: `host_pending` (the host waits for approval), `unsupported` (an agent host
    /// while agent mode is disabled), `invalid_params` or `internal` (a direct host whose
    /// connection settings cannot be used).
    pub fn for_host(&self, host: &Host) -> Result<Arc<dyn HostAdapter>, ErrorBody> {
        if host.is_pending() {
            return Err(host_pending(host));
        }
        match host.connection_mode {
            ConnectionMode::Agent => {
                if !self.agents.config().enable_agent_mode {
                    return Err(ErrorBody::new(
                        ErrorCode::Unsupported,
                        "agent mode is disabled on this server",
                    ));
                }
                Ok(self.agent_or_forward(host))
            }
            ConnectionMode::Direct => Ok(self.direct_for(host)?),
        }
    }

    /// The agent adapter when an agent of the host is online here; else, when another live
    /// replica holds one, the adapter that forwards to it; else the agent adapter (offline:
    /// queue or `agent_offline`).
    fn agent_or_forward(&self, host: &Host) -> Arc<dyn HostAdapter> {
        let preferred = host.agent_ref.as_deref();
        let here = self
            .agents
            .online_agent_for_host(&host.id, preferred)
            .is_some();
        if !here {
            if let Some(holder) = self.cluster.holder_of_host(&host.id, preferred) {
                return Arc::new(forward::ForwardHostAdapter {
                    client: self.forward_client.clone(),
                    cluster: self.cluster.clone(),
                    agents: self.agents.clone(),
                    host_id: host.id.clone(),
                    preferred: host.agent_ref.clone(),
                    agent_id: host.agent_id.clone(),
                    holder,
                    stream_timeout: self.direct_timeout,
                });
            }
        }
        Arc::new(self.local_agent(host))
    }

    fn local_agent(&self, host: &Host) -> agent::AgentHostAdapter {
        agent::AgentHostAdapter::new(
            self.agents.clone(),
            host.id.clone(),
            host.agent_ref.clone(),
            host.agent_id.clone(),
        )
    }

    /// The agent adapter of `host` when an agent of it is online on this replica (what a
    /// request forwarded here runs on; it is never forwarded again).
    pub fn held_here(&self, host: &Host) -> Option<Arc<dyn HostAdapter>> {
        let online = !host.is_pending()
            && host.connection_mode == ConnectionMode::Agent
            && self
                .agents
                .online_agent_for_host(&host.id, host.agent_ref.as_deref())
                .is_some();
        online.then(|| Arc::new(self.local_agent(host)) as Arc<dyn HostAdapter>)
    }

    /// The cached direct adapter of `host`, rebuilt when the host changed.
    pub fn direct_for(&self, host: &Host) -> Result<Arc<direct::DirectHostAdapter>, ErrorBody> {
        let mut map = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, a)) = map.get(&host.id) {
            if *at == host.updated_at {
                return Ok(a.clone());
            }
        }
        let a = Arc::new(direct::DirectHostAdapter::from_host(
            host,
            &self.keys,
            self.direct_timeout,
        )?);
        map.insert(host.id.clone(), (host.updated_at, a.clone()));
        Ok(a)
    }

    pub fn forget(&self, host_id: &str) {
        self.direct
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host_id);
    }
}
