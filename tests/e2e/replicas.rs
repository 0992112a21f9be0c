//! Three real replicas on one PostgreSQL database behind a real HAProxy: agents spread over
//! the replicas, the docker CLI and operations through a replica that does not hold the
//! agent (and through HAProxy), kill -9 of a replica during a stream of commands, and its
//! restart with the same id.
//!
//! Across replicas too: the live feed through each replica shows the events of an agent held
//! by another, and revoking an agent on one replica ends its session on the replica holding
//! it within a second.
//!
//! [`Fleet::start`] sets the scene: replicas `a`, `b`, `c`, HAProxy in front of them, and
//! one agent per `server.url` order given (its first replica is its home, where it is held
//! once the fleet is up); [`Fleet::bases`] lists every way in.

use docker_ctl_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The label every container of these tests carries (`KEY=RUN`), for listing and cleanup.
const RUN_LABEL: &str = "docker-ctl-e2e-replicas";
/// The label naming the command that created a container (one value per command).
const CMD_LABEL: &str = "docker-ctl-e2e-cmd";

/// A host and its agent.
struct Placed {
    host_id: String,
    agent_id: String,
    /// The replica the agent dials first.
    home: usize,
    agent: Agent,
}

impl Placed {
    /// How many sessions the agent has authenticated so far.
    fn sessions(&self) -> usize {
        self.agent
            .output
            .text()
            .matches("authenticated (session")
            .count()
    }
}

struct Fleet {
    hosts: Vec<Placed>,
    /// An operator's token (the user of the CLI and of operations).
    operator: String,
    /// This fleet's value of [`RUN_LABEL`].
    run: String,
    _cleanup: DockerCleanup,
    proxy: Haproxy,
    /// Dropped last: the servers, then the database.
    replicas: Replicas,
}

impl Fleet {
    /// Three replicas, HAProxy in front of them, and one agent per entry of `orders` (the
    /// replicas it knows, by index, its home first); returns once every replica shows each
    /// agent held by its home.
    fn start(orders: &[&[usize]]) -> Fleet {
        require_docker();
        let replicas = Replicas::start(3);
        let proxy = Haproxy::start(&replicas.servers.iter().collect::<Vec<_>>());
        let run = unique("replicas");
        let mut cleanup = DockerCleanup::default();
        cleanup.label(&format!("{RUN_LABEL}={run}"));
        let hosts = orders
            .iter()
            .map(|order| {
                let (host_id, agent_id, agent) =
                    replicas.enrol(&unique("rep"), &replicas.ws_of(order));
                Placed {
                    host_id,
                    agent_id,
                    home: order[0],
                    agent,
                }
            })
            .collect::<Vec<_>>();
        for h in &hosts {
            replicas.wait_held_by(
                &h.host_id,
                &[replica_id(h.home).as_str()],
                Duration::from_secs(30),
            );
        }
        let operator = replicas.servers[0].new_token(&unique("op"), "operator");
        Fleet {
            hosts,
            operator,
            run,
            _cleanup: cleanup,
            proxy,
            replicas,
        }
    }

    /// Every way in: each replica's base URL, then HAProxy's, with a name.
    fn bases(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .replicas
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| (replica_id(i), s.http()))
            .collect();
        v.push(("haproxy".into(), self.proxy.http()));
        v
    }

    /// The labels of a container made by command `cmd`.
    fn labels(&self, cmd: &str) -> Value {
        json!({ RUN_LABEL: self.run, CMD_LABEL: cmd })
    }

    /// This fleet's containers on dockerd, by the command that made them.
    fn containers_by_cmd(&self) -> BTreeMap<String, usize> {
        let filters = json!({"label": [format!("{RUN_LABEL}={}", self.run)]}).to_string();
        let list = docker_get(&format!(
            "/containers/json?all=1&filters={}",
            percent(&filters)
        ));
        let mut by = BTreeMap::new();
        for c in list.as_array().expect("a list of containers") {
            let cmd = c["Labels"][CMD_LABEL].as_str().unwrap_or("").to_string();
            *by.entry(cmd).or_insert(0) += 1;
        }
        by
    }
}

