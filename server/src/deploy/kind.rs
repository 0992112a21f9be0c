//! The `stack_rollout` kind of rollout: a change of a stack (a version applied, or the stack
//! removed) carried out host by host by the rollout engine, with its parallelism, failure
//! budget, progress on the live feed, and its record that a restarted server continues.
//!
//! Owns: the rollout's spec of a stack change and the job that runs it on one host (one
//! [`Deployer::run_target`]). Must not: run a step itself, or keep state of its own: a
//! resumed target observes its host again, so it never repeats what is done.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

use super::{Action, Deployer, Parking};
use crate::commands::Principal;
use crate::error::ApiError;
use crate::reply;
use crate::rollouts::{Job, JobKind, Target, TargetEnd, TargetState};
use crate::store::Role;

/// The rollout kind, stored with the rollout and the prefix of its audit entries.
pub const KIND: &str = "stack_rollout";

/// What a stack rollout does on each host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    pub name: String,
    pub version: i64,
    pub action: Action,
}

impl StackSpec {
    fn parse(spec: &Value) -> Result<StackSpec, ApiError> {
        serde_json::from_value(spec.clone())
            .map_err(|e| ApiError::bad_request(format!("stack rollout: {e}")))
    }
}

/// Builds stack jobs.
#[derive(Debug, Clone)]
pub struct StackKind {
    pub deployer: Deployer,
}

impl JobKind for StackKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn check(&self, who: &Principal, spec: &Value) -> Result<(), ApiError> {
        who.require(Role::Operator)?;
        StackSpec::parse(spec).map(drop)
    }

    fn build(&self, _id: &str, spec: &Value) -> Result<Arc<dyn Job>, String> {
        let spec = StackSpec::parse(spec).map_err(|e| e.body.message)?;
        Ok(Arc::new(StackJob {
            deployer: self.deployer.clone(),
            spec,
        }))
    }
}

struct StackJob {
    deployer: Deployer,
    spec: StackSpec,
}

/// A target's slot is freed while its host is away.
struct TargetParking<'a>(&'a mut Target);

impl Parking for TargetParking<'_> {
    fn park(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.park())
    }
    fn unpark(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.unpark())
    }
}

impl Job for StackJob {
    fn run<'a>(&'a self, t: &'a mut Target) -> BoxFuture<'a, TargetEnd> {
        Box::pin(async move {
            let (owner, host_id) = (t.owner.clone(), t.host_id.clone());
            let s = &self.spec;
            let result = self
                .deployer
                .run_target(
                    &owner,
                    &s.name,
                    s.version,
                    &host_id,
                    s.action,
                    &mut TargetParking(t),
                )
                .await;
            let state = if result.is_ok() {
                TargetState::Succeeded
            } else {
                TargetState::Failed
            };
            let outcome = result.map(|()| json!({ "stack": s.name, "version": s.version }));
            TargetEnd {
                state,
                result: Some(reply::encode(&outcome)),
            }
        })
    }
}
