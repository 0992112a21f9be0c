//! The link to the server: dialing `{server.url}/ws/agents/{agent_id}` (or, to enrol once,
//! `{server.url}/ws/enrol`) over TCP (+ TLS) here, the WebSocket session ([`session`]), and
//! the reconnect policy ([`reconnect`]).
//!
//! Owns: transport streams, handshakes, timeouts on the socket. Must not: run Docker
//! requests on the session thread (commands go to the worker pool).

mod link;
pub mod reconnect;
pub mod session;
pub mod tls;

use crate::config::{Config, ServerUrl};
use crate::stats::Stats;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::WebSocket;

/// The TCP socket under the WebSocket. After [`Stream::set_nonblocking`], reads return
/// `WouldBlock` at once (the session reads only after `poll` said the socket is readable,
/// and until it would block), while writes still wait for room, up to the write timeout.
struct Sock {
    tcp: TcpStream,
    nonblocking: bool,
    write_timeout: Option<Duration>,
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.nonblocking {
            return self.tcp.write(buf);
        }
        let deadline = self.write_timeout.map(|t| Instant::now() + t);
        loop {
            match self.tcp.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            let left = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"));
                    }
                    Timespec::try_from(left).ok()
                }
                None => None,
            };
            let mut fds = [PollFd::new(&self.tcp, PollFlags::OUT)];
            match poll(&mut fds, left.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

enum Inner {
    Plain(Sock),
    Tls(Box<StreamOwned<ClientConnection, Sock>>),
}

/// Plain TCP or TLS over TCP, counting the bytes that cross it.
pub struct Stream {
    inner: Inner,
    stats: Arc<Stats>,
}

impl Stream {
    fn sock(&self) -> &Sock {
        match &self.inner {
            Inner::Plain(s) => s,
            Inner::Tls(s) => s.get_ref(),
        }
    }

    fn sock_mut(&mut self) -> &mut Sock {
        match &mut self.inner {
            Inner::Plain(s) => s,
            Inner::Tls(s) => s.get_mut(),
        }
    }

    /// The TCP socket underneath, to poll it and shut it down.
    pub fn tcp(&self) -> &TcpStream {
        &self.sock().tcp
    }

    /// Reads return `WouldBlock` when nothing is there; writes keep blocking (see [`Sock`]).
    pub fn set_nonblocking(&mut self) -> io::Result<()> {
        let sock = self.sock_mut();
        sock.tcp.set_nonblocking(true)?;
        sock.nonblocking = true;
        Ok(())
    }

    /// How long a write may wait for the server to read.
    pub fn set_write_timeout(&mut self, t: Duration) -> io::Result<()> {
        let sock = self.sock_mut();
        sock.tcp.set_write_timeout(Some(t))?;
        sock.write_timeout = Some(t);
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Inner::Plain(s) => s.read(buf),
            Inner::Tls(s) => s.read(buf),
        }?;
        self.stats
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Inner::Plain(s) => s.write(buf),
            Inner::Tls(s) => s.write(buf),
        }?;
        self.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Plain(s) => s.flush(),
            Inner::Tls(s) => s.flush(),
        }
    }
}

/// The largest WebSocket message tungstenite will assemble. Bigger than
/// [`protocol::MAX_MESSAGE_SIZE`] so that a too-large message can still be answered with an
/// `error` instead of dropping the link.
pub const WS_MAX_MESSAGE: usize = protocol::MAX_MESSAGE_SIZE * 2;

/// Bytes read from the socket per call. tungstenite zeroes this much of its input buffer
/// before every read (128 KiB by default: a 128 KiB `memset` per read, 5.6 % of the agent's
/// CPU on the passthrough path, and 128 KiB of resident memory). A server message is a few
/// hundred bytes; a data frame (at most [`protocol::STREAM_CHUNK`]) takes a few reads.
const WS_READ_SIZE: usize = 16 * 1024;

/// Opens the agent's link to the server of `url`: TCP (each resolved address in turn, within
/// `timeout`), then TLS with the agent's config for `wss://`, handshake completed (so
/// certificate errors are reported as such). The WebSocket and self-update downloads both
/// go over such a link.
pub fn open(
    url: &ServerUrl,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
    stats: Arc<Stats>,
) -> Result<Stream, String> {
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", url.host))?
        .collect();
    let mut last = format!("{} resolved to no address", url.host);
    let mut tcp = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {a}: {e}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let io = |e: io::Error| format!("socket setup: {e}");
    tcp.set_nodelay(true).map_err(io)?;
    tcp.set_read_timeout(Some(timeout)).map_err(io)?;
    tcp.set_write_timeout(Some(timeout)).map_err(io)?;
    let tcp = Sock {
        tcp,
        nonblocking: false,
        write_timeout: Some(timeout),
    };
    if !url.tls {
        return Ok(Stream {
            inner: Inner::Plain(tcp),
            stats,
        });
    }
    let cfg = tls.ok_or_else(|| "wss:// without a TLS config".to_string())?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| format!("invalid TLS server name {:?}: {e}", url.host))?;
    let conn =
        ClientConnection::new(cfg.clone(), name).map_err(|e| format!("starting TLS: {e}"))?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("TLS handshake with {}: {e}", url.host))?;
    }
    Ok(Stream {
        inner: Inner::Tls(Box::new(s)),
        stats,
    })
}

/// Dials the server and completes the WebSocket handshake on `target` (a URL of the server
/// `url`: [`ServerUrl::agent_url`] or [`ServerUrl::enrol_url`]), with the same TLS settings
/// (CA, pin, client certificate) either way.
pub fn dial(
    config: &Config,
    url: &ServerUrl,
    target: &str,
    tls: Option<&Arc<ClientConfig>>,
    stats: Arc<Stats>,
) -> Result<WebSocket<Stream>, String> {
    let timeout = Duration::from_secs_f64(config.server.connect_timeout);
    let stream = open(url, tls, timeout, stats)?;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_SIZE)
        .max_message_size(Some(WS_MAX_MESSAGE))
        .max_frame_size(Some(WS_MAX_MESSAGE));
    let (ws, _resp) = tungstenite::client::client_with_config(target, stream, Some(ws_config))
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => {
                format!("WebSocket handshake with {target} failed: {e}")
            }
            tungstenite::HandshakeError::Interrupted(_) => {
                format!("WebSocket handshake with {target} timed out")
            }
        })?;
    Ok(ws)
}
