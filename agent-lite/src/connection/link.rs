//! The session's WebSocket, shared by the session thread and the stream threads.
//!
//! A Docker API call's whole answer (`stream_response`, its data, `stream_end`) is written by
//! the stream's own thread when the socket is free and nothing is queued before it: the
//! session thread is then not woken to write it, which saves a thread wake-up, a `poll` and
//! the waker's drain on every call. When the socket is busy (the session thread is reading
//! or writing) or something waits in the hub's queues, the answer is queued as before.
//!
//! Order: whoever writes stream messages holds the socket first and looks at the hub's queues
//! second (the session thread pops them only while it holds the socket), so a directly
//! written answer never overtakes a queued message. A stream thread only ever *tries* to take
//! the socket, so it never waits for the session thread.
//!
//! Owns: the lock around the socket. Must not: read from the socket (the session does).

use super::Stream;
use crate::agent::Agent;
use crate::passthrough::{Direct, Hub, Item, Out};
use crate::signing::seal;
use std::io;
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use tungstenite::WebSocket;

pub(super) struct Link {
    ws: Mutex<WebSocket<Stream>>,
    /// The socket underneath, to `poll` it without holding the lock.
    tcp: TcpStream,
    agent: Arc<Agent>,
}

impl Link {
    pub(super) fn new(ws: WebSocket<Stream>, agent: Arc<Agent>) -> io::Result<Link> {
        let tcp = ws.get_ref().tcp().try_clone()?;
        Ok(Link {
            ws: Mutex::new(ws),
            tcp,
            agent,
        })
    }

    /// The socket, for the session thread (it waits while a stream thread writes).
    pub(super) fn ws(&self) -> MutexGuard<'_, WebSocket<Stream>> {
        self.ws.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TCP socket, to poll it.
    pub(super) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Writes `items` and flushes. A failed write shuts the socket down, so that the
    /// session thread's next read ends the session (the streams end with it).
    fn write_all(&self, ws: &mut WebSocket<Stream>, items: Vec<Item>) {
        for item in items {
            let msg = match item {
                Item::Control(text) | Item::Data(Out::Text(text)) => {
                    tungstenite::Message::Text(seal(self.agent.signer.as_ref(), text).into())
                }
                Item::Data(Out::Frame(f)) => tungstenite::Message::Binary(f.into()),
            };
            if let Err(e) = ws.write(msg) {
                if !self.retry_later(&e) {
                    self.fail(&e);
                    return;
                }
            }
        }
        if let Err(e) = ws.flush() {
            if !self.retry_later(&e) {
                self.fail(&e);
            }
        }
    }

    /// A write interrupted by a signal left its bytes in tungstenite's buffer: the session
    /// thread's next flush sends them, so it is woken.
    fn retry_later(&self, e: &tungstenite::Error) -> bool {
        let interrupted =
            matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::Interrupted);
        if interrupted {
            self.agent.waker.wake();
        }
        interrupted
    }

    fn fail(&self, e: &tungstenite::Error) {
        log::debug!("writing a stream's answer failed: {e}; dropping the link");
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }
}

impl Direct for Link {
    fn try_write(&self, hub: &Hub, items: Vec<Item>) -> Result<(), Vec<Item>> {
        let mut ws = match self.ws.try_lock() {
            Ok(ws) => ws,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(items),
        };
        if hub.has_output() {
            return Err(items);
        }
        self.write_all(&mut ws, items);
        Ok(())
    }
}
