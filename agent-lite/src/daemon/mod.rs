//! The agent's client of the Docker daemon: HTTP/1.1 over the daemon's unix socket (or
//! `tcp://host:port`), blocking, with kept-alive connections for reads.
//!
//! Owns: connecting to the endpoint (parsed by `protocol::endpoint`), API version
//! negotiation (`/_ping`, then `/version`), timeouts and deadlines, and mapping transport
//! failures to the protocol's error codes. Implements [`protocol::mapping::Transport`] so
//! `protocol::mapping::run_blocking` executes catalog operations.
//! Must not: decide which Docker requests an operation makes (that is `protocol::mapping`).

pub mod http;

use http::{Framing, Head, HttpError, LineSplitter, ResponseReader};
use protocol::mapping::{DockerRequest, DockerResponse, Method, Transport};
use protocol::{ErrorBody, ErrorCode};
use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bodies larger than this are refused (logs and exec output are cut to 2 MiB by the
/// mapping anyway).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// The agent's User-Agent towards the daemon.
const USER_AGENT: &str = concat!("docker-ctl-agent/", env!("CARGO_PKG_VERSION"));

/// Where the daemon listens: the one parser's result (`protocol::endpoint`). The agent dials
/// `unix://` and `tcp://`; config validation refuses `https://`.
pub use protocol::endpoint::Endpoint;

/// The `Host` header towards the daemon.
fn host_header(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Unix(_) => "api.moby.localhost".to_string(),
        Endpoint::Tcp(hp) | Endpoint::Https(hp) => hp.authority(),
    }
}

/// Why a Docker request failed before a daemon answer could be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket is missing, refused, unreadable, or the connection broke. The daemon may be
    /// down: report `docker_unreachable` and retry later.
    #[error("Docker daemon unreachable at {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// No answer within the deadline. Report `timeout`.
    #[error("the Docker daemon did not answer within {0:?}")]
    Timeout(Duration),
    /// The daemon's bytes were not valid HTTP, or too large. Report `docker_error`.
    #[error("bad answer from the Docker daemon: {0}")]
    Protocol(String),
    /// The daemon's API version is too old or unknown. Report `docker_error`.
    #[error("{0}")]
    Version(String),
}

