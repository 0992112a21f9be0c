//! [`AppState`]: the parts of a running server, built once and handed to the HTTP layer.
//!
//! Owns: building every part in order (store, keys, metrics, feed, audit, this replica's
//! place in the cluster, the agent
//! registry and its endpoint, the host adapters, host selection, the owner of commands, the
//! owner of rollouts with its kinds, leases, limiters), wiring the registry's signals to the
//! commands module, and continuing the rollouts a previous run left running. Part of the wiring: only
//! `app.rs`, `api/` and the entry points use it; no part below imports it (a part that needs
//! another gets it handed in, and a handler that needs only one part extracts that part
//! with `FromRef`).
//!
//! Must not: hold behaviour: it builds and hands out parts.

use anyhow::Context;
use axum::extract::FromRef;
use std::sync::Arc;

use crate::accounts::{self, Accounts};
use crate::agents::{AgentEndpoint, AgentManager};
use crate::audit::Auditor;
use crate::auth::{FailureLimiter, RateLimiter};
use crate::cluster::{Cluster, Identity};
use crate::commands::{self, Commands};
use crate::config::Config;
use crate::crypto::KeyBox;
use crate::deploy::{Deployer, StackKind};
use crate::feed::Feed;
use crate::fleet::Fleet;
use crate::hosts::Adapters;
use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::rollouts::{self, Rollouts};
use crate::store::Store;
use crate::updates::Updates;

/// Everything a handler needs: one shared [`Parts`], so a clone (every extractor and
/// middleware that takes the state makes one per request) is one reference count, not one
/// per part.
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

impl std::ops::Deref for AppState {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// The parts of the state.
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Store,
    pub agents: AgentManager,
    /// The agents' WebSocket endpoint.
    pub agent_endpoint: AgentEndpoint,
    pub adapters: Adapters,
    /// The owner of every command's life.
    pub commands: Commands,
    /// Stacks: their versions, deployments and status.
    pub deployer: Deployer,
    /// Which hosts a selector picks.
    pub fleet: Fleet,
    /// The owner of every rollout's life (bulk operations, stack changes, agent updates).
    pub rollouts: Rollouts,
    pub metrics: Arc<Metrics>,
    pub feed: Feed,
    pub audit: Auditor,
    pub keys: KeyBox,
    pub api_auth_limiter: Arc<FailureLimiter>,
    /// REST requests per API token.
    pub api_rate: Arc<RateLimiter>,
    /// Live user sessions (hijacks, followed streams, the live feed), ended on revocation.
    pub leases: Leases,
    /// Agent self-updates and the releases they install.
    pub updates: Updates,
    /// People who sign in: sessions, sign-in limits, sign-in links.
    pub accounts: Accounts,
    /// This replica: its identity, heartbeat and where every agent's session is held.
    pub cluster: Cluster,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("agents", &self.agents)
            .finish_non_exhaustive()
    }
}

impl FromRef<AppState> for AgentEndpoint {
    fn from_ref(s: &AppState) -> AgentEndpoint {
        s.agent_endpoint.clone()
    }
}

impl AppState {
    /// Opens the database (applying migrations) and builds the state.
    pub async fn new(config: Config) -> anyhow::Result<AppState> {
        let store = Store::open_with(
            config.database_url(),
            &config.data_dir,
            config.pool_settings(),
        )
        .await
        .context("opening the database")?;
        AppState::with_store(config, store).await
    }

