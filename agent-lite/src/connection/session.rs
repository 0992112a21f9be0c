//! One WebSocket session: `auth`, then a single-threaded loop that reads server messages,
//! sends what workers and the event follower queued, heartbeats and pings, and notices a
//! dead link. The reconnect loop around sessions is [`super::reconnect`].
//!
//! The loop sleeps in `poll` on the socket and the agent's [`Waker`](crate::waker::Waker)
//! until the server sent something, something was queued for the server, or the next
//! deadline (heartbeat, dead link, auth) is due: no polling when idle, no delay for answers.
//!
//! Owns: message handling and timing on the link. Must not: block on Docker (commands go
//! to the pool, health comes from the snapshot the health thread keeps fresh).

use super::link::Link;
use super::Stream;
use crate::agent::Agent;
use crate::ops::{self, pool::Pool};
use crate::passthrough::{self, Hub, Item, Out};
use crate::shutdown::Shutdown;
use crate::signing::seal;
use protocol::signing::SignatureError;
use protocol::{
    AgentSettings, AuthPayload, AuthResponsePayload, AuthStatus, DecodeError, DisconnectPayload,
    Envelope, ErrorBody, ErrorCode, ErrorPayload, HeartbeatPayload, Message, MAX_MESSAGE_SIZE,
    PROTOCOL_VERSION,
};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::WebSocket;

/// Messages sent per loop turn from each queue, so reading is never starved.
const BATCH: usize = 64;
/// Frames read per loop turn, so sending and heartbeats are never starved.
const READ_BATCH: usize = 256;
/// How long the server has to answer `auth`.
const AUTH_WAIT: Duration = Duration::from_secs(30);
/// How long a graceful close waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Data bytes sent per loop turn, so reading, control messages and heartbeats keep moving.
const DATA_BUDGET: usize = 256 * 1024;
/// Messages in a row that fail signature verification before the agent drops the link.
pub const MAX_BAD_SIGNATURES: u32 = 5;

/// How a session ended.
#[derive(Debug)]
pub enum Outcome {
    /// Shutdown was requested; `disconnect` and the close frame were sent.
    Shutdown,
    /// The server refused the credentials.
    Rejected(String),
    /// The link dropped or was found dead.
    Lost {
        reason: String,
        authenticated: bool,
        lasted: Duration,
    },
}

/// A read or write that may simply be retried: timed out, or interrupted by a signal.
fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io)
        if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted))
}

fn is_interrupted(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::Interrupted)
}

pub(super) struct Session<'a> {
    agent: &'a Arc<Agent>,
    /// The socket, shared with the stream threads (see [`Link`]).
    link: Arc<Link>,
    pool: &'a Pool,
    shutdown: &'a Shutdown,
    started: Instant,
    last_rx: Instant,
    authenticated: bool,
    /// Docker API passthrough streams of this session.
    hub: Arc<Hub>,
    /// Received messages in a row that failed signature verification.
    bad_signatures: u32,
}

/// What handling one incoming frame asks the loop to do.
enum Next {
    Continue,
    End(Outcome),
}

/// How reading what arrived ended.
enum Read {
    /// Nothing more until the socket is readable again.
    Drained,
    /// Stopped early (batch limit, signal): more may be buffered where `poll` cannot see it.
    More,
    End(Outcome),
}

impl<'a> Session<'a> {
    pub(super) fn new(
        agent: &'a Arc<Agent>,
        ws: WebSocket<Stream>,
        pool: &'a Pool,
        shutdown: &'a Shutdown,
    ) -> Result<Self, Outcome> {
        let now = Instant::now();
        let link = Link::new(ws, agent.clone()).map_err(|e| Outcome::Lost {
            reason: format!("socket setup: {e}"),
            authenticated: false,
            lasted: Duration::ZERO,
        })?;
        let link = Arc::new(link);
        let direct = link.direct();
        Ok(Session {
            agent,
            link,
            pool,
            shutdown,
            started: now,
            last_rx: now,
            authenticated: false,
            hub: Hub::new(agent.clone(), Some(direct)),
            bad_signatures: 0,
        })
    }

    /// Signs an encoded envelope when signing is on (see `protocol::signing`).
    fn seal(&self, text: String) -> String {
        seal(self.agent.signer.as_ref(), text)
    }

