//! Fault tests: real crashes, a real daemon restart, a real PostgreSQL restart, a real
//! network partition (packets dropped on the server's loopback port) and a reconnect storm.
//!
//! This test binary stops and starts shared services (dockerd, PostgreSQL), so its tests run
//! one at a time (a process-wide lock), and cargo runs test binaries one after another, so no
//! other test sees the outage.

use docker_ctl_tests::*;
use serde_json::json;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn online(server: &Server, name: &str) -> (String, String, String, Agent) {
    let (host_id, agent_id, token) = server.enrol(&unique(name));
    let agent = Agent::start(&server.ws(), &agent_id, &token);
    server.wait_status(&host_id, "online", Duration::from_secs(20));
    (host_id, agent_id, token, agent)
}

/// Starts a slow exec that appends one line to a file in the container, on another thread.
fn slow_marker_exec(
    server_http: String,
    token: String,
    host_id: String,
    container: String,
) -> std::thread::JoinHandle<(u16, serde_json::Value)> {
    std::thread::spawn(move || {
        api_call(
            &server_http,
            Some(&token),
            "POST",
            &format!("/api/v1/hosts/{host_id}/operations"),
            Some(json!({"operation": "container.exec",
                        "params": {"id": container, "cmd": ["sh", "-c", "sleep 2; echo ran >> /tmp/marker"]}})),
        )
    })
}

fn marker_lines(container: &str) -> usize {
    let (_, out) = docker_cli(&[
        "exec",
        container,
        "sh",
        "-c",
        "cat /tmp/marker 2>/dev/null || true",
    ]);
    out.lines().filter(|l| *l == "ran").count()
}

/// A running test container and a slow marker exec in flight on it (started by the API on
/// another thread); returns once the exec runs inside the container.
fn exec_in_flight(
    server: &Server,
    host_id: &str,
    prefix: &str,
) -> (
    DockerCleanup,
    String,
    std::thread::JoinHandle<(u16, serde_json::Value)>,
) {
    let mut cleanup = DockerCleanup::default();
    let c = unique(prefix);
    cleanup.container(&c);
    assert!(docker_cli(&["run", "-d", "--name", &c, TEST_IMAGE, "sleep", "300"]).0);
    let pending = slow_marker_exec(
        server.http(),
        server.admin_token.clone(),
        host_id.to_string(),
        c.clone(),
    );
    wait_for("the exec started", Duration::from_secs(10), || {
        let (_, ps) = docker_cli(&["top", &c]);
        ps.contains("sleep 2").then_some(())
    });
    (cleanup, c, pending)
}

/// Waits for the marker exec to finish and checks it ran exactly once.
fn ran_exactly_once(c: &str) {
    wait_for("the exec finished", Duration::from_secs(10), || {
        (marker_lines(c) >= 1).then_some(())
    });
    assert_eq!(marker_lines(c), 1, "the command ran exactly once");
}

#[test]
fn agent_sigkilled_mid_command_gives_a_definite_outcome_and_runs_at_most_once() {
    let _g = serial();
    require_docker();
    // A short command timeout: the requester waits that long for the agent to come back.
    let server = Server::start_with(Db::Sqlite, &[("DOCKER_CTL_COMMAND_TIMEOUT", "8")]);
    let (host_id, _agent_id, _token, mut agent) = online(&server, "f-akill");
    // Kill the agent while the exec runs inside the container.
    let (_cleanup, c, pending) = exec_in_flight(&server, &host_id, "f-akill");
    agent.kill();
    let t0 = Instant::now();
    let (status, body) = pending.join().expect("requester thread");
    eprintln!(
        "agent SIGKILL mid-command: requester got {status} after {:?}: {body}",
        t0.elapsed()
    );
    // A definite outcome: the real result, or an explicit error. Never a silent success
    // without data, never a hang.
    if status == 200 {
        assert_eq!(body["status"], "success");
        assert!(body["data"]["exit_code"].is_number(), "{body}");
    } else {
        assert!(
            matches!(
                body["error"]["code"].as_str(),
                Some("outcome_unknown" | "agent_offline" | "timeout")
            ),
            "{status} {body}"
        );
    }
    agent.restart();
    server.wait_status(&host_id, "online", Duration::from_secs(20));
    // Docker's exec keeps running without the agent; it ran once, not twice.
    ran_exactly_once(&c);
    server.op_ok(&host_id, "system.ping", json!({}));
}

