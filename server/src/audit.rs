//! The audit log: who did what, on which host, with which outcome, when.
//!
//! Owns: building audit entries for user and agent actions and writing them. A failed write
//! is logged, never turned into a failed request. Must not: record secrets or operation
//! params (they may hold environment values).

use serde_json::Value;
use std::net::IpAddr;

use crate::auth::Principal;
use crate::store::{NewAudit, Store};

#[derive(Debug, Clone)]
pub struct Auditor {
    store: Store,
}

/// `success`, `error` or `denied`.
pub fn outcome_of<T, E>(r: &Result<T, E>) -> &'static str {
    if r.is_ok() {
        "success"
    } else {
        "error"
    }
}

impl Auditor {
    pub fn new(store: Store) -> Auditor {
        Auditor { store }
    }

    pub async fn record(&self, entry: NewAudit) {
        if let Err(e) = self.store.add_audit(&entry).await {
            tracing::error!(error = %e, action = %entry.action, "could not write the audit log");
        }
    }

    /// Queues an entry for the next group commit without waiting for it (reads of the log
    /// see it). For reads, whose answer should not wait for the audit log; changes use
    /// [`Auditor::record`].
    pub fn record_background(&self, entry: NewAudit) {
        self.store.add_audit_background(entry);
    }

    /// The entry for a user's action.
    #[allow(clippy::too_many_arguments)]
    pub fn user_entry(
        who: &Principal,
        action: &str,
        host_id: Option<&str>,
        target: Option<&str>,
        outcome: &str,
        error_code: Option<&str>,
        detail: Option<Value>,
    ) -> NewAudit {
        NewAudit {
            actor_kind: "user".into(),
            actor: who.user.clone(),
            host_id: host_id.map(str::to_owned),
            action: action.into(),
            target: target.map(str::to_owned),
            outcome: outcome.into(),
            error_code: error_code.map(str::to_owned),
            detail,
            source_ip: who.ip.map(|i| i.to_string()),
        }
    }

    /// A user's action.
    #[allow(clippy::too_many_arguments)]
    pub async fn user(
        &self,
        who: &Principal,
        action: &str,
        host_id: Option<&str>,
        target: Option<&str>,
        outcome: &str,
        error_code: Option<&str>,
        detail: Option<Value>,
    ) {
        let entry = Self::user_entry(who, action, host_id, target, outcome, error_code, detail);
        self.record(entry).await
    }

    /// An agent's action (connect, disconnect, failed auth).
    #[allow(clippy::too_many_arguments)]
    pub async fn agent(
        &self,
        agent_id: &str,
        action: &str,
        host_id: Option<&str>,
        outcome: &str,
        error_code: Option<&str>,
        detail: Option<Value>,
        ip: Option<IpAddr>,
    ) {
        self.record(NewAudit {
            actor_kind: "agent".into(),
            actor: agent_id.to_string(),
            host_id: host_id.map(str::to_owned),
            action: action.into(),
            target: Some(agent_id.to_string()),
            outcome: outcome.into(),
            error_code: error_code.map(str::to_owned),
            detail,
            source_ip: ip.map(|i| i.to_string()),
        })
        .await
    }
}
