//! The operation catalog: every operation round-trips, params follow Docker's names, and bad
//! params are `invalid_params`.

use protocol::ops::*;
use protocol::{ErrorCode, Operation, OPERATION_NAMES};
use serde_json::{json, Value};

/// Example params for every operation of the catalog.
fn examples() -> Vec<(&'static str, Value)> {
    vec![
        ("system.ping", json!({})),
        ("system.info", json!({})),
        ("system.version", json!({})),
        ("system.df", json!({})),
        (
            "container.list",
            json!({"all": true, "limit": 5, "filters": {"label": ["app=web"], "status": "running"}}),
        ),
        ("container.inspect", json!({"id": "web-1"})),
        (
            "container.create",
            json!({"name": "web-1", "image": "docker-ctl-test/busybox:latest", "cmd": ["sleep", "60"],
                "entrypoint": "/bin/sh", "env": {"A": "1"}, "labels": {"app": "web"},
                "ports": ["127.0.0.1:8080:80", "53/udp", {"container_port": 443, "host_port": 8443}],
                "mounts": ["/srv/data:/data:ro", "vol1:/var/lib/x", {"type": "tmpfs", "target": "/tmp"}],
                "network": "backend", "restart_policy": "on-failure:3", "privileged": false, "user": "1000",
                "workdir": "/srv", "docker": {"HostConfig": {"Memory": 67108864}}}),
        ),
        ("container.start", json!({"id": "abc123"})),
        ("container.stop", json!({"id": "abc123", "t": 3})),
        ("container.restart", json!({"id": "abc123", "t": 1})),
        (
            "container.kill",
            json!({"id": "abc123", "signal": "SIGTERM"}),
        ),
        ("container.pause", json!({"id": "abc123"})),
        ("container.unpause", json!({"id": "abc123"})),
        (
            "container.remove",
            json!({"id": "abc123", "force": true, "v": true}),
        ),
        ("container.rename", json!({"id": "abc123", "name": "web-2"})),
        ("container.prune", json!({"filters": {"label": "tmp=1"}})),
        ("container.top", json!({"id": "abc123", "ps_args": "aux"})),
        (
            "container.logs",
            json!({"id": "abc123", "tail": 100, "since": 1700000000, "until": "2024-01-07T10:00:00Z", "timestamps": true}),
        ),
        ("container.stats", json!({"id": "abc123"})),
        (
            "container.exec",
            json!({"id": "abc123", "cmd": ["sh", "-c", "echo hi"], "env": ["X=1"], "workdir": "/", "user": "root"}),
        ),
        (
            "image.list",
            json!({"all": false, "filters": {"dangling": ["true"]}}),
        ),
        (
            "image.inspect",
            json!({"id": "docker-ctl-test/busybox:latest"}),
        ),
        ("image.pull", json!({"image": "busybox", "tag": "1.36"})),
        ("image.remove", json!({"id": "busybox:1.36", "force": true})),
        (
            "image.tag",
            json!({"id": "docker-ctl-test/busybox:latest", "repo": "local/bb", "tag": "v1"}),
        ),
        ("image.prune", json!({"filters": {"dangling": "true"}})),
        ("volume.list", json!({"filters": {"label": "app=web"}})),
        ("volume.inspect", json!({"id": "vol1"})),
        (
            "volume.create",
            json!({"name": "vol1", "labels": {"app": "web"}}),
        ),
        ("volume.remove", json!({"id": "vol1", "force": false})),
        ("volume.prune", json!({})),
        ("network.list", json!({})),
        ("network.inspect", json!({"id": "backend"})),
        (
            "network.create",
            json!({"name": "backend", "internal": true, "labels": {"app": "web"}}),
        ),
        ("network.remove", json!({"id": "backend"})),
        (
            "network.connect",
            json!({"id": "backend", "container": "web-1", "aliases": ["web"]}),
        ),
        (
            "network.disconnect",
            json!({"id": "backend", "container": "web-1", "force": true}),
        ),
        ("network.prune", json!({})),
        ("swarm.inspect", json!({})),
        ("service.list", json!({})),
        ("node.list", json!({"filters": {"role": "manager"}})),
    ]
}

#[test]
fn the_examples_cover_the_whole_catalog() {
    let names: Vec<&str> = examples().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, OPERATION_NAMES,
        "one example per catalog entry, in order"
    );
    assert_eq!(OPERATION_NAMES.len(), 41);
}

#[test]
fn every_operation_round_trips() {
    for (name, params) in examples() {
        let op = Operation::parse(name, &params).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(op.name(), name);
        let wire = serde_json::to_value(&op).unwrap();
        assert_eq!(wire["operation"], name);
        let back =
            Operation::parse(name, &op.params()).unwrap_or_else(|e| panic!("{name} re-parse: {e}"));
        assert_eq!(back, op, "{name}");
        let from_wire: Operation = serde_json::from_value(wire).unwrap();
        assert_eq!(from_wire, op);
        // Every operation turns into a Docker request.
        let mut plan = protocol::Plan::new(op);
        assert!(matches!(plan.next(None), protocol::Step::Call(_)), "{name}");
    }
}

