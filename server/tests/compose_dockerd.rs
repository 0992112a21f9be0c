//! Stacks against the real dockerd: a three-service compose file (a network, an external
//! network, a named volume, env interpolation, a healthcheck and `depends_on` with
//! `service_healthy`) is translated, and the plan's steps run directly on dockerd over its
//! unix socket, each as the catalog operation it names (the catalog's one mapping to the
//! Engine API, over a small blocking transport). Then dockerd itself is checked: containers,
//! compose labels, networks and aliases, the volume, the start order; a changed environment
//! recreates only that service; a container removed by hand shows as drift and comes back;
//! a service removed from the file loses its container; teardown removes everything but the
//! external network. Fails (never skips) when dockerd or the test image is missing. Uses only
//! the local image and removes everything it created, also on failure.

use protocol::mapping::{DockerRequest, DockerResponse, Transport};
use protocol::ops::{
    ContainerListParams, ContainerRemoveParams, Filters, FiltersParams, IdParams, ImageListParams,
    NetworkCreateParams, Operation, VolumeRemoveParams,
};
use protocol::ErrorBody;
use serde_json::Value;
use server::stacks::plan::{LABEL_CONFIG_HASH, LABEL_PROJECT};
use server::stacks::reconcile::{
    drift, pulls, reconcile, teardown, wait_verdict, DriftState, Observed, Step, WaitVerdict,
};
use server::stacks::{parse, StackPlan};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const SOCKET: &str = "/var/run/docker.sock";
const IMAGE: &str = "docker-ctl-test/busybox:latest";

/// Blocking HTTP/1.0 to dockerd's socket: one connection per request, read to the end.
struct Sock;

impl Transport for Sock {
    fn call(
        &mut self,
        req: &DockerRequest,
        _on_line: &mut dyn FnMut(&[u8]),
    ) -> Result<DockerResponse, ErrorBody> {
        let mut s = UnixStream::connect(SOCKET).map_err(protocol::mapping::unreachable)?;
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let body = req.body_bytes().unwrap_or_default();
        let head = format!(
            "{} {} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            req.method.as_str(),
            req.uri(Some("1.41")),
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(&body))
            .map_err(protocol::mapping::unreachable)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(protocol::mapping::unreachable)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| protocol::mapping::unreachable("no HTTP head"))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok(DockerResponse {
            status,
            headers: Vec::new(),
            body: raw[split + 4..].to_vec(),
        })
    }
}

fn run(op: Operation) -> Result<Value, ErrorBody> {
    protocol::mapping::run_blocking(op, &mut Sock, &mut |_| {})
}

fn must(op: Operation) -> Value {
    let name = op.name();
    run(op).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn inspect(container: &str) -> Value {
    must(Operation::ContainerInspect(IdParams {
        id: container.into(),
    }))
}

fn require_docker() {
    assert!(
        std::path::Path::new(SOCKET).exists(),
        "dockerd is required: {SOCKET} does not exist (run scripts/services.sh)"
    );
    let images = run(Operation::ImageList(ImageListParams::default()))
        .unwrap_or_else(|e| panic!("dockerd is required at {SOCKET}: {e:?}"));
    assert!(
        images.to_string().contains(IMAGE),
        "the test image {IMAGE} is missing (scripts/services.sh builds it)"
    );
}

fn filters(key: &str, value: &str) -> Filters {
    Filters(BTreeMap::from([(key.to_string(), vec![value.to_string()])]))
}

/// What dockerd has for the project, read through the catalog's list operations.
fn observe(project: &str) -> Observed {
    let containers = must(Operation::ContainerList(ContainerListParams {
        all: true,
        filters: filters("label", &format!("{LABEL_PROJECT}={project}")),
        ..Default::default()
    }));
    let by_name = FiltersParams {
        filters: filters("name", project),
    };
    let networks = must(Operation::NetworkList(by_name.clone()));
    let volumes = must(Operation::VolumeList(by_name));
    let images = must(Operation::ImageList(ImageListParams::default()));
    Observed::from_docker(&containers, &networks, &volumes, &images)
}

/// Runs the steps in order; a wait polls `container.inspect` until healthy. Returns each
/// step's description.
fn apply(steps: &[Step]) -> Vec<String> {
    for step in steps {
        match (step.operation(), step) {
            (Some(op), _) => {
                run(op).unwrap_or_else(|e| panic!("{}: {e:?}", step.describe()));
            }
            (
                None,
                Step::WaitHealthy {
                    container, timeout, ..
                },
            ) => wait_healthy(container, *timeout),
            (None, other) => panic!("a step without an operation: {other:?}"),
        }
    }
    steps.iter().map(Step::describe).collect()
}

fn wait_healthy(container: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match wait_verdict(&inspect(container)) {
            WaitVerdict::Healthy => return,
            WaitVerdict::Starting if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            other => panic!("{container} did not become healthy: {other:?}"),
        }
    }
}

