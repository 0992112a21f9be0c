//! A command's life, from submit to its final state, in one place.
//!
//! ```text
//! submit ─ authority ─ validation ─ idempotency ─┬─ run now ──── HostAdapter::run ─┐
//!  (Principal, Submission)    (replay: the first  └─ queue ─ deliverer (AgentLink) ─┤
//!                              command's result)                                   │
//!             final state ◄── history row, metrics, audit ◄─────────────────────────┘
//!                 └── waiters (this request, replays) and subscribers (Finished events)
//! ```
//!
//! Owns: [`Commands::submit`] (the role an operation needs, parameter and limit checks, the
//! idempotency key, the history row, sending now or queueing for an agent, the timeout, the
//! result, metrics and the audit entry), the delivery of queued commands when the host's
//! agent comes online ([`queue`]), every change to a final state (answers, expiries, late
//! answers, commands orphaned by a restart, a queued command withdrawn with
//! [`Commands::cancel`]) with a [`Finished`] event for each, and the retention of the
//! history. Callers: the REST handler, and next bulk operations (one
//! command per host, each with its own key and an `origin`), stacks (a sequence on one host,
//! waiting with [`Commands::wait`]), agent updates and the web UI. A caller that is not an
//! HTTP request submits with the [`Principal`] it acts for.
//! Must not: know HTTP (callers turn a [`Reply`] into their answer), branch on the kind of
//! host (the `HostAdapter` seam does), or touch agent sessions except through the
//! `AgentManager`'s methods.

mod finals;
mod queue;
mod submit;

pub use crate::auth::Principal;
pub use crate::store::{CommandRecord, CommandState};
pub use submit::{Submission, DEFAULT_QUEUE_EXPIRY, MAX_QUEUE_EXPIRY, MAX_TIMEOUT};

use protocol::{ErrorBody, ErrorCode};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

use crate::agents::{AgentManager, Signal};
use crate::audit::Auditor;
use crate::cluster::{Cluster, Event, WakeUp};
use crate::crypto::KeyBox;
use crate::error::ApiError;
use crate::hosts::Adapters;
use crate::metrics::Metrics;
use crate::reply::Outcome;
use crate::store::{now_ms, Store, StoreError};

/// What a submission (or a wait) came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub command_id: String,
    pub state: CommandState,
    /// The outcome to show now: the final one, or (state `sent`) `outcome_unknown` for a
    /// command whose answer did not come in time and that stays queued. `None` while the
    /// command waits or runs: poll it, [`Commands::wait`] or [`Commands::subscribe`].
    pub outcome: Option<Outcome>,
    /// Unix ms after which an unsent command expires.
    pub expires_at: Option<i64>,
    /// The command is an earlier one with the same idempotency key.
    pub replay: bool,
}

impl Reply {
    fn of(c: &CommandRecord, replay: bool) -> Reply {
        Reply {
            command_id: c.id.clone(),
            state: c.state,
            outcome: c.outcome().filter(|_| c.state.is_final()),
            expires_at: c.expires_at,
            replay,
        }
    }
}

/// A command reached a final state. Published for every command, including queued ones
/// delivered much later; after a restart, read the history (e.g.
/// [`Commands::by_origin`]) for what finished meanwhile. A command may finish twice only
/// when a late real answer replaces `outcome_unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub command_id: String,
    pub host_id: Option<String>,
    pub state: CommandState,
    pub origin: Option<String>,
}

impl Finished {
    /// Command `c` reaching `state`.
    fn of(c: &CommandRecord, state: CommandState) -> Finished {
        Finished {
            command_id: c.id.clone(),
            host_id: c.host_id.clone(),
            state,
            origin: c.origin.clone(),
        }
    }
}

/// What [`Commands`] works with.
#[derive(Debug, Clone)]
pub struct Parts {
    pub store: Store,
    pub adapters: Adapters,
    pub agents: AgentManager,
    pub keys: KeyBox,
    pub audit: Auditor,
    pub metrics: Arc<Metrics>,
    /// The timeout of a command whose submission names none.
    pub default_timeout: Duration,
    /// This replica: queued commands are handed to the replica holding the host's agent.
    pub cluster: Cluster,
}

struct Inner {
    parts: Parts,
    finals: finals::Finals,
    /// Hosts whose queue is being delivered, and whether new work arrived meanwhile.
    deliverers: Mutex<HashMap<String, bool>>,
}

/// The owner of every command's life. Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Commands")
    }
}

impl std::ops::Deref for Commands {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.inner.parts
    }
}

/// The message of a sent command whose expiry passed without an answer.
const EXPIRED_AFTER_SEND: &str =
    "the command expired after it was sent and no answer arrived; it may or may not have run";

