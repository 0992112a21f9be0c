//! One passthrough stream on its own thread: a daemon connection (a kept-alive one for a
//! plain GET or HEAD without a body, given back when its answer was read to the end), the
//! request (its body buffered when small and inspectable, streamed chunked when large), the
//! response head as `stream_response` (a plain answer's head held until its body's first
//! piece, so a small answer is queued whole), and the body as data frames within the server's
//! credit. After a `101`
//! the connection is hijacked: raw bytes flow both ways, and the server's `stream_end`
//! half-closes the daemon socket.
//!
//! Owns: HTTP framing towards the daemon for one stream. Must not: touch the WebSocket.

use super::hub::{spawn_up, streams_body, Ctl, Head, Hub, Up, UpRx, BODY_LIMIT};
use crate::daemon::http::{Framing, HttpError, ResponseReader};
use crate::daemon::Conn;
use crate::policy::query;
use crate::policy::request::{admit, filter_answer, AgentDaemon, Answer, Body};
use crate::policy::scope::Scope;
use crate::policy::status_of;
use protocol::passthrough::{is_hop_by_hop, Route, Shape};
use protocol::{ErrorBody, ErrorCode, StreamOpenPayload, STREAM_CHUNK};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the request body reaches the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyMode {
    None,
    /// Collected (bounded), then sent with a Content-Length.
    Buffered,
    /// Streamed with chunked transfer coding.
    Chunked,
    /// Streamed as is: the server forwarded a Content-Length.
    Length(u64),
}

/// Largest answer the agent buffers to filter it (env redaction, label scope).
const FILTER_LIMIT: usize = 4 * 1024 * 1024;

/// Runs the stream to its end, then closes the daemon connection and forgets the stream.
pub(super) fn stream_thread(
    hub: Arc<Hub>,
    ctl: Arc<Ctl>,
    open: StreamOpenPayload,
    route: Route,
    rx: UpRx,
) {
    let id = ctl.id;
    if let Err(e) = serve(&hub, &ctl, &open, &route, rx) {
        if !ctl.is_cancelled() {
            log::debug!("stream {id}: {e}");
            hub.end(&ctl, Some(e));
        }
    }
    ctl.finish();
    hub.remove(&ctl);
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn unreachable(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::DockerUnreachable,
        format!("the Docker daemon connection failed: {e}"),
    )
}

/// Collects a request body of the server until its `stream_end`, crediting as it arrives.
/// `Ok(None)`: the stream was cancelled. `Err`: larger than [`BODY_LIMIT`].
fn collect(hub: &Hub, ctl: &Ctl, rx: &UpRx) -> Result<Option<Vec<u8>>, ()> {
    let mut body = Vec::new();
    loop {
        match rx.recv() {
            Ok(Up::Data(d)) => {
                if body.len() + d.len() > BODY_LIMIT {
                    return Err(());
                }
                body.extend_from_slice(&d);
                hub.grant(ctl, d.len());
            }
            Ok(Up::End) => return Ok(Some(body)),
            Err(_) => return Ok(None),
        }
    }
}

