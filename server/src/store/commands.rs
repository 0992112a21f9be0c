//! The `commands` table: the record of every operation, the queue of commands for agents
//! that are offline, and the vocabulary of a command's state ([`CommandState`]).
//!
//! States: `queued` → `sent` → `succeeded` | `failed` | `expired`, and `queued` →
//! `cancelled` (a queued command withdrawn before it was sent). A queued row waits for its
//! host's agent; a `sent` row whose link dropped is sent again with the same idempotency key
//! (the agent answers a repeated key from its memory instead of running it twice).
//!
//! Owns: the SQL of the table and the state names as stored, with the translation from the
//! legacy `status` column (`pending`, `success`, `error`) in [`CommandState`] only. Must not:
//! decide when a command changes state (the `commands` module does).

use protocol::ErrorBody;
use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::sync::atomic::{AtomicI64, Ordering};

use super::{map_unique, now_ms, parse_json, Bind, Result, Store, StoreError};
use crate::reply::{self, Outcome};

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Recorded, waiting to be sent (for its agent, when queued).
    Queued,
    /// Sent to the host; no answer yet.
    Sent,
    /// Final: the host answered with data.
    Succeeded,
    /// Final: an error (the host's, a timeout, or `outcome_unknown`).
    Failed,
    /// Final: a queued command whose expiry passed before it was sent.
    Expired,
    /// Final: a queued command withdrawn before it was sent (its rollout stopped).
    Cancelled,
}

