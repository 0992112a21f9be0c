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
//! `commands` module does).

use sqlx::AnyPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use super::commands::{
    next_seq, CommandState, Finish, NewCommand, INSERT_FINISHED_SQL, INSERT_SENT_SQL,
};
use super::{now_ms, Store};
use crate::reply::Outcome;
use std::collections::{HashMap, HashSet};

/// Entries at most per transaction.
const BATCH: usize = 512;
/// How long the writer gathers entries before it commits them. Nothing waits for them (a
/// read flushes first), so the window is sized for the database's sake: calls one at a time
/// a few milliseconds apart still share a commit (and its index and WAL pages) instead of each
/// committing alone; a crash loses at most this window's history rows.
const GATHER: Duration = Duration::from_millis(50);
/// Entries waiting before new ones are refused (the database is down or far behind).
const MAX_WAITING: u64 = 200_000;
/// How long a failing batch is retried before it is dropped (logged).
const RETRY_FOR: Duration = Duration::from_secs(60);

/// What happened to a command.
pub(crate) enum Entry {
    /// It went out to `sent_to` (an agent's ref, or `direct`).
    Started {
        cmd: Box<NewCommand>,
        sent_to: String,
        at: i64,
    },
    /// Its final record.
    Finished { id: String, finish: Finish, at: i64 },
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

/// One transaction for the batch. A command whose start and finish are both in it (a fast
/// command: most are) is written as one row with its final record: one statement instead of
/// an insert and an update.
async fn write(pool: &AnyPool, entries: &[Entry]) -> Result<(), sqlx::Error> {
    let finishes: HashMap<&str, (&Finish, i64)> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Finished { id, finish, at } if finish.joins_its_start() => {
                Some((id.as_str(), (finish, *at)))
            }
            _ => None,
        })
        .collect();
    let mut joined: HashSet<&str> = HashSet::new();
    let mut tx = pool.begin().await?;
    for e in entries {
        match e {
            Entry::Started { cmd, sent_to, at } => {
                let end = finishes.get(cmd.id.as_str()).copied();
                insert_started(&mut tx, cmd, sent_to, *at, end).await?;
                if end.is_some() {
                    joined.insert(cmd.id.as_str());
                }
            }
            Entry::Finished { id, .. } if joined.contains(id.as_str()) => {}
            Entry::Finished { id, finish, at } => {
                sqlx::query(finish.sql())
                    .bind(finish.state.as_str())
                    .bind(finish.status)
                    .bind(finish.code)
                    .bind(&finish.doc)
                    .bind(*at)
                    .bind(finish.duration_ms)
                    .bind(*at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await
}

/// The row of a command that went out at `at`: `sent`, or with its final record when `end`
/// (the finish and when it came) is known.
async fn insert_started(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    cmd: &NewCommand,
    sent_to: &str,
    at: i64,
    end: Option<(&Finish, i64)>,
) -> Result<(), sqlx::Error> {
    let (sql, updated) = match end {
        None => (INSERT_SENT_SQL, at),
        Some((_, done)) => (INSERT_FINISHED_SQL, done),
    };
    let mut q = sqlx::query(sql)
        .bind(&cmd.id)
        .bind(&cmd.host_id)
        .bind(&cmd.agent_id)
        .bind(&cmd.operation)
        .bind(&cmd.requested_by)
        .bind(at)
        .bind(next_seq())
        .bind(sent_to)
        .bind(cmd.timeout_secs)
        .bind(cmd.expires_at)
        .bind(&cmd.idempotency_key)
        .bind(cmd.client_key as i64)
        .bind(at)
        .bind(updated)
        .bind(&cmd.origin);
    if let Some((f, done)) = end {
        q = q
            .bind(f.status)
            .bind(f.state.as_str())
            .bind(f.code)
            .bind(&f.doc)
            .bind(done)
            .bind(f.duration_ms);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

impl Store {
    /// Records a command (no queue, no client key) that is being sent to `sent_to` (an
    /// agent's ref, or `direct`), through the journal: the caller does not wait for the
    /// database.
    pub fn journal_command_sent(&self, c: NewCommand, sent_to: &str) {
        let e = Entry::Started {
            cmd: Box::new(c),
            sent_to: sent_to.to_string(),
            at: now_ms(),
        };
        if !self.journal.push(e) {
            tracing::error!("the command journal is full or stopped: a command's record is lost");
        }
    }

    /// The final record of a command recorded with [`Store::journal_command_sent`] (as
    /// [`Store::finish_command`] stores it).
    pub fn journal_command_finished(
        &self,
        id: &str,
        state: CommandState,
        outcome: &Outcome,
        duration_ms: Option<i64>,
    ) {
        let e = Entry::Finished {
            id: id.to_string(),
            finish: Finish::new(state, outcome, duration_ms),
            at: now_ms(),
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
}