    /// Builds the state on an already opened store.
    pub async fn with_store(config: Config, store: Store) -> anyhow::Result<AppState> {
        let keys = KeyBox::load(config.encryption_key.as_ref(), &config.data_dir)
            .context("loading the encryption key")?;
        let metrics = Arc::new(Metrics::default());
        let feed = Feed::default();
        let audit = Auditor::new(store.clone());
        let cluster = Cluster::join(
            store.clone(),
            &keys,
            Identity::of(&config),
            config.replica_heartbeat_interval.get(),
        )
        .await
        .context("joining the replicas")?;
        let server_id = cluster.id().to_string();
        let (signals_tx, signals_rx) = tokio::sync::mpsc::unbounded_channel();
        let agents = AgentManager::new(config.agent.clone(), signals_tx);
        let agent_endpoint = AgentEndpoint::new(
            agents.clone(),
            store.clone(),
            metrics.clone(),
            feed.clone(),
            audit.clone(),
            keys.clone(),
            cluster.clone(),
        );
        let default_timeout = config.agent.command_timeout.get();
        let adapters = Adapters::new(
            agents.clone(),
            keys.clone(),
            default_timeout,
            cluster.clone(),
        );
        let parts = commands::Parts {
            store: store.clone(),
            adapters: adapters.clone(),
            agents: agents.clone(),
            keys: keys.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            default_timeout,
            cluster: cluster.clone(),
        };
        let commands = Commands::new(parts, signals_rx);
        match commands.fail_orphaned().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                n,
                "commands in flight when the server stopped: marked outcome_unknown"
            ),
            Err(e) => tracing::warn!(error = %e, "could not close orphaned commands"),
        }
        let updates = Updates::new(
            store.clone(),
            agents.clone(),
            crate::releases::Shelf::new(&config.data_dir),
            feed.clone(),
            cluster.clone(),
        );
        let s = &config.sessions;
        let policy = accounts::Policy {
            idle: s.idle_timeout.get(),
            max_age: s.max_age.get(),
            failures_per_address: s.failures_per_address,
            failures_per_user: s.failures_per_user,
        };
        let parts = RolloutParts {
            store: &store,
            commands: &commands,
            adapters: &adapters,
            updates: &updates,
            keys: &keys,
            audit: &audit,
            feed: &feed,
            server_id: &server_id,
        };
        let (fleet, deployer, rollouts) = start_rollouts(parts).await;
        Ok(AppState(Arc::new(Parts {
            updates,
            deployer,
            accounts: Accounts::new(store.clone(), keys.clone(), policy),
            api_rate: Arc::new(RateLimiter::new(config.api_requests_per_second)),
            api_auth_limiter: Arc::new(FailureLimiter::new(config.api_auth_failures_per_minute)),
            leases: Leases::new(store.clone()),
            config: Arc::new(config),
            store,
            agents,
            agent_endpoint,
            adapters,
            commands,
            fleet,
            rollouts,
            metrics,
            feed,
            audit,
            keys,
            cluster,
        })))
    }
}

/// What the rollout engine and its kinds are built from.
struct RolloutParts<'a> {
    store: &'a Store,
    commands: &'a Commands,
    adapters: &'a Adapters,
    updates: &'a Updates,
    keys: &'a KeyBox,
    audit: &'a Auditor,
    feed: &'a Feed,
    server_id: &'a str,
}

/// The fleet, the stack deployer and the rollout engine with every kind of rollout (bulk
/// operations, stacks, agent updates), and the rollouts a previous run left running resumed.
async fn start_rollouts(parts: RolloutParts<'_>) -> (Fleet, Deployer, Rollouts) {
    let RolloutParts {
        store,
        commands,
        adapters,
        updates,
        keys,
        audit,
        feed,
        server_id,
    } = parts;
    let fleet = Fleet::new(store.clone(), adapters.clone());
    let deployer = Deployer::new(
        commands.clone(),
        store.clone(),
        keys.clone(),
        audit.clone(),
        fleet.clone(),
    );
    let stack_kind = StackKind {
        deployer: deployer.clone(),
    };
    let bulk = rollouts::bulk::BulkKind {
        commands: commands.clone(),
        fleet: fleet.clone(),
    };
    let agent_update = rollouts::agent_update::AgentUpdateKind {
        updates: updates.clone(),
    };
    let rollouts = Rollouts::new(
        rollouts::Parts {
            store: store.clone(),
            keys: keys.clone(),
            feed: feed.clone(),
            audit: audit.clone(),
            server_id: server_id.to_string(),
        },
        vec![Arc::new(bulk), Arc::new(stack_kind), Arc::new(agent_update)],
    );
    let deployer = deployer.with_rollouts(rollouts.clone());
    match rollouts.resume().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, "continuing rollouts left running"),
        Err(e) => tracing::warn!(error = %e, "could not continue the rollouts left running"),
    }
    (fleet, deployer, rollouts)
}
