//! The open streams of one WebSocket session and the queues towards the server.
//!
//! Owns: the session's table of open streams, flow control in both directions (the server's
//! window for data we send, and the check that the server respects ours), and the outgoing
//! queues the session thread drains with priority: control messages (`stream_response`,
//! `stream_credit`) always go ahead of data frames; a stream's `stream_end` travels in the
//! data queue right after its last data frame, so it never overtakes data. A whole answer
//! may instead go out at once through the session's [`Direct`] writer, on the stream's own
//! thread, when nothing is queued before it (`crate::direct`). Must not: write to the
//! WebSocket itself (the session and its `Direct` writer do) or talk to the daemon (the
//! stream's worker does).

use crate::agent::Agent;
use crate::daemon::Conn;
use crate::direct::{Direct, Frame};
use protocol::passthrough::Shape;
use protocol::{
    encode_data_frame, Envelope, ErrorBody, ErrorCode, Message, StreamCancelPayload,
    StreamCreditPayload, StreamEndPayload, StreamResponsePayload, MAX_STREAMS, STREAM_CHUNK,
    STREAM_WINDOW,
};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Data bytes queued for the WebSocket across all streams before producers wait. Keeps the
/// agent's memory flat however fast the daemon produces.
pub const QUEUE_CAP: usize = 512 * 1024;
/// The largest request body the agent buffers (JSON bodies of plain and upgrade routes, which
/// it sends with a Content-Length, and inspects for policy).
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Stack of a stream's request-body / hijack input thread.
const UP_STACK: usize = 64 * 1024;

/// What the server sent for a stream, in order, for the thread writing to the daemon.
#[derive(Debug)]
pub enum Up {
    Data(Vec<u8>),
    End,
}

/// An item of the data queue.
#[derive(Debug)]
pub enum Out {
    /// An encoded binary data frame.
    Frame(Vec<u8>),
    /// An encoded text message that must follow the stream's data (`stream_end`).
    Text(String),
}

/// A response head: the daemon's status and end-to-end headers.
pub type Head = (u16, Vec<(String, String)>);

/// What the session thread sends next.
#[derive(Debug)]
pub enum Item {
    /// An encoded text message.
    Control(String),
    Data(Out),
}

#[derive(Default)]
struct Queues {
    control: VecDeque<String>,
    data: VecDeque<Out>,
    data_bytes: usize,
}

struct CtlState {
    /// Bytes we may still send (the server's window for us).
    credit: u32,
    /// Bytes the server sent that we have not credited back yet.
    unacked: u32,
    cancelled: bool,
    /// The daemon connection, for shutting it down from the session thread.
    conn: Option<Conn>,
    /// Delivers the server's data to the stream's threads; `None` once the stream ended.
    up: Option<Sender<Up>>,
}

/// One open stream, shared by the session thread and the stream's threads.
pub struct Ctl {
    pub id: u32,
    st: Mutex<CtlState>,
    cv: Condvar,
}

impl Ctl {
    fn new(id: u32, up: Sender<Up>) -> Ctl {
        Ctl {
            id,
            st: Mutex::new(CtlState {
                credit: STREAM_WINDOW,
                unacked: 0,
                cancelled: false,
                conn: None,
                up: Some(up),
            }),
            cv: Condvar::new(),
        }
    }