fn serve(
    hub: &Arc<Hub>,
    ctl: &Arc<Ctl>,
    open: &StreamOpenPayload,
    route: &Route,
    rx: UpRx,
) -> Result<(), ErrorBody> {
    let agent = &hub.agent;
    let upgrade = open.upgrade && route.shape == Shape::Upgrade;
    let forwarded_len = header(&open.headers, "content-length").and_then(|v| v.trim().parse().ok());
    // Bodies of plain and upgrade routes are small JSON: always buffered (and inspected for
    // policy), whatever length the server forwarded.
    let mode = match (open.body, forwarded_len) {
        (false, _) => BodyMode::None,
        (true, _) if !streams_body(route.shape) => BodyMode::Buffered,
        (true, Some(n)) => BodyMode::Length(n),
        (true, None) => BodyMode::Chunked,
    };
    let Some(prepared) = prepare(hub, ctl, open, route, mode == BodyMode::Buffered, &rx) else {
        return Ok(());
    };
    let Prepared {
        target,
        body,
        answer,
        deadline,
    } = prepared;
    let mut rx = Some(rx);

    // A plain GET or HEAD goes on a kept-alive daemon connection (kept again afterwards).
    let reuse = mode == BodyMode::None
        && !upgrade
        && route.shape == Shape::Plain
        && matches!(open.method.as_str(), "GET" | "HEAD");
    let body_len = body.as_ref().map_or(0, Vec::len);
    let mut out = request_head(open, &target, mode, upgrade, reuse, body_len).into_bytes();
    if let Some(b) = body {
        out.extend_from_slice(&b);
    }
    // Streamed request bodies are written by a second thread while the answer is read.
    let streamed = matches!(mode, BodyMode::Chunked | BodyMode::Length(_));
    let mut after_write = |w: Conn| match rx.take() {
        Some(r) if streamed => spawn_writer(hub, ctl, w, r, mode == BodyMode::Chunked, false),
        other => {
            rx = other;
            Ok(())
        }
    };
    let Some((mut reader, resp)) = exchange(hub, ctl, &out, reuse, &mut after_write)? else {
        return Ok(());
    };
    drop(out);
    let hijacked = resp.status == 101 && upgrade;
    let framing = if hijacked {
        Framing::ToEof
    } else {
        Framing::of(open.method.eq_ignore_ascii_case("HEAD"), &resp).map_err(unreachable)?
    };
    let mut held = Held::head(hub, ctl, &resp, !hijacked && route.shape == Shape::Plain);
    if hijacked {
        log::debug!("stream {}: hijacked ({})", ctl.id, route.action);
        if let Some(r) = rx.take() {
            let w = reader.get_mut().try_clone().map_err(unreachable)?;
            spawn_writer(hub, ctl, w, r, false, true)?;
        }
    }

    let filter = answer.filter(|_| (200..300).contains(&resp.status));
    let r = relay(hub, ctl, &mut reader, framing, filter, deadline, &mut held);
    if r.is_err() {
        // What an error ends is sent first, as when nothing is held.
        held.release(hub, ctl, false);
    } else if reuse && framing != Framing::ToEof && !closes(&resp) {
        if let (Some(conn), Some(_)) = (reader.into_inner_if_drained(), ctl.take_conn()) {
            agent.daemon.keep(conn);
        }
    }
    r
}

