//! The `agent_updates` table: each attempt to update one agent to a release, and where it
//! stands (`pending`, then what the agent reports: `downloading`, `verifying`,
//! `restarting`, `succeeded`, `failed`, `rolled_back`).
//!
//! Owns: its SQL. Must not: decide what a state means for a rollout (the updates module
//! does), or move a row out of a final state.

use protocol::ErrorBody;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, Result, Store};

/// States after which a row never changes.
const FINAL: &str = "('succeeded', 'failed', 'rolled_back')";

/// One update of one agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentUpdateRecord {
    /// The update id the agent reports with.
    pub id: String,
    #[serde(skip)]
    pub agent_ref: String,
    pub agent_id: String,
    pub version: String,
    pub target: String,
    /// The version the agent ran when the update started.
    pub from_version: Option<String>,
    pub state: String,
    /// Bytes of the binary downloaded (last reported).
    pub bytes: Option<i64>,
    /// Why, for `failed` and `rolled_back`.
    pub error: Option<ErrorBody>,
    /// The rollout that started it.
    pub origin: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A new row, in state `pending`.
#[derive(Debug, Clone)]
pub struct NewAgentUpdate<'a> {
    pub id: &'a str,
    pub agent_ref: &'a str,
    pub agent_id: &'a str,
    pub version: &'a str,
    pub target: &'a str,
    pub from_version: Option<&'a str>,
    pub origin: Option<&'a str>,
}

const COLS: &str = "id, agent_ref, agent_id, version, target, from_version, state, bytes, error, origin, created_at, updated_at";

fn row(r: &AnyRow) -> Result<AgentUpdateRecord> {
    let error: Option<String> = r.try_get("error")?;
    Ok(AgentUpdateRecord {
        id: r.try_get("id")?,
        agent_ref: r.try_get("agent_ref")?,
        agent_id: r.try_get("agent_id")?,
        version: r.try_get("version")?,
        target: r.try_get("target")?,
        from_version: r.try_get("from_version")?,
        state: r.try_get("state")?,
        bytes: r.try_get("bytes")?,
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
        origin: r.try_get("origin")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// Records a new update in state `pending`.
    pub async fn add_agent_update(&self, u: &NewAgentUpdate<'_>) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO agent_updates (id, agent_ref, agent_id, version, target, from_version, state, origin, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9)",
        )
        .bind(u.id)
        .bind(u.agent_ref)
        .bind(u.agent_id)
        .bind(u.version)
        .bind(u.target)
        .bind(u.from_version)
        .bind(u.origin)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What the agent of `agent_ref` reported about update `id`. A row in a final state
    /// keeps it; a report of another agent changes nothing. Returns whether the row changed.
    pub async fn set_agent_update_state(
        &self,
        id: &str,
        agent_ref: &str,
        state: &str,
        bytes: Option<i64>,
        error: Option<&ErrorBody>,
    ) -> Result<bool> {
        let error = error.map(|e| serde_json::to_string(e).unwrap_or_default());
        let r = sqlx::query(&format!(
            "UPDATE agent_updates SET state = $1, bytes = COALESCE($2, bytes), error = $3, updated_at = $4 \
             WHERE id = $5 AND agent_ref = $6 AND state NOT IN {FINAL}"
        ))
        .bind(state)
        .bind(bytes)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(agent_ref)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn get_agent_update(&self, id: &str) -> Result<Option<AgentUpdateRecord>> {
        let r = sqlx::query(&format!("SELECT {COLS} FROM agent_updates WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// The newest updates of an agent, newest first.
    pub async fn agent_updates_of(
        &self,
        agent_ref: &str,
        limit: i64,
    ) -> Result<Vec<AgentUpdateRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM agent_updates WHERE agent_ref = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(agent_ref)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }

    /// The updates a rollout started.
    pub async fn agent_updates_by_origin(&self, origin: &str) -> Result<Vec<AgentUpdateRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM agent_updates WHERE origin = $1 ORDER BY created_at, id"
        ))
        .bind(origin)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }
}

impl Store {
    /// The updates of `ids` (a page of a rollout's rows), in no particular order.
    pub async fn agent_updates_by_ids(&self, ids: &[String]) -> Result<Vec<AgentUpdateRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {COLS} FROM agent_updates WHERE id IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(row).collect()
    }
}
