//! Agents update themselves: real agent builds of two versions (and one that exits at
//! start), signed with `docker-ctl-server release sign`, stored with `release add`, and
//! installed by the running agent process, on x86_64-musl and, under qemu, aarch64-musl,
//! through one agent's endpoint and through rollouts (`POST /api/v1/agent-updates`).
//! scripts/build-update-agents.sh builds them first.

use docker_ctl_tests::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The builds of scripts/build-update-agents.sh for `target`.
struct Builds {
    target: String,
    dir: PathBuf,
}

impl Builds {
    fn of(target: &str) -> Builds {
        let dir = repo_root().join(format!("target/update-agents/{target}"));
        for b in ["old", "new", "broken"] {
            assert!(
                dir.join(b).is_file(),
                "{} is missing: build it with scripts/build-update-agents.sh {target}",
                dir.join(b).display()
            );
        }
        Builds {
            target: target.to_string(),
            dir,
        }
    }

    fn path(&self, build: &str) -> PathBuf {
        self.dir.join(build)
    }

    fn version(&self, build: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{build}.version")))
            .expect("version file")
            .trim()
            .to_string()
    }
}

/// A key pair from `release keygen`.
fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    server_cli(&["release", "keygen", "--out", &dir.display().to_string()]);
    (dir.join("release.key"), dir.join("release.pub"))
}

/// One agent of a [`Site`], installed from the `old` build in its own directory.
struct Node {
    agent_id: String,
    host_id: String,
    binary: PathBuf,
    agent: Agent,
}

/// What a self-update test works with: keys, a server trusting `agent_key`'s public half
/// for `release add`, and agents installed from the `old` build.
struct Site {
    builds: Builds,
    work: tempfile::TempDir,
    agent_key: (PathBuf, PathBuf),
    server: Server,
    config: PathBuf,
    nodes: Vec<Node>,
}

/// VmRSS of a process (the emulator's, under qemu), in KiB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn sha(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Final states of one agent's update.
fn is_final(state: &Value) -> bool {
    matches!(state.as_str(), Some("succeeded" | "failed" | "rolled_back"))
}

impl Site {
    /// One agent per entry of `trusts_other`: an agent whose entry is true trusts another
    /// key than the one releases are signed with (a server given the wrong key, or one an
    /// attacker controls, would hand it such releases).
    fn start(db: Db, target: &str, runner: Option<&str>, trusts_other: &[bool]) -> Site {
        require_docker();
        let builds = Builds::of(target);
        let work = tempfile::tempdir().expect("tempdir");
        let agent_key = keygen(&work.path().join("keys"));
        let other_key = keygen(&work.path().join("other"));
        let config = work.path().join("server.yaml");
        std::fs::write(
            &config,
            format!("release_public_key: {}\n", agent_key.1.display()),
        )
        .expect("server.yaml");
        let config_env = config.display().to_string();
        let server = Server::start_with(db, &[("DOCKER_CTL_CONFIG", &config_env)]);
        let mut site = Site {
            builds,
            work,
            agent_key,
            server,
            config,
            nodes: Vec::new(),
        };
        for (i, other) in trusts_other.iter().enumerate() {
            let key = if *other {
                &other_key.1
            } else {
                &site.agent_key.1
            };
            let node = site.install(i, runner, &key.clone());
            site.nodes.push(node);
        }
        let emulated = if runner.is_some() { 90 } else { 30 };
        let old = site.builds.version("old");
        for i in 0..site.nodes.len() {
            let host = site.nodes[i].host_id.clone();
            site.server
                .wait_status(&host, "online", Duration::from_secs(emulated));
            site.wait_agent(i, Duration::from_secs(30), |a| {
                (a["version"] == old.as_str()).then_some(())
            });
        }
        site
    }

