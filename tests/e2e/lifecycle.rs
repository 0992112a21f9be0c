//! The real agent and the real server managing the real dockerd, on SQLite and PostgreSQL:
//! enrolment, the full container lifecycle compared with the daemon's own answers, agent and
//! server crashes, token revocation and rotation, and switching a host between direct and
//! agent mode.

use docker_ctl_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// Heartbeat interval the tests run the server with (seconds); see `Server::start`.
const HEARTBEAT: u64 = 1;

on_both_stores!(enrol_and_run_the_full_lifecycle);
on_both_stores!(agent_killed_goes_offline_and_comes_back);
on_both_stores!(server_killed_and_restarted_agent_reconnects_by_itself);
on_both_stores!(revoked_token_disconnects_and_rotation_has_a_grace_period);
on_both_stores!(switching_connection_mode_gives_the_same_answers);

fn online_agent(server: &Server, name: &str) -> (String, String, String, Agent) {
    let (host_id, agent_id, token) = server.enrol(&unique(name));
    assert_eq!(
        server.host_status(&host_id),
        "offline",
        "a new host is offline until its agent connects"
    );
    let agent = Agent::start(&server.ws(), &agent_id, &token);
    server.wait_status(&host_id, "online", Duration::from_secs(20));
    (host_id, agent_id, token, agent)
}

