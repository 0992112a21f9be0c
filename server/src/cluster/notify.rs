//! Wake-ups between replicas over PostgreSQL `LISTEN/NOTIFY`: one channel ([`CHANNEL`]),
//! one listening connection per replica, small JSON payloads with ids only
//! (`{"r":"a","k":"revoke_agent","agent":"..."}`; `r` is the sender, which skips its own).
//!
//! - [`Notifier::send`] queues a [`WakeUp`]; one task sends them in order, each as its own
//!   `pg_notify` statement (never inside another transaction, never on every command's
//!   commit). `command_done` ids sent together are merged, and lists are split so a payload
//!   stays far below PostgreSQL's 8,000 bytes.
//! - [`Notifier::run`] listens until stopped. When PostgreSQL drops the connection it
//!   listens again (with backoff) and then tells every handler [`Event::Resync`] and drops
//!   every cached token and host: whatever a missed wake-up would have done is done again.
//! - The store's own cache drops ([`crate::store::CacheDrop`]) are sent as `drop_*`
//!   wake-ups; received ones are applied to the store here. Everything else goes to the
//!   handlers the layers above register with [`Notifier::on`].
//!
//! On SQLite (one replica) nothing is sent or listened to.
//!
//! Owns: the channel, the payloads and the listening connection. Must not: act on a wake-up
//! beyond the cache (the layers above do), or block a handler's caller (handlers must be
//! quick and spawn what waits).

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use crate::store::{Backend, CacheDrop, Role, Store};

/// The one channel every replica listens on.
pub const CHANNEL: &str = "docker_ctl_wake";

/// Ids at most in one `revoke_sessions` or `command_done` payload.
const IDS_PER_PAYLOAD: usize = 100;

/// What one replica tells the others. Ids only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum WakeUp {
    /// The agent (row id) is revoked, or its host deleted or rejected: its session ends.
    RevokeAgent { agent: String },
    /// The agent's settings that its session was opened with changed (signing key,
    /// signing, allowlist): the session ends and the agent reconnects.
    ReconnectAgent { agent: String },
    /// The agent's token changed: its session ends unless its token is still valid.
    AgentToken { agent: String },
    /// The API token was revoked: the live sessions it opened end.
    RevokeToken { token: String },
    /// These browser sessions were revoked: what they opened ends.
    RevokeSessions { sessions: Vec<String> },
    /// The user was deleted: every live session of theirs ends.
    RevokeUser { user: String },
    /// The user's role is now `role`: live sessions that need more end.
    LowerRole { user: String, role: Role },
    /// The host was deleted or rejected: live sessions on it, and its agents' sessions, end.
    RevokeHost { host: String },
    /// Commands were queued for the host: the replica holding its agent delivers them.
    Queue { host: String },
    /// An update (its id) of the agent was started elsewhere: the holder sends it.
    SendUpdate { agent: String, update: String },
    /// These queued commands reached their final state (for waiters on other replicas).
    CommandDone { commands: Vec<String> },
    /// The cached API token changed.
    DropToken { token: String },
    /// Every cached API token changed.
    DropTokens,
    /// The cached host changed.
    DropHost { host: String },
    /// Every cached host changed.
    DropHosts,
}

/// What a handler hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Another replica's wake-up.
    WakeUp(WakeUp),
    /// The listening connection was lost and is back: wake-ups may have been missed; do
    /// again what they would have done (check the live sessions here against the database,
    /// look at the queues of the hosts held here).
    Resync,
}

/// One payload on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    /// The sending replica.
    r: String,
    #[serde(flatten)]
    w: WakeUp,
}

type Handler = Arc<dyn Fn(&Event) + Send + Sync>;

/// Sends and hears wake-ups. Cheap to clone.
#[derive(Clone)]
pub struct Notifier(Arc<Inner>);

