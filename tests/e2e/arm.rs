//! The ARM agent builds, run under qemu-user, enrol and answer `container.list` through the
//! server. scripts/test.sh builds them first with scripts/build-agent.sh.

use docker_ctl_tests::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

fn arm_agent_answers_container_list(target: &str, runner: &str) {
    require_docker();
    let bin = repo_root().join(format!("target/{target}/agent/docker-ctl-agent"));
    assert!(
        bin.is_file(),
        "{} is missing: build it with scripts/build-agent.sh",
        bin.display()
    );
    let qemu = std::process::Command::new(runner).arg("--version").output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "{runner} is missing: install qemu-user (scripts/services.sh)"
    );

    let server = Server::start(Db::Sqlite);
    let (host_id, agent_id, token) = server.enrol(&unique(&target.replace('_', "-")));
    let _agent = Agent::start_program(
        vec![runner.to_string(), bin.display().to_string()],
        &server.ws(),
        &agent_id,
        &token,
    );
    // Emulation is slow: allow for it.
    server.wait_status(&host_id, "online", Duration::from_secs(60));
    // Other tests add and remove containers meanwhile: compare with the daemon before and after.
    let ids = |v: &serde_json::Value, k: &str| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c[k].as_str().unwrap().to_string())
            .collect()
    };
    let before = ids(&docker_get("/containers/json?all=1"), "Id");
    let ours = ids(
        &server.op_ok(&host_id, "container.list", json!({"all": true})),
        "id",
    );
    let after = ids(&docker_get("/containers/json?all=1"), "Id");
    assert!(
        before.intersection(&after).all(|i| ours.contains(i)),
        "{target}: container.list misses containers"
    );
    assert!(
        ours.iter().all(|i| before.contains(i) || after.contains(i)),
        "{target}: container.list invents containers"
    );
    let (_, host) = server.api("GET", &format!("/api/v1/hosts/{host_id}"), None);
    assert_eq!(host["status"], "online");
}

#[test]
fn aarch64_musl_agent_under_qemu() {
    arm_agent_answers_container_list("aarch64-unknown-linux-musl", "qemu-aarch64");
}

#[test]
fn armv7_agent_under_qemu() {
    arm_agent_answers_container_list("armv7-unknown-linux-gnueabihf", "qemu-arm");
}
