//! The `agent_update` kind of rollout: every host's agent updated to one stored release,
//! host by host, with the parallelism, failure budget, states, live feed messages, audit and
//! durable record of every rollout (`POST /api/v1/agent-updates`).
//!
//! ```text
//! plan:  hosts ─ each host's agent (not revoked; connected now, else connected last) ─
//!        the release of the version for the agent's target      (any gap refuses the plan)
//! job:   agent offline ─ parked (slot freed) until it connects, at most OFFLINE_WAIT ─ skipped
//!        Updates::begin_step (the update row, origin `agent_update:ID`) ─ its id recorded as
//!        the target's first command id ─ Updates::wait until the row is final
//!        succeeded ─► succeeded · failed, rolled_back ─► failed (counts against max_failures)
//! ```
//!
//! A restarted server resumes a started target from its recorded update: `begin_step`
//! finds the rollout's row of that agent and sends it again with the same id, so no agent
//! installs a release twice.
//!
//! Owns: the rollout's spec, the choice of each host's agent, and the job that runs the
//! updates step on one host. Must not: take an update step itself (the updates module owns
//! the update of one agent), or verify releases (each agent does, with its own key).

use futures_util::future::BoxFuture;
use protocol::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Job, JobKind, Target, TargetEnd, TargetState};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::reply;
use crate::store::{Host, Role};
use crate::updates::{Updates, DEFAULT_WAIT};

/// The rollout kind, stored with the rollout and the prefix of its audit entries.
pub const KIND: &str = "agent_update";
/// How long a host whose agent is offline waits for it before it is `skipped`.
pub const OFFLINE_WAIT: Duration = Duration::from_secs(120);
/// How often a parked host looks for its agent.
const OFFLINE_POLL: Duration = Duration::from_millis(500);
/// Hosts named in a refusal at most.
const NAMED: usize = 5;

/// What an agent update rollout installs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    pub version: String,
}

impl UpdateSpec {
    fn parse(spec: &Value) -> Result<UpdateSpec, ApiError> {
        serde_json::from_value(spec.clone())
            .map_err(|e| ApiError::bad_request(format!("agent update: {e}")))
    }
}

/// The origin recorded with the update rows of rollout `id`.
pub fn origin(id: &str) -> String {
    format!("{KIND}:{id}")
}

/// Builds agent update jobs.
#[derive(Debug, Clone)]
pub struct AgentUpdateKind {
    pub updates: Updates,
}

impl JobKind for AgentUpdateKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// Admins only (as `POST /api/v1/agents/{agent_id}/update`); the version must be on
    /// the shelf for some target.
    fn check(&self, who: &Principal, spec: &Value) -> Result<(), ApiError> {
        who.require(Role::Admin)?;
        let spec = UpdateSpec::parse(spec)?;
        if spec.version.is_empty() {
            return Err(ApiError::bad_request("version must not be empty"));
        }
        if !self.updates.has_version(&spec.version) {
            return Err(ApiError::not_found(format!(
                "no release {:?} is stored (add it with `docker-ctl-server release add`; GET /api/v1/releases lists them)",
                spec.version
            )));
        }
        Ok(())
    }

    fn build(&self, id: &str, spec: &Value) -> Result<Arc<dyn Job>, String> {
        let spec = UpdateSpec::parse(spec).map_err(|e| e.body.message)?;
        Ok(Arc::new(UpdateJob {
            origin: origin(id),
            spec,
            updates: self.updates.clone(),
        }))
    }
}

impl AgentUpdateKind {
    /// The targets of a rollout to `version` over `hosts`: each host's id and name, in
    /// order. Refused (`invalid_params`, naming the first hosts) when a host has no agent,
    /// or its agent has not reported its target triple or has no release of `version` for
    /// it: a rollout starts only when every host can take the release.
    pub async fn targets(
        &self,
        hosts: &[Host],
        version: &str,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
        let agents = self.updates.agents_of_hosts(&ids).await?;
        let mut gaps = Vec::new();
        for h in hosts {
            let why = match agents.get(&h.id) {
                None => Some("no agent".to_string()),
                Some(a) => self
                    .updates
                    .release_for(a, version)
                    .err()
                    .map(|e| e.message),
            };
            if let Some(why) = why {
                gaps.push(format!("{} ({})", h.name, why));
            }
        }
        if !gaps.is_empty() {
            let total = gaps.len();
            let more = match total.saturating_sub(NAMED) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            gaps.truncate(NAMED);
            return Err(ApiError::bad_request(format!(
                "{total} host(s) cannot take release {version}: {}{more}",
                gaps.join("; ")
            )));
        }
        Ok(hosts
            .iter()
            .map(|h| (h.id.clone(), h.name.clone()))
            .collect())
    }
}

struct UpdateJob {
    origin: String,
    spec: UpdateSpec,
    updates: Updates,
}

fn end_with(state: TargetState, e: ErrorBody) -> TargetEnd {
    TargetEnd {
        state,
        result: Some(reply::encode(&Err(e))),
    }
}

impl Job for UpdateJob {
    fn run<'a>(&'a self, t: &'a mut Target) -> BoxFuture<'a, TargetEnd> {
        Box::pin(self.run_target(t))
    }
}

impl UpdateJob {
    async fn run_target(&self, t: &mut Target) -> TargetEnd {
        let agent = match self.updates.agent_of_host(&t.host_id).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                let e = ErrorBody::new(ErrorCode::NotFound, "the host has no agent any more");
                return end_with(TargetState::Failed, e);
            }
            Err(e) => return end_with(TargetState::Failed, e),
        };
        // A started target (after a restart) goes on with its update: the wait sends it
        // again when the agent is back.
        if t.command_ids.is_empty() && !self.wait_online(t, &agent.id).await {
            let e = ErrorBody::new(
                ErrorCode::AgentOffline,
                format!(
                    "agent {} was offline for {}s",
                    agent.agent_id,
                    OFFLINE_WAIT.as_secs()
                ),
            );
            let state = if t.is_stopping() {
                TargetState::Cancelled
            } else {
                TargetState::Skipped
            };
            return end_with(state, e);
        }
        t.unpark().await;
        let row = match self
            .updates
            .begin_step(&agent, &self.spec.version, &self.origin)
            .await
        {
            Ok(r) => r,
            Err(e) => return end_with(TargetState::Failed, e),
        };
        t.record_command(0, &row.id).await;
        let row = match self.updates.wait(&row.id, DEFAULT_WAIT).await {
            Ok(r) => r,
            Err(e) => return end_with(TargetState::Failed, e),
        };
        match row.state.as_str() {
            "succeeded" => TargetEnd {
                state: TargetState::Succeeded,
                result: Some(reply::encode(&Ok(serde_json::json!({
                    "update_id": row.id, "version": row.version,
                })))),
            },
            other => {
                let e = row.error.unwrap_or_else(|| {
                    ErrorBody::new(ErrorCode::Internal, format!("the update ended {other}"))
                });
                end_with(TargetState::Failed, e)
            }
        }
    }

    /// Whether the agent is online, waiting (parked, its slot freed) up to [`OFFLINE_WAIT`]
    /// for it to connect; false as soon as the rollout stops.
    async fn wait_online(&self, t: &mut Target, agent_ref: &str) -> bool {
        if self.updates.is_online(agent_ref) {
            return true;
        }
        t.park().await;
        let deadline = Instant::now() + OFFLINE_WAIT;
        while Instant::now() < deadline {
            if t.is_stopping() {
                return false;
            }
            if self.updates.is_online(agent_ref) {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(OFFLINE_POLL) => {}
                _ = t.stopping() => return false,
            }
        }
        false
    }
}