    /// Enrols a host and starts agent `i` from a copy of the `old` build, trusting `public_key`.
    fn install(&self, i: usize, runner: Option<&str>, public_key: &Path) -> Node {
        let (host_id, agent_id, token) = self.server.enrol(&unique(&format!("upd{i}")));
        let install = self.work.path().join(format!("bin{i}"));
        std::fs::create_dir(&install).expect("bin dir");
        let binary = install.join("docker-ctl-agent");
        std::fs::copy(self.builds.path("old"), &binary).expect("install the old agent");
        let mut program = vec![binary.display().to_string()];
        let mut env = Vec::new();
        if let Some(r) = runner {
            program.insert(0, r.to_string());
            env.push(("DOCKER_CTL_LAUNCHER", r));
        }
        let yaml = format!(
            "update:\n  public_key: {}\n  probation_secs: 20\n  probation_starts: 2\n",
            public_key.display()
        );
        let agent = Agent::start_custom(program, &self.server.ws(), &agent_id, &token, &yaml, &env);
        Node {
            agent_id,
            host_id,
            binary,
            agent,
        }
    }

    fn host_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.host_id.clone()).collect()
    }

    /// Signs build `build` with `key` (version and target in the trusted comment) and adds it.
    fn add_release(&self, build: &str, key: &Path) -> String {
        let version = self.builds.version(build);
        let file = self.work.path().join(format!("release-{build}"));
        std::fs::copy(self.builds.path(build), &file).expect("copy the release");
        let comment = format!(
            "file:docker-ctl-agent version:{version} target:{}",
            self.builds.target
        );
        server_cli(&[
            "release",
            "sign",
            "--key",
            &key.display().to_string(),
            "--file",
            &file.display().to_string(),
            "--trusted-comment",
            &comment,
        ]);
        let out = server_cli(&[
            "release",
            "add",
            "--config",
            &self.config.display().to_string(),
            "--data-dir",
            &self.server.data_dir.path().display().to_string(),
            "--file",
            &file.display().to_string(),
            "--target",
            &self.builds.target,
            "--version",
            &version,
        ]);
        assert!(out.contains("added release"), "{out}");
        version
    }

    fn agent_json(&self, i: usize) -> Value {
        let path = format!("/api/v1/agents/{}", self.nodes[i].agent_id);
        let (st, a) = self.server.api("GET", &path, None);
        assert_eq!(st, 200, "{a}");
        a
    }

    fn wait_agent<T>(
        &self,
        i: usize,
        limit: Duration,
        mut f: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        wait_for("the agent's state", limit, || f(&self.agent_json(i)))
    }

    /// `POST /api/v1/agents/{agent_id}/update` for agent 0.
    fn update_to(&self, version: &str) -> Value {
        let (st, row) = self.server.api(
            "POST",
            &format!("/api/v1/agents/{}/update", self.nodes[0].agent_id),
            Some(json!({ "version": version })),
        );
        assert_eq!(st, 202, "{row}");
        // The row is read back after `agent_update` went out: the agent may have reported.
        assert!(
            matches!(
                row["state"].as_str(),
                Some("pending" | "downloading" | "verifying")
            ),
            "{row}"
        );
        assert_eq!(row["version"], version, "{row}");
        row
    }

    /// `POST /api/v1/agent-updates` with `body`: the rollout's id.
    fn roll_out(&self, body: Value) -> String {
        let (st, v) = self.server.api("POST", "/api/v1/agent-updates", Some(body));
        assert_eq!(st, 202, "{v}");
        assert_eq!(v["state"], "running", "{v}");
        v["id"].as_str().expect("rollout id").to_string()
    }

    fn rollout(&self, id: &str) -> Value {
        let (st, v) = self
            .server
            .api("GET", &format!("/api/v1/agent-updates/{id}"), None);
        assert_eq!(st, 200, "{v}");
        v
    }

    /// Waits for rollout `id` to end, calling `each` with every reading; returns the last.
    fn final_rollout(&self, id: &str, limit: Duration, mut each: impl FnMut(&Value)) -> Value {
        wait_for("the rollout's end", limit, || {
            let v = self.rollout(id);
            each(&v);
            (v["state"] != "running").then_some(v)
        })
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.agent.output.text())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

on_both_stores!(a_rollout_updates_several_agents);
on_both_stores!(a_rollout_survives_a_server_restart);

/// How an update is started: one agent's endpoint, or a rollout of one host.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    AgentEndpoint,
    Rollout,
}