impl From<Error> for ErrorBody {
    fn from(e: Error) -> ErrorBody {
        let code = match &e {
            Error::Unreachable { .. } => ErrorCode::DockerUnreachable,
            Error::Timeout(_) => ErrorCode::Timeout,
            Error::Protocol(_) | Error::Version(_) => ErrorCode::DockerError,
        };
        ErrorBody::new(code, e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One connection to the daemon.
#[derive(Debug)]
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(t),
            Conn::Tcp(s) => s.set_write_timeout(t),
        }
    }

    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    /// Closes both directions; a thread blocked reading it wakes up with end of stream.
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// Half-closes: the daemon reads end of stream, and can still answer.
    pub fn shutdown_write(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl http::WaitReadable for Conn {
    fn wait_readable(&self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let ts = Timespec::try_from(timeout).ok();
        let mut fds = [match self {
            Conn::Unix(s) => PollFd::new(s, PollFlags::IN),
            Conn::Tcp(s) => PollFd::new(s, PollFlags::IN),
        }];
        // An error reads as "ready": the read that follows reports it.
        poll(&mut fds, ts.as_ref()).map_or(true, |n| n > 0)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// A connection whose reads respect both a per-read timeout and an overall deadline.
pub struct Deadlined {
    conn: Conn,
    /// `None`: block forever (streams closed by a [`Closer`]).
    io_timeout: Option<Duration>,
    deadline: Option<Instant>,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut t = self.io_timeout;
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
            }
            t = Some(t.map_or(left, |t| t.min(left)));
        }
        self.conn
            .set_read_timeout(t.map(|t| t.max(Duration::from_millis(1))))?;
        self.conn.read(buf)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A response stream left open for the caller (e.g. `/events`).
pub struct Stream {
    pub head: Head,
    framing: Framing,
    reader: ResponseReader<Deadlined>,
}

impl Stream {
    /// Reads the body until the daemon ends it or the connection is shut down, passing each
    /// piece to `on_data`.
    pub fn read_to_end(&mut self, on_data: &mut dyn FnMut(&[u8])) -> Result<(), HttpError> {
        self.reader
            .read_body(self.framing, usize::MAX, on_data)
            .map(|_| ())
    }
}

/// A handle that closes a [`Stream`]'s connection from another thread.
#[derive(Debug)]
pub struct Closer(Conn);

impl Closer {
    pub fn close(&self) {
        self.0.shutdown();
    }
}

/// The Docker client. Cheap to clone; clones share the negotiated API version.
#[derive(Debug, Clone)]
pub struct DockerClient {
    endpoint: Arc<Endpoint>,
    host_header: Arc<str>,
    timeout: Duration,
    api_version: Arc<Mutex<Option<String>>>,
    /// Kept-alive connections of finished GET and HEAD requests, for the next one: a new
    /// connection costs the daemon an accept and a goroutine on every command.
    idle: Arc<Mutex<Vec<Conn>>>,
}

/// Idle kept-alive connections at most (the worker pool rarely runs more reads at once).
const MAX_IDLE: usize = 2;

impl DockerClient {
    /// `timeout` bounds connecting and each read or write.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        DockerClient {
            host_header: host_header(&endpoint).into(),
            endpoint: Arc::new(endpoint),
            timeout,
            api_version: Arc::new(Mutex::new(None)),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().ok()?.pop()
    }

    fn put_idle(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> Error {
        // The daemon may come back as another version: negotiate again next time.
        if let Ok(mut v) = self.api_version.lock() {
            *v = None;
        }
        Error::Unreachable {
            endpoint: self.endpoint.to_string(),
            detail: detail.to_string(),
        }
    }

    /// A new connection for a passthrough stream: writes time out after `docker.timeout`,
    /// reads never do (the stream ends when the daemon or a [`Conn::shutdown`] ends it).
    pub fn connect_raw(&self) -> Result<Conn> {
        self.connect(None)
    }

    /// A connection for a passthrough GET or HEAD without a body, which may be kept alive
    /// afterwards ([`DockerClient::keep`]): an idle one when there is one (`true`: it may
    /// have been closed by the daemon meanwhile, so a failure before any answer is retried
    /// on a new one), else a new one. Reads never time out, as on [`DockerClient::connect_raw`].
    pub fn connect_reusable(&self) -> Result<(Conn, bool)> {
        if let Some(conn) = self.take_idle() {
            if conn.set_read_timeout(None).is_ok() {
                return Ok((conn, true));
            }
        }
        Ok((self.connect_raw()?, false))
    }

    /// Keeps a connection whose answer was read to its end, for the next GET or HEAD.
    pub fn keep(&self, conn: Conn) {
        self.put_idle(conn);
    }

    fn connect(&self, deadline: Option<Instant>) -> Result<Conn> {
        let t = match deadline {
            Some(d) => self
                .timeout
                .min(d.saturating_duration_since(Instant::now())),
            None => self.timeout,
        };
        if t.is_zero() {
            return Err(Error::Timeout(self.timeout));
        }
        let conn = match &*self.endpoint {
            Endpoint::Unix(path) => {
                Conn::Unix(UnixStream::connect(path).map_err(|e| self.unreachable(e))?)
            }
            Endpoint::Https(_) => {
                return Err(self.unreachable("the agent does not speak TLS to the daemon"))
            }
            Endpoint::Tcp(hp) => {
                let addrs: Vec<_> = (hp.host.as_str(), hp.port)
                    .to_socket_addrs()
                    .map_err(|e| self.unreachable(e))?
                    .collect();
                let mut last = None;
                let mut found = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, t) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match found {
                    Some(s) => Conn::Tcp(s),
                    None => {
                        return Err(self.unreachable(
                            last.map_or_else(|| "no address".to_string(), |e| e.to_string()),
                        ))
                    }
                }
            }
        };
        conn.set_write_timeout(Some(t))
            .map_err(|e| self.unreachable(e))?;
        Ok(conn)
    }

    /// Sends one request and reads the head. The caller reads the body. With `keep_alive`
    /// (GET and HEAD without a body, which are safe to send twice) an idle connection is
    /// used when there is one, and a failure on it is retried once on a new connection: the
    /// daemon may have closed it meanwhile.
    fn start(
        &self,
        method: &str,
        uri: &str,
        extra: &str,
        body: Option<&[u8]>,
        deadline: Option<Instant>,
        keep_alive: bool,
    ) -> Result<(Head, ResponseReader<Deadlined>)> {
        if keep_alive {
            if let Some(conn) = self.take_idle() {
                match self.exchange(conn, method, uri, extra, body, deadline, true) {
                    Err(Error::Timeout(t)) => return Err(Error::Timeout(t)),
                    Err(e) => {
                        log::debug!("a kept-alive daemon connection failed ({e}); using a new one")
                    }
                    ok => return ok,
                }
            }
        }
        let conn = self.connect(deadline)?;
        self.exchange(conn, method, uri, extra, body, deadline, keep_alive)
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &self,
        mut conn: Conn,
        method: &str,
        uri: &str,
        extra: &str,
        body: Option<&[u8]>,
        deadline: Option<Instant>,
        keep_alive: bool,
    ) -> Result<(Head, ResponseReader<Deadlined>)> {
        let mut req = format!(
            "{method} {uri} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\n{extra}{}",
            self.host_header,
            if keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            }
        );
        match body {
            Some(b) => req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )),
            None if method == "POST" || method == "PUT" => {
                req.push_str("Content-Length: 0\r\n\r\n")
            }
            None => req.push_str("\r\n"),
        }
        let mut out = req.into_bytes();
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        conn.write_all(&out)
            .and_then(|_| conn.flush())
            .map_err(|e| {
                if is_timeout(&e) {
                    Error::Timeout(self.timeout)
                } else {
                    self.unreachable(e)
                }
            })?;
        let mut reader = ResponseReader::new(Deadlined {
            conn,
            io_timeout: Some(self.timeout),
            deadline,
        });
        let head = reader.read_head().map_err(|e| self.http_error(e))?;
        Ok((head, reader))
    }

    fn http_error(&self, e: HttpError) -> Error {
        match e {
            HttpError::Io(e) if is_timeout(&e) => Error::Timeout(self.timeout),
            HttpError::Io(e) => self.unreachable(e),
            HttpError::Truncated(w) => self.unreachable(format!("connection closed {w}")),
            HttpError::Invalid(m) => Error::Protocol(m),
            HttpError::TooLarge(n) => Error::Protocol(format!("answer larger than {n} bytes")),
        }
    }

    /// Sends a request to a full request target (`/v1.41/containers/json`) and returns the
    /// whole answer. `on_data` sees the body of 2xx answers as it arrives.
    pub fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<&[u8]>,
        deadline: Option<Instant>,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<DockerResponse> {
        self.send_with(method, uri, "", body, deadline, on_data)
    }

    /// [`DockerClient::send`] with `extra` header lines (each ending in CRLF).
    pub fn send_with(
        &self,
        method: Method,
        uri: &str,
        extra: &str,
        body: Option<&[u8]>,
        deadline: Option<Instant>,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<DockerResponse> {
        let keep_alive = matches!(method, Method::Get | Method::Head) && body.is_none();
        let (head, mut reader) =
            self.start(method.as_str(), uri, extra, body, deadline, keep_alive)?;
        let framing = Framing::of(method == Method::Head, &head).map_err(|e| self.http_error(e))?;
        let success = (200..300).contains(&head.status);
        let mut collected = Vec::new();
        reader
            .read_body(framing, MAX_BODY, &mut |d| {
                if success {
                    on_data(d);
                }
                collected.extend_from_slice(d);
            })
            .map_err(|e| self.http_error(e))?;
        let reusable = keep_alive
            && framing != Framing::ToEof
            && !head
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if reusable {
            if let Some(d) = reader.into_inner_if_drained() {
                self.put_idle(d.conn);
            }
        }
        Ok(DockerResponse {
            status: head.status,
            headers: head.headers,
            body: collected,
        })
    }

    /// The API version to use: negotiated once with `/_ping` (its `Api-Version` header),
    /// falling back to `/version`, and cached until the daemon becomes unreachable.
    pub fn api_version(&self, deadline: Option<Instant>) -> Result<String> {
        if let Some(v) = self.api_version.lock().ok().and_then(|g| g.clone()) {
            return Ok(v);
        }
        let ping = self.send(Method::Get, "/_ping", None, deadline, &mut |_| {})?;
        let daemon = match ping.header("api-version") {
            Some(v) => v.to_string(),
            None => {
                let ver = self.send(Method::Get, "/version", None, deadline, &mut |_| {})?;
                let v: Value = serde_json::from_slice(&ver.body)
                    .map_err(|e| Error::Protocol(format!("/version answered invalid JSON: {e}")))?;
                v.get("ApiVersion")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        Error::Version(
                            "the daemon reports no API version in /_ping or /version".into(),
                        )
                    })?
                    .to_string()
            }
        };
        let v = protocol::mapping::negotiate_api_version(&daemon).ok_or_else(|| {
            Error::Version(format!(
                "the daemon's API version {daemon:?} is not supported (need at least {})",
                protocol::mapping::MIN_API_VERSION
            ))
        })?;
        log::debug!(
            "docker API version {v} (daemon {daemon}, ours {})",
            protocol::mapping::API_VERSION
        );
        if let Ok(mut g) = self.api_version.lock() {
            *g = Some(v.clone());
        }
        Ok(v)
    }

    /// `GET /_ping`: returns the round-trip time.
    pub fn ping(&self, deadline: Option<Instant>) -> Result<Duration> {
        let start = Instant::now();
        let r = self.send(Method::Get, "/_ping", None, deadline, &mut |_| {})?;
        if r.status != 200 {
            return Err(Error::Protocol(format!(
                "/_ping answered HTTP {}",
                r.status
            )));
        }
        Ok(start.elapsed())
    }

    /// A versioned GET that must answer 2xx JSON.
    pub fn get_json(&self, path: &str, deadline: Option<Instant>) -> Result<Value, ErrorBody> {
        let v = self.api_version(deadline)?;
        let r = self.send(
            Method::Get,
            &format!("/v{v}{path}"),
            None,
            deadline,
            &mut |_| {},
        )?;
        if !(200..300).contains(&r.status) {
            return Err(protocol::mapping::error_from_response(&r));
        }
        serde_json::from_slice(&r.body).map_err(|e| {
            ErrorBody::new(
                ErrorCode::DockerError,
                format!("{path} answered invalid JSON: {e}"),
            )
        })
    }

    /// Opens a long-lived streaming GET (`/events`): no read timeout, ended by the daemon or
    /// by [`Closer::close`]. Non-2xx answers are returned as errors with Docker's message.
    pub fn stream(&self, path_and_query: &str) -> Result<(Stream, Closer), ErrorBody> {
        let v = self.api_version(None)?;
        let uri = format!("/v{v}{path_and_query}");
        let (head, mut reader) = self.start("GET", &uri, "", None, None, false)?;
        let framing = Framing::of(false, &head).map_err(|e| self.http_error(e))?;
        if !(200..300).contains(&head.status) {
            let mut body = Vec::new();
            let _ = reader.read_body(framing, 64 * 1024, &mut |d| body.extend_from_slice(d));
            return Err(protocol::mapping::error_from_response(&DockerResponse {
                status: head.status,
                headers: head.headers,
                body,
            }));
        }
        // Events replayed by `since` may already sit in the reader's buffer: keep the reader.
        reader.get_mut().io_timeout = None;
        let closer = Closer(
            reader
                .get_mut()
                .conn
                .try_clone()
                .map_err(|e| self.unreachable(e))?,
        );
        Ok((
            Stream {
                head,
                framing,
                reader,
            },
            closer,
        ))
    }

    /// A [`Transport`] for one operation, with an overall deadline.
    pub fn transport(&self, deadline: Option<Instant>) -> DockerTransport<'_> {
        DockerTransport {
            client: self,
            deadline,
        }
    }
}

