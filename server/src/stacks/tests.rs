//! Tests of the whole path: parse, check, translate, reconcile.

use super::engine::*;
use super::plan::*;
use super::reconcile::*;
use super::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn plan_of(yaml: &str) -> StackPlan {
    match parse("app", yaml, &BTreeMap::new()) {
        Ok(s) => s.plan(),
        Err(e) => panic!("{e}"),
    }
}

fn errors_of(yaml: &str) -> ComposeErrors {
    parse("app", yaml, &BTreeMap::new()).expect_err("the file should be refused")
}

fn body(plan: &StackPlan, service: &str) -> Value {
    plan.service(service).expect("service").body()
}

const FULL: &str = r#"
name: app
services:
  web:
    image: nginx:1.25
    command: nginx -g 'daemon off;'
    entrypoint: ["/docker-entrypoint.sh"]
    environment:
      - MODE=prod
      - EMPTY=
      - FROM_ENV
    ports:
      - "8080:80"
      - "127.0.0.1:8443:443/tcp"
      - "9000-9001:9000-9001/udp"
      - 53
      - target: 5000
        published: 5001
        host_ip: "::1"
        protocol: tcp
        mode: host
    volumes:
      - data:/var/lib/data:ro,nocopy
      - /srv/conf:/etc/conf:ro,z
      - type: bind
        source: /srv/strict
        target: /strict
        bind: {create_host_path: false, propagation: rslave}
      - type: tmpfs
        target: /cache
        tmpfs: {size: 64m}
    tmpfs: ["/run:size=16m", /tmp]
    networks:
      front: {aliases: [www]}
      back:
    restart: on-failure:3
    labels: {tier: web, "empty": ""}
    depends_on:
      db: {condition: service_healthy}
      cache:
    healthcheck:
      test: curl -f http://localhost/
      interval: 10s
      timeout: 2s
      retries: 5
      start_period: 1m
    user: "1000:1000"
    working_dir: /srv
    cap_add: [NET_ADMIN, CHOWN, NET_ADMIN]
    cap_drop: [ALL]
    devices: ["/dev/fuse", "/dev/ttyUSB0:/dev/ttyS0:rw"]
    privileged: "false"
    read_only: true
    logging: {driver: json-file, options: {max-size: 10m, max-file: 3}}
    deploy: {resources: {limits: {cpus: "1.5", memory: 512m}}}
    extra_hosts: ["gw:10.0.0.1", "v6=::1"]
    dns: 1.1.1.1
    hostname: web01
    stop_grace_period: 1m30s
    init: true
    pull_policy: always
  db:
    image: postgres:16
    environment: {POSTGRES_PASSWORD: secret, PORT: 5432, DEBUG: false}
    healthcheck:
      test: ["CMD", "pg_isready"]
    networks: [back]
    mem_limit: 1g
    cpus: 2
    container_name: the-db
  cache:
    image: redis
    network_mode: host
    command: [redis-server, --save, ""]
    healthcheck: {disable: true}
    pull_policy: never
  job:
    image: busybox
    entrypoint: ""
networks:
  front: {driver: bridge, driver_opts: {com.docker.network.bridge.name: br-front}, labels: [team=ops]}
  back: {}
  shared: {external: true, name: corp-net}
volumes:
  data: {labels: {keep: "yes"}}
  ext: {external: true}
x-notes: {anything: [goes, here]}
"#;