struct Inner {
    store: Store,
    me: String,
    /// `None` on SQLite.
    tx: Option<mpsc::UnboundedSender<WakeUp>>,
    handlers: RwLock<Vec<Handler>>,
    /// The listening connection is up.
    listening: AtomicBool,
    /// How many times a listening connection was opened.
    listens: AtomicU64,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("replica", &self.0.me)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// The notifier of replica `me`; on PostgreSQL, starts the task that sends.
    pub fn new(store: Store, me: &str) -> Notifier {
        let tx = (store.backend() == Backend::Postgres).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(send_loop(store.clone(), me.to_string(), rx));
            if let Some(drops) = store.cache_drops() {
                tokio::spawn(forward_drops(drops, tx.clone()));
            }
            tx
        });
        Notifier(Arc::new(Inner {
            store,
            me: me.to_string(),
            tx,
            handlers: RwLock::new(Vec::new()),
            listening: AtomicBool::new(false),
            listens: AtomicU64::new(0),
        }))
    }

    /// Tells the other replicas (nothing on SQLite). Returns at once.
    pub fn send(&self, w: WakeUp) {
        if let Some(tx) = &self.0.tx {
            let _ = tx.send(w);
        }
    }

    /// Whether this replica hears the others' wake-ups now (its listening connection is up).
    pub fn is_listening(&self) -> bool {
        self.0.listening.load(Ordering::SeqCst)
    }

    /// How many times this replica opened its listening connection (more than once: it
    /// was lost and opened again).
    pub fn listens(&self) -> u64 {
        self.0.listens.load(Ordering::SeqCst)
    }

    /// Calls `handler` with every wake-up from another replica and every [`Event::Resync`].
    /// It runs on the listening task: it must return quickly.
    pub fn on(&self, handler: impl Fn(&Event) + Send + Sync + 'static) {
        self.handlers().push(Arc::new(handler));
    }

    fn handlers(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Handler>> {
        self.0.handlers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn dispatch(&self, e: &Event) {
        let hs: Vec<Handler> = self
            .0
            .handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for h in hs {
            h(e);
        }
    }

    /// One payload from the channel.
    fn received(&self, payload: &str) {
        let note: Note = match serde_json::from_str(payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable wake-up was ignored");
                return;
            }
        };
        if note.r == self.0.me {
            return;
        }
        let store = &self.0.store;
        match &note.w {
            WakeUp::DropToken { token } => store.drop_cached(&CacheDrop::Token(token.clone())),
            WakeUp::DropTokens => store.drop_cached(&CacheDrop::Tokens),
            WakeUp::DropHost { host } => store.drop_cached(&CacheDrop::Host(host.clone())),
            WakeUp::DropHosts => store.drop_cached(&CacheDrop::Hosts),
            _ => self.dispatch(&Event::WakeUp(note.w)),
        }
    }

    /// Listens until `stop` turns true; listens again whenever the connection is lost.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.0.tx.is_none() {
            return;
        }
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        while !*stop.borrow() {
            let listener = match self.0.store.listener(CHANNEL).await {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "could not listen for other replicas' wake-ups");
                    if !pause(&mut stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            if !first {
                tracing::info!("listening for wake-ups again: catching up");
                self.catch_up();
            }
            first = false;
            self.0.listening.store(true, Ordering::SeqCst);
            self.0.listens.fetch_add(1, Ordering::SeqCst);
            let stopped = self.listen(listener, &mut stop).await;
            self.0.listening.store(false, Ordering::SeqCst);
            if stopped || !pause(&mut stop, backoff).await {
                return;
            }
        }
    }

    /// Hears payloads until the connection is lost (false) or `stop` turns true (true).
    async fn listen(
        &self,
        mut l: crate::store::Listener,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            tokio::select! {
                p = l.recv() => match p {
                    Some(p) => self.received(&p),
                    None => {
                        tracing::warn!("the connection listening for wake-ups was lost");
                        return false;
                    }
                },
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        return true;
                    }
                }
            }
        }
    }

    /// What missed wake-ups would have done: cached rows go, handlers look again.
    fn catch_up(&self) {
        let store = &self.0.store;
        store.drop_cached(&CacheDrop::Tokens);
        store.drop_cached(&CacheDrop::Hosts);
        self.dispatch(&Event::Resync);
    }
}

