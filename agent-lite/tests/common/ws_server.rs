//! A small WebSocket server for tests and the budget script: tungstenite server side on a
//! port-0 loopback listener; each accepted agent connection is handed to the test.
#![allow(dead_code)]
// Test helper: tungstenite's handshake callback type and a by-value Envelope are fine here.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

use protocol::{AgentSettings, AuthPayload, AuthResponsePayload, AuthStatus, Envelope, Message};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::WebSocket;

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Receiver<ServerConn>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::on(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
    }

    /// Binds `addr` again (a restarted server), retrying briefly while the port is released.
    pub fn restart_on(addr: SocketAddr) -> TestServer {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr) {
                Ok(l) => return Self::on(l),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("rebinding {addr}: {e}"),
            }
        }
    }

    fn on(listener: TcpListener) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, conns) = channel();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut path = String::new();
                let cb = |req: &Request, resp: Response| {
                    path = req.uri().path().to_string();
                    Ok(resp)
                };
                if let Ok(ws) = tungstenite::accept_hdr(stream, cb) {
                    let _ = ws
                        .get_ref()
                        .set_read_timeout(Some(Duration::from_millis(20)));
                    if tx
                        .send(ServerConn {
                            ws,
                            path,
                            accepted: Instant::now(),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        TestServer {
            addr,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The next agent connection, or a test failure after `limit`.
    pub fn next_conn(&self, limit: Duration) -> ServerConn {
        self.conns
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("no agent connected within {limit:?}"))
    }

    pub fn try_next_conn(&self, limit: Duration) -> Option<ServerConn> {
        self.conns.recv_timeout(limit).ok()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the server read from the agent.
#[derive(Debug)]
pub enum Frame {
    Msg(Envelope),
    Close(Option<u16>),
    Gone,
}

pub struct ServerConn {
    pub ws: WebSocket<TcpStream>,
    pub path: String,
    pub accepted: Instant,
}

impl ServerConn {
    /// The next protocol message or close, skipping pings; `None` on timeout.
    pub fn next_frame(&mut self, limit: Duration) -> Option<Frame> {
        let deadline = Instant::now() + limit;
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let env = Envelope::decode(t.as_bytes())
                        .unwrap_or_else(|e| panic!("agent sent an invalid message: {e}: {t}"));
                    return Some(Frame::Msg(env));
                }
                Ok(tungstenite::Message::Close(f)) => {
                    return Some(Frame::Close(f.map(|f| u16::from(f.code))))
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let _ = self.ws.flush();
                }
                Err(_) => return Some(Frame::Gone),
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// The next text message as sent (e.g. to check its signature), skipping pings;
    /// `Err` with the frame when the connection ended; `Ok(None)` on timeout.
    pub fn next_text(&mut self, limit: Duration) -> Result<Option<String>, Frame> {
        let deadline = Instant::now() + limit;
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) => return Ok(Some(t.to_string())),
                Ok(tungstenite::Message::Close(f)) => {
                    return Err(Frame::Close(f.map(|f| u16::from(f.code))))
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let _ = self.ws.flush();
                }
                Err(_) => return Err(Frame::Gone),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// The next message for which `pred` holds, skipping others; fails after `limit`.
    pub fn expect(
        &mut self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&Envelope) -> bool,
    ) -> Envelope {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Some(Frame::Msg(env)) if pred(&env) => return env,
                Some(Frame::Msg(_)) => {}
                Some(other) => panic!("waiting for {what}: connection ended ({other:?})"),
                None => panic!("no {what} within {limit:?}"),
            }
        }
    }

    pub fn send(&mut self, env: &Envelope) {
        self.send_text(&env.encode());
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(tungstenite::Message::Text(text.to_string().into()))
            .expect("server send");
    }

    /// Reads `auth` and answers `authenticated` with the given heartbeat interval.
    pub fn accept_auth(&mut self, heartbeat: u64) -> AuthPayload {
        let env = self.expect(Duration::from_secs(10), "auth", |e| {
            matches!(e.message, Message::Auth(_))
        });
        let Message::Auth(auth) = env.message else {
            unreachable!()
        };
        self.send(&Envelope::new(
            env.id,
            Message::AuthResponse(AuthResponsePayload {
                status: AuthStatus::Authenticated,
                session_id: Some("session-test".into()),
                config: Some(AgentSettings {
                    heartbeat_interval: Some(heartbeat),
                    command_timeout: Some(60),
                }),
                protocol_version: Some(protocol::PROTOCOL_VERSION),
                error: None,
            }),
        ));
        auth
    }

    pub fn reject_auth(&mut self, why: &str) {
        let env = self.expect(Duration::from_secs(10), "auth", |e| {
            matches!(e.message, Message::Auth(_))
        });
        self.send(&Envelope::new(
            env.id,
            Message::AuthResponse(AuthResponsePayload {
                status: AuthStatus::Rejected,
                session_id: None,
                config: None,
                protocol_version: None,
                error: Some(protocol::ErrorBody::new(
                    protocol::ErrorCode::Unauthorized,
                    why,
                )),
            }),
        ));
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }

    /// Sends a command and returns the one response to it, skipping other messages.
    pub fn command(
        &mut self,
        id: &str,
        operation: &str,
        params: serde_json::Value,
        limit: Duration,
    ) -> protocol::CommandResponsePayload {
        self.send(&Envelope::new(
            id,
            Message::Command(protocol::CommandPayload {
                operation: operation.into(),
                params,
                timeout: None,
                idempotency_key: None,
            }),
        ));
        let env = self.expect(limit, &format!("command_response {id}"), |e| {
            e.id == id && matches!(e.message, Message::CommandResponse(_))
        });
        let Message::CommandResponse(r) = env.message else {
            unreachable!()
        };
        r
    }
}