#[test]
fn every_supported_key_translates_to_the_engine_api() {
    let stack = parse("app", FULL, &env(&[("FROM_ENV", "v")])).unwrap();
    let plan = stack.plan();
    let web = body(&plan, "web");
    let want = json!({
        "Image": "nginx:1.25",
        "Cmd": ["nginx", "-g", "daemon off;"],
        "Entrypoint": ["/docker-entrypoint.sh"],
        "Env": ["EMPTY=", "FROM_ENV=v", "MODE=prod"],
        "ExposedPorts": {"443/tcp": {}, "5000/tcp": {}, "53/tcp": {}, "80/tcp": {}, "9000/udp": {}, "9001/udp": {}},
        "User": "1000:1000",
        "WorkingDir": "/srv",
        "Hostname": "web01",
        "Healthcheck": {
            "Test": ["CMD-SHELL", "curl -f http://localhost/"],
            "Interval": 10_000_000_000u64, "Timeout": 2_000_000_000u64, "Retries": 5,
            "StartPeriod": 60_000_000_000u64,
        },
        "StopTimeout": 90,
        "HostConfig": {
            "NetworkMode": "app_back",
            "PortBindings": {
                "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                "443/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8443"}],
                "9000/udp": [{"HostIp": "", "HostPort": "9000"}],
                "9001/udp": [{"HostIp": "", "HostPort": "9001"}],
                "53/tcp": [{"HostIp": "", "HostPort": ""}],
                "5000/tcp": [{"HostIp": "::1", "HostPort": "5001"}],
            },
            "Binds": ["/srv/conf:/etc/conf:ro,z"],
            "Mounts": [
                {"Type": "tmpfs", "Target": "/cache", "TmpfsOptions": {"SizeBytes": 67108864}},
                {"Type": "bind", "Source": "/srv/strict", "Target": "/strict", "BindOptions": {"Propagation": "rslave"}},
                {"Type": "volume", "Source": "app_data", "Target": "/var/lib/data", "ReadOnly": true, "VolumeOptions": {"NoCopy": true}},
            ],
            "Tmpfs": {"/run": "size=16m", "/tmp": ""},
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
            "CapAdd": ["CHOWN", "NET_ADMIN"],
            "CapDrop": ["ALL"],
            "Devices": [
                {"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse", "CgroupPermissions": "rwm"},
                {"PathOnHost": "/dev/ttyUSB0", "PathInContainer": "/dev/ttyS0", "CgroupPermissions": "rw"},
            ],
            "ReadonlyRootfs": true,
            "LogConfig": {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}},
            "Memory": 536870912,
            "NanoCpus": 1_500_000_000,
            "ExtraHosts": ["gw:10.0.0.1", "v6:::1"],
            "Dns": ["1.1.1.1"],
            "Init": true,
        },
        "NetworkingConfig": {"EndpointsConfig": {"app_back": {"Aliases": ["app-web-1", "web"]}}},
    });
    let mut without_labels = web.clone();
    let labels = without_labels
        .as_object_mut()
        .unwrap()
        .remove("Labels")
        .unwrap();
    assert_eq!(without_labels, want);
    let hash = plan.service("web").unwrap().config_hash.clone();
    assert_eq!(
        labels,
        json!({
            "tier": "web", "empty": "",
            "com.docker.compose.project": "app",
            "com.docker.compose.service": "web",
            "com.docker.compose.container-number": "1",
            "com.docker.compose.oneoff": "False",
            "com.docker.compose.config-hash": hash,
            "com.docker.compose.depends_on": "cache:service_started:false,db:service_healthy:false",
        })
    );
    let w = plan.service("web").unwrap();
    assert_eq!(w.container_name, "app-web-1");
    assert_eq!(w.pull_policy, PullPolicy::Always);
    assert_eq!(
        w.connect,
        vec![Attachment {
            network: "app_front".into(),
            aliases: vec!["app-web-1".into(), "web".into(), "www".into()],
        }]
    );
    assert_eq!(
        w.depends_on,
        vec![
            Dependency {
                service: "cache".into(),
                condition: Condition::ServiceStarted
            },
            Dependency {
                service: "db".into(),
                condition: Condition::ServiceHealthy
            },
        ]
    );
    assert!(stack.warnings().is_empty(), "{:?}", stack.warnings());
}

#[test]
fn the_other_services_of_the_full_file() {
    let plan = plan_of(FULL);
    let db = body(&plan, "db");
    assert_eq!(
        db["Env"],
        json!(["DEBUG=false", "PORT=5432", "POSTGRES_PASSWORD=secret"])
    );
    assert_eq!(db["HostConfig"]["Memory"], json!(1 << 30));
    assert_eq!(db["HostConfig"]["NanoCpus"], json!(2_000_000_000u64));
    assert_eq!(db["Healthcheck"], json!({"Test": ["CMD", "pg_isready"]}));
    assert_eq!(
        db["NetworkingConfig"]["EndpointsConfig"]["app_back"]["Aliases"],
        json!(["the-db", "db"])
    );
    assert_eq!(plan.service("db").unwrap().container_name, "the-db");
    assert!(db["HostConfig"].get("Privileged").is_none());
    let cache = body(&plan, "cache");
    assert_eq!(cache["HostConfig"]["NetworkMode"], "host");
    assert!(cache.get("NetworkingConfig").is_none());
    assert_eq!(cache["Cmd"], json!(["redis-server", "--save", ""]));
    assert_eq!(cache["Healthcheck"], json!({"Test": ["NONE"]}));
    assert_eq!(
        plan.service("cache").unwrap().pull_policy,
        PullPolicy::Never
    );
    assert!(plan.service("cache").unwrap().connect.is_empty());
    let job = body(&plan, "job");
    assert_eq!(job["Entrypoint"], json!([""]));
    assert_eq!(job["HostConfig"]["NetworkMode"], "app_default");
    assert_eq!(
        plan.service("job").unwrap().pull_policy,
        PullPolicy::Missing
    );
}

