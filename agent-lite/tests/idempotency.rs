//! Idempotency keys: a command delivered again (same connection, after a reconnection, after
//! an agent restart, or while the first delivery still runs) runs once and every delivery
//! gets the same answer. Also: an answer produced while the link is down is delivered
//! exactly once on the next connection, and a corrupt state file is replaced. Needs dockerd.

mod common;

use common::docker::{client, op, require_docker, unique, Cleanup};
use common::ws_server::{Frame, ServerConn, TestServer};
use common::{agent_config, join_within, spawn_agent, state_path, wait_for};
use protocol::{CommandPayload, CommandResponsePayload, Envelope, Message};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const S10: Duration = Duration::from_secs(10);
const S20: Duration = Duration::from_secs(20);
const IMAGE: &str = "docker-ctl-test/busybox:latest";

fn send_keyed(conn: &mut ServerConn, id: &str, operation: &str, params: Value, key: &str) {
    conn.send(&Envelope::new(
        id,
        Message::Command(CommandPayload {
            operation: operation.into(),
            params,
            timeout: None,
            idempotency_key: Some(key.into()),
        }),
    ));
}

/// Reads until every id in `ids` has an answer, then for `quiet_heartbeats` more heartbeats
/// (so a duplicate answer would show); returns every answer per id.
fn collect(
    conn: &mut ServerConn,
    ids: &[&str],
    quiet_heartbeats: usize,
    limit: Duration,
) -> HashMap<String, Vec<CommandResponsePayload>> {
    let mut got: HashMap<String, Vec<CommandResponsePayload>> = HashMap::new();
    let deadline = Instant::now() + limit;
    let mut heartbeats_after = 0;
    loop {
        let all = ids.iter().all(|i| got.contains_key(*i));
        if all && heartbeats_after >= quiet_heartbeats {
            return got;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "answers for {ids:?} within {limit:?}: got {got:?}"
        );
        match conn.next_frame(left.min(Duration::from_millis(500))) {
            Some(Frame::Msg(Envelope {
                id,
                message: Message::CommandResponse(r),
                ..
            })) => got.entry(id).or_default().push(r),
            Some(Frame::Msg(Envelope {
                message: Message::Heartbeat(_),
                ..
            })) if all => heartbeats_after += 1,
            Some(Frame::Msg(_)) | None => {}
            Some(f) => panic!("connection ended: {f:?}"),
        }
    }
}

fn one(got: &HashMap<String, Vec<CommandResponsePayload>>, id: &str) -> CommandResponsePayload {
    let v = got.get(id).unwrap_or_else(|| panic!("no answer for {id}"));
    assert_eq!(v.len(), 1, "exactly one answer for {id}: {v:?}");
    v[0].clone()
}

/// Containers with the label `docker-ctl-test-key=<value>`; removes them on drop.
struct Labelled<'a> {
    c: &'a agent_lite::daemon::DockerClient,
    value: String,
}

impl Labelled<'_> {
    fn label(&self) -> Value {
        json!({ "docker-ctl-test-key": self.value })
    }
    fn ids(&self) -> Vec<String> {
        let list = op(
            self.c,
            "container.list",
            json!({"all": true, "filters": {"label": [format!("docker-ctl-test-key={}", self.value)]}}),
        )
        .unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Labelled<'_> {
    fn drop(&mut self) {
        if let Ok(list) = op(
            self.c,
            "container.list",
            json!({"all": true, "filters": {"label": [format!("docker-ctl-test-key={}", self.value)]}}),
        ) {
            for c in list.as_array().cloned().unwrap_or_default() {
                let _ = op(
                    self.c,
                    "container.remove",
                    json!({"id": c["id"], "force": true}),
                );
            }
        }
    }
}

fn create_params(l: &Labelled) -> Value {
    json!({"image": IMAGE, "cmd": ["sleep", "300"], "labels": l.label()})
}