/// Removes everything named after the project, also when the test fails.
struct Cleanup {
    project: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let p = &self.project;
        if let Ok(Value::Array(cs)) = run(Operation::ContainerList(ContainerListParams {
            all: true,
            filters: filters("name", p),
            ..Default::default()
        })) {
            for c in cs {
                if let Some(id) = c["Id"].as_str() {
                    let _ = run(Operation::ContainerRemove(ContainerRemoveParams {
                        id: id.into(),
                        force: true,
                        v: true,
                    }));
                }
            }
        }
        let named = FiltersParams {
            filters: filters("name", p),
        };
        if let Ok(Value::Array(ns)) = run(Operation::NetworkList(named.clone())) {
            for n in ns.iter().filter_map(|n| n["Name"].as_str()) {
                if n.starts_with(p.as_str()) {
                    let _ = run(Operation::NetworkRemove(IdParams { id: n.into() }));
                }
            }
        }
        if let Ok(Value::Array(vs)) = run(Operation::VolumeList(named)) {
            for v in vs.iter().filter_map(|v| v["Name"].as_str()) {
                if v.starts_with(p.as_str()) {
                    let _ = run(Operation::VolumeRemove(VolumeRemoveParams {
                        id: v.into(),
                        force: true,
                    }));
                }
            }
        }
    }
}

fn stack_yaml(project: &str, with_web: bool) -> String {
    let web = r#"
  web:
    image: docker-ctl-test/busybox:latest
    command: ["sleep", "3600"]
    depends_on: [api]
    ports: ["127.0.0.1::8080"]
    networks: [front]
    restart: unless-stopped
    stop_grace_period: 1s
"#;
    format!(
        r#"
services:
  db:
    image: docker-ctl-test/busybox:latest
    command: ["sh", "-c", "sleep 2; echo ok > /data/ready; exec sleep 3600"]
    environment:
      DB_PASSWORD: ${{DB_PASSWORD:?set DB_PASSWORD}}
    volumes: ["data:/data"]
    networks: [back]
    healthcheck:
      test: ["CMD", "test", "-f", "/data/ready"]
      interval: 1s
      timeout: 2s
      retries: 30
    stop_grace_period: 1s
  api:
    image: docker-ctl-test/busybox:latest
    command: sleep 3600
    environment:
      MODE: ${{MODE:-dev}}
    labels: {{app.role: api}}
    depends_on:
      db: {{condition: service_healthy}}
    networks:
      back: {{aliases: [backend]}}
      front:
      shared:
    stop_grace_period: 1s
{web}
networks:
  back: {{}}
  front: {{labels: {{tier: front}}}}
  shared: {{external: true, name: {project}-ext}}
volumes:
  data: {{}}
"#,
        web = if with_web { web } else { "" }
    )
}

fn plan(project: &str, mode: Option<&str>, with_web: bool) -> StackPlan {
    let mut env = BTreeMap::from([("DB_PASSWORD".to_string(), "s3cret".to_string())]);
    if let Some(m) = mode {
        env.insert("MODE".into(), m.into());
    }
    parse(project, &stack_yaml(project, with_web), &env)
        .unwrap_or_else(|e| panic!("{e}"))
        .plan()
}