#[test]
fn networks_and_volumes_carry_compose_names_and_labels() {
    let plan = plan_of(FULL);
    let nets: Vec<(&str, &str, bool)> = plan
        .networks
        .iter()
        .map(|n| (n.key.as_str(), n.name.as_str(), n.external))
        .collect();
    assert_eq!(
        nets,
        [
            ("back", "app_back", false),
            ("default", "app_default", false),
            ("front", "app_front", false),
            ("shared", "corp-net", true),
        ]
    );
    let front = plan.networks[2].create.clone().unwrap();
    assert_eq!(front.name, "app_front");
    assert_eq!(front.driver.as_deref(), Some("bridge"));
    assert_eq!(
        front.labels,
        BTreeMap::from([
            (
                "com.docker.compose.network".to_string(),
                "front".to_string()
            ),
            ("com.docker.compose.project".to_string(), "app".to_string()),
            ("team".to_string(), "ops".to_string()),
        ])
    );
    assert_eq!(front.options["com.docker.network.bridge.name"], "br-front");
    assert!(plan.networks[3].create.is_none());
    let vols: Vec<(&str, &str, bool)> = plan
        .volumes
        .iter()
        .map(|v| (v.key.as_str(), v.name.as_str(), v.external))
        .collect();
    assert_eq!(
        vols,
        [("data", "app_data", false), ("ext", "app_ext", true)]
    );
    let data = plan.volumes[0].create.clone().unwrap();
    assert_eq!(data.name.as_deref(), Some("app_data"));
    assert_eq!(data.labels["com.docker.compose.volume"], "data");
    assert_eq!(data.labels["com.docker.compose.project"], "app");
    assert_eq!(data.labels["keep"], "yes");
}

#[test]
fn services_come_in_dependency_order() {
    let plan = plan_of(FULL);
    let order: Vec<&str> = plan.services.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(order, ["cache", "db", "job", "web"]);
    let plan = plan_of(
        "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n  c: {image: x}\n  d: {image: x, depends_on: [a]}\n",
    );
    let order: Vec<&str> = plan.services.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(order, ["c", "b", "a", "d"]);
}

#[test]
fn interpolation_runs_before_the_typed_parse() {
    let yaml = r#"
services:
  web:
    image: ${IMAGE:-busybox}:${TAG?set TAG}
    privileged: ${PRIV:-false}
    ports: ["${PORT}:80"]
    environment: {PRICE: "$$5", GREETING: "hi $NAME"}
    healthcheck: {test: "true", retries: "${RETRIES}"}
"#;
    let e = env(&[("TAG", "1.36"), ("PORT", "8081"), ("RETRIES", "4")]);
    let stack = parse("app", yaml, &e).unwrap();
    let b = stack.plan().service("web").unwrap().body();
    assert_eq!(b["Image"], "busybox:1.36");
    assert!(b["HostConfig"].get("Privileged").is_none());
    assert_eq!(
        b["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"],
        "8081"
    );
    assert_eq!(b["Env"], json!(["GREETING=hi ", "PRICE=$5"]));
    assert_eq!(b["Healthcheck"]["Retries"], 4);
    assert_eq!(
        stack.warnings(),
        ["variable NAME is not set: it was replaced by an empty string"]
    );
    let errs = parse("app", yaml, &env(&[("PORT", "1"), ("RETRIES", "1")])).unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "services.web.image");
    assert_eq!(errs.0[0].kind, ErrorKind::Interpolation);
    assert!(errs.0[0]
        .message
        .contains("TAG is missing a value: set TAG"));
}

#[test]
fn every_unsupported_key_is_listed_with_its_path() {
    let yaml = r#"
version: "3.8"
services:
  web:
    image: x
    build: .
    secrets: [pw]
    env_file: .env
    ports:
      - {target: 80, name: http}
    volumes:
      - {type: volume, source: data, target: /d, consistency: cached, volume: {subpath: a}}
    networks:
      back: {ipv4_address: 10.0.0.2}
    depends_on:
      db: {condition: service_healthy, restart: true}
    healthcheck: {test: "true", start_interval: 1s}
    deploy: {replicas: 2, resources: {reservations: {memory: 1g}}}
    logging: {driver: local, format: x}
    x-custom: fine
  db:
    image: x
    profiles: [debug]
secrets:
  pw: {file: ./pw}
configs: {}
networks:
  back: {ipam: {driver: default}, x-note: fine}
volumes:
  data: {driver_opts: {type: none}, extra: 1}
"#;
    let errs = errors_of(yaml);
    let mut paths = errs.unsupported();
    paths.sort();
    assert_eq!(
        paths,
        [
            "configs",
            "networks.back.ipam",
            "secrets",
            "services.db.profiles",
            "services.web.build",
            "services.web.depends_on.db.restart",
            "services.web.deploy.replicas",
            "services.web.deploy.resources.reservations",
            "services.web.env_file",
            "services.web.healthcheck.start_interval",
            "services.web.logging.format",
            "services.web.networks.back.ipv4_address",
            "services.web.ports[0].name",
            "services.web.secrets",
            "services.web.volumes[0].consistency",
            "services.web.volumes[0].volume.subpath",
            "volumes.data.extra",
        ]
    );
    assert!(
        errs.iter().all(|e| e.kind == ErrorKind::Unsupported),
        "{errs}"
    );
    let shown = errs.to_string();
    assert!(
        shown.contains("services.web.build: not supported"),
        "{shown}"
    );
}

