//! A change of a stack carried out on its hosts: a rollout of the engine (`rollouts`), whose
//! job runs once per host ([`Deployer::run_target`]) and records the host's state
//! (`deploying`, then `deployed` or `failed` with the error).
//!
//! Owns: the per-host record of a run, and starting the rollout of a change. Must not:
//! decide the steps (`host` and `stacks::reconcile` do), or schedule hosts itself (the
//! engine does: parallelism, failure budget, offline hosts, restarts).

use protocol::ErrorBody;
use serde_json::json;

use super::host::HostRun;
use super::kind::{StackSpec, KIND};
use super::requests::stored_policy;
use super::{Accepted, Action, Deployer, Parking};
use crate::commands::Principal;
use crate::error::{ApiError, ApiResult};
use crate::rollouts::Plan;
use crate::store::StackRecord;

impl Deployer {
    /// Starts a change of `stack` on `hosts` (id, name) as a rollout of the engine; the
    /// answer names it. Without hosts there is nothing to roll out (`rollout_id` null).
    pub(super) async fn start(
        &self,
        who: &Principal,
        stack: &StackRecord,
        hosts: Vec<(String, String)>,
        action: Action,
    ) -> ApiResult<Accepted> {
        let mut accepted = Accepted {
            name: stack.name.clone(),
            version: stack.version,
            rollout_id: None,
        };
        if hosts.is_empty() {
            return Ok(accepted);
        }
        let rollouts = self.rollouts.as_ref().ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("the deployer was built without rollouts"))
        })?;
        let spec = StackSpec {
            name: stack.name.clone(),
            version: stack.version,
            action,
        };
        let plan = Plan {
            kind: KIND,
            summary: json!({ "stack": stack.name, "version": stack.version, "action": action }),
            spec: serde_json::to_value(&spec).map_err(ApiError::internal)?,
            targets: hosts,
            policy: stored_policy(&stack.targets),
        };
        let rec = rollouts.start(who, plan).await?;
        self.store.set_stack_rollout(&stack.name, &rec.id).await?;
        accepted.rollout_id = Some(rec.id);
        Ok(accepted)
    }

    /// Runs `action` for version `version` of stack `name` on `host_id`, recording how it
    /// went on the host's row. A run for a version older than the host's wanted one has
    /// nothing to do (a newer change superseded it).
    pub async fn run_target(
        &self,
        who: &Principal,
        name: &str,
        version: i64,
        host_id: &str,
        action: Action,
        parking: &mut dyn Parking,
    ) -> Result<(), ErrorBody> {
        let lock = self.lock_of(name, host_id);
        let _one_at_a_time = lock.lock().await;
        let row = self
            .store
            .stack_hosts(name)
            .await
            .map_err(|e| ErrorBody::internal(format!("reading the stack: {e}")))?
            .into_iter()
            .find(|h| h.host_id == host_id);
        let Some(row) = row else {
            // The stack or this host left it meanwhile.
            return Ok(());
        };
        if action == Action::Apply && (row.wanted_version > version || row.state == "removing") {
            return Ok(());
        }
        let result = self
            .run_host(who, name, version, host_id, action, parking)
            .await;
        self.record(name, version, host_id, action, &result).await;
        result
    }

    async fn run_host(
        &self,
        who: &Principal,
        name: &str,
        version: i64,
        host_id: &str,
        action: Action,
        parking: &mut dyn Parking,
    ) -> Result<(), ErrorBody> {
        let loaded = self
            .load(name, version)
            .await
            .map_err(ErrorBody::internal)?;
        let plan = loaded.stack.plan();
        if action == Action::Apply {
            let _ = self
                .store
                .set_stack_host(name, host_id, "deploying", None, None)
                .await;
        }
        let run = HostRun {
            d: self,
            who,
            host_id,
            origin: format!("stack:{name}"),
        };
        match action {
            Action::Apply => run.apply(&plan, parking).await,
            Action::Remove { volumes } => run.teardown(&plan, volumes, parking).await,
        }
    }

    /// Stores how a run ended on its host.
    async fn record(
        &self,
        name: &str,
        version: i64,
        host_id: &str,
        action: Action,
        result: &Result<(), ErrorBody>,
    ) {
        let stored = match (action, result) {
            (Action::Apply, Ok(())) => {
                self.store
                    .set_stack_host(name, host_id, "deployed", Some(version), None)
                    .await
            }
            (Action::Remove { .. }, Ok(())) => {
                let r = self.store.remove_stack_host(name, host_id).await;
                if r.is_ok() {
                    if let Ok(true) = self.store.delete_stack_if_done(name).await {
                        tracing::info!(stack = %name, "stack removed from every host");
                    }
                }
                r
            }
            (_, Err(e)) => {
                let state = match action {
                    Action::Apply => "failed",
                    Action::Remove { .. } => "removing",
                };
                let err = json!({ "code": e.code, "message": e.message, "details": e.details });
                self.store
                    .set_stack_host(name, host_id, state, None, Some(&err))
                    .await
            }
        };
        if let Err(e) = stored {
            tracing::error!(stack = %name, host = %host_id, error = %e, "could not record a stack run");
        }
    }
}