impl CommandState {
    pub const ALL: [CommandState; 6] = [
        CommandState::Queued,
        CommandState::Sent,
        CommandState::Succeeded,
        CommandState::Failed,
        CommandState::Expired,
        CommandState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Sent => "sent",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::Expired => "expired",
            CommandState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<CommandState> {
        CommandState::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the command is over (nothing changes it any more, except a late real answer
    /// replacing `outcome_unknown`).
    pub fn is_final(self) -> bool {
        !matches!(self, CommandState::Queued | CommandState::Sent)
    }

    /// The final state of a command that came to `outcome`.
    pub fn of(outcome: &Outcome) -> CommandState {
        match outcome {
            Ok(_) => CommandState::Succeeded,
            Err(_) => CommandState::Failed,
        }
    }

    /// The legacy `status` column written beside the state, for older clients.
    fn legacy_status(self) -> &'static str {
        match self {
            CommandState::Succeeded => "success",
            CommandState::Queued | CommandState::Sent => "pending",
            CommandState::Failed | CommandState::Expired | CommandState::Cancelled => "error",
        }
    }

    /// The state of a row written before states existed, from its legacy `status`.
    fn from_legacy_status(status: &str) -> CommandState {
        match status {
            "success" => CommandState::Succeeded,
            "pending" => CommandState::Sent,
            _ => CommandState::Failed,
        }
    }
}

impl std::fmt::Display for CommandState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SQL: the command has not finished.
const OPEN: &str = "state IN ('queued', 'sent')";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRecord {
    pub id: String,
    pub host_id: Option<String>,
    pub agent_id: Option<String>,
    pub operation: String,
    pub requested_by: Option<String>,
    /// Legacy: `pending`, `success` or `error`.
    pub status: String,
    pub error_code: Option<String>,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub duration_ms: Option<i64>,
    /// Rows older than the queue have no state column: theirs comes from the legacy status.
    pub state: CommandState,
    /// Creation order.
    pub seq: Option<i64>,
    /// Sent with `"queue": true`: kept until delivered or expired.
    pub queued: bool,
    /// `docker_agents.id` of the agent it was (or will be) sent to, or `direct`.
    pub agent_ref: Option<String>,
    /// The params, encrypted at rest. Never serialised.
    #[serde(skip)]
    pub params_enc: Option<String>,
    pub timeout_secs: Option<i64>,
    pub expires_at: Option<i64>,
    pub idempotency_key: Option<String>,
    /// Whether the client chose the idempotency key.
    pub client_key: bool,
    /// The outcome's document (see `crate::reply`) once finished, else null.
    pub result: Value,
    pub attempts: i64,
    pub sent_at: Option<i64>,
    pub updated_at: Option<i64>,
    /// What started the command besides its requester, e.g. `bulk:ID` (null for a plain
    /// request).
    pub origin: Option<String>,
}

impl CommandRecord {
    /// The stored outcome, once finished.
    pub fn outcome(&self) -> Option<Outcome> {
        reply::decode(&self.result)
    }
}

/// A command as it is recorded: state `queued` (or `sent` when the journal records it as it
/// goes out).
#[derive(Clone, PartialEq)]
pub struct NewCommand {
    pub id: String,
    pub host_id: String,
    /// The external agent id (shown in the API).
    pub agent_id: Option<String>,
    pub agent_ref: Option<String>,
    pub operation: String,
    pub params_enc: Option<String>,
    pub requested_by: String,
    pub queued: bool,
    pub timeout_secs: i64,
    pub expires_at: i64,
    pub idempotency_key: String,
    pub client_key: bool,
    pub origin: Option<String>,
}

impl std::fmt::Debug for NewCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCommand")
            .field("id", &self.id)
            .field("host_id", &self.host_id)
            .field("operation", &self.operation)
            .field("queued", &self.queued)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// An open command whose expiry passed.
#[derive(Debug, Clone, PartialEq)]
pub struct DueCommand {
    pub id: String,
    pub host_id: Option<String>,
    pub state: CommandState,
    pub origin: Option<String>,
}

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
    result, attempts, sent_at, updated_at, origin";

fn row(r: &AnyRow) -> Result<CommandRecord> {
    let status: String = r.try_get("status")?;
    let state: Option<String> = r.try_get("state")?;
    let state = state
        .as_deref()
        .and_then(CommandState::parse)
        .unwrap_or_else(|| CommandState::from_legacy_status(&status));
    Ok(CommandRecord {
        id: r.try_get("id")?,
        host_id: r.try_get("host_id")?,
        agent_id: r.try_get("agent_id")?,
        operation: r.try_get("operation")?,
        requested_by: r.try_get("requested_by")?,
        status,
        error_code: r.try_get("error_code")?,
        created_at: r.try_get("created_at")?,
        completed_at: r.try_get("completed_at")?,
        duration_ms: r.try_get("duration_ms")?,
        state,
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
        origin: r.try_get("origin")?,
    })
}

/// A final record, bound in the order of [`finish_sql`]: state, status, error code, result
/// document, completed at, duration, updated at, id.
pub(super) struct Finish {
    pub(super) state: CommandState,
    pub(super) status: &'static str,
    pub(super) code: Option<&'static str>,
    pub(super) doc: String,
    pub(super) duration_ms: Option<i64>,
}

impl Finish {
    pub(super) fn new(state: CommandState, outcome: &Outcome, duration_ms: Option<i64>) -> Finish {
        Finish {
            state,
            status: state.legacy_status(),
            code: outcome.as_ref().err().map(|e| e.code.as_str()),
            doc: reply::encode_text(outcome),
            duration_ms,
        }
    }

    /// The UPDATE that stores it. Only an unfinished command changes (or, except for an
    /// expiry or a cancel, one whose outcome was unknown: a late real answer replaces that);
    /// an expiry or a cancel applies only to a command that was never sent.
    /// Whether this finish may be written with its command's start as one row: not an
    /// expiry or a cancel, which apply only to a queued command, never to a journaled one.
    pub(super) fn joins_its_start(&self) -> bool {
        !matches!(self.state, CommandState::Expired | CommandState::Cancelled)
    }

    pub(super) fn sql(&self) -> &'static str {
        if matches!(self.state, CommandState::Expired | CommandState::Cancelled) {
            "UPDATE commands SET state = $1, status = $2, error_code = $3, result = $4, completed_at = $5, \
             duration_ms = COALESCE($6, duration_ms), updated_at = $7 WHERE id = $8 AND state = 'queued'"
        } else {
            "UPDATE commands SET state = $1, status = $2, error_code = $3, result = $4, completed_at = $5, \
             duration_ms = COALESCE($6, duration_ms), updated_at = $7 \
             WHERE id = $8 AND (state IN ('queued', 'sent') OR error_code = 'outcome_unknown')"
        }
    }
}

/// The INSERT of a command going out at once (state `sent`, one attempt), as the journal
/// writes it: binds id, host, agent id, operation, requester, created at, seq, agent ref,
/// timeout, expiry, key, client key, sent at, updated at, origin.
pub(super) const INSERT_SENT_SQL: &str =
    "INSERT INTO commands (id, host_id, agent_id, operation, requested_by, status, created_at, state, seq, \
     queued, agent_ref, params_enc, timeout_secs, expires_at, idempotency_key, client_key, attempts, \
     sent_at, updated_at, origin) \
     VALUES ($1, $2, $3, $4, $5, 'pending', $6, 'sent', $7, 0, $8, NULL, $9, $10, $11, $12, 1, $13, $14, $15)";

/// [`INSERT_SENT_SQL`] with the command's final record already in (its start and finish were
/// journaled in the same batch): binds the same fields in the same order (updated at being
/// the finish's time), then the final status, state, error code, result, completed at and
/// duration.
pub(super) const INSERT_FINISHED_SQL: &str =
    "INSERT INTO commands (id, host_id, agent_id, operation, requested_by, created_at, seq, \
     queued, agent_ref, params_enc, timeout_secs, expires_at, idempotency_key, client_key, attempts, \
     sent_at, updated_at, origin, status, state, error_code, result, completed_at, duration_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, NULL, $9, $10, $11, $12, 1, $13, $14, $15, \
     $16, $17, $18, $19, $20, $21)";

impl Store {
    /// Records a new command (state `queued`). A second command with the same idempotency
    /// key on the same host is a [`StoreError::Conflict`].
    pub async fn create_command(&self, c: &NewCommand) -> Result<CommandRecord> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO commands (id, host_id, agent_id, operation, requested_by, status, created_at, state, seq, \
             queued, agent_ref, params_enc, timeout_secs, expires_at, idempotency_key, client_key, attempts, updated_at, \
             origin) VALUES ($1, $2, $3, $4, $5, 'pending', $6, 'queued', $7, $8, $9, $10, $11, $12, $13, $14, 0, $15, $16)",
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
        .bind(&c.origin)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "a command with this idempotency key"))?;
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
        state: Option<CommandState>,
        limit: i64,
    ) -> Result<Vec<CommandRecord>> {
        self.flush_journal().await;
        let mut sql = format!("SELECT {COLS} FROM commands WHERE host_id = $1");
        let mut binds = vec![Bind::Text(host_id.to_string())];
        if let Some(s) = state {
            binds.push(Bind::Text(s.as_str().to_string()));
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

    /// The commands started by `origin` (e.g. one bulk run), in creation order.
    pub async fn list_commands_by_origin(
        &self,
        origin: &str,
        limit: i64,
    ) -> Result<Vec<CommandRecord>> {
        self.flush_journal().await;
        let sql = format!("SELECT {COLS} FROM commands WHERE origin = $1 ORDER BY seq LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(origin)
            .bind(limit.clamp(1, 100_000))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row).collect()
    }

    /// Queued commands of `host_id` still to deliver (`queued`, or `sent` without an answer),
    /// in creation order.
    pub async fn pending_commands(&self, host_id: &str, limit: i64) -> Result<Vec<CommandRecord>> {
        let sql = format!(
            "SELECT {COLS} FROM commands WHERE host_id = $1 AND queued = 1 AND {OPEN} ORDER BY seq LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(host_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row).collect()
    }

    /// The command went out (again) to `sent_to` (an agent's ref, or `direct`). Returns
    /// false when it had finished meanwhile (expired or cancelled): it must not go out.
    pub async fn mark_command_sent(&self, id: &str, sent_to: &str) -> Result<bool> {
        let now = now_ms();
        let sql = format!(
            "UPDATE commands SET state = 'sent', agent_ref = $1, attempts = attempts + 1, sent_at = $2, \
             updated_at = $3 WHERE id = $4 AND {OPEN}"
        );
        let r = sqlx::query(&sql)
            .bind(sent_to)
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Stores a command's final `state` and `outcome`. Only an unfinished command changes (or
    /// one whose outcome was unknown, unless this is an expiry); an expiry applies only to a
    /// command still queued. Returns whether the row changed.
    pub async fn finish_command(
        &self,
        id: &str,
        state: CommandState,
        outcome: &Outcome,
        duration_ms: Option<i64>,
    ) -> Result<bool> {
        let f = Finish::new(state, outcome, duration_ms);
        let now = now_ms();
        let r = sqlx::query(f.sql())
            .bind(f.state.as_str())
            .bind(f.status)
            .bind(f.code)
            .bind(&f.doc)
            .bind(now)
            .bind(f.duration_ms)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Open commands whose expiry passed (at most `limit`).
    pub async fn due_commands(&self, limit: i64) -> Result<Vec<DueCommand>> {
        self.flush_journal().await;
        let sql = format!(
            "SELECT id, host_id, state, origin FROM commands WHERE {OPEN} AND expires_at < $1 LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(now_ms())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state")?;
                Ok(DueCommand {
                    id: r.try_get("id")?,
                    host_id: r.try_get("host_id")?,
                    state: CommandState::parse(&state).unwrap_or(CommandState::Sent),
                    origin: r.try_get("origin")?,
                })
            })
            .collect()
    }

    /// At start: unqueued commands that were in flight when the server stopped have no
    /// requester any more: `failed` with `error`.
    pub async fn fail_orphaned_commands(&self, error: &ErrorBody) -> Result<u64> {
        let f = Finish::new(CommandState::Failed, &Err(error.clone()), None);
        let now = now_ms();
        let sql = format!(
            "UPDATE commands SET state = $1, status = $2, error_code = $3, result = $4, completed_at = $5, \
             updated_at = $6 WHERE queued = 0 AND {OPEN}"
        );
        let r = sqlx::query(&sql)
            .bind(f.state.as_str())
            .bind(f.status)
            .bind(f.code)
            .bind(&f.doc)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Bounded retention: finished commands older than `max_age_ms` go.
    pub async fn prune_commands(&self, max_age_ms: i64) -> Result<u64> {
        let sql = format!(
            "DELETE FROM commands WHERE completed_at IS NOT NULL AND completed_at < $1 \
             AND (state IS NULL OR NOT {OPEN})"
        );
        let r = sqlx::query(&sql)
            .bind(now_ms() - max_age_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}
