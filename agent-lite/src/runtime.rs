//! Starting and stopping the agent: [`run`] validates the config, opens the state file, gets
//! the credentials of an agent that enrols itself ([`crate::enrol`]), builds the shared
//! [`Agent`], starts the helper threads (health prober, events follower, command workers) and
//! holds the link to the server until shutdown or until reconnecting gives up.
//!
//! Owns: the order of start-up and shut-down. Must not: handle messages (that is
//! [`crate::connection`]) or run commands (that is [`crate::ops`]).

use crate::agent::Agent;
use crate::config::{Config, Endpoint, ValidConfig};
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
use crate::signing::{Signer, SigningKey};
use crate::state::{now_secs, StateFile};
use crate::waker::Waker;
use std::sync::Arc;
use std::time::Duration;

/// Runs the agent until `shutdown` is triggered (returns `Ok`) or reconnecting gives up
/// (returns the error). When it returns, helper threads are told to stop.
pub fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    run_valid(config.into_valid()?, shutdown)
}

/// [`run`] with a config that was validated already.
pub fn run_valid(valid: ValidConfig, shutdown: Shutdown) -> Result<()> {
    let ValidConfig { mut config, parsed } = valid;
    let tls = tls::for_link(&config.server, &parsed.server_url, parsed.pin)?;
    let env = |k: &str| std::env::var(k).ok();
    // An agent that enrols keeps its credentials in the state file, never in memory only.
    let enrolling = config.agent.enrol_token.is_some();
    let state_file = StateFile::choose(config.agent.state_file.as_deref(), &env, enrolling)
        .map_err(Error::Setup)?;
    let keys = state_file.load(now_secs());
    if enrolling {
        let url = &parsed.server_url;
        let got =
            crate::enrol::credentials(&config, url, tls.as_ref(), &state_file, &keys, &shutdown)?;
        let Some(c) = got else {
            return Ok(());
        };
        config.agent.id = c.agent_id;
        config.agent.auth_token = c.auth_token;
    }
    let memory = Memory::with_keys(state_file, keys);
    let agent = Arc::new(build(
        config,
        parsed.docker,
        parsed.signing_key,
        memory,
        &shutdown,
    )?);
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
    let url = &parsed.server_url;
    let result = reconnect::keep_connected(&agent, url, tls.as_ref(), &pool, &shutdown);
    shutdown.trigger();
    events.stop();
    result
}

/// The shared state, from the validated config.
fn build(
    config: Config,
    docker: Endpoint,
    key: Option<SigningKey>,
    commands: Memory,
    shutdown: &Shutdown,
) -> Result<Agent> {
    let daemon = DockerClient::new(docker, config.docker_timeout());
    if key.is_some() {
        log::info!("message signing is on: every JSON message is signed and must be signed");
    }
    let waker = Waker::new().map_err(|e| Error::Setup(format!("cannot create a pipe: {e}")))?;
    let waker = Arc::new(waker);
    shutdown.add_waker(waker.clone());
    let a = &config.agent;
    Ok(Agent {
        settings: Arc::new(Settings::new(a.heartbeat_interval, a.command_timeout)),
        events: Arc::new(EventBuffer::new(a.event_buffer).with_waker(waker.clone())),
        stats: Arc::default(),
        health: Arc::default(),
        commands,
        outbox: Outbox::default().with_waker(waker.clone()),
        waker,
        signer: key.map(Signer::new),
        ids: MessageIds::default(),
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
