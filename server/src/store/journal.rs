//! The command journal: the records of direct commands (no queue, no client idempotency key)
//! written behind the request, many per transaction.
//!
//! Such a command's outcome reaches its caller in the response; its row in `commands` is the
//! history. Writing that row inline cost the request three round trips (insert, sent,
//! completed), which at 1,000 commands/s serialised every request on the database. The
//! journal takes the row's start and finish as ordered entries and one writer task commits
//! whatever has gathered in one transaction.
//!
//! Reads stay consistent within the process: [`Store::get_command`] and the other command
//! reads wait for the journal to reach every entry queued before them (`flush`), which costs
//! nothing when it is empty. A crash loses at most the entries of the last moment (their
//! outcome was already answered; the agent's idempotency memory is unaffected). Commands that
//! must be durable before anything else happens (queued ones, client keys) never use it.
//!
//! Owns: the writer task and its queue. Must not: decide which commands go through it (the
//! API does).

use serde_json::Value;
use sqlx::AnyPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use super::commands::{finish_sql, legacy_status, next_seq, outcome_of, outcome_unknown_body};
use super::{now_ms, NewQueuedCommand};

/// Entries at most per transaction.
const BATCH: usize = 512;
/// How long the writer gathers entries before it commits them.
const GATHER: Duration = Duration::from_millis(10);
/// Entries waiting before new ones are refused (the database is down or far behind).
const MAX_WAITING: u64 = 200_000;
/// How long a failing batch is retried before it is dropped (logged).
const RETRY_FOR: Duration = Duration::from_secs(60);

/// What happened to a command.
#[derive(Debug)]
pub(crate) enum Entry {
    /// It went out to `sent_to` (an agent's ref, or `direct`).
    Started {
        cmd: Box<NewQueuedCommand>,
        sent_to: String,
        at: i64,
    },
    /// Its outcome: `succeeded` or `failed`, with the result document.
    Finished {
        id: String,
        state: &'static str,
        code: Option<&'static str>,
        body: String,
        duration_ms: Option<i64>,
        at: i64,
    },
}

enum Op {
    Entry(Entry),
    Flush(oneshot::Sender<()>),
}

/// The sending side, held by the store.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    tx: mpsc::UnboundedSender<Op>,
    /// Entries queued and not yet committed (or dropped).
    waiting: Arc<AtomicU64>,
}

impl Journal {
    /// Starts the writer task on `pool`.
    pub(crate) fn start(pool: AnyPool) -> Journal {
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(pool, rx, waiting.clone()));
        Journal { tx, waiting }
    }

    /// Queues an entry. False when the journal is full or stopped (the caller logs; the
    /// command itself is unaffected).
    pub(crate) fn push(&self, e: Entry) -> bool {
        if self.waiting.load(Ordering::Relaxed) >= MAX_WAITING {
            return false;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Op::Entry(e)).is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Waits until every entry queued before this call is committed (or given up on).
    pub(crate) async fn flush(&self) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn writer(pool: AnyPool, mut rx: mpsc::UnboundedReceiver<Op>, waiting: Arc<AtomicU64>) {
    let mut entries = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(op) = rx.recv().await {
        // Gather for up to GATHER (nobody waits for these rows) unless a reader asks for a
        // flush or the batch is full: one transaction then carries a burst of commands
        // instead of each row costing the database a commit of its own.
        let until = tokio::time::Instant::now() + GATHER;
        let mut next = Some(op);
        while let Some(op) = next.take() {
            match op {
                Op::Entry(e) => entries.push(e),
                Op::Flush(done) => flushes.push(done),
            }
            if entries.len() >= BATCH {
                break;
            }
            next = match rx.try_recv() {
                Ok(op) => Some(op),
                Err(mpsc::error::TryRecvError::Empty) if flushes.is_empty() => {
                    tokio::time::timeout_at(until, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
        }
        if !entries.is_empty() {
            write_with_retry(&pool, &entries).await;
            waiting.fetch_sub(entries.len() as u64, Ordering::Release);
            entries.clear();
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

async fn write_with_retry(pool: &AnyPool, entries: &[Entry]) {
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        match write(pool, entries).await {
            Ok(()) => return,
            Err(e) if started.elapsed() < RETRY_FOR => {
                tracing::warn!(error = %e, entries = entries.len(), "could not write command records; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, entries = entries.len(),
                    "gave up writing command records after {}s: their history is lost (their outcomes were answered)",
                    RETRY_FOR.as_secs());
                return;
            }
        }
    }
}

async fn write(pool: &AnyPool, entries: &[Entry]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for e in entries {
        match e {
            Entry::Started { cmd, sent_to, at } => {
                sqlx::query(
                    "INSERT INTO commands (id, host_id, agent_id, operation, requested_by, status, created_at, state, seq, \
                     queued, agent_ref, params_enc, timeout_secs, expires_at, idempotency_key, client_key, attempts, \
                     sent_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6, 'sent', $7, 0, $8, NULL, $9, $10, $11, $12, 1, $13, $14)",
                )
                .bind(&cmd.id)
                .bind(&cmd.host_id)
                .bind(&cmd.agent_id)
                .bind(&cmd.operation)
                .bind(&cmd.requested_by)
                .bind(*at)
                .bind(next_seq())
                .bind(sent_to)
                .bind(cmd.timeout_secs)
                .bind(cmd.expires_at)
                .bind(&cmd.idempotency_key)
                .bind(cmd.client_key as i64)
                .bind(*at)
                .bind(*at)
                .execute(&mut *tx)
                .await?;
            }
            Entry::Finished {
                id,
                state,
                code,
                body,
                duration_ms,
                at,
            } => {
                sqlx::query(finish_sql())
                    .bind(*state)
                    .bind(legacy_status(state))
                    .bind(*code)
                    .bind(body)
                    .bind(*at)
                    .bind(*duration_ms)
                    .bind(*at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await
}

/// The journal entry for a sent command that will get no answer: `failed` with
/// `outcome_unknown` (as [`super::Store::command_outcome_unknown`] stores it).
pub(crate) fn outcome_unknown(id: &str, message: &str) -> Entry {
    let body = outcome_unknown_body(message);
    Entry::Finished {
        id: id.to_string(),
        state: "failed",
        code: Some("outcome_unknown"),
        body: body.to_string(),
        duration_ms: None,
        at: now_ms(),
    }
}

/// The journal entry for a command's outcome.
pub(crate) fn finished(
    id: &str,
    result: &std::result::Result<Value, protocol::ErrorBody>,
    duration_ms: Option<i64>,
) -> Entry {
    let (state, code, body) = outcome_of(result);
    Entry::Finished {
        id: id.to_string(),
        state,
        code,
        body: body.to_string(),
        duration_ms,
        at: now_ms(),
    }
}
