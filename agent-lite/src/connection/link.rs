//! The session's WebSocket, shared by the session thread and the producers of answers on
//! other threads ([`crate::direct`]): a Docker API stream's whole answer, a command's answer.
//! A producer writes its answer itself when the socket is free and nothing is queued before
//! it, so the session thread is not woken to write it; otherwise the answer is queued as
//! before.
//!
//! Order: whoever writes holds the socket first and looks at its queue second (the session
//! thread pops the hub's queues and the outbox only while it holds the socket), so an answer
//! written directly never overtakes a queued message. A producer only ever *tries* to take
//! the socket, so it never waits for the session thread.
//!
//! A producer holds the socket for one answer, at most a stream window (256 KiB) of data,
//! the session thread's data budget per turn; the session thread waits for it meanwhile.
//! Once the session ends or starts to close (`disconnect`, the close frame), the link is
//! retired: producers queue again, and what they queue waits for the next connection (the
//! outbox) or ends with the session (streams).
//!
//! Owns: the lock around the socket. Must not: read from the socket (the session does).

use super::Stream;
use crate::agent::Agent;
use crate::direct::{Direct, Frame, Writer};
use crate::signing::seal;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use tungstenite::WebSocket;

pub(super) struct Link {
    ws: Mutex<WebSocket<Stream>>,
    /// The socket underneath, to `poll` it without holding the lock.
    tcp: TcpStream,
    agent: Arc<Agent>,
    /// Producers may no longer write (see [`Link::retire`]).
    retired: AtomicBool,
    /// A producer's write failed and shut the socket down.
    failed: AtomicBool,
}

impl Link {
    pub(super) fn new(ws: WebSocket<Stream>, agent: Arc<Agent>) -> io::Result<Link> {
        let tcp = ws.get_ref().tcp().try_clone()?;
        Ok(Link {
            ws: Mutex::new(ws),
            tcp,
            agent,
            retired: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        })
    }

    /// From now on only the session thread writes. Done with the socket held, so an answer a
    /// producer is writing goes out whole first.
    pub(super) fn retire(&self) {
        let _ws = self.ws();
        self.retired.store(true, Ordering::SeqCst);
    }

    /// The link for producers (it lives as long as the session holds it).
    pub(super) fn direct(self: &Arc<Self>) -> Weak<dyn Direct> {
        Arc::downgrade(self) as Weak<Link>
    }

    /// Whether a producer's write failed (and shut the socket down).
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// The socket, for the session thread (it waits while a producer writes).
    pub(super) fn ws(&self) -> MutexGuard<'_, WebSocket<Stream>> {
        self.ws.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TCP socket, to poll it.
    pub(super) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether a failed write may simply be flushed later: interrupted by a signal, its
    /// bytes are in tungstenite's buffer, and the session thread (woken) flushes them.
    /// Any other failure shuts the socket down, so that the session thread's next read ends
    /// the session, which then names this failure as its reason ([`Link::failed`]).
    fn recover(&self, e: &tungstenite::Error) -> bool {
        let interrupted =
            matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::Interrupted);
        if interrupted {
            self.agent.waker.wake();
            return true;
        }
        log::debug!("writing an answer to the server failed: {e}");
        self.failed.store(true, Ordering::SeqCst);
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
        false
    }
}

/// The socket held by a producer.
struct Held<'a> {
    link: &'a Link,
    ws: MutexGuard<'a, WebSocket<Stream>>,
}

impl Writer for Held<'_> {
    fn write(&mut self, frame: Frame) -> bool {
        let msg = match frame {
            Frame::Text(text) => {
                tungstenite::Message::Text(seal(self.link.agent.signer.as_ref(), text).into())
            }
            Frame::Binary(f) => tungstenite::Message::Binary(f.into()),
        };
        match self.ws.write(msg) {
            Ok(()) => true,
            Err(e) => self.link.recover(&e),
        }
    }

    fn finish(mut self: Box<Self>) -> bool {
        match self.ws.flush() {
            Ok(()) => true,
            Err(e) => self.link.recover(&e),
        }
    }
}

impl Direct for Link {
    fn try_hold(&self) -> Option<Box<dyn Writer + '_>> {
        let ws = match self.ws.try_lock() {
            Ok(ws) => ws,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        if self.retired.load(Ordering::SeqCst) || !ws.can_write() {
            return None;
        }
        Some(Box::new(Held { link: self, ws }))
    }
}