/// The old build updates to the new one: the agent reports the new version, its binary on
/// disk is the new build, the process is the same (same PID), and `.prev` keeps the old.
/// Prints the figures of docs/benchmarks.md ("Agent update").
fn updates_in_place(target: &str, runner: Option<&str>, via: Via) {
    let mut site = Site::start(Db::Sqlite, target, runner, &[false]);
    let pid = site.nodes[0].agent.pid();
    let binary = site.nodes[0].binary.clone();
    let old_sha = sha(&binary);
    let version = site.add_release("new", &site.agent_key.0.clone());
    let (st, list) = site.server.api("GET", "/api/v1/releases", None);
    assert_eq!(st, 200);
    assert_eq!(list["releases"][0]["version"], version.as_str(), "{list}");
    assert_eq!(list["releases"][0]["target"], target, "{list}");
    let limit = Duration::from_secs(if runner.is_some() { 240 } else { 90 });
    // The agent's resident memory while it downloads, verifies and restarts.
    let mut peak_rss_kb = 0u64;
    let t0 = Instant::now();
    let done = match via {
        Via::AgentEndpoint => {
            let id = site.update_to(&version)["id"].as_str().unwrap().to_string();
            site.wait_agent(0, limit, |a| {
                peak_rss_kb = peak_rss_kb.max(pid.map_or(0, rss_kb));
                let u = &a["update"];
                (u["id"] == id.as_str() && is_final(&u["state"])).then(|| u.clone())
            })
        }
        Via::Rollout => {
            let id = site.roll_out(json!({ "version": version, "host_ids": site.host_ids() }));
            let r = site.final_rollout(&id, limit, |_| {
                peak_rss_kb = peak_rss_kb.max(pid.map_or(0, rss_kb));
            });
            assert_eq!(r["state"], "succeeded", "{r}\n{}", site.logs());
            assert_eq!(r["kind"], "agent_update", "{r}");
            assert_eq!(
                r["targets"][0]["from_version"],
                site.builds.version("old").as_str()
            );
            r["targets"][0].clone()
        }
    };
    let took = t0.elapsed();
    assert_eq!(done["state"], "succeeded", "{done}\n{}", site.logs());
    let a = site.wait_agent(0, Duration::from_secs(30), |a| {
        (a["version"] == version.as_str() && a["status"] == "online").then(|| a.clone())
    });
    assert_eq!(a["target"], target);
    let size = std::fs::metadata(site.builds.path("new")).unwrap().len();
    assert_eq!(done["bytes"].as_u64(), Some(size), "{done}");
    eprintln!(
        "BENCH agent update {target}: {size} bytes sent, took {:.2} s; agent peak RSS {peak_rss_kb} KiB (VmRSS sampled from /proc at each poll of the API, about every 50 ms)",
        took.as_secs_f64()
    );
    assert_eq!(
        sha(&binary),
        sha(&site.builds.path("new")),
        "the binary on disk is the new build"
    );
    let prev = binary.with_file_name("docker-ctl-agent.prev");
    assert_eq!(sha(&prev), old_sha, ".prev keeps the old build");
    let node = &mut site.nodes[0];
    assert!(node.agent.is_running(), "the agent process lives on");
    assert_eq!(
        node.agent.pid(),
        pid,
        "the same process (re-executed in place)"
    );
}

#[test]
fn x86_64_agent_updates_itself() {
    updates_in_place("x86_64-unknown-linux-musl", None, Via::AgentEndpoint);
}

#[test]
fn aarch64_agent_updates_itself_under_qemu_through_a_rollout() {
    let qemu = Command::new("qemu-aarch64").arg("--version").output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "qemu-aarch64 is missing: install qemu-user (scripts/services.sh)"
    );
    updates_in_place(
        "aarch64-unknown-linux-musl",
        Some("qemu-aarch64"),
        Via::Rollout,
    );
}

/// Asserts agent `i` still runs the old build, and never started an update.
fn untouched(site: &Site, i: usize, old_sha: &str) {
    let a = site.agent_json(i);
    assert_eq!(a["version"], site.builds.version("old").as_str(), "{a}");
    assert!(a["update"].is_null(), "agent {i} was sent no update: {a}");
    assert_eq!(sha(&site.nodes[i].binary), old_sha, "agent {i}'s binary");
}

