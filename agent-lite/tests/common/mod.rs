//! Shared helpers for agent-lite's integration tests.
#![allow(dead_code)]

pub mod docker;
pub mod policy;

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, failing the test after `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
pub mod tunnel;
pub mod ws_server;

use agent_lite::config::Config;

/// A config pointing at a test server, with quick heartbeats and reconnects.
pub fn agent_config(server_url: &str, agent_id: &str) -> Config {
    let mut c = Config::empty();
    c.server.url = server_url.to_string();
    c.agent.id = agent_id.to_string();
    c.agent.auth_token = "tok-very-secret-123".into();
    c.agent.heartbeat_interval = 1;
    c.agent.workers = 3;
    c.docker.timeout = 30.0;
    c.reconnection.max_delay = 8.0;
    // Each agent its own state file, never the system default.
    c.agent.state_file = Some(state_path(agent_id));
    c
}

/// `dir/name`, which does not exist yet.
pub fn unique_path(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    assert!(!p.exists(), "{} exists already", p.display());
    p
}

/// A per-agent state file under the temporary directory.
pub fn state_path(agent_id: &str) -> std::path::PathBuf {
    std::env::temp_dir()
        .join("docker-ctl-agent-tests")
        .join(format!("{agent_id}.json"))
}

/// Runs the real agent in-process; returns its shutdown handle and thread.
pub fn spawn_agent(
    config: Config,
) -> (
    agent_lite::Shutdown,
    std::thread::JoinHandle<agent_lite::Result<()>>,
) {
    let shutdown = agent_lite::Shutdown::new();
    let sd = shutdown.clone();
    let t = std::thread::spawn(move || agent_lite::run(config, sd));
    (shutdown, t)
}

/// Joins the agent thread within `limit`.
pub fn join_within(
    t: std::thread::JoinHandle<agent_lite::Result<()>>,
    limit: Duration,
) -> agent_lite::Result<()> {
    let deadline = Instant::now() + limit;
    while !t.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the agent did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.join().expect("agent thread panicked")
}
