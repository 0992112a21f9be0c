//! The latency mode's `floor` path: the least tunnel that can be built with our stack, as two
//! processes in the server's and the agent's place.
//!
//! - `docker-ctl-loadgen floor-server`: axum on a multi-thread tokio runtime, as the server
//!   (`FLOOR_RT=current`: a single-thread runtime, to see whether the runtime's cross-thread
//!   wake-ups matter; they did not, within the machine's noise).
//!   It prints `listening ADDR`; one agent connects to `/agent` (a WebSocket), and every other
//!   GET goes to that agent as one binary frame (4-byte id, then the request target). The
//!   agent's frame (4-byte id, 2-byte status, body) becomes the answer. The handler writes its
//!   frame itself (the socket's sink behind a lock), and a reader task hands each answer to
//!   its handler: one hand-over per call, between two tasks.
//! - `docker-ctl-loadgen floor-agent ADDR`: synchronous tungstenite on one thread, as the
//!   agent. Each frame becomes a raw HTTP/1.1 GET on one kept-alive Docker socket connection,
//!   read whole and sent back as one frame: no thread hand-over at all.
//!
//! Neither checks who asks, applies a policy, keeps a stream table, flow control, audit or
//! metrics. What they add over the direct socket is what the stack costs on this machine
//! before any of our work: the floor under the passthrough figure.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;

const DOCKER_SOCK: &str = "/var/run/docker.sock";
/// Answers larger than this are refused (the floor serves small JSON lists).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long a call may take, in either process, before it fails instead of hanging the run.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

type Answer = (u16, bytes::Bytes);

#[derive(Default)]
struct Floor {
    next: AtomicU32,
    waiting: Mutex<HashMap<u32, oneshot::Sender<Answer>>>,
    sink: tokio::sync::Mutex<Option<SplitSink<WebSocket, Message>>>,
}

/// `floor-server`: serves until killed.
pub(crate) fn server() -> ! {
    let rt = match std::env::var("FLOOR_RT").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    let r: Result<(), crate::Fail> = rt.block_on(async {
        use axum::serve::ListenerExt;
        let floor = Arc::new(Floor::default());
        let app = axum::Router::new()
            .route("/agent", axum::routing::get(agent_socket))
            .route("/ready", axum::routing::get(ready))
            .fallback(call)
            .with_state(floor);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    });
    if let Err(e) = r {
        eprintln!("floor-server: {e}");
    }
    std::process::exit(1)
}

async fn ready(State(floor): State<Arc<Floor>>) -> StatusCode {
    match floor.sink.lock().await.is_some() {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn agent_socket(State(floor): State<Arc<Floor>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| async move {
        let (sink, mut stream) = socket.split();
        *floor.sink.lock().await = Some(sink);
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Binary(b) = msg else { continue };
            if b.len() < 6 {
                continue;
            }
            let id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let status = u16::from_be_bytes([b[4], b[5]]);
            let waiter = floor.waiting.lock().ok().and_then(|mut w| w.remove(&id));
            if let Some(tx) = waiter {
                let _ = tx.send((status, b.slice(6..)));
            }
        }
        *floor.sink.lock().await = None;
    })
}

/// Any other request: one frame to the agent, its answer back.
async fn call(State(floor): State<Arc<Floor>>, req: Request) -> Response {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let id = floor.next.fetch_add(1, Ordering::Relaxed);
    let mut frame = Vec::with_capacity(4 + target.len());
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(target.as_bytes());
    let (tx, rx) = oneshot::channel();
    if let Ok(mut w) = floor.waiting.lock() {
        w.insert(id, tx);
    }
    let sent = match floor.sink.lock().await.as_mut() {
        Some(sink) => sink.send(Message::Binary(frame.into())).await.is_ok(),
        None => false,
    };
    if !sent {
        if let Ok(mut w) = floor.waiting.lock() {
            w.remove(&id);
        }
        return (StatusCode::BAD_GATEWAY, "no agent").into_response();
    }
    match tokio::time::timeout(CALL_TIMEOUT, rx).await {
        Err(_) => {
            if let Ok(mut w) = floor.waiting.lock() {
                w.remove(&id);
            }
            (StatusCode::GATEWAY_TIMEOUT, "the agent did not answer").into_response()
        }
        Ok(Ok((status, body))) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, [("content-type", "application/json")], body).into_response()
        }
        Ok(Err(_)) => (StatusCode::BAD_GATEWAY, "the agent went away").into_response(),
    }
}

/// `floor-agent ADDR`: serves frames until the server goes.
pub(crate) fn agent(addr: &str) -> ! {
    if let Err(e) = agent_loop(addr) {
        eprintln!("floor-agent: {e}");
    }
    std::process::exit(1)
}

fn agent_loop(addr: &str) -> Result<(), crate::Fail> {
    use tokio_tungstenite::tungstenite::{client::client, Message};
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) = client(format!("ws://{addr}/agent"), tcp).map_err(|e| e.to_string())?;
    let docker = UnixStream::connect(DOCKER_SOCK)?;
    docker.set_read_timeout(Some(CALL_TIMEOUT))?;
    docker.set_write_timeout(Some(CALL_TIMEOUT))?;
    let mut to_docker = docker.try_clone()?;
    let mut from_docker = BufReader::new(docker);
    loop {
        let Message::Binary(b) = ws.read()? else {
            continue;
        };
        if b.len() < 4 {
            continue;
        }
        let target = std::str::from_utf8(&b[4..])?;
        write!(to_docker, "GET {target} HTTP/1.1\r\nHost: docker\r\n\r\n")?;
        let (status, body) = read_response(&mut from_docker)?;
        let mut out = Vec::with_capacity(6 + body.len());
        out.extend_from_slice(&b[..4]);
        out.extend_from_slice(&status.to_be_bytes());
        out.extend_from_slice(&body);
        ws.send(Message::Binary(out.into()))?;
    }
}

/// One HTTP/1.1 response: its status and its whole body (`Content-Length` or chunked).
fn read_response(r: &mut impl BufRead) -> Result<(u16, Vec<u8>), crate::Fail> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("the daemon sent no status line")?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err("the daemon closed the connection".into());
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.trim().parse::<usize>()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.trim().eq_ignore_ascii_case("chunked");
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)?;
            if size == 0 {
                line.clear();
                r.read_line(&mut line)?;
                break;
            }
            if body.len() + size > MAX_BODY {
                return Err("the daemon's answer is too large".into());
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            r.read_exact(&mut body[start..])?;
            body.truncate(start + size);
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err("the daemon's answer is too large".into());
        }
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok((status, body))
}
