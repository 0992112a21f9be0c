//! How the server reaches a host's Docker daemon: one [`HostAdapter`] trait, two adapters.
//!
//! - [`agent::AgentHostAdapter`]: over the agent's WebSocket, through the [`AgentManager`].
//! - [`direct::DirectHostAdapter`]: the server dials the daemon itself with hyper
//!   (`unix://`, `tcp://`, `https://` with client TLS).
//!
//! Both end in the protocol crate's one operation mapping (the agent runs it on its side;
//! the direct adapter drives `protocol::mapping::Plan` here). [`Adapters`] picks the adapter
//! from the host's current row, so a PATCH of `connection_mode` takes effect on the next
//! request. Must not: map operations to Docker requests itself.

pub mod agent;
pub mod direct;

use futures_util::future::BoxFuture;
use protocol::{ErrorBody, ErrorCode, Operation};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agents::AgentManager;
use crate::crypto::KeyBox;
use crate::store::{ConnectionMode, Host};

/// Runs catalog operations on one host.
pub trait HostAdapter: Send + Sync {
    /// Runs `op` within `timeout`. Errors carry the stable codes of [`ErrorCode`].
    fn execute<'a>(
        &'a self,
        op: &'a Operation,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ErrorBody>>;
    /// `agent` or `direct`.
    fn kind(&self) -> &'static str;
}

type DirectCache = HashMap<String, (i64, Arc<direct::DirectHostAdapter>)>;

/// Builds (and caches) the adapter for a host.
#[derive(Clone)]
pub struct Adapters {
    agents: AgentManager,
    keys: KeyBox,
    /// Direct adapters by host id, with the `updated_at` they were built from, so the
    /// negotiated API version and the connection pool survive between requests.
    direct: Arc<Mutex<DirectCache>>,
}

impl std::fmt::Debug for Adapters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Adapters")
    }
}

impl Adapters {
    pub fn new(agents: AgentManager, keys: KeyBox) -> Adapters {
        Adapters {
            agents,
            keys,
            direct: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The adapter for `host` as it is now.
    pub fn for_host(&self, host: &Host) -> Result<Arc<dyn HostAdapter>, ErrorBody> {
        match host.connection_mode {
            ConnectionMode::Agent => {
                if !self.agents.config().enable_agent_mode {
                    return Err(ErrorBody::new(
                        ErrorCode::Unsupported,
                        "agent mode is disabled on this server",
                    ));
                }
                let agent_ref = self
                    .agents
                    .online_agent_for_host(&host.id, host.agent_ref.as_deref())
                    .or_else(|| host.agent_ref.clone());
                Ok(Arc::new(agent::AgentHostAdapter::new(
                    self.agents.clone(),
                    host.id.clone(),
                    agent_ref,
                )))
            }
            ConnectionMode::Direct => Ok(self.direct_for(host)?),
        }
    }

    /// The cached direct adapter of `host`, rebuilt when the host changed.
    pub fn direct_for(&self, host: &Host) -> Result<Arc<direct::DirectHostAdapter>, ErrorBody> {
        let mut map = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, a)) = map.get(&host.id) {
            if *at == host.updated_at {
                return Ok(a.clone());
            }
        }
        let a = Arc::new(direct::DirectHostAdapter::from_host(host, &self.keys)?);
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
