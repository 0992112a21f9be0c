//! Stack deployment: stacks stored with every version of their file, deployed to hosts as a
//! rollout, each host brought to the file by a run of commands, and their status per host.
//!
//! ```text
//! deploy(principal, StackRequest) ─ parse (400: every problem with its path) ─ targets
//!   ─ store the version (file and env encrypted) ─ audit stack.create|update ─ rollout
//! rollout (the engine's, kind `stack_rollout`), per host: HostRun ─ observe (container.list waits in the queue for an offline
//!   host) ─ pulls ─ observe ─ reconcile ─ each step a command (origin stack:NAME); health
//!   waits poll container.inspect ─ stack_hosts row: deployed | failed (the error, e.g. the
//!   agent's policy refusal)
//! status(name): per host, observe now and compare with the current version (drift)
//! ```
//!
//! Owns: the stack's stored life (versions, per-host state, removal), the run on one host
//! ([`host`]), the status, and registry credentials. Must not: parse or reconcile compose
//! itself (`stacks` does), reach a host except through `Commands::submit`, or know HTTP.

mod host;
mod kind;
mod requests;
mod run;
mod status;

pub use host::registry_of;
pub use kind::{StackKind, StackSpec, KIND};
pub use requests::{Accepted, RegistryRequest, StackRequest};

use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::audit::Auditor;
use crate::commands::Commands;
use crate::crypto::KeyBox;
use crate::fleet::Fleet;
use crate::rollouts::Rollouts;
use crate::store::Store;

/// A run on a host that waits for the host to come back frees its place meanwhile: the
/// rollout that drives it gives it a way to say so.
pub trait Parking: Send {
    /// The run waits for its host (a queued command).
    fn park(&mut self) -> BoxFuture<'_, ()>;
    /// The run goes on.
    fn unpark(&mut self) -> BoxFuture<'_, ()>;
}

/// What a run does on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Bring the host to the stack's version.
    Apply,
    /// Remove the stack from the host; its volumes too when `volumes`.
    Remove { volumes: bool },
}

/// The owner of stack deployments. Cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    commands: Commands,
    store: Store,
    keys: KeyBox,
    audit: Auditor,
    fleet: Fleet,
    /// The engine that carries out each change over the hosts (see [`Deployer::with_rollouts`]).
    rollouts: Option<Rollouts>,
    /// One run at a time per stack and host (`stack/host`).
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deployer")
    }
}

impl Deployer {
    /// A deployer that runs stack jobs ([`StackKind`] hands it to the rollout engine).
    pub fn new(
        commands: Commands,
        store: Store,
        keys: KeyBox,
        audit: Auditor,
        fleet: Fleet,
    ) -> Deployer {
        Deployer {
            commands,
            store,
            keys,
            audit,
            fleet,
            rollouts: None,
            locks: Default::default(),
        }
    }

    /// The deployer that also starts changes, as rollouts of `rollouts` (which must know
    /// the [`StackKind`]).
    pub fn with_rollouts(mut self, rollouts: Rollouts) -> Deployer {
        self.rollouts = Some(rollouts);
        self
    }

    /// The lock of one stack on one host.
    fn lock_of(&self, stack: &str, host_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks
            .entry(format!("{stack}/{host_id}"))
            .or_default()
            .clone()
    }
}
