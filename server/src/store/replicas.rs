//! The `replicas` table: one row per replica id, with its advertise URL, region, epoch and
//! heartbeat.
//!
//! Owns: its SQL. A start of a replica id bumps its epoch ([`Store::replica_started`]); a
//! heartbeat counts only in the current epoch. Must not: decide what liveness means beyond
//! the one rule written here (alive while `heartbeat_at + 3 * interval` is in the future).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, Result, Store};

/// Heartbeat intervals a replica may miss before it counts as gone.
pub const MISSED_HEARTBEATS: i64 = 3;

/// One replica as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub id: String,
    pub advertise_url: String,
    pub region: Option<String>,
    pub epoch: i64,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub heartbeat_interval_ms: i64,
}

impl ReplicaRecord {
    /// Whether the replica heartbeat recently enough at `now` (Unix ms).
    pub fn alive_at(&self, now: i64) -> bool {
        self.heartbeat_at + MISSED_HEARTBEATS * self.heartbeat_interval_ms > now
    }

    fn from_row(r: &AnyRow) -> Result<ReplicaRecord> {
        Ok(ReplicaRecord {
            id: r.try_get("id")?,
            advertise_url: r.try_get("advertise_url")?,
            region: r.try_get("region")?,
            epoch: r.try_get("epoch")?,
            started_at: r.try_get("started_at")?,
            heartbeat_at: r.try_get("heartbeat_at")?,
            heartbeat_interval_ms: r.try_get("heartbeat_interval_ms")?,
        })
    }
}

const COLS: &str =
    "id, advertise_url, region, epoch, started_at, heartbeat_at, heartbeat_interval_ms";

impl Store {
    /// A replica id starts: its row is written (or rewritten) with the next epoch, which is
    /// returned. Claims of earlier epochs no longer count.
    pub async fn replica_started(
        &self,
        id: &str,
        advertise_url: &str,
        region: Option<&str>,
        interval_ms: i64,
    ) -> Result<i64> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO replicas (id, advertise_url, region, epoch, started_at, heartbeat_at, heartbeat_interval_ms) \
             VALUES ($1, $2, $3, 1, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET advertise_url = excluded.advertise_url, region = excluded.region, \
             epoch = replicas.epoch + 1, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
             heartbeat_interval_ms = excluded.heartbeat_interval_ms \
             RETURNING epoch",
        )
        .bind(id)
        .bind(advertise_url)
        .bind(region)
        .bind(now)
        .bind(now)
        .bind(interval_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("epoch")?)
    }

    /// A heartbeat of replica `id` in `epoch`. False when the epoch has moved on (another
    /// process started with the same id) or the row is gone.
    pub async fn replica_heartbeat(&self, id: &str, epoch: i64) -> Result<bool> {
        let r = sqlx::query("UPDATE replicas SET heartbeat_at = $1 WHERE id = $2 AND epoch = $3")
            .bind(now_ms())
            .bind(id)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A replica stopped cleanly in `epoch`: it counts as gone at once.
    pub async fn replica_stopped(&self, id: &str, epoch: i64) -> Result<()> {
        sqlx::query("UPDATE replicas SET heartbeat_at = 0 WHERE id = $1 AND epoch = $2")
            .bind(id)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every replica row, by id.
    pub async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        let sql = format!("SELECT {COLS} FROM replicas ORDER BY id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(ReplicaRecord::from_row).collect()
    }
}
