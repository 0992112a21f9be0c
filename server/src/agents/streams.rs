//! Docker API passthrough streams multiplexed over an agent's WebSocket (protocol version 2).
//!
//! Owns: the per-session table of open streams (ids, inbound routing, flow-control windows in
//! both directions) and [`AgentStream`], the handle a passthrough request holds: wait for the
//! response head, send request bytes (≤ `STREAM_CHUNK` per frame, never more than the agent's
//! credit), read response bytes (granting credit as they are consumed), and cancel on drop.
//! Must not: know HTTP or axum; the API layer turns a stream into an HTTP exchange.
//!
//! Ordering: `stream_open`, `stream_credit` and `stream_cancel` travel on the session's stream
//! control queue (ahead of data); `stream_end` travels on the data queue right after the
//! stream's last data frame, so it never overtakes data.
//!
//! Bounds against a hostile agent: each stream's inbound queue ([`Inbox`]) holds at most one
//! response head and one end, and its data is bounded by the flow-control window in bytes
//! and, since consecutive data frames are merged, in entries too. What a well-behaved agent
//! never sends (a second head or end, data after the end, credit for bytes never sent,
//! frames for ids never opened) is dropped and reported as [`Routed::charged`], so the
//! session loop counts it against the agent's message budget.

use bytes::Bytes;
use bytes::BytesMut;
use protocol::{
    Envelope, ErrorBody, ErrorCode, Message, StreamCancelPayload, StreamCreditPayload,
    StreamEndPayload, StreamOpenPayload, MAX_STREAMS, STREAM_CHUNK, STREAM_WINDOW,
};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};

/// Credit is granted back in batches of this many consumed bytes.
const CREDIT_BATCH: u32 = STREAM_WINDOW / 4;

/// What the session writer sends after the control queues are empty.
#[derive(Debug)]
pub(crate) enum DataOut {
    /// A binary data frame.
    Data(u32, Bytes),
    /// A text message that must follow the stream's data (`stream_end`).
    Text(Box<Envelope>),
}

/// The daemon's status line and end-to-end headers, as the agent reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// One passthrough request to open on an agent (the `stream_open` message).
#[derive(Debug, Clone)]
pub struct StreamOpen {
    pub method: String,
    /// Origin-form target below the host's base path: `/v1.41/containers/json?all=1`.
    pub path: String,
    /// End-to-end headers only.
    pub headers: Vec<(String, String)>,
    /// A request body follows (data frames, then `stream_end`).
    pub body: bool,
    /// The client asked to hijack the connection.
    pub upgrade: bool,
}

#[derive(Debug)]
pub(crate) enum Inbound {
    Head(StreamHead),
    Data(Bytes),
    End(Option<ErrorBody>),
    Cancel(Option<String>),
}

/// One entry of a stream's inbound queue. Data is kept mutable so that consecutive frames
/// merge into one entry.
enum Queued {
    Data(BytesMut),
    Other(Inbound),
}

#[derive(Default)]
struct InboxQ {
    items: VecDeque<Queued>,
    /// No more items will come (the stream was removed from the table).
    closed: bool,
}

/// A stream's inbound queue: one producer (the session loop), one consumer (the request).
#[derive(Default)]
pub(crate) struct Inbox {
    q: Mutex<InboxQ>,
    notify: Notify,
}

impl Inbox {
    fn q(&self) -> std::sync::MutexGuard<'_, InboxQ> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends data, merged into the last entry while that stays within `STREAM_CHUNK`.
    fn push_data(&self, data: &[u8]) {
        let mut q = self.q();
        if q.closed {
            return;
        }
        match q.items.back_mut() {
            Some(Queued::Data(b)) if b.len() + data.len() <= STREAM_CHUNK => {
                b.extend_from_slice(data)
            }
            _ => q.items.push_back(Queued::Data(BytesMut::from(data))),
        }
        drop(q);
        self.notify.notify_one();
    }

    fn push(&self, item: Inbound) {
        let mut q = self.q();
        if q.closed {
            return;
        }
        q.items.push_back(Queued::Other(item));
        drop(q);
        self.notify.notify_one();
    }

    fn close(&self) {
        self.q().closed = true;
        self.notify.notify_one();
    }

