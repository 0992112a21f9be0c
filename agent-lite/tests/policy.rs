//! The agent's local policy (`policy:` in agent.yaml), for catalog operations and for
//! passthrough streams, against the real dockerd. Fails (never skips) without dockerd.

mod common;

use common::docker::{client, op, unique, Cleanup};
use common::policy::{json_of, message, start as setup, IMAGE, S30};
use common::tunnel::Request;
use protocol::ErrorCode;
use serde_json::{json, Value};

fn container<'a>(
    cleanup: &mut Cleanup<'a>,
    c: &'a agent_lite::daemon::DockerClient,
    extra: Value,
) -> String {
    let mut p = json!({"name": unique("policy-ctr"), "image": IMAGE, "cmd": ["sleep", "300"]});
    if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    let id = op(c, "container.create", p).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&id);
    id
}

#[test]
fn allowed_operations_limit_commands_and_passthrough() {
    let mut s = setup(|c| {
        c.policy.allowed_operations = Some(vec!["system.*".into(), "container.list".into()])
    });
    assert!(s.command("container.list", json!({})).is_ok());
    assert!(s.command("system.ping", json!({})).is_ok());
    s.forbidden_op("image.list", json!({}), "allowed_operations");
    assert_eq!(
        s.t.request(Request::new("HEAD", "/_ping")).status,
        Some(200)
    );
    assert_eq!(
        s.t.request(Request::get("/v1.41/containers/json")).status,
        Some(200)
    );
    s.forbidden_stream(Request::get("/v1.41/images/json"), "allowed_operations");
}

