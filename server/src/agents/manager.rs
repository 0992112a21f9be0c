//! The [`AgentManager`]: the registry of live agent sessions and the command router.
//!
//! Owns: the sessions (one per agent: a new connection replaces the old one), commands in
//! flight on them (sent again with the same idempotency key when the agent reconnects), the
//! waiters matching each `command_response` to its request (only from a session bound to
//! the command's host), and shutdown. Its state is private: the session endpoint and the
//! layers above use its methods. Upward news (an agent of a host came online, an answer
//! nobody waits for) leaves as a [`Signal`], so this module never depends on the layer that
//! acts on it.
//! Must not: know HTTP, the REST API or the command history.

use protocol::{
    AgentSettings, CommandPayload, ConfigUpdatePayload, Envelope, ErrorBody, ErrorCode, Message,
    Operation,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use super::session::{NewSession, Queues, Session};
use super::streams::{self, AgentStream, StreamOpen};
use crate::config::AgentConfig;
use crate::reply::Outcome;
use crate::store::{now_ms, Agent};

type Reply = oneshot::Sender<Outcome>;

/// Extra time a queued command's delivery gives an agent beyond the command's own timeout.
const GRACE: Duration = Duration::from_secs(5);

/// What the registry tells the layer above it.
#[derive(Debug)]
pub enum Signal {
    /// An agent bound to the host authenticated: commands waiting for it can go out.
    HostOnline { host_id: String },
    /// An agent answered a command nobody waits for any more (late, or after a restart).
    LateAnswer {
        host_id: Option<String>,
        command_id: String,
        outcome: Outcome,
    },
}

/// A command sent now (not queued) whose requester waits: kept until its answer arrives so
/// it can be sent again, with the same idempotency key, when the agent reconnects.
#[derive(Debug)]
struct Flight {
    agent_ref: String,
    /// The host it was sent for: it is sent again only to a session bound to that host.
    host_id: String,
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

/// What to run on an agent now.
#[derive(Debug, Clone)]
pub struct Call {
    /// The command id (the envelope id).
    pub id: String,
    pub idempotency_key: String,
    pub timeout: Duration,
    /// Who asked (`NAME (ROLE)`), for the log of a replica a command is forwarded to.
    pub caller: Option<String>,
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

struct Inner {
    config: AgentConfig,
    signals: mpsc::UnboundedSender<Signal>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    flights: Mutex<HashMap<String, Flight>>,
    watchers: Mutex<HashMap<String, Vec<Watcher>>>,
    flight_order: AtomicU64,
    shutting_down: AtomicBool,
    emptied: tokio::sync::Notify,
}

/// The registry of live agent sessions and the command router. Cheap to clone.
#[derive(Clone)]
pub struct AgentManager {
    inner: Arc<Inner>,
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

impl AgentManager {
    /// A registry that reports upward news on `signals`.
    pub fn new(config: AgentConfig, signals: mpsc::UnboundedSender<Signal>) -> AgentManager {
        AgentManager {
            inner: Arc::new(Inner {
                config,
                signals,
                sessions: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                watchers: Mutex::new(HashMap::new()),
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
    fn watch(&self, id: &str, host_id: Option<&str>) -> oneshot::Receiver<Outcome> {
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

    /// Whether a request is waiting for the answer to command `id`.
    pub(super) fn awaits_answer(&self, id: &str) -> bool {
        self.watchers().contains_key(id)
    }

    /// An answer from `session` to command `id`: hands it to every watcher (the last one gets
    /// it without a copy: a result can be a large tree). Gives it back when nobody waited, or
    /// when the command belongs to another host (its watchers are left waiting; the caller
    /// passes it on as a late answer, which checks the host again).
    pub(super) fn deliver_answer(
        &self,
        session: &Session,
        id: &str,
        result: Outcome,
    ) -> Result<(), Outcome> {
        let ws = {
            let mut map = self.watchers();
            match map.get(id) {
                Some(ws) if ws.iter().all(|w| w.host_id == session.host_id) => map.remove(id),
                Some(_) => {
                    tracing::warn!(agent_id = %session.agent_id, id, "answer for a command of another host: ignored");
                    return Err(result);
                }
                None => None,
            }
        };
        self.flights().remove(id);
        let Some(mut ws) = ws else {
            return Err(result);
        };
        let last = ws.pop();
        for w in ws {
            let _ = w.tx.send(result.clone());
        }
        if let Some(w) = last {
            let _ = w.tx.send(result);
        }
        Ok(())
    }

    /// A `command_response` from `session`: to its waiter, or, when nobody waits any more,
    /// upward as a [`Signal::LateAnswer`] (its result is still worth storing).
    pub(super) fn command_answered(&self, session: &Session, id: &str, outcome: Outcome) {
        let Err(outcome) = self.deliver_answer(session, id, outcome) else {
            return;
        };
        tracing::debug!(agent_id = %session.agent_id, id, "answer for no waiting command");
        let _ = self.inner.signals.send(Signal::LateAnswer {
            host_id: session.host_id.clone(),
            command_id: id.to_string(),
            outcome,
        });
    }

    /// The session of an agent bound to `host_id` is ready for commands.
    pub(super) fn host_online(&self, host_id: &str) {
        let _ = self.inner.signals.send(Signal::HostOnline {
            host_id: host_id.to_string(),
        });
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

    /// The agents (row ids) with a live session here.
    pub fn live_agents(&self) -> Vec<String> {
        self.sessions().keys().cloned().collect()
    }

    /// The hosts an online agent here is bound to.
    pub fn online_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .sessions()
            .values()
            .filter(|s| s.is_online())
            .filter_map(|s| s.host_id.clone())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// An online agent bound to `host_id`, preferring `preferred`. A session bound to another
    /// host (an agent moved since the host named it) never serves `host_id`.
    pub fn online_agent_for_host(&self, host_id: &str, preferred: Option<&str>) -> Option<String> {
        self.session_for_host(host_id, preferred)
            .map(|s| s.agent_ref.clone())
    }

    /// The agent that serves `host_id`: an online one bound to it (preferring `preferred`),
    /// else `preferred` itself (offline, or silent). `None` when the host has no agent.
    pub fn serving_agent(&self, host_id: &str, preferred: Option<&str>) -> Option<String> {
        self.online_agent_for_host(host_id, preferred)
            .or_else(|| preferred.map(str::to_owned))
    }

    /// Whether an agent bound to `host_id` is online, and the live session to show for the
    /// host (of its [`AgentManager::serving_agent`]).
    pub fn live_for_host(
        &self,
        host_id: &str,
        preferred: Option<&str>,
    ) -> (bool, Option<LiveStatus>) {
        let online = self.session_for_host(host_id, preferred).is_some();
        let live = self
            .serving_agent(host_id, preferred)
            .and_then(|r| self.status(&r));
        (online, live)
    }

    fn session_for_host(&self, host_id: &str, preferred: Option<&str>) -> Option<Arc<Session>> {
        let serves = |s: &Session| s.is_online() && s.host_id.as_deref() == Some(host_id);
        if let Some(s) = preferred.and_then(|p| self.get(p)).filter(|s| serves(s)) {
            return Some(s);
        }
        self.sessions().values().find(|s| serves(s)).cloned()
    }

    /// The agent's online session, when it is bound to `host_id`.
    ///
    /// Errors: `agent_offline` (no online session, or the session serves another host: the
    /// agent was moved since the host named it).
    fn bound_session(&self, agent_ref: &str, host_id: &str) -> Result<Arc<Session>, ErrorBody> {
        let s = self
            .get(agent_ref)
            .filter(|s| s.is_online())
            .ok_or_else(not_connected)?;
        if s.host_id.as_deref() != Some(host_id) {
            return Err(ErrorBody::new(
                ErrorCode::AgentOffline,
                "the host's agent is not connected (the agent now serves another host)",
            ));
        }
        Ok(s)
    }

    /// Sends `op` for `host_id` to the agent's live session now and waits for its
    /// `command_response`, at most `call.timeout`. When the link drops meanwhile, the
    /// request keeps waiting: the command is sent again, with the same idempotency key, as
    /// soon as the agent reconnects, and its real answer is returned.
    ///
    /// The command goes only to a session bound to `host_id`, and only an answer from a
    /// session bound to that host is taken.
    ///
    /// Errors: `agent_offline` (no online session bound to the host), `unsupported`
    /// (capability missing), `rate_limited` (too many commands in flight), `timeout` (the
    /// link stayed up but no answer came), `outcome_unknown` (the link dropped while the
    /// command was in flight and no answer came in time: it may or may not have run), or the
    /// agent's own error.
    pub async fn call(
        &self,
        host_id: &str,
        agent_ref: &str,
        op: &Operation,
        call: &Call,
    ) -> Outcome {
        let s = self.bound_session(agent_ref, host_id)?;
        check_capability(&s, op)?;
        let payload = CommandPayload {
            operation: op.name().to_string(),
            params: op.params(),
            timeout: Some(call.timeout.as_secs().max(1)),
            idempotency_key: Some(call.idempotency_key.clone()),
        };
        self.add_flight(&s, host_id, &call.id, payload.clone())?;
        let rx = self.watch(&call.id, Some(host_id));
        let _guard = FlightGuard {
            mgr: self,
            id: call.id.clone(),
        };
        let env = Envelope::new(call.id.clone(), Message::Command(payload));
        match s.tx.try_send(env) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(ErrorBody::new(
                    ErrorCode::RateLimited,
                    "the agent's send queue is full",
                ))
            }
            // The session is ending: the command goes out again when the agent is back.
            Err(mpsc::error::TrySendError::Closed(_)) => self.link_dropped(&call.id),
        }
        match tokio::time::timeout(call.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(outcome_unknown()),
            Err(_) if self.flights().get(&call.id).is_some_and(|f| f.link_dropped) => {
                Err(outcome_unknown())
            }
            Err(_) => Err(ErrorBody::new(
                ErrorCode::Timeout,
                format!(
                    "the agent did not answer within {} s",
                    call.timeout.as_secs_f64()
                ),
            )),
        }
    }

    /// Records a command in flight on `s`, within the agent's limit of pending commands.
    fn add_flight(
        &self,
        s: &Session,
        host_id: &str,
        id: &str,
        payload: CommandPayload,
    ) -> Result<(), ErrorBody> {
        let mut flights = self.flights();
        let mine = flights
            .values()
            .filter(|f| f.agent_ref == s.agent_ref)
            .count();
        if mine >= self.inner.config.max_pending_commands {
            return Err(ErrorBody::new(
                ErrorCode::RateLimited,
                "too many commands in flight for this agent",
            ));
        }
        flights.insert(
            id.to_string(),
            Flight {
                agent_ref: s.agent_ref.clone(),
                host_id: host_id.to_string(),
                payload,
                session_id: s.session_id.clone(),
                link_dropped: false,
                order: self.inner.flight_order.fetch_add(1, Ordering::Relaxed),
            },
        );
        Ok(())
    }

    fn link_dropped(&self, id: &str) {
        if let Some(f) = self.flights().get_mut(id) {
            f.link_dropped = true;
        }
    }

    /// The online session that should deliver `host_id`'s queued commands (preferring the
    /// agent `preferred`), as a narrow handle.
    pub fn link_for_host(&self, host_id: &str, preferred: Option<&str>) -> Option<AgentLink> {
        self.session_for_host(host_id, preferred)
            .map(|session| AgentLink {
                mgr: self.clone(),
                session,
            })
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
        req: StreamOpen,
    ) -> Result<AgentStream, ErrorBody> {
        let s = self.bound_session(agent_ref, host_id)?;
        streams::open(&s.streams, req)
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
    pub fn end_session_without_valid_token(&self, agent: &Agent, reason: &str) -> bool {
        let Some(s) = self.get(&agent.id) else {
            return false;
        };
        let now = now_ms();
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
        s.apply(&settings);
        let env = Envelope::new(
            uuid::Uuid::new_v4().to_string(),
            Message::ConfigUpdate(ConfigUpdatePayload { config: settings }),
        );
        s.tx.try_send(env).is_ok()
    }

    /// Sends `agent_update` to the agent's live session. Refused when the agent is not
    /// connected, or its session's protocol is older than the one that has self-update.
    pub fn send_update(
        &self,
        agent_ref: &str,
        update: protocol::AgentUpdatePayload,
    ) -> Result<(), ErrorBody> {
        let s = self.get(agent_ref).ok_or_else(not_connected)?;
        if s.protocol_version < protocol::UPDATES_PROTOCOL_VERSION {
            return Err(ErrorBody::new(
                ErrorCode::Unsupported,
                format!(
                    "the agent speaks protocol {}: self-update needs {} (update it by hand once)",
                    s.protocol_version,
                    protocol::UPDATES_PROTOCOL_VERSION
                ),
            ));
        }
        let env = Envelope::new(
            uuid::Uuid::new_v4().to_string(),
            Message::AgentUpdate(update),
        );
        s.tx.try_send(env).map_err(|_| {
            ErrorBody::new(
                ErrorCode::AgentOffline,
                "the agent's queue is full or closed",
            )
        })
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
    pub(super) fn register(&self, n: NewSession) -> (Arc<Session>, Queues) {
        let (session, queues) = Session::new(n, self.inner.config.max_pending_commands);
        let old = self
            .sessions()
            .insert(session.agent_ref.clone(), session.clone());
        if let Some(old) = old {
            old.close("replaced by a newer connection of the same agent");
            old.fail_all("replaced by a newer connection of the same agent");
        }
        self.resend_flights(&session);
        (session, queues)
    }

    /// Removes `session` if it is still the agent's current one. Returns whether it was.
    pub(super) fn unregister(&self, session: &Session) -> bool {
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
        let (mut again, elsewhere) = self.take_flights_of(session);
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

    /// The agent's flights of earlier sessions: those to send again on `session` (moved to
    /// it), and the ids of those for another host.
    #[allow(clippy::type_complexity)]
    fn take_flights_of(
        &self,
        session: &Session,
    ) -> (Vec<(u64, String, CommandPayload)>, Vec<String>) {
        let mut flights = self.flights();
        let mut elsewhere = Vec::new();
        let again = flights
            .iter_mut()
            .filter(|(_, f)| f.agent_ref == session.agent_ref && f.session_id != session.session_id)
            .filter_map(|(id, f)| {
                if session.host_id.as_deref() != Some(f.host_id.as_str()) {
                    elsewhere.push(id.clone());
                    return None;
                }
                f.link_dropped = true;
                f.session_id = session.session_id.clone();
                Some((f.order, id.clone(), f.payload.clone()))
            })
            .collect();
        (again, elsewhere)
    }
}

/// A queued command going out on an [`AgentLink`]. `Debug` leaves the params out.
pub struct Outbound<'a> {
    pub id: &'a str,
    pub operation: &'a str,
    pub params: Value,
    pub idempotency_key: &'a str,
    pub timeout: Duration,
}

impl std::fmt::Debug for Outbound<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("id", &self.id)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

/// How the delivery of a queued command ended.
#[derive(Debug)]
pub enum Delivered {
    /// The agent answered.
    Answered { outcome: Outcome, took: Duration },
    /// No answer within the command's timeout (and a grace period) while the link stayed.
    NoAnswer,
    /// The link dropped before the answer.
    LinkDropped,
}

/// A handle on the online session that delivers a host's queued commands: what the queue
/// needs of a session, and nothing else.
pub struct AgentLink {
    mgr: AgentManager,
    session: Arc<Session>,
}

impl AgentLink {
    /// `docker_agents.id` of the agent.
    pub fn agent_ref(&self) -> &str {
        &self.session.agent_ref
    }

    /// The id the agent authenticated with.
    pub fn agent_id(&self) -> &str {
        &self.session.agent_id
    }

    /// Whether the agent can run `op` (`unsupported` when a capability is missing).
    pub fn check(&self, op: &Operation) -> Result<(), ErrorBody> {
        check_capability(&self.session, op)
    }

    /// Sends `cmd` and waits for its answer, while the link stays up, at most its timeout
    /// and a grace period. Nothing is kept in flight here: the caller keeps the command (and
    /// sends it again, with the same key, on the next connection).
    pub async fn send(&self, cmd: Outbound<'_>) -> Delivered {
        let s = &self.session;
        let rx = self.mgr.watch(cmd.id, s.host_id.as_deref());
        let env = Envelope::new(
            cmd.id,
            Message::Command(CommandPayload {
                operation: cmd.operation.to_string(),
                params: cmd.params,
                timeout: Some(cmd.timeout.as_secs()),
                idempotency_key: Some(cmd.idempotency_key.to_string()),
            }),
        );
        let started = Instant::now();
        let sent = tokio::time::timeout(GRACE, s.tx.send(env)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.mgr.watchers().remove(cmd.id);
            return Delivered::LinkDropped;
        }
        tracing::debug!(command = %cmd.id, agent_id = %s.agent_id, "queued command sent");
        let delivered = tokio::select! {
            r = rx => match r {
                Ok(outcome) => Delivered::Answered { outcome, took: started.elapsed() },
                // Not expected (only this call takes these watchers): not again in this run.
                Err(_) => Delivered::NoAnswer,
            },
            _ = s.ended() => Delivered::LinkDropped,
            _ = tokio::time::sleep(cmd.timeout + GRACE) => {
                tracing::warn!(command = %cmd.id, agent_id = %s.agent_id, "no answer to a queued command; sent again on the next connection");
                Delivered::NoAnswer
            }
        };
        if !matches!(delivered, Delivered::Answered { .. }) {
            self.mgr.watchers().remove(cmd.id);
        }
        delivered
    }
}

/// Settings the agent is told about: the agent's overrides or the server's defaults.
pub fn effective_settings(config: &AgentConfig, agent: &Agent) -> (Duration, Duration) {
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

/// `agent_offline`: no online session of the agent.
pub fn not_connected() -> ErrorBody {
    ErrorBody::new(ErrorCode::AgentOffline, "the host's agent is not connected")
}

fn outcome_unknown() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::OutcomeUnknown,
        "the link to the agent dropped while the command was in flight and no answer arrived in time; \
         it may or may not have run",
    )
}

fn check_capability(s: &Session, op: &Operation) -> Result<(), ErrorBody> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn session(host: &str) -> Arc<Session> {
        let n = NewSession {
            agent_ref: "ref-1".into(),
            agent_id: "agent-1".into(),
            host_id: Some(host.into()),
            token_hash: String::new(),
            version: "test".into(),
            capabilities: Vec::new(),
            heartbeat: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            protocol_version: protocol::STREAMS_PROTOCOL_VERSION,
            signer: None,
        };
        Session::new(n, 8).0
    }

    #[test]
    fn every_watcher_gets_the_answer_and_an_answer_nobody_waits_for_comes_back() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let m = AgentManager::new(AgentConfig::default(), tx);
        let s = session("h1");
        let (mut a, mut b) = (m.watch("c1", Some("h1")), m.watch("c1", Some("h1")));
        let v = serde_json::json!({ "containers": [{ "id": "x", "names": ["/a"] }] });
        assert_eq!(m.deliver_answer(&s, "c1", Ok(v.clone())), Ok(()));
        assert_eq!(a.try_recv().expect("first watcher"), Ok(v.clone()));
        assert_eq!(b.try_recv().expect("last watcher"), Ok(v.clone()));
        assert_eq!(
            m.deliver_answer(&s, "c1", Ok(v.clone())),
            Err(Ok(v.clone())),
            "nobody waits any more: the answer comes back whole"
        );
        let mut other = m.watch("c2", Some("h2"));
        assert_eq!(
            m.deliver_answer(&s, "c2", Ok(v.clone())),
            Err(Ok(v)),
            "an agent of another host cannot answer"
        );
        assert!(other.try_recv().is_err(), "its watcher still waits");
    }
}
