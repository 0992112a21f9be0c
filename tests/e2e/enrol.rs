//! Enrolment tokens end to end: the real server's `enrol-token` command line, real agents that
//! enrol themselves with one labelled token, are picked by that label and run commands on the
//! real dockerd, restarts that reuse the stored credentials, a host that waits for approval,
//! refusals that stop the agent, and `install.sh --enrol-token-file`. On SQLite and
//! PostgreSQL.

use docker_ctl_tests::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

on_both_stores!(five_agents_enrol_with_one_token_and_restarts_reuse_their_credentials);
on_both_stores!(a_pending_host_gets_nothing_until_approved);

const ONLINE: Duration = Duration::from_secs(30);

/// `enrol-token create ARGS`: the token it printed (only that, on the first line) and the rest.
fn create_token(server: &Server, args: &[&str]) -> (String, String) {
    let mut all = vec!["enrol-token", "create"];
    all.extend_from_slice(args);
    let (ok, out, err) = server.cli(&all);
    assert!(ok, "enrol-token create failed: {err}");
    let (token, rest) = out.split_once('\n').unwrap_or((out.as_str(), ""));
    assert!(
        token.starts_with("dctl_e_") && !token.contains(char::is_whitespace),
        "enrol-token create printed {out:?}"
    );
    (token.to_string(), rest.to_string())
}

