//! Writing to the server from the thread that produced a message (a Docker API stream's
//! answer, a command's answer) instead of queueing it and waking the session thread to write
//! it: one thread wake-up, one `poll` and one drain of the waker less on every call.
//!
//! The session's socket (`connection::link`) implements [`Direct`]. A producer only ever
//! *tries* to take it, and writes only when nothing waits in its queue before the message
//! (looked at while the socket is held; the session thread pops that queue only while it holds
//! the socket too), so a message written directly never overtakes a queued one. Otherwise it
//! queues as before.
//!
//! Owns: the trait and the slot that holds the current session's writer. Must not: know the
//! socket (the session's link does).

use std::sync::{Arc, Mutex, Weak};

/// A WebSocket message to write.
pub enum Frame {
    /// An encoded envelope (signed by the writer when signing is on).
    Text(String),
    /// An encoded data frame.
    Binary(Vec<u8>),
}

/// The session's socket, held by a producer for one batch of messages.
pub trait Writer {
    /// Writes one message; false when writing failed (the link is then being dropped).
    fn write(&mut self, frame: Frame) -> bool;
    /// Sends what was written; false when that failed.
    fn finish(self: Box<Self>) -> bool;
}

/// The session's socket, for producers on other threads.
pub trait Direct: Send + Sync {
    /// The socket, if no other thread holds it right now.
    fn try_hold(&self) -> Option<Box<dyn Writer + '_>>;
}

/// The current session's [`Direct`] writer: set once the session is authenticated; a session
/// that ends retires it (a weak reference: a finished session's socket stays open only while a
/// producer that took it just before the end finishes its write).
#[derive(Default)]
pub struct Slot(Mutex<Option<Weak<dyn Direct>>>);

impl Slot {
    pub fn set(&self, direct: Weak<dyn Direct>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(direct);
    }

    /// The writer of a live session.
    pub fn get(&self) -> Option<Arc<dyn Direct>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }
}
