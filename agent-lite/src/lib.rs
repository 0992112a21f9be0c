//! docker-ctl-agent as a library. [`run`] runs the real agent in-process (the binary and the
//! tests both call it).
//!
//! Threads: the session thread (the caller of `run`: WebSocket I/O, heartbeats, reconnects),
//! a pool of command workers, one Docker events follower, and one health prober. No async
//! runtime.

pub mod cli;
pub mod config;
pub mod connection;
pub mod docker;
pub mod health;
pub mod log;
pub mod ops;
pub mod passthrough;
pub mod policy;
pub mod state;
pub mod waker;

use config::Config;
use docker::{Closer, DockerClient, Endpoint};
use ops::events::EventBuffer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Why [`run`] stopped without a shutdown request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid: fix it and start again.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A setting could not be used (URL, Docker endpoint): fix it and start again.
    #[error("{0}")]
    Setup(String),
    /// The TLS files or pin could not be used: fix the files the message names.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Reconnecting is disabled or its attempts are exhausted: the service manager may
    /// restart the agent.
    #[error("{0}")]
    GaveUp(String),
    /// A thread could not be started (out of memory or process limits).
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A shutdown request that sleeping threads notice at once.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<ShutdownInner>);

#[derive(Default)]
struct ShutdownInner {
    set: Mutex<bool>,
    cv: Condvar,
    flag: AtomicBool,
    /// Woken on trigger: the session thread sleeps in `poll`, not on the condvar.
    wakers: Mutex<Vec<Arc<waker::Waker>>>,
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
    pub fn add_waker(&self, w: Arc<waker::Waker>) {
        if let Ok(mut ws) = self.0.wakers.lock() {
            ws.push(w.clone());
        }
        if self.is_set() {
            w.wake();
        }
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

/// Counters reported in heartbeats.
#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub in_flight: AtomicU64,
}

/// Settings the server may change at any time.
#[derive(Debug)]
pub struct Settings {
    pub heartbeat: AtomicU64,
    pub command_timeout: AtomicU64,
}

/// State shared by the agent's threads. Built once by [`run`] and passed down.
pub struct Agent {
    pub config: Config,
    pub docker: DockerClient,
    pub settings: Settings,
    pub stats: Arc<Stats>,
    pub events: Arc<EventBuffer>,
    /// Wakes the session thread when something is queued for the server.
    pub waker: Arc<waker::Waker>,
    pub dedup: Mutex<ops::Dedup>,
    /// Responses and progress for the server, kept while the link is down.
    pub outbox: ops::outbox::Outbox,
    /// The HMAC key when messages are signed.
    pub signing: Option<SigningKey>,
    /// Nonces of verified messages (replay protection across sessions).
    pub nonces: Mutex<protocol::signing::NonceCache>,
    pub started: Instant,
    state_file: state::StateFile,
    state_writer: Mutex<()>,
    snapshot: Mutex<health::Snapshot>,
    id_prefix: String,
    id_counter: AtomicU64,
}

impl Agent {
    /// The latest health snapshot.
    pub fn snapshot(&self) -> health::Snapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Writes the idempotency keys to the state file (atomically; one writer at a time,
    /// each writing the latest state).
    pub fn save_state(&self) {
        let Some(path) = self.state_file.path() else {
            return;
        };
        let Ok(_w) = self.state_writer.lock() else {
            return;
        };
        let text = match self.dedup.lock() {
            Ok(d) => d.keys.encode(),
            Err(_) => return,
        };
        if let Err(e) = self.state_file.save(&text) {
            ::log::error!(
                "cannot write the state file {}: {e}; idempotency keys may be forgotten on restart",
                path.display()
            );
        }
    }

    /// A fresh nonce for a signed message: 16 random hex digits and a counter.
    pub fn next_nonce(&self) -> String {
        format!(
            "{:016x}{:x}",
            random_u64(),
            self.id_counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A fresh message id: `{kind}-{random}-{n}`.
    pub fn next_id(&self, kind: &str) -> String {
        format!(
            "{kind}-{}-{}",
            self.id_prefix,
            self.id_counter.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Runs the agent until `shutdown` is triggered (returns `Ok`) or reconnecting gives up
/// (returns the error). When it returns, helper threads are told to stop.
pub fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    config.validate()?;
    let url = connection::ServerUrl::parse(&config.server.url).map_err(Error::Setup)?;
    if !config.server.verify_ssl {
        ::log::warn!(
            "!!! server.verify_ssl is false: the server's certificate is NOT verified and anyone on the path can impersonate it{} !!!",
            if config.server.pin_sha256.is_some() { " (a pin is set, which still protects the link)" } else { "" }
        );
    }
    let tls = if url.tls {
        Some(connection::tls::client_config(&config.server)?)
    } else {
        ::log::warn!("server.url uses ws:// without TLS: the token and all traffic are readable on the network; use wss:// outside development");
        None
    };
    let endpoint = Endpoint::parse(&config.docker.socket).map_err(Error::Setup)?;
    let docker = DockerClient::new(endpoint, config.docker_timeout());
    let id_prefix = format!("{:08x}", (random_unit() * f64::from(u32::MAX)) as u32);
    let signing = match &config.agent.signing_key {
        Some(k) => Some(SigningKey(
            config::parse_signing_key(k).map_err(Error::Setup)?,
        )),
        None => None,
    };
    if signing.is_some() {
        ::log::info!("message signing is on: every JSON message is signed and must be signed");
    }
    let env = |k: &str| std::env::var(k).ok();
    let state_file =
        state::StateFile::choose(config.agent.state_file.as_deref(), &env).map_err(Error::Setup)?;
    let keys = state_file.load(state::now_secs());
    let waker = Arc::new(
        waker::Waker::new().map_err(|e| Error::Setup(format!("cannot create a pipe: {e}")))?,
    );
    shutdown.add_waker(waker.clone());
    let agent = Arc::new(Agent {
        settings: Settings {
            heartbeat: AtomicU64::new(config.agent.heartbeat_interval),
            command_timeout: AtomicU64::new(config.agent.command_timeout),
        },
        events: Arc::new(EventBuffer::new(config.agent.event_buffer).with_waker(waker.clone())),
        stats: Arc::new(Stats::default()),
        dedup: Mutex::new(ops::Dedup::with_keys(keys)),
        outbox: ops::outbox::Outbox::default().with_waker(waker.clone()),
        waker,
        signing,
        nonces: Mutex::new(protocol::signing::NonceCache::default()),
        started: Instant::now(),
        state_file,
        state_writer: Mutex::new(()),
        snapshot: Mutex::new(health::Snapshot::default()),
        docker,
        config,
        id_prefix,
        id_counter: AtomicU64::new(1),
    });
    let probe_limit = agent.docker.timeout().min(Duration::from_secs(5));
    let first = health::probe_docker(&agent.docker, probe_limit);
    if !first.docker_reachable {
        ::log::warn!(
            "the Docker daemon at {} is not reachable yet; commands will fail until it is",
            agent.docker.endpoint()
        );
    }
    if let Ok(mut s) = agent.snapshot.lock() {
        *s = first;
    }

    let pool = ops::pool::Pool::new(agent.config.agent.workers, agent.config.agent.queue)?;
    let closer: Arc<Mutex<Option<Closer>>> = Arc::new(Mutex::new(None));
    {
        let (a, sd) = (agent.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("health".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                // Probe once per heartbeat interval. The interval can change at any time (the
                // server's auth_response or config_update), so wait in one-second slices and
                // compare with the current one.
                let mut last = Instant::now();
                loop {
                    if sd.wait(Duration::from_secs(1)) {
                        return;
                    }
                    let every = Duration::from_secs(
                        a.settings.heartbeat.load(Ordering::Relaxed).clamp(1, 30),
                    );
                    if last.elapsed() < every {
                        continue;
                    }
                    last = Instant::now();
                    let s = health::probe_docker(&a.docker, probe_limit);
                    if let Ok(mut slot) = a.snapshot.lock() {
                        *slot = s;
                    }
                }
            })?;
    }
    {
        let (d, b, c, sd) = (
            agent.docker.clone(),
            agent.events.clone(),
            closer.clone(),
            shutdown.clone(),
        );
        std::thread::Builder::new()
            .name("events".into())
            .stack_size(256 * 1024)
            .spawn(move || ops::events::follow(d, b, c, sd))?;
    }
    let result = connection::session::run_sessions(&agent, tls.as_ref(), &pool, &shutdown);
    shutdown.trigger();
    if let Ok(slot) = closer.lock() {
        if let Some(c) = slot.as_ref() {
            c.close();
        }
    }
    result
}

/// The per-agent HMAC key. `Debug` never shows it.
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// The key bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// 64 bits from std's randomly keyed SipHash, mixed with the clock (see [`random_unit`]).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A uniform number in [0, 1) for backoff jitter and id prefixes. Not for secrets: it
/// comes from std's randomly keyed SipHash (seeded from the OS), which saves the size of a
/// second `rand` copy (tungstenite brings its own) on small targets.
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}
