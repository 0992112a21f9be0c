//! Rollouts: one job run over many hosts, with a parallelism, a failure budget, progress
//! on the live feed, and a durable record that a restarted server continues from.
//!
//! ```text
//! Rollouts::start(principal, Plan{kind, summary, spec, targets, policy})
//!   JobKind::check (authority, spec) ─ bulk_operations + bulk_targets rows (one transaction)
//!   runner: targets in order, at most max_parallel at once ─ Job::run(Target) ─► TargetEnd
//!           a target parks (queued: its slot is freed) while its command waits for its agent
//!   more than max_failures failed ─► stop: pending targets cancelled, queued commands withdrawn
//!   all final ─► succeeded (every target succeeded) | cancelled (a user asked) | failed
//! Rollouts::resume() at start: every running rollout of this server continues where it was
//! ```
//!
//! A job is what one kind of rollout does to one host ([`Job`]); a [`JobKind`] builds it
//! from the stored spec, at start and again after a restart. The bulk operation
//! ([`bulk`]) is the first kind; stacks (`crate::deploy`) and agent updates
//! ([`agent_update`]) are the next ones, with the same states, defaults, feed messages and
//! audit. A job never runs a host's work twice: it
//! derives each command's idempotency key from the rollout, the host and the step, and the
//! command path answers a repeated key with the first command.
//!
//! Owns: the rollout's life (start, the runner, cancel, resume, the final state), the
//! `bulk_progress` and `bulk_done` feed messages, and the `KIND.create`, `KIND.cancel` and
//! `KIND.finish` audit entries. Must not: run commands itself (jobs submit them through
//! `commands`), or know HTTP.

pub mod agent_update;
pub mod bulk;
mod runner;

pub use crate::store::{RolloutRecord, RolloutState, TargetRecord, TargetState};

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::audit::Auditor;
use crate::auth::Principal;
use crate::crypto::KeyBox;
use crate::error::ApiError;
use crate::feed::Feed;
use crate::store::{NewRollout, Store, StoreError, TargetUpdate};

/// Hosts at most per rollout.
pub const MAX_TARGETS: usize = 20_000;
/// The default and the largest `max_parallel`.
pub const DEFAULT_MAX_PARALLEL: u32 = 10;
pub const MAX_PARALLEL: u32 = 1000;

/// How a rollout proceeds: how many targets run at once, and how many may fail before it
/// stops (it stops when more than `max_failures` failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_parallel: u32,
    pub max_failures: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_parallel: DEFAULT_MAX_PARALLEL,
            max_failures: 0,
        }
    }
}

/// A rollout to start.
#[derive(Clone)]
pub struct Plan {
    /// The [`JobKind::kind`] that runs it.
    pub kind: &'static str,
    /// What the API shows about it (never secrets).
    pub summary: Value,
    /// The job's own document, stored encrypted and handed to [`JobKind::build`].
    pub spec: Value,
    /// Host id and name of each target, in rollout order (no repeats).
    pub targets: Vec<(String, String)>,
    pub policy: Policy,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("kind", &self.kind)
            .field("targets", &self.targets.len())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// How one target ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetEnd {
    /// A final state.
    pub state: TargetState,
    /// The outcome document of the target's last command (`crate::reply`), if any.
    pub result: Option<Value>,
}

/// What one kind of rollout does to one host.
pub trait Job: Send + Sync {
    /// Brings `t` to a final state, continuing from what it records: a target resumed after
    /// a restart has the command ids of the steps it started. While a command of the target
    /// waits for its host, call [`Target::park`] (and [`Target::unpark`] before the next
    /// step); when [`Target::stopping`] fires, withdraw what is still queued.
    fn run<'a>(&'a self, t: &'a mut Target) -> BoxFuture<'a, TargetEnd>;
}

/// Builds the jobs of one kind of rollout.
pub trait JobKind: Send + Sync {
    /// `bulk`, later `stack`, `agent_update`: stored with the rollout, and the audit's
    /// action prefix.
    fn kind(&self) -> &'static str;
    /// Before anything is stored: whether `who` may start a rollout with `spec` (refuse with
    /// `forbidden`), and whether `spec` is valid (`invalid_params`).
    fn check(&self, who: &Principal, spec: &Value) -> Result<(), ApiError>;
    /// The job of rollout `id` from its stored spec.
    fn build(&self, id: &str, spec: &Value) -> Result<Arc<dyn Job>, String>;
}

