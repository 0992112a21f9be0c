//! This server as one replica of several on one PostgreSQL database: its identity, its
//! heartbeat, and where every agent's session is held (presence).
//!
//! - [`Cluster::join`] registers the replica id with a new epoch. Claims of the id's previous
//!   lives are dropped and the sessions they recorded reset, so a restarted replica reclaims
//!   nothing stale.
//! - [`Cluster::claim`] (at an agent's handshake) records that this replica, in its epoch,
//!   holds the agent's session; it is refused when the epoch has moved on (a newer process
//!   with the same id). [`Cluster::release`] (at close) removes only the claim of that session.
//! - [`Cluster::run`] heartbeats every `replica_heartbeat_interval`, drops the claims of
//!   replicas silent for [`MISSED_HEARTBEATS`] intervals (resetting the sessions they
//!   recorded), and refreshes the in-memory view of every claim that
//!   [`Cluster::holder_of_agent`] and [`Cluster::holder_of_host`] answer from. A claim counts
//!   only while its replica heartbeats, whatever the view's age.
//! - [`credential::Credential`]: the secret replicas forward to each other with.
//! - [`lock::ServeLock`]: SQLite runs one replica.
//!
//! Owns: the replica's identity and epoch, presence, liveness. Must not: touch sessions (the
//! agent registry does), or reach other replicas.

pub mod credential;
pub mod lock;
pub mod notify;
pub mod peer_feed;
pub mod transport;

pub use crate::store::MISSED_HEARTBEATS;
pub use credential::Credential;
pub use lock::ServeLock;
pub use notify::{Event, Notifier, WakeUp};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

use crate::config::Config;
use crate::crypto::KeyBox;
use crate::store::{now_ms, ClaimRefused, Presence, ReplicaRecord, Store};

/// Who this replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub advertise_url: String,
    pub region: Option<String>,
    /// The CA this replica trusts for the other replicas' `https://` URLs.
    pub replica_ca: Option<std::path::PathBuf>,
}

impl Identity {
    pub fn of(config: &Config) -> Identity {
        Identity {
            id: config.replica_id(),
            advertise_url: config.advertise_url(),
            region: config.region.clone(),
            replica_ca: config.replica_ca.clone(),
        }
    }
}

/// The replica that holds an agent's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub agent_ref: String,
    pub session_id: String,
    pub replica: ReplicaRecord,
}

impl Holder {
    /// Whether the holding replica still heartbeats.
    pub fn alive(&self) -> bool {
        self.replica.alive_at(now_ms())
    }
}

/// Every claim as last read, by agent.
#[derive(Debug, Default)]
struct View {
    by_agent: HashMap<String, Holder>,
    /// Agent refs by host id.
    by_host: HashMap<String, Vec<String>>,
    /// Every replica but this one, as last read.
    others: Vec<ReplicaRecord>,
}

/// The beat of a replica's periodic work: a tick every interval (late ticks are delayed, not
/// bunched) until a stop signal.
pub(crate) struct Ticks {
    tick: tokio::time::Interval,
    stop: watch::Receiver<bool>,
}

impl Ticks {
    pub(crate) fn new(every: Duration, stop: watch::Receiver<bool>) -> Ticks {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { tick, stop }
    }

    /// Waits for the next tick; false once the stop signal turns true (or its sender is gone).
    pub(crate) async fn next(&mut self) -> bool {
        loop {
            if *self.stop.borrow() {
                return false;
            }
            tokio::select! {
                _ = self.tick.tick() => return true,
                r = self.stop.changed() => {
                    if r.is_err() {
                        return false;
                    }
                }
            }
        }
    }
}

/// This replica's part in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

struct Inner {
    store: Store,
    me: Identity,
    epoch: i64,
    interval: Duration,
    view: RwLock<View>,
    credential: Credential,
    /// The one client this replica reaches the others with.
    client: transport::ReplicaClient,
    notifier: Notifier,
    /// Turns true when [`Cluster::run`] ends (the replica is stopping).
    stopping: watch::Sender<bool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.0.me.id)
            .field("epoch", &self.0.epoch)
            .finish_non_exhaustive()
    }
}