#[test]
fn server_sigkilled_mid_command_agent_recovers_and_the_command_ran_once() {
    let _g = serial();
    require_docker();
    let mut server = Server::start(Db::Sqlite);
    let (host_id, _agent_id, _token, mut agent) = online(&server, "f-skill");
    let (_cleanup, c, pending) = exec_in_flight(&server, &host_id, "f-skill");
    server.kill();
    let _ = pending.join(); // the requester's connection broke with the server: that is definite
    server.restart();
    server.wait_status(&host_id, "online", Duration::from_secs(20));
    assert!(agent.is_running());
    ran_exactly_once(&c);
    server.op_ok(&host_id, "container.inspect", json!({"id": c}));
}

fn dockerd(action: &str) {
    let st = Command::new("bash")
        .arg(repo_root().join("scripts/dockerd.sh"))
        .arg(action)
        .status()
        .expect("scripts/dockerd.sh");
    assert!(st.success(), "dockerd {action} failed");
}

/// Restarts dockerd if the test fails half way.
struct DockerdGuard;
impl Drop for DockerdGuard {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/dockerd.sh"))
            .arg("start")
            .status();
    }
}

#[test]
fn dockerd_stopped_and_started_is_reported_and_recovers_by_itself() {
    let _g = serial();
    require_docker();
    let server = Server::start(Db::Sqlite);
    let (host_id, _agent_id, _token, _agent) = online(&server, "f-dockerd");
    let _guard = DockerdGuard;

    dockerd("stop");
    // The API answers docker_unreachable...
    let (st, body) = wait_for(
        "docker_unreachable from the API",
        Duration::from_secs(20),
        || {
            let (st, body) = server.op(&host_id, "container.list", json!({}));
            (body["error"]["code"] == "docker_unreachable").then_some((st, body))
        },
    );
    assert_eq!(st, 502, "{body}");
    // ...and heartbeats say so (the host shows the agent's latest health).
    wait_for(
        "a heartbeat reporting Docker unreachable",
        Duration::from_secs(20),
        || {
            let (_, h) = server.api("GET", &format!("/api/v1/hosts/{host_id}"), None);
            h.to_string()
                .contains("\"docker_reachable\":false")
                .then_some(())
        },
    );
    assert_eq!(
        server.host_status(&host_id),
        "online",
        "the agent itself stays online"
    );

    dockerd("start");
    wait_for("operations work again", Duration::from_secs(30), || {
        let (st, _) = server.op(&host_id, "container.list", json!({}));
        (st == 200).then_some(())
    });
    wait_for(
        "a heartbeat reporting Docker reachable",
        Duration::from_secs(20),
        || {
            let (_, h) = server.api("GET", &format!("/api/v1/hosts/{host_id}"), None);
            h.to_string()
                .contains("\"docker_reachable\":true")
                .then_some(())
        },
    );
}

fn pg_cluster() -> (String, String) {
    let out = Command::new("pg_lsclusters")
        .arg("-h")
        .output()
        .expect("pg_lsclusters");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().next().expect("a PostgreSQL cluster exists");
    let mut f = line.split_whitespace();
    (
        f.next().unwrap_or("15").to_string(),
        f.next().unwrap_or("main").to_string(),
    )
}

fn pg(action: &str) {
    let (v, n) = pg_cluster();
    let st = Command::new("pg_ctlcluster")
        .args([&v, &n, action])
        .status()
        .expect("pg_ctlcluster");
    assert!(st.success(), "pg_ctlcluster {action} failed");
}

struct PgGuard;
impl Drop for PgGuard {
    fn drop(&mut self) {
        let (v, n) = pg_cluster();
        let _ = Command::new("pg_ctlcluster")
            .args([&v, &n, "start"])
            .status();
    }
}

