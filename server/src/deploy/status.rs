//! The status of a stack: its stored state and, per host, what the host has now compared
//! with the current version (each service's container, its state, and the drift).
//!
//! Owns: the status document. Must not: change anything (it reads the host through one
//! `container.list` command per host).

use futures_util::future::join_all;
use serde_json::{json, Value};

use super::host::HostRun;
use super::Deployer;
use crate::commands::Principal;
use crate::error::{ApiError, ApiResult};
use crate::stacks::reconcile::{drift, DriftState};
use crate::stacks::StackPlan;
use crate::store::{Role, StackHost, StackRecord};

fn ts(ms: i64) -> Value {
    Value::String(protocol::time::format_rfc3339(
        ms.div_euclid(1000),
        ms.rem_euclid(1000) as u32,
    ))
}

impl Deployer {
    /// Every stack with its status per host.
    pub async fn list(&self, who: &Principal) -> ApiResult<Vec<Value>> {
        who.require(Role::Viewer)?;
        let stacks = self.store.list_stacks().await?;
        let docs = join_all(stacks.iter().map(|s| self.document(who, s))).await;
        docs.into_iter().collect()
    }

    /// One stack with its status per host. Errors: `forbidden`, `not_found`.
    pub async fn status(&self, who: &Principal, name: &str) -> ApiResult<Value> {
        who.require(Role::Viewer)?;
        let stack = self
            .store
            .get_stack(name)
            .await?
            .ok_or_else(|| ApiError::not_found("stack not found"))?;
        self.document(who, &stack).await
    }

    async fn document(&self, who: &Principal, s: &StackRecord) -> ApiResult<Value> {
        let hosts = self.store.stack_hosts(&s.name).await?;
        let plan = self.load(&s.name, s.version).await.map(|l| l.stack.plan());
        let docs = join_all(hosts.iter().map(|h| self.host_status(who, h, &plan))).await;
        let in_sync = !docs.is_empty() && docs.iter().all(|d| d["in_sync"] == true);
        Ok(json!({
            "name": s.name,
            "version": s.version,
            "targets": s.targets,
            "rollout_id": s.rollout_id,
            "removing": s.removing.is_some(),
            "created_by": s.created_by,
            "created_at": ts(s.created_at),
            "updated_at": ts(s.updated_at),
            "in_sync": in_sync,
            "hosts": docs,
        }))
    }

    /// One host: its stored state, and what it has now against the current version.
    async fn host_status(
        &self,
        who: &Principal,
        h: &StackHost,
        plan: &Result<StackPlan, String>,
    ) -> Value {
        let host_name = match self.store.get_host_cached(&h.host_id).await {
            Ok(Some(host)) => Some(host.name),
            _ => None,
        };
        let mut doc = json!({
            "host_id": h.host_id,
            "host_name": host_name,
            "state": h.state,
            "wanted_version": h.wanted_version,
            "applied_version": h.applied_version,
            "error": h.error,
            "updated_at": ts(h.updated_at),
            "services": [],
            "drift": Value::Null,
            "in_sync": false,
            "observe_error": Value::Null,
        });
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                doc["observe_error"] = json!({ "code": "internal", "message": e });
                return doc;
            }
        };
        let run = HostRun {
            d: self,
            who,
            host_id: &h.host_id,
            origin: format!("stack:{}", plan.project),
        };
        let observed = match run.observe_containers(&plan.project).await {
            Ok(o) => o,
            Err(e) => {
                doc["observe_error"] = json!(e);
                return doc;
            }
        };
        let services = drift(plan, &observed);
        let drifted = services.iter().any(|s| s.state != DriftState::InSync);
        let current = h.applied_version == Some(h.wanted_version) && h.state == "deployed";
        doc["in_sync"] = json!(current && !drifted);
        doc["drift"] = json!(drifted);
        doc["services"] = json!(services);
        doc
    }
}
