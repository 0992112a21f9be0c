//! The `bulk_targets` table: one row per host of a rollout, in rollout order, and the
//! vocabulary of a target's state ([`TargetState`]).
//!
//! States: `pending` → `running` ⇄ `queued` → `succeeded` | `failed` | `skipped` |
//! `cancelled`. A `queued` target waits for its host's agent with a command in the queue.
//!
//! Owns: the SQL of the table. Must not: decide when a target changes state (the `rollouts`
//! module does).

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::BTreeMap;

use super::{now_ms, parse_json, Bind, Result, Store};

/// Where one host of a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Not started.
    Pending,
    /// Started: a command of the host runs (or is being submitted).
    Running,
    /// A command of the host waits in the queue for its agent.
    Queued,
    /// Final: every step succeeded.
    Succeeded,
    /// Final: a step failed (or the host could not take it).
    Failed,
    /// Final: the host was offline and the rollout does not queue.
    Skipped,
    /// Final: the rollout stopped before the host started (or while its command was still
    /// queued, never sent).
    Cancelled,
}

impl TargetState {
    pub const ALL: [TargetState; 7] = [
        TargetState::Pending,
        TargetState::Running,
        TargetState::Queued,
        TargetState::Succeeded,
        TargetState::Failed,
        TargetState::Skipped,
        TargetState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Pending => "pending",
            TargetState::Running => "running",
            TargetState::Queued => "queued",
            TargetState::Succeeded => "succeeded",
            TargetState::Failed => "failed",
            TargetState::Skipped => "skipped",
            TargetState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TargetState> {
        TargetState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            TargetState::Pending | TargetState::Running | TargetState::Queued
        )
    }
}

impl std::fmt::Display for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host of a rollout, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRecord {
    pub bulk_id: String,
    pub position: i64,
    pub host_id: String,
    pub host_name: String,
    pub state: TargetState,
    /// One command id per step started, in step order.
    pub command_ids: Vec<String>,
    /// The outcome document of the host's last command (`crate::reply`), once final.
    pub result: Value,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

/// A change to a target: its state, and what else is known now.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetUpdate<'a> {
    pub state: TargetState,
    pub command_ids: &'a [String],
    /// The outcome document, for a final state.
    pub result: Option<&'a Value>,
}

const COLS: &str =
    "bulk_id, position, host_id, host_name, state, command_ids, result, started_at, finished_at, updated_at";

fn row(r: &AnyRow) -> Result<TargetRecord> {
    let state: String = r.try_get("state")?;
    let ids: String = r.try_get("command_ids")?;
    Ok(TargetRecord {
        bulk_id: r.try_get("bulk_id")?,
        position: r.try_get("position")?,
        host_id: r.try_get("host_id")?,
        host_name: r.try_get("host_name")?,
        state: TargetState::parse(&state).unwrap_or(TargetState::Failed),
        command_ids: serde_json::from_str(&ids).unwrap_or_default(),
        result: parse_json(r.try_get("result")?),
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// Targets of rollout `id` after `after` (a position), in order, at most `limit`,
    /// optionally only those in `states`.
    pub async fn list_targets(
        &self,
        id: &str,
        states: &[TargetState],
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<TargetRecord>> {
        let mut sql = format!("SELECT {COLS} FROM bulk_targets WHERE bulk_id = $1");
        let mut binds = vec![Bind::Text(id.to_string())];
        if let Some(a) = after {
            binds.push(Bind::Int(a));
            sql.push_str(&format!(" AND position > ${}", binds.len()));
        }
        if !states.is_empty() {
            let mut marks = Vec::new();
            for s in states {
                binds.push(Bind::Text(s.as_str().to_string()));
                marks.push(format!("${}", binds.len()));
            }
            sql.push_str(&format!(" AND state IN ({})", marks.join(", ")));
        }
        binds.push(Bind::Int(limit.clamp(1, 10_000)));
        sql.push_str(&format!(" ORDER BY position LIMIT ${}", binds.len()));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(row).collect()
    }

    /// How many targets of each rollout in `ids` are in each state.
    pub async fn target_counts(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<TargetState, i64>>> {
        let mut out: BTreeMap<String, BTreeMap<TargetState, i64>> = BTreeMap::new();
        for chunk in ids.chunks(100) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT bulk_id, state, COUNT(*) AS n FROM bulk_targets WHERE bulk_id IN ({}) GROUP BY bulk_id, state",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                let state: String = r.try_get("state")?;
                let n: i64 = r.try_get("n")?;
                if let Some(s) = TargetState::parse(&state) {
                    *out.entry(r.try_get("bulk_id")?)
                        .or_default()
                        .entry(s)
                        .or_default() += n;
                }
            }
        }
        Ok(out)
    }

    /// Writes a target's state, command ids and (when final) result. A target that is final
    /// already does not change; returns whether it changed.
    pub async fn update_target(
        &self,
        id: &str,
        position: i64,
        u: &TargetUpdate<'_>,
    ) -> Result<bool> {
        let now = now_ms();
        let ids = serde_json::to_string(u.command_ids).unwrap_or_else(|_| "[]".into());
        let started = (u.state != TargetState::Pending).then_some(now);
        let finished = u.state.is_final().then_some(now);
        let r = sqlx::query(
            "UPDATE bulk_targets SET state = $1, command_ids = $2, result = COALESCE($3, result), \
             started_at = COALESCE(started_at, $4), finished_at = $5, updated_at = $6 \
             WHERE bulk_id = $7 AND position = $8 AND state IN ('pending', 'running', 'queued')",
        )
        .bind(u.state.as_str())
        .bind(ids)
        .bind(u.result.map(Value::to_string))
        .bind(started)
        .bind(finished)
        .bind(now)
        .bind(id)
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Cancels the targets of rollout `id` that have not started; returns their host ids.
    pub async fn cancel_pending_targets(&self, id: &str) -> Result<Vec<String>> {
        let hosts: Vec<String> = sqlx::query(
            "SELECT host_id FROM bulk_targets WHERE bulk_id = $1 AND state = 'pending' ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get("host_id"))
        .collect::<Result<_, _>>()?;
        let now = now_ms();
        sqlx::query(
            "UPDATE bulk_targets SET state = 'cancelled', finished_at = $1, updated_at = $2 \
             WHERE bulk_id = $3 AND state = 'pending'",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(hosts)
    }
}