/// A rollout through the API to three agents: bad requests are refused first with a code
/// and nothing stored; then every agent reports the new version, runs the new binary, and the
/// rollout reads like a bulk operation (counts, rows paged, listed).
fn a_rollout_updates_several_agents(db: Db) {
    let site = Site::start(
        db,
        "x86_64-unknown-linux-musl",
        None,
        &[false, false, false],
    );
    let old_sha = sha(&site.nodes[0].binary);
    let version = site.add_release("new", &site.agent_key.0.clone());
    let hosts = site.host_ids();
    let post = |token: Option<&str>, body: Value| {
        let t = token.unwrap_or(&site.server.admin_token);
        site.server
            .api_as(t, "POST", "/api/v1/agent-updates", Some(body))
    };
    let (st, v) = post(None, json!({ "version": "0.0.0-none", "host_ids": hosts }));
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (st, v) = post(
        None,
        json!({ "version": version, "host_ids": ["no-such-host"] }),
    );
    assert!((400..500).contains(&st), "{st} {v}");
    assert!(
        v["error"]["code"].is_string() && v["error"]["message"].is_string(),
        "{v}"
    );
    // A host without an agent refuses the whole plan, naming the host (looked up with the
    // others in one query).
    let (st, bare) = site.server.api(
        "POST",
        "/api/v1/hosts",
        Some(json!({"name": "upd-no-agent", "connection_mode": "agent"})),
    );
    assert_eq!(st, 201, "{bare}");
    let mut with_bare = hosts.clone();
    with_bare.push(json_id(&bare));
    let (st, v) = post(None, json!({ "version": version, "host_ids": with_bare }));
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_params")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("1 host(s) cannot take release")
            && message.contains("upd-no-agent (no agent)"),
        "{v}"
    );
    let (st, v) = post(
        None,
        json!({ "version": version, "host_ids": hosts, "selector": "x" }),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_params")),
        "{v}"
    );
    let (st, v) = post(
        None,
        json!({ "version": version, "host_ids": hosts, "max_parallel": 0 }),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_params")),
        "{v}"
    );
    let operator = site.server.new_token("upd-operator", "operator");
    let (st, v) = post(
        Some(&operator),
        json!({ "version": version, "host_ids": hosts }),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (_, list) = site.server.api("GET", "/api/v1/agent-updates", None);
    assert_eq!(
        list["agent_updates"],
        json!([]),
        "refused requests store nothing"
    );
    for i in 0..3 {
        untouched(&site, i, &old_sha);
    }

    let t0 = Instant::now();
    let id = site.roll_out(json!({ "version": version, "host_ids": hosts, "max_parallel": 2 }));
    let mut seen = std::collections::BTreeSet::new();
    let r = site.final_rollout(&id, Duration::from_secs(180), |v| {
        for t in v["targets"].as_array().into_iter().flatten() {
            seen.insert(t["state"].as_str().unwrap_or_default().to_string());
        }
    });
    eprintln!(
        "BENCH agent-updates rollout of 3 x86_64-musl agents, max_parallel 2: {:.2} s to succeeded",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(r["state"], "succeeded", "{r}\n{}", site.logs());
    assert_eq!(r["counts"]["succeeded"], 3, "{r}");
    assert_eq!(r["version"], version.as_str(), "{r}");
    assert_eq!(r["max_parallel"], 2, "{r}");
    assert_eq!(r["max_failures"], 0, "{r}");
    assert!(!r["finished_at"].is_null(), "{r}");
    assert!(seen.contains("succeeded"), "{seen:?}");
    let rows = r["targets"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{r}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["host_id"], hosts[i].as_str(), "rollout order: {r}");
        assert_eq!(row["state"], "succeeded", "{row}");
        assert_eq!(row["agent_id"], site.nodes[i].agent_id.as_str(), "{row}");
        assert_eq!(row["version"], version.as_str(), "{row}");
        let a = site.wait_agent(i, Duration::from_secs(30), |a| {
            (a["version"] == version.as_str() && a["status"] == "online").then(|| a.clone())
        });
        assert_eq!(a["update"]["id"], row["update_id"], "{a}");
        assert_eq!(
            sha(&site.nodes[i].binary),
            sha(&site.builds.path("new")),
            "agent {i}'s binary on disk is the new build"
        );
    }
    // Rows are paged like a bulk operation's; the list has the rollout.
    let (_, page) = site
        .server
        .api("GET", &format!("/api/v1/agent-updates/{id}?limit=2"), None);
    assert_eq!(page["targets"].as_array().unwrap().len(), 2, "{page}");
    let next = page["next"].as_str().expect("a next cursor");
    let (_, page2) = site.server.api(
        "GET",
        &format!("/api/v1/agent-updates/{id}?limit=2&next={next}"),
        None,
    );
    assert_eq!(page2["targets"][0]["host_id"], hosts[2].as_str(), "{page2}");
    assert!(page2["next"].is_null(), "{page2}");
    let (_, list) = site.server.api("GET", "/api/v1/agent-updates", None);
    assert_eq!(list["agent_updates"][0]["id"], id.as_str(), "{list}");
    // Audited like a bulk operation: the refusal, the start and the end.
    let audit = |action: &str| {
        let (st, v) = site
            .server
            .api("GET", &format!("/api/v1/audit?action={action}"), None);
        assert_eq!(st, 200, "{v}");
        v["entries"].as_array().cloned().unwrap_or_default()
    };
    let created = audit("agent_update.create");
    assert!(
        created
            .iter()
            .any(|e| e["target"] == id.as_str() && e["outcome"] == "success"),
        "{created:?}"
    );
    assert!(
        created.iter().any(|e| e["outcome"] == "denied"),
        "the operator's attempt is audited: {created:?}"
    );
    let finished = audit("agent_update.finish");
    assert!(
        finished
            .iter()
            .any(|e| e["target"] == id.as_str() && e["outcome"] == "succeeded"),
        "{finished:?}"
    );
    // It is no bulk operation, and a finished rollout cannot be cancelled.
    let (st, _) = site
        .server
        .api("GET", &format!("/api/v1/bulk-operations/{id}"), None);
    assert_eq!(st, 404);
    let (st, v) = site
        .server
        .api("POST", &format!("/api/v1/agent-updates/{id}/cancel"), None);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
}

