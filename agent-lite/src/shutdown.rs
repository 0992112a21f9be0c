//! A shutdown request that sleeping threads notice at once, and whether the process should
//! start itself again afterwards (a self-update or a rollback).
//!
//! Owns: the flags, the condition variable threads sleep on, and the wakers of threads that
//! sleep in `poll` instead. Must not: stop anything itself (each thread checks and returns),
//! or re-execute (the binary does, after `run` returned).

use crate::waker::Waker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A shutdown request that sleeping threads notice at once. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Default)]
struct Inner {
    set: Mutex<bool>,
    cv: Condvar,
    flag: AtomicBool,
    /// The process should re-execute itself once everything stopped.
    restart: AtomicBool,
    /// Woken on trigger: the session thread sleeps in `poll`, not on the condvar.
    wakers: Mutex<Vec<Arc<Waker>>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        let i = &*self.0;
        i.flag.store(true, Ordering::SeqCst);
        if let Ok(mut g) = i.set.lock() {
            *g = true;
        }
        i.cv.notify_all();
        if let Ok(w) = i.wakers.lock() {
            w.iter().for_each(|w| w.wake());
        }
    }

    /// Wakes `w` when shutdown is triggered (at once when it already was).
    pub fn add_waker(&self, w: Arc<Waker>) {
        if let Ok(mut ws) = self.0.wakers.lock() {
            ws.push(w.clone());
        }
        if self.is_set() {
            w.wake();
        }
    }

    /// Shuts down and asks the binary to start itself again afterwards.
    pub fn restart(&self) {
        self.0.restart.store(true, Ordering::SeqCst);
        self.trigger();
    }

    /// Whether [`Shutdown::restart`] asked for a re-execution.
    pub fn restart_requested(&self) -> bool {
        self.0.restart.load(Ordering::SeqCst)
    }

    pub fn is_set(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`; returns true when shutdown was requested.
    pub fn wait(&self, d: Duration) -> bool {
        let (m, c) = (&self.0.set, &self.0.cv);
        let deadline = Instant::now() + d;
        let Ok(mut g) = m.lock() else {
            return self.is_set();
        };
        while !*g {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = match c.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(_) => return self.is_set(),
            };
        }
        *g
    }
}
