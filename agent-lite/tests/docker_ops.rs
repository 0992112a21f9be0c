//! Every catalog operation against the real dockerd, through the protocol crate's mapping
//! and the agent's blocking client. Needs dockerd at unix:///var/run/docker.sock: fails
//! (never skips) when it is absent.

mod common;

use common::docker::{client, op, require_docker, unique, Cleanup};
use protocol::ErrorCode;
use serde_json::{json, Value};

const IMAGE: &str = "docker-ctl-test/busybox:latest";

#[test]
fn system_operations() {
    let c = client();
    let ping = op(&c, "system.ping", json!({})).unwrap();
    assert_eq!(ping["ok"], true);
    assert!(
        ping["api_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{ping}"
    );
    let info = op(&c, "system.info", json!({})).unwrap();
    assert!(info["ID"].is_string() || info["Name"].is_string(), "{info}");
    let version = op(&c, "system.version", json!({})).unwrap();
    assert!(version["ApiVersion"].is_string(), "{version}");
    let df = op(&c, "system.df", json!({})).unwrap();
    assert!(df["Images"].is_array(), "{df}");
}

#[test]
fn container_lifecycle() {
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let name = unique("agent-ops-ctr");
    let label = unique("agent-ops-label");
    let created = op(
        &c,
        "container.create",
        json!({"name": name, "image": IMAGE, "cmd": ["sh", "-c", "echo hello; echo oops >&2; sleep 300"],
               "labels": {"docker-ctl-test": label}}),
    )
    .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    cleanup.container(&id);

    let inspect = op(&c, "container.inspect", json!({"id": name})).unwrap();
    assert_eq!(inspect["name"], json!(name));
    assert_eq!(inspect["status"], "created");

    assert_eq!(
        op(&c, "container.start", json!({"id": id})).unwrap()["changed"],
        true
    );
    // 304: already started.
    assert_eq!(
        op(&c, "container.start", json!({"id": id})).unwrap()["changed"],
        false
    );

    let list = op(
        &c,
        "container.list",
        json!({"filters": {"label": format!("docker-ctl-test={label}")}}),
    )
    .unwrap();
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["name"], json!(name));
    assert_eq!(items[0]["status"], "running");

    let top = op(&c, "container.top", json!({"id": id})).unwrap();
    assert!(!top["processes"].as_array().unwrap().is_empty(), "{top}");

    // Logs appear asynchronously: poll with a deadline.
    let logs = common::wait_for(std::time::Duration::from_secs(10), || {
        let l = op(&c, "container.logs", json!({"id": id})).unwrap();
        (l["stdout"].as_str() == Some("hello\n") && l["stderr"].as_str() == Some("oops\n"))
            .then_some(l)
    });
    assert_eq!(logs["tty"], false);

    let stats = op(&c, "container.stats", json!({"id": id})).unwrap();
    assert!(stats["memory_usage_bytes"].is_u64(), "{stats}");
    assert!(stats["pids"].as_u64().unwrap_or(0) >= 1, "{stats}");

    let exec = op(
        &c,
        "container.exec",
        json!({"id": id, "cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
    )
    .unwrap();
    assert_eq!(exec["stdout"], "out\n");
    assert_eq!(exec["stderr"], "err\n");
    assert_eq!(exec["exit_code"], 3);

    assert_eq!(
        op(&c, "container.pause", json!({"id": id})).unwrap()["changed"],
        true
    );
    assert_eq!(
        op(&c, "container.inspect", json!({"id": id})).unwrap()["status"],
        "paused"
    );
    assert_eq!(
        op(&c, "container.unpause", json!({"id": id})).unwrap()["changed"],
        true
    );

    let new_name = unique("agent-ops-renamed");
    assert_eq!(
        op(&c, "container.rename", json!({"id": id, "name": new_name})).unwrap()["name"],
        json!(new_name)
    );
    assert_eq!(
        op(&c, "container.inspect", json!({"id": id})).unwrap()["name"],
        json!(new_name)
    );

    assert_eq!(
        op(&c, "container.restart", json!({"id": id, "t": 0})).unwrap()["changed"],
        true
    );
    assert_eq!(
        op(&c, "container.inspect", json!({"id": id})).unwrap()["status"],
        "running"
    );

    let kill = op(&c, "container.kill", json!({"id": id, "signal": "SIGKILL"})).unwrap();
    assert_eq!(kill["signal"], "SIGKILL");
    common::wait_for(std::time::Duration::from_secs(10), || {
        (op(&c, "container.inspect", json!({"id": id})).unwrap()["status"] == "exited")
            .then_some(())
    });
    // 304: already stopped.
    assert_eq!(
        op(&c, "container.stop", json!({"id": id, "t": 0})).unwrap()["changed"],
        false
    );

    // Kill on a stopped container is a conflict with Docker's message.
    let e = op(&c, "container.kill", json!({"id": id})).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(e.message.contains("is not running"), "{e}");

    let pruned = op(
        &c,
        "container.prune",
        json!({"filters": {"label": format!("docker-ctl-test={label}")}}),
    )
    .unwrap();
    assert_eq!(pruned["deleted"], json!([id]), "{pruned}");

    let e = op(&c, "container.inspect", json!({"id": id})).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("No such container"), "{e}");
}

#[test]
fn container_stop_and_remove() {
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let name = unique("agent-ops-stop");
    let id = op(
        &c,
        "container.create",
        json!({"name": name, "image": IMAGE, "cmd": ["sleep", "300"]}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&id);
    op(&c, "container.start", json!({"id": id})).unwrap();
    assert_eq!(
        op(&c, "container.stop", json!({"id": id, "t": 0})).unwrap()["changed"],
        true
    );
    assert_eq!(
        op(&c, "container.remove", json!({"id": id, "force": true})).unwrap()["removed"],
        true
    );
    let e = op(&c, "container.remove", json!({"id": id})).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
}

#[test]
fn not_found_keeps_dockers_message() {
    let c = client();
    let e = op(
        &c,
        "container.inspect",
        json!({"id": "no-such-container-xyz"}),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(e.message, "No such container: no-such-container-xyz");
    let e = op(
        &c,
        "container.create",
        json!({"image": "no-such-image-xyz:never"}),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    assert!(e.message.contains("no-such-image-xyz"), "{e}");
}

#[test]
fn image_operations() {
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let list = op(&c, "image.list", json!({})).unwrap();
    let items = list.as_array().unwrap();
    assert!(!items.is_empty());
    assert!(
        items.iter().any(|i| i["tags"]
            .as_array()
            .is_some_and(|t| t.contains(&json!(IMAGE)))),
        "{list}"
    );
    let inspect = op(&c, "image.inspect", json!({"id": IMAGE})).unwrap();
    assert!(inspect["id"].as_str().unwrap().starts_with("sha256:"));

    let repo = unique("agent-ops-tag");
    let tagged = op(
        &c,
        "image.tag",
        json!({"id": IMAGE, "repo": repo, "tag": "v1"}),
    )
    .unwrap();
    assert_eq!(tagged["tagged"], json!(format!("{repo}:v1")));
    cleanup.image(&format!("{repo}:v1"));
    assert_eq!(
        op(&c, "image.inspect", json!({"id": format!("{repo}:v1")})).unwrap()["id"],
        inspect["id"]
    );
    let removed = op(&c, "image.remove", json!({"id": format!("{repo}:v1")})).unwrap();
    assert_eq!(
        removed["untagged"],
        json!([format!("{repo}:v1")]),
        "{removed}"
    );
    assert_eq!(
        removed["deleted"],
        json!([]),
        "the test image itself must stay: {removed}"
    );

    // Only dangling images with a label nobody uses: deletes nothing, but runs for real.
    let pruned = op(
        &c,
        "image.prune",
        json!({"filters": {"label": unique("agent-ops-nolabel")}}),
    )
    .unwrap();
    assert_eq!(pruned["deleted"], json!([]), "{pruned}");

    let e = op(&c, "image.inspect", json!({"id": "no-such-image-xyz"})).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[test]
fn image_pull_fails_clearly_without_a_registry() {
    let c = client();
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let parsed = protocol::Operation::parse(
        "image.pull",
        &json!({"image": "127.0.0.1:9/docker-ctl/none", "tag": "x"}),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = protocol::mapping::run_blocking(parsed, &mut c.transport(Some(deadline)), &mut |p| {
        lines.push(p)
    })
    .unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "pull hung"
    );
    assert!(
        matches!(e.code, ErrorCode::DockerError | ErrorCode::NotFound),
        "{e}"
    );
    assert!(
        e.message.contains("127.0.0.1:9"),
        "the daemon's message names the registry: {e}"
    );
}

#[test]
fn volume_operations() {
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let name = unique("agent-ops-vol");
    let label = unique("agent-ops-vlabel");
    let v = op(
        &c,
        "volume.create",
        json!({"name": name, "labels": {"docker-ctl-test": label}}),
    )
    .unwrap();
    cleanup.volume(&name);
    assert_eq!(v["name"], json!(name));
    assert_eq!(
        op(&c, "volume.inspect", json!({"id": name})).unwrap()["driver"],
        "local"
    );
    let list = op(
        &c,
        "volume.list",
        json!({"filters": {"label": format!("docker-ctl-test={label}")}}),
    )
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        op(&c, "volume.remove", json!({"id": name})).unwrap()["removed"],
        true
    );
    let e = op(&c, "volume.inspect", json!({"id": name})).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");

    let name2 = unique("agent-ops-vol2");
    op(
        &c,
        "volume.create",
        json!({"name": name2, "labels": {"docker-ctl-test": label}}),
    )
    .unwrap();
    cleanup.volume(&name2);
    let pruned = op(
        &c,
        "volume.prune",
        json!({"filters": {"label": format!("docker-ctl-test={label}"), "all": ["true"]}}),
    );
    let pruned = match pruned {
        Ok(p) => p,
        // API < 1.42 does not know the `all` filter and prunes named volumes without it.
        Err(_) => op(
            &c,
            "volume.prune",
            json!({"filters": {"label": format!("docker-ctl-test={label}")}}),
        )
        .unwrap(),
    };
    assert_eq!(pruned["deleted"], json!([name2]), "{pruned}");
}

#[test]
fn network_operations() {
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let name = unique("agent-ops-net");
    let label = unique("agent-ops-nlabel");
    let created = op(
        &c,
        "network.create",
        json!({"name": name, "labels": {"docker-ctl-test": label}}),
    )
    .unwrap();
    let net_id = created["id"].as_str().unwrap().to_string();
    cleanup.network(&net_id);
    assert_eq!(
        op(&c, "network.inspect", json!({"id": name})).unwrap()["driver"],
        "bridge"
    );
    let list = op(
        &c,
        "network.list",
        json!({"filters": {"label": format!("docker-ctl-test={label}")}}),
    )
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    let ctr = op(
        &c,
        "container.create",
        json!({"name": unique("agent-ops-netctr"), "image": IMAGE, "cmd": ["sleep", "300"]}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&ctr);
    op(&c, "container.start", json!({"id": ctr})).unwrap();
    assert_eq!(
        op(
            &c,
            "network.connect",
            json!({"id": name, "container": ctr, "aliases": ["web"]})
        )
        .unwrap()["connected"],
        true
    );
    let insp = op(&c, "network.inspect", json!({"id": net_id})).unwrap();
    assert!(
        insp["Containers"]
            .as_object()
            .is_some_and(|m| m.contains_key(&ctr)),
        "{insp}"
    );
    assert_eq!(
        op(
            &c,
            "network.disconnect",
            json!({"id": name, "container": ctr, "force": true})
        )
        .unwrap()["connected"],
        false
    );
    assert_eq!(
        op(&c, "network.remove", json!({"id": net_id})).unwrap()["removed"],
        true
    );
    assert_eq!(
        op(&c, "network.inspect", json!({"id": net_id}))
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );

    let name2 = unique("agent-ops-net2");
    let id2 = op(
        &c,
        "network.create",
        json!({"name": name2, "labels": {"docker-ctl-test": label}}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.network(&id2);
    let pruned = op(
        &c,
        "network.prune",
        json!({"filters": {"label": format!("docker-ctl-test={label}")}}),
    )
    .unwrap();
    assert_eq!(pruned["deleted"], json!([name2]), "{pruned}");
}

#[test]
fn swarm_operations_fail_on_a_non_swarm_node() {
    let c = client();
    let info = c.get_json("/info", None).unwrap();
    assert_ne!(
        info.pointer("/Swarm/LocalNodeState"),
        Some(&json!("active")),
        "this test expects a non-swarm daemon"
    );
    let names = ["swarm.inspect", "service.list", "node.list"];
    for name in names {
        let e = op(&c, name, json!({})).unwrap_err();
        assert_eq!(e.code, ErrorCode::DockerError, "{name}: {e}");
        assert!(e.message.contains("swarm"), "{name}: {e}");
    }
}

#[test]
fn every_catalog_operation_is_covered_here() {
    let src = include_str!("docker_ops.rs");
    let missing: Vec<_> = protocol::OPERATION_NAMES
        .iter()
        .filter(|n| !src.contains(&format!("\"{n}\"")))
        .collect();
    assert!(protocol::OPERATION_NAMES.len() >= 41);
    assert!(
        missing.is_empty(),
        "operations without a real-daemon test: {missing:?}"
    );
}

#[test]
fn missing_socket_is_docker_unreachable() {
    let c = agent_lite::daemon::DockerClient::new(
        agent_lite::daemon::Endpoint::parse("unix:///nonexistent/docker.sock").unwrap(),
        std::time::Duration::from_secs(2),
    );
    let e = op(&c, "container.list", json!({})).unwrap_err();
    assert_eq!(e.code, ErrorCode::DockerUnreachable, "{e}");
    assert!(e.message.contains("/nonexistent/docker.sock"), "{e}");
}

#[test]
fn tcp_endpoint_works() {
    require_docker();
    let c = agent_lite::daemon::DockerClient::new(
        agent_lite::daemon::Endpoint::parse("tcp://127.0.0.1:23750").unwrap(),
        std::time::Duration::from_secs(10),
    );
    let v: Value = op(&c, "system.version", json!({}))
        .expect("dockerd must listen on tcp://127.0.0.1:23750 (scripts/services.sh)");
    assert!(v["ApiVersion"].is_string());
    assert!(op(&c, "container.list", json!({"all": true}))
        .unwrap()
        .is_array());
}

#[test]
fn api_version_is_negotiated_down_to_the_daemons() {
    let c = client();
    let v = c.api_version(None).unwrap();
    let daemon = c.get_json("/version", None).unwrap()["ApiVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(Some(v), protocol::mapping::negotiate_api_version(&daemon));
}
