//! `stream_cancel` and the end of a session close the agent's daemon connections at once.
//! The agent talks to dockerd through a recording proxy on a Unix socket, so the test sees
//! exactly which connection carried which request and when the agent closed it; kept-alive
//! connections of the agent's health probe come and go beside it without confusing the
//! count. Needs dockerd: fails without it.

mod common;

use common::docker::{client, op, unique, Cleanup};
use common::tunnel::{Request, Tunnel};
use common::ws_server::TestServer;
use common::{agent_config, spawn_agent};
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const S10: Duration = Duration::from_secs(10);
const DOCKERD: &str = "/var/run/docker.sock";

/// One agent-to-daemon connection as the proxy saw it.
#[derive(Default)]
struct Seen {
    /// The start of what the agent sent (request lines and headers), lossily decoded.
    sent: Mutex<String>,
    /// The agent closed or shut down its side.
    closed: AtomicBool,
}

/// A forwarding proxy in front of dockerd that remembers every connection.
struct Proxy {
    path: std::path::PathBuf,
    conns: Arc<Mutex<Vec<Arc<Seen>>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let path = std::env::temp_dir().join(format!("{}.sock", unique("pt-cancel-proxy")));
        let listener = UnixListener::bind(&path).unwrap();
        let conns: Arc<Mutex<Vec<Arc<Seen>>>> = Arc::default();
        let list = conns.clone();
        std::thread::spawn(move || {
            for agent in listener.incoming() {
                let Ok(agent) = agent else { return };
                let Ok(daemon) = UnixStream::connect(DOCKERD) else {
                    continue;
                };
                let seen = Arc::new(Seen::default());
                list.lock().unwrap().push(seen.clone());
                let (mut from_agent, mut to_daemon) =
                    (agent.try_clone().unwrap(), daemon.try_clone().unwrap());
                let (mut from_daemon, mut to_agent) = (daemon, agent);
                let up = seen.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match from_agent.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                {
                                    let mut sent = up.sent.lock().unwrap();
                                    if sent.len() < 64 * 1024 {
                                        sent.push_str(&String::from_utf8_lossy(&buf[..n]));
                                    }
                                }
                                if to_daemon.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    up.closed.store(true, Ordering::SeqCst);
                    let _ = to_daemon.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_daemon, &mut to_agent);
                    let _ = to_agent.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy { path, conns }
    }

    /// The connections whose requests contain `needle`.
    fn carrying(&self, needle: &str) -> Vec<Arc<Seen>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.sent.lock().unwrap().contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits until every connection that carried `needle` (at least one) is closed by the agent.
fn closed_within(proxy: &Proxy, needle: &str, limit: Duration, mut pump: impl FnMut()) {
    let deadline = Instant::now() + limit;
    loop {
        let conns = proxy.carrying(needle);
        assert!(!conns.is_empty(), "no daemon connection carried {needle}");
        if conns.iter().all(|s| s.closed.load(Ordering::SeqCst)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon connection of {needle} is still open after {limit:?}"
        );
        pump();
    }
}

#[test]
fn cancel_and_session_end_close_daemon_connections() {
    common::docker::require_docker();
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let created = op(
        &c,
        "container.create",
        json!({"name": unique("pt-cancel"), "image": "docker-ctl-test/busybox:latest",
               "cmd": ["sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.1; done"]}),
    )
    .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    cleanup.container(&id);
    op(&c, "container.start", json!({"id": id})).unwrap();

    let proxy = Proxy::start();
    let server = TestServer::start();
    let mut config = agent_config(&server.url(), &unique("pt-cancel"));
    config.docker.socket = format!("unix://{}", proxy.path.display());
    let (shutdown, _agent) = spawn_agent(config);
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    let mut t = Tunnel::new(conn);
    t.until(S10, "a heartbeat", |t| !t.heartbeats.is_empty());

    // A follow holds its own daemon connection while lines flow.
    let first = format!("/containers/{id}/logs?follow=1&stdout=1&stderr=1&tail=0&first");
    let sid = t.open(Request::get(&format!("/v1.41{first}")));
    t.until(S10, "live log lines", |t| {
        t.streams
            .get(&sid)
            .is_some_and(|s| String::from_utf8_lossy(&s.data).matches("line-").count() >= 3)
    });
    assert_eq!(t.streams[&sid].status, Some(200));
    let held = proxy.carrying(&first);
    assert_eq!(held.len(), 1, "one daemon connection carries the follow");
    assert!(!held[0].closed.load(Ordering::SeqCst));

    // stream_cancel: the agent closes exactly that connection, promptly.
    let cancelled = Instant::now();
    t.cancel(sid);
    closed_within(&proxy, &first, S10, || {
        t.pump(Duration::from_millis(20));
    });
    eprintln!(
        "daemon connection closed {:?} after stream_cancel",
        cancelled.elapsed()
    );
    // And nothing more arrives for the stream while the container keeps logging.
    let before = t.streams[&sid].data.len();
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        t.pump(Duration::from_millis(50));
    }
    assert_eq!(t.streams[&sid].data.len(), before, "data after cancel");
    assert!(
        !t.streams[&sid].ended,
        "a cancelled stream sends no stream_end"
    );

    // Two more follows, then the session drops: the agent closes both daemon connections.
    let second = format!("/containers/{id}/logs?follow=1&stdout=1&stderr=1&tail=0&second");
    let events = "/events?session-end";
    let a = t.open(Request::get(&format!("/v1.41{second}")));
    let b = t.open(Request::get(&format!("/v1.41{events}")));
    t.until(S10, "both streams answered", |t| {
        t.streams.get(&a).is_some_and(|s| !s.data.is_empty())
            && t.streams.get(&b).is_some_and(|s| s.status.is_some())
    });
    for needle in [&second[..], events] {
        let held = proxy.carrying(needle);
        assert_eq!(held.len(), 1, "one daemon connection carries {needle}");
        assert!(!held[0].closed.load(Ordering::SeqCst), "{needle} is open");
    }
    drop(t);
    // The agent reconnects; its old streams are gone.
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    for needle in [&second[..], events] {
        closed_within(&proxy, needle, Duration::from_secs(5), || {
            let _ = conn.next_frame(Duration::from_millis(20));
        });
    }
    shutdown.trigger();
}
