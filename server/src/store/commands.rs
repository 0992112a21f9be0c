//! The `commands` table: the record of every operation and the queue of commands for agents
//! that are offline.
//!
//! States: `queued` → `sent` → `succeeded` | `failed` | `expired`. A queued row waits for its
//! host's agent; a `sent` row whose link dropped is sent again with the same idempotency key
//! (the agent answers a repeated key from its memory instead of running it twice).

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::sync::atomic::{AtomicI64, Ordering};

use super::{
    journal, now_ms, parse_json, Bind, CommandRecord, NewQueuedCommand, Result, Store, StoreError,
};

/// Unix microseconds, strictly increasing within this process: the creation order of
/// commands (and still increasing across restarts, as the clock moves on).
pub fn next_seq() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let mut cur = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(cur + 1);
        match LAST.compare_exchange(cur, next, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(v) => cur = v,
        }
    }
}

const COLS: &str = "id, host_id, agent_id, operation, requested_by, status, error_code, created_at, completed_at, \
    duration_ms, state, seq, queued, agent_ref, params_enc, timeout_secs, expires_at, idempotency_key, client_key, \
    result, attempts, sent_at, updated_at";

fn row(r: &AnyRow) -> Result<CommandRecord> {
    Ok(CommandRecord {
        id: r.try_get("id")?,
        host_id: r.try_get("host_id")?,
        agent_id: r.try_get("agent_id")?,
        operation: r.try_get("operation")?,
        requested_by: r.try_get("requested_by")?,
        status: r.try_get("status")?,
        error_code: r.try_get("error_code")?,
        created_at: r.try_get("created_at")?,
        completed_at: r.try_get("completed_at")?,
        duration_ms: r.try_get("duration_ms")?,
        state: r.try_get("state")?,
        seq: r.try_get("seq")?,
        queued: r.try_get::<i64, _>("queued")? != 0,
        agent_ref: r.try_get("agent_ref")?,
        params_enc: r.try_get("params_enc")?,
        timeout_secs: r.try_get("timeout_secs")?,
        expires_at: r.try_get("expires_at")?,
        idempotency_key: r.try_get("idempotency_key")?,
        client_key: r.try_get::<i64, _>("client_key")? != 0,
        result: parse_json(r.try_get("result")?),
        attempts: r.try_get("attempts")?,
        sent_at: r.try_get("sent_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// A final state's legacy `status`.
pub(crate) fn legacy_status(state: &str) -> &'static str {
    match state {
        "succeeded" => "success",
        "queued" | "sent" => "pending",
        _ => "error",
    }
}

/// A command's final state, error code and stored result document.
pub(crate) fn outcome_of(
    result: &std::result::Result<Value, protocol::ErrorBody>,
) -> (&'static str, Option<&'static str>, Value) {
    match result {
        Ok(data) => (
            "succeeded",
            None,
            serde_json::json!({ "status": "success", "data": data }),
        ),
        Err(e) => (
            "failed",
            Some(e.code.as_str()),
            serde_json::json!({ "status": "error", "error": e }),
        ),
    }
}

/// The stored result of a sent command that will get no answer.
pub(crate) fn outcome_unknown_body(message: &str) -> Value {
    serde_json::json!({ "status": "error", "error": { "code": "outcome_unknown", "message": message } })
}

/// Stores a command's outcome: binds state, status, error code, result, completed at,
/// duration, updated at, id. Only an unfinished command (or one whose outcome was unknown)
/// changes.
pub(crate) fn finish_sql() -> &'static str {
    "UPDATE commands SET state = $1, status = $2, error_code = $3, result = $4, completed_at = $5, \
     duration_ms = COALESCE($6, duration_ms), updated_at = $7 \
     WHERE id = $8 AND (state IN ('queued', 'sent') OR error_code = 'outcome_unknown')"
}

impl Store {
    /// Records a direct command (no queue, no client key) that is being sent to `sent_to`
    /// (an agent's ref, or `direct`), through the journal: the caller does not wait for the
    /// database (see `journal.rs`).
    pub fn journal_command_sent(&self, c: NewQueuedCommand, sent_to: &str) {
        let e = journal::Entry::Started {
            cmd: Box::new(c),
            sent_to: sent_to.to_string(),
            at: now_ms(),
        };
        if !self.journal.push(e) {
            tracing::error!("the command journal is full or stopped: a command's record is lost");
        }
    }

    /// The outcome of a command recorded with [`Store::journal_command_sent`].
    pub fn journal_command_finished(
        &self,
        id: &str,
        result: &std::result::Result<Value, protocol::ErrorBody>,
        duration_ms: Option<i64>,
    ) {
        let e = match result {
            Err(e) if e.code == protocol::ErrorCode::OutcomeUnknown => {
                journal::outcome_unknown(id, &e.message)
            }
            r => journal::finished(id, r, duration_ms),
        };
        if !self.journal.push(e) {
            tracing::error!(
                command = id,
                "the command journal is full or stopped: a command's outcome is not recorded"
            );
        }
    }

    /// Waits until the journal wrote everything queued so far (reads of commands call it).
    pub async fn flush_journal(&self) {
        self.journal.flush().await
    }

    /// Records a new command. A second command with the same idempotency key on the same host
    /// is a [`StoreError::Conflict`].
    pub async fn create_command(&self, c: &NewQueuedCommand) -> Result<CommandRecord> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO commands (id, host_id, agent_id, operation, requested_by, status, created_at, state, seq, \
             queued, agent_ref, params_enc, timeout_secs, expires_at, idempotency_key, client_key, attempts, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, 'queued', $7, $8, $9, $10, $11, $12, $13, $14, 0, $15)",
        )
        .bind(&c.id)
        .bind(&c.host_id)
        .bind(&c.agent_id)
        .bind(&c.operation)
        .bind(&c.requested_by)
        .bind(now)
        .bind(next_seq())
        .bind(c.queued as i64)
        .bind(&c.agent_ref)
        .bind(&c.params_enc)
        .bind(c.timeout_secs)
        .bind(c.expires_at)
        .bind(&c.idempotency_key)
        .bind(c.client_key as i64)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| super::map_unique(e, "a command with this idempotency key"))?;
        self.get_command(&c.id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn get_command(&self, id: &str) -> Result<Option<CommandRecord>> {
        self.flush_journal().await;
        let sql = format!("SELECT {COLS} FROM commands WHERE id = $1");
        let r = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// The command of `host_id` with the idempotency key `key`.
    pub async fn find_command_by_key(
        &self,
        host_id: &str,
        key: &str,
    ) -> Result<Option<CommandRecord>> {
        self.flush_journal().await;
        let sql =
            format!("SELECT {COLS} FROM commands WHERE host_id = $1 AND idempotency_key = $2");
        let r = sqlx::query(&sql)
            .bind(host_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// Commands of a host, newest first, optionally in one state.
    pub async fn list_host_commands(
        &self,
        host_id: &str,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CommandRecord>> {
        self.flush_journal().await;
        let mut sql = format!("SELECT {COLS} FROM commands WHERE host_id = $1");
        let mut binds = vec![Bind::Text(host_id.to_string())];
        if let Some(s) = state {
            binds.push(Bind::Text(s.to_string()));
            sql.push_str(&format!(" AND state = ${}", binds.len()));
        }
        binds.push(Bind::Int(limit.clamp(1, 1000)));
        sql.push_str(&format!(
            " ORDER BY created_at DESC, seq DESC LIMIT ${}",
            binds.len()
        ));
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

    /// Queued commands of `host_id` still to deliver (`queued`, or `sent` without an answer),
    /// in creation order.
    pub async fn pending_commands(&self, host_id: &str, limit: i64) -> Result<Vec<CommandRecord>> {
        let sql = format!(
            "SELECT {COLS} FROM commands WHERE host_id = $1 AND queued = 1 AND state IN ('queued', 'sent') \
             ORDER BY seq LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(host_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row).collect()
    }

    /// The command went out (again) on the agent `agent_ref`.
    pub async fn mark_command_sent(&self, id: &str, agent_ref: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE commands SET state = 'sent', agent_ref = $1, attempts = attempts + 1, sent_at = $2, updated_at = $3 \
             WHERE id = $4 AND state IN ('queued', 'sent')",
        )
        .bind(agent_ref)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores the outcome of a command: `succeeded` or `failed` with its result. Only an
    /// unfinished command (or one whose outcome was unknown) changes. Returns whether it did.
    pub async fn complete_command(
        &self,
        id: &str,
        result: &std::result::Result<Value, protocol::ErrorBody>,
        duration_ms: Option<i64>,
    ) -> Result<bool> {
        let (state, code, body) = outcome_of(result);
        self.finish_with(id, state, code, &body, duration_ms).await
    }

    async fn finish_with(
        &self,
        id: &str,
        state: &str,
        code: Option<&str>,
        body: &Value,
        duration_ms: Option<i64>,
    ) -> Result<bool> {
        let now = now_ms();
        let r = sqlx::query(finish_sql())
            .bind(state)
            .bind(legacy_status(state))
            .bind(code)
            .bind(body.to_string())
            .bind(now)
            .bind(duration_ms)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A queued command whose expiry passed before it was sent.
    pub async fn expire_command(&self, id: &str) -> Result<bool> {
        let body = serde_json::json!({ "status": "error", "error": {
            "code": "timeout", "message": "the command expired before the agent could run it" } });
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE commands SET state = 'expired', status = 'error', error_code = 'timeout', result = $1, \
             completed_at = $2, updated_at = $3 WHERE id = $4 AND state = 'queued'",
        )
        .bind(body.to_string())
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A sent command that will get no answer any more: `failed` with `outcome_unknown`.
    pub async fn command_outcome_unknown(&self, id: &str, message: &str) -> Result<bool> {
        let body = outcome_unknown_body(message);
        self.finish_with(id, "failed", Some("outcome_unknown"), &body, None)
            .await
    }

    /// Expires due commands: `queued` ones become `expired`, `sent` ones `failed` with
    /// `outcome_unknown`. Returns how many changed.
    pub async fn expire_due_commands(&self) -> Result<u64> {
        self.flush_journal().await;
        let due = sqlx::query(
            "SELECT id, state FROM commands WHERE state IN ('queued', 'sent') AND expires_at < $1 LIMIT 1000",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        let mut n = 0;
        for r in due {
            let id: String = r.try_get("id")?;
            let state: String = r.try_get("state")?;
            let changed = if state == "queued" {
                self.expire_command(&id).await?
            } else {
                self.command_outcome_unknown(
                    &id,
                    "the command expired after it was sent and no answer arrived; it may or may not have run",
                )
                .await?
            };
            n += changed as u64;
        }
        Ok(n)
    }

    /// At start: unqueued commands that were in flight when the server stopped have no
    /// requester any more: `failed` with `outcome_unknown`.
    pub async fn fail_orphaned_commands(&self) -> Result<u64> {
        let body = serde_json::json!({ "status": "error", "error": {
            "code": "outcome_unknown", "message": "the server restarted while the command was in flight" } });
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE commands SET state = 'failed', status = 'error', error_code = 'outcome_unknown', result = $1, \
             completed_at = $2, updated_at = $3 WHERE queued = 0 AND state IN ('queued', 'sent')",
        )
        .bind(body.to_string())
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Bounded retention: finished commands older than `max_age_ms` go.
    pub async fn prune_commands(&self, max_age_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM commands WHERE completed_at IS NOT NULL AND completed_at < $1 \
             AND (state IS NULL OR state NOT IN ('queued', 'sent'))",
        )
        .bind(now_ms() - max_age_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}