    fn st(&self) -> MutexGuard<'_, CtlState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_cancelled(&self) -> bool {
        self.st().cancelled
    }

    /// Aborts the stream: the daemon connection is shut down and waiters wake up.
    pub fn cancel(&self) {
        let mut st = self.st();
        st.cancelled = true;
        st.up = None;
        if let Some(c) = st.conn.take() {
            c.shutdown();
        }
        drop(st);
        self.cv.notify_all();
    }

    /// Ends the stream normally: closes the daemon connection, stops the input thread.
    pub(super) fn finish(&self) {
        let mut st = self.st();
        st.up = None;
        if let Some(c) = st.conn.take() {
            c.shutdown();
        }
    }

    /// Takes back the daemon connection of a stream whose answer was read to its end, to keep
    /// it alive for the next request; `None` when the stream was cancelled.
    pub(super) fn take_conn(&self) -> Option<Conn> {
        let mut st = self.st();
        if st.cancelled {
            return None;
        }
        st.conn.take()
    }

    /// Remembers the daemon connection; false (and the connection closed) when the stream
    /// was cancelled meanwhile.
    pub fn set_conn(&self, conn: Conn) -> bool {
        let mut st = self.st();
        if st.cancelled {
            conn.shutdown();
            return false;
        }
        st.conn = Some(conn);
        true
    }

    /// Waits until there is credit and takes as much of it as there is, up to `max` bytes;
    /// `None` when cancelled. Using whatever part of the window is left (rather than waiting
    /// for room for a whole piece) keeps a receiver that credits only a full window from
    /// waiting on a sender that waits for more credit.
    fn acquire(&self, max: u32) -> Option<u32> {
        let mut st = self.st();
        loop {
            if st.cancelled {
                return None;
            }
            if st.credit > 0 {
                let n = st.credit.min(max);
                st.credit -= n;
                return Some(n);
            }
            st = match self.cv.wait_timeout(st, Duration::from_secs(1)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// The open streams and outgoing queues of one WebSocket session.
pub struct Hub {
    pub(crate) agent: Arc<Agent>,
    q: Mutex<Queues>,
    space: Condvar,
    streams: Mutex<HashMap<u32, Arc<Ctl>>>,
    closed: AtomicBool,
    /// The session's idle stream threads.
    pub(crate) spares: Arc<super::spare::Spares>,
    /// The session's socket for whole answers; gone with the session.
    direct: Option<Weak<dyn Direct>>,
}

impl Hub {
    pub fn new(agent: Arc<Agent>, direct: Option<Weak<dyn Direct>>) -> Arc<Hub> {
        Arc::new(Hub {
            direct,
            agent,
            q: Mutex::new(Queues::default()),
            space: Condvar::new(),
            streams: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            spares: super::spare::Spares::new(super::MAIN_STACK),
        })
    }

    fn q(&self) -> MutexGuard<'_, Queues> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<u32, Arc<Ctl>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Streams open right now.
    pub fn open_count(&self) -> usize {
        self.streams().len()
    }

    /// Whether anything waits to be sent.
    pub fn has_output(&self) -> bool {
        let q = self.q();
        !q.control.is_empty() || !q.data.is_empty()
    }

    /// The next thing to send: control first; data only when `data` is true.
    pub fn pop(&self, data: bool) -> Option<Item> {
        let mut q = self.q();
        if let Some(env) = q.control.pop_front() {
            return Some(Item::Control(env));
        }
        if !data {
            return None;
        }
        let out = q.data.pop_front()?;
        if let Out::Frame(f) = &out {
            q.data_bytes = q.data_bytes.saturating_sub(f.len());
        }
        drop(q);
        self.space.notify_all();
        Some(Item::Data(out))
    }

    fn envelope(&self, kind: &str, m: Message) -> Envelope {
        Envelope::new(self.agent.next_id(kind), m)
    }

    pub(crate) fn push_control(&self, m: Message) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let text = self.envelope("sc", m).encode();
        self.q().control.push_back(text);
        self.agent.waker.wake();
    }

    /// The queues once there is room for more data; `None` when the stream or session ended.
    fn room(&self, ctl: &Ctl) -> Option<MutexGuard<'_, Queues>> {
        let mut q = self.q();
        loop {
            if self.closed.load(Ordering::SeqCst) || ctl.is_cancelled() {
                return None;
            }
            if q.data_bytes < QUEUE_CAP {
                return Some(q);
            }
            q = match self.space.wait_timeout(q, Duration::from_millis(200)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Queues data (waiting for room in the queue); false when the stream or session ended.
    fn push_data(&self, ctl: &Ctl, out: Out) -> bool {
        let Some(mut q) = self.room(ctl) else {
            return false;
        };
        if let Out::Frame(f) = &out {
            q.data_bytes += f.len();
        }
        q.data.push_back(out);
        drop(q);
        self.agent.waker.wake();
        true
    }

    /// Queues the same messages as [`Hub::respond`] (when `head` is given), [`Hub::send_data`]
    /// and [`Hub::end`] (when `end`), in that order, but all at once with one wake-up of the
    /// session: a small answer then leaves in one write instead of one per message, and the
    /// session thread wakes once, or not at all: the answer is written at once through the
    /// session's [`Direct`] writer when that is free. False when the stream or session ended.
    pub fn answer(&self, ctl: &Ctl, head: Option<Head>, data: &[u8], end: bool) -> bool {
        if data.len() > STREAM_WINDOW as usize {
            // More than the server's window: it grants credit only as its client reads, so
            // the pieces go out as the credit comes (a filtered answer is read whole first).
            if let Some((status, headers)) = head {
                self.respond(ctl, status, headers);
            }
            let sent = self.send_data(ctl, data);
            if sent && end {
                self.end(ctl, None);
            }
            return sent;
        }
        let mut items = Vec::new();
        if let Some((status, headers)) = head {
            let m = StreamResponsePayload {
                stream_id: ctl.id,
                status,
                headers,
            };
            items.push(Item::Control(
                self.envelope("sc", Message::StreamResponse(m)).encode(),
            ));
        }
        let mut rest = data;
        while !rest.is_empty() {
            let want = rest.len().min(STREAM_CHUNK) as u32;
            let Some(n) = ctl.acquire(want) else {
                return false;
            };
            let (piece, tail) = rest.split_at(n as usize);
            items.push(Item::Data(Out::Frame(encode_data_frame(ctl.id, piece))));
            rest = tail;
        }
        if end {
            let m = StreamEndPayload {
                stream_id: ctl.id,
                error: None,
            };
            let text = self.envelope("se", Message::StreamEnd(m)).encode();
            items.push(Item::Data(Out::Text(text)));
        }
        if let Some(d) = self.direct.as_ref().and_then(Weak::upgrade) {
            if self.write_direct(d.as_ref(), ctl, &mut items) {
                return true;
            }
        }
        let Some(mut q) = self.room(ctl) else {
            return false;
        };
        for item in items {
            match item {
                Item::Control(text) => q.control.push_back(text),
                Item::Data(out) => {
                    if let Out::Frame(f) = &out {
                        q.data_bytes += f.len();
                    }
                    q.data.push_back(out);
                }
            }
        }
        drop(q);
        self.agent.waker.wake();
        true
    }

    /// Writes `items` through the session's socket when it is free and nothing is queued
    /// before them; false (and `items` untouched) otherwise, and when the stream was
    /// cancelled (the queueing path then says so). A failed write drops the link, and the
    /// stream ends with the session.
    fn write_direct(&self, d: &dyn Direct, ctl: &Ctl, items: &mut Vec<Item>) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let Some(mut w) = d.try_hold() else {
            return false;
        };
        if ctl.is_cancelled() || self.has_output() {
            return false;
        }
        for item in items.drain(..) {
            let frame = match item {
                Item::Control(text) | Item::Data(Out::Text(text)) => Frame::Text(text),
                Item::Data(Out::Frame(f)) => Frame::Binary(f),
            };
            if !w.write(frame) {
                return true;
            }
        }
        w.finish();
        true
    }

    /// Queues without waiting (the session thread's own small answers).
    fn push_data_now(&self, out: Out) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut q = self.q();
        if let Out::Frame(f) = &out {
            q.data_bytes += f.len();
        }
        q.data.push_back(out);
        drop(q);
        self.agent.waker.wake();
    }

    /// Sends response bytes: frames of at most `STREAM_CHUNK`, each within the server's
    /// credit (a frame may be smaller, to use the last of the window). False when the stream
    /// or session ended.
    pub fn send_data(&self, ctl: &Ctl, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let want = data.len().min(STREAM_CHUNK) as u32;
            let Some(n) = ctl.acquire(want) else {
                return false;
            };
            let (piece, rest) = data.split_at(n as usize);
            if !self.push_data(ctl, Out::Frame(encode_data_frame(ctl.id, piece))) {
                return false;
            }
            data = rest;
        }
        true
    }

    /// Sends the daemon's status and headers.
    pub fn respond(&self, ctl: &Ctl, status: u16, headers: Vec<(String, String)>) {
        if ctl.is_cancelled() {
            return;
        }
        self.push_control(Message::StreamResponse(StreamResponsePayload {
            stream_id: ctl.id,
            status,
            headers,
        }));
    }

    /// No more data from us (after the data already queued).
    pub fn end(&self, ctl: &Ctl, error: Option<ErrorBody>) {
        let env = self.envelope(
            "se",
            Message::StreamEnd(StreamEndPayload {
                stream_id: ctl.id,
                error,
            }),
        );
        self.push_data(ctl, Out::Text(env.encode()));
    }

    /// Answers a stream with a Docker-style JSON error (`{"message": ...}`), as the CLI
    /// prints it.
    pub fn refuse(&self, ctl: &Ctl, status: u16, message: &str) {
        self.respond(ctl, status, json_headers());
        let body = error_json(message);
        if self.send_data(ctl, &body) {
            self.end(ctl, None);
        }
    }

    /// Grants the server `n` more bytes: we wrote that much of its data to the daemon.
    pub fn grant(&self, ctl: &Ctl, n: usize) {
        if n == 0 {
            return;
        }
        {
            let mut st = ctl.st();
            st.unacked = st.unacked.saturating_sub(n as u32);
            if st.cancelled {
                return;
            }
        }
        self.push_control(Message::StreamCredit(StreamCreditPayload {
            stream_id: ctl.id,
            bytes: n as u32,
        }));
    }

    pub(super) fn remove(&self, ctl: &Arc<Ctl>) {
        let mut s = self.streams();
        if s.get(&ctl.id).is_some_and(|c| Arc::ptr_eq(c, ctl)) {
            s.remove(&ctl.id);
        }
    }

    /// Refuses a stream from the session thread: status, JSON message and end.
    pub(super) fn refuse_now(&self, id: u32, status: u16, message: &str) {
        self.push_control(Message::StreamResponse(StreamResponsePayload {
            stream_id: id,
            status,
            headers: json_headers(),
        }));
        self.push_data_now(Out::Frame(encode_data_frame(id, &error_json(message))));
        let env = self.envelope(
            "se",
            Message::StreamEnd(StreamEndPayload {
                stream_id: id,
                error: None,
            }),
        );
        self.push_data_now(Out::Text(env.encode()));
    }

    pub(super) fn end_now(&self, id: u32, error: ErrorBody) {
        let env = self.envelope(
            "se",
            Message::StreamEnd(StreamEndPayload {
                stream_id: id,
                error: Some(error),
            }),
        );
        self.push_data_now(Out::Text(env.encode()));
    }

    /// Whether a new stream may have this id: false (and the stream ended with an error)
    /// when the id is in use or too many streams are open.
    pub(super) fn id_free(&self, id: u32) -> bool {
        let s = self.streams();
        if s.contains_key(&id) {
            drop(s);
            log::warn!("the server reused open stream id {id}");
            self.end_now(
                id,
                ErrorBody::invalid_params(format!("stream {id} is already open")),
            );
            return false;
        }
        if s.len() >= MAX_STREAMS {
            drop(s);
            log::warn!("stream {id} refused: {MAX_STREAMS} streams already open");
            self.end_now(
                id,
                ErrorBody::new(
                    ErrorCode::RateLimited,
                    format!("the agent already has {MAX_STREAMS} Docker API streams open"),
                ),
            );
            return false;
        }
        true
    }

    /// Opens stream `id` in the table: its control block and the receiver of what the
    /// server sends for it.
    pub(super) fn insert(&self, id: u32) -> (Arc<Ctl>, UpRx) {
        let (tx, rx) = channel();
        let ctl = Arc::new(Ctl::new(id, tx));
        self.streams().insert(id, ctl.clone());
        (ctl, rx)
    }

    /// A binary data frame of the server.
    pub fn on_data(&self, id: u32, data: &[u8]) {
        let Some(ctl) = self.streams().get(&id).cloned() else {
            // A stream that ended or was refused: its in-flight frames are dropped.
            log::trace!("data for stream {id}, which is not open");
            return;
        };
        let mut st = ctl.st();
        let used = st.unacked as usize + data.len();
        if used > STREAM_WINDOW as usize {
            drop(st);
            log::warn!("stream {id}: the server exceeded the flow-control window; cancelling");
            self.cancel_stream(&ctl, "flow control: more data than the window allows");
            return;
        }
        st.unacked = used as u32;
        if let Some(tx) = &st.up {
            let _ = tx.send(Up::Data(data.to_vec()));
        }
    }

    /// `stream_end` of the server: its direction is done (with an error: the stream failed).
    pub fn on_end(&self, id: u32, error: Option<ErrorBody>) {
        let Some(ctl) = self.streams().get(&id).cloned() else {
            return;
        };
        if let Some(e) = error {
            log::debug!("stream {id}: the server ended it with an error: {e}");
            self.remove(&ctl);
            ctl.cancel();
            return;
        }
        let st = ctl.st();
        if let Some(tx) = &st.up {
            let _ = tx.send(Up::End);
        }
    }

    /// `stream_cancel` of the server: abort now, closing the daemon connection.
    pub fn on_cancel(&self, id: u32, reason: Option<&str>) {
        let Some(ctl) = self.streams().remove(&id) else {
            return;
        };
        log::debug!(
            "stream {id}: cancelled by the server ({})",
            reason.unwrap_or("no reason")
        );
        ctl.cancel();
    }

    /// `stream_credit` of the server.
    pub fn on_credit(&self, id: u32, bytes: u32) {
        let Some(ctl) = self.streams().get(&id).cloned() else {
            return;
        };
        let mut st = ctl.st();
        // A confused peer cannot grow the window without bound.
        st.credit = st.credit.saturating_add(bytes).min(4 * STREAM_WINDOW);
        drop(st);
        ctl.cv.notify_all();
    }

    fn cancel_stream(&self, ctl: &Arc<Ctl>, reason: &str) {
        self.remove(ctl);
        ctl.cancel();
        self.push_control(Message::StreamCancel(StreamCancelPayload {
            stream_id: ctl.id,
            reason: Some(reason.to_string()),
        }));
    }

    /// The session ended: every stream is cancelled and queued output dropped.
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let all: Vec<Arc<Ctl>> = self.streams().drain().map(|(_, c)| c).collect();
        if !all.is_empty() {
            log::info!(
                "cancelling {} Docker API stream(s): the session ended",
                all.len()
            );
        }
        for c in all {
            c.cancel();
        }
        let mut q = self.q();
        q.control.clear();
        q.data.clear();
        q.data_bytes = 0;
        drop(q);
        self.space.notify_all();
    }
}

fn json_headers() -> Vec<(String, String)> {
    vec![("Content-Type".into(), "application/json".into())]
}

/// `{"message": "..."}\n`, as dockerd writes errors.
pub fn error_json(message: &str) -> Vec<u8> {
    let mut v = serde_json::json!({ "message": message })
        .to_string()
        .into_bytes();
    v.push(b'\n');
    v
}

/// Whether a route's request body is streamed (chunked) rather than buffered.
pub(crate) fn streams_body(shape: Shape) -> bool {
    shape == Shape::Stream
}

/// Receives a stream's request data on its own thread.
pub(crate) type UpRx = Receiver<Up>;

pub(crate) fn spawn_up(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(UP_STACK)
        .spawn(f)
}
