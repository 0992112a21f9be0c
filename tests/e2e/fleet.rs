//! Fleets end to end: real agents on the real dockerd (sharing it, their containers told
//! apart by a label and the host's name), selected by admin and agent labels, running a bulk
//! `container.create` + `container.start` with one agent offline and `queue_offline`, through
//! a server killed and restarted mid-rollout; then `max_failures` stopping a rollout.

use docker_ctl_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

on_both_stores!(bulk_create_and_start_with_an_offline_agent_through_a_restart);
on_both_stores!(max_failures_stops_a_rollout);

/// A host labelled `e2e-fleet=<run>` by the admin; its agent (not started) reports
/// `e2e-role: web` from its own config.
struct FleetHost {
    id: String,
    name: String,
    agent: Agent,
}

fn fleet_host(server: &Server, run: &str, start: bool) -> FleetHost {
    let name = unique("fl");
    let (id, agent_id, token) = server.enrol(&name);
    let (st, v) = server.api(
        "PATCH",
        &format!("/api/v1/hosts/{id}"),
        Some(json!({ "labels": { "e2e-fleet": run } })),
    );
    assert_eq!(st, 200, "{v}");
    let mut agent = Agent::start(&server.ws(), &agent_id, &token);
    agent.kill();
    let cfg = agent.config_dir.path().join("agent.yaml");
    let text = std::fs::read_to_string(&cfg).expect("read agent.yaml");
    let text = text.replacen("agent:\n", "agent:\n  labels:\n    e2e-role: web\n", 1);
    std::fs::write(&cfg, text).expect("write agent.yaml");
    if start {
        agent.restart();
        server.wait_status(&id, "online", WAIT);
    }
    FleetHost { id, name, agent }
}

fn host_names(server: &Server, query: &str) -> Vec<String> {
    let (st, v) = server.api("GET", &format!("/api/v1/hosts?{query}"), None);
    assert_eq!(st, 200, "{v}");
    let mut names: Vec<String> = v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

fn bulk_doc(server: &Server, id: &str) -> Value {
    let (st, v) = server.api("GET", &format!("/api/v1/bulk-operations/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

fn wait_bulk(server: &Server, id: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, WAIT, || {
        let v = bulk_doc(server, id);
        cond(&v).then_some(v)
    })
}

fn start_bulk(server: &Server, body: Value) -> String {
    let (st, v) = server.api("POST", "/api/v1/bulk-operations", Some(body));
    assert_eq!(st, 202, "{v}");
    v["id"].as_str().expect("id").to_string()
}

fn bulk_create_and_start_with_an_offline_agent_through_a_restart(db: Db) {
    require_docker();
    let mut server = Server::start(db);
    let run = unique("run");
    let mut cleanup = DockerCleanup::default();
    let mut hosts = vec![
        fleet_host(&server, &run, true),
        fleet_host(&server, &run, true),
        fleet_host(&server, &run, false),
    ];
    for h in &hosts {
        cleanup.container(&format!("e2e-fleet-{}", h.name));
    }
    let mut all: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    all.sort();
    let mut online: Vec<String> = hosts[..2].iter().map(|h| h.name.clone()).collect();
    online.sort();

    // Select by label: the admin's, the agents' (reported from agent.yaml), and status.
    let sel = format!("selector=e2e-fleet%3D{run}");
    assert_eq!(host_names(&server, &sel), all);
    assert_eq!(host_names(&server, &format!("{sel}&status=online")), online);
    assert_eq!(
        host_names(&server, &format!("{sel},e2e-role%3Dweb")),
        online
    );

    let id = start_bulk(
        &server,
        json!({
            "selector": format!("e2e-fleet={run}"),
            "steps": [
                { "operation": "container.create", "params": {
                    "name": "e2e-fleet-{{host.name}}", "image": TEST_IMAGE,
                    "labels": { "e2e-fleet": run }, "cmd": ["sleep", "300"] } },
                { "operation": "container.start", "params": { "id": "e2e-fleet-{{host.name}}" } }
            ],
            "queue_offline": true
        }),
    );
    wait_bulk(&server, &id, "two hosts done, one queued", |v| {
        v["counts"]["succeeded"] == 2 && v["counts"]["queued"] == 1
    });

    // The server dies mid-rollout and comes back: the rollout continues where it was.
    server.restart();
    let v = bulk_doc(&server, &id);
    assert_eq!(v["state"], "running", "{v}");
    hosts[2].agent.restart();
    let v = wait_bulk(&server, &id, "the rollout ends", |v| {
        v["state"] != "running"
    });
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["counts"]["succeeded"], 3, "{v}");

    // On dockerd: exactly one container per host, running.
    let filters = json!({ "label": [format!("e2e-fleet={run}")] }).to_string();
    let list = docker_get(&format!(
        "/containers/json?all=1&filters={}",
        percent(&filters)
    ));
    let mut per_name: BTreeMap<String, u32> = BTreeMap::new();
    for c in list.as_array().expect("a list") {
        assert_eq!(c["State"], "running", "{c}");
        let n = c["Names"][0]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/');
        *per_name.entry(n.to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, u32> = all.iter().map(|n| (format!("e2e-fleet-{n}"), 1)).collect();
    assert_eq!(per_name, want);
}

fn max_failures_stops_a_rollout(db: Db) {
    require_docker();
    let server = Server::start(db);
    let run = unique("run");
    let hosts: Vec<FleetHost> = (0..3).map(|_| fleet_host(&server, &run, true)).collect();
    // The container does not exist: the first host fails, and with max_failures 0 the
    // others are cancelled before they start.
    let id = start_bulk(
        &server,
        json!({ "host_ids": hosts.iter().map(|h| &h.id).collect::<Vec<_>>(),
            "operation": "container.start", "params": { "id": format!("e2e-missing-{run}") },
            "max_parallel": 1, "max_failures": 0 }),
    );
    let v = wait_bulk(&server, &id, "the rollout ends", |v| {
        v["state"] != "running"
    });
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["counts"]["failed"], 1, "{v}");
    assert_eq!(v["counts"]["cancelled"], 2, "{v}");
    let rows = v["targets"].as_array().expect("targets");
    assert_eq!(rows[0]["error"]["code"], "not_found", "{v}");
    for r in &rows[1..] {
        assert_eq!(r["command_ids"], json!([]), "{r}");
    }
}

/// Percent-encodes a query value.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
