//! Wakes the session thread when something is queued for the server: a self-pipe that the
//! session polls next to its socket, so it sleeps until there is work or a deadline.
//!
//! Owns: the pipe. Must not: carry data (a byte only means "look at the queues").

use rustix::event::{PollFd, PollFlags};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use std::sync::atomic::{AtomicBool, Ordering};

/// A non-blocking, close-on-exec pipe: producers [`wake`](Waker::wake), the session thread
/// polls [`poll_fd`](Waker::poll_fd) and [`drain`](Waker::drain)s it.
pub struct Waker {
    rx: OwnedFd,
    tx: OwnedFd,
    /// A byte is in the pipe (or about to be): later wakes need no write.
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        let (rx, tx) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        Ok(Waker {
            rx,
            tx,
            pending: AtomicBool::new(false),
        })
    }

    /// Makes the next (or current) poll of the session return. Never blocks.
    pub fn wake(&self) {
        if self.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        loop {
            match rustix::io::write(&self.tx, &[1]) {
                Err(Errno::INTR) => continue,
                // EAGAIN: the pipe is full, so a wake-up is pending anyway.
                _ => return,
            }
        }
    }

    /// Empties the pipe. Call before looking at the queues: what is queued after this
    /// wakes the next poll.
    ///
    /// The pipe is emptied before `pending` is cleared. The other order loses wake-ups: a
    /// `wake` between the clear and the read writes a byte that the read then swallows,
    /// leaving `pending` set with an empty pipe, so every later `wake` is skipped and the
    /// poller sleeps with work queued. In this order a `wake` that still sees `pending` set
    /// came before the clear, and its work is visible to the caller's look at the queues.
    pub fn drain(&self) {
        self.drain_with(|| {});
    }

    /// [`Waker::drain`], running `meanwhile` at the point where another thread's `wake` can
    /// interleave (tests use it to place one there).
    fn drain_with(&self, meanwhile: impl FnOnce()) {
        let mut buf = [0u8; 64];
        loop {
            match rustix::io::read(&self.rx, &mut buf) {
                Ok(n) if n == buf.len() => continue,
                Err(Errno::INTR) => continue,
                _ => break,
            }
        }
        meanwhile();
        self.pending.store(false, Ordering::SeqCst);
    }

    /// The read end, to poll for input.
    pub fn poll_fd(&self) -> PollFd<'_> {
        PollFd::new(&self.rx, PollFlags::IN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{poll, Timespec};

    fn ready(w: &Waker) -> bool {
        let mut fds = [w.poll_fd()];
        poll(&mut fds, Some(&Timespec::default())).unwrap() == 1
    }

    #[test]
    fn wakes_until_drained_and_never_blocks() {
        let w = Waker::new().unwrap();
        assert!(!ready(&w));
        w.wake();
        assert!(ready(&w));
        w.drain();
        assert!(!ready(&w));
        w.wake();
        w.drain();
        // Many wakes without a reader neither block nor fill the pipe.
        for _ in 0..100_000 {
            w.wake();
        }
        assert!(ready(&w));
        w.drain();
        assert!(!ready(&w));
    }

    /// A `wake` that lands inside `drain` must not swallow the wake-ups after it (the lost
    /// wake-up of a drain that cleared `pending` before emptying the pipe: that `wake` wrote
    /// a byte the read then ate, leaving `pending` set with an empty pipe for good).
    #[test]
    fn a_wake_during_drain_does_not_disable_later_wakes() {
        let w = Waker::new().unwrap();
        w.wake();
        w.drain_with(|| w.wake());
        // That racing wake's work was queued before drain returned, so the caller sees it;
        // what is queued from now on must wake the poller.
        w.wake();
        assert!(ready(&w), "a wake after drain did not reach the pipe");
        w.drain();
        assert!(!ready(&w));
        w.wake();
        assert!(ready(&w));
    }
}