/// Waits `d`; false when `stop` turned true (or went away) meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        r = stop.changed() => r.is_ok() && !*stop.borrow(),
    }
}

/// The store's own cache drops, as wake-ups.
async fn forward_drops(
    mut drops: mpsc::UnboundedReceiver<CacheDrop>,
    tx: mpsc::UnboundedSender<WakeUp>,
) {
    while let Some(d) = drops.recv().await {
        let w = match d {
            CacheDrop::Token(token) => WakeUp::DropToken { token },
            CacheDrop::Tokens => WakeUp::DropTokens,
            CacheDrop::Host(host) => WakeUp::DropHost { host },
            CacheDrop::Hosts => WakeUp::DropHosts,
        };
        if tx.send(w).is_err() {
            return;
        }
    }
}

/// Sends queued wake-ups in order until every [`Notifier`] is gone.
async fn send_loop(store: Store, me: String, mut rx: mpsc::UnboundedReceiver<WakeUp>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        for w in merge(std::mem::take(&mut batch)) {
            let payload = match serde_json::to_string(&Note { r: me.clone(), w }) {
                Ok(p) => p,
                Err(_) => continue,
            };
            if let Err(e) = store.notify(CHANNEL, &payload).await {
                tracing::warn!(error = %e, "a wake-up to the other replicas could not be sent");
            }
        }
    }
}

/// `command_done` ids merged, and every list split into payloads of at most
/// [`IDS_PER_PAYLOAD`] ids.
fn merge(batch: Vec<WakeUp>) -> Vec<WakeUp> {
    let mut done = Vec::new();
    let mut out = Vec::new();
    for w in batch {
        match w {
            WakeUp::CommandDone { commands } => done.extend(commands),
            WakeUp::RevokeSessions { sessions } => out.extend(
                sessions
                    .chunks(IDS_PER_PAYLOAD)
                    .map(|c| WakeUp::RevokeSessions {
                        sessions: c.to_vec(),
                    }),
            ),
            w => out.push(w),
        }
    }
    out.extend(done.chunks(IDS_PER_PAYLOAD).map(|c| WakeUp::CommandDone {
        commands: c.to_vec(),
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_small_and_read_back() {
        let n = Note {
            r: "a".into(),
            w: WakeUp::RevokeAgent { agent: "x1".into() },
        };
        let p = serde_json::to_string(&n).unwrap();
        assert_eq!(p, r#"{"r":"a","k":"revoke_agent","agent":"x1"}"#);
        let back: Note = serde_json::from_str(&p).unwrap();
        assert_eq!(back.w, n.w);
        let p = serde_json::to_string(&Note {
            r: "b".into(),
            w: WakeUp::DropTokens,
        })
        .unwrap();
        assert_eq!(p, r#"{"r":"b","k":"drop_tokens"}"#);
        assert_eq!(
            serde_json::from_str::<Note>(&p).unwrap().w,
            WakeUp::DropTokens
        );
    }

    #[test]
    fn done_ids_are_merged_and_lists_split() {
        let ids = |n: usize, p: &str| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
        let out = merge(vec![
            WakeUp::CommandDone {
                commands: ids(70, "c"),
            },
            WakeUp::Queue { host: "h".into() },
            WakeUp::CommandDone {
                commands: ids(70, "d"),
            },
            WakeUp::RevokeSessions {
                sessions: ids(250, "s"),
            },
        ]);
        let sizes: Vec<usize> = out
            .iter()
            .map(|w| match w {
                WakeUp::CommandDone { commands } => commands.len(),
                WakeUp::RevokeSessions { sessions } => sessions.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, vec![0, 100, 100, 50, 100, 40]);
        for w in &out {
            let p = serde_json::to_string(&Note {
                r: "replica-with-a-long-name".into(),
                w: w.clone(),
            })
            .unwrap();
            assert!(p.len() < 8000, "{}", p.len());
        }
    }
}