/// Why a rollout stops starting targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A user cancelled it.
    Cancelled,
    /// More than `max_failures` targets failed.
    Tripped,
}

/// What the runner of one rollout shares with its targets.
pub(crate) struct Run {
    id: String,
    kind: String,
    store: Store,
    feed: Feed,
    sem: Arc<tokio::sync::Semaphore>,
    stop: Arc<watch::Sender<Option<Stop>>>,
    failures: std::sync::atomic::AtomicI64,
    max_failures: i64,
}

impl Run {
    fn progress(&self, host_id: &str, state: TargetState) {
        self.feed.publish(
            "bulk_progress",
            Some(host_id),
            json!({ "bulk_id": self.id, "kind": self.kind, "state": state }),
        );
    }

    fn stop(&self, why: Stop) {
        stop_with(&self.stop, why);
    }
}

/// Sets the stop reason unless one is set.
fn stop_with(tx: &watch::Sender<Option<Stop>>, why: Stop) {
    tx.send_if_modified(|s| {
        if s.is_none() {
            *s = Some(why);
            true
        } else {
            false
        }
    });
}

/// One host of a running rollout, as its job sees it.
pub struct Target {
    pub rollout_id: String,
    pub host_id: String,
    pub host_name: String,
    pub position: i64,
    /// The principal the rollout runs for (its creator).
    pub owner: Principal,
    /// One id per step started, in step order (a resumed target has the earlier ones).
    pub command_ids: Vec<String>,
    state: TargetState,
    permit: Option<OwnedSemaphorePermit>,
    run: Arc<Run>,
    stop: watch::Receiver<Option<Stop>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("rollout_id", &self.rollout_id)
            .field("host_id", &self.host_id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Target {
    async fn write(&self, state: TargetState, result: Option<&Value>) {
        let u = TargetUpdate {
            state,
            command_ids: &self.command_ids,
            result,
        };
        if let Err(e) = self
            .run
            .store
            .update_target(&self.rollout_id, self.position, &u)
            .await
        {
            tracing::error!(rollout = %self.rollout_id, host = %self.host_id, error = %e, "could not record a rollout target");
        }
    }

    async fn set_state(&mut self, state: TargetState) {
        if self.state == state {
            return;
        }
        self.state = state;
        self.write(state, None).await;
        self.run.progress(&self.host_id, state);
    }

    /// Records the command of step `step` (0-based) as soon as it is known.
    pub async fn record_command(&mut self, step: usize, command_id: &str) {
        if self.command_ids.get(step).map(String::as_str) == Some(command_id) {
            return;
        }
        self.command_ids.truncate(step);
        self.command_ids.push(command_id.to_string());
        self.write(self.state, None).await;
    }

    /// The target's command waits in the queue for its host: state `queued`, and its slot
    /// goes to the next target.
    pub async fn park(&mut self) {
        self.permit = None;
        self.set_state(TargetState::Queued).await;
    }

    /// The target goes on: it takes a slot again (waiting for one) and is `running`.
    pub async fn unpark(&mut self) {
        if self.permit.is_none() {
            self.permit = self.run.sem.clone().acquire_owned().await.ok();
        }
        self.set_state(TargetState::Running).await;
    }

    /// Whether the rollout stopped starting work (cancelled, or its failure budget spent).
    pub fn is_stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Resolves once the rollout stops starting work.
    pub async fn stopping(&mut self) {
        if self.stop.wait_for(Option::is_some).await.is_err() {
            // The runner is gone: nothing will stop us any more.
            std::future::pending::<()>().await
        }
    }
}

/// What [`Rollouts`] works with.
#[derive(Debug, Clone)]
pub struct Parts {
    pub store: Store,
    pub keys: KeyBox,
    pub feed: Feed,
    pub audit: Auditor,
    /// This server's id: the runner recorded with the rollouts it drives.
    pub server_id: String,
}

struct Inner {
    parts: Parts,
    kinds: HashMap<&'static str, Arc<dyn JobKind>>,
    /// The stop signal of each rollout this server drives now.
    live: Mutex<HashMap<String, Arc<watch::Sender<Option<Stop>>>>>,
    /// True once the server shuts down: runners leave their rollouts as they are.
    shutdown: watch::Sender<bool>,
}

/// The owner of every rollout's life. Cheap to clone.
#[derive(Clone)]
pub struct Rollouts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rollouts")
    }
}

