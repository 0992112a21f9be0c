//! The runner of one rollout: starts its targets in order, at most `max_parallel` at once,
//! stops starting them when the rollout is cancelled or its failure budget is spent, waits
//! for the targets in flight, and writes the final state.
//!
//! A restart loses nothing: the targets are read from the store in pages (pending, and those
//! a previous run left running or queued, in rollout order), and each job continues from the
//! command ids its target records, with the same idempotency keys.
//!
//! Owns: the loop of one rollout and its final state. Must not: know what a job does.

use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{full_counts, Job, RolloutRecord, Rollouts, Run, Stop, Target, TargetRecord};
use crate::auth::Principal;
use crate::store::{RolloutState, TargetState};

/// Targets read per page.
const PAGE: i64 = 500;
/// How often a runner looks for a cancel asked for elsewhere (another replica).
const CANCEL_POLL: Duration = Duration::from_secs(5);

/// How the starting of targets ended.
enum Flow {
    /// Every target was started.
    Done,
    /// The rollout stopped starting targets.
    Stopped,
    /// The server shuts down.
    Shutdown,
}

/// The principal a rollout's work runs for: its creator, as recorded.
fn owner_of(rec: &RolloutRecord) -> Principal {
    Principal {
        token_id: rec.token_id.clone(),
        user: rec.created_by.clone(),
        role: rec.created_role,
        ip: rec.source_ip.as_deref().and_then(|s| s.parse().ok()),
    }
}

/// Drives rollout `rec` with `job` until its final state (or the server's shutdown).
pub(super) async fn drive(
    owner: &Rollouts,
    rec: RolloutRecord,
    job: Arc<dyn Job>,
    stop: Arc<watch::Sender<Option<Stop>>>,
) {
    let p = owner.parts();
    let counts = p
        .store
        .target_counts(std::slice::from_ref(&rec.id))
        .await
        .ok()
        .and_then(|mut m| m.remove(&rec.id))
        .unwrap_or_default();
    let run = Arc::new(Run {
        id: rec.id.clone(),
        kind: rec.kind.clone(),
        store: p.store.clone(),
        feed: p.feed.clone(),
        sem: Arc::new(Semaphore::new(rec.max_parallel.clamp(1, 10_000) as usize)),
        stop,
        failures: (*counts.get(&TargetState::Failed).unwrap_or(&0)).into(),
        max_failures: rec.max_failures,
    });
    if rec.cancel_requested_at.is_some() {
        run.stop(Stop::Cancelled);
    }
    if run.failures.load(Ordering::SeqCst) > run.max_failures {
        run.stop(Stop::Tripped);
    }
    let poll = tokio::spawn(watch_cancel(run.clone()));
    let mut shutdown = owner.inner.shutdown.subscribe();
    let mut tasks = JoinSet::new();
    let flow = start_targets(&run, &job, &owner_of(&rec), &mut tasks, &mut shutdown).await;
    if !matches!(flow, Flow::Shutdown) {
        if matches!(flow, Flow::Stopped) {
            cancel_pending(&run).await;
        }
        let drained = tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => true,
            _ = shutdown.wait_for(|s| *s) => false,
        };
        if drained {
            finish(owner, &run, &rec).await;
        }
    }
    tasks.abort_all();
    poll.abort();
}

/// Starts every open target in order, one per free slot.
async fn start_targets(
    run: &Arc<Run>,
    job: &Arc<dyn Job>,
    who: &Principal,
    tasks: &mut JoinSet<()>,
    shutdown: &mut watch::Receiver<bool>,
) -> Flow {
    let open = [
        TargetState::Pending,
        TargetState::Running,
        TargetState::Queued,
    ];
    let mut stop_rx = run.stop.subscribe();
    let mut after = None;
    let mut failures = 0u32;
    loop {
        let page = match run.store.list_targets(&run.id, &open, after, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                failures += 1;
                tracing::warn!(rollout = %run.id, error = %e, "reading the rollout's targets failed");
                if failures > 60 {
                    return Flow::Shutdown;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        failures = 0;
        if page.is_empty() {
            return Flow::Done;
        }
        for t in page {
            after = Some(t.position);
            let permit = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => return Flow::Shutdown,
                _ = stop_rx.wait_for(Option::is_some) => return Flow::Stopped,
                p = run.sem.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return Flow::Shutdown,
                },
            };
            while tasks.try_join_next().is_some() {}
            let target = run_target(run.clone(), job.clone(), who.clone(), t, permit);
            tasks.spawn(target);
        }
    }
}

