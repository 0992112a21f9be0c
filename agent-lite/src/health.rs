//! Health figures for heartbeats: the daemon (reachable, ping round trip, containers), the
//! host (/proc/loadavg, /proc/meminfo) and the agent itself (/proc/self/status RSS).
//!
//! Owns: collecting and parsing, and the prober thread that keeps [`Latest`] fresh, so a slow
//! daemon never delays a heartbeat: the session sends the latest snapshot. Must not: talk to
//! the server.

use crate::daemon::DockerClient;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use protocol::HeartbeatPayload;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The newest [`Snapshot`], written by the prober and read by the session.
#[derive(Debug, Default)]
pub struct Latest(Mutex<Snapshot>);

impl Latest {
    pub fn get(&self) -> Snapshot {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn set(&self, s: Snapshot) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = s;
        }
    }
}

/// Starts the prober thread: one probe per heartbeat interval, each bounded by `limit`,
/// until shutdown.
pub fn spawn_prober(
    daemon: DockerClient,
    latest: Arc<Latest>,
    settings: Arc<Settings>,
    limit: Duration,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("health".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            // The interval can change at any time (the server's auth_response or
            // config_update), so wait in one-second slices and compare with the current one.
            let mut last = Instant::now();
            while !shutdown.wait(Duration::from_secs(1)) {
                let every = Duration::from_secs(settings.heartbeat_secs().min(30));
                if last.elapsed() >= every {
                    last = Instant::now();
                    latest.set(probe_docker(&daemon, limit));
                }
            }
        })
        .map(|_| ())
}

/// The latest figures about the daemon and the host.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub docker_reachable: bool,
    pub docker_ping_ms: Option<f64>,
    pub docker_version: Option<String>,
    pub containers_running: Option<u64>,
    pub containers_total: Option<u64>,
    /// The daemon is an active swarm node (`/info` Swarm.LocalNodeState == "active").
    pub swarm: bool,
}

/// Asks the daemon, bounded by `limit`.
pub fn probe_docker(docker: &DockerClient, limit: Duration) -> Snapshot {
    let deadline = Some(Instant::now() + limit);
    let mut s = Snapshot::default();
    match docker.ping(deadline) {
        Ok(rtt) => {
            s.docker_reachable = true;
            s.docker_ping_ms = Some((rtt.as_secs_f64() * 1000.0 * 100.0).round() / 100.0);
        }
        Err(e) => {
            log::debug!("docker ping failed: {e}");
            return s;
        }
    }
    match docker.get_json("/info", deadline) {
        Ok(info) => {
            s.containers_running = info.get("ContainersRunning").and_then(Value::as_u64);
            s.containers_total = info.get("Containers").and_then(Value::as_u64);
            s.docker_version = info
                .get("ServerVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
            s.swarm = info
                .pointer("/Swarm/LocalNodeState")
                .and_then(Value::as_str)
                == Some("active");
        }
        Err(e) => log::debug!("docker /info failed: {e}"),
    }
    s
}

/// Fills the host and process figures from /proc.
pub fn fill_host(hb: &mut HeartbeatPayload) {
    if let Ok(s) = std::fs::read_to_string("/proc/loadavg") {
        hb.load_average = parse_loadavg(&s);
    }
    if let Ok(s) = std::fs::read_to_string("/proc/meminfo") {
        hb.mem_total_bytes = kib_field(&s, "MemTotal:");
        hb.mem_available_bytes = kib_field(&s, "MemAvailable:");
    }
    hb.agent_rss_bytes = self_rss();
}

/// The agent's resident set size.
pub fn self_rss() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| kib_field(&s, "VmRSS:"))
}

pub fn parse_loadavg(s: &str) -> Option<[f64; 3]> {
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// A `Name:   1234 kB` line, in bytes.
pub fn kib_field(s: &str, name: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether a compose CLI is installed: `docker-compose` on PATH or the `docker compose`
/// plugin in one of Docker's plugin directories.
pub fn compose_available() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| is_executable(&d.join("docker-compose"))) {
        return true;
    }
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    if let Some(cfg) = std::env::var_os("DOCKER_CONFIG") {
        dirs.push(std::path::PathBuf::from(cfg).join("cli-plugins"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(std::path::PathBuf::from(home).join(".docker/cli-plugins"));
    }
    for d in [
        "/usr/local/lib/docker/cli-plugins",
        "/usr/local/libexec/docker/cli-plugins",
        "/usr/lib/docker/cli-plugins",
        "/usr/libexec/docker/cli-plugins",
    ] {
        dirs.push(d.into());
    }
    dirs.iter()
        .any(|d| is_executable(&d.join("docker-compose")))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 1/467 12345\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        let meminfo = "MemTotal:       16314508 kB\nMemFree:  1 kB\nMemAvailable:   10000000 kB\n";
        assert_eq!(kib_field(meminfo, "MemTotal:"), Some(16_314_508 * 1024));
        assert_eq!(kib_field(meminfo, "MemAvailable:"), Some(10_000_000 * 1024));
        assert_eq!(kib_field(meminfo, "SwapTotal:"), None);
        let mut hb = HeartbeatPayload::default();
        fill_host(&mut hb);
        assert!(hb.agent_rss_bytes.unwrap() > 0);
        assert!(hb.mem_total_bytes.unwrap() > 0);
        assert!(hb.load_average.is_some());
    }
}
