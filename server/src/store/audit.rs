//! The `audit_log` table and its `audit_head` row: the tamper-evident audit log. Every entry
//! stores the SHA-256 of the previous entry and its own hash over a canonical serialisation
//! that includes that previous hash. The one row of `audit_head` holds the newest entry's
//! sequence number and hash.
//!
//! Appends are serialised twice: a process-wide async mutex, and in the database by updating
//! the `audit_head` row first inside the transaction (a row lock on PostgreSQL, the write lock
//! on SQLite), so two server processes on one database cannot fork the chain either.
//!
//! Appends are group-committed: a caller queues its entry, and whoever holds the writer lock
//! writes every queued entry in one transaction. Each caller returns only once its entry is
//! committed, but under load one transaction carries many entries instead of one each.
//!
//! What it proves: an entry changed or deleted with SQL (without recomputing every later hash)
//! is found by [`Store::verify_audit_chain`]. Whoever can rewrite the whole table can also
//! recompute the chain; anchoring the head hash elsewhere (it is printed by `audit verify`)
//! detects that too.
//!
//! Owns: its SQL, the chain's hashing, the group commit and the verification. Must not: decide
//! what is audited (`crate::audit` builds the entries).

use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{json_text, now_ms, parse_json, Bind, Result, Store, StoreError};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewAudit {
    /// `user`, `agent` or `system`.
    pub actor_kind: String,
    /// The user's name or the agent's id.
    pub actor: String,
    pub host_id: Option<String>,
    /// e.g. `operation.container.list`, `host.create`, `agent.auth`.
    pub action: String,
    pub target: Option<String>,
    /// `success`, `error` or `denied`.
    pub outcome: String,
    pub error_code: Option<String>,
    pub detail: Option<Value>,
    pub source_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor_kind: String,
    pub actor: String,
    pub host_id: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub detail: Value,
    pub source_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub actor_kind: Option<String>,
    pub host_id: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    /// Paging: entries older than this sequence number.
    pub before_seq: Option<i64>,
    #[serde(default = "default_limit")]
    pub limit: i64,
}

fn default_limit() -> i64 {
    100
}

impl Default for AuditFilter {
    fn default() -> Self {
        AuditFilter {
            actor: None,
            actor_kind: None,
            host_id: None,
            action: None,
            outcome: None,
            since: None,
            until: None,
            before_seq: None,
            limit: default_limit(),
        }
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuditVerifyReport {
    /// Entries whose hash was checked.
    pub verified: u64,
    /// Entries written before the chain existed (no hash).
    pub unchained: u64,
    /// Entries whose content no longer matches their hash.
    pub changed: Vec<i64>,
    /// Entries missing from the chain (by sequence number).
    pub deleted: Vec<i64>,
    /// Other breaks of the chain, in words.
    pub problems: Vec<String>,
    /// The hash of the newest entry (anchor it elsewhere to detect a rewritten chain).
    pub head_hash: String,
    pub head_seq: i64,
}

impl AuditVerifyReport {
    pub fn ok(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty() && self.problems.is_empty()
    }
}

/// An entry waiting for the next group commit, and where to say it was committed.
pub(crate) struct Pending {
    entry: NewAudit,
    done: tokio::sync::oneshot::Sender<std::result::Result<(), String>>,
}

/// How long queued background entries (reads) gather before they are committed: a read of
/// the log commits them first, so nobody waits for this; a batch costs four statements besides
/// its entries, which reads a few milliseconds apart now share.
const BACKGROUND_GATHER: std::time::Duration = std::time::Duration::from_millis(50);

/// The `prev_hash` of the first chained entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The stored columns of one entry, as hashed.
struct Fields {
    seq: i64,
    at: i64,
    actor_kind: String,
    actor: String,
    host_id: Option<String>,
    action: String,
    target: Option<String>,
    outcome: String,
    error_code: Option<String>,
    detail: Option<String>,
    source_ip: Option<String>,
}

/// SHA-256 (hex) over the canonical serialisation: a JSON array of a version tag, every
/// column as stored, and the previous hash.
fn entry_hash(f: &Fields, prev_hash: &str) -> String {
    let canonical = serde_json::json!([
        "audit-v1",
        f.seq,
        f.at,
        f.actor_kind,
        f.actor,
        f.host_id,
        f.action,
        f.target,
        f.outcome,
        f.error_code,
        f.detail,
        f.source_ip,
        prev_hash
    ])
    .to_string();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn fields(r: &AnyRow) -> Result<Fields> {
    Ok(Fields {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        actor_kind: r.try_get("actor_kind")?,
        actor: r.try_get("actor")?,
        host_id: r.try_get("host_id")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: r.try_get("outcome")?,
        error_code: r.try_get("error_code")?,
        detail: r.try_get("detail")?,
        source_ip: r.try_get("source_ip")?,
    })
}

impl Store {
    /// Appends one entry to the chain; returns once it is committed.
    pub async fn add_audit(&self, e: &NewAudit) -> Result<()> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.audit_pending
            .lock()
            .map_err(|_| StoreError::Conflict("audit queue poisoned".into()))?
            .push(Pending {
                entry: e.clone(),
                done: tx,
            });
        let _one_writer = self.audit_lock.lock().await;
        // A previous writer may have committed our entry while we waited for the lock.
        if let Ok(r) = rx.try_recv() {
            return r.map_err(StoreError::Conflict);
        }
        let result = self.commit_pending().await;
        match rx.try_recv() {
            Ok(r) => r.map_err(StoreError::Conflict),
            // Our entry was in this batch: the send above cannot have failed.
            Err(_) => result,
        }
    }

    /// Queues an entry for the next group commit without waiting for it (a task commits it
    /// soon). Reads of the log ([`Store::list_audit`], [`Store::verify_audit_chain`]) commit
    /// what is queued first, so they see it.
    pub fn add_audit_background(&self, e: NewAudit) {
        let (tx, _nobody_waits) = tokio::sync::oneshot::channel();
        match self.audit_pending.lock() {
            Ok(mut q) => q.push(Pending { entry: e, done: tx }),
            Err(_) => {
                tracing::error!(action = %e.action, "audit queue poisoned: entry not written");
                return;
            }
        }
        // One commit task at a time, after a short gathering pause: a burst of reads then
        // costs one transaction. An entry queued after the task cleared the flag schedules
        // the next task; one queued before it is in the batch the task takes.
        if self
            .audit_flush_scheduled
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(BACKGROUND_GATHER).await;
            store
                .audit_flush_scheduled
                .store(false, std::sync::atomic::Ordering::SeqCst);
            if let Err(err) = store.flush_audit().await {
                tracing::error!(error = %err, "could not write the audit log");
            }
        });
    }