fn created_id(r: &CommandResponsePayload) -> String {
    match r {
        CommandResponsePayload::Success { data } => data["id"].as_str().unwrap().to_string(),
        other => panic!("container.create failed: {other:?}"),
    }
}

#[test]
fn a_key_sent_twice_and_again_after_a_reconnection_creates_one_container() {
    require_docker();
    let c = client();
    let l = Labelled {
        c: &c,
        value: unique("idem-twice"),
    };
    let server = TestServer::start();
    let addr = server.addr;
    let agent_id = unique("agent-idem");
    let (shutdown, agent) = spawn_agent(agent_config(&server.url(), &agent_id));
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    let key = unique("key-create");
    send_keyed(
        &mut conn,
        "create-1",
        "container.create",
        create_params(&l),
        &key,
    );
    let first = one(&collect(&mut conn, &["create-1"], 0, S20), "create-1");
    created_id(&first);
    // The same key under a new envelope id: answered from memory, same payload.
    send_keyed(
        &mut conn,
        "create-2",
        "container.create",
        create_params(&l),
        &key,
    );
    let second = one(&collect(&mut conn, &["create-2"], 1, S20), "create-2");
    assert_eq!(first, second);
    assert_eq!(l.ids().len(), 1, "one container, not two");

    // Across a reconnection (the server restarts on the same address).
    drop(conn);
    drop(server);
    let server = TestServer::restart_on(addr);
    let mut conn = server.next_conn(S20);
    conn.accept_auth(1);
    send_keyed(
        &mut conn,
        "create-3",
        "container.create",
        create_params(&l),
        &key,
    );
    let third = one(&collect(&mut conn, &["create-3"], 1, S20), "create-3");
    assert_eq!(first, third);
    assert_eq!(l.ids().len(), 1, "one container after the reconnection");

    // The state file holds the key with the same answer.
    let text = std::fs::read_to_string(state_path(&agent_id)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let entry = v["idempotency"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == json!(key))
        .unwrap_or_else(|| panic!("key not in the state file: {text}"));
    assert_eq!(entry["response"], serde_json::to_value(&first).unwrap());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state_path(&agent_id))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    shutdown.trigger();
    join_within(agent, S10).unwrap();
}