impl Commands {
    /// Builds the owner and starts listening to the agent registry's `signals` (an agent
    /// came online: deliver its host's queue; an answer nobody waited for: store it).
    pub fn new(parts: Parts, signals: mpsc::UnboundedReceiver<Signal>) -> Commands {
        let inner = Arc::new(Inner {
            parts,
            finals: finals::Finals::new(1024),
            deliverers: Mutex::new(HashMap::new()),
        });
        tokio::spawn(listen(Arc::downgrade(&inner), signals));
        let owner = Arc::downgrade(&inner);
        inner.parts.cluster.notifier().on(move |e| {
            if let Some(inner) = owner.upgrade() {
                Commands { inner }.woken(e);
            }
        });
        Commands { inner }
    }

    /// Another replica's wake-up: commands queued for a host whose agent is held here are
    /// delivered; a queued command another replica finished reaches its waiters here. After
    /// a lost listening connection, the queues of every host held here are looked at again.
    fn woken(&self, e: &Event) {
        match e {
            Event::WakeUp(WakeUp::Queue { host }) => {
                if self.agents.online_agent_for_host(host, None).is_some() {
                    // The host may have changed there (approved): read it again.
                    self.store
                        .drop_cached(&crate::store::CacheDrop::Host(host.clone()));
                    self.kick_queue(host);
                }
            }
            Event::WakeUp(WakeUp::CommandDone { commands }) => {
                let watched: Vec<String> = commands
                    .iter()
                    .filter(|id| self.inner.finals.is_watched(id))
                    .cloned()
                    .collect();
                if !watched.is_empty() {
                    let me = self.clone();
                    tokio::spawn(async move { me.finished_elsewhere(watched).await });
                }
            }
            Event::Resync => {
                for host in self.agents.online_hosts() {
                    self.kick_queue(&host);
                }
            }
            Event::WakeUp(_) => {}
        }
    }

    /// Commands another replica finished: their waiters here get the stored final state.
    async fn finished_elsewhere(&self, ids: Vec<String>) {
        for id in ids {
            match self.store.get_command(&id).await {
                Ok(Some(c)) if c.state.is_final() => {
                    let outcome = c.outcome().unwrap_or_else(|| {
                        Err(ErrorBody::internal(
                            "the command finished without an outcome",
                        ))
                    });
                    self.inner
                        .finals
                        .notify(Finished::of(&c, c.state), &outcome);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(command = %id, error = %e, "reading a command finished elsewhere failed")
                }
            }
        }
    }

    /// Makes sure the queue of `host_id` is delivered by the replica holding its agent:
    /// here when it is online here, else the other live replicas are woken (the one that
    /// holds it delivers; one that gets the agent later reads the queue when it does).
    pub fn hand_off_queue(&self, host_id: &str) {
        if self.agents.online_agent_for_host(host_id, None).is_some() {
            self.kick_queue(host_id);
        } else if self.cluster.has_peers() {
            self.cluster.notifier().send(WakeUp::Queue {
                host: host_id.to_string(),
            });
        }
    }

    /// Final states as they happen (see [`Finished`]). A subscriber that falls more than
    /// 1,024 events behind is told how many it missed and should read the history.
    pub fn subscribe(&self) -> broadcast::Receiver<Finished> {
        self.inner.finals.subscribe()
    }