    /// The next entry if one is queued; `Err(true)` when closed and drained.
    fn try_pop(&self) -> Result<Inbound, bool> {
        let mut q = self.q();
        match q.items.pop_front() {
            Some(Queued::Data(b)) => Ok(Inbound::Data(b.freeze())),
            Some(Queued::Other(i)) => Ok(i),
            None => Err(q.closed),
        }
    }

    /// The next entry; `None` once closed and drained.
    async fn pop(&self) -> Option<Inbound> {
        loop {
            // Registered before the look, so a push in between is not missed.
            let notified = self.notify.notified();
            match self.try_pop() {
                Ok(i) => return Some(i),
                Err(true) => return None,
                Err(false) => notified.await,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.q().items.len()
    }
}

struct Slot {
    inbox: Arc<Inbox>,
    /// Our send window: permits are bytes we may still send.
    credit: Arc<Semaphore>,
    /// Bytes received and not yet credited back (the agent's use of our window).
    unacked: Arc<AtomicU64>,
    /// The agent sent its response head / its end.
    got_head: bool,
    got_end: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inbox.close();
    }
}

/// The sending end of a session's stream control queue (unbounded; envelopes travel boxed,
/// as on the session's command queue).
#[derive(Debug)]
pub(crate) struct StreamControlTx(mpsc::UnboundedSender<Box<Envelope>>);

impl StreamControlTx {
    fn send(&self, env: Envelope) -> Result<(), mpsc::error::SendError<Box<Envelope>>> {
        self.0.send(Box::new(env))
    }
}

/// The open streams of one session, and the session's lanes they send on.
pub(crate) struct Table {
    slots: Mutex<HashMap<u32, Slot>>,
    next_id: AtomicU32,
    closed: std::sync::atomic::AtomicBool,
    /// Stream control (`stream_open`, `stream_credit`, `stream_cancel`): after commands,
    /// before data.
    control: StreamControlTx,
    /// Stream data frames and `stream_end`: sent when no control message waits.
    data: mpsc::Sender<DataOut>,
    /// The protocol version the session agreed.
    protocol_version: u32,
}

impl Table {
    /// The table of a session speaking `protocol_version`, sending on `control` and `data`.
    pub(crate) fn new(
        control: mpsc::UnboundedSender<Box<Envelope>>,
        data: mpsc::Sender<DataOut>,
        protocol_version: u32,
    ) -> Table {
        Table {
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: std::sync::atomic::AtomicBool::new(false),
            control: StreamControlTx(control),
            data,
            protocol_version,
        }
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("open", &self.len()).finish()
    }
}

/// What the session loop should do about an inbound frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routed {
    Delivered,
    /// A stream we closed recently: its in-flight frames are dropped silently.
    Stale,
    /// An id we never opened: answer `stream_cancel`.
    Unknown,
    /// The agent overran our window: cancel the stream.
    Overrun,
    /// Something a well-behaved agent never sends on a live stream (a second head or end,
    /// data after its end, credit for bytes we never sent): dropped.
    Unexpected,
}

impl Routed {
    /// Whether the frame counts against the agent's message budget: only what a
    /// well-behaved agent sends within a stream's life is free.
    pub(crate) fn charged(&self, binary: bool) -> bool {
        match self {
            Routed::Delivered => false,
            // In-flight data of a stream we just closed is bounded by the window; control
            // messages for it are not expected.
            Routed::Stale => !binary,
            Routed::Unknown | Routed::Overrun | Routed::Unexpected => true,
        }
    }
}

