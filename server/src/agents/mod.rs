//! Agents that dial in: the [`AgentManager`] and the WebSocket endpoint ([`ws`]).
//!
//! Owns: the registry of live sessions (one per agent: a new connection replaces the old
//! one), routing commands to a session and matching each `command_response` to its waiting
//! request, the per-agent settings pushed with `config_update`, and shutdown of every
//! session. Handlers and adapters ask the manager ("execute this on agent X", "is X
//! online?", "disconnect X"); none of them touches the registry. That keeps "where is this
//! agent's session" in one place, so a later multi-replica version can route to a session
//! held by another replica behind the same interface.
//! Must not: know HTTP or the REST API.

pub mod queue;
pub mod sampling;
pub mod signing;
pub mod streams;
pub mod ws;

pub use streams::{AgentStream, StreamHead, StreamReader, StreamRequest, StreamWriter};

use protocol::{
    AgentSettings, CommandPayload, ConfigUpdatePayload, DisconnectPayload, Envelope, ErrorBody,
    ErrorCode, Message, Operation,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

use crate::audit::Auditor;
use crate::auth::FailureLimiter;
use crate::config::AgentConfig;
use crate::crypto::KeyBox;
use crate::feed::Feed;
use crate::metrics::Metrics;
use crate::store::Store;

type Reply = oneshot::Sender<Result<Value, ErrorBody>>;

/// A command sent now (not queued) whose requester waits: kept until its answer arrives so
/// it can be sent again, with the same idempotency key, when the agent reconnects.
#[derive(Debug)]
struct Flight {
    agent_ref: String,
    /// The host it was sent for: it is sent again only to a session bound to that host.
    host_id: Option<String>,
    payload: CommandPayload,
    /// The session it was last sent on.
    session_id: String,
    /// The link dropped at least once while it was in flight.
    link_dropped: bool,
    order: u64,
}

/// Someone waiting for a command's answer, and the host the answer must come from.
struct Watcher {
    host_id: Option<String>,
    tx: Reply,
}

/// The sending end of a session's command queue.
///
/// Envelopes travel boxed. A tokio channel allocates its first block of 32 slots when it is
/// created: 32 inline envelopes (288 bytes each) cost every idle agent 9 KiB per queue, 32
/// boxes 256 bytes.
#[derive(Debug, Clone)]
struct CommandTx(mpsc::Sender<Box<Envelope>>);

impl CommandTx {
    fn try_send(&self, env: Envelope) -> Result<(), mpsc::error::TrySendError<Box<Envelope>>> {
        self.0.try_send(Box::new(env))
    }

    async fn send(&self, env: Envelope) -> Result<(), mpsc::error::SendError<Box<Envelope>>> {
        self.0.send(Box::new(env)).await
    }
}

/// The sending end of a session's stream control queue (unbounded; boxed like
/// [`CommandTx`]).
#[derive(Debug)]
struct StreamControlTx(mpsc::UnboundedSender<Box<Envelope>>);

impl StreamControlTx {
    fn send(&self, env: Envelope) -> Result<(), mpsc::error::SendError<Box<Envelope>>> {
        self.0.send(Box::new(env))
    }
}

/// One authenticated WebSocket session of an agent.
#[derive(Debug)]
pub struct Session {
    /// `docker_agents.id`.
    pub agent_ref: String,
    /// The id the agent authenticated with.
    pub agent_id: String,
    pub host_id: Option<String>,
    pub session_id: String,
    /// The hash of the token the agent authenticated with (to end the session when that
    /// token stops being valid).
    token_hash: TokenHash,
    pub version: String,
    pub capabilities: Vec<String>,
    /// Unix ms.
    pub connected_at: i64,
    tx: CommandTx,
    /// Stream control (`stream_open`, `stream_credit`, `stream_cancel`): after commands,
    /// before data.
    stream_tx: StreamControlTx,
    /// Stream data frames and `stream_end`: sent when no control message waits.
    data_tx: mpsc::Sender<streams::DataOut>,
    /// The protocol version agreed in `auth_response`.
    pub protocol_version: u32,
    streams: streams::Table,
    close: watch::Sender<Option<String>>,
    /// Turns false when the session ended (after cleanup started).
    alive: watch::Sender<bool>,
    /// The HMAC signer when the agent signs its messages.
    signer: Option<signing::Signer>,
    /// A heartbeat is being written to the database.
    heartbeat_write: AtomicBool,
    /// False while the socket is open but heartbeats stopped (3 missed intervals).
    online: AtomicBool,
    /// Microseconds; 0 while unknown.
    rtt_micros: AtomicU64,
    heartbeat_ms: AtomicU64,
    command_timeout_ms: AtomicU64,
}

impl Session {
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    fn set_online(&self, v: bool) -> bool {
        self.online.swap(v, Ordering::Relaxed)
    }

    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn set_rtt(&self, d: Duration) {
        self.rtt_micros
            .store((d.as_micros() as u64).max(1), Ordering::Relaxed);
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms.load(Ordering::Relaxed))
    }

    /// Asks the session to close (sends `disconnect` with `reason`, then a close frame).
    pub fn close(&self, reason: &str) {
        let _ = self.close.send(Some(reason.to_string()));
    }

    /// Fails every open stream (the socket is gone). Commands in flight stay: they are
    /// sent again when the agent reconnects.
    fn fail_all(&self, reason: &str) {
        self.streams.fail_all(reason);
        let _ = self.alive.send(false);
    }

    /// Whether the session still runs.
    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// Completes when the session has ended.
    pub async fn ended(&self) {
        let mut rx = self.alive.subscribe();
        let _ = rx.wait_for(|v| !*v).await;
    }

    /// Open passthrough streams.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }
}

