//! The `agent_presence` table: which replica holds each agent's session, in which epoch of
//! that replica.
//!
//! Owns: its SQL: a claim (refused when the replica's epoch has moved on), a release (only of
//! the session that claimed), dropping the claims of earlier epochs and of replicas that
//! stopped heartbeating, and the read of every claim joined to its replica. Must not: decide
//! who forwards where (the cluster module does).

use sqlx::Row;

use super::replicas::ReplicaRecord;
use super::{now_ms, Result, Store};

/// One claim, with the replica that made it (in the claim's epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub agent_ref: String,
    pub host_id: Option<String>,
    pub session_id: String,
    pub claimed_at: i64,
    pub replica: ReplicaRecord,
}

/// Why a claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefused {
    /// The replica's epoch is not the claim's: this process was replaced by a newer start of
    /// the same replica id.
    StaleEpoch,
}

impl Store {
    /// Replica `replica_id` in `epoch` holds the session `session_id` of agent `agent_ref`.
    /// Replaces whatever claim the agent had (it reconnected). Refused when the replica's
    /// row is not in `epoch`.
    pub async fn claim_agent(
        &self,
        agent_ref: &str,
        host_id: Option<&str>,
        replica_id: &str,
        epoch: i64,
        session_id: &str,
    ) -> Result<Result<(), ClaimRefused>> {
        let r = sqlx::query(
            "INSERT INTO agent_presence (agent_ref, host_id, replica_id, epoch, session_id, claimed_at) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM replicas WHERE id = $7 AND epoch = $8) \
             ON CONFLICT (agent_ref) DO UPDATE SET host_id = excluded.host_id, replica_id = excluded.replica_id, \
             epoch = excluded.epoch, session_id = excluded.session_id, claimed_at = excluded.claimed_at",
        )
        .bind(agent_ref)
        .bind(host_id)
        .bind(replica_id)
        .bind(epoch)
        .bind(session_id)
        .bind(now_ms())
        .bind(replica_id)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(if r.rows_affected() == 1 {
            Ok(())
        } else {
            Err(ClaimRefused::StaleEpoch)
        })
    }

    /// The session `session_id` of agent `agent_ref` closed. A newer claim (the agent
    /// reconnected, here or elsewhere) is left alone.
    pub async fn release_agent(&self, agent_ref: &str, session_id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM agent_presence WHERE agent_ref = $1 AND session_id = $2")
            .bind(agent_ref)
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Drops the claims of replica `replica_id` made in epochs before `epoch` (its previous
    /// lives). Returns how many.
    pub async fn drop_stale_claims(&self, replica_id: &str, epoch: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM agent_presence WHERE replica_id = $1 AND epoch < $2")
            .bind(replica_id)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Drops the claims replica `replica_id` made in `epoch` (it stopped heartbeating in that
    /// epoch; a newer start of it keeps its own claims). Returns how many.
    pub async fn drop_claims_of(&self, replica_id: &str, epoch: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM agent_presence WHERE replica_id = $1 AND epoch = $2")
            .bind(replica_id)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Every claim made in its replica's current epoch, with that replica; with `except`, the
    /// claims of other replicas only (a replica knows its own sessions without the database).
    pub async fn list_presence(&self, except: Option<&str>) -> Result<Vec<Presence>> {
        const ALL: &str = "SELECT p.agent_ref, p.host_id, p.session_id, p.claimed_at, r.id, r.advertise_url, r.region, \
             r.epoch, r.started_at, r.heartbeat_at, r.heartbeat_interval_ms \
             FROM agent_presence p JOIN replicas r ON r.id = p.replica_id AND r.epoch = p.epoch";
        let rows = match except {
            None => sqlx::query(ALL).fetch_all(&self.pool).await?,
            Some(me) => {
                sqlx::query(&format!("{ALL} WHERE p.replica_id <> $1"))
                    .bind(me)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(Presence {
                    agent_ref: r.try_get("agent_ref")?,
                    host_id: r.try_get("host_id")?,
                    session_id: r.try_get("session_id")?,
                    claimed_at: r.try_get("claimed_at")?,
                    replica: ReplicaRecord {
                        id: r.try_get("id")?,
                        advertise_url: r.try_get("advertise_url")?,
                        region: r.try_get("region")?,
                        epoch: r.try_get("epoch")?,
                        started_at: r.try_get("started_at")?,
                        heartbeat_at: r.try_get("heartbeat_at")?,
                        heartbeat_interval_ms: r.try_get("heartbeat_interval_ms")?,
                    },
                })
            })
            .collect()
    }
}