#[test]
fn invalid_values_are_reported_with_paths() {
    let yaml = r#"
services:
  web:
    image: "bad image"
    privileged: maybe
    ports: ["99999:80", "1:2:3:4", "80/icmp", "8000-8002:80-81"]
    volumes: ["/data", "./rel:/x", "v:relative", "data:/x:zz"]
    restart: sometimes
    pull_policy: build
    stop_grace_period: 10
    mem_limit: lots
    cpus: -1
    network_mode: "service:db"
    extra_hosts: ["nohost"]
    devices: ["tty"]
    labels: {com.docker.compose.project: other}
    healthcheck: {test: [echo, hi]}
    command: "echo 'open"
    working_dir: relative
    cap_add: NET_ADMIN
"#;
    let errs = errors_of(yaml);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "services.web.image",
        "services.web.privileged",
        "services.web.ports[0]",
        "services.web.ports[1]",
        "services.web.ports[2]",
        "services.web.ports[3]",
        "services.web.volumes[0]",
        "services.web.volumes[1]",
        "services.web.volumes[2]",
        "services.web.volumes[3]",
        "services.web.restart",
        "services.web.pull_policy",
        "services.web.stop_grace_period",
        "services.web.mem_limit",
        "services.web.cpus",
        "services.web.network_mode",
        "services.web.extra_hosts[0]",
        "services.web.devices[0]",
        "services.web.labels.com.docker.compose.project",
        "services.web.healthcheck.test",
        "services.web.command",
        "services.web.working_dir",
        "services.web.cap_add",
    ] {
        assert!(paths.contains(&want), "{want} missing from {errs}");
    }
    assert!(errs.iter().all(|e| e.kind == ErrorKind::Invalid), "{errs}");
    let anon = errs
        .iter()
        .find(|e| e.path == "services.web.volumes[0]")
        .unwrap();
    assert!(anon.message.contains("anonymous volume"), "{anon}");
    let rel = errs
        .iter()
        .find(|e| e.path == "services.web.volumes[1]")
        .unwrap();
    assert!(rel.message.contains("relative bind path"), "{rel}");
}

#[test]
fn structural_errors_name_their_paths() {
    let yaml = r#"
name: other
services:
  a: {image: x, depends_on: [b], networks: [nowhere]}
  b: {image: x, depends_on: [c]}
  c: {image: x, depends_on: {a: {condition: service_started}}}
  d: {depends_on: [ghost, d], volumes: ["missing:/m"]}
  e: {image: x, network_mode: host, networks: [n]}
  f: {image: x, container_name: app-a-1}
  g: {image: x, depends_on: {h: {condition: service_healthy}}}
  h: {image: x, healthcheck: {disable: true}}
networks: {n: {}}
"#;
    let errs = errors_of(yaml);
    let find = |p: &str| {
        errs.iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("{p} missing from {errs}"))
            .clone()
    };
    assert_eq!(find("name").kind, ErrorKind::Name);
    assert_eq!(
        find("services.a.networks.nowhere").kind,
        ErrorKind::Reference
    );
    let cycle = find("services.a.depends_on");
    assert_eq!(cycle.kind, ErrorKind::Cycle);
    assert_eq!(cycle.message, "depends_on forms a cycle: a -> b -> c -> a");
    assert_eq!(
        errs.iter()
            .filter(|e| e.kind == ErrorKind::Cycle && e.message.contains("->"))
            .count(),
        1
    );
    assert_eq!(find("services.d.image").kind, ErrorKind::Missing);
    assert_eq!(
        find("services.d.depends_on.ghost").kind,
        ErrorKind::Reference
    );
    assert_eq!(find("services.d.depends_on.d").kind, ErrorKind::Cycle);
    assert_eq!(find("services.d.volumes[0]").kind, ErrorKind::Reference);
    assert_eq!(find("services.e.networks").kind, ErrorKind::Invalid);
    let clash = errs
        .iter()
        .find(|e| e.kind == ErrorKind::Name && e.path.ends_with("container_name"))
        .unwrap_or_else(|| panic!("no name clash in {errs}"));
    assert!(clash.message.contains("app-a-1"));
    assert!(find("services.g.depends_on.h").message.contains("disabled"));
}