/// A token hash that `Debug` never shows.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TokenHash(pub(crate) String);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(***)")
    }
}

/// What the API shows about a live session.
#[derive(Debug, Clone)]
pub struct LiveStatus {
    pub online: bool,
    pub session_id: String,
    pub rtt: Option<Duration>,
    pub connected_at: i64,
    pub version: String,
    pub capabilities: Vec<String>,
}

pub(crate) struct Inner {
    pub(crate) config: AgentConfig,
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) feed: Feed,
    pub(crate) audit: Auditor,
    pub(crate) auth_limiter: FailureLimiter,
    /// Which failed handshakes are written down.
    pub(crate) failure_sampler: sampling::FailureSampler,
    pub(crate) server_id: String,
    pub(crate) keys: KeyBox,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    flights: Mutex<HashMap<String, Flight>>,
    watchers: Mutex<HashMap<String, Vec<Watcher>>>,
    /// Hosts whose queue is being delivered, and whether new work arrived meanwhile.
    pub(crate) deliverers: Mutex<HashMap<String, bool>>,
    pub(crate) nonces: signing::AgentNonces,
    flight_order: AtomicU64,
    shutting_down: AtomicBool,
    emptied: tokio::sync::Notify,
}

/// The registry of live agent sessions and the command router.
#[derive(Clone)]
pub struct AgentManager {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentManager")
            .field("live", &self.live_count())
            .finish()
    }
}

/// Forgets a flight and its watchers when its requester stops waiting (answer, timeout or
/// dropped request).
struct FlightGuard<'a> {
    mgr: &'a AgentManager,
    id: String,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.mgr.flights().remove(&self.id);
        self.mgr.watchers().remove(&self.id);
    }
}

/// What to run on an agent now.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// The command id (the envelope id).
    pub id: String,
    pub idempotency_key: String,
    pub host_id: Option<String>,
    pub timeout: Duration,
}

