//! The `docker_events` table: the Docker events agents report, bounded per host and by age.
//!
//! Owns: its SQL and the bounds. Must not: publish events (the agent endpoint does).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::{json_text, now_ms, parse_json, Result, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct NewDockerEvent {
    pub host_id: String,
    pub agent_id: Option<String>,
    pub kind: String,
    pub action: String,
    pub actor_id: String,
    pub attributes: Value,
    pub time_nano: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DockerEventRecord {
    pub seq: i64,
    pub host_id: String,
    pub agent_id: Option<String>,
    pub kind: String,
    pub action: String,
    pub actor_id: String,
    pub attributes: Value,
    pub time_nano: i64,
    pub created_at: i64,
}

impl Store {
    pub async fn add_docker_event(&self, e: &NewDockerEvent) -> Result<()> {
        sqlx::query(
            "INSERT INTO docker_events (host_id, agent_id, kind, action, actor_id, attributes, time_nano, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&e.host_id)
        .bind(&e.agent_id)
        .bind(&e.kind)
        .bind(&e.action)
        .bind(&e.actor_id)
        .bind(json_text(&e.attributes))
        .bind(e.time_nano)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Events of a host with `seq > after`, newest first.
    pub async fn list_docker_events(
        &self,
        host_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DockerEventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, host_id, agent_id, kind, action, actor_id, attributes, time_nano, created_at \
             FROM docker_events WHERE host_id = $1 AND seq > $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(host_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DockerEventRecord {
                    seq: r.try_get("seq")?,
                    host_id: r.try_get("host_id")?,
                    agent_id: r.try_get("agent_id")?,
                    kind: r.try_get("kind")?,
                    action: r.try_get("action")?,
                    actor_id: r.try_get("actor_id")?,
                    attributes: parse_json(r.try_get("attributes")?),
                    time_nano: r.try_get("time_nano")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Bounded retention: drops events older than `max_age_ms` and keeps at most
    /// `max_per_host` per host. Returns how many rows went.
    pub async fn prune_docker_events(&self, max_per_host: i64, max_age_ms: i64) -> Result<u64> {
        let mut n = sqlx::query("DELETE FROM docker_events WHERE created_at < $1")
            .bind(now_ms() - max_age_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let hosts =
            sqlx::query("SELECT host_id, COUNT(*) AS n FROM docker_events GROUP BY host_id")
                .fetch_all(&self.pool)
                .await?;
        for h in hosts {
            let count: i64 = h.try_get("n")?;
            if count <= max_per_host {
                continue;
            }
            let host_id: String = h.try_get("host_id")?;
            let cut = sqlx::query("SELECT seq FROM docker_events WHERE host_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2")
                .bind(&host_id)
                .bind(max_per_host)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(cut) = cut {
                let seq: i64 = cut.try_get("seq")?;
                n += sqlx::query("DELETE FROM docker_events WHERE host_id = $1 AND seq <= $2")
                    .bind(&host_id)
                    .bind(seq)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
        }
        Ok(n)
    }
}