/// `claim` failed: the session must not go on.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// A newer start of this replica id replaced this process.
    #[error("this replica ({0}) was replaced by a newer start with the same id")]
    Replaced(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Cluster {
    /// Registers this replica with a new epoch; drops the claims and resets the sessions its
    /// previous lives left.
    pub async fn join(
        store: Store,
        keys: &KeyBox,
        me: Identity,
        interval: Duration,
    ) -> anyhow::Result<Cluster> {
        let credential = Credential::load_or_create(&store, keys).await?;
        let client = transport::client(me.replica_ca.as_deref())?;
        let interval_ms = interval.as_millis().max(1) as i64;
        let epoch = store
            .replica_started(&me.id, &me.advertise_url, me.region.as_deref(), interval_ms)
            .await?;
        let dropped = store.drop_stale_claims(&me.id, epoch).await?;
        let reset = store.reset_sessions_of(&me.id).await?;
        if dropped > 0 || reset > 0 {
            tracing::info!(
                dropped,
                reset,
                "agent sessions left by a previous run of this replica are gone"
            );
        }
        tracing::info!(replica = %me.id, epoch, advertise_url = %me.advertise_url, "replica joined");
        let c = Cluster(Arc::new(Inner {
            notifier: Notifier::new(store.clone(), &me.id),
            store,
            me,
            epoch,
            interval,
            view: RwLock::new(View::default()),
            credential,
            client,
            stopping: watch::channel(false).0,
        }));
        c.refresh().await;
        Ok(c)
    }

    pub fn id(&self) -> &str {
        &self.0.me.id
    }

    pub fn epoch(&self) -> i64 {
        self.0.epoch
    }

    pub fn identity(&self) -> &Identity {
        &self.0.me
    }

    /// The credential replicas forward with.
    pub fn credential(&self) -> &Credential {
        &self.0.credential
    }

    /// The client to reach other replicas with (`http://` or, trusting `replica_ca`,
    /// `https://`): one pool, cheap to clone.
    pub fn client(&self) -> transport::ReplicaClient {
        self.0.client.clone()
    }

    /// Wake-ups to and from the other replicas.
    pub fn notifier(&self) -> &Notifier {
        &self.0.notifier
    }

    /// Whether another replica heartbeats, as of the last refresh (no copy of the view:
    /// asked on every queued command).
    pub fn has_peers(&self) -> bool {
        let now = now_ms();
        let view = self.0.view.read().unwrap_or_else(|p| p.into_inner());
        view.others.iter().any(|r| r.alive_at(now))
    }

    /// The other replicas that heartbeat, as of the last refresh.
    pub fn peers(&self) -> Vec<ReplicaRecord> {
        let now = now_ms();
        let view = self.0.view.read().unwrap_or_else(|p| p.into_inner());
        view.others
            .iter()
            .filter(|r| r.alive_at(now))
            .cloned()
            .collect()
    }

    /// Completes once this replica is stopping: what other replicas keep open here (the
    /// internal feed they follow) ends then, so the shutdown does not wait for it.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// How often the view is refreshed.
    pub fn interval(&self) -> Duration {
        self.0.interval
    }

    /// This replica holds the session `session_id` of agent `agent_ref` (bound to `host_id`).
    pub async fn claim(
        &self,
        agent_ref: &str,
        host_id: Option<&str>,
        session_id: &str,
    ) -> Result<(), ClaimError> {
        let me = &self.0.me;
        match self
            .0
            .store
            .claim_agent(agent_ref, host_id, &me.id, self.0.epoch, session_id)
            .await?
        {
            Ok(()) => Ok(()),
            Err(ClaimRefused::StaleEpoch) => Err(ClaimError::Replaced(me.id.clone())),
        }
    }

    /// The session `session_id` of agent `agent_ref` closed here.
    pub async fn release(&self, agent_ref: &str, session_id: &str) {
        if let Err(e) = self.0.store.release_agent(agent_ref, session_id).await {
            tracing::error!(error = %e, "could not release the agent's presence");
        }
    }

    /// The live replica holding agent `agent_ref`'s session, as of the last refresh.
    pub fn holder_of_agent(&self, agent_ref: &str) -> Option<Holder> {
        let view = self.0.view.read().unwrap_or_else(|p| p.into_inner());
        view.by_agent.get(agent_ref).filter(|h| h.alive()).cloned()
    }

    /// A live replica other than this one holding a session of an agent bound to `host_id`,
    /// preferring the agent `preferred`.
    pub fn holder_of_host(&self, host_id: &str, preferred: Option<&str>) -> Option<Holder> {
        let view = self.0.view.read().unwrap_or_else(|p| p.into_inner());
        let remote = |h: &&Holder| h.alive() && h.replica.id != self.0.me.id;
        if let Some(h) = preferred.and_then(|p| view.by_agent.get(p)).filter(remote) {
            return Some(h.clone());
        }
        view.by_host
            .get(host_id)?
            .iter()
            .filter_map(|a| view.by_agent.get(a))
            .find(remote)
            .cloned()
    }

    /// Heartbeats, sweeps silent replicas and refreshes the view until `stop` turns true;
    /// then marks this replica gone at once.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let mut ticks = Ticks::new(self.0.interval, stop);
        while ticks.next().await {
            self.beat().await;
        }
        self.0.stopping.send_replace(true);
        if let Err(e) = self.0.store.replica_stopped(self.id(), self.0.epoch).await {
            tracing::warn!(error = %e, "could not mark this replica stopped");
        }
    }

    /// One heartbeat, sweep and refresh.
    async fn beat(&self) {
        match self
            .0
            .store
            .replica_heartbeat(self.id(), self.0.epoch)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                replica = %self.id(),
                epoch = self.0.epoch,
                "another process started with this replica id: this one's agent claims are refused"
            ),
            Err(e) => tracing::warn!(error = %e, "replica heartbeat failed"),
        }
        self.refresh().await;
    }

    /// Reads the other replicas' claims (every use of the view skips this replica's own,
    /// which its agent registry knows); drops those of replicas that stopped heartbeating.
    async fn refresh(&self) {
        let claims = match self.0.store.list_presence(Some(self.id())).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading agent presence failed");
                return;
            }
        };
        let now = now_ms();
        let mut dead: Vec<(String, i64)> = claims
            .iter()
            .filter(|p| !p.replica.alive_at(now) && p.replica.id != self.0.me.id)
            .map(|p| (p.replica.id.clone(), p.replica.epoch))
            .collect();
        dead.sort();
        dead.dedup();
        for (id, epoch) in &dead {
            self.sweep(id, *epoch).await;
        }
        let mut view = build_view(
            claims
                .into_iter()
                .filter(|p| !dead.iter().any(|(id, _)| *id == p.replica.id)),
        );
        view.others = self.other_replicas().await;
        *self.0.view.write().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// Every replica row but this one's (none when the read fails: nobody to follow now).
    async fn other_replicas(&self) -> Vec<ReplicaRecord> {
        if self.0.store.backend() != crate::store::Backend::Postgres {
            return Vec::new();
        }
        match self.0.store.list_replicas().await {
            Ok(rs) => rs.into_iter().filter(|r| r.id != self.0.me.id).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the replicas failed");
                Vec::new()
            }
        }
    }

    /// Replica `id` stopped heartbeating: its claims and the sessions it recorded are gone.
    async fn sweep(&self, id: &str, epoch: i64) {
        // Sessions first: once the claims are gone, the sessions they recorded are reset too.
        let reset = self.0.store.reset_sessions_of(id).await;
        let dropped = self.0.store.drop_claims_of(id, epoch).await;
        match (dropped, reset) {
            (Ok(d), Ok(r)) => {
                tracing::warn!(replica = %id, claims = d, sessions = r, "a replica stopped heartbeating: its agent claims are dropped")
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(replica = %id, error = %e, "dropping a silent replica's claims failed")
            }
        }
    }
}

fn build_view(claims: impl Iterator<Item = Presence>) -> View {
    let mut view = View::default();
    for p in claims {
        if let Some(h) = &p.host_id {
            view.by_host
                .entry(h.clone())
                .or_default()
                .push(p.agent_ref.clone());
        }
        view.by_agent.insert(
            p.agent_ref.clone(),
            Holder {
                agent_ref: p.agent_ref,
                session_id: p.session_id,
                replica: p.replica,
            },
        );
    }
    view
}

/// The serve lock of the SQLite database `config` names; `None` on PostgreSQL, where any
/// number of replicas share the database.
pub fn serve_lock(config: &Config) -> anyhow::Result<Option<ServeLock>> {
    match crate::store::Store::sqlite_file_of(config.database_url(), &config.data_dir) {
        Some(file) => Ok(Some(ServeLock::take(&file)?)),
        None => Ok(None),
    }
}
