//! Agents update themselves: real agent builds of two versions (and one that exits at
//! start), signed with `docker-ctl-server release sign`, stored with `release add`, and
//! installed by the running agent process, on x86_64-musl and, under qemu, aarch64-musl.
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

fn server_cli(args: &[&str]) -> String {
    let out = Command::new(bin("docker-ctl-server"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DOCKER_CTL_CONFIG")
        .output()
        .expect("run docker-ctl-server");
    assert!(
        out.status.success(),
        "docker-ctl-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key pair from `release keygen`.
fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    server_cli(&["release", "keygen", "--out", &dir.display().to_string()]);
    (dir.join("release.key"), dir.join("release.pub"))
}

/// What a self-update test works with: keys, a server trusting `server_key`'s public half
/// for `release add`, and an agent installed from the `old` build.
struct Site {
    builds: Builds,
    work: tempfile::TempDir,
    agent_key: (PathBuf, PathBuf),
    server: Server,
    config: PathBuf,
    agent_id: String,
    host_id: String,
    binary: PathBuf,
    agent: Agent,
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

impl Site {
    /// `other_key_on_server`: the server accepts releases of another key than the agent
    /// trusts (a server that was given the wrong key, or that an attacker controls).
    fn start(target: &str, runner: Option<&str>, other_key_on_server: bool) -> Site {
        require_docker();
        let builds = Builds::of(target);
        let work = tempfile::tempdir().expect("tempdir");
        let agent_key = keygen(&work.path().join("keys"));
        let other_key = keygen(&work.path().join("other"));
        let server_pub = if other_key_on_server {
            &other_key.1
        } else {
            &agent_key.1
        };
        let config = work.path().join("server.yaml");
        std::fs::write(
            &config,
            format!("release_public_key: {}\n", server_pub.display()),
        )
        .expect("server.yaml");
        let config_env = config.display().to_string();
        let server = Server::start_with(Db::Sqlite, &[("DOCKER_CTL_CONFIG", &config_env)]);
        let (host_id, agent_id, token) = server.enrol(&unique("upd"));
        let install = work.path().join("bin");
        std::fs::create_dir(&install).expect("bin dir");
        let binary = install.join("docker-ctl-agent");
        std::fs::copy(builds.path("old"), &binary).expect("install the old agent");
        let mut program = vec![binary.display().to_string()];
        let mut env = Vec::new();
        if let Some(r) = runner {
            program.insert(0, r.to_string());
            env.push(("DOCKER_CTL_LAUNCHER", r));
        }
        let yaml = format!(
            "update:\n  public_key: {}\n  probation_secs: 20\n  probation_starts: 2\n",
            agent_key.1.display()
        );
        let agent = Agent::start_custom(program, &server.ws(), &agent_id, &token, &yaml, &env);
        let emulated = if runner.is_some() { 90 } else { 30 };
        server.wait_status(&host_id, "online", Duration::from_secs(emulated));
        let site = Site {
            builds,
            work,
            agent_key,
            server,
            config,
            agent_id,
            host_id,
            binary,
            agent,
        };
        let old = site.builds.version("old");
        site.wait_agent(Duration::from_secs(30), |a| {
            (a["version"] == old.as_str()).then_some(())
        });
        site
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

    fn agent_json(&self) -> Value {
        let (st, a) = self
            .server
            .api("GET", &format!("/api/v1/agents/{}", self.agent_id), None);
        assert_eq!(st, 200, "{a}");
        a
    }

    fn wait_agent<T>(&self, limit: Duration, mut f: impl FnMut(&Value) -> Option<T>) -> T {
        wait_for("the agent's state", limit, || f(&self.agent_json()))
    }

    fn update_to(&self, version: &str) -> Value {
        let (st, row) = self.server.api(
            "POST",
            &format!("/api/v1/agents/{}/update", self.agent_id),
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

    /// Waits for the update `id` to end; returns its row.
    fn final_update(&self, id: &str, limit: Duration) -> Value {
        self.wait_agent(limit, |a| {
            let u = &a["update"];
            (u["id"] == id
                && matches!(
                    u["state"].as_str(),
                    Some("succeeded" | "failed" | "rolled_back")
                ))
            .then(|| u.clone())
        })
    }
}

/// The old build updates to the new one: the agent reports the new version, its binary on
/// disk is the new build, the process is the same (same PID), and `.prev` keeps the old.
fn updates_in_place(target: &str, runner: Option<&str>) {
    let mut site = Site::start(target, runner, false);
    let pid = site.agent.pid();
    let old_sha = sha(&site.binary);
    let version = site.add_release("new", &site.agent_key.0.clone());
    let (st, list) = site.server.api("GET", "/api/v1/releases", None);
    assert_eq!(st, 200);
    assert_eq!(list["releases"][0]["version"], version.as_str(), "{list}");
    assert_eq!(list["releases"][0]["target"], target, "{list}");
    let t0 = Instant::now();
    let row = site.update_to(&version);
    let limit = Duration::from_secs(if runner.is_some() { 240 } else { 90 });
    // The agent's resident memory while it downloads, verifies and restarts.
    let mut peak_rss_kb = 0u64;
    let id = row["id"].as_str().unwrap().to_string();
    let done = site.wait_agent(limit, |a| {
        peak_rss_kb = peak_rss_kb.max(pid.map_or(0, rss_kb));
        let u = &a["update"];
        (u["id"] == id.as_str()
            && matches!(
                u["state"].as_str(),
                Some("succeeded" | "failed" | "rolled_back")
            ))
        .then(|| u.clone())
    });
    assert_eq!(
        done["state"],
        "succeeded",
        "{done}\n{}",
        site.agent.output.text()
    );
    let a = site.wait_agent(Duration::from_secs(30), |a| {
        (a["version"] == version.as_str() && a["status"] == "online").then(|| a.clone())
    });
    assert_eq!(a["target"], target);
    let size = std::fs::metadata(site.builds.path("new")).unwrap().len();
    eprintln!(
        "{target}: update of {size} bytes took {:?}; agent peak RSS {peak_rss_kb} KiB (sampled)",
        t0.elapsed()
    );
    assert_eq!(
        sha(&site.binary),
        sha(&site.builds.path("new")),
        "the binary on disk is the new build"
    );
    let prev = site.binary.with_file_name("docker-ctl-agent.prev");
    assert_eq!(sha(&prev), old_sha, ".prev keeps the old build");
    assert!(site.agent.is_running(), "the agent process lives on");
    assert_eq!(
        site.agent.pid(),
        pid,
        "the same process (re-executed in place)"
    );
    let _ = &site.host_id;
}

#[test]
fn x86_64_agent_updates_itself() {
    updates_in_place("x86_64-unknown-linux-musl", None);
}

#[test]
fn aarch64_agent_updates_itself_under_qemu() {
    let qemu = Command::new("qemu-aarch64").arg("--version").output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "qemu-aarch64 is missing: install qemu-user (scripts/services.sh)"
    );
    updates_in_place("aarch64-unknown-linux-musl", Some("qemu-aarch64"));
}

/// A server that accepts releases of another key cannot make the agent run one: the agent
/// refuses it (check `signature`) and keeps running the old version and binary.
#[test]
fn a_release_signed_with_another_key_is_refused() {
    let site = Site::start("x86_64-unknown-linux-musl", None, true);
    let old_sha = sha(&site.binary);
    let other = site.work.path().join("other/release.key");
    let version = site.add_release("new", &other);
    let row = site.update_to(&version);
    let done = site.final_update(row["id"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["error"]["details"]["check"], "signature", "{done}");
    let a = site.agent_json();
    assert_eq!(a["version"], site.builds.version("old").as_str(), "{a}");
    assert_eq!(
        sha(&site.binary),
        old_sha,
        "the binary on disk is unchanged"
    );
    assert!(!site.binary.with_file_name("docker-ctl-agent.prev").exists());
    assert!(!site
        .binary
        .with_file_name(".docker-ctl-agent.update")
        .exists());
}

/// A signed release that exits at every start: the agent swaps it in and re-executes it; a
/// supervisor (this test, as systemd would) starts it again; after `probation_starts` the
/// start restores the previous binary, which reports `rolled_back`.
#[test]
fn a_release_that_exits_at_start_is_rolled_back() {
    let mut site = Site::start("x86_64-unknown-linux-musl", None, false);
    let old_sha = sha(&site.binary);
    let key = site.agent_key.0.clone();
    let version = site.add_release("broken", &key);
    let row = site.update_to(&version);
    let id = row["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    // Restart=always: at most a few starts, each bounded by the deadline.
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let a = site.agent_json();
        let u = &a["update"];
        if u["id"] == id.as_str()
            && matches!(
                u["state"].as_str(),
                Some("rolled_back" | "failed" | "succeeded")
            )
        {
            break u.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no final state: {a}\n{}",
            site.agent.output.text()
        );
        if !site.agent.is_running() {
            restarts += 1;
            assert!(
                restarts <= 5,
                "too many restarts:\n{}",
                site.agent.output.text()
            );
            site.agent.restart();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert_eq!(done["error"]["details"]["check"], "crash_loop", "{done}");
    assert!(
        restarts >= 2,
        "the broken release was started again by the supervisor"
    );
    eprintln!(
        "rolled back after {:?} and {restarts} restarts",
        t0.elapsed()
    );
    assert_eq!(sha(&site.binary), old_sha, "the old binary is back");
    let old = site.builds.version("old");
    site.wait_agent(Duration::from_secs(30), |a| {
        (a["version"] == old.as_str() && a["status"] == "online").then_some(())
    });
}