#[test]
fn postgres_restart_under_load_keeps_agent_sessions_and_readyz_shows_the_outage() {
    let _g = serial();
    require_docker();
    let server = Server::start(Db::postgres());
    let (host_id, _agent_id, _token, _agent) = online(&server, "f-pg");
    let _guard = PgGuard;
    let (st, _) = api_call(&server.http(), None, "GET", "/readyz", None);
    assert_eq!(st, 200);

    // Load: operations in a loop while the database goes away and comes back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (http, token, host, stop) = (
            server.http(),
            server.admin_token.clone(),
            host_id.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 10_000 {
                let _ = api_call(
                    &http,
                    Some(&token),
                    "POST",
                    &format!("/api/v1/hosts/{host}/operations"),
                    Some(json!({"operation": "system.ping"})),
                );
                n += 1;
            }
            n
        })
    };
    pg("stop");
    let (st, body) = wait_for(
        "/readyz reporting the outage",
        Duration::from_secs(20),
        || {
            let (st, body) = api_call(&server.http(), None, "GET", "/readyz", None);
            (st == 503).then_some((st, body))
        },
    );
    eprintln!("/readyz during the outage: {st} {body}");
    pg("start");
    wait_for("/readyz ready again", Duration::from_secs(60), || {
        let (st, _) = api_call(&server.http(), None, "GET", "/readyz", None);
        (st == 200).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = load.join().expect("load thread");
    assert!(calls > 0);
    // The agent's session survived: online, and operations work without a reconnect.
    assert_eq!(server.host_status(&host_id), "online");
    server.op_ok(&host_id, "container.list", json!({}));
    assert!(
        !server.output.contains("agent disconnected"),
        "no agent session was dropped during the outage:\n{}",
        server.output.text()
    );
}

/// Drops every packet to and from a loopback port while it lives. No FIN, no RST: a
/// half-open link, as when a cellular router loses its signal.
struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    fn new(port: u16) -> Partition {
        let p = port.to_string();
        let rule = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        let rules = vec![
            rule(&[
                "INPUT", "-i", "lo", "-p", "tcp", "--dport", &p, "-j", "DROP",
            ]),
            rule(&[
                "INPUT", "-i", "lo", "-p", "tcp", "--sport", &p, "-j", "DROP",
            ]),
        ];
        for r in &rules {
            let st = Command::new("iptables")
                .arg("-I")
                .args(r)
                .status()
                .expect("iptables (scripts/services.sh installs it)");
            assert!(st.success(), "iptables -I {r:?}");
        }
        Partition { rules }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for r in &self.rules {
            let _ = Command::new("iptables").arg("-D").args(r).status();
        }
    }
}

#[test]
fn a_partition_is_detected_as_half_open_and_the_agent_reconnects_after_it_heals() {
    let _g = serial();
    require_docker();
    let server = Server::start(Db::Sqlite);
    let (host_id, agent_id, token) = server.enrol(&unique("f-part"));
    let relay = Relay::start(&server.addr);
    let agent = Agent::start(&format!("ws://127.0.0.1:{}", relay.port), &agent_id, &token);
    server.wait_status(&host_id, "online", Duration::from_secs(20));
    let before = agent.output.text().matches("authenticated").count();
    let t0 = Instant::now();
    {
        let _cut = Partition::new(relay.port);
        // The server marks the agent offline after 3 missed heartbeats (1 s each here).
        server.wait_status(&host_id, "offline", Duration::from_secs(30));
        eprintln!(
            "partition: the server saw the agent offline after {:?}",
            t0.elapsed()
        );
        // The agent notices within 2x its heartbeat interval and keeps trying to reconnect.
        wait_for(
            "the agent noticed the dead link",
            Duration::from_secs(30),
            || {
                agent
                    .output
                    .contains("connection to the server lost")
                    .then_some(())
            },
        );
        eprintln!("partition: the agent noticed after {:?}", t0.elapsed());
        assert_eq!(
            server.host_status(&host_id),
            "offline",
            "no reconnect gets through the partition"
        );
    }
    // Healed: the agent is back by itself.
    let back = Instant::now();
    server.wait_status(&host_id, "online", Duration::from_secs(90));
    eprintln!(
        "partition healed: the agent was online again {:?} after the heal",
        back.elapsed()
    );
    // The server sees the new session before the agent has logged its auth_response.
    wait_for(
        "the agent authenticated again",
        Duration::from_secs(10),
        || (agent.output.text().matches("authenticated").count() > before).then_some(()),
    );
    server.op_ok(&host_id, "system.ping", json!({}));
}

#[test]
fn reconnect_storm_of_1000_agents_without_failed_handshakes() {
    let _g = serial();
    let lg = bin("docker-ctl-loadgen");
    let out = Command::new(lg)
        .args(["storm", "--agents", "1000", "--heartbeat", "5"])
        .output()
        .expect("run docker-ctl-loadgen");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "loadgen storm failed");
    let metric = |k: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("METRIC {k} "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no {k} in the output"))
    };
    assert_eq!(
        metric("storm_failed_handshakes"),
        0.0,
        "every agent reconnected without a failed handshake"
    );
    let peak = metric("storm_max_arrivals_100ms");
    assert!(peak >= 1.0);
    assert!(
        peak < 1000.0,
        "jitter spreads the arrivals: {peak} of 1000 in one 100 ms window"
    );
}