#[test]
fn filters_accept_the_seed_form_docker_form_and_legacy_form() {
    let a = Operation::parse("container.list", &json!({"filters": {"label": "app=web"}})).unwrap();
    let b = Operation::parse(
        "container.list",
        &json!({"filters": {"label": ["app=web"]}}),
    )
    .unwrap();
    let c = Operation::parse(
        "container.list",
        &json!({"filters": {"label": {"app=web": true}}}),
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(b, c);
    let Operation::ContainerList(p) = a else {
        panic!()
    };
    assert_eq!(p.filters.to_query(), r#"{"label":["app=web"]}"#);
}

#[test]
fn create_params_map_to_dockers_create_body() {
    let (_, params) = examples()
        .into_iter()
        .find(|(n, _)| *n == "container.create")
        .unwrap();
    let Operation::ContainerCreate(p) = Operation::parse("container.create", &params).unwrap()
    else {
        panic!()
    };
    let body = protocol::mapping::create_body(&p);
    assert_eq!(body["Image"], "docker-ctl-test/busybox:latest");
    assert_eq!(body["Cmd"], json!(["sleep", "60"]));
    assert_eq!(body["Entrypoint"], json!(["/bin/sh"]));
    assert_eq!(body["Env"], json!(["A=1"]));
    assert_eq!(body["Labels"], json!({"app": "web"}));
    assert_eq!(body["User"], "1000");
    assert_eq!(body["WorkingDir"], "/srv");
    assert_eq!(
        body["ExposedPorts"],
        json!({"80/tcp": {}, "53/udp": {}, "443/tcp": {}})
    );
    let hc = &body["HostConfig"];
    assert_eq!(
        hc["PortBindings"]["80/tcp"],
        json!([{"HostIp": "127.0.0.1", "HostPort": "8080"}])
    );
    assert_eq!(
        hc["PortBindings"]["443/tcp"],
        json!([{"HostIp": "", "HostPort": "8443"}])
    );
    assert_eq!(
        hc["Mounts"][0],
        json!({"Type": "bind", "Source": "/srv/data", "Target": "/data", "ReadOnly": true})
    );
    assert_eq!(hc["Mounts"][1]["Type"], "volume");
    assert_eq!(
        hc["Mounts"][2],
        json!({"Type": "tmpfs", "Target": "/tmp", "ReadOnly": false})
    );
    assert_eq!(
        hc["RestartPolicy"],
        json!({"Name": "on-failure", "MaximumRetryCount": 3})
    );
    assert_eq!(hc["NetworkMode"], "backend");
    assert_eq!(hc["Memory"], 67108864, "the docker escape hatch is merged");
    assert_eq!(
        body["NetworkingConfig"]["EndpointsConfig"]["backend"],
        json!({})
    );
}

#[test]
fn bad_params_are_invalid_params() {
    let cases = [
        ("container.inspect", json!({})),
        ("container.inspect", json!({"id": 42})),
        ("container.inspect", json!({"id": "../../v1.41/info"})),
        ("container.inspect", json!({"id": "a?b=c"})),
        ("container.inspect", json!({"id": "web 1"})),
        ("container.inspect", json!({"id": ""})),
        ("container.list", json!({"all": "yes"})),
        ("container.list", json!({"filters": ["label=x"]})),
        ("container.create", json!({"name": "x"})),
        ("container.create", json!({"image": "bb", "name": "-bad"})),
        (
            "container.create",
            json!({"image": "bb", "ports": ["99999:80"]}),
        ),
        (
            "container.create",
            json!({"image": "bb", "ports": ["80/icmp"]}),
        ),
        (
            "container.create",
            json!({"image": "bb", "mounts": ["/a:relative"]}),
        ),
        (
            "container.create",
            json!({"image": "bb", "restart_policy": "sometimes"}),
        ),
        ("container.create", json!({"image": "bb", "docker": [1]})),
        ("container.exec", json!({"id": "x", "cmd": []})),
        ("container.kill", json!({"id": "x", "signal": "KILL; rm"})),
        ("container.stop", json!({"id": "x", "t": -1})),
        ("container.logs", json!({"id": "x", "tail": [1]})),
        ("network.create", json!({})),
        ("image.pull", json!({})),
    ];
    for (name, params) in cases {
        let err = Operation::parse(name, &params).expect_err(&format!("{name} {params} must fail"));
        assert_eq!(err.code, ErrorCode::InvalidParams, "{name} {params}: {err}");
        assert!(!err.message.is_empty());
    }
    let err = Operation::parse("container.list", &json!([1])).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidParams);
}

#[test]
fn unknown_operations_are_unsupported() {
    let err = Operation::parse("container.explode", &json!({})).unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported);
    assert!(err.message.contains("container.explode"));
}

#[test]
fn unknown_params_are_ignored_and_null_params_are_empty() {
    assert!(Operation::parse("container.list", &json!({"all": true, "colour": "blue"})).is_ok());
    assert!(Operation::parse("system.ping", &Value::Null).is_ok());
}