#[test]
fn project_names_and_documents_are_checked() {
    let ok = "services: {a: {image: x}}\n";
    for bad in ["", "App", "-app", "a.b", "a b", &"a".repeat(64)] {
        let e = parse(bad, ok, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.0[0].kind, ErrorKind::Name, "{bad:?}");
    }
    for good in ["app", "my_app-2", "0x"] {
        assert!(parse(good, ok, &BTreeMap::new()).is_ok(), "{good}");
    }
    for (text, kind) in [
        ("", ErrorKind::Yaml),
        ("[1]", ErrorKind::Yaml),
        ("services: [a]", ErrorKind::Invalid),
        ("networks: {}", ErrorKind::Missing),
        ("services: {a: 5}", ErrorKind::Invalid),
        ("services: {'bad name': {image: x}}", ErrorKind::Name),
    ] {
        let e = parse("app", text, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.0[0].kind, kind, "{text}: {e}");
    }
}

#[test]
fn short_and_long_syntaxes_give_the_same_body() {
    let short = r#"
services:
  web:
    image: x
    environment: [A=1, B=2]
    labels: [l=v]
    ports: ["127.0.0.1:8080:80/udp"]
    volumes: ["data:/d:ro", "/h:/c"]
    networks: [n]
    depends_on: [db]
  db: {image: x}
networks: {n: }
volumes: {data: }
"#;
    let long = r#"
services:
  db: {image: x}
  web:
    depends_on: {db: {condition: service_started}}
    networks: {n: {}}
    volumes:
      - {type: bind, source: /h, target: /c}
      - {type: volume, source: data, target: /d, read_only: true}
    ports: [{target: 80, published: "8080", host_ip: 127.0.0.1, protocol: udp}]
    labels: {l: v}
    environment: {B: "2", A: 1}
    image: x
volumes: {data: {}}
networks: {n: {}}
"#;
    let (a, b) = (plan_of(short), plan_of(long));
    assert_eq!(
        a.service("web").unwrap().body(),
        b.service("web").unwrap().body()
    );
    assert_eq!(
        a.service("web").unwrap().config_hash,
        b.service("web").unwrap().config_hash
    );
}

#[test]
fn the_hash_follows_the_translated_config_only() {
    let yaml = "services:\n  a:\n    image: x\n    environment: {A: $A}\n  b:\n    image: x\n    environment: {B: $B}\n";
    let hashes = |e: &[(&str, &str)]| {
        let plan = parse("app", yaml, &env(e)).unwrap().plan();
        (
            plan.service("a").unwrap().config_hash.clone(),
            plan.service("b").unwrap().config_hash.clone(),
        )
    };
    let base = hashes(&[("A", "1"), ("B", "2")]);
    assert_eq!(base, hashes(&[("B", "2"), ("A", "1"), ("UNUSED", "x")]));
    let changed = hashes(&[("A", "9"), ("B", "2")]);
    assert_ne!(base.0, changed.0);
    assert_eq!(base.1, changed.1);
    // The hash is the label's value, and 64 hex digits.
    let plan = parse("app", yaml, &env(&[("A", "1")])).unwrap().plan();
    let a = plan.service("a").unwrap();
    assert_eq!(a.create.labels[LABEL_CONFIG_HASH], a.config_hash);
    assert_eq!(a.config_hash.len(), 64);
    // depends_on changes the label but not the hash, as with compose.
    let with_dep = plan_of("services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x}\n");
    let without = plan_of("services:\n  a: {image: x}\n  b: {image: x}\n");
    assert_eq!(
        with_dep.service("a").unwrap().config_hash,
        without.service("a").unwrap().config_hash
    );
}

#[test]
fn merge_keys_and_extensions_work() {
    let yaml = r#"
x-common: &common
  image: busybox
  restart: always
services:
  a:
    <<: *common
    command: sleep 1
  b:
    <<: *common
    restart: "no"
"#;
    let plan = plan_of(yaml);
    assert_eq!(
        body(&plan, "a")["HostConfig"]["RestartPolicy"]["Name"],
        "always"
    );
    assert_eq!(
        body(&plan, "b")["HostConfig"]["RestartPolicy"]["Name"],
        "no"
    );
}