/// `max_failures: 0`, one host at a time: the first agent trusts another key and refuses the
/// release (check `signature`), keeping its old version and binary; the rollout stops there
/// and the later hosts stay untouched (`cancelled`, never sent an update).
#[test]
fn a_release_signed_with_another_key_is_refused_and_max_failures_0_stops_the_rollout() {
    let site = Site::start(
        Db::Sqlite,
        "x86_64-unknown-linux-musl",
        None,
        &[true, false, false],
    );
    let old_sha = sha(&site.nodes[0].binary);
    let version = site.add_release("new", &site.agent_key.0.clone());
    let id = site.roll_out(json!({ "version": version, "host_ids": site.host_ids(),
        "max_parallel": 1, "max_failures": 0 }));
    let r = site.final_rollout(&id, Duration::from_secs(90), |_| {});
    assert_eq!(r["state"], "failed", "{r}\n{}", site.logs());
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("max_failures 0"),
        "{r}"
    );
    let rows = r["targets"].as_array().unwrap();
    assert_eq!(rows[0]["state"], "failed", "{r}");
    assert_eq!(rows[0]["error"]["details"]["check"], "signature", "{r}");
    assert_eq!(
        (rows[1]["state"].as_str(), rows[2]["state"].as_str()),
        (Some("cancelled"), Some("cancelled")),
        "{r}"
    );
    assert_eq!(r["counts"]["failed"], 1, "{r}");
    assert_eq!(r["counts"]["cancelled"], 2, "{r}");
    let a = site.agent_json(0);
    assert_eq!(a["version"], site.builds.version("old").as_str(), "{a}");
    assert_eq!(a["update"]["state"], "failed", "{a}");
    assert_eq!(
        sha(&site.nodes[0].binary),
        old_sha,
        "the refused binary is not installed"
    );
    assert!(!site.nodes[0]
        .binary
        .with_file_name("docker-ctl-agent.prev")
        .exists());
    assert!(!site.nodes[0]
        .binary
        .with_file_name(".docker-ctl-agent.update")
        .exists());
    for i in 1..3 {
        untouched(&site, i, &old_sha);
    }
}