impl AgentManager {
    pub fn new(
        config: AgentConfig,
        store: Store,
        metrics: Arc<Metrics>,
        feed: Feed,
        audit: Auditor,
        server_id: String,
        keys: KeyBox,
    ) -> AgentManager {
        let auth_limiter = FailureLimiter::new(config.auth_failures_per_minute);
        AgentManager {
            inner: Arc::new(Inner {
                config,
                store,
                metrics,
                feed,
                audit,
                auth_limiter,
                failure_sampler: sampling::FailureSampler::default(),
                server_id,
                keys,
                sessions: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                watchers: Mutex::new(HashMap::new()),
                deliverers: Mutex::new(HashMap::new()),
                nonces: signing::AgentNonces::default(),
                flight_order: AtomicU64::new(0),
                shutting_down: AtomicBool::new(false),
                emptied: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn config(&self) -> &AgentConfig {
        &self.inner.config
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        self.inner.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watchers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Watcher>>> {
        self.inner
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in the answer to command `id`, which must come from an agent of
    /// `host_id`.
    pub(crate) fn watch(
        &self,
        id: &str,
        host_id: Option<&str>,
    ) -> oneshot::Receiver<Result<Value, ErrorBody>> {
        let (tx, rx) = oneshot::channel();
        self.watchers()
            .entry(id.to_string())
            .or_default()
            .push(Watcher {
                host_id: host_id.map(str::to_owned),
                tx,
            });
        rx
    }

    /// Whether somebody waits for command `id`.
    pub(crate) fn is_watched(&self, id: &str) -> bool {
        self.watchers().contains_key(id)
    }

    /// Whether a request is waiting for the answer to command `id`.
    pub(crate) fn awaits_answer(&self, id: &str) -> bool {
        self.watchers().contains_key(id)
    }

    /// An answer from `session` to command `id`: hands it to every watcher. Returns whether
    /// anybody waited. Answers from an agent of another host are ignored.
    pub(crate) fn deliver_answer(
        &self,
        session: &Session,
        id: &str,
        result: Result<Value, ErrorBody>,
    ) -> bool {
        let ws = {
            let mut map = self.watchers();
            match map.get(id) {
                Some(ws) if ws.iter().all(|w| w.host_id == session.host_id) => map.remove(id),
                Some(_) => {
                    tracing::warn!(agent_id = %session.agent_id, id, "answer for a command of another host: ignored");
                    return false;
                }
                None => None,
            }
        };
        self.flights().remove(id);
        match ws {
            Some(ws) => {
                for w in ws {
                    let _ = w.tx.send(result.clone());
                }
                true
            }
            None => false,
        }
    }

    fn get(&self, agent_ref: &str) -> Option<Arc<Session>> {
        self.sessions().get(agent_ref).cloned()
    }

    /// Number of live sessions.
    pub fn live_count(&self) -> usize {
        self.sessions().len()
    }

    /// The live session of an agent (by `docker_agents.id`), if any.
    pub fn status(&self, agent_ref: &str) -> Option<LiveStatus> {
        self.get(agent_ref).map(|s| LiveStatus {
            online: s.is_online(),
            session_id: s.session_id.clone(),
            rtt: s.rtt(),
            connected_at: s.connected_at,
            version: s.version.clone(),
            capabilities: s.capabilities.clone(),
        })
    }

    /// Whether the agent has a live session that is not silent.
    pub fn is_online(&self, agent_ref: &str) -> bool {
        self.get(agent_ref).is_some_and(|s| s.is_online())
    }

    /// An online agent bound to `host_id`, preferring `preferred`. A session bound to another
    /// host (an agent moved since the host named it) never serves `host_id`.
    pub fn online_agent_for_host(&self, host_id: &str, preferred: Option<&str>) -> Option<String> {
        if let Some(p) = preferred {
            if self
                .get(p)
                .is_some_and(|s| s.is_online() && s.host_id.as_deref() == Some(host_id))
            {
                return Some(p.to_string());
            }
        }
        self.sessions()
            .values()
            .find(|s| s.is_online() && s.host_id.as_deref() == Some(host_id))
            .map(|s| s.agent_ref.clone())
    }

    /// Runs `op` for `host_id` on the agent and waits for its `command_response`, at most
    /// `timeout`, with a fresh command id as the idempotency key. See [`AgentManager::run`].
    pub async fn execute(
        &self,
        host_id: &str,
        agent_ref: &str,
        op: &Operation,
        timeout: Duration,
    ) -> Result<Value, ErrorBody> {
        let id = uuid::Uuid::new_v4().to_string();
        let spec = CommandSpec {
            idempotency_key: id.clone(),
            id,
            host_id: Some(host_id.to_string()),
            timeout,
        };
        self.run(agent_ref, op, &spec).await
    }

    /// The agent's online session, when it is bound to `host_id` (any host when `None`).
    ///
    /// Errors: `agent_offline` (no online session, or the session serves another host: the
    /// agent was moved since the host named it).
    fn bound_session(
        &self,
        agent_ref: &str,
        host_id: Option<&str>,
    ) -> Result<Arc<Session>, ErrorBody> {
        let s = self
            .get(agent_ref)
            .filter(|s| s.is_online())
            .ok_or_else(|| {
                ErrorBody::new(ErrorCode::AgentOffline, "the host's agent is not connected")
            })?;
        if host_id.is_some_and(|h| s.host_id.as_deref() != Some(h)) {
            return Err(ErrorBody::new(
                ErrorCode::AgentOffline,
                "the host's agent is not connected (the agent now serves another host)",
            ));
        }
        Ok(s)
    }

    /// Sends `op` to the agent's live session now and waits for its `command_response`, at
    /// most `spec.timeout`. When the link drops meanwhile, the request keeps waiting: the
    /// command is sent again, with the same idempotency key, as soon as the agent
    /// reconnects, and its real answer is returned.
    ///
    /// The command goes only to a session bound to `spec.host_id`, and only an answer from
    /// a session bound to that host is taken.
    ///
    /// Errors: `agent_offline` (no online session bound to the host), `unsupported`
    /// (capability missing), `rate_limited` (too many commands in flight), `timeout` (the
    /// link stayed up but no answer came), `outcome_unknown` (the link dropped while the
    /// command was in flight and no answer came in time: it may or may not have run), or the
    /// agent's own error.
    pub async fn run(
        &self,
        agent_ref: &str,
        op: &Operation,
        spec: &CommandSpec,
    ) -> Result<Value, ErrorBody> {
        let s = self.bound_session(agent_ref, spec.host_id.as_deref())?;
        check_capability(&s, op)?;
        let payload = CommandPayload {
            operation: op.name().to_string(),
            params: op.params(),
            timeout: Some(spec.timeout.as_secs().max(1)),
            idempotency_key: Some(spec.idempotency_key.clone()),
        };
        {
            let mut flights = self.flights();
            let mine = flights
                .values()
                .filter(|f| f.agent_ref == agent_ref)
                .count();
            if mine >= self.inner.config.max_pending_commands {
                return Err(ErrorBody::new(
                    ErrorCode::RateLimited,
                    "too many commands in flight for this agent",
                ));
            }
            flights.insert(
                spec.id.clone(),
                Flight {
                    agent_ref: agent_ref.to_string(),
                    host_id: spec.host_id.clone().or_else(|| s.host_id.clone()),
                    payload: payload.clone(),
                    session_id: s.session_id.clone(),
                    link_dropped: false,
                    order: self.inner.flight_order.fetch_add(1, Ordering::Relaxed),
                },
            );
        }
        let rx = self.watch(&spec.id, spec.host_id.as_deref().or(s.host_id.as_deref()));
        let _guard = FlightGuard {
            mgr: self,
            id: spec.id.clone(),
        };
        let env = Envelope::new(spec.id.clone(), Message::Command(payload));
        match s.tx.try_send(env) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(ErrorBody::new(
                    ErrorCode::RateLimited,
                    "the agent's send queue is full",
                ))
            }
            // The session is ending: the command goes out again when the agent is back.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if let Some(f) = self.flights().get_mut(&spec.id) {
                    f.link_dropped = true;
                }
            }
        }
        match tokio::time::timeout(spec.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(outcome_unknown()),
            Err(_) => {
                let dropped = self.flights().get(&spec.id).is_some_and(|f| f.link_dropped);
                if dropped {
                    Err(outcome_unknown())
                } else {
                    Err(ErrorBody::new(
                        ErrorCode::Timeout,
                        format!(
                            "the agent did not answer within {} s",
                            spec.timeout.as_secs_f64()
                        ),
                    ))
                }
            }
        }
    }

    /// Opens a Docker API passthrough stream for `host_id` on the agent's live session (its
    /// answer comes on that session, which is bound to `host_id`).
    ///
    /// Errors: `agent_offline` (no online session bound to the host), `unsupported` (the
    /// agent speaks a protocol older than [`protocol::STREAMS_PROTOCOL_VERSION`]),
    /// `rate_limited` (too many open streams on this agent).
    pub fn open_stream(
        &self,
        host_id: &str,
        agent_ref: &str,
        req: StreamRequest,
    ) -> Result<AgentStream, ErrorBody> {
        let s = self.bound_session(agent_ref, Some(host_id))?;
        streams::open(&s, req)
    }

    /// The command timeout of the agent's live session (the server's default otherwise).
    pub fn command_timeout_of(&self, agent_ref: &str) -> Duration {
        self.get(agent_ref)
            .map(|s| s.command_timeout())
            .unwrap_or(self.inner.config.command_timeout.get())
    }

    /// Closes the agent's live session at once (revocation, host deletion).
    pub fn disconnect(&self, agent_ref: &str, reason: &str) -> bool {
        match self.get(agent_ref) {
            Some(s) => {
                s.close(reason);
                true
            }
            None => false,
        }
    }

    /// Closes the live session of `agent` (its row as stored now) when the token it
    /// authenticated with is no longer valid: not the current token, nor the previous one
    /// within its grace period. Returns whether a session was closed.
    pub fn end_session_without_valid_token(
        &self,
        agent: &crate::store::Agent,
        reason: &str,
    ) -> bool {
        let Some(s) = self.get(&agent.id) else {
            return false;
        };
        let now = crate::store::now_ms();
        let used = &s.token_hash.0;
        let current = crate::auth::hashes_equal(used, &agent.auth_token_hash);
        let previous = agent
            .prev_token_hash
            .as_deref()
            .is_some_and(|p| crate::auth::hashes_equal(used, p))
            && agent.prev_token_valid_until.is_some_and(|t| t > now);
        if current || previous {
            return false;
        }
        s.close(reason);
        true
    }

    /// Applies new settings to the live session and sends `config_update`.
    pub fn push_settings(&self, agent_ref: &str, settings: AgentSettings) -> bool {
        let Some(s) = self.get(agent_ref) else {
            return false;
        };
        if let Some(h) = settings.heartbeat_interval {
            s.heartbeat_ms.store(h.max(1) * 1000, Ordering::Relaxed);
        }
        if let Some(c) = settings.command_timeout {
            s.command_timeout_ms
                .store(c.max(1) * 1000, Ordering::Relaxed);
        }
        let env = Envelope::new(
            uuid::Uuid::new_v4().to_string(),
            Message::ConfigUpdate(ConfigUpdatePayload { config: settings }),
        );
        s.tx.try_send(env).is_ok()
    }

    /// Stops accepting agents, closes every session and waits (at most `deadline`) until
    /// their cleanup ran.
    pub async fn shutdown(&self, deadline: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let all: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        for s in &all {
            s.close("server shutting down");
        }
        let wait = async {
            loop {
                let notified = self.inner.emptied.notified();
                if self.live_count() == 0 {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(deadline, wait).await.is_err() {
            tracing::warn!(
                left = self.live_count(),
                "agent sessions did not close before the deadline"
            );
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Registers a new session; an older session of the same agent is closed.
    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        agent_ref: &str,
        agent_id: &str,
        host_id: Option<String>,
        token_hash: String,
        version: String,
        capabilities: Vec<String>,
        heartbeat: Duration,
        command_timeout: Duration,
        protocol_version: u32,
        signer: Option<signing::Signer>,
    ) -> (Arc<Session>, Queues) {
        let (tx, rx) = mpsc::channel(self.inner.config.max_pending_commands.max(8) + 8);
        let (stream_tx, stream_rx) = mpsc::unbounded_channel();
        // A few frames: enough to keep the socket busy, small enough that control never
        // waits behind much data.
        let (data_tx, data_rx) = mpsc::channel(8);
        let (close, close_rx) = watch::channel(None);
        let (alive, _) = watch::channel(true);
        let session = Arc::new(Session {
            agent_ref: agent_ref.to_string(),
            agent_id: agent_id.to_string(),
            host_id,
            session_id: uuid::Uuid::new_v4().to_string(),
            token_hash: TokenHash(token_hash),
            version,
            capabilities,
            connected_at: crate::store::now_ms(),
            tx: CommandTx(tx),
            stream_tx: StreamControlTx(stream_tx),
            data_tx,
            protocol_version,
            streams: streams::Table::default(),
            close,
            alive,
            signer,
            heartbeat_write: AtomicBool::new(false),
            online: AtomicBool::new(true),
            rtt_micros: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(heartbeat.as_millis() as u64),
            command_timeout_ms: AtomicU64::new(command_timeout.as_millis() as u64),
        });
        let old = self
            .sessions()
            .insert(agent_ref.to_string(), session.clone());
        if let Some(old) = old {
            old.close("replaced by a newer connection of the same agent");
            old.fail_all("replaced by a newer connection of the same agent");
        }
        self.resend_flights(&session);
        (
            session,
            Queues {
                commands: rx,
                stream_control: stream_rx,
                data: data_rx,
                close: close_rx,
            },
        )
    }

    /// Removes `session` if it is still the agent's current one. Returns whether it was.
    fn unregister(&self, session: &Session) -> bool {
        let removed = {
            let mut map = self.sessions();
            match map.get(&session.agent_ref) {
                Some(cur) if cur.session_id == session.session_id => {
                    map.remove(&session.agent_ref);
                    true
                }
                _ => false,
            }
        };
        session.fail_all("the agent disconnected");
        for f in self.flights().values_mut() {
            if f.session_id == session.session_id {
                f.link_dropped = true;
            }
        }
        self.inner.emptied.notify_waiters();
        removed
    }

    /// Sends the commands that were in flight when the agent's previous session ended
    /// again on `session`, in their original order and with their idempotency keys.
    /// A command sent for another host (the agent was moved since) is not sent again: its
    /// requester learns at once that its outcome is unknown.
    fn resend_flights(&self, session: &Arc<Session>) {
        let (mut again, elsewhere): (Vec<(u64, String, CommandPayload)>, Vec<String>) = {
            let mut flights = self.flights();
            let mut elsewhere = Vec::new();
            let again = flights
                .iter_mut()
                .filter(|(_, f)| {
                    f.agent_ref == session.agent_ref && f.session_id != session.session_id
                })
                .filter_map(|(id, f)| {
                    if f.host_id.is_some() && f.host_id != session.host_id {
                        elsewhere.push(id.clone());
                        return None;
                    }
                    f.link_dropped = true;
                    f.session_id = session.session_id.clone();
                    Some((f.order, id.clone(), f.payload.clone()))
                })
                .collect();
            (again, elsewhere)
        };
        for id in elsewhere {
            self.flights().remove(&id);
            for w in self.watchers().remove(&id).into_iter().flatten() {
                let _ = w.tx.send(Err(outcome_unknown()));
            }
        }
        if again.is_empty() {
            return;
        }
        again.sort_by_key(|(o, _, _)| *o);
        tracing::info!(agent_id = %session.agent_id, n = again.len(), "sending commands in flight again after reconnection");
        let tx = session.tx.clone();
        tokio::spawn(async move {
            for (_, id, payload) in again {
                if tx
                    .send(Envelope::new(id, Message::Command(payload)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// The live session that should serve `host_id` (preferring `preferred`).
    pub(crate) fn session_for_host(
        &self,
        host_id: &str,
        preferred: Option<&str>,
    ) -> Option<Arc<Session>> {
        let r = self.online_agent_for_host(host_id, preferred)?;
        self.get(&r)
    }
}

/// The receiving ends of a session's outbound queues, drained by the session loop in
/// priority order: commands and other control, stream control, then data.
pub(crate) struct Queues {
    pub(crate) commands: mpsc::Receiver<Box<Envelope>>,
    pub(crate) stream_control: mpsc::UnboundedReceiver<Box<Envelope>>,
    pub(crate) data: mpsc::Receiver<streams::DataOut>,
    pub(crate) close: watch::Receiver<Option<String>>,
}

/// Settings the agent is told about: the agent's overrides or the server's defaults.
pub fn effective_settings(
    config: &AgentConfig,
    agent: &crate::store::Agent,
) -> (Duration, Duration) {
    let hb = agent
        .heartbeat_interval
        .filter(|v| *v > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(config.heartbeat_interval.get());
    let ct = agent
        .command_timeout
        .filter(|v| *v > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(config.command_timeout.get());
    (hb, ct)
}

fn outcome_unknown() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::OutcomeUnknown,
        "the link to the agent dropped while the command was in flight and no answer arrived in time; \
         it may or may not have run",
    )
}

pub(crate) fn check_capability(s: &Session, op: &Operation) -> Result<(), ErrorBody> {
    if let Some(cap) = op.required_capability() {
        if !s.capabilities.iter().any(|c| c == cap) {
            return Err(ErrorBody::new(
                ErrorCode::Unsupported,
                format!("{} needs the agent capability {cap:?}", op.name()),
            ));
        }
    }
    Ok(())
}

pub(crate) fn disconnect_envelope(reason: &str) -> Envelope {
    Envelope::new(
        uuid::Uuid::new_v4().to_string(),
        Message::Disconnect(DisconnectPayload {
            reason: Some(reason.to_string()),
        }),
    )
}