#[test]
fn access_and_capabilities() {
    let read = [
        "system.info",
        "container.list",
        "container.logs",
        "image.list",
        "network.inspect",
        "node.list",
    ];
    let write = [
        "container.create",
        "container.remove",
        "container.exec",
        "image.pull",
        "volume.prune",
        "network.connect",
        // Reading a container's files or an image needs an operator, like export.
        "container.export",
        "container.archive.get",
        "container.archive.stat",
        "image.save",
    ];
    for n in read {
        assert_eq!(access_of(n), Access::Read, "{n}");
    }
    for n in write {
        assert_eq!(access_of(n), Access::Write, "{n}");
    }
    assert_eq!(
        access_of("no.such"),
        Access::Write,
        "unknown names count as writes"
    );
    let swarm = Operation::parse("service.list", &json!({})).unwrap();
    assert_eq!(swarm.required_capability(), Some("swarm"));
    assert_eq!(
        Operation::parse("container.list", &json!({}))
            .unwrap()
            .required_capability(),
        None
    );
}

#[test]
fn port_and_mount_syntax() {
    let p = PortSpec::parse("[::1]:8080:80/udp").unwrap();
    assert_eq!(
        (
            p.host_ip.as_deref(),
            p.host_port,
            p.container_port,
            p.protocol.as_str()
        ),
        (Some("::1"), Some(8080), 80, "udp")
    );
    let p = PortSpec::parse("0.0.0.0::80").unwrap();
    assert_eq!((p.host_ip.as_deref(), p.host_port), (Some("0.0.0.0"), None));
    assert!(PortSpec::parse("a:b:c:d").is_err());
    let m = MountSpec::parse("data:/data").unwrap();
    assert_eq!(m.kind, MountType::Volume);
    assert!(MountSpec::parse("/a:/b:rx").is_err());
}

/// The rows of the operations table in docs/protocol.md: (names, access). A row may name
/// several operations (`container.start` / `pause` / `unpause`): a name without a dot takes
/// the group of the row's first name.
fn documented_operations() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let text = std::fs::read_to_string(path).expect("read docs/protocol.md");
    let table = text
        .split("\n| operation | access | params | result |\n")
        .nth(1)
        .expect("docs/protocol.md has the operations table");
    let mut out = Vec::new();
    for row in table.lines().skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let access = cells[1].trim().to_string();
        let mut group = String::new();
        for name in cells[0].split('`').skip(1).step_by(2) {
            let full = match name.split_once('.') {
                Some((g, _)) => {
                    group = g.to_string();
                    name.to_string()
                }
                None => format!("{group}.{name}"),
            };
            out.push((full, access.clone()));
        }
    }
    out
}

#[test]
fn the_docs_table_is_the_catalog() {
    let documented = documented_operations();
    assert!(!documented.is_empty());
    let catalog: Vec<(String, String)> = CATALOG
        .iter()
        .map(|o| {
            let access = match o.access {
                Access::Read => "read",
                Access::Write => "write",
            };
            (o.name.to_string(), access.to_string())
        })
        .collect();
    let mut a = documented.clone();
    let mut b = catalog.clone();
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "docs/protocol.md's operations table against the catalog"
    );
    assert_eq!(
        CATALOG.iter().map(|o| o.name).collect::<Vec<_>>(),
        OPERATION_NAMES
    );
}

#[test]
fn the_catalog_entry_is_what_parse_and_access_see() {
    for (name, params) in examples() {
        let op = Operation::parse(name, &params).unwrap();
        let info = lookup(name).unwrap();
        assert_eq!(op.info(), info, "{name}");
        assert_eq!(access_of(name), info.access, "{name}");
        assert_eq!(op.access(), info.access, "{name}");
    }
    assert!(lookup("container.export").is_none());
    assert_eq!(access_of("container.export"), Access::Write);
    assert_eq!(access_of("no.such"), Access::Write);
}

/// The container param of each catalog entry is the container the operation's first
/// Docker request names: a `/containers/{id}/...` path, or a connect/disconnect body.
#[test]
fn the_container_param_is_the_container_the_mapping_names() {
    let mut named = 0;
    for (name, params) in examples() {
        let op = Operation::parse(name, &params).unwrap();
        let protocol::Step::Call(req) = protocol::Plan::new(op.clone()).next(None) else {
            panic!("{name}: no request");
        };
        let route = protocol::passthrough::classify(req.method.as_str(), &req.path).unwrap();
        let in_path = route
            .object
            .clone()
            .filter(|_| route.path.starts_with("/containers/"));
        let in_body = req
            .body
            .as_ref()
            .and_then(|b| b.get("Container"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let found = in_path.or(in_body);
        match op.info().container {
            Some(param) => {
                named += 1;
                assert_eq!(
                    found.as_deref(),
                    params.get(param).and_then(Value::as_str),
                    "{name}: the request names the container of `{param}`"
                );
            }
            None => assert_eq!(found, None, "{name} names no container"),
        }
    }
    assert!(named >= 10);
}