/// Whether the daemon closes the connection after this answer.
fn closes(resp: &crate::daemon::http::Head) -> bool {
    resp.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// Connects (to a kept-alive connection when `reuse` and there is one), remembers the
/// connection for cancelling, writes `out`, hands a writer to `after_write`, and reads the
/// answer's head. A kept-alive connection that fails before any answer (the daemon may have
/// closed it meanwhile) is replaced once by a new one; only requests without a body are
/// sent on one, so sending again is safe. `None`: the stream was cancelled.
fn exchange(
    hub: &Hub,
    ctl: &Ctl,
    out: &[u8],
    reuse: bool,
    after_write: &mut dyn FnMut(Conn) -> Result<(), ErrorBody>,
) -> Result<Option<(ResponseReader<Conn>, crate::daemon::http::Head)>, ErrorBody> {
    let daemon = &hub.agent.daemon;
    let mut idle_ok = reuse;
    loop {
        let (conn, idle) = match idle_ok {
            true => daemon.connect_reusable(),
            false => daemon.connect_raw().map(|c| (c, false)),
        }
        .map_err(ErrorBody::from)?;
        idle_ok = false;
        if !ctl.set_conn(conn.try_clone().map_err(unreachable)?) {
            return Ok(None);
        }
        let mut w = conn.try_clone().map_err(unreachable)?;
        let written = w.write_all(out);
        if written.is_ok() {
            after_write(w)?;
        }
        let mut reader = ResponseReader::new(conn).with_read_size(STREAM_CHUNK);
        match written
            .map_err(HttpError::Io)
            .and_then(|()| reader.read_head())
        {
            Ok(h) => return Ok(Some((reader, h))),
            Err(_) if ctl.is_cancelled() => return Ok(None),
            Err(e) if idle => log::debug!(
                "stream {}: a kept-alive daemon connection failed ({e}); using a new one",
                ctl.id
            ),
            Err(e) => return Err(unreachable(e)),
        }
    }
}

/// A plain answer's head and the first piece of its body, held until the body ends or more
/// of it comes, so that a small answer is queued in one go ([`Hub::answer`]).
struct Held {
    head: Option<Head>,
    first: Option<Vec<u8>>,
}

impl Held {
    /// The daemon's status and end-to-end headers: held when `hold` (a plain answer, whose
    /// body follows at once), else sent now.
    fn head(hub: &Hub, ctl: &Ctl, resp: &crate::daemon::http::Head, hold: bool) -> Held {
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .filter(|(k, _)| !is_hop_by_hop(k))
            .map(|(k, v)| (canonical(k), v.clone()))
            .collect();
        let head = if hold {
            Some((resp.status, headers))
        } else {
            hub.respond(ctl, resp.status, headers);
            None
        };
        Held { head, first: None }
    }

    /// Sends `d` (or holds it, if it is the first piece after a held head); false when the
    /// stream or session ended.
    fn send(&mut self, hub: &Hub, ctl: &Ctl, d: &[u8]) -> bool {
        if self.head.is_none() {
            return hub.send_data(ctl, d);
        }
        if self.first.is_none() {
            self.first = Some(d.to_vec());
            return true;
        }
        self.release(hub, ctl, false) && hub.send_data(ctl, d)
    }

    /// Queues what is held (with `stream_end` when `end`); false when the stream ended.
    fn release(&mut self, hub: &Hub, ctl: &Ctl, end: bool) -> bool {
        let (head, first) = (self.head.take(), self.first.take());
        if head.is_none() && first.is_none() && !end {
            return true;
        }
        hub.answer(ctl, head, first.as_deref().unwrap_or_default(), end)
    }
}

/// Sends the daemon's answer body as data frames (after the policy's filter, if any), then
/// `stream_end`; a held head goes with the first frame.
fn relay(
    hub: &Hub,
    ctl: &Ctl,
    reader: &mut ResponseReader<Conn>,
    framing: Framing,
    filter: Option<Answer>,
    deadline: Option<Instant>,
    held: &mut Held,
) -> Result<(), ErrorBody> {
    let agent = &hub.agent;
    let mut ok = true;
    let result = if let Some(answer) = filter {
        let mut buf = Vec::new();
        let r = reader.read_body(framing, FILTER_LIMIT, &mut |d| buf.extend_from_slice(d));
        if r.is_ok() {
            let daemon = AgentDaemon {
                client: &agent.daemon,
                deadline,
            };
            let scope = Scope::new(&agent.config.policy, &daemon);
            ok = held.send(hub, ctl, &filter_answer(&scope, answer, &buf)?);
        }
        r
    } else {
        reader.read_body_coalesced(framing, usize::MAX, STREAM_CHUNK, &mut |d| {
            if ok && !held.send(hub, ctl, d) {
                ok = false;
                ctl.cancel();
            }
        })
    };
    if !ok || ctl.is_cancelled() {
        return Ok(());
    }
    match result {
        Ok(_) => {
            held.release(hub, ctl, true);
            Ok(())
        }
        Err(HttpError::TooLarge(n)) => Err(ErrorBody::new(
            ErrorCode::DockerError,
            format!("the answer is larger than {n} bytes"),
        )),
        Err(e) => Err(unreachable(e)),
    }
}

/// A request as the local policy lets it go.
struct Prepared {
    /// The request target: path and query as the agent sends them.
    target: String,
    /// The body to send with a Content-Length (buffered routes).
    body: Option<Vec<u8>>,
    /// What the policy does to a 2xx answer.
    answer: Option<Answer>,
    /// The deadline of the policy's own daemon requests.
    deadline: Option<Instant>,
}

/// Collects a buffered request body, then runs the local policy on the request
/// ([`crate::policy::request::admit`]). `None`: the stream was answered (refused) or
/// cancelled.
fn prepare(
    hub: &Hub,
    ctl: &Ctl,
    open: &StreamOpenPayload,
    route: &Route,
    buffered: bool,
    rx: &UpRx,
) -> Option<Prepared> {
    let mut body = None;
    if buffered {
        match collect(hub, ctl, rx) {
            Ok(Some(b)) => body = Some(b),
            Ok(None) => return None,
            Err(()) => {
                hub.refuse(
                    ctl,
                    413,
                    &format!(
                        "the request body is larger than the agent's limit of {BODY_LIMIT} bytes"
                    ),
                );
                return None;
            }
        }
    }
    let agent = &hub.agent;
    let (path, query) = match open.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (open.path.as_str(), None),
    };
    let deadline = Some(Instant::now() + agent.daemon.timeout().min(Duration::from_secs(30)));
    let daemon = AgentDaemon {
        client: &agent.daemon,
        deadline,
    };
    let admitted = query::parse(query)
        .map_err(ErrorBody::invalid_params)
        .and_then(|q| {
            let scope = Scope::new(&agent.config.policy, &daemon);
            admit(&scope, route, q, &open.headers, body.as_deref())
        });
    let adm = match admitted {
        Ok(a) => a,
        Err(e) => {
            log::info!("stream {}: {} {path} refused: {e}", ctl.id, open.method);
            hub.refuse(ctl, status_of(&e), &e.message);
            return None;
        }
    };
    let mut target = match &route.version {
        Some(v) => format!("/v{v}{}", adm.path),
        None => adm.path,
    };
    if !adm.query.is_empty() {
        target.push('?');
        target.push_str(&query::encode(&adm.query));
    }
    let body = match adm.body {
        Body::Same => body,
        Body::Json(v) => Some(v.to_string().into_bytes()),
        Body::Empty => None,
    };
    Some(Prepared {
        target,
        body,
        answer: adm.answer,
        deadline,
    })
}