/// Percent-encodes a query value.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `POST /api/v1/hosts/{id}/operations` at `base`; a transport error is `Err`, every HTTP
/// answer (any status) is `Ok`.
fn try_op(
    base: &str,
    token: &str,
    host_id: &str,
    operation: &str,
    params: Value,
) -> Result<(u16, Value), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut resp = agent
        .post(&format!("{base}/api/v1/hosts/{host_id}/operations"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(json!({"operation": operation, "params": params}).to_string())
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Median of durations, in milliseconds.
fn p50_ms(mut v: Vec<Duration>) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

#[test]
fn agents_spread_over_the_replicas_every_replica_agrees_and_operations_run_through_each() {
    let mut f = Fleet::start(&[&[0, 1, 2], &[1, 2, 0], &[2, 0, 1]]);
    let want: BTreeMap<String, String> = f
        .hosts
        .iter()
        .map(|h| (h.host_id.clone(), replica_id(h.home)))
        .collect();
    let distinct: std::collections::BTreeSet<&String> = want.values().collect();
    assert_eq!(distinct.len(), 3, "one agent on each replica: {want:?}");

    // GET /api/v1/hosts answers the same through every replica and through HAProxy.
    for (name, base) in f.bases() {
        let got: BTreeMap<String, String> = hosts_at(&base, &f.replicas.admin_token)
            .iter()
            .filter_map(|h| Some((h["id"].as_str()?.to_string(), holder_of(h)?)))
            .collect();
        assert_eq!(got, want, "hosts and their holders through {name}");
    }

    // GET /api/v1/agents too.
    for (name, base) in f.bases() {
        let (st, v) = api_call(
            &base,
            Some(&f.replicas.admin_token),
            "GET",
            "/api/v1/agents",
            None,
        );
        assert_eq!(st, 200, "{v}");
        let list = v
            .as_array()
            .or_else(|| v["agents"].as_array())
            .expect("agents");
        for h in &f.hosts {
            let a = list
                .iter()
                .find(|a| a["agent_id"] == h.agent_id.as_str())
                .unwrap_or_else(|| panic!("{} listed through {name}: {v}", h.agent_id));
            assert_eq!(a["connected"], true, "through {name}: {a}");
            assert_eq!(
                a["replica"]["id"],
                replica_id(h.home).as_str(),
                "through {name}: {a}"
            );
            assert_eq!(
                a["replica"]["region"],
                replica_region(h.home).as_str(),
                "{a}"
            );
        }
    }

    // An operation through each way in reaches each host, wherever its agent is held.
    for h in &f.hosts {
        for (name, base) in f.bases() {
            let cname = unique(&format!("rep-op-{name}"));
            let (st, body) = try_op(
                &base,
                &f.operator,
                &h.host_id,
                "container.create",
                json!({"name": cname, "image": TEST_IMAGE, "cmd": ["true"],
                       "labels": f.labels(&cname)}),
            )
            .unwrap_or_else(|e| panic!("container.create through {name}: {e}"));
            assert_eq!(st, 200, "through {name} to {}: {body}", h.host_id);
            assert_eq!(body["status"], "success", "{body}");
            let on_dockerd = docker_get(&format!("/containers/{cname}/json"));
            assert_eq!(on_dockerd["Id"], body["data"]["id"], "{on_dockerd}");
            assert_eq!(on_dockerd["Config"]["Labels"][CMD_LABEL], cname.as_str());
        }
        // Each holder ran the commands the two other replicas forwarded to it.
        let holder = &f.replicas.servers[h.home];
        let forwarded = holder
            .output
            .text()
            .lines()
            .filter(|l| l.contains("running a forwarded command") && l.contains(&h.host_id))
            .count();
        assert!(
            forwarded >= 2,
            "replica {} ran {forwarded} forwarded commands for {}",
            replica_id(h.home),
            h.host_id
        );
    }

    // An agent may dial HAProxy itself: its WebSocket lands on some replica, which every
    // replica then shows, and commands reach it through every way in.
    let (host_id, agent_id, token) = f.replicas.servers[0].enrol(&unique("rep-lb"));
    let _lb_agent = Agent::start(&f.proxy.ws(), &agent_id, &token);
    let holder = f
        .replicas
        .wait_held_by(&host_id, &["a", "b", "c"], Duration::from_secs(20));
    for (name, base) in f.bases() {
        let (st, body) = try_op(&base, &f.operator, &host_id, "system.ping", json!({}))
            .unwrap_or_else(|e| panic!("system.ping through {name}: {e}"));
        assert_eq!(st, 200, "through {name} to the agent on {holder}: {body}");
    }

    // What one forwarding hop adds to a small command (loopback, shared CPU).
    let h = &f.hosts[0];
    let mut direct = Vec::new();
    let mut forwarded = Vec::new();
    for _ in 0..20 {
        for (via, sink) in [(0, &mut direct), (1, &mut forwarded)] {
            let t = Instant::now();
            let (st, body) = try_op(
                &f.replicas.servers[via].http(),
                &f.operator,
                &h.host_id,
                "system.ping",
                json!({}),
            )
            .expect("system.ping");
            assert_eq!(st, 200, "{body}");
            sink.push(t.elapsed());
        }
    }
    eprintln!(
        "BENCH replicas: system.ping p50 through the holder {:.2} ms, through another replica {:.2} ms (20 each)",
        p50_ms(direct),
        p50_ms(forwarded)
    );

    // With every replica gone, HAProxy's own answer carries a code too.
    for i in 0..f.replicas.len() {
        f.replicas.kill(i);
    }
    let (st, body) = try_op(
        &f.proxy.http(),
        &f.operator,
        &h.host_id,
        "system.ping",
        json!({}),
    )
    .expect("an HTTP answer from HAProxy");
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["error"]["code"], "agent_offline", "{body}");
}

/// A running container of the test image made on dockerd itself, with the fleet's labels.
fn running(f: &Fleet, prefix: &str, cmd: &[&str]) -> String {
    let name = unique(prefix);
    let run = format!("{RUN_LABEL}={}", f.run);
    let cmd_label = format!("{CMD_LABEL}={name}");
    let mut args = vec![
        "run", "-d", "--name", &name, "--label", &run, "--label", &cmd_label, TEST_IMAGE,
    ];
    args.extend_from_slice(cmd);
    let (ok, out) = docker_cli(&args);
    assert!(ok, "docker run {name}: {out}");
    name
}

/// `ps`, `logs -f`, `exec -it` (when `hijacks`: not through HAProxy's HTTP frontend), `cp`
/// both ways and `save` through `cli` (named `way`).
fn docker_cli_session(f: &Fleet, cli: &DockerCli, way: &str, hijacks: bool) {
    let t0 = Instant::now();
    let name = running(f, "rep-cli", &["sleep", "300"]);
    let ps = cli.ok(&["ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]);
    let id = docker_get(&format!("/containers/{name}/json"))["Id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(
        ps.lines().any(|l| l == format!("{id} {name}")),
        "docker ps through {way} shows {name}:\n{ps}"
    );

    logs_follow(f, cli, way);
    follow_cut(&f.hosts[0].agent, cli, &name, way, hijacks);

    if hijacks {
        // exec -it: keystrokes reach the shell, the terminal size arrives, the exit code
        // returns.
        let (code, screen) = cli.run_tty(
            &format!("exec -it {name} sh"),
            "for i in $(seq 100); do [ \"$(stty size)\" = '45 123' ] && break; sleep 0.1; done; stty size\necho typed-$((40+2))\nexit 4\n",
        );
        assert_eq!(code, 4, "exec -it through {way}: {screen}");
        assert!(
            screen.contains("typed-42"),
            "keystrokes through {way}: {screen}"
        );
        assert!(
            screen.contains("45 123"),
            "the resize through {way}: {screen}"
        );
    }

    // cp into the container and back out.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.txt");
    let payload: String = (0..30_000)
        .map(|i| format!("line {i} via {way}\n"))
        .collect();
    std::fs::write(&src, &payload).unwrap();
    cli.ok(&["cp", src.to_str().unwrap(), &format!("{name}:/tmp/in.txt")]);
    let (ok, inside) = docker_cli(&["exec", &name, "sh", "-c", "wc -c < /tmp/in.txt"]);
    assert!(ok, "{inside}");
    assert_eq!(
        inside.trim(),
        payload.len().to_string(),
        "cp in through {way}"
    );
    let back = dir.path().join("back.txt");
    cli.ok(&["cp", &format!("{name}:/tmp/in.txt"), back.to_str().unwrap()]);
    assert!(
        std::fs::read_to_string(&back).unwrap() == payload,
        "cp out through {way}: the file came back byte for byte"
    );

    // save: the same tar as dockerd's own (its output is deterministic for one image).
    let t_save = Instant::now();
    let tar = dir.path().join("through.tar");
    cli.ok(&["save", "-o", tar.to_str().unwrap(), TEST_IMAGE]);
    let save_took = t_save.elapsed();
    let direct = dir.path().join("direct.tar");
    let out = std::process::Command::new(docker_cli_path())
        .args(["save", "-o", direct.to_str().unwrap(), TEST_IMAGE])
        .env("DOCKER_HOST", format!("unix://{DOCKER_SOCKET}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (
        std::fs::read(&tar).unwrap(),
        std::fs::read(&direct).unwrap(),
    );
    assert!(
        a.len() > 1_000_000,
        "the image tar is complete: {} bytes",
        a.len()
    );
    assert_eq!(
        a.len(),
        b.len(),
        "save through {way}: the size of dockerd's own tar"
    );
    let manifest = |p: &std::path::Path| {
        let out = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(p)
            .arg("manifest.json")
            .output()
            .unwrap();
        assert!(out.status.success(), "manifest.json in {}", p.display());
        serde_json::from_slice::<Value>(&out.stdout).expect("manifest JSON")
    };
    assert_eq!(
        manifest(&tar),
        manifest(&direct),
        "the manifest through {way}"
    );
    assert!(
        a == b,
        "save through {way}: dockerd's own tar, byte for byte"
    );
    load_and_build(cli, way, dir.path());
    eprintln!(
        "BENCH replicas: docker CLI through {way}: save of {} bytes in {:.0} ms; whole session {:.1} s",
        a.len(),
        save_took.as_secs_f64() * 1000.0,
        t0.elapsed().as_secs_f64()
    );
}

/// `docker load` and `docker build` through `cli`: a tagged copy of the test image saved,
/// removed on dockerd, loaded back; an image built from a 2 MiB context streamed up.
fn load_and_build(cli: &DockerCli, way: &str, dir: &std::path::Path) {
    let tag = format!("rep-load/{}:v1", unique("img").to_lowercase());
    assert!(docker_cli(&["tag", TEST_IMAGE, &tag]).0);
    let tar = dir.join("tagged.tar");
    cli.ok(&["save", "-o", tar.to_str().unwrap(), &tag]);
    assert!(docker_cli(&["rmi", &tag]).0);
    assert!(
        !docker_cli(&["image", "inspect", &tag]).0,
        "the tag is gone"
    );
    let loaded = cli.ok(&["load", "-i", tar.to_str().unwrap()]);
    assert!(loaded.contains(&tag), "load through {way}: {loaded}");
    assert!(docker_cli(&["image", "inspect", &tag]).0, "the tag is back");
    docker_cli(&["rmi", &tag]);

    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY blob.bin /blob.bin\nLABEL e2e=replicas\n",
    )
    .unwrap();
    let blob: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(ctx.join("blob.bin"), &blob).unwrap();
    let built = format!("rep-built/{}:1", unique("b").to_lowercase());
    cli.ok(&["build", "-t", &built, ctx.to_str().unwrap()]);
    let img = docker_get(&format!("/images/{built}/json"));
    assert_eq!(
        img["Config"]["Labels"]["e2e"], "replicas",
        "build through {way}"
    );
    assert!(img["Size"].as_u64().unwrap_or(0) >= blob.len() as u64);
    docker_cli(&["rmi", &built]);
}

/// `docker logs -f` through `cli`: numbered lines arrive one by one while it follows, and
/// the CLI ends by itself when the container stops.
fn logs_follow(f: &Fleet, cli: &DockerCli, way: &str) {
    let ticker = running(
        f,
        "rep-tick",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 600 ]; do echo tick-$i; i=$((i+1)); sleep 0.2; done",
        ],
    );
    let mut follow = cli
        .command(&["logs", "-f", &ticker])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((line, Instant::now()));
        }
    });
    let mut seen: Vec<(u32, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 8 && Instant::now() < deadline {
        if let Ok((line, at)) = rx.recv_timeout(Duration::from_millis(500)) {
            if let Some(n) = line.strip_prefix("tick-").and_then(|n| n.parse().ok()) {
                seen.push((n, at));
            }
        }
    }
    assert!(seen.len() >= 8, "logs -f through {way} showed {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "lines in order, none lost, through {way}: {seen:?}"
    );
    // Live: the last 4 lines were written 0.2 s apart, after the CLI started following.
    let spread = seen[7].1.duration_since(seen[4].1);
    assert!(
        spread >= Duration::from_millis(300),
        "lines arrived as they were written through {way}, not in one block: {spread:?}"
    );
    // The container stops: the followed stream ends and the CLI exits by itself.
    let (ok, out) = docker_cli(&["stop", "-t", "1", &ticker]);
    assert!(ok, "{out}");
    let status = wait_for(
        &format!("docker logs -f through {way} to end after the container stopped"),
        Duration::from_secs(20),
        || follow.try_wait().ok().flatten(),
    );
    assert!(
        status.success(),
        "logs -f through {way} ended with {status}"
    );
}

