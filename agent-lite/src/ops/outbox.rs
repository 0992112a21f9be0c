//! Messages for the server that workers produced (command responses and progress): kept
//! while the link is down and delivered on the next connection, so a command that finished
//! while the agent was disconnected still gets its one `command_response`.
//!
//! Bounded: when full, `command_progress` messages go first (they are useless late), then
//! the oldest messages; drops are logged and counted. A dropped response is not lost for
//! commands that change something: their idempotency key remembers it, and the server
//! re-sends the command with the same key after reconnection.
//!
//! A message is written at once, on the worker's thread, when the session's socket is free
//! and nothing is queued before it (`crate::direct`); the queue then stays empty.
//!
//! Owns: the queue. Must not: write to the WebSocket itself (the session's `Direct` writer
//! does).

use crate::direct::{Direct, Frame, Slot};
use crate::waker::Waker;
use protocol::{Envelope, MessageType};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Messages kept at most.
pub const CAPACITY: usize = 1024;

/// A queued message: an envelope the session encodes, or one a worker already wrote (a
/// command's answer, written once for the duplicate-delivery memory and for the server).
#[derive(Debug)]
pub enum Queued {
    Envelope(Box<Envelope>),
    Text {
        id: String,
        kind: MessageType,
        text: String,
    },
}

impl Queued {
    pub fn id(&self) -> &str {
        match self {
            Queued::Envelope(e) => &e.id,
            Queued::Text { id, .. } => id,
        }
    }

    pub fn kind(&self) -> MessageType {
        match self {
            Queued::Envelope(e) => e.message_type(),
            Queued::Text { kind, .. } => *kind,
        }
    }

    /// The message's JSON text.
    pub fn encode(&self) -> String {
        match self {
            Queued::Envelope(e) => e.encode(),
            Queued::Text { text, .. } => text.clone(),
        }
    }
}

pub struct Outbox {
    queue: Mutex<VecDeque<Queued>>,
    capacity: usize,
    dropped: AtomicU64,
    /// Woken for every queued message.
    waker: Option<Arc<Waker>>,
    /// The authenticated session's socket, for messages written at once.
    direct: Slot,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(CAPACITY)
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            waker: None,
            direct: Slot::default(),
        }
    }

    /// Wakes `w` whenever a message is queued.
    pub fn with_waker(mut self, w: Arc<Waker>) -> Self {
        self.waker = Some(w);
        self
    }

    /// Queues a message at the back.
    pub fn send(&self, env: Envelope) {
        self.push(Queued::Envelope(Box::new(env)));
    }

    /// Queues a message already written as its envelope's text (see
    /// `Envelope::encode_with_payload`).
    pub fn send_text(&self, id: String, kind: MessageType, text: String) {
        self.push(Queued::Text { id, kind, text });
    }

    /// Lets messages be written at once through the authenticated session's socket (until
    /// that session retires its link).
    pub fn set_direct(&self, direct: Weak<dyn Direct>) {
        self.direct.set(direct);
    }

    /// Writes `item` through the session's socket when it is free and nothing is queued; gives
    /// it back otherwise, or when writing failed (it then waits for the next connection).
    fn write_direct(&self, item: Queued) -> Option<Queued> {
        let Some(d) = self.direct.get() else {
            return Some(item);
        };
        let Some(mut w) = d.try_hold() else {
            return Some(item);
        };
        if !self.is_empty() {
            return Some(item);
        }
        // The text is a copy: the item stays whole in case the write fails.
        let written = w.write(Frame::Text(item.encode())) && w.finish();
        (!written).then_some(item)
    }

    fn push(&self, item: Queued) {
        let Some(item) = self.write_direct(item) else {
            return;
        };
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        while q.len() >= self.capacity {
            let i = q
                .iter()
                .position(|e| e.kind() == MessageType::CommandProgress)
                .unwrap_or(0);
            if let Some(old) = q.remove(i) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if old.kind() != MessageType::CommandProgress {
                    log::warn!(
                        "the outbox is full ({} messages): dropping the {} for {}",
                        self.capacity,
                        old.kind().as_str(),
                        old.id()
                    );
                }
            }
        }
        q.push_back(item);
        drop(q);
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    /// The oldest message.
    pub fn pop(&self) -> Option<Queued> {
        self.queue.lock().ok()?.pop_front()
    }

    /// Puts a message back at the front (its send failed).
    pub fn put_back(&self, env: Queued) {
        if let Ok(mut q) = self.queue.lock() {
            if q.len() >= self.capacity {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push_front(env);
        }
    }

    /// Whether a `command_response` for `id` is waiting to be sent.
    pub fn has_response(&self, id: &str) -> bool {
        self.queue.lock().is_ok_and(|q| {
            q.iter()
                .any(|e| e.id() == id && e.kind() == MessageType::CommandResponse)
        })
    }

    pub fn len(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{CommandProgressPayload, CommandResponsePayload, Message};

    fn resp(id: &str) -> Envelope {
        Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Success {
                data: serde_json::json!(1),
            }),
        )
    }

    fn progress(id: &str) -> Envelope {
        Envelope::new(
            id,
            Message::CommandProgress(CommandProgressPayload {
                data: serde_json::json!({}),
            }),
        )
    }

    #[test]
    fn bounded_progress_goes_first() {
        let o = Outbox::new(3);
        o.send(resp("a"));
        o.send(progress("p"));
        o.send(resp("b"));
        o.send(resp("c"));
        assert_eq!(o.len(), 3);
        assert_eq!(o.dropped(), 1);
        assert!(o.has_response("a") && o.has_response("b") && o.has_response("c"));
        o.send(resp("d"));
        assert!(!o.has_response("a"), "then the oldest");
        assert_eq!(o.pop().unwrap().id(), "b");
        o.put_back(Queued::Envelope(Box::new(resp("b"))));
        assert_eq!(o.pop().unwrap().id(), "b");
    }

    #[test]
    fn written_answers_queue_like_envelopes() {
        let o = Outbox::new(2);
        o.send(progress("p"));
        let text = Envelope::encode_with_payload("t", MessageType::CommandResponse, "{}");
        o.send_text("t".into(), MessageType::CommandResponse, text.clone());
        assert!(o.has_response("t"));
        o.send(resp("u"));
        assert_eq!(o.dropped(), 1, "the progress went first");
        let first = o.pop().unwrap();
        assert_eq!((first.id(), first.encode()), ("t", text));
        assert_eq!(o.pop().unwrap().kind(), MessageType::CommandResponse);
    }
}
