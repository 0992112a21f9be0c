//! Stacks end to end: the real server and agent deploy compose files to the real dockerd
//! through the REST API, and the tests check the result on dockerd itself: containers,
//! compose's labels, networks, volumes, start order, recreation of changed services only,
//! removed services, drift and redeploy, a rollout to a selector whose offline host converges
//! when it comes back,
//! the agent's policy, 400s listing unsupported keys, and removal with and without volumes.
//! Only the local image is used (nothing is pulled).

use docker_ctl_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// A three-service stack: `db` (named volume, healthcheck), `api` (waits for `db` to be
/// healthy, env from the stack's env), `web` (after `api`), on two networks.
fn compose(with_web: bool) -> String {
    let web = r#"
  web:
    image: docker-ctl-test/busybox:latest
    command: ["sleep", "3600"]
    depends_on: [api]
    networks: [front]
    stop_grace_period: 1s
"#;
    format!(
        r#"
services:
  db:
    image: docker-ctl-test/busybox:latest
    command: ["sh", "-c", "sleep 1; touch /data/ready; exec sleep 3600"]
    environment:
      DB_PASSWORD: ${{DB_PASSWORD:?set DB_PASSWORD}}
    volumes: ["data:/data"]
    networks: [back]
    healthcheck:
      test: ["CMD", "test", "-f", "/data/ready"]
      interval: 1s
      timeout: 2s
      retries: 30
    stop_grace_period: 1s
  api:
    image: docker-ctl-test/busybox:latest
    command: sleep 3600
    environment:
      MODE: ${{MODE:-dev}}
    labels: {{app.role: api}}
    depends_on:
      db: {{condition: service_healthy}}
    networks:
      back: {{aliases: [backend]}}
      front:
    stop_grace_period: 1s
{web}
networks:
  back: {{}}
  front: {{}}
volumes:
  data: {{}}
"#,
        web = if with_web { web } else { "" }
    )
}

/// Removes what a stack left on dockerd, also when the test fails.
struct StackCleanup(String);

impl Drop for StackCleanup {
    fn drop(&mut self) {
        let p = &self.0;
        for s in ["db", "api", "web", "priv"] {
            let _ = docker_cli(&["rm", "-f", &format!("{p}-{s}-1")]);
        }
        for n in ["back", "front", "default"] {
            let _ = docker_cli(&["network", "rm", &format!("{p}_{n}")]);
        }
        let _ = docker_cli(&["volume", "rm", "-f", &format!("{p}_data")]);
    }
}

fn online_agent(server: &Server, name: &str, extra_yaml: &str) -> (String, Agent) {
    let (host_id, agent_id, token) = server.enrol(&unique(name));
    let agent = Agent::start_with_config(&server.ws(), &agent_id, &token, extra_yaml);
    server.wait_status(&host_id, "online", Duration::from_secs(30));
    (host_id, agent)
}

/// A compose project name for this run: lowercase, unique.
fn project(prefix: &str) -> String {
    unique(prefix).to_lowercase()
}

fn stack(server: &Server, name: &str) -> Value {
    let (st, s) = server.api("GET", &format!("/api/v1/stacks/{name}"), None);
    assert_eq!(st, 200, "{s}");
    s
}

/// Waits until every host of the stack ran `version` to the end; returns the stack.
fn wait_deployed(server: &Server, name: &str, version: i64) -> Value {
    poll(
        &format!("stack {name} version {version} deployed"),
        DEPLOY_TIMEOUT,
        || {
            let s = stack(server, name);
            let hosts = s["hosts"].as_array()?;
            for h in hosts {
                assert_ne!(h["state"], "failed", "the deploy failed: {s}");
            }
            let done = !hosts.is_empty()
                && hosts
                    .iter()
                    .all(|h| h["state"] == "deployed" && h["applied_version"] == version);
            done.then_some(s)
        },
    )
}

/// Polls `cond` every 250 ms (each poll reads the hosts) until it holds or `timeout` passes.
fn poll<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn container(name: &str) -> Value {
    docker_get(&format!("/containers/{name}/json"))
}

fn exists(kind: &str, name: &str) -> bool {
    docker_cli(&[kind, "inspect", name]).0
}

