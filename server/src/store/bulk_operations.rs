//! The `bulk_operations` table: one row per rollout (a bulk operation; later a stack or an
//! agent update, told apart by `kind`), and the vocabulary of a rollout's state
//! ([`RolloutState`]).
//!
//! A rollout and all its targets are written in one transaction, so a restart finds either
//! both or neither.
//!
//! Owns: the SQL of the table (and the insert of a rollout's targets with it). Must not:
//! decide when a rollout changes state (the `rollouts` module does), or hold params in clear
//! (the spec arrives encrypted).

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, parse_json, Result, Role, Store, StoreError};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Targets are running, waiting in the queue, or not started yet.
    Running,
    /// Final: every target succeeded.
    Succeeded,
    /// Final: a target failed, was skipped, or the failure budget stopped the rollout.
    Failed,
    /// Final: cancelled by a user before every target succeeded.
    Cancelled,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Failed => "failed",
            RolloutState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutState> {
        [
            RolloutState::Running,
            RolloutState::Succeeded,
            RolloutState::Failed,
            RolloutState::Cancelled,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A new rollout as it is stored.
#[derive(Clone, PartialEq)]
pub struct NewRollout {
    pub id: String,
    pub kind: String,
    pub summary: Value,
    /// The job's spec, encrypted.
    pub spec_enc: String,
    pub max_parallel: i64,
    pub max_failures: i64,
    pub created_by: String,
    pub created_role: Role,
    pub token_id: String,
    pub source_ip: Option<String>,
    pub runner: String,
    /// Host id and name of each target, in rollout order.
    pub targets: Vec<(String, String)>,
}

impl std::fmt::Debug for NewRollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRollout")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("targets", &self.targets.len())
            .finish_non_exhaustive()
    }
}

/// A rollout as stored.
#[derive(Clone, PartialEq)]
pub struct RolloutRecord {
    pub id: String,
    pub kind: String,
    pub state: RolloutState,
    pub summary: Value,
    pub spec_enc: String,
    pub max_parallel: i64,
    pub max_failures: i64,
    pub total: i64,
    pub created_by: String,
    pub created_role: Role,
    pub token_id: String,
    pub source_ip: Option<String>,
    pub runner: Option<String>,
    pub cancel_requested_at: Option<i64>,
    pub cancelled_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl std::fmt::Debug for RolloutRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutRecord")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

const COLS: &str = "id, kind, state, summary, spec_enc, max_parallel, max_failures, total, created_by, \
    created_role, token_id, source_ip, runner, cancel_requested_at, cancelled_by, reason, created_at, updated_at, \
    finished_at";

fn row(r: &AnyRow) -> Result<RolloutRecord> {
    let state: String = r.try_get("state")?;
    let role: String = r.try_get("created_role")?;
    Ok(RolloutRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        state: RolloutState::parse(&state).unwrap_or(RolloutState::Failed),
        summary: parse_json(r.try_get("summary")?),
        spec_enc: r.try_get("spec_enc")?,
        max_parallel: r.try_get("max_parallel")?,
        max_failures: r.try_get("max_failures")?,
        total: r.try_get("total")?,
        created_by: r.try_get("created_by")?,
        // An unreadable role grants nothing more than reading.
        created_role: Role::parse(&role).unwrap_or(Role::Viewer),
        token_id: r.try_get("token_id")?,
        source_ip: r.try_get("source_ip")?,
        runner: r.try_get("runner")?,
        cancel_requested_at: r.try_get("cancel_requested_at")?,
        cancelled_by: r.try_get("cancelled_by")?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

/// Targets per INSERT statement (7 binds each).
const TARGETS_PER_INSERT: usize = 100;

impl Store {
    /// Stores a rollout (state `running`) and its targets (state `pending`, in order) in one
    /// transaction.
    pub async fn create_rollout(&self, r: &NewRollout) -> Result<RolloutRecord> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO bulk_operations ({COLS}) VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, NULL, NULL, NULL, $13, $14, NULL)"
        ))
        .bind(&r.id)
        .bind(&r.kind)
        .bind(r.summary.to_string())
        .bind(&r.spec_enc)
        .bind(r.max_parallel)
        .bind(r.max_failures)
        .bind(r.targets.len() as i64)
        .bind(&r.created_by)
        .bind(r.created_role.as_str())
        .bind(&r.token_id)
        .bind(&r.source_ip)
        .bind(&r.runner)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (chunk_no, chunk) in r.targets.chunks(TARGETS_PER_INSERT).enumerate() {
            let mut sql = String::from(
                "INSERT INTO bulk_targets (bulk_id, position, host_id, host_name, state, command_ids, updated_at) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 5;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, 'pending', '[]', ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5
                ));
            }
            let mut q = sqlx::query(&sql);
            for (i, (host_id, name)) in chunk.iter().enumerate() {
                q = q
                    .bind(&r.id)
                    .bind((chunk_no * TARGETS_PER_INSERT + i) as i64)
                    .bind(host_id)
                    .bind(name)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.get_rollout(&r.id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn get_rollout(&self, id: &str) -> Result<Option<RolloutRecord>> {
        let r = sqlx::query(&format!("SELECT {COLS} FROM bulk_operations WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// Rollouts, newest first: at most `limit` created before `before` (created at, id).
    pub async fn list_rollouts(
        &self,
        kind: &str,
        before: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<RolloutRecord>> {
        let limit = limit.clamp(1, 1000);
        let rows = match before {
            Some((at, id)) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM bulk_operations WHERE kind = $1 AND (created_at < $2 OR (created_at = $3 AND id < $4)) \
                     ORDER BY created_at DESC, id DESC LIMIT $5"
                ))
                .bind(kind)
                .bind(at)
                .bind(at)
                .bind(id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM bulk_operations WHERE kind = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(kind)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(row).collect()
    }

    /// Running rollouts that `runner` drives (or that no runner claimed), which it now
    /// claims.
    pub async fn claim_running_rollouts(&self, runner: &str) -> Result<Vec<RolloutRecord>> {
        sqlx::query(
            "UPDATE bulk_operations SET runner = $1 WHERE state = 'running' AND runner IS NULL",
        )
        .bind(runner)
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM bulk_operations WHERE state = 'running' AND runner = $1 ORDER BY created_at"
        ))
        .bind(runner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }

    /// Records that `by` asked to cancel a running rollout. Returns false when it is not
    /// running (or a cancel was already asked for).
    pub async fn request_rollout_cancel(&self, id: &str, by: &str) -> Result<bool> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE bulk_operations SET cancel_requested_at = $1, cancelled_by = $2, updated_at = $3 \
             WHERE id = $4 AND state = 'running' AND cancel_requested_at IS NULL",
        )
        .bind(now)
        .bind(by)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The final state of a running rollout. Returns whether it changed.
    pub async fn finish_rollout(
        &self,
        id: &str,
        state: RolloutState,
        reason: Option<&str>,
    ) -> Result<bool> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE bulk_operations SET state = $1, reason = $2, finished_at = $3, updated_at = $4 \
             WHERE id = $5 AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Bounded retention: finished rollouts (with their targets) older than `max_age_ms`.
    pub async fn prune_rollouts(&self, max_age_ms: i64) -> Result<u64> {
        let before = now_ms() - max_age_ms;
        sqlx::query(
            "DELETE FROM bulk_targets WHERE bulk_id IN \
             (SELECT id FROM bulk_operations WHERE state <> 'running' AND finished_at < $1)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        let r = sqlx::query(
            "DELETE FROM bulk_operations WHERE state <> 'running' AND finished_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}