    fn lost(&self, reason: impl Into<String>) -> Outcome {
        Outcome::Lost {
            reason: reason.into(),
            authenticated: self.authenticated,
            lasted: self.started.elapsed(),
        }
    }

    fn send(&mut self, env: Envelope) -> Result<(), Outcome> {
        self.send_text(env.encode())
    }

    /// Sends an envelope's text (signed first when signing is on).
    fn send_text(&mut self, text: String) -> Result<(), Outcome> {
        let link = self.link.clone();
        let mut ws = link.ws();
        self.send_on(&mut ws, text)
    }

    /// [`Session::send_text`] on the socket already held.
    fn send_on(&self, ws: &mut WebSocket<Stream>, text: String) -> Result<(), Outcome> {
        let text = self.seal(text);
        match ws.send(tungstenite::Message::Text(text.into())) {
            Ok(()) => Ok(()),
            // Queued in tungstenite's buffer; the next flush continues.
            Err(e) if is_interrupted(&e) => Ok(()),
            Err(e) if is_timeout(&e) => {
                Err(self.lost("the server stopped reading (write timed out)"))
            }
            Err(e) => Err(self.lost(format!("send failed: {e}"))),
        }
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.agent.settings.heartbeat_secs())
    }

    /// Holds the session until it ends.
    pub(super) fn serve(mut self) -> Outcome {
        let outcome = match self.serve_turns() {
            Ok(o) | Err(o) => o,
        };
        // Producers stop writing to the socket: their answers queue for the next connection
        // (commands) or end with the session (streams).
        self.link.retire();
        // Streams live and die with the session: their daemon connections close now.
        self.hub.close_all();
        outcome
    }

    /// Sleeps until the socket is readable, the waker was woken (something was queued for
    /// the server, or shutdown) or `timeout` passed. True when the socket is readable (or
    /// failed: the next read says how).
    fn wait(&self, timeout: Duration, waker: bool) -> Result<bool, Outcome> {
        let ts = Timespec::try_from(timeout).ok();
        let tcp = self.link.tcp();
        let mut fds = [PollFd::new(tcp, PollFlags::IN), self.agent.waker.poll_fd()];
        let n = if waker { 2 } else { 1 };
        match poll(&mut fds[..n], ts.as_ref()) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(false),
            Err(e) => return Err(self.lost(format!("poll failed: {e}"))),
        }
        if waker && !fds[1].revents().is_empty() {
            // Before the queues are looked at: what is queued from now on wakes again.
            self.agent.waker.drain();
        }
        Ok(!fds[0].revents().is_empty())
    }

    /// Reads and handles the frames that arrived, until the socket would block. The socket
    /// is non-blocking for reads: TLS and WebSocket buffers may hold frames `poll` cannot
    /// see, so reading goes on until the stream itself says there is nothing more.
    fn read_available(&mut self) -> Result<Read, Outcome> {
        for _ in 0..READ_BATCH {
            let read = self.link.ws().read();
            match read {
                Ok(msg) => {
                    self.last_rx = Instant::now();
                    if let Next::End(o) = self.on_frame(msg)? {
                        return Ok(Read::End(o));
                    }
                }
                Err(e) if is_interrupted(&e) => return Ok(Read::More),
                Err(e) if is_timeout(&e) => return Ok(Read::Drained),
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => {
                    return Err(self.lost("the server closed the connection"));
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    // tungstenite cannot resynchronise after refusing a frame: say why, then reconnect.
                    log::warn!(
                        "the server sent a message larger than {} bytes: {e}",
                        super::WS_MAX_MESSAGE
                    );
                    let body = ErrorBody::invalid_params(format!("message too large: {e}"));
                    let _ = self.send(self.error_envelope(body, None));
                    return Err(self.lost(format!("oversized message: {e}")));
                }
                Err(e) => return Err(self.lost(format!("read failed: {e}"))),
            }
        }
        Ok(Read::More)
    }

    /// Whether output is still queued after a turn (a queue's per-turn limit was reached).
    fn output_pending(&self) -> bool {
        self.hub.has_output() || !self.agent.outbox.is_empty() || !self.agent.events.is_empty()
    }

    /// Queues one message in tungstenite's buffer (the loop flushes).
    fn write(&self, ws: &mut WebSocket<Stream>, msg: tungstenite::Message) -> Result<(), Outcome> {
        match ws.write(msg) {
            Ok(()) => Ok(()),
            Err(e) if is_interrupted(&e) => Ok(()),
            Err(e) if is_timeout(&e) => {
                Err(self.lost("the server stopped reading (write timed out)"))
            }
            Err(e) => Err(self.lost(format!("send failed: {e}"))),
        }
    }

    /// Sends what the streams queued: control messages first, then data up to
    /// [`DATA_BUDGET`] bytes, checking for control messages before every data frame. The
    /// socket is held for the whole turn, so an answer a stream thread writes itself (see
    /// [`Link`]) never overtakes what is popped here.
    fn pump_streams(&mut self) -> Result<(), Outcome> {
        let mut budget = DATA_BUDGET;
        let link = self.link.clone();
        let mut ws = link.ws();
        while let Some(item) = self.hub.pop(budget > 0) {
            let msg = match item {
                Item::Control(text) | Item::Data(Out::Text(text)) => {
                    tungstenite::Message::Text(self.seal(text).into())
                }
                Item::Data(Out::Frame(f)) => {
                    budget = budget.saturating_sub(f.len());
                    tungstenite::Message::Binary(f.into())
                }
            };
            self.write(&mut ws, msg)?;
        }
        Ok(())
    }

    fn serve_turns(&mut self) -> Result<Outcome, Outcome> {
        let hb = self.heartbeat_interval();
        let mut ws = self.link.ws();
        let stream = ws.get_mut();
        let setup = stream
            .set_nonblocking()
            .and_then(|()| stream.set_write_timeout(hb.max(Duration::from_secs(10))));
        drop(ws);
        setup.map_err(|e| self.lost(e.to_string()))?;

        let auth = self.auth_envelope();
        self.send(auth)?;
        let auth_deadline = Instant::now() + AUTH_WAIT;
        let mut next_hb = Instant::now();
        // The handshake may have buffered more than the upgrade response.
        let mut readable = true;
        loop {
            if self.shutdown.is_set() {
                return Ok(self.close());
            }
            if self.link.failed() {
                // A producer's write failed and shut the socket down (which woke us).
                return Err(self.lost("writing an answer to the server failed or timed out"));
            }
            let mut more_input = false;
            if readable {
                match self.read_available()? {
                    Read::Drained => {}
                    Read::More => more_input = true,
                    Read::End(o) => return Ok(o),
                }
            }
            let now = Instant::now();
            let until = if !self.authenticated {
                if now >= auth_deadline {
                    return Err(self.lost(format!("no auth_response within {AUTH_WAIT:?}")));
                }
                auth_deadline
            } else {
                self.drain_outbox()?;
                self.drain_events()?;
                self.pump_streams()?;
                let interval = self.heartbeat_interval();
                if now >= next_hb {
                    let hb = self.heartbeat();
                    self.send(hb)?;
                    // Authenticated and a heartbeat sent: a new version's probation is over.
                    self.agent.update.healthy(self.agent.as_ref());
                    let ping = self
                        .link
                        .ws()
                        .send(tungstenite::Message::Ping(Vec::new().into()));
                    if let Err(e) = ping {
                        if !is_timeout(&e) {
                            return Err(self.lost(format!("ping failed: {e}")));
                        }
                    }
                    next_hb = now + interval;
                } else if next_hb > now + interval {
                    // The interval was shortened by config_update.
                    next_hb = now + interval;
                }
                if self.last_rx.elapsed() > interval * 2 {
                    return Err(self.lost(format!(
                        "nothing received from the server for {:.1?} (2x the heartbeat interval): the link is dead",
                        self.last_rx.elapsed()
                    )));
                }
                if self.output_pending() {
                    now
                } else {
                    // Just past the dead-link limit, so the check above fires.
                    next_hb.min(self.last_rx + interval * 2 + Duration::from_millis(1))
                }
            };
            let flushed = self.link.ws().flush();
            match flushed {
                Ok(()) => {}
                Err(e) if is_interrupted(&e) => {}
                Err(e) if is_timeout(&e) => {
                    return Err(self.lost("the server stopped reading (write timed out)"))
                }
                Err(e) => return Err(self.lost(format!("flush failed: {e}"))),
            }
            let timeout = if more_input {
                Duration::ZERO
            } else {
                until.saturating_duration_since(Instant::now())
            };
            readable = self.wait(timeout, true)? || more_input;
        }
    }

    fn auth_envelope(&self) -> Envelope {
        let mut capabilities = vec!["docker".to_string()];
        if self.agent.snapshot().swarm {
            capabilities.push("swarm".into());
        }
        if crate::health::compose_available() {
            capabilities.push("docker-compose".into());
        }
        log::debug!(
            "authenticating as {} with capabilities {capabilities:?}",
            self.agent.config.agent.id
        );
        Envelope::new(
            self.agent.next_id("auth"),
            Message::Auth(AuthPayload {
                agent_id: self.agent.config.agent.id.clone(),
                auth_token: self.agent.config.agent.auth_token.clone(),
                version: protocol::VERSION.to_string(),
                capabilities,
                protocol_version: Some(PROTOCOL_VERSION),
                signing_version: self
                    .agent
                    .signer
                    .as_ref()
                    .map(|_| protocol::signing::SIGNING_VERSION),
                target: Some(protocol::version::TARGET.to_string()),
                update: self.agent.update.report(),
                labels: self.agent.config.agent.labels.clone(),
            }),
        )
    }

    fn error_envelope(&self, error: ErrorBody, ref_id: Option<String>) -> Envelope {
        Envelope::new(
            self.agent.next_id("err"),
            Message::Error(ErrorPayload { error, ref_id }),
        )
    }

    fn on_frame(&mut self, msg: tungstenite::Message) -> Result<Next, Outcome> {
        use tungstenite::Message as M;
        match msg {
            M::Text(t) => self.on_text(t.as_bytes()),
            M::Binary(b) => {
                self.on_binary(&b)?;
                Ok(Next::Continue)
            }
            M::Close(frame) => {
                let why = frame
                    .map(|f| format!("{} {}", f.code, f.reason))
                    .unwrap_or_default();
                Ok(Next::End(
                    self.lost(format!("the server closed the connection {why}")),
                ))
            }
            // tungstenite answers pings itself; pongs only refresh last_rx.
            M::Ping(_) | M::Pong(_) | M::Frame(_) => Ok(Next::Continue),
        }
    }

    /// A binary data frame of a passthrough stream.
    fn on_binary(&mut self, b: &[u8]) -> Result<(), Outcome> {
        match protocol::decode_data_frame(b) {
            Ok((id, data)) if self.authenticated => self.hub.on_data(id, data),
            Ok(_) => {
                let body =
                    ErrorBody::new(ErrorCode::Unauthorized, "stream data before auth_response");
                self.send(self.error_envelope(body, None))?;
            }
            Err(e) => {
                log::warn!("bad binary frame from the server ({} bytes): {e}", b.len());
                self.send(self.error_envelope(e.to_error_body(), None))?;
            }
        }
        Ok(())
    }

    /// A JSON message: verified when signing is on, decoded, then handled.
    fn on_text(&mut self, bytes: &[u8]) -> Result<Next, Outcome> {
        let verified = match &self.agent.signer {
            Some(signer) => signer.verify(bytes),
            None => Ok(()),
        };
        if let Err(e) = verified {
            return self.on_bad_signature(bytes, e);
        }
        self.bad_signatures = 0;
        match Envelope::decode_from_server(bytes) {
            Ok(env) => self.on_message(env),
            Err(e) => {
                let ref_id = ref_id_of(bytes, &e);
                log::warn!("bad message from the server ({} bytes): {e}", bytes.len());
                self.send(self.error_envelope(e.to_error_body(), ref_id))?;
                Ok(Next::Continue)
            }
        }
    }

    /// A message that failed verification: refused, not executed; the link is dropped
    /// after [`MAX_BAD_SIGNATURES`] in a row.
    fn on_bad_signature(&mut self, bytes: &[u8], e: SignatureError) -> Result<Next, Outcome> {
        self.bad_signatures += 1;
        let ref_id = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("id").and_then(|x| x.as_str()).map(str::to_owned))
            .filter(|s| s.len() <= 256);
        log::warn!(
            "refused a message from the server ({} bytes, id {}): {e} ({} in a row)",
            bytes.len(),
            ref_id.as_deref().unwrap_or("-"),
            self.bad_signatures
        );
        // protocol::signing: the message could not be authenticated.
        let body = ErrorBody::new(
            ErrorCode::Unauthorized,
            format!("message refused, not executed: {e}"),
        );
        self.send(self.error_envelope(body, ref_id))?;
        if self.bad_signatures >= MAX_BAD_SIGNATURES {
            return Ok(Next::End(self.lost(format!(
                "{} messages in a row failed signature verification",
                self.bad_signatures
            ))));
        }
        Ok(Next::Continue)
    }

    /// Before `auth_response`, a message that needs it is answered with `unauthorized`:
    /// true when `what` was refused.
    fn refused_before_auth(&mut self, what: &str, id: &str) -> Result<bool, Outcome> {
        if self.authenticated {
            return Ok(false);
        }
        let body = ErrorBody::new(
            ErrorCode::Unauthorized,
            format!("{what} before auth_response"),
        );
        self.send(self.error_envelope(body, Some(id.to_string())))?;
        Ok(true)
    }

    /// A decoded message of the server.
    fn on_message(&mut self, env: Envelope) -> Result<Next, Outcome> {
        match env.message {
            Message::AuthResponse(r) => return Ok(self.on_auth_response(r)),
            Message::Command(cmd) => {
                if !self.refused_before_auth("command", &env.id)? {
                    ops::dispatch(self.agent, self.pool, env.id, cmd);
                }
            }
            Message::ConfigUpdate(u) => self.apply(&u.config),
            Message::AgentUpdate(u) => {
                if !self.refused_before_auth("agent_update", &env.id)? {
                    crate::update::Updater::handle(self.agent, u);
                }
            }
            Message::StreamOpen(open) => {
                if !self.refused_before_auth("stream_open", &env.id)? {
                    passthrough::open(&self.hub, open);
                }
            }
            Message::StreamEnd(e) => self.hub.on_end(e.stream_id, e.error),
            Message::StreamCancel(c) => self.hub.on_cancel(c.stream_id, c.reason.as_deref()),
            Message::StreamCredit(c) => self.hub.on_credit(c.stream_id, c.bytes),
            Message::Disconnect(d) => {
                let why = d.reason.unwrap_or_else(|| "no reason given".into());
                return Ok(Next::End(
                    self.lost(format!("the server asked to disconnect: {why}")),
                ));
            }
            Message::Error(e) => {
                log::warn!(
                    "the server reported an error (about {}): {}",
                    e.ref_id.as_deref().unwrap_or("-"),
                    e.error
                );
            }
            // `decode_from_server` refuses the agent's own messages (answered `unsupported`
            // in `on_text`); an `enrol_response` outside enrolment is ignored.
            other => log::warn!(
                "the server sent a {} message, which this agent does not handle here",
                other.message_type().as_str()
            ),
        }
        Ok(Next::Continue)
    }

    fn on_auth_response(&mut self, r: AuthResponsePayload) -> Next {
        if self.authenticated {
            log::warn!("ignoring a second auth_response");
            return Next::Continue;
        }
        match r.status {
            AuthStatus::Authenticated => {
                self.authenticated = true;
                // Workers may write their answers themselves from now on.
                self.agent.outbox.set_direct(self.link.direct());
                if let Some(cfg) = &r.config {
                    self.apply(cfg);
                }
                log::info!(
                    "authenticated (session {}, protocol {})",
                    r.session_id.as_deref().unwrap_or("-"),
                    r.protocol_version.unwrap_or(1)
                );
                Next::Continue
            }
            AuthStatus::Rejected => {
                let why = r
                    .error
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "no reason given".into());
                Next::End(Outcome::Rejected(why))
            }
        }
    }

    fn apply(&mut self, s: &AgentSettings) {
        if let Some(h) = s.heartbeat_interval {
            if (1..=3600).contains(&h) {
                self.agent.settings.heartbeat.store(h, Ordering::Relaxed);
                let _ = self
                    .link
                    .ws()
                    .get_mut()
                    .set_write_timeout(Duration::from_secs(h.max(10)));
            } else {
                log::warn!("ignoring heartbeat_interval {h}: must be 1 to 3600 seconds");
            }
        }
        if let Some(t) = s.command_timeout {
            if t >= 1 {
                self.agent
                    .settings
                    .command_timeout
                    .store(t, Ordering::Relaxed);
            }
        }
        log::info!(
            "settings: heartbeat every {}s, command timeout {}s",
            self.agent.settings.heartbeat.load(Ordering::Relaxed),
            self.agent.settings.command_timeout.load(Ordering::Relaxed)
        );
    }

    /// Sends what workers queued. The socket is held for the whole turn, so an answer a
    /// worker writes itself (see [`Link`]) never overtakes what is popped here.
    fn drain_outbox(&mut self) -> Result<(), Outcome> {
        let link = self.link.clone();
        let mut ws = link.ws();
        for _ in 0..BATCH {
            let Some(item) = self.agent.outbox.pop() else {
                break;
            };
            // A command's answer comes written by its worker; other messages are encoded
            // from the queued envelope itself (no deep copy of a large result).
            if let Err(o) = self.send_on(&mut ws, item.encode()) {
                // Not delivered: keep it for the next connection.
                self.agent.outbox.put_back(item);
                return Err(o);
            }
        }
        Ok(())
    }

    fn drain_events(&mut self) -> Result<(), Outcome> {
        let events = self.agent.events.take(BATCH);
        let mut it = events.into_iter();
        while let Some(e) = it.next() {
            if !self.agent.config.policy.event_visible(&e) {
                continue;
            }
            let env = Envelope::new(self.agent.next_id("ev"), Message::Event(e.clone()));
            if let Err(o) = self.send(env) {
                let mut rest = vec![e];
                rest.extend(it);
                self.agent.events.put_back(rest);
                return Err(o);
            }
        }
        Ok(())
    }

    fn heartbeat(&self) -> Envelope {
        let snap = self.agent.snapshot();
        let stats = &self.agent.stats;
        let mut hb = HeartbeatPayload {
            docker_reachable: Some(snap.docker_reachable),
            docker_ping_ms: snap.docker_ping_ms,
            docker_version: snap.docker_version,
            containers_running: snap.containers_running,
            containers_total: snap.containers_total,
            agent_uptime_secs: Some(self.agent.stats.started.elapsed().as_secs()),
            bytes_sent: Some(stats.bytes_sent.load(Ordering::Relaxed)),
            bytes_received: Some(stats.bytes_received.load(Ordering::Relaxed)),
            events_dropped: Some(self.agent.events.dropped()),
            commands_in_flight: Some(stats.in_flight.load(Ordering::Relaxed)),
            ..Default::default()
        };
        crate::health::fill_host(&mut hb);
        Envelope::new(self.agent.next_id("hb"), Message::Heartbeat(hb))
    }

    /// Sends `disconnect` and a normal close, then waits briefly for the server's close.
    fn close(&mut self) -> Outcome {
        log::info!("shutting down: sending disconnect");
        self.link.retire();
        let bye = Envelope::new(
            self.agent.next_id("bye"),
            Message::Disconnect(DisconnectPayload {
                reason: Some("agent shutting down".into()),
            }),
        );
        if self.authenticated {
            // Answers already computed go out first.
            let _ = self.drain_outbox();
        }
        let _ = self.send(bye);
        let _ = self.link.ws().close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "agent shutting down".into(),
        }));
        let deadline = Instant::now() + CLOSE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let read = self.link.ws().read();
            match read {
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    let _ = self.link.ws().flush();
                    if self.wait(left, false).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Outcome::Shutdown
    }
}

/// The id of an undecodable message, when it has one (never for oversized messages).
fn ref_id_of(bytes: &[u8], e: &DecodeError) -> Option<String> {
    if matches!(e, DecodeError::TooLarge { .. }) || bytes.len() > MAX_MESSAGE_SIZE {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("id")
        .and_then(|x| x.as_str())
        .filter(|s| s.len() <= 256)
        .map(str::to_owned)
}
