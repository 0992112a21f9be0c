//! Every host escape and label-scope bypass the local policy closes, tried against the real
//! dockerd through the passthrough and through the catalog (where the catalog can express
//! it). After each refusal the test asks dockerd itself, on its own socket, that nothing was
//! created, started, mounted or touched. Fails (never skips) without dockerd.
//!
//! `docs/security.md` lists each escape with the test here that proves it closed.

mod common;

use agent_lite::daemon::DockerClient;
use common::docker::{client, op, unique, Cleanup};
use common::policy::{json_of, message, start, PolicyAgent, IMAGE};
use common::tunnel::Request;
use protocol::mapping::Method;
use protocol::ErrorCode;
use serde_json::{json, Value};

/// The label every container these tests send carries, to sweep dockerd afterwards.
const MARK: &str = "docker-ctl-escape";

fn strict() -> impl FnOnce(&mut agent_lite::config::Config) {
    |c| {
        c.policy.deny_privileged = true;
        c.policy.deny_host_network = true;
        c.policy.deny_host_mounts = true;
    }
}

/// A raw request to dockerd on its own socket, for setting up victims and for checking.
fn raw(c: &DockerClient, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
    let r = c
        .send(
            method,
            &format!("/v1.41{path}"),
            body.map(str::as_bytes),
            None,
            &mut |_| {},
        )
        .unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// Creates a container behind the agent's back (dockerd directly): a victim or a
/// reference. Never started unless `start`.
fn direct_container(
    c: &DockerClient,
    cleanup: &mut Cleanup,
    run: &str,
    host_config: Value,
    labels: Value,
    start: bool,
) -> (String, String) {
    let name = unique("escape-direct");
    let mut l = labels;
    l[MARK] = json!(run);
    let body =
        json!({"Image": IMAGE, "Cmd": ["sleep", "300"], "Labels": l, "HostConfig": host_config});
    let (st, v) = raw(
        c,
        Method::Post,
        &format!("/containers/create?name={name}"),
        Some(&body.to_string()),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["Id"].as_str().unwrap().to_string();
    cleanup.container(&id);
    if start {
        op(c, "container.start", json!({"id": id})).unwrap();
    }
    (id, name)
}

/// dockerd has no container of this name.
fn gone(c: &DockerClient, name: &str) {
    let e = op(c, "container.inspect", json!({"id": name}))
        .expect_err(&format!("dockerd must not have a container named {name}"));
    assert_eq!(e.code, ErrorCode::NotFound, "{name}: {e}");
}

/// Every container of this run that dockerd has is confined: not privileged, no host
/// namespace, network, mount, device, capability or security option. Returns how many.
fn assert_confined(c: &DockerClient, run: &str) -> usize {
    let list = op(
        c,
        "container.list",
        json!({"all": true, "filters": {"label": [format!("{MARK}={run}")]}}),
    )
    .unwrap();
    let mut n = 0;
    for item in list.as_array().unwrap() {
        let id = item["id"].as_str().unwrap();
        let v = op(c, "container.inspect", json!({"id": id})).unwrap();
        let hc = &v["HostConfig"];
        let what = format!("{id}: {hc}");
        assert_eq!(hc["Privileged"], false, "{what}");
        // CgroupnsMode is left out: dockerd's own default is host on cgroup v1 hosts.
        for k in ["PidMode", "IpcMode", "UTSMode", "UsernsMode"] {
            assert_ne!(hc[k], "host", "{what}");
        }
        assert_ne!(hc["NetworkMode"], "host", "{what}");
        for k in [
            "CapAdd",
            "SecurityOpt",
            "Devices",
            "DeviceRequests",
            "DeviceCgroupRules",
        ] {
            assert!(
                hc[k].is_null() || hc[k].as_array().is_some_and(Vec::is_empty),
                "{k}: {what}"
            );
        }
        assert!(
            hc["MaskedPaths"]
                .as_array()
                .is_some_and(|m| m.iter().any(|p| p == "/proc/kcore")),
            "{what}"
        );
        for m in v["Mounts"].as_array().into_iter().flatten() {
            assert_ne!(m["Type"], "bind", "{id}: {m}");
        }
        n += 1;
    }
    n
}

/// Sends a passthrough create (`members` inside the body's braces, after the image) that
/// must be refused with `status` and `needle`; dockerd must not have it.
fn refuse_create(
    s: &mut PolicyAgent,
    c: &DockerClient,
    run: &str,
    members: &str,
    status: u16,
    needle: &str,
) {
    let name = unique("escape-pt");
    let body =
        format!(r#"{{"Image":"{IMAGE}","Cmd":["true"],"Labels":{{"{MARK}":"{run}"}},{members}}}"#);
    let path = format!("/v1.41/containers/create?name={name}");
    let r = s.t.request(Request::json("POST", &path, body.as_bytes()));
    let msg = message(&r);
    assert_eq!(r.status, Some(status), "{body}: {msg}");
    assert!(msg.contains(needle), "{body}: {msg}");
    gone(c, &name);
}

/// Sends a catalog `container.create` (`extra` params merged in) that must be refused
/// naming `rule`; dockerd must not have it.
fn refuse_catalog(s: &mut PolicyAgent, c: &DockerClient, run: &str, extra: Value, rule: &str) {
    let name = unique("escape-op");
    let mut p = json!({"name": name, "image": IMAGE, "cmd": ["true"], "labels": {MARK: run}});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    s.forbidden_op("container.create", p, rule);
    gone(c, &name);
}

/// A passthrough create that must succeed; returns the id (cleaned up).
fn allowed_create(s: &mut PolicyAgent, cleanup: &mut Cleanup, run: &str, members: &str) -> String {
    let body =
        format!(r#"{{"Image":"{IMAGE}","Cmd":["true"],"Labels":{{"{MARK}":"{run}"}},{members}}}"#);
    let path = format!("/v1.41/containers/create?name={}", unique("escape-ok"));
    let r = s.t.request(Request::json("POST", &path, body.as_bytes()));
    assert_eq!(r.status, Some(201), "{body}: {}", message(&r));
    let id = json_of(&r)["Id"].as_str().unwrap().to_string();
    cleanup.container(&id);
    id
}

#[test]
fn deny_privileged_holds_against_json_that_dockerd_reads_differently() {
    let mut s = start(strict());
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    for members in [
        r#""HostConfig":{"privileged":true}"#,
        r#""HOSTCONFIG":{"PRIVILEGED":true}"#,
        r#""HostConfig":{"Privileged":true},"HostConfig":{}"#,
        r#""HostConfig":{"Privileged":true},"hostconfig":{"Memory":0}"#,
        r#""HostConfig":{"Privileged":true,"privileged":null}"#,
        r#""Privileged":true"#,
        r#""HostConfig":{"Privileged":false},"privileged":true,"HostConfig":null"#,
        "\"HostConfig\":{\"Usern\u{17F}Mode\":\"host\"}",
        r#""HostConfig":{"CapAdd":[]},"hostConfig":{"capadd":"SYS_ADMIN"}"#,
    ] {
        refuse_create(
            &mut s,
            &c,
            &run,
            members,
            403,
            "forbidden by agent policy: deny_privileged",
        );
    }
    // What the agent cannot read unambiguously is refused too.
    for members in [
        r#""HostConfig":{"Privileged":"true"}"#,
        r#""HostConfig":{"Mounts":[{"Type":"volume","Target":"/a"}]},"HostConfig":{"Mounts":[{"Target":"/b"}]}"#,
        r#""HostConfig":{"Capabilities":["ALL"]}"#,
        r#""HostConfig":{"Privileged":true}} {"#,
    ] {
        refuse_create(&mut s, &c, &run, members, 400, "");
    }
    // The catalog's raw `docker` body is merged last and checked as sent.
    for extra in [
        json!({"privileged": true}),
        json!({"docker": {"hostconfig": {"privileged": true}}}),
        json!({"docker": {"Privileged": true}}),
        json!({"docker": {"HostConfig": {"PidMode": "host"}}}),
    ] {
        refuse_catalog(&mut s, &c, &run, extra, "deny_privileged");
    }
    // Ordinary creates still work, and what dockerd made is confined.
    allowed_create(
        &mut s,
        &mut cleanup,
        &run,
        r#""hostconfig":{"privileged":false,"CapDrop":["ALL"]}"#,
    );
    let made = s
        .command(
            "container.create",
            json!({"name": unique("escape-op-ok"), "image": IMAGE, "labels": {MARK: run}}),
        )
        .unwrap();
    cleanup.container(made["id"].as_str().unwrap());
    assert_eq!(assert_confined(&c, &run), 2);
}

#[test]
fn deny_privileged_covers_namespaces_capabilities_security_options_and_devices() {
    let mut s = start(strict());
    let c = client();
    let _cleanup = Cleanup::new(&c);
    let run = unique("run");
    let cases = [
        json!({"PidMode": "host"}),
        json!({"IpcMode": "host"}),
        json!({"UTSMode": "host"}),
        json!({"UsernsMode": "host"}),
        json!({"CgroupnsMode": "host"}),
        json!({"CapAdd": ["SYS_ADMIN"]}),
        json!({"CapAdd": "cap_sys_module"}),
        json!({"CapAdd": ["ALL"]}),
        json!({"SecurityOpt": ["seccomp=unconfined"]}),
        json!({"SecurityOpt": ["seccomp:unconfined"]}),
        json!({"SecurityOpt": ["apparmor=unconfined"]}),
        json!({"SecurityOpt": ["label=disable"]}),
        json!({"SecurityOpt": ["label:disable"]}),
        json!({"SecurityOpt": ["systempaths=unconfined"]}),
        json!({"MaskedPaths": [], "ReadonlyPaths": []}),
        json!({"Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/x", "CgroupPermissions": "rwm"}]}),
        json!({"DeviceRequests": [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}]}),
        json!({"DeviceCgroupRules": ["a *:* rwm"]}),
    ];
    for hc in &cases {
        let members = format!(r#""HostConfig":{hc}"#);
        refuse_create(
            &mut s,
            &c,
            &run,
            &members,
            403,
            "forbidden by agent policy: deny_privileged",
        );
        refuse_catalog(
            &mut s,
            &c,
            &run,
            json!({"docker": {"HostConfig": hc}}),
            "deny_privileged",
        );
    }
    assert_eq!(assert_confined(&c, &run), 0);
}

#[test]
fn deny_privileged_covers_privileged_exec_in_any_spelling() {
    let mut s = start(strict());
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    let (id, _) = direct_container(&c, &mut cleanup, &run, json!({}), json!({}), true);
    let path = format!("/v1.41/containers/{id}/exec");
    for body in [
        r#"{"Cmd":["id"],"Privileged":true}"#,
        r#"{"Cmd":["id"],"privileged":true}"#,
        r#"{"Cmd":["id"],"PRIVILEGED":true,"Privileged":null}"#,
        r#"{"Cmd":["id"],"Privileged":false,"privileged":true}"#,
    ] {
        s.forbidden_stream(
            Request::json("POST", &path, body.as_bytes()),
            "deny_privileged",
        );
    }
    s.forbidden_op(
        "container.exec",
        json!({"id": id, "cmd": ["id"], "privileged": true}),
        "deny_privileged",
    );
    // dockerd holds no exec for the container: none was created.
    let v = op(&c, "container.inspect", json!({"id": id})).unwrap();
    assert!(v["ExecIDs"].is_null(), "{}", v["ExecIDs"]);
    // An ordinary exec runs.
    let out = s
        .command("container.exec", json!({"id": id, "cmd": ["echo", "fine"]}))
        .unwrap();
    assert_eq!(out["stdout"], "fine\n");
    // Updates are read the same way: devices are refused, and what passes is sent under
    // dockerd's own names (dockerd applies the lower-case key we received).
    let update = format!("/v1.41/containers/{id}/update");
    s.forbidden_stream(
        Request::json(
            "POST",
            &update,
            br#"{"devices":[{"PathOnHost":"/dev/null","PathInContainer":"/dev/x","CgroupPermissions":"rwm"}]}"#,
        ),
        "deny_privileged",
    );
    let r =
        s.t.request(Request::json("POST", &update, br#"{"cpushares":512}"#));
    assert_eq!(r.status, Some(200), "{}", message(&r));
    let v = op(&c, "container.inspect", json!({"id": id})).unwrap();
    assert_eq!(v["HostConfig"]["CpuShares"], 512);
    assert!(v["HostConfig"]["Devices"]
        .as_array()
        .is_none_or(Vec::is_empty));
}

#[test]
fn deny_privileged_covers_sharing_a_host_namespace_through_another_container() {
    let mut s = start(strict());
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    let (_, pid_host) = direct_container(
        &c,
        &mut cleanup,
        &run,
        json!({"PidMode": "host"}),
        json!({}),
        false,
    );
    let (_, privileged) = direct_container(
        &c,
        &mut cleanup,
        &run,
        json!({"Privileged": true}),
        json!({}),
        false,
    );
    for (mode, x) in [
        ("PidMode", &pid_host),
        ("IpcMode", &privileged),
        ("Cgroup", &pid_host),
    ] {
        let members = format!(r#""HostConfig":{{"{mode}":"container:{x}"}}"#);
        refuse_create(
            &mut s,
            &c,
            &run,
            &members,
            403,
            "forbidden by agent policy: deny_privileged",
        );
        refuse_catalog(
            &mut s,
            &c,
            &run,
            json!({"docker": {"HostConfig": {mode: format!("container:{x}")}}}),
            "deny_privileged",
        );
    }
}

#[test]
fn deny_host_network_covers_json_variants_other_containers_log_drivers_and_from_src() {
    let mut s = start(strict());
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    let (_, hostnet) = direct_container(
        &c,
        &mut cleanup,
        &run,
        json!({"NetworkMode": "host"}),
        json!({}),
        false,
    );
    let container_mode = format!(r#""HostConfig":{{"NetworkMode":"container:{hostnet}"}}"#);
    for members in [
        r#""HostConfig":{"networkmode":"host"}"#,
        r#""HostConfig":{"NetworkMode":"bridge","networkMode":"host"}"#,
        r#""NetworkMode":"host""#,
        r#""HostConfig":{},"NetworkingConfig":{"EndpointsConfig":{"host":{}}}"#,
        r#""HostConfig":{"LogConfig":{"Type":"syslog","Config":{"syslog-address":"tcp://127.0.0.1:1"}}}"#,
        &container_mode,
    ] {
        refuse_create(
            &mut s,
            &c,
            &run,
            members,
            403,
            "forbidden by agent policy: deny_host_network",
        );
    }
    for extra in [
        json!({"network": "host"}),
        json!({"network": format!("container:{hostnet}")}),
        json!({"docker": {"hostconfig": {"networkmode": "host"}}}),
    ] {
        refuse_catalog(&mut s, &c, &run, extra, "deny_host_network");
    }
    // images/create?fromSrc=URL would make the daemon fetch an address of the host's network.
    let repo = unique("escape-fromsrc");
    s.forbidden_stream(
        Request::new(
            "POST",
            &format!(
                "/v1.41/images/create?%66romSrc=http%3A%2F%2F127.0.0.1%3A1%2Fx.tar&repo={repo}"
            ),
        ),
        "deny_host_network",
    );
    let e = op(&c, "image.inspect", json!({"id": repo})).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    allowed_create(
        &mut s,
        &mut cleanup,
        &run,
        r#""HostConfig":{"NetworkMode":"bridge"}"#,
    );
    // The only host-network container of the run is the one made behind the agent's back.
    let list = op(
        &c,
        "container.list",
        json!({"all": true, "filters": {"label": [format!("{MARK}={run}")]}}),
    )
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[test]
fn deny_host_mounts_covers_binds_mounts_and_inline_volume_options() {
    let mut s = start(strict());
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    let missing = unique("escape-missing-vol");
    let missing_bind = format!(r#""HostConfig":{{"Binds":["{missing}:/data"]}}"#);
    let missing_mount = format!(
        r#""HostConfig":{{"Mounts":[{{"Type":"volume","Source":"{missing}","Target":"/data"}}]}}"#
    );
    for members in [
        r#""HostConfig":{"Binds":["/:/host"]}"#,
        r#""hostconfig":{"binds":["/etc:/e:ro"]}"#,
        "\"HostConfig\":{\"Bind\u{17F}\":[\"/:/host\"]}",
        r#""Binds":["/:/host"]"#,
        r#""HostConfig":{"Binds":[]},"HostConfig":{"Binds":["/:/host"]}"#,
        r#""HostConfig":{"Mounts":[{"Type":"bind","Source":"/","Target":"/host"}]}"#,
        r#""HostConfig":{"mounts":[{"type":"bind","source":"/","target":"/host"}]}"#,
        r#""HostConfig":{"Mounts":[{"Type":"volume","Target":"/host","VolumeOptions":{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind","device":"/"}}}}]}"#,
        r#""HostConfig":{"VolumeDriver":"some-plugin"}"#,
        &missing_bind,
        &missing_mount,
    ] {
        refuse_create(
            &mut s,
            &c,
            &run,
            members,
            403,
            "forbidden by agent policy: deny_host_mounts",
        );
    }
    for extra in [
        json!({"mounts": ["/:/host"]}),
        json!({"mounts": [format!("{missing}:/data")]}),
        json!({"docker": {"hostconfig": {"binds": ["/:/host"]}}}),
    ] {
        refuse_catalog(&mut s, &c, &run, extra, "deny_host_mounts");
    }
    // dockerd would have created the missing volume on the spot: it does not exist.
    let e = op(&c, "volume.inspect", json!({"id": missing})).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    // A volume that exists, and tmpfs, are fine.
    let plain = unique("escape-vol");
    op(&c, "volume.create", json!({"name": plain})).unwrap();
    cleanup.volume(&plain);
    allowed_create(
        &mut s,
        &mut cleanup,
        &run,
        &format!(
            r#""HostConfig":{{"Binds":["{plain}:/data"],"Tmpfs":{{"/run":"size=1m"}},"Mounts":[{{"Type":"tmpfs","Target":"/t"}}]}}"#
        ),
    );
    assert_eq!(assert_confined(&c, &run), 1);
}

#[test]
fn deny_host_mounts_covers_bind_option_volumes_created_or_existing() {
    let mut s = start(strict());
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    for opts in [
        r#""DriverOpts":{"type":"none","o":"bind","device":"/"}"#,
        r#""driveropts":{"type":"none","o":"bind","device":"/"}"#,
        r#""DriverOpts":{"type":"tmpfs","o":"rbind","device":"/etc"}"#,
        r#""DriverOpts":{"type":"ext4","device":"/dev/sda1"}"#,
        r#""DriverOpts":{},"driverOpts":{"type":"none","o":"bind","device":"/"}"#,
        r#""Driver":"some-plugin""#,
    ] {
        let name = unique("escape-bindvol");
        let body = format!(r#"{{"Name":"{name}",{opts}}}"#);
        s.forbidden_stream(
            Request::json("POST", "/v1.41/volumes/create", body.as_bytes()),
            "deny_host_mounts",
        );
        let e = op(&c, "volume.inspect", json!({"id": name})).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{body}: {e}");
    }
    let name = unique("escape-bindvol");
    s.forbidden_op(
        "volume.create",
        json!({"name": name, "driver_opts": {"type": "none", "o": "bind", "device": "/"}}),
        "deny_host_mounts",
    );
    assert_eq!(
        op(&c, "volume.inspect", json!({"id": name}))
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    // A bind-option volume made behind the agent's back cannot be mounted through it.
    let hostvol = unique("escape-hostvol");
    op(
        &c,
        "volume.create",
        json!({"name": hostvol, "driver_opts": {"type": "none", "o": "bind", "device": "/"}}),
    )
    .unwrap();
    cleanup.volume(&hostvol);
    for members in [
        format!(r#""HostConfig":{{"Binds":["{hostvol}:/host"]}}"#),
        format!(
            r#""HostConfig":{{"Mounts":[{{"Type":"volume","Source":"{hostvol}","Target":"/host"}}]}}"#
        ),
    ] {
        refuse_create(
            &mut s,
            &c,
            &run,
            &members,
            403,
            "forbidden by agent policy: deny_host_mounts",
        );
    }
    refuse_catalog(
        &mut s,
        &c,
        &run,
        json!({"mounts": [format!("{hostvol}:/host")]}),
        "deny_host_mounts",
    );
    // A tmpfs volume is no host mount.
    let tmp = unique("escape-tmpvol");
    let body = format!(
        r#"{{"Name":"{tmp}","DriverOpts":{{"type":"tmpfs","device":"tmpfs","o":"size=1m"}}}}"#
    );
    let r = s.t.request(Request::json(
        "POST",
        "/v1.41/volumes/create",
        body.as_bytes(),
    ));
    cleanup.volume(&tmp);
    assert_eq!(r.status, Some(201), "{}", message(&r));
    assert_eq!(assert_confined(&c, &run), 0);
}

#[test]
fn deny_host_mounts_covers_volumes_from_a_container_with_host_mounts() {
    let mut s = start(strict());
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    let (_, binds) = direct_container(
        &c,
        &mut cleanup,
        &run,
        json!({"Binds": ["/:/host:ro"]}),
        json!({}),
        false,
    );
    for members in [
        format!(r#""HostConfig":{{"VolumesFrom":["{binds}"]}}"#),
        format!(r#""hostconfig":{{"volumesfrom":["{binds}:ro"]}}"#),
    ] {
        refuse_create(
            &mut s,
            &c,
            &run,
            &members,
            403,
            "forbidden by agent policy: deny_host_mounts",
        );
    }
    refuse_catalog(
        &mut s,
        &c,
        &run,
        json!({"docker": {"HostConfig": {"VolumesFrom": [binds]}}}),
        "deny_host_mounts",
    );
    // From a container with only a volume, it is fine, and sent by id.
    let vol = unique("escape-vol");
    op(&c, "volume.create", json!({"name": vol})).unwrap();
    cleanup.volume(&vol);
    let (data_id, data) = direct_container(
        &c,
        &mut cleanup,
        &run,
        json!({"Binds": [format!("{vol}:/data")]}),
        json!({}),
        false,
    );
    let id = allowed_create(
        &mut s,
        &mut cleanup,
        &run,
        &format!(r#""HostConfig":{{"VolumesFrom":["{data}:ro"]}}"#),
    );
    let v = op(&c, "container.inspect", json!({"id": id})).unwrap();
    assert_eq!(
        v["HostConfig"]["VolumesFrom"],
        json!([format!("{data_id}:ro")])
    );
}

#[test]
fn old_api_versions_and_start_bodies_cannot_set_a_host_config() {
    // These hold whatever the policy says.
    let mut s = start(|_| {});
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    let (id, _) = direct_container(&c, &mut cleanup, &run, json!({}), json!({}), false);
    let body = br#"{"Privileged":true,"Binds":["/:/host"],"PidMode":"host"}"#;
    s.refused_stream(
        Request::json("POST", &format!("/v1.23/containers/{id}/start"), body),
        400,
        "oldest",
    );
    s.refused_stream(
        Request::json("POST", &format!("/v1.41/containers/{id}/start"), body),
        400,
        "start",
    );
    s.refused_stream(Request::get("/v1.12/containers/json"), 400, "oldest");
    let v = op(&c, "container.inspect", json!({"id": id})).unwrap();
    assert_eq!(v["State"]["Running"], false);
    assert_eq!(v["HostConfig"]["Privileged"], false);
    assert!(v["HostConfig"]["Binds"].is_null());
    // A start without a body works.
    let r = s.t.request(Request::new(
        "POST",
        &format!("/v1.41/containers/{id}/start"),
    ));
    assert_eq!(r.status, Some(204), "{}", message(&r));
    assert_eq!(assert_confined(&c, &run), 1);
}

#[test]
fn read_only_allows_only_reads() {
    let mut s = start(|c| c.policy.read_only = true);
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    let (id, _) = direct_container(&c, &mut cleanup, &run, json!({}), json!({}), true);
    assert!(s.command("container.list", json!({"all": true})).is_ok());
    assert!(s.command("container.logs", json!({"id": id})).is_ok());
    let r =
        s.t.request(Request::get(&format!("/v1.41/containers/{id}/json")));
    assert_eq!(r.status, Some(200));
    refuse_create(
        &mut s,
        &c,
        &run,
        r#""HostConfig":{}"#,
        403,
        "forbidden by agent policy: read_only",
    );
    refuse_catalog(&mut s, &c, &run, json!({}), "read_only");
    s.forbidden_op("container.stop", json!({"id": id}), "read_only");
    s.forbidden_stream(
        Request::new("POST", &format!("/v1.41/containers/{id}/kill")),
        "read_only",
    );
    s.forbidden_stream(
        Request::new("DELETE", &format!("/v1.41/containers/{id}")),
        "read_only",
    );
    s.forbidden_stream(
        Request::json(
            "POST",
            &format!("/v1.41/containers/{id}/exec"),
            br#"{"Cmd":["true"]}"#,
        ),
        "read_only",
    );
    let vol = unique("escape-ro-vol");
    s.forbidden_op("volume.create", json!({"name": vol}), "read_only");
    assert_eq!(
        op(&c, "volume.inspect", json!({"id": vol}))
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    let v = op(&c, "container.inspect", json!({"id": id})).unwrap();
    assert_eq!(v["State"]["Running"], true, "still running");
}

/// A one-file tar archive.
fn tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, n: usize| {
        let s = format!("{n:0w$o}\0", w = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, data.len());
    octal(&mut h, 136, 12, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: usize = h.iter().map(|&b| b as usize).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c[key].as_str().map(str::to_string))
        .collect()
}

#[test]
fn label_scope_covers_every_endpoint_that_names_a_container() {
    let ns = unique("ns");
    let ns2 = ns.clone();
    let mut s = start(move |c| {
        c.policy
            .container_labels
            .insert("docker-ctl-scope".into(), ns2);
    });
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ours = s
        .command(
            "container.create",
            json!({"name": unique("escape-ours"), "image": IMAGE, "cmd": ["sleep", "300"], "labels": {MARK: run}}),
        )
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&ours);
    s.command("container.start", json!({"id": ours})).unwrap();
    let (victim_id, victim) = direct_container(&c, &mut cleanup, &run, json!({}), json!({}), true);
    let (stopped_id, _) = direct_container(&c, &mut cleanup, &run, json!({}), json!({}), false);

    // Lists, whatever encoding the filters key comes in.
    let r = s.t.request(Request::get(
        "/v1.41/containers/json?all=1&%66ilters=%7B%7D",
    ));
    assert_eq!(ids(&json_of(&r), "Id"), vec![ours.clone()]);
    assert_eq!(
        ids(
            &s.command("container.list", json!({"all": true})).unwrap(),
            "id"
        ),
        vec![ours.clone()]
    );
    // Events.
    let until = since + 3;
    let r = s.t.request(Request::get(&format!(
        "/v1.41/events?since={since}&until={until}&%66ilters=%7B%7D"
    )));
    let text = String::from_utf8_lossy(&r.data).into_owned();
    assert!(text.contains(&ours), "our start event: {text}");
    assert!(!text.contains(&victim_id), "{text}");
    // Prune: a form-encoded body (which dockerd reads before the query) is refused; a
    // prune of this run's containers leaves those outside the scope.
    let run_filter = format!(r#"{{"label":["{MARK}={run}"]}}"#);
    let form = format!("filters={}", protocol::mapping::percent_encode(&run_filter));
    let mut req = Request::new("POST", "/v1.41/containers/prune");
    req.headers = vec![(
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    )];
    req.body = Some(form.as_bytes());
    s.refused_stream(req, 400, "form-encoded");
    let path = format!(
        "/v1.41/containers/prune?%66ilters={}",
        protocol::mapping::percent_encode(&run_filter)
    );
    let r = s.t.request(Request::new("POST", &path));
    assert_eq!(r.status, Some(200), "{}", message(&r));
    assert!(op(&c, "container.inspect", json!({"id": stopped_id})).is_ok());
    // Commit, with the container key encoded.
    let repo = unique("escape-commit");
    s.forbidden_stream(
        Request::new(
            "POST",
            &format!("/v1.41/commit?%63ontainer={victim}&repo={repo}"),
        ),
        "container_labels",
    );
    assert_eq!(
        op(&c, "image.inspect", json!({"id": repo}))
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    // Archive (stat, read, write), export, exec.
    let archive = format!("/v1.41/containers/{victim}/archive?path=/");
    s.forbidden_stream(Request::new("HEAD", &archive), "container_labels");
    s.forbidden_stream(Request::get(&archive), "container_labels");
    let body = tar("escape-proof", b"written through the agent");
    let mut put = Request::new("PUT", &archive);
    put.headers = vec![("Content-Type".into(), "application/x-tar".into())];
    put.body = Some(&body);
    s.forbidden_stream(put, "container_labels");
    let (st, _) = raw(
        &c,
        Method::Head,
        &format!("/containers/{victim_id}/archive?path=/escape-proof"),
        None,
    );
    assert_eq!(st, 404, "the file must not exist in the victim");
    s.forbidden_stream(
        Request::get(&format!("/v1.41/containers/{victim}/export")),
        "container_labels",
    );
    s.forbidden_stream(
        Request::json(
            "POST",
            &format!("/v1.41/containers/{victim}/exec"),
            br#"{"Cmd":["true"]}"#,
        ),
        "container_labels",
    );
    s.forbidden_op(
        "container.inspect",
        json!({"id": victim}),
        "container_labels",
    );

    // Network connect and disconnect name the container in the body.
    let net = unique("escape-net");
    op(&c, "network.create", json!({"name": net})).unwrap();
    cleanup.network(&net);
    let connect = format!("/v1.41/networks/{net}/connect");
    let body = format!(r#"{{"container":"{victim}"}}"#);
    s.forbidden_stream(
        Request::json("POST", &connect, body.as_bytes()),
        "container_labels",
    );
    s.forbidden_op(
        "network.connect",
        json!({"id": net, "container": victim}),
        "container_labels",
    );
    let v = op(&c, "container.inspect", json!({"id": victim_id})).unwrap();
    assert!(
        v["NetworkSettings"]["Networks"].get(&net).is_none(),
        "victim connected"
    );
    op(
        &c,
        "network.connect",
        json!({"id": net, "container": victim_id}),
    )
    .unwrap();
    let body = format!(r#"{{"Container":"{victim}","Force":true}}"#);
    s.forbidden_stream(
        Request::json(
            "POST",
            &format!("/v1.41/networks/{net}/disconnect"),
            body.as_bytes(),
        ),
        "container_labels",
    );
    let v = op(&c, "container.inspect", json!({"id": victim_id})).unwrap();
    assert!(
        v["NetworkSettings"]["Networks"].get(&net).is_some(),
        "victim disconnected"
    );
    s.command("network.connect", json!({"id": net, "container": ours}))
        .unwrap();
    // Answers that name containers show ours only.
    let r = s.t.request(Request::get(&format!("/v1.41/networks/{net}")));
    let attached: Vec<String> = json_of(&r)["Containers"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(attached, vec![ours.clone()]);
    let v = s.command("network.inspect", json!({"id": net})).unwrap();
    assert_eq!(
        v["Containers"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec![&ours]
    );
    let r = s.t.request(Request::get("/v1.41/system/df"));
    assert_eq!(ids(&json_of(&r)["Containers"], "Id"), vec![ours.clone()]);
    let v = s.command("system.df", json!({})).unwrap();
    assert_eq!(ids(&v["Containers"], "Id"), vec![ours.clone()]);

    // Creates that reference a container outside the scope.
    let links = format!(
        r#""HostConfig":{{}},"NetworkingConfig":{{"EndpointsConfig":{{"{net}":{{"Links":["{victim}:v"]}}}}}}"#
    );
    for members in [
        format!(r#""HostConfig":{{"NetworkMode":"container:{victim}"}}"#),
        format!(r#""HostConfig":{{"PidMode":"container:{victim}"}}"#),
        format!(r#""HostConfig":{{"IpcMode":"container:{victim}"}}"#),
        format!(r#""HostConfig":{{"VolumesFrom":["{victim}:ro"]}}"#),
        format!(r#""hostconfig":{{"links":["{victim}:v"]}}"#),
        links,
    ] {
        refuse_create(
            &mut s,
            &c,
            &run,
            &members,
            403,
            "forbidden by agent policy: container_labels",
        );
    }
    refuse_catalog(
        &mut s,
        &c,
        &run,
        json!({"network": format!("container:{victim}")}),
        "container_labels",
    );
    refuse_catalog(
        &mut s,
        &c,
        &run,
        json!({"docker": {"HostConfig": {"VolumesFrom": [victim]}}}),
        "container_labels",
    );
    // The victim is untouched.
    let v = op(&c, "container.inspect", json!({"id": victim_id})).unwrap();
    assert_eq!(v["State"]["Running"], true);
}

type Hook = Box<dyn FnOnce() + Send>;

/// A proxy in front of dockerd that runs `hook` once, just before it forwards the first
/// request whose head contains `trigger`, and records every request head it forwards.
struct RaceProxy {
    path: std::path::PathBuf,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RaceProxy {
    fn start(trigger: &'static str, hook: impl FnOnce() + Send + 'static) -> RaceProxy {
        use std::io::{Read, Write};
        use std::os::unix::net::{UnixListener, UnixStream};
        use std::sync::{Arc, Mutex};
        let path = std::env::temp_dir().join(format!("{}.sock", unique("escape-race")));
        let listener = UnixListener::bind(&path).unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let hook: Arc<Mutex<Option<Hook>>> = Arc::new(Mutex::new(Some(Box::new(hook))));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for agent in listener.incoming() {
                let Ok(agent) = agent else { return };
                let Ok(daemon) = UnixStream::connect(common::docker::SOCKET) else {
                    continue;
                };
                let (mut from_agent, mut to_daemon) =
                    (agent.try_clone().unwrap(), daemon.try_clone().unwrap());
                let (mut from_daemon, mut to_agent) = (daemon, agent);
                let (hook, seen) = (hook.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from_agent.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if text.contains(" HTTP/1.1\r\n") {
                            if text.contains(trigger) {
                                if let Some(h) = hook.lock().unwrap().take() {
                                    h();
                                }
                            }
                            seen.lock()
                                .unwrap()
                                .push(text.lines().next().unwrap_or("").into());
                        }
                        if to_daemon.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_daemon.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_daemon, &mut to_agent);
                    let _ = to_agent.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        RaceProxy { path, heads }
    }
}

impl Drop for RaceProxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn a_rename_between_check_and_forward_cannot_redirect_a_request() {
    let ns = unique("ns");
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let run = unique("run");
    let (ours_id, ours) = direct_container(
        &c,
        &mut cleanup,
        &run,
        json!({}),
        json!({"docker-ctl-scope": ns}),
        true,
    );
    let (victim_id, victim) = direct_container(&c, &mut cleanup, &run, json!({}), json!({}), true);
    // Once the agent has inspected `ours` and is about to send the stop, the names swap:
    // the victim now answers to the name the request was made with.
    let (a, b) = (ours.clone(), victim.clone());
    let proxy = RaceProxy::start("/stop", move || {
        let c = client();
        let tmp = format!("{a}-old");
        op(&c, "container.rename", json!({"id": a, "name": tmp})).unwrap();
        op(&c, "container.rename", json!({"id": b, "name": a})).unwrap();
    });
    let socket = format!("unix://{}", proxy.path.display());
    let ns2 = ns.clone();
    let mut s = start(move |cfg| {
        cfg.docker.socket = socket;
        cfg.policy
            .container_labels
            .insert("docker-ctl-scope".into(), ns2);
    });
    let r = s.t.request(Request::new(
        "POST",
        &format!("/v1.41/containers/{ours}/stop?t=0"),
    ));
    assert_eq!(r.status, Some(204), "{}", message(&r));
    let sent: Vec<String> = proxy.heads.lock().unwrap().clone();
    let stop = sent
        .iter()
        .find(|h| h.contains("/stop"))
        .unwrap_or_else(|| panic!("no stop went through: {sent:?}"));
    assert!(stop.contains(&ours_id), "the stop is sent by id: {stop}");
    // dockerd: the container that was checked stopped; the victim, now named like it, runs.
    let v = op(&c, "container.inspect", json!({"id": victim_id})).unwrap();
    assert_eq!(v["Name"], format!("/{ours}"), "the names were swapped");
    assert_eq!(v["State"]["Running"], true, "the victim must keep running");
    let v = op(&c, "container.inspect", json!({"id": ours_id})).unwrap();
    assert_eq!(v["State"]["Running"], false);
}
