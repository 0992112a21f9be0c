//! The `agent_events` table: connections, disconnections, missed heartbeats and failed
//! handshakes of agents, pruned by age.
//!
//! Owns: its SQL. Must not: decide which failures are written (the sampler does).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::{json_text, new_id, now_ms, parse_json, Result, Store};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentEvent {
    pub id: String,
    pub agent_id: Option<String>,
    pub event_type: String,
    pub event_data: Value,
    pub created_at: i64,
}

impl Store {
    /// Records a connection event. `agent_ref` is the internal id, `None` for unknown agents.
    pub async fn add_agent_event(
        &self,
        agent_ref: Option<&str>,
        event_type: &str,
        data: &Value,
    ) -> Result<()> {
        sqlx::query("INSERT INTO agent_events (id, agent_id, event_type, event_data, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(new_id())
            .bind(agent_ref)
            .bind(event_type)
            .bind(json_text(data))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Bounded retention: drops connection events recorded before `before` (Unix ms).
    /// Returns how many rows went.
    pub async fn prune_agent_events(&self, before: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM agent_events WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// The newest connection events, newest first; `agent_ref` `None` lists every agent's.
    pub async fn list_agent_events(
        &self,
        agent_ref: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AgentEvent>> {
        let rows = match agent_ref {
            Some(a) => sqlx::query(
                "SELECT e.id, d.agent_id, e.event_type, e.event_data, e.created_at FROM agent_events e \
                 LEFT JOIN docker_agents d ON d.id = e.agent_id WHERE e.agent_id = $1 \
                 ORDER BY e.created_at DESC, e.id LIMIT $2",
            )
            .bind(a)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
            None => sqlx::query(
                "SELECT e.id, d.agent_id, e.event_type, e.event_data, e.created_at FROM agent_events e \
                 LEFT JOIN docker_agents d ON d.id = e.agent_id ORDER BY e.created_at DESC, e.id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
        };
        rows.iter()
            .map(|r| {
                Ok(AgentEvent {
                    id: r.try_get("id")?,
                    agent_id: r.try_get("agent_id")?,
                    event_type: r.try_get("event_type")?,
                    event_data: parse_json(r.try_get("event_data")?),
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }
}
