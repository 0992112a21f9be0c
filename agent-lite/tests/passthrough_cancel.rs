//! `stream_cancel` and the end of a session close the agent's daemon connections at once.
//! Its own test binary: it counts this process's open sockets, so nothing else may run
//! beside it. Needs dockerd: fails without it.

mod common;

use common::docker::{client, op, unique, Cleanup};
use common::tunnel::{Request, Tunnel};
use common::ws_server::TestServer;
use common::{agent_config, spawn_agent, wait_for};
use serde_json::json;
use std::time::{Duration, Instant};

const S10: Duration = Duration::from_secs(10);

fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
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

    let server = TestServer::start();
    let (shutdown, _agent) = spawn_agent(agent_config(&server.url(), &unique("pt-cancel")));
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    let mut t = Tunnel::new(conn);
    // Idle baseline: session, events follower; the health prober's connections come and go.
    t.until(S10, "a heartbeat", |t| !t.heartbeats.is_empty());
    let baseline = sockets();

    let path = format!("/v1.41/containers/{id}/logs?follow=1&stdout=1&stderr=1&tail=0");
    let sid = t.open(Request::get(&path));
    t.until(S10, "live log lines", |t| {
        t.streams
            .get(&sid)
            .is_some_and(|s| String::from_utf8_lossy(&s.data).matches("line-").count() >= 3)
    });
    assert_eq!(t.streams[&sid].status, Some(200));
    assert!(sockets() > baseline, "the follow holds a daemon connection");
    let cancelled = Instant::now();
    t.cancel(sid);
    // The daemon connection closes promptly (the time is printed below). The limit is
    // generous because the count is of every socket of this process, and the in-process
    // agent's health probe opens short-lived daemon connections of its own.
    wait_for(Duration::from_secs(10), || {
        t.pump(Duration::from_millis(20));
        (sockets() <= baseline).then_some(())
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

    // Two more follows, then the session drops: the agent cancels both.
    let a = t.open(Request::get(&path));
    let b = t.open(Request::get("/v1.41/events"));
    t.until(S10, "both streams answered", |t| {
        t.streams.get(&a).is_some_and(|s| !s.data.is_empty())
            && t.streams.get(&b).is_some_and(|s| s.status.is_some())
    });
    assert!(sockets() >= baseline + 2);
    drop(t);
    // The agent reconnects; its old streams are gone.
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    wait_for(Duration::from_secs(5), || {
        let _ = conn.next_frame(Duration::from_millis(20));
        // Our side of the old WebSocket closed too; count with the new session in place.
        (sockets() <= baseline).then_some(())
    });
    shutdown.trigger();
}
