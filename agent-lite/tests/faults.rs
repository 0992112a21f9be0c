//! The Docker daemon goes away and comes back: while its socket is missing, heartbeats say
//! `docker_reachable: false` and commands answer `docker_unreachable`; when a daemon
//! listens again the agent recovers by itself (heartbeats, commands, the `/events`
//! follower). The real dockerd is never stopped: the agent points at a socket path that
//! does not exist yet, and a tiny fake daemon starts listening there later.

mod common;

use common::ws_server::TestServer;
use common::{agent_config, join_within, spawn_agent, unique_path};
use protocol::{CommandResponsePayload, ErrorCode, Message};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

const S10: Duration = Duration::from_secs(10);

/// A daemon that answers /_ping, /info, /containers/json and holds /events open.
fn fake_daemon(listener: UnixListener, log: Sender<String>) {
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || serve(s, log));
        }
    });
}

fn serve(mut s: UnixStream, log: Sender<String>) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        let _ = reader.read_exact(&mut body);
        let target = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let _ = log.send(target.clone());
        let path = target.split('?').next().unwrap_or_default();
        let json = |s: &mut UnixStream, body: &str| {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        };
        if path == "/_ping" || path.ends_with("/_ping") {
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK");
        } else if path.ends_with("/version") {
            json(&mut s, r#"{"ApiVersion":"1.41","Version":"20.10.24"}"#);
        } else if path.ends_with("/info") {
            json(
                &mut s,
                r#"{"Containers":0,"ContainersRunning":0,"ServerVersion":"20.10.24","Swarm":{"LocalNodeState":"inactive"}}"#,
            );
        } else if path.ends_with("/containers/json") {
            json(&mut s, "[]");
        } else if path.ends_with("/events") {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
            // Held open until the agent closes it.
            let mut sink = [0u8; 64];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            return;
        } else {
            let msg = r#"{"message":"page not found"}"#;
            let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}", msg.len());
        }
    }
}

fn heartbeat_reachable(conn: &mut common::ws_server::ServerConn, want: bool, limit: Duration) {
    conn.expect(
        limit,
        &format!("a heartbeat with docker_reachable {want}"),
        |e| matches!(&e.message, Message::Heartbeat(h) if h.docker_reachable == Some(want)),
    );
}

#[test]
fn daemon_unreachable_is_reported_and_the_agent_recovers_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let sock = unique_path(dir.path(), "docker.sock");
    let server = TestServer::start();
    let mut cfg = agent_config(&server.url(), &common::docker::unique("agent-nodaemon"));
    cfg.docker.socket = format!("unix://{}", sock.display());
    cfg.docker.timeout = 5.0;
    let (shutdown, agent) = spawn_agent(cfg);
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);

    heartbeat_reachable(&mut conn, false, S10);
    for (id, op) in [
        ("down-ping", "system.ping"),
        ("down-list", "container.list"),
    ] {
        match conn.command(id, op, json!({}), S10) {
            CommandResponsePayload::Error { error } => {
                assert_eq!(error.code, ErrorCode::DockerUnreachable, "{op}: {error:?}")
            }
            other => panic!("{op} while the daemon is away: {other:?}"),
        }
    }

    // The daemon comes back.
    let (tx, requests) = std::sync::mpsc::channel();
    fake_daemon(UnixListener::bind(&sock).unwrap(), tx);
    let back = Instant::now();
    heartbeat_reachable(&mut conn, true, S10);
    match conn.command("up-list", "container.list", json!({"all": true}), S10) {
        CommandResponsePayload::Success { data } => assert_eq!(data, json!([])),
        other => panic!("container.list after recovery: {other:?}"),
    }
    // The events follower subscribes again (its backoff while the daemon was away is short).
    let deadline = back + Duration::from_secs(40);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = requests
            .recv_timeout(left)
            .expect("the events follower did not resubscribe within 40 s");
        if r.contains("/events") {
            break;
        }
    }
    shutdown.trigger();
    join_within(agent, S10).unwrap();
}