fn names_of(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

fn enrol_and_run_the_full_lifecycle(db: Db) {
    require_docker();
    let server = Server::start(db);
    let (host_id, agent_id, _token, _agent) = online_agent(&server, "life");
    let mut cleanup = DockerCleanup::default();

    // The host shows what the agent reported.
    let (_, host) = server.api("GET", &format!("/api/v1/hosts/{host_id}"), None);
    assert_eq!(host["status"], "online");
    assert!(
        host["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "docker")),
        "{host}"
    );
    let (_, agents) = server.api("GET", "/api/v1/agents", None);
    assert!(agents.to_string().contains(&agent_id), "{agents}");

    // container.create + start
    let name = unique("e2e-web");
    cleanup.container(&name);
    let created = server.op_ok(
        &host_id,
        "container.create",
        json!({"name": name, "image": TEST_IMAGE, "labels": {"e2e-run": name},
               "cmd": ["sh", "-c", "echo hello-out; echo hello-err >&2; exec sleep 300"]}),
    );
    let id = created["id"].as_str().expect("created id").to_string();
    assert_eq!(
        docker_get(&format!("/containers/{id}/json"))["Name"],
        format!("/{name}")
    );
    let started = server.op_ok(&host_id, "container.start", json!({"id": name}));
    assert_eq!(started["changed"], true);

    // container.list matches the daemon's own GET /containers/json: ids, names, states.
    // Other tests run in parallel, so compare what carries this test's label.
    let ours = server.op_ok(
        &host_id,
        "container.list",
        json!({"all": true, "filters": {"label": format!("e2e-run={name}")}}),
    );
    let theirs = docker_get(&format!(
        "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22e2e-run%3D{name}%22%5D%7D"
    ));
    let ours_set: BTreeSet<(String, String, String)> = ours
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().into(),
                c["name"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let theirs_set: BTreeSet<(String, String, String)> = theirs
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Id"].as_str().unwrap().into(),
                c["Names"][0]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/')
                    .into(),
                c["State"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(!ours_set.is_empty());
    assert_eq!(
        ours_set, theirs_set,
        "container.list through the agent equals the daemon's list"
    );
    assert!(names_of(&ours).contains(&name));

    // Filters in the seed's short form.
    let filtered = server.op_ok(
        &host_id,
        "container.list",
        json!({"all": true, "filters": {"name": name}}),
    );
    assert_eq!(names_of(&filtered), BTreeSet::from([name.clone()]));

    // inspect matches the daemon.
    let inspected = server.op_ok(&host_id, "container.inspect", json!({"id": name}));
    assert_eq!(
        inspected["Id"],
        docker_get(&format!("/containers/{id}/json"))["Id"]
    );
    assert_eq!(inspected["status"], "running");

    // logs, separated by stream.
    let logs = wait_for("container logs", Duration::from_secs(10), || {
        let l = server.op_ok(&host_id, "container.logs", json!({"id": name}));
        (l["stdout"].as_str()?.contains("hello-out") && l["stderr"].as_str()?.contains("hello-err"))
            .then_some(l)
    });
    assert!(
        !logs["stdout"].as_str().unwrap().contains("hello-err"),
        "stderr is not mixed into stdout: {logs}"
    );

    // exec with exit code and both streams.
    let ex = server.op_ok(
        &host_id,
        "container.exec",
        json!({"id": name, "cmd": ["sh", "-c", "echo in-exec; echo oops >&2; exit 7"]}),
    );
    assert_eq!(ex["exit_code"], 7);
    assert_eq!(ex["stdout"], "in-exec\n");
    assert_eq!(ex["stderr"], "oops\n");

    // stats: one sample with memory figures.
    let stats = server.op_ok(&host_id, "container.stats", json!({"id": name}));
    assert!(stats["memory_usage_bytes"].as_u64().unwrap() > 0, "{stats}");

    // stop, then the daemon agrees it is exited.
    let stopped = server.op_ok(&host_id, "container.stop", json!({"id": name, "t": 1}));
    assert_eq!(stopped["changed"], true);
    assert_eq!(
        docker_get(&format!("/containers/{id}/json"))["State"]["Status"],
        "exited"
    );

    // errors keep the daemon's message and map to HTTP statuses.
    let (st, body) = server.op(
        &host_id,
        "container.inspect",
        json!({"id": "no-such-container-e2e"}),
    );
    assert_eq!(st, 404, "{body}");
    assert_eq!(body["status"], "error");
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("No such container: no-such-container-e2e"));
    let (st, body) = server.op(&host_id, "container.inspect", json!({"id": "../../info"}));
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_params");

    // remove, then the daemon no longer has it.
    server.op_ok(
        &host_id,
        "container.remove",
        json!({"id": name, "force": true}),
    );
    let gone = docker_get("/containers/json?all=1");
    assert!(
        !gone
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["Id"] == id.as_str()),
        "the container is gone"
    );

    // image.list matches the daemon (other tests may add images meanwhile: compare with the
    // daemon's list before and after).
    let image_ids = |v: &Value, k: &str| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i[k].as_str().unwrap().to_string())
            .collect()
    };
    let before = image_ids(&docker_get("/images/json"), "Id");
    let ours = image_ids(&server.op_ok(&host_id, "image.list", json!({})), "id");
    let after = image_ids(&docker_get("/images/json"), "Id");
    assert!(!ours.is_empty());
    assert!(
        before.intersection(&after).all(|i| ours.contains(i)),
        "image.list misses images"
    );
    assert!(
        ours.iter().all(|i| before.contains(i) || after.contains(i)),
        "image.list invents images"
    );

    // volume create/remove.
    let vol = unique("e2e-vol");
    cleanup.volume(&vol);
    let v = server.op_ok(
        &host_id,
        "volume.create",
        json!({"name": vol, "labels": {"e2e": "1"}}),
    );
    assert_eq!(v["name"], vol.as_str());
    assert_eq!(docker_get(&format!("/volumes/{vol}"))["Labels"]["e2e"], "1");
    let listed = server.op_ok(&host_id, "volume.list", json!({"filters": {"name": vol}}));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    server.op_ok(&host_id, "volume.remove", json!({"id": vol}));
    let (st, _) = server.op(&host_id, "volume.inspect", json!({"id": vol}));
    assert_eq!(st, 404);

    // network create/remove.
    let net = unique("e2e-net");
    cleanup.network(&net);
    let n = server.op_ok(&host_id, "network.create", json!({"name": net}));
    let net_id = n["id"].as_str().unwrap().to_string();
    assert_eq!(
        docker_get(&format!("/networks/{net_id}"))["Name"],
        net.as_str()
    );
    server.op_ok(&host_id, "network.remove", json!({"id": net}));
    let (st, _) = server.op(&host_id, "network.inspect", json!({"id": net_id}));
    assert_eq!(st, 404);
}

fn agent_killed_goes_offline_and_comes_back(db: Db) {
    require_docker();
    let server = Server::start(db);
    let (host_id, _agent_id, _token, mut agent) = online_agent(&server, "kill");
    agent.kill();
    let took = server.wait_status(&host_id, "offline", Duration::from_secs(3 * HEARTBEAT + 2));
    eprintln!("agent SIGKILL -> offline in {took:?}");
    let (st, body) = server.op(&host_id, "container.list", json!({}));
    assert_eq!(st, 409, "{body}");
    assert_eq!(body["error"]["code"], "agent_offline");
    agent.restart();
    server.wait_status(&host_id, "online", Duration::from_secs(20));
    let list = server.op_ok(&host_id, "container.list", json!({"all": true}));
    assert!(list.is_array());
}

fn server_killed_and_restarted_agent_reconnects_by_itself(db: Db) {
    require_docker();
    let mut server = Server::start(db);
    let (host_id, _agent_id, _token, mut agent) = online_agent(&server, "srv");
    server.kill();
    server.restart();
    // The agent's backoff is capped at 2 s in these tests (max_delay), plus jitter.
    let took = server.wait_status(&host_id, "online", Duration::from_secs(15));
    eprintln!("server restart -> agent online again in {took:?}");
    assert!(
        agent.is_running(),
        "the agent kept running through the outage"
    );
    server.op_ok(&host_id, "system.ping", json!({}));
}

