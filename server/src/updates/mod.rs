//! Updating one agent to a stored release: the step a rollout takes for each agent, and
//! what `POST /api/v1/agents/{agent_id}/update` starts.
//!
//! ```text
//! start:  agent row (target from its last auth) ─ release version/target on the shelf ─
//!         row `pending` in agent_updates ─ `agent_update` to the live session
//! agent:  agent_update_progress downloading → verifying → restarting ─ re-executes ─
//!         auth (update: succeeded | rolled_back | failed)    (stored by the agent endpoint)
//! wait:   the row reaches a final state, or the deadline passes (then `failed`)
//! ```
//!
//! The server only hands out what was signed where releases are built: each agent checks the
//! signature against its own key. An update is sent again with the same id when the server
//! restarted mid-rollout ([`Updates::resume`]); the agent answers from its record. The update
//! of an agent that another replica holds is sent by that replica (the `send_update`
//! wake-up); its reports reach the row there, and the wait here reads the row.
//!
//! Owns: starting, resuming and waiting for one agent's update. Must not: verify releases for
//! the agent, decide a rollout's order or failures (the rollout engine does), or touch the
//! socket (the agent registry sends).

use protocol::{AgentUpdatePayload, ErrorBody, ErrorCode};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::agents::AgentManager;
use crate::cluster::{Cluster, Event, WakeUp};
use crate::feed::Feed;
use crate::releases::{Release, Shelf};
use crate::store::{Agent, AgentUpdateRecord, NewAgentUpdate, Store};

/// How long a rollout waits for one agent's update to end: the agent's default download
/// timeout (900 s) and probation (60 s), and room for the restart.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20 * 60);
/// How often [`Updates::wait`] reads the row.
const POLL: Duration = Duration::from_millis(250);

/// States that end an update.
pub fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "rolled_back")
}

/// Starts and follows agent updates. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Updates {
    store: Store,
    agents: AgentManager,
    shelf: Shelf,
    feed: Feed,
    /// Where agents held by other replicas are: their updates are sent by their holder.
    cluster: Cluster,
}

/// The release path agents download from, below the server's base URL.
pub fn release_path(r: &Release) -> String {
    format!("/api/v1/releases/{}/{}", r.version, r.target)
}

impl Updates {
    /// The updates of this replica; the update of an agent another replica holds is sent
    /// by that replica (the `send_update` wake-up, handled here too).
    pub fn new(
        store: Store,
        agents: AgentManager,
        shelf: Shelf,
        feed: Feed,
        cluster: Cluster,
    ) -> Updates {
        let (s, a, sh) = (store.clone(), agents.clone(), shelf.clone());
        cluster.notifier().on(move |e| {
            if let Event::WakeUp(WakeUp::SendUpdate { agent, update }) = e {
                if a.is_online(agent) {
                    let (s, a, sh, update) = (s.clone(), a.clone(), sh.clone(), update.clone());
                    tokio::spawn(async move { send_held_here(&s, &a, &sh, &update).await });
                }
            }
        });
        Updates {
            store,
            agents,
            shelf,
            feed,
            cluster,
        }
    }

    pub fn shelf(&self) -> &Shelf {
        &self.shelf
    }