impl Table {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.slots().len()
    }

    fn classify_missing(&self, id: u32) -> Routed {
        if id != 0 && id < self.next_id.load(Ordering::Relaxed) {
            Routed::Stale
        } else {
            Routed::Unknown
        }
    }

    /// Routes a binary data frame of the agent.
    pub(crate) fn data(&self, id: u32, data: &[u8]) -> Routed {
        let slots = self.slots();
        let Some(slot) = slots.get(&id) else {
            drop(slots);
            return self.classify_missing(id);
        };
        if slot.got_end {
            return Routed::Unexpected;
        }
        let used = slot.unacked.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
        if used > STREAM_WINDOW as u64 {
            return Routed::Overrun;
        }
        slot.inbox.push_data(data);
        Routed::Delivered
    }

    /// Routes a stream control message of the agent (`stream_response`, `stream_end`,
    /// `stream_cancel`). A second head or end is dropped.
    pub(crate) fn control(&self, id: u32, msg: Inbound) -> Routed {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&id) else {
            drop(slots);
            return self.classify_missing(id);
        };
        match &msg {
            Inbound::Head(_) if slot.got_head => return Routed::Unexpected,
            Inbound::Head(_) => slot.got_head = true,
            Inbound::End(_) if slot.got_end => return Routed::Unexpected,
            Inbound::End(_) => slot.got_end = true,
            Inbound::Data(_) | Inbound::Cancel(_) => {}
        }
        let remove = matches!(msg, Inbound::Cancel(_));
        slot.inbox.push(msg);
        if remove {
            if let Some(slot) = slots.remove(&id) {
                slot.credit.close();
            }
        }
        Routed::Delivered
    }

    /// `stream_credit` of the agent: we may send that much more. Credit beyond what we
    /// sent is unexpected (and never grows the window past four windows).
    pub(crate) fn credit(&self, id: u32, bytes: u32) -> Routed {
        let slots = self.slots();
        match slots.get(&id) {
            Some(slot) => {
                let available = slot.credit.available_permits();
                let room = (4 * STREAM_WINDOW as usize).saturating_sub(available);
                slot.credit.add_permits((bytes as usize).min(room));
                if available + bytes as usize > STREAM_WINDOW as usize {
                    Routed::Unexpected
                } else {
                    Routed::Delivered
                }
            }
            None => {
                drop(slots);
                self.classify_missing(id)
            }
        }
    }

    fn remove(&self, id: u32) {
        if let Some(slot) = self.slots().remove(&id) {
            slot.credit.close();
        }
    }

    /// The session ended: every open stream fails.
    pub(crate) fn fail_all(&self, reason: &str) {
        self.closed.store(true, Ordering::SeqCst);
        let all: Vec<Slot> = self.slots().drain().map(|(_, s)| s).collect();
        for slot in all {
            slot.inbox.push(Inbound::End(Some(ErrorBody::new(
                ErrorCode::DockerUnreachable,
                format!("the agent's connection closed: {reason}"),
            ))));
            slot.credit.close();
        }
    }
}

#[derive(Default)]
struct Flags {
    sent_end: bool,
    got_end: bool,
    cancelled: bool,
}

struct Shared {
    table: Arc<Table>,
    id: u32,
    flags: Mutex<Flags>,
    credit: Arc<Semaphore>,
    unacked: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    bytes_in: Arc<AtomicU64>,
}

impl Shared {
    fn flags(&self) -> std::sync::MutexGuard<'_, Flags> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Aborts the stream in both directions (once).
    fn cancel(&self, reason: &str) {
        {
            let mut f = self.flags();
            if f.cancelled {
                return;
            }
            f.cancelled = true;
        }
        self.table.remove(self.id);
        let env = Envelope::new(
            format!("sc-{}", uuid::Uuid::new_v4().simple()),
            Message::StreamCancel(StreamCancelPayload {
                stream_id: self.id,
                reason: Some(reason.to_string()),
            }),
        );
        let _ = self.table.control.send(env);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

/// An open passthrough stream. Split it with [`AgentStream::split`] once the head arrived.
pub struct AgentStream {
    shared: Arc<Shared>,
    /// `None` once handed to the reader.
    rx: Option<Arc<Inbox>>,
    writer_done: bool,
}

impl std::fmt::Debug for AgentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStream")
            .field("id", &self.shared.id)
            .finish()
    }
}