#[test]
fn debug_output_hides_environment_values() {
    let plan = plan_of("services:\n  a:\n    image: x\n    environment: {PASSWORD: hunter2}\n");
    let shown = format!("{plan:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("PASSWORD=***"));
    let steps = reconcile(&plan, &Observed::default());
    assert!(!format!("{steps:?}").contains("hunter2"));
}

// ---- reconcile ----

const STACK: &str = r#"
services:
  db:
    image: busybox
    healthcheck: {test: "true", interval: 1s, timeout: 1s, retries: 2}
    networks: [back]
    volumes: ["data:/data"]
  api:
    image: busybox
    depends_on: {db: {condition: service_healthy}}
    networks: [back, front]
  web:
    image: busybox
    depends_on: [api]
    networks: [front]
networks: {back: {}, front: {}, ext: {external: true}}
volumes: {data: {}}
"#;

/// What a host would list after the plan was applied.
fn applied(plan: &StackPlan) -> Observed {
    let containers = plan
        .services
        .iter()
        .map(|s| ObservedContainer {
            id: format!("id-{}", s.service),
            name: s.container_name.clone(),
            image: s.image.clone(),
            labels: s.create.labels.clone(),
            state: "running".into(),
            health: None,
            networks: s
                .create
                .networking_config
                .iter()
                .flat_map(|n| n.endpoints_config.keys().cloned())
                .chain(s.connect.iter().map(|a| a.network.clone()))
                .collect(),
        })
        .collect();
    let obj = |name: &str, project: bool| ObservedObject {
        name: name.into(),
        labels: if project {
            BTreeMap::from([(LABEL_PROJECT.to_string(), plan.project.clone())])
        } else {
            BTreeMap::new()
        },
    };
    Observed {
        containers,
        networks: vec![
            obj("app_back", true),
            obj("app_front", true),
            obj("app_ext", false),
        ],
        volumes: vec![obj("app_data", true)],
        images: vec!["busybox:latest".into()],
    }
}

fn described(steps: &[Step]) -> Vec<String> {
    steps.iter().map(Step::describe).collect()
}

#[test]
fn a_fresh_host_gets_everything_in_order() {
    let plan = plan_of(STACK);
    let steps = reconcile(&plan, &Observed::default());
    assert_eq!(
        described(&steps),
        [
            "create network app_back",
            "check external network app_ext",
            "create network app_front",
            "create volume app_data",
            "create container app-db-1",
            "start container app-db-1",
            "wait up to 36s for container app-db-1 to be healthy",
            "create container app-api-1",
            "connect container app-api-1 to network app_front",
            "start container app-api-1",
            "create container app-web-1",
            "start container app-web-1",
        ]
    );
    // Every step but the wait is a catalog operation that passes the catalog's checks.
    for s in &steps {
        match s.operation() {
            Some(op) => {
                let again = protocol::ops::Operation::parse(op.name(), &op.params())
                    .unwrap_or_else(|e| panic!("{}: {e:?}", s.describe()));
                assert_eq!(again.name(), op.name());
            }
            None => assert!(matches!(s, Step::WaitHealthy { .. })),
        }
    }
    let Step::CreateContainer { params, .. } = &steps[4] else {
        panic!()
    };
    assert_eq!(params.name.as_deref(), Some("app-db-1"));
    assert_eq!(
        protocol::mapping::create_body(params),
        plan.service("db").unwrap().body()
    );
}

#[test]
fn an_applied_plan_needs_nothing() {
    let plan = plan_of(STACK);
    let observed = applied(&plan);
    assert!(reconcile(&plan, &observed).is_empty());
    let d = drift(&plan, &observed);
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|x| x.state == DriftState::InSync), "{d:?}");
}

#[test]
fn only_the_changed_service_is_recreated() {
    let plan = plan_of(STACK);
    let observed = applied(&plan);
    let changed = plan_of(&STACK.replace(
        "    depends_on: [api]\n",
        "    depends_on: [api]\n    environment: {X: 1}\n",
    ));
    assert_ne!(
        plan.service("web").unwrap().config_hash,
        changed.service("web").unwrap().config_hash
    );
    assert_eq!(
        described(&reconcile(&changed, &observed)),
        [
            "stop container app-web-1",
            "remove container app-web-1",
            "create container app-web-1",
            "start container app-web-1",
        ]
    );
    let d = drift(&changed, &observed);
    let states: Vec<DriftState> = d.iter().map(|x| x.state).collect();
    assert_eq!(
        states,
        [DriftState::InSync, DriftState::InSync, DriftState::Changed]
    );
    assert!(d[2].detail.contains("config-hash"));
}

#[test]
fn a_recreated_dependent_waits_for_its_healthy_dependency() {
    let plan = plan_of(STACK);
    let mut observed = applied(&plan);
    observed.containers.retain(|c| c.name != "app-api-1");
    assert_eq!(
        described(&reconcile(&plan, &observed)),
        [
            "wait up to 36s for container app-db-1 to be healthy",
            "create container app-api-1",
            "connect container app-api-1 to network app_front",
            "start container app-api-1",
        ]
    );
    assert_eq!(drift(&plan, &observed)[1].state, DriftState::Missing);
}