/// Counts per target state, every state present.
pub fn full_counts(c: Option<&BTreeMap<TargetState, i64>>) -> BTreeMap<&'static str, i64> {
    TargetState::ALL
        .into_iter()
        .map(|s| (s.as_str(), c.and_then(|c| c.get(&s)).copied().unwrap_or(0)))
        .collect()
}

impl Rollouts {
    pub fn new(parts: Parts, kinds: Vec<Arc<dyn JobKind>>) -> Rollouts {
        Rollouts {
            inner: Arc::new(Inner {
                parts,
                kinds: kinds.into_iter().map(|k| (k.kind(), k)).collect(),
                live: Mutex::new(HashMap::new()),
                shutdown: watch::channel(false).0,
            }),
        }
    }

    fn parts(&self) -> &Parts {
        &self.inner.parts
    }

    fn kind(&self, kind: &str) -> Result<Arc<dyn JobKind>, ApiError> {
        self.inner
            .kinds
            .get(kind)
            .cloned()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no rollout kind {kind:?}")))
    }

    /// Starts a rollout for `who`: checks it with its kind (nothing is stored when that
    /// refuses), stores it with its targets, audits `KIND.create` and starts its runner.
    ///
    /// Errors: `forbidden`, `invalid_params` (from the kind, or the policy and targets),
    /// `internal`.
    pub async fn start(&self, who: &Principal, plan: Plan) -> Result<RolloutRecord, ApiError> {
        let kind = self.check(who, plan.kind, &plan.spec).await?;
        let action = format!("{}.create", plan.kind);
        check_plan(&plan)?;
        let p = self.parts();
        let spec_enc = p
            .keys
            .encrypt(&plan.spec.to_string())
            .map_err(ApiError::internal)?;
        let row = NewRollout {
            id: uuid::Uuid::new_v4().to_string(),
            kind: plan.kind.to_string(),
            summary: plan.summary.clone(),
            spec_enc,
            max_parallel: plan.policy.max_parallel as i64,
            max_failures: plan.policy.max_failures as i64,
            created_by: who.user.clone(),
            created_role: who.role,
            token_id: who.token_id.clone(),
            source_ip: who.ip.map(|i| i.to_string()),
            runner: p.server_id.clone(),
            targets: plan.targets,
        };
        let rec = p.store.create_rollout(&row).await?;
        let detail = json!({ "id": rec.id, "hosts": rec.total, "summary": rec.summary,
            "max_parallel": rec.max_parallel, "max_failures": rec.max_failures });
        p.audit
            .user(
                who,
                &action,
                None,
                Some(&rec.id),
                "success",
                None,
                Some(detail),
            )
            .await;
        let job = kind
            .build(&rec.id, &plan.spec)
            .map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
        self.spawn(rec.clone(), job);
        Ok(rec)
    }

    /// Whether `who` may start a rollout of `kind` with `spec`, before anything else is read
    /// or stored (see [`JobKind::check`]); a refusal is audited as `KIND.create`.
    pub async fn check(
        &self,
        who: &Principal,
        kind: &str,
        spec: &Value,
    ) -> Result<Arc<dyn JobKind>, ApiError> {
        let k = self.kind(kind)?;
        if let Err(e) = k.check(who, spec) {
            let code = e.body.code.as_str();
            let outcome = if code == "forbidden" {
                "denied"
            } else {
                "error"
            };
            let action = format!("{kind}.create");
            let detail = json!({ "message": e.body.message });
            let audit = &self.parts().audit;
            audit
                .user(who, &action, None, None, outcome, Some(code), Some(detail))
                .await;
            return Err(e);
        }
        Ok(k)
    }