    /// The release `agent` would update to for `version`, or why there is none.
    pub fn release_for(&self, agent: &Agent, version: &str) -> Result<Release, ErrorBody> {
        let target = agent.target.as_deref().ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::Unsupported,
                format!(
                    "agent {} has not reported its target triple (it predates self-update, or never connected)",
                    agent.agent_id
                ),
            )
        })?;
        self.shelf.get(version, target).ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::NotFound,
                format!("no release {version} for {target} (add it with `docker-ctl-server release add`)"),
            )
        })
    }

    /// Records an update of `agent` to `version` and sends it. The row is written first and
    /// is `failed` with the reason when it cannot be sent; `Err` only when nothing could be
    /// recorded (no such release, or the database).
    pub async fn start(
        &self,
        agent: &Agent,
        version: &str,
        origin: Option<&str>,
    ) -> Result<AgentUpdateRecord, ErrorBody> {
        let release = self.release_for(agent, version)?;
        let id = uuid::Uuid::new_v4().to_string();
        self.store
            .add_agent_update(&NewAgentUpdate {
                id: &id,
                agent_ref: &agent.id,
                agent_id: &agent.agent_id,
                version,
                target: &release.target,
                from_version: agent.version.as_deref(),
                origin,
            })
            .await
            .map_err(internal)?;
        tracing::info!(agent_id = %agent.agent_id, update_id = %id, %version, "agent update started");
        if let Err(e) = self.send(&agent.id, &id, &release) {
            self.fail(&id, &agent.id, &e).await;
        }
        self.get(&id).await
    }

    /// One agent's step of rollout `origin`: starts its update, or after a server restart
    /// finds the one this rollout started and sends it again, then waits (at most `limit`)
    /// until it ends. The step succeeded when the row reads `succeeded`.
    pub async fn run_step(
        &self,
        agent: &Agent,
        version: &str,
        origin: &str,
        limit: Duration,
    ) -> Result<AgentUpdateRecord, ErrorBody> {
        let row = self.begin_step(agent, version, origin).await?;
        self.wait(&row.id, limit).await
    }

    /// The first half of [`Updates::run_step`], for a caller that records the update's id
    /// before it waits ([`Updates::wait`] is the second half): starts the update of
    /// `agent` for rollout `origin`, or finds the one it started and sends it again.
    pub async fn begin_step(
        &self,
        agent: &Agent,
        version: &str,
        origin: &str,
    ) -> Result<AgentUpdateRecord, ErrorBody> {
        let existing = self
            .store
            .agent_updates_by_origin(origin)
            .await
            .map_err(internal)?
            .into_iter()
            .find(|r| r.agent_ref == agent.id);
        match existing {
            Some(r) => {
                self.resume(&r).await;
                Ok(r)
            }
            None => self.start(agent, version, Some(origin)).await,
        }
    }

    /// Whether `version` is stored for at least one target.
    pub fn has_version(&self, version: &str) -> bool {
        self.shelf.list().iter().any(|r| r.version == version)
    }

    /// The agent a rollout updates on `host_id`: of its agents that are not revoked, the
    /// one connected now, else the one connected last. None when the host has no agent.
    pub async fn agent_of_host(&self, host_id: &str) -> Result<Option<Agent>, ErrorBody> {
        let agents = self.store.agents_of_host(host_id).await.map_err(internal)?;
        Ok(self.pick(agents))
    }

    /// [`Updates::agent_of_host`] for many hosts in a few queries: each host id with the agent
    /// an update would go to (hosts without one are left out).
    pub async fn agents_of_hosts(
        &self,
        host_ids: &[String],
    ) -> Result<HashMap<String, Agent>, ErrorBody> {
        let mut by_host: HashMap<String, Vec<Agent>> = HashMap::new();
        for a in self
            .store
            .agents_of_hosts(host_ids)
            .await
            .map_err(internal)?
        {
            if let Some(h) = a.host_id.clone() {
                by_host.entry(h).or_default().push(a);
            }
        }
        Ok(by_host
            .into_iter()
            .filter_map(|(h, agents)| self.pick(agents).map(|a| (h, a)))
            .collect())
    }

    /// Of a host's agents, the one an update goes to: not revoked, online first, then the
    /// most recently connected.
    fn pick(&self, agents: Vec<Agent>) -> Option<Agent> {
        let mut agents: Vec<Agent> = agents
            .into_iter()
            .filter(|a| a.revoked_at.is_none())
            .collect();
        agents.sort_by_key(|a| (self.is_online(&a.id), a.connected_at));
        agents.pop()
    }

    /// Whether the agent (by `docker_agents.id`) has a live session that is not silent here,
    /// or a session on another live replica.
    pub fn is_online(&self, agent_ref: &str) -> bool {
        self.agents.is_online(agent_ref) || self.cluster.holder_of_agent(agent_ref).is_some()
    }

    /// After a server restart: sends a non-final update again with its id (the agent
    /// answers from its record, or goes on with what it runs). An offline agent gets it
    /// when the rollout's wait sees it online.
    pub async fn resume(&self, row: &AgentUpdateRecord) {
        if is_final(&row.state) {
            return;
        }
        if let Some(r) = self.shelf.get(&row.version, &row.target) {
            let _ = self.send(&row.agent_ref, &row.id, &r);
        }
    }

    /// The agent's live session: here, or on another live replica.
    fn session_of(&self, agent_ref: &str) -> Option<String> {
        self.agents
            .status(agent_ref)
            .map(|s| s.session_id)
            .or_else(|| {
                self.cluster
                    .holder_of_agent(agent_ref)
                    .map(|h| h.session_id)
            })
    }

    /// Sends update `id` to the agent's session here, or has the replica holding it send it.
    fn send(&self, agent_ref: &str, id: &str, r: &Release) -> Result<(), ErrorBody> {
        if !self.agents.is_online(agent_ref) && self.cluster.holder_of_agent(agent_ref).is_some() {
            self.cluster.notifier().send(WakeUp::SendUpdate {
                agent: agent_ref.to_string(),
                update: id.to_string(),
            });
            return Ok(());
        }
        self.agents.send_update(agent_ref, payload(id, r))
    }

    async fn fail(&self, id: &str, agent_ref: &str, e: &ErrorBody) {
        if let Err(err) = self
            .store
            .set_agent_update_state(id, agent_ref, "failed", None, Some(e))
            .await
        {
            tracing::error!(error = %err, update_id = %id, "could not record a failed update");
        }
        self.feed.publish(
            "agent_update_progress",
            None,
            serde_json::json!({ "update_id": id, "state": "failed", "error": e }),
        );
    }

    pub async fn get(&self, id: &str) -> Result<AgentUpdateRecord, ErrorBody> {
        self.store
            .get_agent_update(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no update {id}")))
    }

    /// Waits until update `id` ends, at most `limit`; an update that does not end in time
    /// is recorded `failed` (`timeout`). While it waits, an agent that reconnected without
    /// having started the update (it was offline, or the server restarted) is sent it again.
    pub async fn wait(&self, id: &str, limit: Duration) -> Result<AgentUpdateRecord, ErrorBody> {
        let deadline = Instant::now() + limit;
        // The caller just sent it to the session there is now.
        let mut sent_to = self.session_of(&self.get(id).await?.agent_ref);
        loop {
            let row = self.get(id).await?;
            if is_final(&row.state) {
                return Ok(row);
            }
            if Instant::now() >= deadline {
                let e = ErrorBody::new(
                    ErrorCode::Timeout,
                    format!(
                        "the agent did not finish the update within {}s (last state {})",
                        limit.as_secs(),
                        row.state
                    ),
                );
                self.fail(id, &row.agent_ref, &e).await;
                return self.get(id).await;
            }
            // A pending update goes to each new session of the agent once.
            let session = self.session_of(&row.agent_ref);
            if row.state == "pending" && session.is_some() && session != sent_to {
                self.resume(&row).await;
                sent_to = session;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn internal(e: crate::store::StoreError) -> ErrorBody {
    tracing::error!(error = %e, "agent update: database error");
    ErrorBody::new(ErrorCode::Internal, "database error")
}

fn payload(id: &str, r: &Release) -> AgentUpdatePayload {
    AgentUpdatePayload {
        update_id: id.to_string(),
        version: r.version.clone(),
        target: r.target.clone(),
        path: release_path(r),
        size: r.size,
    }
}

/// Another replica started update `id` of an agent held here: it is sent from here (the
/// agent downloads the release from this replica, whose shelf must hold it too).
async fn send_held_here(store: &Store, agents: &AgentManager, shelf: &Shelf, id: &str) {
    let row = match store.get_agent_update(id).await {
        Ok(Some(r)) if !is_final(&r.state) => r,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(update_id = %id, error = %e, "reading an update started elsewhere failed");
            return;
        }
    };
    let sent = match shelf.get(&row.version, &row.target) {
        Some(r) => agents.send_update(&row.agent_ref, payload(id, &r)),
        None => Err(ErrorBody::new(
            ErrorCode::NotFound,
            format!(
                "no release {} for {} on the replica holding the agent (add it there too)",
                row.version, row.target
            ),
        )),
    };
    if let Err(e) = sent {
        tracing::warn!(update_id = %id, error = %e.message, "an update started elsewhere could not be sent");
        let _ = store
            .set_agent_update_state(id, &row.agent_ref, "failed", None, Some(&e))
            .await;
    }
}
