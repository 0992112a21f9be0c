//! Messages for the server that workers produced (command responses and progress): kept
//! while the link is down and delivered on the next connection, so a command that finished
//! while the agent was disconnected still gets its one `command_response`.
//!
//! Bounded: when full, `command_progress` messages go first (they are useless late), then
//! the oldest messages; drops are logged and counted. A dropped response is not lost for
//! commands that change something: their idempotency key remembers it, and the server
//! re-sends the command with the same key after reconnection.
//!
//! Owns: the queue. Must not: write to the WebSocket.

use crate::waker::Waker;
use protocol::{Envelope, MessageType};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

    fn push(&self, item: Queued) {
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
