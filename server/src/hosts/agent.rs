//! The adapter for hosts whose agent dials in: commands go over the agent's WebSocket.

use futures_util::future::BoxFuture;
use protocol::{ErrorBody, ErrorCode, Operation};
use serde_json::Value;
use std::time::Duration;

use super::HostAdapter;
use crate::agents::AgentManager;

pub struct AgentHostAdapter {
    agents: AgentManager,
    /// The host the commands are for: only a session bound to it runs them.
    host_id: String,
    /// `docker_agents.id` of the agent to use; `None` when the host has no agent.
    agent_ref: Option<String>,
}

impl AgentHostAdapter {
    pub fn new(agents: AgentManager, host_id: String, agent_ref: Option<String>) -> Self {
        AgentHostAdapter {
            agents,
            host_id,
            agent_ref,
        }
    }
}

impl HostAdapter for AgentHostAdapter {
    fn execute<'a>(
        &'a self,
        op: &'a Operation,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ErrorBody>> {
        Box::pin(async move {
            match &self.agent_ref {
                Some(a) => self.agents.execute(&self.host_id, a, op, timeout).await,
                None => Err(ErrorBody::new(
                    ErrorCode::AgentOffline,
                    "the host has no agent: enrol one with POST /api/v1/agents",
                )),
            }
        })
    }

    fn kind(&self) -> &'static str {
        "agent"
    }
}