/// A `docker logs -f` whose CLI goes away: the agent (held by another replica) is told to
/// cancel the stream, so nothing keeps streaming on the holder for a client that is gone.
///
/// HAProxy's HTTP frontend (`silent_cut` false) takes the client's close for a half-close
/// and keeps a silent response open: it lets go at the first bytes it cannot deliver, so the
/// container writes a line every half second there.
fn follow_cut(agent: &Agent, cli: &DockerCli, name: &str, way: &str, silent_cut: bool) {
    let count = |needle: &str| {
        agent
            .output
            .text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    };
    let opened = count("(container.logs)");
    let cancelled = count("cancelled by the server");
    let mut follow = cli
        .command(&["logs", "-f", "--tail", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        &format!("the agent streaming logs -f through {way}"),
        Duration::from_secs(20),
        || (count("(container.logs)") > opened).then_some(()),
    );
    let t = Instant::now();
    let _ = follow.kill();
    let _ = follow.wait();
    let mut last_write = Instant::now();
    wait_for(
        &format!("the agent told to cancel the followed logs after the CLI through {way} went"),
        Duration::from_secs(20),
        || {
            if !silent_cut && last_write.elapsed() > Duration::from_millis(500) {
                docker_cli(&["exec", name, "sh", "-c", "echo nobody-reads > /proc/1/fd/1"]);
                last_write = Instant::now();
            }
            (count("cancelled by the server") > cancelled).then_some(())
        },
    );
    eprintln!(
        "BENCH replicas: docker logs -f through {way}: CLI killed -> the agent's stream cancelled after {:.0} ms{}",
        t.elapsed().as_secs_f64() * 1000.0,
        if silent_cut { "" } else { " (the container writing a line every 0.5 s)" }
    );
}

#[test]
fn the_docker_cli_through_another_replica_and_through_haproxy_reaches_an_agent_held_by_a() {
    let f = Fleet::start(&[&[0, 1, 2]]);
    let host = f.hosts[0].host_id.clone();
    assert_eq!(f.replicas.holder_via(1, &host).as_deref(), Some("a"));
    let via_b = DockerCli::new(&f.replicas.servers[1], &host, &f.operator);
    docker_cli_session(&f, &via_b, "replica b", true);
    // HAProxy's TCP frontend takes every CLI command; its HTTP frontend all but hijacks (see
    // `Haproxy`).
    let via_proxy = DockerCli::at(&f.proxy.cli_addr(), &host, &f.operator);
    docker_cli_session(&f, &via_proxy, "haproxy (tcp)", true);
    let via_proxy_http = DockerCli::at(&f.proxy.addr(), &host, &f.operator);
    docker_cli_session(&f, &via_proxy_http, "haproxy (http)", false);
    // Nothing moved: every exchange went to the agent on a.
    assert_eq!(
        f.hosts[0].sessions(),
        1,
        "{}",
        f.hosts[0].agent.output.text()
    );
    assert_eq!(f.replicas.holder_via(2, &host).as_deref(), Some("a"));
}

/// What happened to one command of the stream.
#[derive(Debug)]
struct Sent {
    cmd: String,
    way: &'static str,
    /// `succeeded`, or the error's code.
    outcome: String,
    status: u16,
    took: Duration,
    /// Sent after the kill.
    after_kill: bool,
}

/// Sends `container.create` commands (each labelled with its own [`CMD_LABEL`]) to `host`
/// through `base`, one after the other, until `stop` (at most 200 commands, 120 s).
fn command_stream(
    base: String,
    token: String,
    host: String,
    way: &'static str,
    labels: impl Fn(&str) -> Value + Send + 'static,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Sent>> {
    std::thread::spawn(move || {
        let mut sent = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        for n in 0..200 {
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            let cmd = format!("{way}-{n}");
            let after_kill = killed.load(Ordering::SeqCst);
            let t = Instant::now();
            // No name: a second run of the command would make a second container with the
            // same label (a name would make dockerd refuse it and hide the double run).
            let r = try_op(
                &base,
                &token,
                &host,
                "container.create",
                json!({"image": TEST_IMAGE, "cmd": ["true"], "labels": labels(&cmd)}),
            );
            let took = t.elapsed();
            let (status, body) = r.unwrap_or_else(|e| {
                panic!("command {cmd} through {way} ended with no HTTP answer: {e}")
            });
            let outcome = if status == 200 && body["status"] == "success" {
                "succeeded".to_string()
            } else {
                body["error"]["code"]
                    .as_str()
                    .unwrap_or_else(|| {
                        panic!("command {cmd} through {way}: {status} with no code: {body}")
                    })
                    .to_string()
            };
            sent.push(Sent {
                cmd,
                way,
                outcome,
                status,
                took,
                after_kill,
            });
        }
        sent
    })
}

#[test]
fn kill_9_of_a_replica_during_a_stream_of_commands_then_its_restart_reclaims_nothing_stale() {
    // Hosts 0 and 1 are at home on a (then b or c), host 2 knows only a, host 3 is on b.
    let mut f = Fleet::start(&[&[0, 1, 2], &[0, 2, 1], &[0], &[1, 2, 0]]);
    let target = f.hosts[0].host_id.clone();
    let only_a = f.hosts[2].host_id.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = [
        (f.proxy.http(), "haproxy"),
        (f.replicas.servers[1].http(), "b"),
    ]
    .into_iter()
    .map(|(base, way)| {
        let run = f.run.clone();
        command_stream(
            base,
            f.operator.clone(),
            target.clone(),
            way,
            move |cmd| json!({ RUN_LABEL: run, CMD_LABEL: cmd }),
            stop.clone(),
            killed.clone(),
        )
    })
    .collect();
    // Let both streams run, then kill a.
    wait_for("commands flowing", Duration::from_secs(60), || {
        (f.containers_by_cmd().len() >= 10).then_some(())
    });
    let epoch_before: i64 = f
        .replicas
        .sql("SELECT epoch FROM replicas WHERE id = 'a'")
        .parse()
        .expect("a's epoch");
    let only_a_session = f.replicas.sql(&format!(
        "SELECT session_id FROM agent_presence WHERE host_id = '{only_a}'"
    ));
    assert!(
        !only_a_session.is_empty(),
        "a holds the agent that knows only a"
    );
    // Two slow commands in flight on a, through an HAProxy whose only backend is a, for a
    // host held by b: when a dies, HAProxy answers them itself, with a code.
    let only_a_proxy = Haproxy::start(&[&f.replicas.servers[0]]);
    let sleeper = running(&f, "rep-sleeper", &["sleep", "300"]);
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (base, token, host) = (
                only_a_proxy.http(),
                f.operator.clone(),
                f.hosts[3].host_id.clone(),
            );
            let params = json!({"id": sleeper, "cmd": ["sleep", "5"]});
            std::thread::spawn(move || try_op(&base, &token, &host, "container.exec", params))
        })
        .collect();
    wait_for("the slow commands running", Duration::from_secs(20), || {
        let c = docker_get(&format!("/containers/{sleeper}/json"));
        (c["ExecIDs"].as_array().map_or(0, Vec::len) >= 2).then_some(())
    });

    // A followed log and an exec session through b to the agent held by a.
    let streamer = running(&f, "rep-streamer", &["sleep", "300"]);
    let cli_b = DockerCli::new(&f.replicas.servers[1], &target, &f.operator);
    let agent_log = |needle: &str| f.hosts[0].agent.output.text().matches(needle).count();
    let (logs0, hijacks0) = (agent_log("(container.logs)"), agent_log(": hijacked ("));
    let clis = [
        cli_b
            .command(&["logs", "-f", &streamer])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        cli_b
            .command(&["exec", "-i", &streamer, "sh"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ];
    wait_for(
        "the streams open on a's agent",
        Duration::from_secs(20),
        || {
            (agent_log("(container.logs)") > logs0 && agent_log(": hijacked (") > hijacks0)
                .then_some(())
        },
    );

    let at_kill = f.containers_by_cmd();
    let t_kill = Instant::now();
    killed.store(true, Ordering::SeqCst);
    f.replicas.kill(0);
    // The CLIs whose streams a carried end (none hangs): watched from now on.
    let cli_ends: Vec<_> = clis
        .into_iter()
        .zip(["logs -f", "exec -i"])
        .map(|(mut cli, what)| {
            std::thread::spawn(move || {
                let deadline = t_kill + Duration::from_secs(15);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = cli.try_wait() {
                        return (what, Some(t_kill.elapsed()));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = cli.kill();
                let _ = cli.wait();
                (what, None)
            })
        })
        .collect();
    for s in slow {
        let (st, body) = s.join().expect("a slow command").expect("an HTTP answer");
        assert_eq!(st, 502, "{body}");
        assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }

    // a's agents are back on b or c within 10 s, as every live replica sees it.
    let mut back = Vec::new();
    for h in &f.hosts[..2] {
        let holder = f
            .replicas
            .wait_held_by(&h.host_id, &["b", "c"], Duration::from_secs(10));
        back.push((holder, t_kill.elapsed()));
    }
    let reconnect = back.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "BENCH replicas: kill -9 of a -> its agents held by {:?} on every live replica after {:.0} ms",
        back.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        reconnect.as_secs_f64() * 1000.0
    );
    assert!(reconnect <= Duration::from_secs(10), "{reconnect:?}");
    for end in cli_ends {
        let (what, took) = end.join().expect("a CLI watcher");
        let took = took.unwrap_or_else(|| panic!("docker {what} through b hangs after a died"));
        eprintln!(
            "BENCH replicas: kill -9 of a -> docker {what} through b ended after {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
    }

    // The stream goes on: commands through both ways make containers again.
    wait_for(
        "commands making containers again after the kill",
        Duration::from_secs(60),
        || {
            let now = f.containers_by_cmd();
            let new = |way: &str| {
                now.keys()
                    .filter(|k| k.starts_with(&format!("{way}-")) && !at_kill.contains_key(*k))
                    .count()
            };
            (new("haproxy") >= 3 && new("b") >= 3).then_some(())
        },
    );
    stop.store(true, Ordering::SeqCst);
    let sent: Vec<Sent> = streams
        .into_iter()
        .flat_map(|s| s.join().expect("a command stream"))
        .collect();
    check_outcomes(&f, &sent);

    // While a is down, the agent that knows only a shows disconnected everywhere once a
    // stops heartbeating (3 intervals of 2 s).
    wait_for(
        "the agent that knows only a shown disconnected",
        Duration::from_secs(15),
        || (f.replicas.holder_via(1, &only_a).is_none()).then_some(()),
    );

    restart_reclaims_nothing_stale(&mut f, epoch_before, &only_a_session, &back);
}

/// Every command has a definite outcome, none hung, none ran twice, and every command
/// reported `succeeded` made its container (checked on dockerd).
fn check_outcomes(f: &Fleet, sent: &[Sent]) {
    assert!(!sent.is_empty());
    let on_dockerd = f.containers_by_cmd();
    let mut tally: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.outcome != "succeeded") {
        eprintln!("not succeeded: {s:?}");
    }
    for s in sent {
        *tally.entry((s.way, s.outcome.as_str())).or_default() += 1;
        assert!(
            s.took < Duration::from_secs(60),
            "{} through {} took {:?}",
            s.cmd,
            s.way,
            s.took
        );
        let made = on_dockerd.get(&s.cmd).copied().unwrap_or(0);
        assert!(made <= 1, "{} ran {made} times: {s:?}", s.cmd);
        match s.outcome.as_str() {
            "succeeded" => assert_eq!(made, 1, "{s:?} but no container on dockerd"),
            // Refused before it reached any agent.
            "agent_offline" | "rate_limited" | "forbidden" | "invalid_params" => {
                assert_eq!(made, 0, "{s:?} yet dockerd has its container")
            }
            "outcome_unknown" | "timeout" => {}
            other => panic!("unexpected outcome {other}: {s:?}"),
        }
        assert!(
            s.status < 500 || s.outcome != "succeeded",
            "a 5xx reported success: {s:?}"
        );
    }
    // Nothing ran that nobody sent.
    let streamed = |c: &&String| c.starts_with("haproxy-") || c.starts_with("b-");
    for cmd in on_dockerd.keys().filter(streamed) {
        assert!(
            sent.iter().any(|s| &s.cmd == cmd),
            "dockerd has a container of command {cmd:?} that was never sent"
        );
    }
    let after = sent.iter().filter(|s| s.after_kill).count();
    let slowest = sent.iter().map(|s| s.took).max().unwrap_or_default();
    eprintln!(
        "BENCH replicas: {} commands ({} sent after the kill), outcomes {tally:?}, slowest {:.0} ms",
        sent.len(),
        after,
        slowest.as_secs_f64() * 1000.0
    );
    for way in ["haproxy", "b"] {
        assert!(
            sent.iter()
                .any(|s| s.way == way && s.after_kill && s.outcome == "succeeded"),
            "commands through {way} succeed after the kill: {tally:?}"
        );
    }
}

/// a restarts with the same id: a new epoch, none of its old claims, the moved agents stay
/// where they are (as every replica, a included, shows), and the agent that knows only a
/// comes back to it with a new session.
fn restart_reclaims_nothing_stale(
    f: &mut Fleet,
    epoch_before: i64,
    only_a_session: &str,
    moved: &[(String, Duration)],
) {
    let t = Instant::now();
    f.replicas.restart(0);
    let epoch_after: i64 = f
        .replicas
        .sql("SELECT epoch FROM replicas WHERE id = 'a'")
        .parse()
        .expect("a's epoch");
    assert!(
        epoch_after > epoch_before,
        "{epoch_before} -> {epoch_after}"
    );
    let stale = "SELECT count(*) FROM agent_presence p JOIN replicas r ON r.id = p.replica_id \
                 WHERE p.replica_id = 'a' AND p.epoch <> r.epoch";
    assert_eq!(
        f.replicas.sql(stale),
        "0",
        "a's claims of its previous life"
    );

    let only_a = f.hosts[2].host_id.clone();
    f.replicas
        .wait_held_by(&only_a, &["a"], Duration::from_secs(20));
    eprintln!(
        "BENCH replicas: a restarted with the same id; the agent that knows only a is back on it after {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let session = f.replicas.sql(&format!(
        "SELECT session_id || '|' || epoch FROM agent_presence WHERE host_id = '{only_a}'"
    ));
    assert_eq!(
        session.split('|').nth(1),
        Some(epoch_after.to_string().as_str()),
        "claimed in a's new epoch"
    );
    assert_ne!(
        session.split('|').next(),
        Some(only_a_session),
        "a new session"
    );
    assert_eq!(
        f.replicas.sql(stale),
        "0",
        "a's claims of its previous life"
    );

    // The agents that moved stay where they are, and a itself shows them there.
    for (h, (holder, _)) in f.hosts[..2].iter().zip(moved) {
        assert_eq!(
            f.replicas
                .wait_held_by(&h.host_id, &[holder.as_str()], Duration::from_secs(10)),
            *holder
        );
        assert_eq!(
            h.sessions(),
            2,
            "one new session: {}",
            h.agent.output.text()
        );
    }
    // Commands through the restarted a reach a moved agent, and through b the agent on a.
    let a = f.replicas.servers[0].http();
    let b = f.replicas.servers[1].http();
    for (base, host) in [
        (&a, &f.hosts[0].host_id),
        (&b, &only_a),
        (&a, &f.hosts[3].host_id),
    ] {
        let (st, body) = try_op(
            base,
            &f.operator,
            host,
            "container.list",
            json!({"all": true}),
        )
        .expect("container.list");
        assert_eq!(st, 200, "{base} -> {host}: {body}");
    }
}