#[test]
fn deny_exec_and_attach() {
    let mut s = setup(|c| {
        c.policy.deny_exec = true;
        c.policy.deny_attach = true;
    });
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let id = container(&mut cleanup, &c, json!({}));
    op(&c, "container.start", json!({"id": id})).unwrap();
    s.forbidden_op(
        "container.exec",
        json!({"id": id, "cmd": ["true"]}),
        "deny_exec",
    );
    let path = format!("/v1.41/containers/{id}/exec");
    s.forbidden_stream(
        Request::json("POST", &path, br#"{"Cmd":["true"],"AttachStdout":true}"#),
        "deny_exec",
    );
    // An exec created behind the agent's back still cannot be started through it.
    let exec = c
        .send(
            protocol::mapping::Method::Post,
            &path,
            Some(br#"{"Cmd":["true"]}"#),
            None,
            &mut |_| {},
        )
        .unwrap();
    let exec_id = serde_json::from_slice::<Value>(&exec.body).unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let start = format!("/v1.41/exec/{exec_id}/start");
    let mut req = Request::json("POST", &start, br#"{"Detach":false,"Tty":false}"#);
    req.upgrade = true;
    s.forbidden_stream(req, "deny_exec");
    let attach = format!("/v1.41/containers/{id}/attach?stream=1&stdout=1");
    let mut req = Request::new("POST", &attach);
    req.upgrade = true;
    s.forbidden_stream(req, "deny_attach");
    // Reading is still fine.
    let r =
        s.t.request(Request::get(&format!("/v1.41/containers/{id}/json")));
    assert_eq!(r.status, Some(200));
}

#[test]
fn deny_privileged_host_network_and_host_mounts_in_creates() {
    let mut s = setup(|c| {
        c.policy.deny_privileged = true;
        c.policy.deny_host_network = true;
        c.policy.deny_host_mounts = true;
    });
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let base = || json!({"image": IMAGE, "cmd": ["true"], "name": unique("policy-deny")});
    let with = |k: &str, v: Value| {
        let mut p = base();
        p[k] = v;
        p
    };
    s.forbidden_op(
        "container.create",
        with("privileged", json!(true)),
        "deny_privileged",
    );
    s.forbidden_op(
        "container.create",
        with("network", json!("host")),
        "deny_host_network",
    );
    s.forbidden_op(
        "container.create",
        with("mounts", json!(["/etc:/host-etc"])),
        "deny_host_mounts",
    );
    s.forbidden_op(
        "container.create",
        with("docker", json!({"HostConfig": {"Privileged": true}})),
        "deny_privileged",
    );
    // Named volumes that exist are not host mounts.
    let vol = unique("policy-vol");
    op(&c, "volume.create", json!({"name": vol})).unwrap();
    cleanup.volume(&vol);
    let ok = s
        .command(
            "container.create",
            with("mounts", json!([format!("{vol}:/data")])),
        )
        .unwrap();
    cleanup.container(ok["id"].as_str().unwrap());

    for (hc, rule) in [
        (json!({"Privileged": true}), "deny_privileged"),
        (json!({"NetworkMode": "host"}), "deny_host_network"),
        (json!({"Binds": ["/etc:/host-etc:ro"]}), "deny_host_mounts"),
        (
            json!({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}),
            "deny_host_mounts",
        ),
    ] {
        let body = json!({"Image": IMAGE, "Cmd": ["true"], "HostConfig": hc}).to_string();
        s.forbidden_stream(
            Request::json("POST", "/v1.41/containers/create", body.as_bytes()),
            rule,
        );
    }
    // Privileged exec too.
    let running = container(&mut cleanup, &c, json!({}));
    op(&c, "container.start", json!({"id": running})).unwrap();
    s.forbidden_op(
        "container.exec",
        json!({"id": running, "cmd": ["true"], "privileged": true}),
        "deny_privileged",
    );
    s.forbidden_stream(
        Request::json(
            "POST",
            &format!("/v1.41/containers/{running}/exec"),
            br#"{"Cmd":["true"],"Privileged":true}"#,
        ),
        "deny_privileged",
    );
    let name = unique("policy-pt-ok");
    let body = json!({"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "bridge"}})
        .to_string();
    let r = s.t.request(Request::json(
        "POST",
        &format!("/v1.41/containers/create?name={name}"),
        body.as_bytes(),
    ));
    assert_eq!(r.status, Some(201), "{}", message(&r));
    cleanup.container(json_of(&r)["Id"].as_str().unwrap());
}

#[test]
fn container_labels_isolate_a_namespace() {
    let ns = unique("ns");
    let ns2 = ns.clone();
    let mut s = setup(move |c| {
        c.policy
            .container_labels
            .insert("docker-ctl-policy".into(), ns2);
    });
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    // Created through the agent: the label is added.
    let inside = s
        .command(
            "container.create",
            json!({"image": IMAGE, "cmd": ["sleep", "300"], "name": unique("policy-in")}),
        )
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&inside);
    let v = op(&c, "container.inspect", json!({"id": inside})).unwrap();
    assert_eq!(v["Config"]["Labels"]["docker-ctl-policy"], json!(ns));
    // Created behind the agent's back: outside the namespace.
    let outside = container(&mut cleanup, &c, json!({}));
    op(&c, "container.start", json!({"id": outside})).unwrap();
    // Pushed events: ours only (Docker events are in order, so the outsider's start came first).
    op(&c, "container.start", json!({"id": inside})).unwrap();
    s.t.until(S30, "the inside container's start event", |t| {
        t.others.iter().any(|e| {
            matches!(&e.message, protocol::Message::Event(ev)
            if ev.action == "start" && ev.actor_id == inside)
        })
    });
    assert!(
        !s.t.others
            .iter()
            .any(|e| matches!(&e.message, protocol::Message::Event(ev)
            if ev.actor_id == outside)),
        "an event of a container outside the labels was pushed"
    );

    let list = s.command("container.list", json!({"all": true})).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["id"].as_str())
        .collect();
    assert_eq!(ids, vec![inside.as_str()], "{list}");
    s.forbidden_op(
        "container.inspect",
        json!({"id": outside}),
        "container_labels",
    );
    s.forbidden_op("container.stop", json!({"id": outside}), "container_labels");
    s.forbidden_op(
        "container.remove",
        json!({"id": outside, "force": true}),
        "container_labels",
    );
    assert!(s
        .command("container.inspect", json!({"id": inside}))
        .is_ok());

    // Passthrough: the list is filtered, other containers are refused.
    let r = s.t.request(Request::get(
        "/v1.41/containers/json?all=1&filters=%7B%22status%22%3A%5B%22created%22%2C%22running%22%5D%7D",
    ));
    let listed: Vec<String> = json_of(&r)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["Id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(listed, vec![inside.clone()]);
    s.forbidden_stream(
        Request::get(&format!("/v1.41/containers/{outside}/json")),
        "container_labels",
    );
    s.forbidden_stream(
        Request::new("POST", &format!("/v1.41/containers/{outside}/stop")),
        "container_labels",
    );
    let path = format!("/v1.41/containers/{outside}/exec");
    s.forbidden_stream(
        Request::json("POST", &path, br#"{"Cmd":["true"]}"#),
        "container_labels",
    );
    let exec = c
        .send(
            protocol::mapping::Method::Post,
            &path,
            Some(br#"{"Cmd":["true"]}"#),
            None,
            &mut |_| {},
        )
        .unwrap();
    let exec_id = serde_json::from_slice::<Value>(&exec.body).unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    s.forbidden_stream(
        Request::get(&format!("/v1.41/exec/{exec_id}/json")),
        "container_labels",
    );
    let r =
        s.t.request(Request::get(&format!("/v1.41/containers/{inside}/json")));
    assert_eq!(r.status, Some(200));
    // Passthrough creates get the label too.
    let r = s.t.request(Request::json(
        "POST",
        "/v1.41/containers/create",
        br#"{"Image":"docker-ctl-test/busybox:latest","Cmd":["true"],"Labels":{"mine":"1"}}"#,
    ));
    assert_eq!(r.status, Some(201), "{}", message(&r));
    let created = json_of(&r)["Id"].as_str().unwrap().to_string();
    cleanup.container(&created);
    let v = op(&c, "container.inspect", json!({"id": created})).unwrap();
    assert_eq!(v["Config"]["Labels"]["docker-ctl-policy"], json!(ns));
    assert_eq!(v["Config"]["Labels"]["mine"], json!("1"));
    // A missing container is still not_found.
    let e = s
        .command("container.inspect", json!({"id": "no-such-ctr-policy"}))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
}

/// The strings of a JSON array (a container's `Config.Env`).
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .expect("an array")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn a_redacted_inspect_larger_than_the_stream_window_arrives_whole() {
    let mut s = setup(|c| c.policy.redact_env = true);
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    // 300 KiB of env: more than the server's window for the agent's answer (256 KiB). The
    // agent reads the whole answer to redact it, then must send it as the credit comes.
    let big = "x".repeat(100 * 1024);
    let env: Vec<String> = (0..3)
        .map(|i| format!("PLAIN{i}={big}"))
        .chain(["DB_PASSWORD=hunter2".to_string()])
        .collect();
    let id = container(&mut cleanup, &c, json!({ "env": env }));
    let r =
        s.t.request(Request::get(&format!("/v1.41/containers/{id}/json")));
    assert_eq!(r.status, Some(200), "{}", message(&r));
    let v = json_of(&r);
    let got = strings(&v["Config"]["Env"]);
    assert!(got.contains(&"DB_PASSWORD=***"), "redacted");
    for i in 0..3 {
        let whole = format!("PLAIN{i}={big}");
        assert!(got.contains(&whole.as_str()), "PLAIN{i} arrives whole");
    }
}

#[test]
fn redact_env_in_inspect_output() {
    let mut s = setup(|c| c.policy.redact_env = true);
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let id = container(
        &mut cleanup,
        &c,
        json!({"env": ["DB_PASSWORD=hunter2", "api_token=abc", "PLAIN=visible"]}),
    );
    let check = |env: &Value| {
        let env = strings(env);
        assert!(env.contains(&"DB_PASSWORD=***"), "{env:?}");
        assert!(env.contains(&"api_token=***"), "{env:?}");
        assert!(env.contains(&"PLAIN=visible"), "{env:?}");
        assert!(!env
            .iter()
            .any(|e| e.contains("hunter2") || e.contains("abc")));
    };
    let v = s.command("container.inspect", json!({"id": id})).unwrap();
    check(&v["Config"]["Env"]);
    let r =
        s.t.request(Request::get(&format!("/v1.41/containers/{id}/json")));
    assert_eq!(r.status, Some(200));
    check(&json_of(&r)["Config"]["Env"]);
}
