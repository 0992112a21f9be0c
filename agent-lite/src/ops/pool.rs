//! A fixed pool of worker threads fed by a bounded queue.
//!
//! Owns: concurrency limits. Must not: block the submitter (a full queue is refused at once).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;

pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Runs jobs on `workers` threads. Dropping the pool lets the workers finish their current
/// job and exit.
pub struct Pool {
    tx: SyncSender<Job>,
}

impl Pool {
    pub fn new(workers: usize, queue: usize) -> std::io::Result<Pool> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(Pool { tx })
    }

    /// Queues a job; gives it back when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => Err(j),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    #[test]
    fn runs_concurrently_and_refuses_when_full() {
        let pool = Pool::new(2, 1).unwrap();
        let (gate_tx, gate_rx) = channel::<()>();
        let gate_rx = Arc::new(Mutex::new(gate_rx));
        let (done_tx, done_rx) = channel();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut accepted = 0;
        while accepted < 2 {
            assert!(Instant::now() < deadline, "jobs not accepted");
            let (g, d) = (gate_rx.clone(), done_tx.clone());
            let job: Job = Box::new(move || {
                let _ = g.lock().map(|r| r.recv_timeout(Duration::from_secs(5)));
                let _ = d.send(());
            });
            if pool.submit(job).is_ok() {
                accepted += 1;
            }
        }
        // Both workers are busy (or about to be); one more fits the queue, then it is full.
        let mut refused = false;
        while Instant::now() < deadline && !refused {
            refused = pool.submit(Box::new(|| {})).is_err();
        }
        assert!(refused, "a full queue must refuse jobs");
        for _ in 0..2 {
            gate_tx.send(()).unwrap();
        }
        for _ in 0..2 {
            done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
    }
}