#[test]
fn stopped_paused_and_hand_changed_containers() {
    let plan = plan_of(STACK);
    let mut observed = applied(&plan);
    observed.containers[0].state = "exited".into();
    observed.containers[1].state = "paused".into();
    observed.containers[2].networks = vec!["bridge".into()];
    let steps = described(&reconcile(&plan, &observed));
    assert_eq!(
        steps,
        [
            "start container app-db-1",
            "wait up to 36s for container app-db-1 to be healthy",
            "unpause container app-api-1",
            "stop container app-web-1",
            "remove container app-web-1",
            "create container app-web-1",
            "start container app-web-1",
        ]
    );
    let d = drift(&plan, &observed);
    assert_eq!(d[0].state, DriftState::Stopped);
    assert_eq!(d[1].state, DriftState::Stopped);
    assert_eq!(d[2].state, DriftState::Changed);
    assert!(d[2].detail.contains("networks"), "{}", d[2].detail);
    // Renamed by hand, or its image changed under it.
    let mut observed = applied(&plan);
    observed.containers[0].name = "renamed".into();
    observed.containers[1].image = "sha256:0123".into();
    let d = drift(&plan, &observed);
    assert_eq!(d[0].state, DriftState::Changed);
    assert_eq!(d[1].state, DriftState::Changed);
    let steps = described(&reconcile(&plan, &observed));
    assert_eq!(steps[0], "stop container renamed");
}

#[test]
fn containers_of_removed_services_and_strays_are_removed() {
    let plan = plan_of(STACK);
    let mut observed = applied(&plan);
    let mut stray = observed.containers[2].clone();
    stray.id = "id-old".into();
    stray.name = "app-old-1".into();
    stray.labels.insert(LABEL_SERVICE.into(), "old".into());
    stray.state = "exited".into();
    observed.containers.push(stray);
    let mut foreign = observed.containers[0].clone();
    foreign.name = "other-db-1".into();
    foreign.labels.insert(LABEL_PROJECT.into(), "other".into());
    observed.containers.push(foreign);
    let smaller = plan_of(&STACK.replace(
        "  web:\n    image: busybox\n    depends_on: [api]\n    networks: [front]\n",
        "",
    ));
    assert_eq!(
        described(&reconcile(&smaller, &observed)),
        [
            "remove container app-old-1",
            "stop container app-web-1",
            "remove container app-web-1",
        ]
    );
    let d = drift(&smaller, &observed);
    let extra: Vec<&str> = d
        .iter()
        .filter(|x| x.state == DriftState::Extra)
        .map(|x| x.service.as_str())
        .collect();
    assert_eq!(extra, ["old", "web"]);
}

#[test]
fn teardown_removes_containers_then_networks_then_volumes_when_asked() {
    let plan = plan_of(STACK);
    let observed = applied(&plan);
    let without = described(&teardown(&plan, &observed, false));
    assert_eq!(
        without,
        [
            "stop container app-web-1",
            "remove container app-web-1",
            "stop container app-api-1",
            "remove container app-api-1",
            "stop container app-db-1",
            "remove container app-db-1",
            "remove network app_back",
            "remove network app_front",
        ]
    );
    let with = described(&teardown(&plan, &observed, true));
    assert_eq!(with.last().unwrap(), "remove volume app_data");
    assert_eq!(with.len(), without.len() + 1);
}