/// Runs one target's job and records how it ended.
async fn run_target(
    run: Arc<Run>,
    job: Arc<dyn Job>,
    owner: Principal,
    rec: TargetRecord,
    permit: OwnedSemaphorePermit,
) {
    let mut t = Target {
        rollout_id: rec.bulk_id,
        host_id: rec.host_id,
        host_name: rec.host_name,
        position: rec.position,
        owner,
        command_ids: rec.command_ids,
        state: rec.state,
        permit: Some(permit),
        stop: run.stop.subscribe(),
        run: run.clone(),
    };
    if t.state == TargetState::Pending {
        t.set_state(TargetState::Running).await;
    }
    let end = job.run(&mut t).await;
    let state = if end.state.is_final() {
        end.state
    } else {
        TargetState::Failed
    };
    t.state = state;
    t.write(state, end.result.as_ref()).await;
    t.permit = None;
    run.progress(&t.host_id, state);
    if state == TargetState::Failed {
        let failed = run.failures.fetch_add(1, Ordering::SeqCst) + 1;
        if failed > run.max_failures {
            run.stop(Stop::Tripped);
        }
    }
}

/// Targets not started when the rollout stopped: `cancelled`.
async fn cancel_pending(run: &Run) {
    match run.store.cancel_pending_targets(&run.id).await {
        Ok(hosts) => {
            for h in hosts {
                run.progress(&h, TargetState::Cancelled);
            }
        }
        Err(e) => {
            tracing::error!(rollout = %run.id, error = %e, "could not cancel the rollout's pending targets")
        }
    }
}

/// Stops the rollout when a cancel was recorded elsewhere (another server replica).
async fn watch_cancel(run: Arc<Run>) {
    loop {
        tokio::time::sleep(CANCEL_POLL).await;
        if let Ok(Some(rec)) = run.store.get_rollout(&run.id).await {
            if rec.cancel_requested_at.is_some() {
                run.stop(Stop::Cancelled);
                return;
            }
        }
    }
}

/// Every target is final: the rollout's final state, its `bulk_done` message and audit.
async fn finish(owner: &Rollouts, run: &Run, rec: &RolloutRecord) {
    let p = owner.parts();
    let counts = p
        .store
        .target_counts(std::slice::from_ref(&rec.id))
        .await
        .ok()
        .and_then(|mut m| m.remove(&rec.id))
        .unwrap_or_default();
    let n = |s: TargetState| counts.get(&s).copied().unwrap_or(0);
    let stop = *run.stop.borrow();
    let (state, reason) = if n(TargetState::Succeeded) == rec.total {
        (RolloutState::Succeeded, None)
    } else {
        match stop {
            Some(Stop::Cancelled) => {
                let by = p
                    .store
                    .get_rollout(&rec.id)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.cancelled_by)
                    .unwrap_or_else(|| "a user".into());
                (RolloutState::Cancelled, Some(format!("cancelled by {by}")))
            }
            Some(Stop::Tripped) => (
                RolloutState::Failed,
                Some(format!(
                    "stopped after {} hosts failed (max_failures {})",
                    n(TargetState::Failed),
                    rec.max_failures
                )),
            ),
            None => (
                RolloutState::Failed,
                Some(format!(
                    "{} of {} hosts failed, {} skipped",
                    n(TargetState::Failed),
                    rec.total,
                    n(TargetState::Skipped)
                )),
            ),
        }
    };
    if let Err(e) = p
        .store
        .finish_rollout(&rec.id, state, reason.as_deref())
        .await
    {
        tracing::error!(rollout = %rec.id, error = %e, "could not record the rollout's final state");
        return;
    }
    let counts = full_counts(Some(&counts));
    p.feed.publish(
        "bulk_done",
        None,
        json!({ "bulk_id": rec.id, "kind": rec.kind, "state": state, "counts": counts }),
    );
    let action = format!("{}.finish", rec.kind);
    let detail = json!({ "counts": counts, "reason": reason });
    p.audit
        .user(
            &owner_of(rec),
            &action,
            None,
            Some(&rec.id),
            state.as_str(),
            None,
            Some(detail),
        )
        .await;
    tracing::info!(rollout = %rec.id, kind = %rec.kind, state = state.as_str(), "rollout finished");
}