/// Opens a stream on `session`. Errors: `unsupported` (protocol < 2), `rate_limited` (too
/// many open streams), `agent_offline` (the session is closing).
pub(super) fn open(table: &Arc<Table>, req: StreamOpen) -> Result<AgentStream, ErrorBody> {
    if table.protocol_version < protocol::STREAMS_PROTOCOL_VERSION {
        return Err(ErrorBody::new(
            ErrorCode::Unsupported,
            format!(
                "the host's agent speaks protocol version {} and cannot carry Docker API streams \
                 (version {} needed): upgrade the agent",
                table.protocol_version,
                protocol::STREAMS_PROTOCOL_VERSION
            ),
        ));
    }
    let inbox = Arc::new(Inbox::default());
    let rx = inbox.clone();
    let credit = Arc::new(Semaphore::new(STREAM_WINDOW as usize));
    let unacked = Arc::new(AtomicU64::new(0));
    let id = {
        let mut slots = table.slots();
        if table.closed.load(Ordering::SeqCst) {
            return Err(ErrorBody::new(
                ErrorCode::AgentOffline,
                "the agent's connection is closing",
            ));
        }
        if slots.len() >= MAX_STREAMS {
            return Err(ErrorBody::new(
                ErrorCode::RateLimited,
                format!("too many open Docker API streams on this agent (at most {MAX_STREAMS})"),
            ));
        }
        let id = table.next_id.fetch_add(1, Ordering::Relaxed);
        slots.insert(
            id,
            Slot {
                inbox,
                credit: credit.clone(),
                unacked: unacked.clone(),
                got_head: false,
                got_end: false,
            },
        );
        id
    };
    let env = Envelope::new(
        format!("so-{id}"),
        Message::StreamOpen(StreamOpenPayload {
            stream_id: id,
            method: req.method,
            path: req.path,
            headers: req.headers,
            body: req.body,
            upgrade: req.upgrade,
        }),
    );
    let shared = Arc::new(Shared {
        table: table.clone(),
        id,
        flags: Mutex::new(Flags {
            sent_end: !req.body,
            ..Flags::default()
        }),
        credit,
        unacked,
        bytes_out: Arc::new(AtomicU64::new(0)),
        bytes_in: Arc::new(AtomicU64::new(0)),
    });
    if table.control.send(env).is_err() {
        return Err(ErrorBody::new(
            ErrorCode::AgentOffline,
            "the host's agent is not connected",
        ));
    }
    Ok(AgentStream {
        shared,
        rx: Some(rx),
        writer_done: !req.body,
    })
}

impl AgentStream {
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// A writer for the request body (or, after a `101`, the client's raw bytes).
    pub fn writer(&mut self) -> StreamWriter {
        self.writer_done = true;
        StreamWriter {
            shared: self.shared.clone(),
            done: false,
        }
    }

    /// Waits for `stream_response`. `timeout` bounds the wait; it starts when `started`
    /// resolves (the request body was sent), so a long upload does not count.
    pub async fn head(
        &mut self,
        timeout: Duration,
        started: impl std::future::Future<Output = ()>,
    ) -> Result<StreamHead, ErrorBody> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(ErrorBody::internal("the stream's reader was already taken"));
        };
        let shared = &self.shared;
        let wait = async {
            match rx.pop().await {
                Some(Inbound::Head(h)) => Ok(h),
                Some(Inbound::Data(_)) => Err(ErrorBody::new(
                    ErrorCode::DockerError,
                    "the agent sent data before the response head",
                )),
                Some(Inbound::End(Some(e))) => Err(e),
                Some(Inbound::End(None)) => Err(ErrorBody::new(
                    ErrorCode::DockerError,
                    "the agent ended the stream without a response",
                )),
                Some(Inbound::Cancel(reason)) => {
                    shared.flags().cancelled = true;
                    Err(ErrorBody::new(
                        ErrorCode::DockerError,
                        format!(
                            "the agent cancelled the request: {}",
                            reason.unwrap_or_else(|| "no reason given".into())
                        ),
                    ))
                }
                None => Err(ErrorBody::new(
                    ErrorCode::DockerUnreachable,
                    "the agent's connection closed",
                )),
            }
        };
        let deadline = async {
            started.await;
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            r = wait => r,
            _ = deadline => Err(ErrorBody::new(
                ErrorCode::Timeout,
                format!("the agent did not answer within {} s", timeout.as_secs_f64()),
            )),
        }
    }

    /// The response body reader (after the head).
    pub fn reader(mut self) -> StreamReader {
        // A request body that was never taken by a writer counts as sent.
        if !self.writer_done {
            self.shared.flags().sent_end = true;
        }
        let rx = self.rx.take().unwrap_or_else(|| {
            // Unreachable by construction; a closed inbox reads as "closed".
            let closed = Inbox::default();
            closed.close();
            Arc::new(closed)
        });
        StreamReader {
            shared: self.shared.clone(),
            rx,
            consumed: 0,
            last: 0,
        }
    }

    /// Aborts the stream now.
    pub fn cancel(&self, reason: &str) {
        self.shared.cancel(reason);
    }

    /// Bytes sent to the agent so far and received from it.
    pub fn counters(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        (self.shared.bytes_out.clone(), self.shared.bytes_in.clone())
    }

    /// Reopens the client-to-agent direction after a `101` (raw bytes follow).
    pub fn reopen_for_upgrade(&mut self) {
        self.shared.flags().sent_end = false;
        self.writer_done = false;
    }
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        // Dropped before its reader was taken: the exchange did not happen (the client went
        // away, a timeout, an error), so the agent must stop too.
        if self.rx.is_some() {
            let f = self.shared.flags();
            let done = f.got_end && f.sent_end;
            let cancelled = f.cancelled;
            drop(f);
            if !done && !cancelled {
                self.shared.cancel("the request was abandoned");
            }
        }
    }
}