#[test]
fn pulls_follow_the_pull_policy() {
    let plan = plan_of(
        "services:\n  a: {image: busybox}\n  b: {image: 'docker.io/library/busybox:latest'}\n  c: {image: 'reg:5000/x/y', pull_policy: always}\n  d: {image: alpine@sha256:abcd, pull_policy: never}\n  e: {image: alpine:3}\n",
    );
    let observed = Observed {
        images: vec!["busybox:latest".into()],
        ..Default::default()
    };
    let steps = pulls(&plan, &observed);
    let got: Vec<(String, String)> = steps
        .iter()
        .map(|s| match s {
            Step::PullImage { params, .. } => {
                (params.image.clone(), params.tag.clone().unwrap_or_default())
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            ("reg:5000/x/y".to_string(), "latest".to_string()),
            ("alpine".to_string(), "3".to_string()),
        ]
    );
}

#[test]
fn wait_verdicts_read_inspect_answers() {
    let v = |status: &str, health: Option<&str>| {
        let mut state = json!({"Status": status});
        if let Some(h) = health {
            state["Health"] = json!({"Status": h});
        }
        wait_verdict(&json!({"State": state}))
    };
    assert_eq!(v("running", Some("healthy")), WaitVerdict::Healthy);
    assert_eq!(v("running", Some("starting")), WaitVerdict::Starting);
    assert_eq!(v("running", Some("unhealthy")), WaitVerdict::Unhealthy);
    assert_eq!(v("running", None), WaitVerdict::NoHealthcheck);
    assert_eq!(v("exited", Some("unhealthy")), WaitVerdict::NotRunning);
    assert_eq!(v("exited", None), WaitVerdict::NotRunning);
    assert_eq!(wait_verdict(&json!({})), WaitVerdict::NotRunning);
}

#[test]
fn observed_state_is_read_from_docker_lists() {
    let containers = json!([{
        "Id": "abc", "Names": ["/app-db-1"], "Image": "busybox", "State": "running",
        "Status": "Up 3 seconds (health: starting)",
        "Labels": {"com.docker.compose.project": "app"},
        "NetworkSettings": {"Networks": {"app_back": {}}},
    }, {"Id": "no-names"}]);
    let networks = json!([{"Name": "app_back", "Labels": {"a": "b"}}, {"Id": "x"}]);
    let volumes = json!({"Volumes": [{"Name": "app_data", "Labels": null}], "Warnings": null});
    let images = json!([{"RepoTags": ["busybox:latest"], "RepoDigests": ["busybox@sha256:1"]}]);
    let o = Observed::from_docker(&containers, &networks, &volumes, &images);
    assert_eq!(o.containers.len(), 1);
    let c = &o.containers[0];
    assert_eq!((c.id.as_str(), c.name.as_str()), ("abc", "app-db-1"));
    assert_eq!(c.health.as_deref(), Some("starting"));
    assert_eq!(c.networks, ["app_back"]);
    assert_eq!(o.networks.len(), 1);
    assert_eq!(o.networks[0].labels["a"], "b");
    assert_eq!(o.volumes[0].name, "app_data");
    assert_eq!(o.images, ["busybox:latest", "busybox@sha256:1"]);
    // The catalog's volume.list answer is a list.
    let o = Observed::from_docker(&json!([]), &json!([]), &json!([{"Name": "v"}]), &json!([]));
    assert_eq!(o.volumes[0].name, "v");
}

#[test]
fn bodies_match_the_typed_structs() {
    // A plan's JSON form (what an API would store or show) serialises.
    let plan = plan_of(FULL);
    let v = serde_json::to_value(&plan).unwrap();
    assert_eq!(v["services"].as_array().unwrap().len(), 4);
    let b: &ContainerBody = &plan.service("web").unwrap().create;
    assert_eq!(
        b.host_config
            .restart_policy
            .as_ref()
            .unwrap()
            .maximum_retry_count,
        3
    );
}

#[test]
fn tmpfs_options_need_a_size() {
    let errs = errors_of(
        "services:\n  a:\n    image: x\n    volumes: [{type: tmpfs, target: /t, tmpfs: {}}]\n",
    );
    assert_eq!(errs.0[0].path, "services.a.volumes[0].tmpfs.size");
    assert_eq!(errs.0[0].kind, ErrorKind::Missing);
}

#[test]
fn booleans_and_container_network_mode() {
    let yaml = "services:\n  a:\n    image: x\n    privileged: ${PRIV:-false}\n    init: ${PRIV}\n    network_mode: container:other\n";
    let plan = parse("app", yaml, &env(&[("PRIV", "true")]))
        .unwrap()
        .plan();
    let b = body(&plan, "a");
    assert_eq!(b["HostConfig"]["Privileged"], true);
    assert_eq!(b["HostConfig"]["Init"], true);
    assert_eq!(b["HostConfig"]["NetworkMode"], "container:other");
    assert!(b.get("NetworkingConfig").is_none());
    // No service joins `default`, so no network is planned.
    assert!(plan.networks.is_empty());
}

#[test]
fn problems_carry_the_line_they_are_on() {
    let e = errors_of(
        "services:\n  web:\n    image: busybox\n    build: .\n    ports:\n      - \"80\"\n      - \"not a port\"\nconfigs: {}\n",
    );
    let line = |path: &str| {
        e.iter()
            .find(|x| x.path == path)
            .unwrap_or_else(|| panic!("{path}: {e}"))
            .line
    };
    assert_eq!(line("services.web.build"), Some(4), "{e}");
    assert_eq!(line("services.web.ports[1]"), Some(7), "{e}");
    assert_eq!(line("configs"), Some(8), "{e}");
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v[0]["line"], json!(4), "{v}");

    // A syntax error: the parser's line.
    let e = errors_of("services:\n  web:\n    image: [busybox\n    command: x\n");
    assert_eq!(e.0[0].kind, ErrorKind::Yaml, "{e}");
    assert!(matches!(e.0[0].line, Some(3..=5)), "{:?}", e.0[0]);

    // The stack's name is not in the file: no line.
    let e = parse("Bad Name", "services: {}\n", &BTreeMap::new()).unwrap_err();
    assert_eq!(e.0[0].line, None);
    assert!(serde_json::to_value(&e).unwrap()[0].get("line").is_none());
}
