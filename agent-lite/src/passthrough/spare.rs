//! Spare stream threads: when a stream ends, its thread waits here for the next stream
//! instead of exiting, up to [`MAX_IDLE`] idle threads; when none is idle a new thread starts,
//! as before. A new thread costs a stack mapping, a `clone` and its exit on every request.
//!
//! Owns: reusing stream threads. Must not: limit how many streams run (the hub's stream table
//! does), queue a job (a job runs at once, on an idle thread or a new one), or hold a stream's
//! state between jobs (a job's closure is dropped when it returns).

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, Weak};

/// A stream's work: it runs once, on one thread.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// How many finished stream threads wait for the next stream. More concurrent streams than
/// this still run, each on its own thread, which then exits.
pub(crate) const MAX_IDLE: usize = 4;

/// The idle threads of one session's streams. Dropping it lets every idle thread exit.
pub(crate) struct Spares {
    /// One one-slot sender per idle thread; the thread blocks on its receiver.
    idle: Mutex<Vec<SyncSender<Job>>>,
    stack: usize,
}

impl Spares {
    pub(crate) fn new(stack: usize) -> Arc<Spares> {
        Arc::new(Spares {
            idle: Mutex::new(Vec::with_capacity(MAX_IDLE)),
            stack,
        })
    }

    /// Idle threads right now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |v| v.len())
    }

    fn take_idle(&self) -> Option<SyncSender<Job>> {
        self.idle.lock().ok().and_then(|mut v| v.pop())
    }

    /// Runs `job` at once: on an idle thread, or on a new thread named `name`.
    pub(crate) fn run(self: &Arc<Self>, name: &str, job: Job) -> std::io::Result<()> {
        let mut job = job;
        while let Some(tx) = self.take_idle() {
            // The idle thread waits in `recv` on its own one-slot channel: the job lands in
            // the slot (never full: this sender is used once) and the thread wakes to take
            // it, even if the spares are dropped meanwhile. The thread leaves `recv` without a
            // job only once this sender is gone, so `send` does not fail while we hold it;
            // the `Err` arm is a safety net that gives the job back rather than lose it.
            match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(back) => job = back.0,
            }
        }
        let spares = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(self.stack)
            .spawn(move || serve(spares, job))
            .map(|_| ())
    }
}

/// A spare thread's life: run the job, then wait for the next while there is room.
fn serve(spares: Weak<Spares>, first: Job) {
    let mut job = first;
    loop {
        job();
        let Some(s) = spares.upgrade() else { return };
        // One slot, not a rendezvous (capacity 0): std's rendezvous wakes the receiver
        // before the job is in its hands, and the woken thread then spins in `sched_yield`
        // until it is (12 % of the agent's CPU on the passthrough path, measured).
        let (tx, rx) = sync_channel::<Job>(1);
        {
            let Ok(mut idle) = s.idle.lock() else { return };
            if idle.len() >= MAX_IDLE {
                return;
            }
            idle.push(tx);
        }
        drop(s);
        match rx.recv() {
            Ok(next) => job = next,
            // The session's spares were dropped.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    fn wait_idle(s: &Spares, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.idle_count() != n {
            assert!(
                Instant::now() < deadline,
                "idle threads: {} not {n}",
                s.idle_count()
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_job_handed_to_an_idle_thread_runs_even_when_the_spares_go_at_once() {
        let s = Spares::new(64 * 1024);
        let (tx, rx) = channel();
        let t = tx.clone();
        s.run("t", Box::new(move || t.send(1).unwrap())).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        wait_idle(&s, 1);
        s.run("t", Box::new(move || tx.send(2).unwrap())).unwrap();
        drop(s);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 2);
    }

    #[test]
    fn a_finished_thread_runs_the_next_job() {
        let s = Spares::new(64 * 1024);
        let (tx, rx) = channel();
        let t = tx.clone();
        s.run(
            "t",
            Box::new(move || t.send(std::thread::current().id()).unwrap()),
        )
        .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        wait_idle(&s, 1);
        s.run(
            "t",
            Box::new(move || tx.send(std::thread::current().id()).unwrap()),
        )
        .unwrap();
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, second, "the idle thread is reused");
        wait_idle(&s, 1);
    }

    #[test]
    fn concurrent_jobs_get_their_own_threads_and_at_most_max_idle_stay() {
        let s = Spares::new(64 * 1024);
        let n = MAX_IDLE + 3;
        let (gate_tx, gate_rx) = channel::<()>();
        let gate = Arc::new(Mutex::new(gate_rx));
        let (done_tx, done_rx) = channel();
        for _ in 0..n {
            let (g, d) = (gate.clone(), done_tx.clone());
            s.run(
                "t",
                Box::new(move || {
                    let _ = d.send(("started", std::thread::current().id()));
                    let _ = g.lock().map(|r| r.recv_timeout(Duration::from_secs(5)));
                    let _ = d.send(("done", std::thread::current().id()));
                }),
            )
            .unwrap();
        }
        // All started before any was released: each had its own thread.
        let mut started = std::collections::HashSet::new();
        for _ in 0..n {
            let (what, id) = done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(what, "started");
            started.insert(id);
        }
        assert_eq!(started.len(), n);
        for _ in 0..n {
            gate_tx.send(()).unwrap();
        }
        for _ in 0..n {
            assert_eq!(
                done_rx.recv_timeout(Duration::from_secs(5)).unwrap().0,
                "done"
            );
        }
        wait_idle(&s, MAX_IDLE);
    }

    #[test]
    fn dropping_the_spares_ends_idle_threads() {
        thread_local! {
            // Dropped when the thread exits, which disconnects the test's receiver.
            static ALIVE: std::cell::RefCell<Option<std::sync::mpsc::Sender<()>>> =
                const { std::cell::RefCell::new(None) };
        }
        let s = Spares::new(64 * 1024);
        let (tx, rx) = channel::<()>();
        s.run(
            "t",
            Box::new(move || ALIVE.with(|a| *a.borrow_mut() = Some(tx))),
        )
        .unwrap();
        wait_idle(&s, 1);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(50)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "the idle thread waits"
        );
        drop(s);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "the idle thread exits"
        );
    }
}