/// Sends request bytes to the agent, respecting its credit.
pub struct StreamWriter {
    shared: Arc<Shared>,
    done: bool,
}

impl StreamWriter {
    fn closed_error(&self) -> ErrorBody {
        ErrorBody::new(ErrorCode::DockerUnreachable, "the stream was closed")
    }

    /// Sends `data` in frames of at most `STREAM_CHUNK` bytes, never more than the agent's
    /// credit: waits while the window is used up, and uses whatever part of it is left.
    pub async fn write(&mut self, mut data: Bytes) -> Result<(), ErrorBody> {
        while !data.is_empty() {
            let credit = &self.shared.credit;
            credit
                .acquire()
                .await
                .map_err(|_| self.closed_error())?
                .forget();
            let want = data.len().min(STREAM_CHUNK);
            let extra = (want - 1).min(credit.available_permits());
            if extra > 0 {
                credit
                    .try_acquire_many(extra as u32)
                    .map_err(|_| self.closed_error())?
                    .forget();
            }
            let n = 1 + extra;
            let chunk = data.split_to(n);
            self.shared
                .table
                .data
                .send(DataOut::Data(self.shared.id, chunk))
                .await
                .map_err(|_| self.closed_error())?;
            self.shared.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// No more data from our side (`stream_end`, after the data already queued).
    pub async fn end(mut self) -> Result<(), ErrorBody> {
        self.done = true;
        self.shared.flags().sent_end = true;
        let env = Envelope::new(
            format!("se-{}", self.shared.id),
            Message::StreamEnd(StreamEndPayload {
                stream_id: self.shared.id,
                error: None,
            }),
        );
        self.shared
            .table
            .data
            .send(DataOut::Text(Box::new(env)))
            .await
            .map_err(|_| self.closed_error())
    }

    /// Aborts the stream (the client's body broke).
    pub fn cancel(mut self, reason: &str) {
        self.done = true;
        self.shared.cancel(reason);
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.done {
            self.shared.cancel("the client's request body ended early");
        }
    }
}

/// Reads the response bytes of a stream and grants credit as they are consumed.
pub struct StreamReader {
    shared: Arc<Shared>,
    rx: Arc<Inbox>,
    consumed: u32,
    last: u32,
}

impl StreamReader {
    fn grant(&mut self, force: bool) {
        if self.consumed == 0 || (!force && self.consumed < CREDIT_BATCH) {
            return;
        }
        let bytes = std::mem::take(&mut self.consumed);
        self.shared
            .unacked
            .fetch_sub(bytes as u64, Ordering::Relaxed);
        let env = Envelope::new(
            format!("sk-{}", self.shared.id),
            Message::StreamCredit(StreamCreditPayload {
                stream_id: self.shared.id,
                bytes,
            }),
        );
        let _ = self.shared.table.control.send(env);
    }

    /// The next chunk; `None` at a clean end. Calling it again means the previous chunk was
    /// consumed, so its bytes are credited back.
    pub async fn next(&mut self) -> Option<Result<Bytes, ErrorBody>> {
        self.consumed += std::mem::take(&mut self.last);
        self.grant(false);
        let item = match self.rx.try_pop() {
            Ok(i) => Some(i),
            Err(false) => {
                // About to wait: give back what was consumed so the agent never stalls on us.
                self.grant(true);
                self.rx.pop().await
            }
            Err(true) => None,
        };
        match item {
            Some(Inbound::Data(b)) => {
                self.last = b.len() as u32;
                self.shared
                    .bytes_in
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                Some(Ok(b))
            }
            Some(Inbound::End(None)) => {
                self.shared.flags().got_end = true;
                None
            }
            Some(Inbound::End(Some(e))) => {
                self.shared.flags().got_end = true;
                Some(Err(e))
            }
            Some(Inbound::Cancel(reason)) => {
                self.shared.flags().cancelled = true;
                Some(Err(ErrorBody::new(
                    ErrorCode::DockerError,
                    format!(
                        "the agent cancelled the stream: {}",
                        reason.unwrap_or_else(|| "no reason given".into())
                    ),
                )))
            }
            Some(Inbound::Head(_)) => Some(Err(ErrorBody::new(
                ErrorCode::DockerError,
                "the agent sent a second response head",
            ))),
            None => Some(Err(ErrorBody::new(
                ErrorCode::DockerUnreachable,
                "the stream was closed",
            ))),
        }
    }

    /// Whether the agent ended its direction cleanly.
    pub fn ended(&self) -> bool {
        self.shared.flags().got_end
    }

    /// Aborts the stream.
    pub fn cancel(&self, reason: &str) {
        self.shared.cancel(reason);
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let f = self.shared.flags();
        let got_end = f.got_end;
        let cancelled = f.cancelled;
        drop(f);
        if !got_end && !cancelled {
            self.shared.cancel("the client closed the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with_stream() -> (Table, Arc<Inbox>) {
        let (control, _) = mpsc::unbounded_channel();
        let (data, _) = mpsc::channel(1);
        let t = Table::new(control, data, protocol::STREAMS_PROTOCOL_VERSION);
        let inbox = Arc::new(Inbox::default());
        t.slots().insert(
            1,
            Slot {
                inbox: inbox.clone(),
                credit: Arc::new(Semaphore::new(STREAM_WINDOW as usize)),
                unacked: Arc::default(),
                got_head: false,
                got_end: false,
            },
        );
        t.next_id.store(2, Ordering::Relaxed);
        (t, inbox)
    }

    fn head() -> Inbound {
        Inbound::Head(StreamHead {
            status: 200,
            headers: Vec::new(),
        })
    }

    #[test]
    fn a_hostile_agent_cannot_grow_a_streams_queue() {
        let (t, inbox) = table_with_stream();
        assert_eq!(t.control(1, head()), Routed::Delivered);
        for _ in 0..1000 {
            assert_eq!(t.control(1, head()), Routed::Unexpected);
        }
        // Ten thousand one-byte frames merge into one entry.
        for _ in 0..10_000 {
            assert_eq!(t.data(1, b"x"), Routed::Delivered);
        }
        assert_eq!(inbox.len(), 2, "one head and one merged data entry");
        // The window still bounds the bytes.
        let big = vec![0u8; STREAM_WINDOW as usize];
        assert_eq!(t.data(1, &big), Routed::Overrun);
        assert_eq!(t.control(1, Inbound::End(None)), Routed::Delivered);
        assert_eq!(t.control(1, Inbound::End(None)), Routed::Unexpected);
        assert_eq!(t.data(1, b"after the end"), Routed::Unexpected);
        assert_eq!(inbox.len(), 3);
        assert_eq!(
            inbox.try_pop().map(|i| matches!(i, Inbound::Head(_))),
            Ok(true)
        );
        match inbox.try_pop() {
            Ok(Inbound::Data(b)) => assert_eq!(b.len(), 10_000),
            _ => panic!("merged data"),
        }
    }

    #[test]
    fn credit_for_bytes_never_sent_is_unexpected() {
        let (t, _) = table_with_stream();
        assert_eq!(t.credit(1, 1), Routed::Unexpected, "nothing was sent yet");
        let slot_credit = t.slots().get(&1).unwrap().credit.clone();
        slot_credit.try_acquire_many(1000).unwrap().forget();
        assert_eq!(
            t.credit(1, 999),
            Routed::Delivered,
            "credit for what we sent"
        );
    }

    #[test]
    fn what_is_charged() {
        let (t, _) = table_with_stream();
        assert!(t.data(99, b"x").charged(true), "an id never opened");
        assert!(t.credit(99, 1).charged(false));
        t.remove(1);
        assert_eq!(t.data(1, b"x"), Routed::Stale);
        assert!(
            !Routed::Stale.charged(true),
            "in-flight data of a closed stream"
        );
        assert!(Routed::Stale.charged(false), "control for a closed stream");
        assert!(!Routed::Delivered.charged(false));
    }

    #[tokio::test]
    async fn a_removed_stream_reads_as_closed_after_its_queue() {
        let (t, inbox) = table_with_stream();
        t.data(1, b"last");
        t.remove(1);
        assert!(matches!(inbox.pop().await, Some(Inbound::Data(_))));
        assert!(inbox.pop().await.is_none());
    }
}