/// A signed release that exits at every start, rolled out: the agent swaps it in and
/// re-executes it; a supervisor (this test, as systemd would) starts it again; after
/// `probation_starts` the start restores the previous binary, which reports `rolled_back`
/// within the probation time, and the rollout reads `failed`.
#[test]
fn a_release_that_exits_at_start_is_rolled_back() {
    let mut site = Site::start(Db::Sqlite, "x86_64-unknown-linux-musl", None, &[false]);
    let old_sha = sha(&site.nodes[0].binary);
    let key = site.agent_key.0.clone();
    let version = site.add_release("broken", &key);
    let id = site.roll_out(json!({ "version": version, "host_ids": site.host_ids() }));
    let t0 = Instant::now();
    // Restart=always: at most a few starts, each bounded by the deadline.
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    // When the agent swapped the release in and re-executed it (its probation starts).
    let mut swapped: Option<Instant> = None;
    let r = loop {
        let r = site.rollout(&id);
        if r["state"] != "running" {
            break r;
        }
        if swapped.is_none() && r["targets"][0]["state"] == "restarting" {
            swapped = Some(Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "no final state: {r}\n{}",
            site.logs()
        );
        let agent = &mut site.nodes[0].agent;
        if !agent.is_running() {
            swapped.get_or_insert_with(Instant::now);
            restarts += 1;
            assert!(restarts <= 5, "too many restarts:\n{}", agent.output.text());
            agent.restart();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = t0.elapsed();
    let on_probation = swapped.map(|t| t.elapsed()).unwrap_or(took);
    assert_eq!(r["state"], "failed", "{r}");
    let row = &r["targets"][0];
    assert_eq!(row["state"], "rolled_back", "{r}");
    assert_eq!(row["error"]["details"]["check"], "crash_loop", "{r}");
    assert!(
        restarts >= 2,
        "the broken release was started again by the supervisor"
    );
    // probation_secs is 20: the crash loop ends within it.
    assert!(
        on_probation < Duration::from_secs(20),
        "rolled back {on_probation:?} after the swap"
    );
    eprintln!(
        "rolled back {on_probation:?} after the swap ({took:?} after the rollout started) and {restarts} restarts"
    );
    assert_eq!(
        sha(&site.nodes[0].binary),
        old_sha,
        "the old binary is back"
    );
    let old = site.builds.version("old");
    site.wait_agent(0, Duration::from_secs(30), |a| {
        (a["version"] == old.as_str() && a["status"] == "online").then_some(())
    });
}

/// The server is killed while a rollout runs (one host at a time, the first done): the
/// restarted server continues it, and it ends `succeeded` with every agent updated once.
fn a_rollout_survives_a_server_restart(db: Db) {
    let mut site = Site::start(
        db,
        "x86_64-unknown-linux-musl",
        None,
        &[false, false, false],
    );
    let version = site.add_release("new", &site.agent_key.0.clone());
    let id = site.roll_out(json!({ "version": version, "host_ids": site.host_ids(),
        "max_parallel": 1 }));
    let before = wait_for("the first host's update", Duration::from_secs(90), || {
        let r = site.rollout(&id);
        (r["targets"][0]["state"] == "succeeded").then_some(r)
    });
    assert_eq!(before["state"], "running", "killed mid-rollout: {before}");
    assert_eq!(before["targets"][2]["state"], "pending", "{before}");
    site.server.restart();
    let r = site.final_rollout(&id, Duration::from_secs(180), |_| {});
    assert_eq!(
        r["state"],
        "succeeded",
        "{r}\n{}\n{}",
        site.server.output.text(),
        site.logs()
    );
    for i in 0..3 {
        let a = site.wait_agent(i, Duration::from_secs(30), |a| {
            (a["version"] == version.as_str() && a["status"] == "online").then(|| a.clone())
        });
        assert_eq!(
            a["update"]["id"], r["targets"][i]["update_id"],
            "one update per agent: {a}"
        );
        assert_eq!(sha(&site.nodes[i].binary), sha(&site.builds.path("new")));
    }
    assert!(
        site.server.output.contains("continuing a rollout"),
        "the restarted server continued it"
    );
}