    /// Commits every queued entry (see [`Store::add_audit_background`]).
    pub async fn flush_audit(&self) -> Result<()> {
        let _one_writer = self.audit_lock.lock().await;
        self.commit_pending().await
    }

    /// Writes every queued entry in one transaction and tells each one's waiter. The caller
    /// holds `audit_lock`.
    async fn commit_pending(&self) -> Result<()> {
        let batch: Vec<Pending> = match self.audit_pending.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return Err(StoreError::Conflict("audit queue poisoned".into())),
        };
        if batch.is_empty() {
            return Ok(());
        }
        let entries: Vec<&NewAudit> = batch.iter().map(|p| &p.entry).collect();
        let result = self.write_audit_batch(&entries).await;
        let shared = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        for p in batch {
            let _ = p.done.send(shared.clone());
        }
        result
    }

    /// Writes `entries` as consecutive links of the chain in one transaction.
    async fn write_audit_batch(&self, entries: &[&NewAudit]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        // Write first: this takes the head row's lock before anything is read.
        sqlx::query("UPDATE audit_head SET updated_at = $1 WHERE id = 1")
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let head_seq: i64 = head.try_get("seq")?;
        let head_hash: String = head.try_get("hash")?;
        let max: Option<i64> = sqlx::query("SELECT MAX(seq) AS m FROM audit_log")
            .fetch_one(&mut *tx)
            .await?
            .try_get("m")?;
        let mut prev = if head_hash.is_empty() {
            GENESIS.to_string()
        } else {
            head_hash
        };
        let mut seq = head_seq.max(max.unwrap_or(0));
        for e in entries {
            seq += 1;
            let f = Fields {
                seq,
                at: now_ms(),
                actor_kind: e.actor_kind.clone(),
                actor: e.actor.clone(),
                host_id: e.host_id.clone(),
                action: e.action.clone(),
                target: e.target.clone(),
                outcome: e.outcome.clone(),
                error_code: e.error_code.clone(),
                detail: e.detail.as_ref().map(json_text),
                source_ip: e.source_ip.clone(),
            };
            let hash = entry_hash(&f, &prev);
            sqlx::query(
                "INSERT INTO audit_log (seq, at, actor_kind, actor, host_id, action, target, outcome, error_code, detail, \
                 source_ip, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(f.seq)
            .bind(f.at)
            .bind(&f.actor_kind)
            .bind(&f.actor)
            .bind(&f.host_id)
            .bind(&f.action)
            .bind(&f.target)
            .bind(&f.outcome)
            .bind(&f.error_code)
            .bind(&f.detail)
            .bind(&f.source_ip)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
            prev = hash;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&prev)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks every chained entry against its hash and its link to the one before; returns
    /// the newest chained entry (sequence number and hash), if any.
    async fn walk_chain(
        &self,
        report: &mut AuditVerifyReport,
        legacy_max: Option<i64>,
    ) -> Result<Option<(i64, String)>> {
        let mut expected_prev = GENESIS.to_string();
        // The sequence number of the previous chained entry (None before the first).
        let mut prev_seq: Option<i64> = None;
        let mut after = i64::MIN;
        loop {
            let rows = sqlx::query(
                "SELECT seq, at, actor_kind, actor, host_id, action, target, outcome, error_code, detail, source_ip, \
                 prev_hash, hash FROM audit_log WHERE hash IS NOT NULL AND seq > $1 ORDER BY seq LIMIT 1000",
            )
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let f = fields(r)?;
                let prev_hash: Option<String> = r.try_get("prev_hash")?;
                let hash: String = r.try_get("hash")?;
                let prev_hash = prev_hash.unwrap_or_default();
                after = f.seq;
                report.verified += 1;
                if entry_hash(&f, &prev_hash) != hash {
                    report.changed.push(f.seq);
                }
                if prev_hash != expected_prev {
                    // The link to the previous entry is broken: what lies between is gone.
                    let from = prev_seq.or(legacy_max).unwrap_or(0) + 1;
                    broken_link(report, f.seq, from);
                }
                expected_prev = hash;
                prev_seq = Some(f.seq);
            }
        }
        Ok(prev_seq.map(|s| (s, expected_prev)))
    }

    /// Walks the whole chain and reports every changed or deleted entry.
    pub async fn verify_audit_chain(&self) -> Result<AuditVerifyReport> {
        self.flush_audit().await?;
        let unchained = sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE hash IS NULL")
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>("n")? as u64;
        let mut report = AuditVerifyReport {
            unchained,
            ..Default::default()
        };
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        let (head_seq, head_hash) = match head {
            Some(h) => (h.try_get::<i64, _>("seq")?, h.try_get::<String, _>("hash")?),
            None => {
                report.problems.push("the audit_head row is missing".into());
                (0, String::new())
            }
        };
        report.head_seq = head_seq;
        report.head_hash = head_hash.clone();
        // The last unchained (legacy) sequence number: the chain starts after it.
        let legacy_max: Option<i64> =
            sqlx::query("SELECT MAX(seq) AS m FROM audit_log WHERE hash IS NULL")
                .fetch_one(&self.pool)
                .await?
                .try_get("m")?;
        let last = self.walk_chain(&mut report, legacy_max).await?;
        check_head(&mut report, last, legacy_max, &head_hash);
        report.changed.sort_unstable();
        report.changed.dedup();
        report.deleted.sort_unstable();
        report.deleted.dedup();
        Ok(report)
    }

    /// Audit entries matching every given filter, newest first.
    pub async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        if let Err(e) = self.flush_audit().await {
            tracing::error!(error = %e, "could not write queued audit entries");
        }
        let mut sql = String::from(
            "SELECT seq, at, actor_kind, actor, host_id, action, target, outcome, error_code, detail, source_ip \
             FROM audit_log WHERE 1 = 1",
        );
        let mut binds: Vec<Bind> = Vec::new();
        let mut add = |col: &str, op: &str, v: Bind, sql: &mut String| {
            binds.push(v);
            sql.push_str(&format!(" AND {col} {op} ${}", binds.len()));
        };
        if let Some(v) = &f.actor {
            add("actor", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = &f.actor_kind {
            add("actor_kind", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = &f.host_id {
            add("host_id", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = &f.action {
            add("action", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = &f.outcome {
            add("outcome", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = f.since {
            add("at", ">=", Bind::Int(v), &mut sql);
        }
        if let Some(v) = f.until {
            add("at", "<", Bind::Int(v), &mut sql);
        }
        if let Some(v) = f.before_seq {
            add("seq", "<", Bind::Int(v), &mut sql);
        }
        binds.push(Bind::Int(f.limit.clamp(1, 1000)));
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", binds.len()));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor_kind: r.try_get("actor_kind")?,
                    actor: r.try_get("actor")?,
                    host_id: r.try_get("host_id")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    outcome: r.try_get("outcome")?,
                    error_code: r.try_get("error_code")?,
                    detail: parse_json(r.try_get("detail")?),
                    source_ip: r.try_get("source_ip")?,
                })
            })
            .collect()
    }
}

/// Entry `seq` does not link to the chained entry before it: the entries from `from` on were
/// deleted (or, with none missing, `seq` itself was changed).
fn broken_link(report: &mut AuditVerifyReport, seq: i64, from: i64) {
    let missing: Vec<i64> = (from..seq).collect();
    if missing.is_empty() || missing.len() > 10_000 {
        report.problems.push(format!(
            "entry {seq} does not follow the entry before it (prev_hash mismatch)"
        ));
        if missing.is_empty() {
            report.changed.push(seq);
        }
    }
    if missing.len() <= 10_000 {
        report.deleted.extend(missing);
    }
}

/// The head names the newest entry: entries deleted at the end show here.
fn check_head(
    report: &mut AuditVerifyReport,
    last: Option<(i64, String)>,
    legacy_max: Option<i64>,
    head_hash: &str,
) {
    let head_seq = report.head_seq;
    let (last, last_hash) = last.unwrap_or((legacy_max.unwrap_or(0), String::new()));
    if head_seq > last {
        report
            .deleted
            .extend((last + 1)..=head_seq.min(last + 10_000));
    } else if head_seq == last && head_hash != last_hash {
        report
            .problems
            .push("the newest entry does not match the chain head".into());
    } else if head_seq < last {
        report.problems.push(format!(
            "entries after the chain head ({head_seq}) were written outside the chain"
        ));
    }
}
