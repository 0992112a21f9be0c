//! The real agent (in-process via `agent_lite::run`, and the binary for SIGTERM) driven by a
//! test WebSocket server. Needs dockerd: fails when it is absent.

mod common;

use common::docker::{client, op, require_docker, unique, Cleanup};
use common::ws_server::{Frame, TestServer};
use common::{agent_config, join_within, spawn_agent};
use protocol::{CommandResponsePayload, Envelope, ErrorCode, Message};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const S10: Duration = Duration::from_secs(10);

#[test]
fn auth_then_commands_heartbeats_events_and_graceful_close() {
    require_docker();
    let server = TestServer::start();
    let id = unique("agent-sess");
    let (shutdown, agent) = spawn_agent(agent_config(&server.url(), &id));
    let mut conn = server.next_conn(S10);
    assert_eq!(conn.path, format!("/ws/agents/{id}"));
    let auth = conn.accept_auth(1);
    assert_eq!(auth.agent_id, id);
    assert_eq!(auth.auth_token.expose(), "tok-very-secret-123");
    assert_eq!(auth.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        auth.capabilities.first().map(String::as_str),
        Some("docker")
    );
    assert!(
        !auth.capabilities.contains(&"swarm".to_string()),
        "the test daemon is not a swarm node"
    );
    assert_eq!(auth.protocol_version, Some(protocol::PROTOCOL_VERSION));

    let hb = conn.expect(S10, "heartbeat", |e| {
        matches!(e.message, Message::Heartbeat(_))
    });
    let Message::Heartbeat(hb) = hb.message else {
        unreachable!()
    };
    assert_eq!(hb.docker_reachable, Some(true));
    assert!(hb.docker_ping_ms.is_some_and(|ms| ms >= 0.0));
    assert!(hb.containers_total.is_some() && hb.containers_running.is_some());
    assert!(
        hb.load_average.is_some()
            && hb.mem_total_bytes.is_some()
            && hb.mem_available_bytes.is_some()
    );
    assert!(hb.agent_rss_bytes.is_some_and(|r| r > 0));
    assert!(hb.bytes_sent.is_some_and(|b| b > 0) && hb.bytes_received.is_some_and(|b| b > 0));
    assert_eq!(hb.events_dropped, Some(0));

    // container.list answers like the daemon.
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let name = unique("agent-sess-ctr");
    let ctr = op(
        &c,
        "container.create",
        json!({"name": name, "image": "docker-ctl-test/busybox:latest", "cmd": ["sleep", "300"]}),
    )
    .unwrap();
    let ctr_id = ctr["id"].as_str().unwrap().to_string();
    cleanup.container(&ctr_id);
    let r = conn.command(
        "cmd-list",
        "container.list",
        json!({"all": true, "filters": {"name": [name.clone()]}}),
        S10,
    );
    let CommandResponsePayload::Success { data } = r else {
        panic!("{r:?}")
    };
    assert_eq!(data.as_array().map(Vec::len), Some(1), "{data}");
    assert_eq!(data[0]["id"], json!(ctr_id));

    // The event follower pushes the create (or a later) event for our container.
    op(&c, "container.start", json!({"id": ctr_id})).unwrap();
    conn.expect(S10, "container start event", |e| {
        matches!(&e.message, Message::Event(ev) if ev.kind == "container" && ev.action == "start" && ev.actor_id == ctr_id)
    });

    // A slow command does not delay heartbeats or a fast command; one response per id.
    let slow = Envelope::new(
        "cmd-slow",
        Message::Command(protocol::CommandPayload {
            operation: "container.exec".into(),
            params: json!({"id": ctr_id, "cmd": ["sleep", "3"]}),
            timeout: None,
            idempotency_key: None,
        }),
    );
    conn.send(&slow);
    let fast_sent = Instant::now();
    conn.send(&Envelope::new(
        "cmd-fast",
        Message::Command(protocol::CommandPayload {
            operation: "system.ping".into(),
            params: json!({}),
            timeout: None,
            idempotency_key: None,
        }),
    ));
    // Unknown operations are answered, not dropped.
    conn.send(&Envelope::new(
        "cmd-bogus",
        Message::Command(protocol::CommandPayload {
            operation: "container.explode".into(),
            params: json!({}),
            timeout: None,
            idempotency_key: None,
        }),
    ));
    let mut responses: HashMap<String, Vec<(Instant, CommandResponsePayload)>> = HashMap::new();
    let mut heartbeats = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(7);
    while Instant::now() < deadline {
        match conn.next_frame(Duration::from_millis(200)) {
            Some(Frame::Msg(Envelope {
                id,
                message: Message::CommandResponse(r),
                ..
            })) => responses.entry(id).or_default().push((Instant::now(), r)),
            Some(Frame::Msg(Envelope {
                message: Message::Heartbeat(_),
                ..
            })) => heartbeats.push(Instant::now()),
            Some(Frame::Msg(_)) | None => {}
            Some(f) => panic!("connection ended: {f:?}"),
        }
    }
    for id in ["cmd-slow", "cmd-fast", "cmd-bogus"] {
        assert_eq!(
            responses.get(id).map(Vec::len),
            Some(1),
            "exactly one response for {id}: {responses:?}"
        );
    }
    let fast_at = responses["cmd-fast"][0].0;
    let slow_at = responses["cmd-slow"][0].0;
    assert!(
        fast_at < slow_at && fast_at - fast_sent < Duration::from_secs(2),
        "the fast command waited for the slow one"
    );
    assert!(
        matches!(&responses["cmd-slow"][0].1, CommandResponsePayload::Success { data } if data["exit_code"] == 0)
    );
    assert!(
        matches!(&responses["cmd-bogus"][0].1, CommandResponsePayload::Error { error } if error.code == ErrorCode::Unsupported)
    );
    let during_slow = heartbeats
        .iter()
        .filter(|t| **t > fast_sent && **t < slow_at)
        .count();
    assert!(
        during_slow >= 2,
        "heartbeats must continue during a slow command: {during_slow}"
    );

    // A duplicate delivery of an answered command gets the same answer, not a second run.
    let again = conn.command("cmd-fast", "system.ping", json!({}), S10);
    assert!(matches!(again, CommandResponsePayload::Success { .. }));

    // config_update applies at once: heartbeats every 3 s now.
    conn.send(&Envelope::new(
        "cfg-1",
        Message::ConfigUpdate(protocol::ConfigUpdatePayload {
            config: protocol::AgentSettings {
                heartbeat_interval: Some(3),
                command_timeout: None,
            },
        }),
    ));
    conn.expect(S10, "heartbeat", |e| {
        matches!(e.message, Message::Heartbeat(_))
    });
    let t0 = Instant::now();
    conn.expect(S10, "heartbeat", |e| {
        matches!(e.message, Message::Heartbeat(_))
    });
    assert!(
        t0.elapsed() > Duration::from_millis(2500),
        "heartbeat interval not updated: {:?}",
        t0.elapsed()
    );

    // Graceful shutdown: disconnect, then a normal close.
    let stop_at = Instant::now();
    shutdown.trigger();
    conn.expect(S10, "disconnect", |e| {
        matches!(e.message, Message::Disconnect(_))
    });
    let mut close = None;
    while close.is_none() {
        match conn.next_frame(S10) {
            Some(Frame::Close(code)) => close = Some(code),
            Some(Frame::Msg(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    assert_eq!(close, Some(Some(1000)));
    join_within(agent, Duration::from_secs(5)).unwrap();
    assert!(stop_at.elapsed() < Duration::from_secs(5));
}

#[test]
fn bad_messages_are_answered_with_error_and_the_link_stays() {
    require_docker();
    let server = TestServer::start();
    let (shutdown, agent) = spawn_agent(agent_config(&server.url(), &unique("agent-bad")));
    let mut conn = server.next_conn(S10);
    conn.accept_auth(5);
    let is_error = |e: &Envelope| matches!(e.message, Message::Error(_));
    let err = |e: Envelope| match e.message {
        Message::Error(p) => p,
        _ => unreachable!(),
    };

    conn.send_text("this is not json");
    let e = err(conn.expect(S10, "error for malformed JSON", is_error));
    assert_eq!(e.error.code, ErrorCode::InvalidParams);

    conn.send_text(
        r#"{"id":"x-1","type":"self_destruct","timestamp":"2024-01-07T10:00:00Z","payload":{}}"#,
    );
    let e = err(conn.expect(S10, "error for unknown type", is_error));
    assert_eq!(e.error.code, ErrorCode::Unsupported);
    assert_eq!(e.ref_id.as_deref(), Some("x-1"));

    conn.send_text(r#"{"id":"x-2","type":"command","timestamp":"2024-01-07T10:00:00Z","payload":{"params":{}}}"#);
    let e = err(conn.expect(S10, "error for an invalid payload", is_error));
    assert_eq!(
        (e.error.code, e.ref_id.as_deref()),
        (ErrorCode::InvalidParams, Some("x-2"))
    );

    conn.send(&Envelope::new(
        "x-3",
        Message::Heartbeat(Default::default()),
    ));
    let e = err(conn.expect(S10, "error for an agent-only type", is_error));
    assert_eq!(
        (e.error.code, e.ref_id.as_deref()),
        (ErrorCode::Unsupported, Some("x-3"))
    );

    let big = format!(
        r#"{{"id":"x-4","type":"command","timestamp":"2024-01-07T10:00:00Z","payload":{{"operation":"system.ping","pad":"{}"}}}}"#,
        "a".repeat(protocol::MAX_MESSAGE_SIZE)
    );
    conn.send_text(&big);
    let e = err(conn.expect(S10, "error for an oversized message", is_error));
    assert_eq!(e.error.code, ErrorCode::InvalidParams);
    assert!(e.error.message.contains("exceeds"), "{}", e.error.message);

    // Still connected and working.
    let r = conn.command("after-bad", "system.ping", json!({}), S10);
    assert!(matches!(r, CommandResponsePayload::Success { .. }), "{r:?}");
    assert!(
        server.try_next_conn(Duration::from_millis(200)).is_none(),
        "the agent must not have reconnected"
    );
    shutdown.trigger();
    join_within(agent, Duration::from_secs(5)).unwrap();
}

#[test]
fn server_killed_and_restarted_agent_reconnects_with_backoff() {
    require_docker();
    let server = TestServer::start();
    let addr = server.addr;
    let (shutdown, agent) = spawn_agent(agent_config(&server.url(), &unique("agent-rc")));
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    conn.expect(S10, "heartbeat", |e| {
        matches!(e.message, Message::Heartbeat(_))
    });

    // Kill: listener and connection gone.
    drop(conn);
    drop(server);
    let killed = Instant::now();
    let server = TestServer::restart_on(addr);
    // Refuse the first three attempts right after the handshake; accept the fourth.
    let mut times = vec![killed];
    for _ in 0..3 {
        let c = server.next_conn(Duration::from_secs(20));
        times.push(c.accepted);
        drop(c);
    }
    let mut conn = server.next_conn(Duration::from_secs(20));
    times.push(conn.accepted);
    conn.accept_auth(1);
    conn.expect(S10, "heartbeat after reconnect", |e| {
        matches!(e.message, Message::Heartbeat(_))
    });
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    assert!(!gaps.is_empty());
    // base 1 s, factor 2, +up to 10 % jitter (and a little scheduling slack).
    let expected = [1.0, 2.0, 4.0, 8.0];
    for (g, want) in gaps.iter().zip(expected) {
        assert!(
            *g >= want * 0.95 && *g <= want * 1.1 + 0.6,
            "gaps {gaps:?} do not follow the backoff {expected:?}"
        );
    }
    shutdown.trigger();
    join_within(agent, Duration::from_secs(5)).unwrap();
}

#[test]
fn half_open_connection_is_detected_within_two_heartbeats() {
    require_docker();
    let server = TestServer::start();
    let (shutdown, agent) = spawn_agent(agent_config(&server.url(), &unique("agent-ho")));
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    conn.expect(S10, "heartbeat", |e| {
        matches!(e.message, Message::Heartbeat(_))
    });
    // The server stops reading (no pongs, no FIN): the agent must give up and redial.
    let silent = Instant::now();
    let next = server.next_conn(Duration::from_secs(10));
    let took = next.accepted - silent;
    // Dead within 2 x 1 s, then the first backoff delay (1 s + jitter).
    assert!(
        took < Duration::from_secs(4),
        "half-open link noticed after {took:?}"
    );
    drop(conn);
    shutdown.trigger();
    join_within(agent, Duration::from_secs(5)).unwrap();
}

#[test]
fn rejected_token_waits_the_maximum_delay() {
    require_docker();
    let server = TestServer::start();
    let mut cfg = agent_config(&server.url(), &unique("agent-rej"));
    cfg.reconnection.max_delay = 3.0;
    let (shutdown, agent) = spawn_agent(cfg);
    let mut conn = server.next_conn(S10);
    conn.reject_auth("unknown token");
    let rejected = Instant::now();
    let mut conn2 = server.next_conn(S10);
    let waited = conn2.accepted - rejected;
    assert!(
        waited >= Duration::from_millis(2900),
        "retried after {waited:?}, before the maximum delay"
    );
    assert!(waited < Duration::from_secs(5), "retried after {waited:?}");
    conn2.accept_auth(5);
    drop(conn);
    shutdown.trigger();
    join_within(agent, Duration::from_secs(5)).unwrap();
}

#[test]
fn sigterm_sends_disconnect_and_exits_zero() {
    require_docker();
    let server = TestServer::start();
    let id = unique("agent-sig");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_docker-ctl-agent"))
        .args(["--server", &server.url(), "--agent-id", &id])
        .env("DOCKER_CTL_TOKEN", "tok-very-secret-123")
        .env("DOCKER_CTL_STATE_FILE", common::state_path(&id))
        .env("DOCKER_CTL_CONFIG", "/nonexistent-so-defaults-apply.yaml")
        .env_remove("DOCKER_CTL_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run docker-ctl-agent");
    let mut conn = server.next_conn(S10);
    let auth = conn.accept_auth(1);
    assert_eq!(auth.agent_id, id);
    conn.expect(S10, "heartbeat", |e| {
        matches!(e.message, Message::Heartbeat(_))
    });
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let sent = Instant::now();
    conn.expect(S10, "disconnect", |e| {
        matches!(e.message, Message::Disconnect(_))
    });
    let code = loop {
        match conn.next_frame(S10) {
            Some(Frame::Close(code)) => break code,
            Some(Frame::Msg(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(1000));
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "the agent did not exit within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(
        !logs.contains("tok-very-secret-123"),
        "the token leaked into the logs:\n{logs}"
    );
}

#[test]
fn events_are_buffered_while_the_link_is_down_and_drops_are_counted() {
    require_docker();
    let server = TestServer::start();
    let addr = server.addr;
    let mut cfg = agent_config(&server.url(), &unique("agent-evbuf"));
    cfg.agent.event_buffer = 2;
    let (shutdown, agent) = spawn_agent(cfg);
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    conn.expect(S10, "heartbeat", |e| {
        matches!(e.message, Message::Heartbeat(_))
    });
    drop(conn);
    drop(server);
    // While the link is down: several events for one container.
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let name = unique("agent-evbuf-ctr");
    let id = op(
        &c,
        "container.create",
        json!({"name": name, "image": "docker-ctl-test/busybox:latest", "cmd": ["true"]}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&id);
    op(&c, "container.start", json!({"id": id})).unwrap();
    op(
        &c,
        "container.rename",
        json!({"id": id, "name": unique("agent-evbuf-renamed")}),
    )
    .unwrap();
    let server = TestServer::restart_on(addr);
    let mut conn = server.next_conn(Duration::from_secs(20));
    conn.accept_auth(1);
    // The buffered events go out first, then the first heartbeat (same loop turn), which
    // reports the drops. Other tests' events may share the buffer, so count them all.
    let mut before_first_heartbeat = 0;
    let hb = loop {
        let env = conn.expect(S10, "heartbeat", |e| {
            matches!(e.message, Message::Heartbeat(_) | Message::Event(_))
        });
        match env.message {
            Message::Event(_) => before_first_heartbeat += 1,
            Message::Heartbeat(hb) => break hb,
            _ => {}
        }
    };
    assert!(hb.events_dropped.unwrap_or(0) >= 1, "{hb:?}");
    assert!(
        (1..=2).contains(&before_first_heartbeat),
        "the buffer keeps at most 2 events: {before_first_heartbeat}"
    );
    shutdown.trigger();
    join_within(agent, Duration::from_secs(5)).unwrap();
}

/// A command's answer leaves the agent as soon as the worker queued it: the session thread
/// is woken, it does not wait for a read timeout. Prints the round trip next to the same
/// call made directly.
#[test]
fn command_answers_are_sent_without_delay() {
    require_docker();
    let server = TestServer::start();
    let (shutdown, agent) = spawn_agent(agent_config(&server.url(), &unique("agent-latency")));
    let mut conn = server.next_conn(S10);
    conn.ws.get_ref().set_nodelay(true).unwrap();
    conn.accept_auth(30);
    let c = client();
    let mut direct = Vec::new();
    let mut via_agent = Vec::new();
    for i in 0..60 {
        let t = Instant::now();
        op(&c, "system.ping", json!({})).unwrap();
        direct.push(t.elapsed());
        let t = Instant::now();
        let r = conn.command(&format!("lat-{i}"), "system.ping", json!({}), S10);
        via_agent.push(t.elapsed());
        assert!(matches!(r, CommandResponsePayload::Success { .. }), "{r:?}");
    }
    // The first calls warm up connections and threads.
    let p50 = |v: &mut Vec<Duration>| {
        v.drain(..10);
        v.sort();
        v[v.len() / 2]
    };
    let (direct, via_agent) = (p50(&mut direct), p50(&mut via_agent));
    println!("system.ping p50: direct {direct:?}, through the agent {via_agent:?}");
    assert!(
        via_agent < Duration::from_millis(10),
        "a command round trip through the agent took {via_agent:?} (direct: {direct:?})"
    );
    shutdown.trigger();
    join_within(agent, Duration::from_secs(5)).unwrap();
}