/// An RFC 3339 time from dockerd in nanoseconds since the epoch.
fn time_ns(s: &str) -> i128 {
    let secs = protocol::time::parse_rfc3339(s).unwrap_or_else(|| panic!("time {s:?}")) as i128;
    let frac = s
        .split_once('.')
        .map(|(_, f)| f.trim_end_matches(|c: char| !c.is_ascii_digit()))
        .unwrap_or("");
    let frac: String = format!("{frac:0<9}").chars().take(9).collect();
    secs * 1_000_000_000 + frac.parse::<i128>().unwrap_or(0)
}

fn started_ns(container: &str) -> i128 {
    time_ns(inspect(container)["State"]["StartedAt"].as_str().unwrap())
}

fn id_of(container: &str) -> String {
    inspect(container)["Id"].as_str().unwrap().to_string()
}

fn env_of(container: &str) -> Vec<String> {
    serde_json::from_value(inspect(container)["Config"]["Env"].clone()).unwrap()
}

fn check_deployed(p: &str, plan: &StackPlan) {
    for s in &plan.services {
        let c = inspect(&s.container_name);
        assert_eq!(c["State"]["Running"], true, "{}", s.container_name);
        let labels = &c["Config"]["Labels"];
        assert_eq!(labels[LABEL_PROJECT], p);
        assert_eq!(labels["com.docker.compose.service"], s.service.as_str());
        assert_eq!(labels["com.docker.compose.container-number"], "1");
        assert_eq!(labels["com.docker.compose.oneoff"], "False");
        assert_eq!(labels[LABEL_CONFIG_HASH], s.config_hash.as_str());
    }
    assert!(env_of(&format!("{p}-db-1")).contains(&"DB_PASSWORD=s3cret".to_string()));
    assert!(env_of(&format!("{p}-api-1")).contains(&"MODE=dev".to_string()));
    let db = inspect(&format!("{p}-db-1"));
    assert_eq!(db["Config"]["Healthcheck"]["Interval"], 1_000_000_000u64);
    let mount = &db["Mounts"][0];
    assert_eq!(mount["Name"], format!("{p}_data"));
    assert_eq!(mount["Destination"], "/data");
    let api = inspect(&format!("{p}-api-1"));
    assert_eq!(api["Config"]["Labels"]["app.role"], "api");
    let nets = &api["NetworkSettings"]["Networks"];
    let aliases = nets[format!("{p}_back")]["Aliases"].to_string();
    assert!(
        aliases.contains("\"api\"") && aliases.contains("\"backend\""),
        "{aliases}"
    );
    assert!(nets[format!("{p}_front")]["Aliases"]
        .to_string()
        .contains("\"api\""));
    assert!(nets.get(format!("{p}-ext")).is_some(), "{nets}");
    let web = inspect(&format!("{p}-web-1"));
    assert_eq!(
        web["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"],
        "127.0.0.1"
    );
    assert_eq!(web["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
    let back = must(Operation::NetworkInspect(IdParams {
        id: format!("{p}_back"),
    }));
    assert_eq!(back["Labels"][LABEL_PROJECT], p);
    assert_eq!(back["Labels"]["com.docker.compose.network"], "back");
    let front = must(Operation::NetworkInspect(IdParams {
        id: format!("{p}_front"),
    }));
    assert_eq!(front["Labels"]["tier"], "front");
    let vol = must(Operation::VolumeInspect(IdParams {
        id: format!("{p}_data"),
    }));
    assert_eq!(vol["Labels"]["com.docker.compose.volume"], "data");
    assert_eq!(vol["Labels"][LABEL_PROJECT], p);
}

fn check_start_order(p: &str) {
    let (db, api, web) = (
        started_ns(&format!("{p}-db-1")),
        started_ns(&format!("{p}-api-1")),
        started_ns(&format!("{p}-web-1")),
    );
    // db becomes healthy 2 s after it starts at the earliest; api waited for that.
    assert!(
        api - db >= 2_000_000_000,
        "api started {} ms after db",
        (api - db) / 1_000_000
    );
    assert!(web >= api, "web started before api");
}

#[test]
fn a_compose_stack_runs_on_dockerd() {
    require_docker();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let p = format!("dctl-stack-{}-{nanos}", std::process::id());
    let _cleanup = Cleanup { project: p.clone() };
    must(Operation::NetworkCreate(NetworkCreateParams {
        name: format!("{p}-ext"),
        ..Default::default()
    }));

    // Deploy.
    let first = plan(&p, None, true);
    let observed = observe(&p);
    assert!(
        pulls(&first, &observed).is_empty(),
        "the local image needs no pull"
    );
    let done = apply(&reconcile(&first, &observed));
    // The external network exists, so it is neither checked again nor created.
    assert!(
        !done
            .iter()
            .any(|d| d.ends_with(&format!(" network {p}-ext")) && !d.starts_with("connect")),
        "{done:?}"
    );
    let wait = done
        .iter()
        .position(|d| d.starts_with("wait"))
        .expect("a wait step");
    let api_start = done
        .iter()
        .position(|d| *d == format!("start container {p}-api-1"))
        .unwrap();
    assert!(wait < api_start, "{done:?}");
    check_deployed(&p, &first);
    check_start_order(&p);
    let observed = observe(&p);
    assert!(drift(&first, &observed)
        .iter()
        .all(|d| d.state == DriftState::InSync));
    assert!(
        reconcile(&first, &observed).is_empty(),
        "a second deploy changes nothing"
    );

    // Change one service's environment: only that container is recreated.
    let ids: BTreeMap<&str, String> = ["db", "api", "web"]
        .into_iter()
        .map(|s| (s, id_of(&format!("{p}-{s}-1"))))
        .collect();
    let second = plan(&p, Some("prod"), true);
    for s in ["db", "web"] {
        assert_eq!(
            first.service(s).unwrap().config_hash,
            second.service(s).unwrap().config_hash
        );
    }
    assert_ne!(
        first.service("api").unwrap().config_hash,
        second.service("api").unwrap().config_hash
    );
    let steps = reconcile(&second, &observe(&p));
    assert!(
        steps.iter().all(|s| s
            .service()
            .is_none_or(|x| x == "api" || matches!(s, Step::WaitHealthy { .. }))),
        "{steps:?}"
    );
    apply(&steps);
    assert_ne!(id_of(&format!("{p}-api-1")), ids["api"]);
    assert_eq!(id_of(&format!("{p}-db-1")), ids["db"]);
    assert_eq!(id_of(&format!("{p}-web-1")), ids["web"]);
    assert!(env_of(&format!("{p}-api-1")).contains(&"MODE=prod".to_string()));

    // A container removed by hand is drift, and a redeploy brings it back.
    must(Operation::ContainerRemove(ContainerRemoveParams {
        id: format!("{p}-web-1"),
        force: true,
        v: false,
    }));
    let d = drift(&second, &observe(&p));
    assert_eq!(
        d.iter().find(|x| x.service == "web").unwrap().state,
        DriftState::Missing
    );
    apply(&reconcile(&second, &observe(&p)));
    assert_eq!(inspect(&format!("{p}-web-1"))["State"]["Running"], true);

    // A service removed from the file loses its container.
    let third = plan(&p, Some("prod"), false);
    let steps = reconcile(&third, &observe(&p));
    assert_eq!(
        steps.iter().map(Step::describe).collect::<Vec<_>>(),
        [
            format!("stop container {p}-web-1"),
            format!("remove container {p}-web-1")
        ]
    );
    apply(&steps);
    let gone = run(Operation::ContainerInspect(IdParams {
        id: format!("{p}-web-1"),
    }));
    assert_eq!(gone.unwrap_err().code, protocol::ErrorCode::NotFound);

    // Teardown with volumes: containers, networks and the volume go; the external network stays.
    apply(&teardown(&third, &observe(&p), true));
    let left = observe(&p);
    assert!(left.containers.is_empty(), "{:?}", left.containers);
    let names: Vec<&str> = left.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, [format!("{p}-ext")]);
    assert!(left.volumes.is_empty());
}
