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
use protocol::{Envelope, Message};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Messages kept at most.
pub const CAPACITY: usize = 1024;

pub struct Outbox {
    queue: Mutex<VecDeque<Envelope>>,
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
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        while q.len() >= self.capacity {
            let i = q
                .iter()
                .position(|e| matches!(e.message, Message::CommandProgress(_)))
                .unwrap_or(0);
            if let Some(old) = q.remove(i) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if !matches!(old.message, Message::CommandProgress(_)) {
                    log::warn!(
                        "the outbox is full ({} messages): dropping the {} for {}",
                        self.capacity,
                        old.message.message_type().as_str(),
                        old.id
                    );
                }
            }
        }
        q.push_back(env);
        drop(q);
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    /// The oldest message.
    pub fn pop(&self) -> Option<Envelope> {
        self.queue.lock().ok()?.pop_front()
    }

    /// Puts a message back at the front (its send failed).
    pub fn put_back(&self, env: Envelope) {
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
                .any(|e| e.id == id && matches!(e.message, Message::CommandResponse(_)))
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
    use protocol::{CommandProgressPayload, CommandResponsePayload};

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
        assert_eq!(o.pop().unwrap().id, "b");
        o.put_back(resp("b"));
        assert_eq!(o.pop().unwrap().id, "b");
    }
}
