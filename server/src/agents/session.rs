//! One authenticated WebSocket session of an agent: who it is, which host it serves, its
//! outbound queues (commands and control, stream control, stream data), its open streams and
//! its liveness (online, RTT, heartbeat interval).
//!
//! Owns: the session's state and its queues' sending ends. Must not: keep a registry of
//! sessions (the [`super::AgentManager`] does) or touch the socket (the [`super::ws`] loop
//! drains the queues).

use protocol::{AgentSettings, DisconnectPayload, Envelope, Message};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use super::signing::Signer;
use super::streams;

/// The sending end of a session's command queue.
///
/// Envelopes travel boxed. A tokio channel allocates its first block of 32 slots when it is
/// created: 32 inline envelopes (288 bytes each) cost every idle agent 9 KiB per queue, 32
/// boxes 256 bytes.
#[derive(Debug, Clone)]
pub(super) struct CommandTx(mpsc::Sender<Box<Envelope>>);

impl CommandTx {
    pub(super) fn try_send(
        &self,
        env: Envelope,
    ) -> Result<(), mpsc::error::TrySendError<Box<Envelope>>> {
        self.0.try_send(Box::new(env))
    }

    pub(super) async fn send(
        &self,
        env: Envelope,
    ) -> Result<(), mpsc::error::SendError<Box<Envelope>>> {
        self.0.send(Box::new(env)).await
    }
}

/// A token hash that `Debug` never shows.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct TokenHash(pub(super) String);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(***)")
    }
}

/// What a session is made from once its agent authenticated.
#[derive(Debug)]
pub(super) struct NewSession {
    pub(super) agent_ref: String,
    pub(super) agent_id: String,
    pub(super) host_id: Option<String>,
    pub(super) token_hash: String,
    pub(super) version: String,
    pub(super) capabilities: Vec<String>,
    pub(super) heartbeat: Duration,
    pub(super) command_timeout: Duration,
    pub(super) protocol_version: u32,
    pub(super) signer: Option<Signer>,
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
    pub(super) token_hash: TokenHash,
    pub version: String,
    pub capabilities: Vec<String>,
    /// Unix ms.
    pub connected_at: i64,
    pub(super) tx: CommandTx,
    /// The protocol version agreed in `auth_response`.
    pub protocol_version: u32,
    /// Open streams, and the stream control and data lanes they send on.
    pub(super) streams: Arc<streams::Table>,
    close: watch::Sender<Option<String>>,
    /// Turns false when the session ended (after cleanup started).
    alive: watch::Sender<bool>,
    /// The HMAC signer when the agent signs its messages.
    pub(super) signer: Option<Signer>,
    /// A heartbeat is being written to the database.
    pub(super) heartbeat_write: AtomicBool,
    /// False while the socket is open but heartbeats stopped (3 missed intervals).
    online: AtomicBool,
    /// Microseconds; 0 while unknown.
    rtt_micros: AtomicU64,
    heartbeat_ms: AtomicU64,
    command_timeout_ms: AtomicU64,
}

/// The receiving ends of a session's outbound queues, drained by the session loop in
/// priority order: commands and other control, stream control, then data.
pub(super) struct Queues {
    pub(super) commands: mpsc::Receiver<Box<Envelope>>,
    pub(super) stream_control: mpsc::UnboundedReceiver<Box<Envelope>>,
    pub(super) data: mpsc::Receiver<streams::DataOut>,
    pub(super) close: watch::Receiver<Option<String>>,
}

impl Session {
    /// A new session with room for `max_pending` commands in its queue.
    pub(super) fn new(n: NewSession, max_pending: usize) -> (Arc<Session>, Queues) {
        let (tx, rx) = mpsc::channel(max_pending.max(8) + 8);
        let (stream_tx, stream_rx) = mpsc::unbounded_channel();
        // A few frames: enough to keep the socket busy, small enough that control never
        // waits behind much data.
        let (data_tx, data_rx) = mpsc::channel(8);
        let (close, close_rx) = watch::channel(None);
        let (alive, _) = watch::channel(true);
        let session = Arc::new(Session {
            agent_ref: n.agent_ref,
            agent_id: n.agent_id,
            host_id: n.host_id,
            session_id: uuid::Uuid::new_v4().to_string(),
            token_hash: TokenHash(n.token_hash),
            version: n.version,
            capabilities: n.capabilities,
            connected_at: crate::store::now_ms(),
            tx: CommandTx(tx),
            protocol_version: n.protocol_version,
            streams: Arc::new(streams::Table::new(stream_tx, data_tx, n.protocol_version)),
            close,
            alive,
            signer: n.signer,
            heartbeat_write: AtomicBool::new(false),
            online: AtomicBool::new(true),
            rtt_micros: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(n.heartbeat.as_millis() as u64),
            command_timeout_ms: AtomicU64::new(n.command_timeout.as_millis() as u64),
        });
        let queues = Queues {
            commands: rx,
            stream_control: stream_rx,
            data: data_rx,
            close: close_rx,
        };
        (session, queues)
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Sets the liveness; returns the previous one.
    pub(super) fn set_online(&self, v: bool) -> bool {
        self.online.swap(v, Ordering::Relaxed)
    }

    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub(super) fn set_rtt(&self, d: Duration) {
        self.rtt_micros
            .store((d.as_micros() as u64).max(1), Ordering::Relaxed);
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms.load(Ordering::Relaxed))
    }

    /// Applies new settings (the caller sends `config_update`).
    pub(super) fn apply(&self, settings: &AgentSettings) {
        if let Some(h) = settings.heartbeat_interval {
            self.heartbeat_ms.store(h.max(1) * 1000, Ordering::Relaxed);
        }
        if let Some(c) = settings.command_timeout {
            self.command_timeout_ms
                .store(c.max(1) * 1000, Ordering::Relaxed);
        }
    }

    /// Asks the session to close (sends `disconnect` with `reason`, then a close frame).
    pub fn close(&self, reason: &str) {
        let _ = self.close.send(Some(reason.to_string()));
    }

    /// Fails every open stream (the socket is gone). Commands in flight stay: they are
    /// sent again when the agent reconnects.
    pub(super) fn fail_all(&self, reason: &str) {
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

/// The `disconnect` message that tells an agent why its session ends.
pub(super) fn disconnect_envelope(reason: &str) -> Envelope {
    Envelope::new(
        uuid::Uuid::new_v4().to_string(),
        Message::Disconnect(DisconnectPayload {
            reason: Some(reason.to_string()),
        }),
    )
}