/// The hosts whose names start with `prefix`, by name.
fn hosts_named(server: &Server, prefix: &str) -> Vec<Value> {
    let (st, v) = server.api("GET", "/api/v1/hosts", None);
    assert_eq!(st, 200, "{v}");
    let mut hosts: Vec<Value> = v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter(|h| h["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .cloned()
        .collect();
    hosts.sort_by_key(|h| h["name"].as_str().unwrap_or("").to_string());
    hosts
}

fn host_named(server: &Server, name: &str) -> Value {
    wait_for(&format!("host {name}"), ONLINE, || {
        hosts_named(server, name)
            .into_iter()
            .find(|h| h["name"] == name)
    })
}

fn token_row(server: &Server, id: &str) -> Value {
    let (st, v) = server.api("GET", &format!("/api/v1/enrolment-tokens/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

fn audit_count(server: &Server, action: &str, outcome: &str) -> usize {
    let (st, v) = server.api(
        "GET",
        &format!("/api/v1/audit?action={action}&limit=1000"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["outcome"] == outcome)
        .count()
}

fn state_file_of(agent: &Agent) -> std::path::PathBuf {
    agent.config_dir.path().join("state.json")
}

/// The credentials the agent stored: (agent id, file text). Checks mode 0600.
fn stored_credentials(path: &Path) -> (String, String) {
    use std::os::unix::fs::PermissionsExt;
    let text = wait_for("the state file", ONLINE, || {
        std::fs::read_to_string(path).ok()
    });
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the state file holds credentials: 0600");
    let v: Value = serde_json::from_str(&text).expect("state file JSON");
    let id = v["credentials"]["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_string();
    (id, text)
}

fn five_agents_enrol_with_one_token_and_restarts_reuse_their_credentials(db: Db) {
    require_docker();
    let server = Server::start(db);
    let prefix = unique("enr");
    let label = format!("site={prefix}");
    let (token, rest) = create_token(
        &server,
        &["--name", "fleet", "--label", &label, "--max-uses", "10"],
    );
    assert!(
        rest.is_empty(),
        "without --print-install only the token: {rest:?}"
    );
    let (_, list, _) = server.cli(&["enrol-token", "list"]);
    let row: Value = serde_json::from_str(list.lines().next().expect("one token")).unwrap();
    assert!(!list.contains(&token), "list never shows the token");
    let token_id = row["id"].as_str().unwrap().to_string();

    // Five agents on this one machine, five names: five hosts with the token's labels.
    let mut agents: Vec<Agent> = (0..5)
        .map(|i| Agent::start_enrolling(&server.ws(), &token, &format!("{prefix}-{i}")))
        .collect();
    let mut host_ids = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let h = host_named(&server, &format!("{prefix}-{i}"));
        let id = h["id"].as_str().unwrap().to_string();
        server.wait_status(&id, "online", ONLINE);
        assert_eq!(h["labels"], json!({"site": prefix}), "{h}");
        let (agent_id, text) = stored_credentials(&state_file_of(agent));
        assert_eq!(h["agent_id"], agent_id.as_str(), "{h}");
        assert!(!text.contains(&token), "the enrolment token is not stored");
        host_ids.push(id);
    }
    assert_eq!(hosts_named(&server, &prefix).len(), 5);
    assert_eq!(token_row(&server, &token_id)["uses"], 5);
    // The token's labels are the hosts' admin labels: a selector picks exactly these five.
    let (st, picked) = server.api(
        "GET",
        &format!("/api/v1/hosts?selector=site%3D{prefix}&status=online"),
        None,
    );
    assert_eq!(st, 200, "{picked}");
    let mut picked_ids: Vec<String> = picked["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect();
    picked_ids.sort();
    let mut expected = host_ids.clone();
    expected.sort();
    assert_eq!(picked_ids, expected, "{picked}");
    for agent in &agents {
        assert!(!agent.output.contains(&token), "the token is never logged");
    }

    // Commands reach the real dockerd through each of them.
    let mut cleanup = DockerCleanup::default();
    for (i, id) in host_ids.iter().enumerate() {
        let name = format!("{prefix}-c{i}");
        cleanup.container(&name);
        server.op_ok(id, "container.create",
            json!({"name": name, "image": TEST_IMAGE, "labels": {"e2e-enrol": prefix}, "cmd": ["true"]}));
    }
    let filter = format!("{{\"label\":[\"e2e-enrol={prefix}\"]}}");
    let on_dockerd = docker_get(&format!(
        "/containers/json?all=1&filters={}",
        urlencode(&filter)
    ));
    assert_eq!(on_dockerd.as_array().map(Vec::len), Some(5), "{on_dockerd}");

    // A restart reuses the stored credentials: no enrolment, same agent.
    let (before, _) = stored_credentials(&state_file_of(&agents[0]));
    agents[0].restart();
    server.wait_status(&host_ids[0], "online", ONLINE);
    wait_for("the restarted agent's log", ONLINE, || {
        agents[0]
            .output
            .contains("the enrolment token is not used again")
            .then_some(())
    });
    assert_eq!(stored_credentials(&state_file_of(&agents[0])).0, before);
    assert_eq!(
        token_row(&server, &token_id)["uses"],
        5,
        "a restart is no enrolment"
    );
    assert_eq!(audit_count(&server, "host.enrol", "success"), 5);

    // The same machine and name without its state file: its host back, not a sixth one.
    agents[1].kill();
    std::fs::remove_file(state_file_of(&agents[1])).unwrap();
    agents[1].restart();
    let (again, _) = stored_credentials(&state_file_of(&agents[1]));
    server.wait_status(&host_ids[1], "online", ONLINE);
    assert_eq!(
        host_named(&server, &format!("{prefix}-1"))["agent_id"],
        again.as_str()
    );
    assert_eq!(hosts_named(&server, &prefix).len(), 5);
    assert_eq!(token_row(&server, &token_id)["uses"], 6);

    // Revoking stops new enrolments only: enrolled agents restart fine, a new one is refused
    // (exit 78), and nothing is written for it.
    let (ok, _, err) = server.cli(&["enrol-token", "revoke", &token_id]);
    assert!(ok, "{err}");
    agents[2].restart();
    server.wait_status(&host_ids[2], "online", ONLINE);
    let mut late = Agent::start_enrolling(&server.ws(), &token, &format!("{prefix}-late"));
    assert_eq!(late.wait_exit(ONLINE), Some(78), "{}", late.output.text());
    assert!(late.output.contains("revoked"), "{}", late.output.text());
    assert!(!state_file_of(&late).exists() || stored_credentials_absent(&state_file_of(&late)));
    assert_eq!(hosts_named(&server, &prefix).len(), 5);
    assert_eq!(token_row(&server, &token_id)["uses"], 6);
    assert_eq!(audit_count(&server, "enrolment_token.revoke", "success"), 1);
    assert_eq!(audit_count(&server, "enrolment_token.create", "success"), 1);

    // A state file that cannot be written: the agent refuses to start, no fallback to memory.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let bad = blocker.join("state.json").display().to_string();
    let mut unwritable =
        Agent::start_enrolling_in(dir, &server.ws(), &token, &format!("{prefix}-nofile"), &bad);
    assert_ne!(unwritable.wait_exit(ONLINE), Some(0));
    assert!(
        unwritable.output.contains("agent.state_file"),
        "{}",
        unwritable.output.text()
    );
}

fn stored_credentials_absent(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    !text.contains("\"credentials\"")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn a_pending_host_gets_nothing_until_approved(db: Db) {
    require_docker();
    let server = Server::start(db);
    let prefix = unique("gate");
    let (token, install) = create_token(
        &server,
        &[
            "--name",
            "gated",
            "--require-approval",
            "--expires-in",
            "1d",
            "--print-install",
            "--public-url",
            &server.ws(),
        ],
    );
    for cpu in ["x86_64", "aarch64", "armv7"] {
        assert!(install.contains(&format!("# {cpu}")), "{install}");
    }
    assert!(
        install.contains("--enrol-token-file enrol.token"),
        "{install}"
    );
    assert!(
        install.contains(&format!("--server '{}'", server.ws())),
        "{install}"
    );

    let agent = Agent::start_enrolling(&server.ws(), &token, &format!("{prefix}-1"));
    let h = host_named(&server, &format!("{prefix}-1"));
    let id = h["id"].as_str().unwrap().to_string();
    stored_credentials(&state_file_of(&agent));
    wait_for("the agent's session", ONLINE, || {
        let (_, h) = server.api("GET", &format!("/api/v1/hosts/{id}"), None);
        (h["agent"]["connected"] == true).then_some(())
    });
    assert_eq!(server.host_status(&id), "pending");
    let (_, pending) = server.api("GET", "/api/v1/hosts?status=pending", None);
    assert_eq!(
        pending["hosts"].as_array().map(Vec::len),
        Some(1),
        "{pending}"
    );
    assert_eq!(pending["hosts"][0]["id"], id.as_str());
    let (st, body) = server.op(&id, "container.list", json!({}));
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("host_pending")),
        "{body}"
    );

    let (st, body) = server.api("POST", &format!("/api/v1/hosts/{id}/approve"), None);
    assert_eq!(st, 200, "{body}");
    server.wait_status(&id, "online", ONLINE);
    let list = server.op_ok(&id, "container.list", json!({"all": true}));
    assert!(list.is_array(), "{list}");
    assert_eq!(audit_count(&server, "host.approve", "success"), 1);
}

#[test]
fn install_sh_with_an_enrolment_token_file_enrols_the_installed_agent() {
    require_docker();
    let server = Server::start(Db::Sqlite);
    let prefix = unique("inst");
    let (token, _) = create_token(&server, &["--name", "install", "--label", "via=install"]);
    // A tarball's layout, from the tree and this build's agent.
    let tarball = tempfile::tempdir().unwrap();
    let dist = repo_root().join("scripts/dist");
    for f in [
        "install.sh",
        "docker-ctl-agent.service",
        "docker-ctl-agent.init",
    ] {
        std::fs::copy(dist.join(f), tarball.path().join(f)).unwrap();
    }
    std::fs::copy(
        repo_root().join("agent-lite/agent.yaml.example"),
        tarball.path().join("agent.yaml.example"),
    )
    .unwrap();
    std::fs::copy(
        bin("docker-ctl-agent"),
        tarball.path().join("docker-ctl-agent"),
    )
    .unwrap();
    let token_file = tarball.path().join("enrol.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let name = format!("{prefix}-box");
    let out = std::process::Command::new("sh")
        .arg(tarball.path().join("install.sh"))
        .arg("--root")
        .arg(root.path())
        .args([
            "--init",
            "systemd",
            "--server",
            &server.ws(),
            "--name",
            &name,
            "--enrol-token-file",
        ])
        .arg(&token_file)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "install.sh failed: {log}");
    assert!(
        !log.contains(&token),
        "install.sh never prints the token: {log}"
    );
    let conf = root.path().join("etc/docker-ctl/agent.yaml");
    let envf = root.path().join("etc/docker-ctl/agent.env");
    let yaml = std::fs::read_to_string(&conf).unwrap();
    assert!(
        yaml.contains("  enrol_token: ${AGENT_ENROL_TOKEN}"),
        "{yaml}"
    );
    assert!(yaml.contains(&format!("  name: '{name}'")), "{yaml}");
    assert!(
        yaml.contains("  state_file: /var/lib/docker-ctl/agent-state.json"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("\n  id: ") && !yaml.contains("\n  auth_token: "),
        "{yaml}"
    );
    let env_text = std::fs::read_to_string(&envf).unwrap();
    assert_eq!(env_text, format!("AGENT_ENROL_TOKEN={token}\n"));
    use std::os::unix::fs::PermissionsExt;
    for f in [&conf, &envf] {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
    }
    // --enrol-token-file excludes --agent-id.
    let refused = std::process::Command::new("sh")
        .arg(tarball.path().join("install.sh"))
        .arg("--root")
        .arg(root.path())
        .args(["--init", "none", "--agent-id", "x", "--enrol-token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(!refused.status.success());

    // The installed agent, run as its unit would (the env file, the installed config), enrols
    // itself. Its state file goes under the test's root.
    let state = root.path().join("var/lib/docker-ctl/agent-state.json");
    let agent = std::process::Command::new(root.path().join("usr/local/bin/docker-ctl-agent"))
        .arg("--config")
        .arg(&conf)
        .env_clear()
        .env("AGENT_ENROL_TOKEN", &token)
        .env("DOCKER_CTL_STATE_FILE", &state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _agent = KillOnDrop(agent);
    let h = host_named(&server, &name);
    let id = h["id"].as_str().unwrap().to_string();
    assert_eq!(h["labels"], json!({"via": "install"}), "{h}");
    server.wait_status(&id, "online", ONLINE);
    stored_credentials(&state);
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