    /// At start: continues every running rollout this server drives (or that none claimed).
    /// Returns how many.
    pub async fn resume(&self) -> Result<usize, StoreError> {
        let p = self.parts();
        let running = p.store.claim_running_rollouts(&p.server_id).await?;
        let mut n = 0;
        for rec in running {
            let job = self.kind(&rec.kind).ok().and_then(|k| {
                let spec = p.keys.decrypt(&rec.spec_enc).ok()?;
                let spec: Value = serde_json::from_str(spec.expose()).ok()?;
                k.build(&rec.id, &spec).ok()
            });
            match job {
                Some(job) => {
                    tracing::info!(rollout = %rec.id, kind = %rec.kind, "continuing a rollout");
                    self.spawn(rec, job);
                    n += 1;
                }
                None => {
                    tracing::error!(rollout = %rec.id, kind = %rec.kind, "cannot continue a rollout: unknown kind or unreadable spec")
                }
            }
        }
        Ok(n)
    }

    fn spawn(&self, rec: RolloutRecord, job: Arc<dyn Job>) {
        let tx = Arc::new(watch::channel(None).0);
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id.clone(), tx.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let id = rec.id.clone();
            runner::drive(&me, rec, job, tx).await;
            me.inner
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    /// Asks a running rollout to stop: targets not started are cancelled, queued commands
    /// withdrawn; targets whose commands were sent finish. Audited as `KIND.cancel`.
    /// Returns false when it is not running (or a cancel was already asked for).
    pub async fn cancel(&self, who: &Principal, id: &str) -> Result<bool, ApiError> {
        let p = self.parts();
        let rec = p
            .store
            .get_rollout(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("rollout {id:?} not found")))?;
        let asked = p.store.request_rollout_cancel(id, &who.user).await?;
        let outcome = if asked { "success" } else { "error" };
        let code = (!asked).then_some("conflict");
        let action = format!("{}.cancel", rec.kind);
        p.audit
            .user(who, &action, None, Some(id), outcome, code, None)
            .await;
        if asked {
            self.signal(id, Stop::Cancelled);
        }
        Ok(asked)
    }

    fn signal(&self, id: &str, why: Stop) {
        let live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = live.get(id) {
            stop_with(tx, why);
        }
    }

    /// The server shuts down: runners stop where they are (their rollouts stay `running`
    /// and continue at the next start).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    pub async fn get(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.parts().store.get_rollout(id).await
    }

    /// Rollouts of `kind`, newest first, before (created at, id).
    pub async fn list(
        &self,
        kind: &str,
        before: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        self.parts().store.list_rollouts(kind, before, limit).await
    }

    /// Targets of rollout `id` after position `after`, in order.
    pub async fn targets(
        &self,
        id: &str,
        states: &[TargetState],
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<TargetRecord>, StoreError> {
        self.parts()
            .store
            .list_targets(id, states, after, limit)
            .await
    }

    /// Counts per target state of each rollout in `ids`.
    pub async fn counts(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<TargetState, i64>>, StoreError> {
        self.parts().store.target_counts(ids).await
    }

    /// Bounded retention: finished rollouts older than `max_age`.
    pub async fn prune(&self, max_age: std::time::Duration) -> Result<u64, StoreError> {
        self.parts()
            .store
            .prune_rollouts(max_age.as_millis() as i64)
            .await
    }
}

/// The policy's bounds and the targets' count and uniqueness.
fn check_plan(plan: &Plan) -> Result<(), ApiError> {
    let p = plan.policy;
    if p.max_parallel == 0 || p.max_parallel > MAX_PARALLEL {
        return Err(ApiError::bad_request(format!(
            "max_parallel must be 1 to {MAX_PARALLEL}"
        )));
    }
    if plan.targets.is_empty() {
        return Err(ApiError::bad_request("no host to run on"));
    }
    if plan.targets.len() > MAX_TARGETS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_TARGETS} hosts per rollout, got {}",
            plan.targets.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _)) = plan.targets.iter().find(|(h, _)| !seen.insert(h)) {
        return Err(ApiError::bad_request(format!(
            "host {dup:?} is listed twice"
        )));
    }
    Ok(())
}