fn id(name: &str) -> String {
    container(name)["Id"].as_str().expect("id").to_string()
}

fn env_has(name: &str, kv: &str) -> bool {
    container(name)["Config"]["Env"]
        .as_array()
        .is_some_and(|e| e.iter().any(|x| x == kv))
}

fn deploy(server: &Server, body: Value) -> Value {
    let (st, a) = server.api("POST", "/api/v1/stacks", Some(body));
    assert_eq!(st, 202, "{a}");
    assert!(
        a["rollout_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{a}"
    );
    a
}

/// The containers, labels, networks, volume and start order of the first deploy.
fn check_first_deploy(p: &str) {
    for svc in ["db", "api", "web"] {
        let c = container(&format!("{p}-{svc}-1"));
        let labels = &c["Config"]["Labels"];
        assert_eq!(labels["com.docker.compose.project"], p, "{svc}");
        assert_eq!(labels["com.docker.compose.service"], svc);
        assert_eq!(labels["com.docker.compose.container-number"], "1");
        assert_eq!(labels["com.docker.compose.oneoff"], "False");
        assert!(labels["com.docker.compose.config-hash"]
            .as_str()
            .is_some_and(|h| h.len() == 64));
        assert_eq!(c["State"]["Running"], true, "{svc} runs");
    }
    assert_eq!(
        container(&format!("{p}-api-1"))["Config"]["Labels"]["app.role"],
        "api"
    );
    assert!(
        env_has(&format!("{p}-api-1"), "MODE=prod"),
        "env interpolated"
    );
    assert!(env_has(&format!("{p}-db-1"), "DB_PASSWORD=s3cret"));
    assert_eq!(
        container(&format!("{p}-db-1"))["State"]["Health"]["Status"],
        "healthy"
    );
    for n in ["back", "front"] {
        let net = docker_get(&format!("/networks/{p}_{n}"));
        assert_eq!(net["Labels"]["com.docker.compose.project"], p);
        assert_eq!(net["Labels"]["com.docker.compose.network"], n);
    }
    let api_nets = &container(&format!("{p}-api-1"))["NetworkSettings"]["Networks"];
    assert!(
        api_nets.get(format!("{p}_back")).is_some() && api_nets.get(format!("{p}_front")).is_some(),
        "{api_nets}"
    );
    let vol = docker_get(&format!("/volumes/{p}_data"));
    assert_eq!(vol["Labels"]["com.docker.compose.volume"], "data");
    // db became healthy before api started, and api started before web.
    let started = |s: &str| {
        container(&format!("{p}-{s}-1"))["State"]["StartedAt"]
            .as_str()
            .expect("StartedAt")
            .to_string()
    };
    let (db, api, web) = (started("db"), started("api"), started("web"));
    assert!(
        db < api && api < web,
        "start order db {db} < api {api} < web {web}"
    );
    let health_log = &container(&format!("{p}-db-1"))["State"]["Health"]["Log"];
    let first_healthy = health_log
        .as_array()
        .and_then(|l| l.iter().find(|e| e["ExitCode"] == 0))
        .and_then(|e| e["End"].as_str())
        .expect("a passing health check")
        .to_string();
    assert!(
        first_healthy < api,
        "api started ({api}) after db was healthy ({first_healthy})"
    );
}

#[test]
fn a_stack_is_deployed_changed_repaired_and_removed() {
    require_docker();
    let server = Server::start(Db::Sqlite);
    let (host_id, _agent) = online_agent(&server, "stk", "");
    let p = project("stk");
    let _cleanup = StackCleanup(p.clone());
    let env = json!({"MODE": "prod", "DB_PASSWORD": "s3cret"});

    let a = deploy(
        &server,
        json!({"name": p, "compose": compose(true), "env": env, "host_ids": [host_id]}),
    );
    assert_eq!(a["name"], p.as_str());
    assert_eq!(a["version"], 1);
    let rollout_id = a["rollout_id"].as_str().unwrap().to_string();
    let s = wait_deployed(&server, &p, 1);
    assert_eq!(s["hosts"][0]["in_sync"], true, "{s}");
    assert_eq!(s["hosts"][0]["drift"], false, "{s}");
    let services: Vec<&str> = s["hosts"][0]["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|x| x["service"].as_str())
        .collect();
    assert_eq!(services, ["db", "api", "web"], "{s}");
    assert!(
        !s.to_string().contains("s3cret"),
        "no env value in the status"
    );
    check_first_deploy(&p);
    let v = poll("the rollout ends", DEPLOY_TIMEOUT, || {
        let v = rollout(&server, &rollout_id);
        (v["state"] != "running").then_some(v)
    });
    assert_eq!(v["state"], "succeeded", "{v}");

    // One service's environment changes: only its container is recreated.
    let before: Vec<String> = ["db", "api", "web"]
        .iter()
        .map(|s| id(&format!("{p}-{s}-1")))
        .collect();
    let env2 = json!({"MODE": "staging", "DB_PASSWORD": "s3cret"});
    let (st, a) = server.api(
        "PUT",
        &format!("/api/v1/stacks/{p}"),
        Some(json!({"compose": compose(true), "env": env2, "host_ids": [host_id]})),
    );
    assert_eq!((st, a["version"].clone()), (202, json!(2)), "{a}");
    wait_deployed(&server, &p, 2);
    let after: Vec<String> = ["db", "api", "web"]
        .iter()
        .map(|s| id(&format!("{p}-{s}-1")))
        .collect();
    assert_eq!(before[0], after[0], "db kept");
    assert_ne!(before[1], after[1], "api recreated");
    assert_eq!(before[2], after[2], "web kept");
    assert!(env_has(&format!("{p}-api-1"), "MODE=staging"));

    // A service removed from the file: its container goes.
    let (st, a) = server.api(
        "PUT",
        &format!("/api/v1/stacks/{p}"),
        Some(json!({"compose": compose(false), "env": env2})),
    );
    assert_eq!(st, 202, "{a}");
    wait_deployed(&server, &p, 3);
    assert!(!exists("container", &format!("{p}-web-1")), "web removed");
    assert!(exists("container", &format!("{p}-api-1")));

    // A container removed by hand shows as drift; a redeploy repairs it.
    assert!(docker_cli(&["rm", "-f", &format!("{p}-api-1")]).0);
    let s = stack(&server, &p);
    assert_eq!(s["hosts"][0]["drift"], true, "{s}");
    assert_eq!(s["hosts"][0]["in_sync"], false, "{s}");
    let api = s["hosts"][0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["service"] == "api")
        .cloned()
        .expect("api in the status");
    assert_eq!(api["state"], "missing", "{s}");
    let (st, a) = server.api("POST", &format!("/api/v1/stacks/{p}/redeploy"), None);
    assert_eq!((st, a["version"].clone()), (202, json!(3)), "{a}");
    let s = poll("the redeploy repairs the drift", DEPLOY_TIMEOUT, || {
        let s = stack(&server, &p);
        (s["hosts"][0]["in_sync"] == true).then_some(s)
    });
    assert_eq!(s["hosts"][0]["drift"], false);
    assert!(exists("container", &format!("{p}-api-1")));

    // Removing without volumes keeps the volume.
    let (st, a) = server.api("DELETE", &format!("/api/v1/stacks/{p}"), None);
    assert_eq!(st, 202, "{a}");
    poll("the stack is removed", DEPLOY_TIMEOUT, || {
        let (st, _) = server.api("GET", &format!("/api/v1/stacks/{p}"), None);
        (st == 404).then_some(())
    });
    for s in ["db", "api"] {
        assert!(!exists("container", &format!("{p}-{s}-1")), "{s} removed");
    }
    for n in ["back", "front"] {
        assert!(
            !exists("network", &format!("{p}_{n}")),
            "network {n} removed"
        );
    }
    assert!(exists("volume", &format!("{p}_data")), "the volume stays");

    // Every change is audited, and each step's command names the stack.
    for action in [
        "stack.create",
        "stack.update",
        "stack.redeploy",
        "stack.delete",
        "operation.container.create",
    ] {
        let (st, audit) = server.api(
            "GET",
            &format!("/api/v1/audit?action={action}&limit=100"),
            None,
        );
        assert_eq!(st, 200, "{audit}");
        let text = audit.to_string();
        assert!(text.contains(&p), "{action} audited: {text}");
        assert!(!text.contains("s3cret"), "no env value in the audit log");
        if action.starts_with("operation.") {
            assert!(
                text.contains(&format!("stack:{p}")),
                "the commands name the stack: {text}"
            );
        }
    }
}

#[test]
fn removing_a_stack_with_volumes_removes_its_volumes() {
    require_docker();
    let server = Server::start(Db::postgres());
    let (host_id, _agent) = online_agent(&server, "stkv", "");
    let p = project("stkv");
    let _cleanup = StackCleanup(p.clone());
    let env = json!({"DB_PASSWORD": "x"});
    deploy(
        &server,
        json!({"name": p, "compose": compose(false), "env": env, "host_ids": [host_id]}),
    );
    wait_deployed(&server, &p, 1);
    assert!(exists("volume", &format!("{p}_data")));
    let (st, a) = server.api("DELETE", &format!("/api/v1/stacks/{p}?volumes=true"), None);
    assert_eq!(st, 202, "{a}");
    poll("the stack is removed", DEPLOY_TIMEOUT, || {
        let (st, _) = server.api("GET", &format!("/api/v1/stacks/{p}"), None);
        (st == 404).then_some(())
    });
    assert!(
        !exists("volume", &format!("{p}_data")),
        "the volume is removed"
    );
    assert!(!exists("container", &format!("{p}-db-1")));
}

#[test]
fn unsupported_keys_are_refused_with_a_400_that_lists_them() {
    let server = Server::start(Db::Sqlite);
    let (host_id, _, _) = server.enrol(&unique("stk400"));
    let yaml = r#"
services:
  web:
    image: docker-ctl-test/busybox:latest
    build: .
    secrets: [token]
    ports: ["80:80"]
configs:
  c: {file: ./c}
"#;
    let (st, e) = server.api(
        "POST",
        "/api/v1/stacks",
        Some(json!({"name": "bad-stack", "compose": yaml, "host_ids": [host_id]})),
    );
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["code"], "invalid_params");
    let unsupported: Vec<&str> = e["error"]["details"]["unsupported"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for path in ["services.web.build", "services.web.secrets", "configs"] {
        assert!(unsupported.contains(&path), "{path} listed: {e}");
    }
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("services.web.build"), "{msg}");
    // Nothing was stored.
    let (st, _) = server.api("GET", "/api/v1/stacks/bad-stack", None);
    assert_eq!(st, 404);
    // A bad name is refused too.
    let (st, e) = server.api(
        "POST",
        "/api/v1/stacks",
        Some(json!({"name": "Bad Name", "compose": compose(false), "host_ids": [host_id]})),
    );
    assert_eq!(st, 400, "{e}");
}

fn rollout(server: &Server, id: &str) -> Value {
    let (st, v) = server.api("GET", &format!("/api/v1/bulk-operations/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

#[test]
fn a_selector_deploy_with_an_offline_host_converges_when_it_comes_back() {
    require_docker();
    let server = Server::start(Db::Sqlite);
    let run = project("sel");
    // Two hosts with the label (both on this machine's dockerd): one online, one offline.
    let mut hosts = Vec::new();
    for online in [true, false] {
        let (id, agent_id, token) = server.enrol(&unique("stksel"));
        let (st, v) = server.api(
            "PATCH",
            &format!("/api/v1/hosts/{id}"),
            Some(json!({"labels": {"e2e-stack": run}})),
        );
        assert_eq!(st, 200, "{v}");
        let agent = online.then(|| Agent::start(&server.ws(), &agent_id, &token));
        if online {
            server.wait_status(&id, "online", Duration::from_secs(30));
        }
        hosts.push((id, agent_id, token, agent));
    }
    let p = project("stksel");
    let _cleanup = StackCleanup(p.clone());
    let a = deploy(
        &server,
        json!({"name": p, "compose": compose(false), "env": {"DB_PASSWORD": "x"},
               "selector": format!("e2e-stack={run}"), "max_parallel": 2}),
    );
    let rollout_id = a["rollout_id"].as_str().expect("a rollout").to_string();
    // The online host is done; the offline one waits in the queue, and the rollout runs on.
    let v = poll("one host done, one queued", DEPLOY_TIMEOUT, || {
        let v = rollout(&server, &rollout_id);
        (v["counts"]["succeeded"] == 1 && v["counts"]["queued"] == 1).then_some(v)
    });
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["kind"], "stack_rollout", "{v}");
    let s = stack(&server, &p);
    let state_of = |s: &Value, id: &str| {
        s["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host_id"] == id)
            .map(|h| h["state"].clone())
            .expect("the host in the status")
    };
    assert_eq!(state_of(&s, &hosts[0].0), "deployed", "{s}");
    assert_ne!(state_of(&s, &hosts[1].0), "deployed", "{s}");
    assert!(exists("container", &format!("{p}-api-1")));
    // Meanwhile a container goes: the host that comes back repairs it as it converges.
    assert!(docker_cli(&["rm", "-f", &format!("{p}-api-1")]).0);
    let (_, agent_id, token, _) = &hosts[1];
    let _agent = Agent::start(&server.ws(), agent_id, token);
    let v = poll("the rollout ends", DEPLOY_TIMEOUT, || {
        let v = rollout(&server, &rollout_id);
        (v["state"] != "running").then_some(v)
    });
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["counts"]["succeeded"], 2, "{v}");
    let s = wait_deployed(&server, &p, 1);
    assert_eq!(s["hosts"].as_array().map(Vec::len), Some(2), "{s}");
    assert!(
        exists("container", &format!("{p}-api-1")),
        "recreated by the returning host"
    );
}

#[test]
fn the_agents_policy_refusal_is_that_hosts_failure() {
    require_docker();
    let server = Server::start(Db::Sqlite);
    let (host_id, _agent) = online_agent(&server, "stkpol", "policy:\n  deny_privileged: true\n");
    let p = project("stkpol");
    let _cleanup = StackCleanup(p.clone());
    let yaml = "services:\n  priv:\n    image: docker-ctl-test/busybox:latest\n    command: sleep 60\n    privileged: true\n";
    let a = deploy(
        &server,
        json!({"name": p, "compose": yaml, "host_ids": [host_id]}),
    );
    let s = poll("the deploy fails", DEPLOY_TIMEOUT, || {
        let s = stack(&server, &p);
        (s["hosts"][0]["state"] == "failed").then_some(s)
    });
    let v = poll("the rollout ends", DEPLOY_TIMEOUT, || {
        let v = rollout(&server, a["rollout_id"].as_str().unwrap());
        (v["state"] != "running").then_some(v)
    });
    assert_eq!(v["state"], "failed", "{v}");
    let err = &s["hosts"][0]["error"];
    assert_eq!(err["code"], "forbidden", "{s}");
    let msg = err["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        msg.contains("privileged") && msg.contains("policy"),
        "{msg}"
    );
    assert!(
        !exists("container", &format!("{p}-priv-1")),
        "nothing was created"
    );
}

#[test]
fn registry_credentials_are_stored_and_never_shown() {
    let server = Server::start(Db::Sqlite);
    let (st, r) = server.api(
        "POST",
        "/api/v1/registries",
        Some(json!({"server": "registry.example:5000", "username": "ci", "password": "hunter2-secret"})),
    );
    assert_eq!(st, 201, "{r}");
    let (st, list) = server.api("GET", "/api/v1/registries", None);
    assert_eq!(st, 200);
    assert_eq!(list[0]["server"], "registry.example:5000");
    assert_eq!(list[0]["username"], "ci");
    assert!(!list.to_string().contains("hunter2"), "{list}");
    let (st, _) = server.api(
        "POST",
        "/api/v1/registries",
        Some(json!({"server": "registry.example:5000", "username": "x", "password": "y"})),
    );
    assert_eq!(st, 409);
    let (st, _) = server.api(
        "DELETE",
        &format!("/api/v1/registries/{}", json_id(&r)),
        None,
    );
    assert_eq!(st, 204);
    let (_, list) = server.api("GET", "/api/v1/registries", None);
    assert_eq!(list, json!([]));
    assert!(
        !server.output.contains("hunter2"),
        "the password is never logged"
    );
}