    /// Waits up to `timeout` for command `id` to reach a final state; its state so far when
    /// it does not. Errors: `not_found`.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Reply, ApiError> {
        let c = self
            .store
            .get_command(id)
            .await?
            .ok_or_else(|| ApiError::not_found("command not found"))?;
        self.await_final(c, timeout, false).await
    }

    /// The command, as stored; a queued one past its expiry is expired first.
    pub async fn get(&self, id: &str) -> Result<Option<CommandRecord>, ApiError> {
        let Some(c) = self.store.get_command(id).await? else {
            return Ok(None);
        };
        if c.state == CommandState::Queued && c.expires_at.is_some_and(|e| e < now_ms()) {
            self.expire(&c.id, c.host_id.clone(), c.origin.clone(), c.state)
                .await;
            return Ok(Some(self.store.get_command(id).await?.unwrap_or(c)));
        }
        Ok(Some(c))
    }

    /// The commands of a host, newest first (due ones expired first).
    pub async fn list_for_host(
        &self,
        host_id: &str,
        state: Option<CommandState>,
        limit: i64,
    ) -> Result<Vec<CommandRecord>, ApiError> {
        if let Err(e) = self.expire_due().await {
            tracing::warn!(error = %e, "expiring due commands failed");
        }
        Ok(self.store.list_host_commands(host_id, state, limit).await?)
    }

    /// The commands submitted with `origin`, in creation order (what a bulk run reads back
    /// after a restart).
    pub async fn by_origin(
        &self,
        origin: &str,
        limit: i64,
    ) -> Result<Vec<CommandRecord>, ApiError> {
        Ok(self.store.list_commands_by_origin(origin, limit).await?)
    }

    /// Expires open commands whose expiry passed: never sent ones become `expired`, sent
    /// ones `failed` with `outcome_unknown`. Returns how many changed.
    pub async fn expire_due(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for d in self.store.due_commands(1000).await? {
            n += self.expire(&d.id, d.host_id, d.origin, d.state).await as u64;
        }
        Ok(n)
    }

    /// Bounded retention: finished commands older than `max_age` go.
    pub async fn prune(&self, max_age: Duration) -> Result<u64, StoreError> {
        self.store.prune_commands(max_age.as_millis() as i64).await
    }

    /// At start: commands sent now (not queued) by a previous run have no requester any
    /// more: `failed` with `outcome_unknown`. Queued ones stay and are delivered.
    pub async fn fail_orphaned(&self) -> Result<u64, StoreError> {
        let e = ErrorBody::new(
            ErrorCode::OutcomeUnknown,
            "the server restarted while the command was in flight",
        );
        self.store.fail_orphaned_commands(&e).await
    }

    /// Withdraws command `id` while it is still queued (never sent): it becomes `cancelled`
    /// with a `conflict` error naming `why`, and is never sent. Returns whether it was
    /// withdrawn (false: it was sent or had finished). Needs the role the operation needs;
    /// audited as `command.cancel`. Errors: `not_found`, `forbidden`.
    pub async fn cancel(&self, who: &Principal, id: &str, why: &str) -> Result<bool, ApiError> {
        let c = self
            .store
            .get_command(id)
            .await?
            .ok_or_else(|| ApiError::not_found("command not found"))?;
        who.require(crate::auth::role_for(protocol::ops::access_of(
            &c.operation,
        )))?;
        if c.state != CommandState::Queued {
            return Ok(false);
        }
        let outcome = Err(ErrorBody::new(
            ErrorCode::Conflict,
            format!("the command was cancelled before it was sent: {why}"),
        ));
        let changed = self
            .store
            .finish_command(&c.id, CommandState::Cancelled, &outcome, None)
            .await?;
        if !changed {
            return Ok(false);
        }
        let fin = Finished::of(&c, CommandState::Cancelled);
        self.inner.finals.notify(fin, &outcome);
        let mut detail = json!({ "command_id": c.id, "operation": c.operation, "reason": why });
        if let Some(o) = &c.origin {
            detail["origin"] = json!(o);
        }
        let action = "command.cancel";
        self.audit
            .user(
                who,
                action,
                c.host_id.as_deref(),
                Some(&c.id),
                "success",
                None,
                Some(detail),
            )
            .await;
        Ok(true)
    }

    /// Expires command `id` (in `state`): `expired` when it was never sent, else `failed`
    /// with `outcome_unknown`. Returns whether it changed.
    async fn expire(
        &self,
        id: &str,
        host_id: Option<String>,
        origin: Option<String>,
        state: CommandState,
    ) -> bool {
        let (to, err) = if state == CommandState::Queued {
            let e = ErrorBody::new(
                ErrorCode::Timeout,
                "the command expired before the agent could run it",
            );
            (CommandState::Expired, e)
        } else {
            let e = ErrorBody::new(ErrorCode::OutcomeUnknown, EXPIRED_AFTER_SEND);
            (CommandState::Failed, e)
        };
        let fin = Finished {
            command_id: id.to_string(),
            host_id,
            state: to,
            origin,
        };
        self.finish(fin, &Err(err), None).await
    }

    /// Stores a final state and tells the waiters and subscribers. Returns false only when
    /// the store said the command had already finished (nobody is told again).
    async fn finish(&self, fin: Finished, outcome: &Outcome, duration_ms: Option<i64>) -> bool {
        let stored = self
            .store
            .finish_command(&fin.command_id, fin.state, outcome, duration_ms)
            .await;
        match stored {
            Ok(false) => return false,
            Ok(true) => {}
            Err(e) => {
                tracing::error!(command = %fin.command_id, error = %e, "could not store the command's result")
            }
        }
        self.inner.finals.notify(fin, outcome);
        true
    }

    /// An answer nobody waited for (late, or after a restart): stored when the command is
    /// one of the answering agent's host.
    async fn late_answer(&self, host_id: Option<String>, id: String, outcome: Outcome) {
        let Ok(Some(c)) = self.store.get_command(&id).await else {
            return;
        };
        if c.host_id.is_none() || c.host_id != host_id {
            return;
        }
        let fin = Finished::of(&c, CommandState::of(&outcome));
        self.finish(fin, &outcome, None).await;
    }
}

/// Acts on the agent registry's signals while the owner lives.
async fn listen(owner: Weak<Inner>, mut signals: mpsc::UnboundedReceiver<Signal>) {
    while let Some(signal) = signals.recv().await {
        let Some(inner) = owner.upgrade() else {
            return;
        };
        let commands = Commands { inner };
        match signal {
            Signal::HostOnline { host_id } => commands.kick_queue(&host_id),
            Signal::LateAnswer {
                host_id,
                command_id,
                outcome,
            } => {
                tokio::spawn(async move {
                    commands.late_answer(host_id, command_id, outcome).await;
                });
            }
        }
    }
}
