//! Starting and stopping the agent: [`run`] validates the config, opens the state file, gets
//! the credentials of an agent that enrols itself ([`crate::enrol`]), builds the shared
//! [`Agent`], starts the helper threads (health prober, events follower, command workers) and
//! holds the link to the server until shutdown or until reconnecting gives up.
//!
//! Owns: the order of start-up and shut-down. Must not: handle messages (that is
//! [`crate::connection`]) or run commands (that is [`crate::ops`]).

use crate::agent::Agent;
use crate::config::{Config, Parsed, ValidConfig};
use crate::connection::{reconnect, tls};
use crate::daemon::DockerClient;
use crate::error::{Error, Result};
use crate::health;
use crate::ids::MessageIds;
use crate::ops::dedup::Memory;
use crate::ops::events::{self, EventBuffer};
use crate::ops::outbox::Outbox;
use crate::ops::pool::Pool;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::signing::Signer;
use crate::state::{now_secs, StateFile};
use crate::update::download::Source;
use crate::update::swap::Relaunch;
use crate::update::{Start, Updater};
use crate::waker::Waker;
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;

/// Runs the agent until `shutdown` is triggered (returns `Ok`) or reconnecting gives up
/// (returns the error). When it returns, helper threads are told to stop.
pub fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    run_valid(config.into_valid()?, shutdown)
}

/// [`run`] with a config that was validated already.
pub fn run_valid(valid: ValidConfig, shutdown: Shutdown) -> Result<()> {
    run_started(valid, shutdown, Relaunch::capture(), Start::Normal)
}

/// [`run_valid`] for the binary: `relaunch` is how it was started, `start` what
/// [`crate::update::at_start`] found (a binary on probation watches its deadline).
pub fn run_started(
    valid: ValidConfig,
    shutdown: Shutdown,
    relaunch: Relaunch,
    start: Start,
) -> Result<()> {
    let ValidConfig { mut config, parsed } = valid;
    let tls = tls::for_link(&config.server, &parsed.server_urls, parsed.pin)?;
    let env = |k: &str| std::env::var(k).ok();
    // An agent that enrols keeps its credentials in the state file, never in memory only.
    let enrolling = config.agent.enrol_token.is_some();
    let state_file = StateFile::choose(config.agent.state_file.as_deref(), &env, enrolling)
        .map_err(Error::Setup)?;
    let keys = state_file.load(now_secs());
    if enrolling {
        let urls = &parsed.server_urls;
        let got =
            crate::enrol::credentials(&config, urls, tls.as_ref(), &state_file, &keys, &shutdown)?;
        let Some(c) = got else {
            return Ok(());
        };
        config.agent.id = c.agent_id;
        config.agent.auth_token = c.auth_token;
    }
    let memory = Memory::with_keys(state_file, keys);
    let urls = parsed.server_urls.clone();
    let agent = Arc::new(build(
        config,
        parsed,
        tls.clone(),
        memory,
        &shutdown,
        relaunch,
        &start,
    )?);
    match start {
        Start::Normal => {}
        Start::Relaunch => {
            shutdown.restart();
            return Ok(());
        }
        Start::Probation(limit) => {
            let a = agent.clone();
            std::thread::Builder::new()
                .name("probation".into())
                .stack_size(64 * 1024)
                .spawn(move || a.update.watch_probation(limit))?;
        }
    }
    let probe_limit = agent.daemon.timeout().min(Duration::from_secs(5));
    first_probe(&agent, probe_limit);
    let pool = Pool::new(agent.config.agent.workers, agent.config.agent.queue)?;
    health::spawn_prober(
        agent.daemon.clone(),
        agent.health.clone(),
        agent.settings.clone(),
        probe_limit,
        shutdown.clone(),
    )?;
    let events =
        events::spawn_follower(agent.daemon.clone(), agent.events.clone(), shutdown.clone())?;
    let result = reconnect::keep_connected(&agent, &urls, tls.as_ref(), &pool, &shutdown);
    shutdown.trigger();
    events.stop();
    result
}

/// The shared state, from the validated config and what it parsed.
fn build(
    config: Config,
    parsed: Parsed,
    tls: Option<Arc<ClientConfig>>,
    commands: Memory,
    shutdown: &Shutdown,
    relaunch: Relaunch,
    start: &Start,
) -> Result<Agent> {
    let daemon = DockerClient::new(parsed.docker, config.docker_timeout());
    let key = parsed.signing_key;
    if key.is_some() {
        log::info!("message signing is on: every JSON message is signed and must be signed");
    }
    let waker = Waker::new().map_err(|e| Error::Setup(format!("cannot create a pipe: {e}")))?;
    let waker = Arc::new(waker);
    shutdown.add_waker(waker.clone());
    let a = &config.agent;
    let stats: Arc<crate::stats::Stats> = Arc::default();
    let source = Source::new(
        &parsed.server_urls,
        &a.id,
        &a.auth_token,
        tls,
        Duration::from_secs_f64(config.server.connect_timeout),
        stats.clone(),
    );
    let update = Updater::new(
        config.update.clone(),
        parsed.allowed_versions,
        source,
        relaunch,
        start,
        shutdown.clone(),
    );
    Ok(Agent {
        settings: Arc::new(Settings::new(a.heartbeat_interval, a.command_timeout)),
        events: Arc::new(EventBuffer::new(a.event_buffer).with_waker(waker.clone())),
        stats,
        health: Arc::default(),
        commands,
        outbox: Outbox::default().with_waker(waker.clone()),
        waker,
        signer: key.map(Signer::new),
        ids: MessageIds::default(),
        update,
        daemon,
        config,
    })
}

/// Probes the daemon once before connecting, so the first heartbeat has figures.
fn first_probe(agent: &Agent, limit: Duration) {
    let first = health::probe_docker(&agent.daemon, limit);
    if !first.docker_reachable {
        log::warn!(
            "the Docker daemon at {} is not reachable yet; commands will fail until it is",
            agent.daemon.endpoint()
        );
    }
    agent.health.set(first);
}
