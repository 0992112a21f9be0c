//! The state the agent's threads share, built once at start and passed down.
//!
//! Owns: what each part of the agent needs from the others (the daemon client, the queues
//! towards the server, the command memory, the signer, the latest health figures). Must not:
//! start threads or connect (that is [`crate::runtime`]).

use crate::config::Config;
use crate::daemon::DockerClient;
use crate::health;
use crate::ids::MessageIds;
use crate::ops::dedup::Memory;
use crate::ops::events::EventBuffer;
use crate::ops::outbox::Outbox;
use crate::settings::Settings;
use crate::signing::Signer;
use crate::stats::Stats;
use crate::update::Updater;
use crate::waker::Waker;
use std::sync::Arc;

/// State shared by the agent's threads.
pub struct Agent {
    /// The settings as loaded and validated (policy, ids, limits).
    pub config: Config,
    pub daemon: DockerClient,
    /// What the server may change at any time.
    pub settings: Arc<Settings>,
    pub stats: Arc<Stats>,
    /// The newest health figures, kept fresh by the prober.
    pub health: Arc<health::Latest>,
    pub events: Arc<EventBuffer>,
    /// Wakes the session thread when something is queued for the server.
    pub waker: Arc<Waker>,
    /// Responses and progress for the server, kept while the link is down.
    pub outbox: Outbox,
    /// Commands running and answered, and the state file of their idempotency keys.
    pub commands: Memory,
    /// Signs and verifies messages when `agent.signing_key` is set.
    pub signer: Option<Signer>,
    pub ids: MessageIds,
    /// Self-update: the record of the last update and the one being installed.
    pub update: Updater,
}

impl Agent {
    /// The latest health snapshot.
    pub fn snapshot(&self) -> health::Snapshot {
        self.health.get()
    }

    /// A fresh message id: `{kind}-{random}-{n}`.
    pub fn next_id(&self, kind: &str) -> String {
        self.ids.next(kind)
    }
}

impl crate::update::Host for Agent {
    fn updater(&self) -> &Updater {
        &self.update
    }

    fn send(&self, m: protocol::Message) {
        self.outbox
            .send(protocol::Envelope::new(self.next_id("upd"), m));
    }

    fn commands_running(&self) -> u64 {
        self.stats
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