/// The request head for the daemon: the server's headers without hop-by-hop ones, and our
/// own framing and connection handling.
fn request_head(
    open: &StreamOpenPayload,
    target: &str,
    mode: BodyMode,
    upgrade: bool,
    keep_alive: bool,
    body_len: usize,
) -> String {
    let mut head = format!("{} {target} HTTP/1.1\r\nHost: docker\r\n", open.method);
    for (k, v) in &open.headers {
        if is_hop_by_hop(k) || !valid_header(k, v) {
            continue;
        }
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    match mode {
        BodyMode::None if matches!(open.method.as_str(), "POST" | "PUT") => {
            head.push_str("Content-Length: 0\r\n")
        }
        BodyMode::None => {}
        BodyMode::Buffered => head.push_str(&format!("Content-Length: {body_len}\r\n")),
        BodyMode::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        BodyMode::Length(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
    }
    if upgrade {
        head.push_str("Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n");
    } else if keep_alive {
        head.push_str("\r\n");
    } else {
        head.push_str("Connection: close\r\n\r\n");
    }
    head
}

/// `api-version` -> `Api-Version`, as dockerd spells its headers.
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

/// Writes the server's data to the daemon on another thread: a chunked request body, a
/// forwarded-length body, or a hijacked connection's input (`stream_end` half-closes).
fn spawn_writer(
    hub: &Arc<Hub>,
    ctl: &Arc<Ctl>,
    mut conn: Conn,
    rx: UpRx,
    chunked: bool,
    hijacked: bool,
) -> Result<(), ErrorBody> {
    let (hub, ctl) = (hub.clone(), ctl.clone());
    let name = format!("stream-{}-in", ctl.id);
    spawn_up(name, move || {
        let mut frame = Vec::new();
        loop {
            match rx.recv() {
                Ok(Up::Data(d)) => {
                    let r = if chunked {
                        frame.clear();
                        frame.extend_from_slice(format!("{:x}\r\n", d.len()).as_bytes());
                        frame.extend_from_slice(&d);
                        frame.extend_from_slice(b"\r\n");
                        conn.write_all(&frame)
                    } else {
                        conn.write_all(&d)
                    };
                    if let Err(e) = r {
                        log::debug!("stream {}: writing to the daemon: {e}", ctl.id);
                        return;
                    }
                    hub.grant(&ctl, d.len());
                }
                Ok(Up::End) => {
                    if chunked {
                        let _ = conn.write_all(b"0\r\n\r\n");
                    }
                    if hijacked {
                        conn.shutdown_write();
                    }
                    return;
                }
                Err(_) => return,
            }
        }
    })
    .map(|_| ())
    .map_err(|e| {
        ErrorBody::new(
            ErrorCode::RateLimited,
            format!("the agent cannot start a thread: {e}"),
        )
    })
}