/// The live feed `/api/v1/stream?host_id=HOST` at `addr`, read on a thread into a channel
/// (for 60 s at most, or until the receiver goes).
fn live_feed(addr: &str, token: &str, host_id: &str) -> mpsc::Receiver<Value> {
    use tokio_tungstenite::tungstenite::{client, client::IntoClientRequest, Message};
    let stream = std::net::TcpStream::connect(addr).expect("connect to the feed");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut req = format!("ws://{addr}/api/v1/stream?host_id={host_id}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = client(req, stream).expect("feed handshake");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let v = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                Ok(Message::Close(_)) => return,
                Ok(_) => {}
                Err(tokio_tungstenite::tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

#[test]
fn the_live_feed_through_each_replica_shows_the_events_of_an_agent_held_by_another() {
    let f = Fleet::start(&[&[0, 1, 2]]);
    let host = f.hosts[0].host_id.clone();
    let viewer = f.replicas.servers[1].new_token(&unique("viewer"), "viewer");
    let mut feeds: Vec<(String, mpsc::Receiver<Value>, bool)> = f
        .replicas
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| (replica_id(i), s.addr.clone()))
        .chain([("haproxy".to_string(), f.proxy.addr())])
        .map(|(name, addr)| (name, live_feed(&addr, &viewer, &host), false))
        .collect();
    // A container made on the host's daemon: its `create` event, pushed by the agent on a,
    // shows in every feed (feeds go live a moment after they open: make more until it does).
    let t0 = Instant::now();
    let mut made: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while feeds.iter().any(|(_, _, seen)| !seen) && Instant::now() < deadline {
        let name = unique("rep-feed");
        let run = format!("{RUN_LABEL}={}", f.run);
        let (ok, id) = docker_cli(&["create", "--name", &name, "--label", &run, TEST_IMAGE]);
        assert!(ok, "{id}");
        made.push(id);
        let until = Instant::now() + Duration::from_secs(1);
        for (_, rx, seen) in feeds.iter_mut().filter(|(_, _, seen)| !*seen) {
            while let Ok(v) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                let ours = v["type"] == "docker_event"
                    && made.iter().any(|id| v["event"]["actor_id"] == id.as_str());
                if ours {
                    assert_eq!(v["host_id"], host.as_str(), "{v}");
                    *seen = true;
                    break;
                }
            }
        }
    }
    for (name, _, seen) in &feeds {
        assert!(
            *seen,
            "the feed through {name} shows the agent's events (held by a)"
        );
    }
    eprintln!(
        "BENCH replicas: the live feed through a, b, c and haproxy showed an event of the agent on a after {:.0} ms ({} containers made)",
        t0.elapsed().as_secs_f64() * 1000.0,
        made.len()
    );
}

#[test]
fn revoking_an_agent_on_c_ends_its_session_on_a_within_a_second() {
    let f = Fleet::start(&[&[0, 1, 2]]);
    let h = &f.hosts[0];
    let lost = || {
        h.agent
            .output
            .text()
            .matches("connection to the server lost")
            .count()
    };
    let before = lost();
    let asked = Instant::now();
    let (st, body) =
        f.replicas.servers[2].api("DELETE", &format!("/api/v1/agents/{}", h.agent_id), None);
    assert!(st == 200 || st == 204, "revoke through c: {st} {body}");
    let t = Instant::now();
    wait_for(
        "the agent's session on a to end",
        Duration::from_secs(1),
        || (lost() > before).then_some(()),
    );
    eprintln!(
        "BENCH replicas: an agent revoked on c -> its session on a ended {:.0} ms after the request ({:.0} ms after c answered)",
        asked.elapsed().as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64() * 1000.0
    );
    // It is refused wherever it dials next, and shown disconnected everywhere.
    wait_for(
        "the revoked agent shown disconnected on every replica",
        Duration::from_secs(10),
        || {
            (0..f.replicas.len())
                .all(|i| f.replicas.holder_via(i, &h.host_id).is_none())
                .then_some(())
        },
    );
    assert_eq!(h.sessions(), 1, "{}", h.agent.output.text());
}
