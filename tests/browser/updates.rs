//! The agent-updates page against a real rollout: an agent installed from the `old` build of
//! scripts/build-update-agents.sh updates itself to the signed `new` release, started from the
//! page, with each agent's progress shown live.

use crate::driver::Browser;
use crate::{choose, create_user, retype, ONLINE, PAGE};
use docker_ctl_tests::{
    repo_root, require_docker, server_cli, unique, wait_for, Agent, Db, Server,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TARGET: &str = "x86_64-unknown-linux-musl";

fn build(name: &str) -> (PathBuf, String) {
    let dir = repo_root().join(format!("target/update-agents/{TARGET}"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with scripts/build-update-agents.sh {TARGET}",
        path.display()
    );
    let version = std::fs::read_to_string(dir.join(format!("{name}.version")))
        .expect("version file")
        .trim()
        .to_string();
    (path, version)
}

/// Signs `file` with `key` for `version` and stores it as a release of the server.
fn add_release(server: &Server, config: &Path, key: &Path, file: &Path, version: &str) {
    let comment = format!("file:docker-ctl-agent version:{version} target:{TARGET}");
    let (f, k) = (file.display().to_string(), key.display().to_string());
    server_cli(&[
        "release",
        "sign",
        "--key",
        &k,
        "--file",
        &f,
        "--trusted-comment",
        &comment,
    ]);
    let out = server_cli(&[
        "release",
        "add",
        "--config",
        &config.display().to_string(),
        "--data-dir",
        &server.data_dir.path().display().to_string(),
        "--file",
        &f,
        "--target",
        TARGET,
        "--version",
        version,
    ]);
    assert!(out.contains("added release"), "{out}");
}

#[test]
fn an_agent_update_rollout_started_from_the_page_shows_each_agents_progress() {
    require_docker();
    let (old, old_version) = build("old");
    let (new, new_version) = build("new");
    let work = tempfile::tempdir().expect("tempdir");
    let keys = work.path().join("keys");
    server_cli(&["release", "keygen", "--out", &keys.display().to_string()]);
    let (key, public) = (keys.join("release.key"), keys.join("release.pub"));
    let config = work.path().join("server.yaml");
    std::fs::write(
        &config,
        format!("release_public_key: {}\n", public.display()),
    )
    .expect("server.yaml");
    let server = Server::start_with(
        Db::Sqlite,
        &[("DOCKER_CTL_CONFIG", &config.display().to_string())],
    );

    // An agent installed from the old build, trusting the release key.
    let (host_id, agent_id, token) = server.enrol(&unique("ui-upd"));
    let install = work.path().join("bin");
    std::fs::create_dir(&install).expect("bin dir");
    let binary = install.join("docker-ctl-agent");
    std::fs::copy(&old, &binary).expect("install the old agent");
    let yaml = format!(
        "update:\n  public_key: {}\n  probation_secs: 20\n  probation_starts: 2\n",
        public.display()
    );
    let _agent = Agent::start_custom(
        vec![binary.display().to_string()],
        &server.ws(),
        &agent_id,
        &token,
        &yaml,
        &[],
    );
    server.wait_status(&host_id, "online", ONLINE);
    let agent_version = || {
        let (st, a) = server.api("GET", &format!("/api/v1/agents/{agent_id}"), None);
        assert_eq!(st, 200, "{a}");
        a["version"].as_str().unwrap_or_default().to_string()
    };
    wait_for("the old agent reports its version", ONLINE, || {
        (agent_version() == old_version).then_some(())
    });
    let release = work.path().join("release-new");
    std::fs::copy(&new, &release).expect("copy the release");
    add_release(&server, &config, &key, &release, &new_version);

    let admin = unique("admin");
    create_user(&server, &admin, "admin", "a long enough password");
    let b = Browser::start();
    b.sign_in(&server.http(), &admin, "a long enough password");
    b.find("#fleet", PAGE);
    b.goto(&format!("{}/updates", server.http()));
    b.find("#updates-none", PAGE);
    let (v, _) = b.wait_text("#update-version", PAGE, |t| t.contains(&new_version));
    assert!(v.contains(TARGET), "{v}");
    choose(&b, "#update-target", "hosts");
    retype(&b, "#update-host-ids", &host_id);
    b.js("window.__noReload = 1; return 1", json!([]));
    b.click_button(
        "form[aria-label='Start agent update']",
        "Start update",
        PAGE,
    );
    let row = format!("#update-agents tr[data-host='{host_id}']");
    b.wait_text(&format!("{row} .progress-state"), PAGE, |t| {
        !t.is_empty() && t != "succeeded"
    });
    b.screenshot("updates-progress");
    b.wait_text("#update-state", Duration::from_secs(120), |t| {
        t == "succeeded"
    });
    b.wait_text(&format!("{row} .progress-state"), PAGE, |t| {
        t == "succeeded"
    });
    // The page saw the agent move: at least one state before succeeded, in order.
    let log = b.text_of("#update-log");
    let done = log.find(": succeeded");
    assert!(
        done.is_some() && log[..done.unwrap_or(0)].contains(": "),
        "{log}"
    );
    assert_eq!(b.js("return window.__noReload", json!([])), json!(1));
    assert_eq!(
        agent_version(),
        new_version,
        "the agent runs the new release"
    );
    b.wait_text("#update-list", PAGE, |t| t.contains(&new_version));
    b.screenshot("updates-succeeded");
}
