//! The latency mode's `floor` path: a minimal tunnel built from our stack, as two processes in
//! the server's and the agent's place.
//!
//! - `docker-ctl-loadgen floor-server`: axum on a multi-thread tokio runtime, as the server
//!   (`FLOOR_RT=current`: a single-thread runtime, to see whether the runtime's cross-thread
//!   wake-ups matter; they did not, within the machine's noise).
//!   It prints `listening ADDR`; one agent connects to `/agent` (a WebSocket), and every other
//!   GET goes to that agent as one binary frame (4-byte id, then the request target); other
//!   methods are refused. The agent's frame (4-byte id, 2-byte status, body) becomes the
//!   answer, as `application/json` (the load generator only counts its bytes). The handler
//!   writes its frame itself (the socket's sink behind a lock), and a reader task hands each
//!   answer to its handler: one hand-over per call, between two tasks.
//! - `docker-ctl-loadgen floor-agent ADDR`: synchronous tungstenite on one thread, as the
//!   agent. Each frame becomes an HTTP/1.1 GET on one kept-alive Docker socket connection,
//!   whose answer is read whole with the agent's own reader (`agent_lite::daemon::http`) and
//!   sent back as one frame: no thread hand-over at all.
//!
//! Neither checks who asks, applies a policy, keeps a stream table, flow control, audit or
//! metrics. What they add over the direct socket is what the stack costs on this machine
//! before any of our work: the floor under the passthrough figure. Both exit when the load
//! generator does ([`crate::exit_with_parent`]).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agent_lite::daemon::http::{Framing, ResponseReader};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;

use docker_ctl_tests::DOCKER_SOCKET;

/// Answers larger than this are refused (the floor serves small JSON lists).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long a call may take, in either process, before it fails instead of hanging the run.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

type Answer = (u16, bytes::Bytes);

/// The connected agent's sink, with the number of its connection.
type Sink = (u64, SplitSink<WebSocket, Message>);

#[derive(Default)]
struct Floor {
    next: AtomicU32,
    connections: AtomicU64,
    waiting: Mutex<HashMap<u32, oneshot::Sender<Answer>>>,
    sink: tokio::sync::Mutex<Option<Sink>>,
}

impl Floor {
    /// The waiter of call `id`, taken out of the table (its answer came, or it gave up).
    fn take(&self, id: u32) -> Option<oneshot::Sender<Answer>> {
        self.waiting.lock().ok().and_then(|mut w| w.remove(&id))
    }
}

/// `floor-server`: serves until the load generator exits.
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

/// The agent's WebSocket: the latest connection is the one calls go to. When it ends, the
/// calls still waiting for it fail at once.
async fn agent_socket(State(floor): State<Arc<Floor>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| async move {
        let me = floor.connections.fetch_add(1, Ordering::Relaxed);
        let (sink, mut stream) = socket.split();
        *floor.sink.lock().await = Some((me, sink));
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Binary(b) = msg else { continue };
            if b.len() < 6 {
                continue;
            }
            let id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let status = u16::from_be_bytes([b[4], b[5]]);
            if let Some(tx) = floor.take(id) {
                let _ = tx.send((status, b.slice(6..)));
            }
        }
        let mut sink = floor.sink.lock().await;
        if sink.as_ref().is_some_and(|(n, _)| *n == me) {
            *sink = None;
            // Dropping the senders ends their calls with "the agent went away".
            if let Ok(mut w) = floor.waiting.lock() {
                w.clear();
            }
        }
    })
}

/// Any other request: a GET goes to the agent as one frame, its answer comes back.
async fn call(State(floor): State<Arc<Floor>>, req: Request) -> Response {
    if req.method() != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "the floor forwards GET only",
        )
            .into_response();
    }
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
        Some((_, sink)) => sink.send(Message::Binary(frame.into())).await.is_ok(),
        None => false,
    };
    if !sent {
        floor.take(id);
        return (StatusCode::BAD_GATEWAY, "no agent").into_response();
    }
    match tokio::time::timeout(CALL_TIMEOUT, rx).await {
        Err(_) => {
            floor.take(id);
            (StatusCode::GATEWAY_TIMEOUT, "the agent did not answer").into_response()
        }
        Ok(Ok((status, body))) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, [("content-type", "application/json")], body).into_response()
        }
        Ok(Err(_)) => (StatusCode::BAD_GATEWAY, "the agent went away").into_response(),
    }
}

/// `floor-agent ADDR`: serves frames until the server or the load generator goes.
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
    let docker = UnixStream::connect(DOCKER_SOCKET)?;
    docker.set_read_timeout(Some(CALL_TIMEOUT))?;
    docker.set_write_timeout(Some(CALL_TIMEOUT))?;
    let mut to_docker = docker.try_clone()?;
    let mut from_docker = ResponseReader::new(docker);
    loop {
        let Message::Binary(b) = ws.read()? else {
            continue;
        };
        if b.len() < 4 {
            continue;
        }
        let target = std::str::from_utf8(&b[4..])?;
        write!(to_docker, "GET {target} HTTP/1.1\r\nHost: docker\r\n\r\n")?;
        let head = from_docker.read_head()?;
        let framing = match Framing::of(false, &head)? {
            // Read to its end, the connection could not be kept: the floor needs it again.
            Framing::ToEof => return Err("the daemon's answer has no length".into()),
            f => f,
        };
        let mut out = Vec::with_capacity(6 + 8192);
        out.extend_from_slice(&b[..4]);
        out.extend_from_slice(&head.status.to_be_bytes());
        from_docker.read_body(framing, MAX_BODY, &mut |d| out.extend_from_slice(d))?;
        ws.send(Message::Binary(out.into()))?;
    }
}