#[test]
fn a_key_in_flight_during_a_disconnection_runs_once_and_both_deliveries_get_the_answer() {
    require_docker();
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let ctr = op(
        &c,
        "container.create",
        json!({"name": unique("idem-flight"), "image": IMAGE, "cmd": ["sleep", "300"]}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&ctr);
    op(&c, "container.start", json!({"id": ctr})).unwrap();

    let server = TestServer::start();
    let addr = server.addr;
    let (shutdown, agent) = spawn_agent(agent_config(&server.url(), &unique("agent-flight")));
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    let key = unique("key-exec");
    // Appends a line (the side effect that must happen once), then runs for a while.
    let exec = json!({"id": ctr, "cmd": ["sh", "-c", "echo run >> /tmp/runs; sleep 4; wc -l < /tmp/runs"]});
    send_keyed(&mut conn, "exec-1", "container.exec", exec.clone(), &key);
    // The command started: the line is there.
    wait_for(S10, || {
        op(
            &c,
            "container.exec",
            json!({"id": ctr, "cmd": ["cat", "/tmp/runs"]}),
        )
        .ok()
        // stdout only: stderr's "can't open '/tmp/runs'" contains "run" too.
        .filter(|v| v["stdout"].as_str().is_some_and(|s| s.contains("run")))
    });
    // The link drops while it runs.
    drop(conn);
    drop(server);
    let server = TestServer::restart_on(addr);
    let mut conn = server.next_conn(S20);
    conn.accept_auth(1);
    // The server sends it again: with the same id, and with a new id and the same key.
    send_keyed(&mut conn, "exec-1", "container.exec", exec.clone(), &key);
    send_keyed(&mut conn, "exec-2", "container.exec", exec, &key);
    let got = collect(&mut conn, &["exec-1", "exec-2"], 2, S20);
    let (a, b) = (one(&got, "exec-1"), one(&got, "exec-2"));
    assert_eq!(a, b, "the same answer for both deliveries");
    let CommandResponsePayload::Success { data } = &a else {
        panic!("{a:?}")
    };
    assert_eq!(data["stdout"].as_str().map(str::trim), Some("1"), "{data}");
    let runs = op(
        &c,
        "container.exec",
        json!({"id": ctr, "cmd": ["sh", "-c", "wc -l < /tmp/runs"]}),
    )
    .unwrap();
    assert_eq!(
        runs["stdout"].as_str().map(str::trim),
        Some("1"),
        "the command ran once: {runs}"
    );
    shutdown.trigger();
    join_within(agent, S10).unwrap();
}

#[test]
fn an_answer_produced_while_the_link_is_down_is_delivered_once_on_the_next_connection() {
    require_docker();
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let ctr = op(
        &c,
        "container.create",
        json!({"name": unique("idem-late"), "image": IMAGE, "cmd": ["sleep", "300"]}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&ctr);
    op(&c, "container.start", json!({"id": ctr})).unwrap();

    let server = TestServer::start();
    let addr = server.addr;
    let (shutdown, agent) = spawn_agent(agent_config(&server.url(), &unique("agent-late")));
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    let marker = unique("done");
    send_keyed(
        &mut conn,
        "late-1",
        "container.exec",
        json!({"id": ctr, "cmd": ["sh", "-c", format!("echo started > /tmp/late-start; sleep 2; echo {marker} > /tmp/late; echo finished")]}),
        &unique("key-late"),
    );
    // It started (a link closed with unread data resets, and the agent's kernel may then
    // discard a command it had not read yet: the server re-sends those).
    wait_for(S10, || {
        op(
            &c,
            "container.exec",
            json!({"id": ctr, "cmd": ["cat", "/tmp/late-start"]}),
        )
        .ok()
        .filter(|v| v.to_string().contains("started"))
    });
    drop(conn);
    drop(server);
    // The command finishes while no server listens.
    wait_for(S10, || {
        op(
            &c,
            "container.exec",
            json!({"id": ctr, "cmd": ["cat", "/tmp/late"]}),
        )
        .ok()
        .filter(|v| v.to_string().contains(&marker))
    });
    let server = TestServer::restart_on(addr);
    let mut conn = server.next_conn(S20);
    conn.accept_auth(1);
    let got = collect(&mut conn, &["late-1"], 2, S20);
    let r = one(&got, "late-1");
    let CommandResponsePayload::Success { data } = &r else {
        panic!("{r:?}")
    };
    assert!(data.to_string().contains("finished"), "{data}");
    shutdown.trigger();
    join_within(agent, S10).unwrap();
}

#[test]
fn keys_survive_an_agent_restart_of_the_real_binary() {
    require_docker();
    let c = client();
    let l = Labelled {
        c: &c,
        value: unique("idem-restart"),
    };
    let server = TestServer::start();
    let agent_id = unique("agent-restart");
    let state = state_path(&agent_id);
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_docker-ctl-agent"))
            .args(["--server", &server.url(), "--agent-id", &agent_id])
            .env("DOCKER_CTL_TOKEN", "tok-very-secret-123")
            .env("DOCKER_CTL_STATE_FILE", &state)
            .env_remove("DOCKER_CTL_CONFIG")
            .env_remove("DOCKER_CTL_SIGNING_KEY")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run docker-ctl-agent")
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let key = unique("key-restart");
    let first = {
        let _child = Kill(start());
        let mut conn = server.next_conn(S10);
        conn.accept_auth(1);
        send_keyed(
            &mut conn,
            "r-1",
            "container.create",
            create_params(&l),
            &key,
        );
        one(&collect(&mut conn, &["r-1"], 0, S20), "r-1")
        // SIGKILL: no graceful shutdown; the key was written before the answer was sent.
    };
    created_id(&first);
    let _child = Kill(start());
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    send_keyed(
        &mut conn,
        "r-2",
        "container.create",
        create_params(&l),
        &key,
    );
    let second = one(&collect(&mut conn, &["r-2"], 1, S20), "r-2");
    assert_eq!(
        first, second,
        "the restarted agent answers from its state file"
    );
    assert_eq!(l.ids().len(), 1, "one container, not two");
}

#[test]
fn a_corrupt_state_file_is_reported_and_replaced() {
    require_docker();
    let c = client();
    let l = Labelled {
        c: &c,
        value: unique("idem-corrupt"),
    };
    let server = TestServer::start();
    let agent_id = unique("agent-corrupt");
    let state = state_path(&agent_id);
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, b"{\"version\":1,\"idempotency\":[{\"key\":").unwrap();
    let (shutdown, agent) = spawn_agent(agent_config(&server.url(), &agent_id));
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    let key = unique("key-corrupt");
    send_keyed(
        &mut conn,
        "k-1",
        "container.create",
        create_params(&l),
        &key,
    );
    let r = one(&collect(&mut conn, &["k-1"], 0, S20), "k-1");
    created_id(&r);
    let mut aside = state.clone().into_os_string();
    aside.push(".corrupt");
    assert!(
        std::path::Path::new(&aside).exists(),
        "the corrupt file is kept aside"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(
        v["idempotency"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key"] == json!(key)),
        "{v}"
    );
    shutdown.trigger();
    join_within(agent, S10).unwrap();
}

#[test]
fn a_command_running_when_the_agent_is_killed_is_not_run_again_after_the_restart() {
    require_docker();
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let ctr = op(
        &c,
        "container.create",
        json!({"name": unique("idem-kill"), "image": IMAGE, "cmd": ["sleep", "300"]}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&ctr);
    op(&c, "container.start", json!({"id": ctr})).unwrap();
    let server = TestServer::start();
    let agent_id = unique("agent-kill");
    let state = state_path(&agent_id);
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_docker-ctl-agent"))
            .args(["--server", &server.url(), "--agent-id", &agent_id])
            .env("DOCKER_CTL_TOKEN", "tok-very-secret-123")
            .env("DOCKER_CTL_STATE_FILE", &state)
            .env_remove("DOCKER_CTL_CONFIG")
            .env_remove("DOCKER_CTL_SIGNING_KEY")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run docker-ctl-agent")
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let key = unique("key-kill");
    let exec = json!({"id": ctr, "cmd": ["sh", "-c", "echo run >> /tmp/runs; sleep 30"]});
    {
        let _child = Kill(start());
        let mut conn = server.next_conn(S10);
        conn.accept_auth(1);
        send_keyed(&mut conn, "k-1", "container.exec", exec.clone(), &key);
        wait_for(S10, || {
            op(
                &c,
                "container.exec",
                json!({"id": ctr, "cmd": ["cat", "/tmp/runs"]}),
            )
            .ok()
            // stdout only: stderr's "can't open '/tmp/runs'" contains "run" too.
            .filter(|v| v["stdout"].as_str().is_some_and(|s| s.contains("run")))
        });
        // SIGKILL while the command runs.
    }
    let _child = Kill(start());
    let mut conn = server.next_conn(S10);
    conn.accept_auth(1);
    send_keyed(&mut conn, "k-1", "container.exec", exec, &key);
    match one(&collect(&mut conn, &["k-1"], 1, S20), "k-1") {
        CommandResponsePayload::Error { error } => {
            assert_eq!(error.code, protocol::ErrorCode::OutcomeUnknown, "{error:?}")
        }
        other => panic!("expected outcome_unknown, got {other:?}"),
    }
    let runs = op(
        &c,
        "container.exec",
        json!({"id": ctr, "cmd": ["sh", "-c", "wc -l < /tmp/runs"]}),
    )
    .unwrap();
    assert_eq!(
        runs["stdout"].as_str().map(str::trim),
        Some("1"),
        "not run again: {runs}"
    );
}