/// The `X-Registry-Auth` header line of a pull with credentials (base64url: no CR or LF).
fn registry_auth_header(req: &DockerRequest) -> String {
    match &req.registry_auth {
        Some(a) if !a.expose().contains(['\r', '\n']) => {
            format!("X-Registry-Auth: {}\r\n", a.expose())
        }
        _ => String::new(),
    }
}

/// Runs catalog operations over a [`DockerClient`] with a deadline.
pub struct DockerTransport<'a> {
    client: &'a DockerClient,
    deadline: Option<Instant>,
}

impl Transport for DockerTransport<'_> {
    fn call(
        &mut self,
        req: &DockerRequest,
        on_line: &mut dyn FnMut(&[u8]),
    ) -> Result<DockerResponse, ErrorBody> {
        let v = self.client.api_version(self.deadline)?;
        let uri = req.uri(Some(&v));
        let body = req.body_bytes();
        let mut lines = LineSplitter::default();
        let extra = registry_auth_header(req);
        let resp = self.client.send_with(
            req.method,
            &uri,
            &extra,
            body.as_deref(),
            self.deadline,
            &mut |d| {
                if req.progress {
                    lines.feed(d, on_line);
                }
            },
        )?;
        if req.progress {
            lines.finish(on_line);
        }
        Ok(resp)
    }
}
