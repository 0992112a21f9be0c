//! Who hears of a command's final state: waiters for one command (the request that queued
//! it, a replay of its key, a stack step) and subscribers to all of them (a bulk run).
//!
//! Owns: the waiters by command id and the broadcast of [`Finished`] events. Must not: store
//! anything (the caller stored the final state before it notifies).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, oneshot};

use super::{CommandState, Finished};
use crate::reply::Outcome;

type Waiters = HashMap<String, Vec<oneshot::Sender<(CommandState, Outcome)>>>;

pub(super) struct Finals {
    waiters: Arc<Mutex<Waiters>>,
    tx: broadcast::Sender<Finished>,
}

/// One waiter's end; dropping it forgets the waiter.
pub(super) struct Waiter {
    rx: oneshot::Receiver<(CommandState, Outcome)>,
    id: String,
    waiters: Arc<Mutex<Waiters>>,
}

impl Waiter {
    /// The final state and outcome, or `None` once nobody can send it any more.
    pub(super) async fn recv(&mut self) -> Option<(CommandState, Outcome)> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        let mut map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ws) = map.get_mut(&self.id) {
            ws.retain(|w| !w.is_closed());
            if ws.is_empty() {
                map.remove(&self.id);
            }
        }
    }
}

impl Finals {
    pub(super) fn new(capacity: usize) -> Finals {
        Finals {
            waiters: Arc::default(),
            tx: broadcast::channel(capacity).0,
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for command `id`'s final state. Register before looking at the stored state,
    /// so a final state recorded in between is not missed.
    pub(super) fn watch(&self, id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.waiters().entry(id.to_string()).or_default().push(tx);
        Waiter {
            rx,
            id: id.to_string(),
            waiters: self.waiters.clone(),
        }
    }

    /// Whether someone here waits for command `id`.
    pub(super) fn is_watched(&self, id: &str) -> bool {
        self.waiters().contains_key(id)
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Finished> {
        self.tx.subscribe()
    }

    /// The command reached its final state: every waiter gets it, then every subscriber.
    pub(super) fn notify(&self, fin: Finished, outcome: &Outcome) {
        let waiting = self.waiters().remove(&fin.command_id);
        for w in waiting.into_iter().flatten() {
            let _ = w.send((fin.state, outcome.clone()));
        }
        // Nobody subscribed is fine.
        let _ = self.tx.send(fin);
    }
}