fn revoked_token_disconnects_and_rotation_has_a_grace_period(db: Db) {
    require_docker();
    let server = Server::start(db);

    // Rotation: the new token works; the old one works during the grace period only.
    let (host_id, agent_id, old_token, mut agent) = online_agent(&server, "rot");
    let (st, rotated) = server.api(
        "POST",
        &format!("/api/v1/agents/{agent_id}/rotate-token"),
        Some(json!({"grace_period": 3})),
    );
    assert_eq!(st, 200, "{rotated}");
    let new_token = rotated["token"].as_str().expect("new token").to_string();
    assert_ne!(new_token, old_token);
    agent.kill();
    server.wait_status(&host_id, "offline", Duration::from_secs(5));
    let mut old_agent = Agent::start(&server.ws(), &agent_id, &old_token);
    server.wait_status(&host_id, "online", Duration::from_secs(10));
    old_agent.kill();
    server.wait_status(&host_id, "offline", Duration::from_secs(5));
    // After the grace period the old token is refused.
    std::thread::sleep(Duration::from_secs(4));
    let _refused = Agent::start(&server.ws(), &agent_id, &old_token);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        server.host_status(&host_id),
        "offline",
        "the old token is refused after the grace period"
    );
    drop(_refused);
    let _new_agent = Agent::start(&server.ws(), &agent_id, &new_token);
    server.wait_status(&host_id, "online", Duration::from_secs(10));

    // Revocation closes the live session at once, and the agent cannot come back.
    let (st, body) = server.api("DELETE", &format!("/api/v1/agents/{agent_id}"), None);
    assert!(st == 200 || st == 204, "revoke: {st} {body}");
    wait_for("revoked agent disconnected", Duration::from_secs(5), || {
        let (st, h) = server.api("GET", &format!("/api/v1/hosts/{host_id}"), None);
        (st == 404 || h["status"] != "online").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let (st, h) = server.api("GET", &format!("/api/v1/hosts/{host_id}"), None);
    assert!(
        st == 404 || h["status"] == "offline",
        "revoked agent stays out: {h}"
    );
    let (st, body) = server.op(&host_id, "container.list", json!({}));
    assert!(st == 409 || st == 404, "{st} {body}");
}

fn switching_connection_mode_gives_the_same_answers(db: Db) {
    require_docker();
    let server = Server::start(db);
    let (host_id, _agent_id, _token, _agent) = online_agent(&server, "mode");
    let mut cleanup = DockerCleanup::default();
    let name = unique("e2e-mode");
    cleanup.container(&name);
    docker_cli(&[
        "create",
        "--name",
        &name,
        "--label",
        &format!("e2e-mode={name}"),
        TEST_IMAGE,
        "sleep",
        "60",
    ]);

    let ask = |h: &str| -> (Value, Value) {
        let list = server.op_ok(
            h,
            "container.list",
            json!({"all": true, "filters": {"label": format!("e2e-mode={name}")}}),
        );
        let insp = server.op_ok(h, "container.inspect", json!({"id": name}));
        (list, insp)
    };
    let (via_agent_list, via_agent_inspect) = ask(&host_id);
    assert_eq!(names_of(&via_agent_list), BTreeSet::from([name.clone()]));

    // Switch to direct mode over the unix socket, then over loopback TCP, then back.
    let tcp =
        std::env::var("DOCKER_CTL_TEST_DOCKER_TCP").unwrap_or_else(|_| "127.0.0.1:23750".into());
    for url in [format!("unix://{DOCKER_SOCKET}"), format!("tcp://{tcp}")] {
        let (st, body) = server.api(
            "PATCH",
            &format!("/api/v1/hosts/{host_id}"),
            Some(json!({"connection_mode": "direct", "docker_url": url})),
        );
        assert_eq!(st, 200, "switch to direct {url}: {body}");
        let (direct_list, direct_inspect) = ask(&host_id);
        assert_eq!(
            direct_list, via_agent_list,
            "container.list is the same through {url}"
        );
        assert_eq!(direct_inspect["Id"], via_agent_inspect["Id"]);
        assert_eq!(direct_inspect["Config"], via_agent_inspect["Config"]);
    }
    let (st, body) = server.api(
        "PATCH",
        &format!("/api/v1/hosts/{host_id}"),
        Some(json!({"connection_mode": "agent"})),
    );
    assert_eq!(st, 200, "rollback to agent: {body}");
    let (back_list, _) = ask(&host_id);
    assert_eq!(back_list, via_agent_list);
}
