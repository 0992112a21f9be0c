//! The official docker CLI manages a host through server and agent: the Docker Engine API
//! under `/api/v1/hosts/{id}/docker/`, with the user's token in the CLI's `HttpHeaders`.
//! Every test drives the real CLI binary against the real dockerd through the real agent.

use docker_ctl_tests::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

struct Setup {
    server: Server,
    host_id: String,
    agent_id: String,
    cli: DockerCli,
    _agent: Agent,
    cleanup: DockerCleanup,
}

fn setup(name: &str) -> Setup {
    setup_with(name, "")
}

fn setup_with(name: &str, agent_yaml: &str) -> Setup {
    require_docker();
    let server = Server::start(Db::Sqlite);
    let (host_id, agent_id, token) = server.enrol(&unique(name));
    let agent = Agent::start_with_config(&server.ws(), &agent_id, &token, agent_yaml);
    server.wait_status(&host_id, "online", Duration::from_secs(20));
    let operator = server.new_token(&unique("op"), "operator");
    let cli = DockerCli::new(&server, &host_id, &operator);
    Setup {
        server,
        host_id,
        agent_id,
        cli,
        _agent: agent,
        cleanup: DockerCleanup::default(),
    }
}

impl Setup {
    /// A running container of the test image, cleaned up afterwards.
    fn running(&mut self, prefix: &str, cmd: &[&str]) -> String {
        let name = unique(prefix);
        self.cleanup.container(&name);
        let mut args = vec!["run", "-d", "--name", &name, TEST_IMAGE];
        args.extend_from_slice(cmd);
        self.cli.ok(&args);
        name
    }
}

#[test]
fn reading_the_host_version_info_ps_images_inspect_stats() {
    let mut s = setup("pt-read");
    let version = s.cli.ok(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(
        version.trim(),
        docker_get("/version")["ApiVersion"].as_str().unwrap()
    );
    let info = s.cli.ok(&["info", "--format", "{{.ID}}"]);
    assert_eq!(info.trim(), docker_get("/info")["ID"].as_str().unwrap());

    let name = s.running("pt-read", &["sleep", "300"]);
    let ps = s.cli.ok(&[
        "ps",
        "-a",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Names}} {{.State}}",
    ]);
    let theirs = docker_get(&format!("/containers/{name}/json"));
    let line = format!("{} {} running", theirs["Id"].as_str().unwrap(), name);
    assert!(
        ps.lines().any(|l| l == line),
        "docker ps through the tunnel shows {line:?}:\n{ps}"
    );

    let images = s.cli.ok(&[
        "images",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
    ]);
    let test_id = docker_get("/images/docker-ctl-test/busybox:latest/json")["Id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        images.contains(&format!("{TEST_IMAGE} {test_id}")),
        "{images}"
    );

    let inspected: Value = serde_json::from_str(&s.cli.ok(&["inspect", &name])).unwrap();
    assert_eq!(inspected[0]["Id"], theirs["Id"]);
    let (code, _, err) = s.cli.run(&["inspect", "no-such-thing-pt"]);
    assert_eq!(code, 1);
    assert!(err.contains("No such object: no-such-thing-pt"), "{err}");

    let stats = s.cli.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}}",
        &name,
    ]);
    assert!(stats.starts_with(&name), "{stats}");

    // `docker stats` streams until interrupted: read two refreshes, then stop the CLI.
    let mut child = s
        .cli
        .command(&["stats", "--format", "{{.Name}}", &name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = 0;
    let t0 = Instant::now();
    let mut line = String::new();
    while seen < 2 && t0.elapsed() < Duration::from_secs(20) {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains(&name) {
            seen += 1;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, 2, "streaming stats refreshed twice");
    let _ = &mut s;
}

#[test]
fn running_containers_run_stop_rm_run_it_and_attach() {
    let mut s = setup("pt-run");
    let name = s.running("pt-run", &["sleep", "300"]);
    assert_eq!(
        docker_get(&format!("/containers/{name}/json"))["State"]["Status"],
        "running"
    );
    s.cli.ok(&["stop", "-t", "1", &name]);
    assert_eq!(
        docker_get(&format!("/containers/{name}/json"))["State"]["Status"],
        "exited"
    );
    s.cli.ok(&["rm", &name]);
    let (exists, _) = docker_cli(&["inspect", &name]);
    assert!(!exists, "the container is gone from the daemon");

    // run -it --rm with a real TTY: the output and the exit code come back.
    let rm_name = unique("pt-runit");
    s.cleanup.container(&rm_name);
    let (code, screen) = s.cli.run_tty(
        &format!("run -it --rm --name {rm_name} {TEST_IMAGE} sh -c 'echo in-run; exit 2'"),
        "",
    );
    assert_eq!(code, 2, "exit code of run -it: {screen}");
    assert!(screen.contains("in-run"), "{screen}");
    let (exists, _) = docker_cli(&["inspect", &rm_name]);
    assert!(!exists, "--rm removed the container");

    // attach, input side: stdin typed into `docker attach` reaches the container's process.
    let att = unique("pt-attach");
    s.cleanup.container(&att);
    s.cli.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        &att,
        TEST_IMAGE,
        "sh",
        "-c",
        "read line; echo got-$line; sleep 300",
    ]);
    let mut child = s
        .cli
        .command(&["attach", &att])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut sin = child.stdin.take().unwrap();
        writeln!(sin, "hello").unwrap();
    }
    wait_for(
        "the attached input reached the container",
        Duration::from_secs(20),
        || {
            let (_, logs) = docker_cli(&["logs", &att]);
            logs.contains("got-hello").then_some(())
        },
    );
    let _ = child.kill();
    let _ = child.wait();

    // attach, output side: what the container prints arrives through the hijacked stream.
    let ticker = s.running(
        "pt-tick",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done",
        ],
    );
    let mut child = s
        .cli
        .command(&["attach", "--no-stdin", &ticker])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut ticks = 0;
    let t0 = Instant::now();
    while ticks < 3 && t0.elapsed() < Duration::from_secs(20) {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.starts_with("tick-") {
            ticks += 1;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ticks, 3, "docker attach shows the container's output live");
}

#[test]
fn logs_follow_and_events_stream_live() {
    let mut s = setup("pt-logs");
    let name = s.running(
        "pt-logs",
        &[
            "sh",
            "-c",
            "echo first-line; echo first-err >&2; exec sleep 300",
        ],
    );
    let logs = wait_for("logs", Duration::from_secs(10), || {
        let out = s.cli.command(&["logs", &name]).output().ok()?;
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        (o.contains("first-line") && e.contains("first-err")).then_some((o, e))
    });
    assert!(
        !logs.0.contains("first-err"),
        "stdout and stderr stay apart"
    );

    // logs -f follows: a line written in the container shows up at the CLI.
    let mut follow = s
        .cli
        .command(&["logs", "-f", "--tail", "0", &name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((line, Instant::now()));
        }
    });
    // The follow is live once a line written now shows up: write a sync marker until it does.
    let mut n = 0;
    wait_for("logs -f attached", Duration::from_secs(20), || {
        n += 1;
        docker_cli(&[
            "exec",
            &name,
            "sh",
            "-c",
            &format!("echo sync-{n} > /proc/1/fd/1"),
        ]);
        while let Ok((line, _)) = rx.recv_timeout(Duration::from_millis(300)) {
            if line.starts_with("sync-") {
                return Some(());
            }
        }
        None
    });
    let mut latencies = Vec::new();
    for i in 0..5 {
        let marker = format!("live-{i}");
        docker_cli(&[
            "exec",
            &name,
            "sh",
            "-c",
            &format!("echo {marker} > /proc/1/fd/1"),
        ]);
        let written = Instant::now();
        let at = loop {
            let (line, at) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("followed line arrives");
            if line == marker {
                break at;
            }
        };
        latencies.push(at.saturating_duration_since(written));
    }
    eprintln!("logs -f: line written -> shown at the CLI: {latencies:?}");
    let _ = follow.kill();
    let _ = follow.wait();

    // events stream live.
    let mut events = s
        .cli
        .command(&[
            "events",
            "--format",
            "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ev_out = events.stdout.take().unwrap();
    let (etx, erx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(ev_out).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    // The subscription goes live a moment after the CLI starts: create containers (each a
    // new name) until one of their events shows up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut wanted: Vec<String> = Vec::new();
    let mut got = false;
    while Instant::now() < deadline && !got {
        let ev_name = unique("pt-ev");
        s.cleanup.container(&ev_name);
        docker_cli(&["create", "--name", &ev_name, TEST_IMAGE, "true"]);
        wanted.push(format!("container create {ev_name}"));
        let until = Instant::now() + Duration::from_secs(1);
        while let Ok(line) = erx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if wanted.contains(&line) {
                got = true;
                break;
            }
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert!(got, "docker events showed one of {wanted:?}");
}

/// A busy log (dockerd sends each line as its own HTTP chunk, which the agent joins into
/// pieces of up to 32 KiB) streams through in full, byte for byte, in order. The lost wake-up
/// that once stalled such logs has its own deterministic test in `agent-lite/src/waker.rs`.
#[test]
fn a_large_log_of_short_lines_streams_through_in_full() {
    let mut s = setup("pt-biglog");
    const LINES: usize = 200_000;
    let name = s.running(
        "pt-biglog",
        &[
            "sh",
            "-c",
            &format!("seq -w 1 {LINES} | sed 's/.*/line & of a busy log, padded to look like a real one........../'; exec sleep 300"),
        ],
    );
    let direct = wait_for(
        "the container wrote its log",
        Duration::from_secs(60),
        || {
            let out = std::process::Command::new(docker_cli_path())
                .args(["logs", &name])
                .env("DOCKER_HOST", format!("unix://{DOCKER_SOCKET}"))
                .output()
                .ok()?;
            (out.stdout.iter().filter(|&&b| b == b'\n').count() == LINES).then_some(out.stdout)
        },
    );
    assert!(direct.len() > 12_000_000, "{} bytes", direct.len());

    let mut child = s
        .cli
        .command(&["logs", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).map(|_| v)
    });
    // Bounded: a stall shows as a kill here, not as a hung test.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let tunnel = reader.join().unwrap().unwrap();
    let status = status.unwrap_or_else(|| {
        panic!(
            "docker logs through the tunnel stalled: {} of {} bytes after 120 s",
            tunnel.len(),
            direct.len()
        )
    });
    assert!(status.success(), "docker logs failed: {status}");
    assert_eq!(tunnel.len(), direct.len(), "the whole log arrived");
    assert!(tunnel == direct, "byte for byte the daemon's log");
}

#[test]
fn exec_non_interactive_and_interactive_with_tty_resize_and_exit_codes() {
    let mut s = setup("pt-exec");
    let name = s.running("pt-exec", &["sleep", "300"]);
    let (code, out, err) =
        s.cli
            .run(&["exec", &name, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));

    // exec -it: keystrokes reach the shell, the terminal size arrives, the exit code returns.
    let (code, screen) = s.cli.run_tty(
        &format!("exec -it {name} sh"),
        // The CLI sends the size right after the exec starts; poll for it (at most 10 s)
        // rather than race it on a loaded machine.
        "for i in $(seq 100); do [ \"$(stty size)\" = '45 123' ] && break; sleep 0.1; done; stty size\necho typed-$((40+2))\nexit 4\n",
    );
    assert_eq!(code, 4, "{screen}");
    assert!(
        screen.contains("typed-42"),
        "keystrokes reached the shell: {screen}"
    );
    assert!(
        screen.contains("45 123"),
        "the terminal size was sent (resize): {screen}"
    );
}

#[test]
fn moving_data_cp_save_load_and_build() {
    let mut s = setup("pt-data");
    let name = s.running("pt-data", &["sleep", "300"]);
    let dir = tempfile::tempdir().unwrap();

    // cp into the container and back out.
    let src = dir.path().join("hello.txt");
    let payload: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&src, &payload).unwrap();
    s.cli.ok(&[
        "cp",
        src.to_str().unwrap(),
        &format!("{name}:/tmp/hello.txt"),
    ]);
    let (ok, inside) = docker_cli(&["exec", &name, "sh", "-c", "wc -c < /tmp/hello.txt"]);
    assert!(ok);
    assert_eq!(inside.trim(), payload.len().to_string());
    let back = dir.path().join("back.txt");
    s.cli.ok(&[
        "cp",
        &format!("{name}:/tmp/hello.txt"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), payload);

    // save and load round-trip a tagged copy of the test image.
    let tag = format!("pt-save/{}:v1", unique("img").to_lowercase());
    assert!(docker_cli(&["tag", TEST_IMAGE, &tag]).0);
    let tar = dir.path().join("img.tar");
    s.cli.ok(&["save", "-o", tar.to_str().unwrap(), &tag]);
    assert!(
        std::fs::metadata(&tar).unwrap().len() > 1_000_000,
        "the image tar is complete"
    );
    s.cli.ok(&["rmi", &tag]);
    assert!(
        !docker_cli(&["image", "inspect", &tag]).0,
        "the tag is gone"
    );
    let loaded = s.cli.ok(&["load", "-i", tar.to_str().unwrap()]);
    assert!(loaded.contains(&tag), "{loaded}");
    assert!(docker_cli(&["image", "inspect", &tag]).0, "the tag is back");
    docker_cli(&["rmi", &tag]);

    // build FROM scratch, streaming an 8 MiB context up.
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY big.bin /big.bin\nLABEL e2e=pt\n",
    )
    .unwrap();
    let big: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(ctx.join("big.bin"), &big).unwrap();
    let built = format!("pt-built/{}:1", unique("b").to_lowercase());
    s.cli.ok(&["build", "-t", &built, ctx.to_str().unwrap()]);
    let img = docker_get(&format!("/images/{built}/json"));
    assert_eq!(img["Config"]["Labels"]["e2e"], "pt");
    assert!(img["Size"].as_u64().unwrap() >= big.len() as u64);
    docker_cli(&["rmi", &built]);
}

#[test]
fn volumes_and_networks_create_ls_rm() {
    let mut s = setup("pt-vn");
    let vol = unique("pt-vol");
    let net = unique("pt-net");
    s.cleanup.volume(&vol);
    s.cleanup.network(&net);
    s.cli.ok(&["volume", "create", &vol]);
    assert!(s
        .cli
        .ok(&["volume", "ls", "--format", "{{.Name}}"])
        .lines()
        .any(|l| l == vol));
    assert_eq!(docker_get(&format!("/volumes/{vol}"))["Name"], vol.as_str());
    s.cli.ok(&["volume", "rm", &vol]);
    assert!(!s
        .cli
        .ok(&["volume", "ls", "--format", "{{.Name}}"])
        .lines()
        .any(|l| l == vol));

    s.cli.ok(&["network", "create", &net]);
    assert!(s
        .cli
        .ok(&["network", "ls", "--format", "{{.Name}}"])
        .lines()
        .any(|l| l == net));
    s.cli.ok(&["network", "rm", &net]);
    assert!(!s
        .cli
        .ok(&["network", "ls", "--format", "{{.Name}}"])
        .lines()
        .any(|l| l == net));
}

#[test]
fn authority_viewer_reads_only_unlisted_paths_refused_and_mutations_audited() {
    let mut s = setup("pt-auth");
    let name = s.running("pt-auth", &["sleep", "300"]);
    let viewer = s.server.new_token(&unique("viewer"), "viewer");
    let vcli = DockerCli::new(&s.server, &s.host_id, &viewer);
    let ps = vcli.ok(&["ps", "--format", "{{.Names}}"]);
    assert!(
        ps.lines().any(|l| l == name),
        "a viewer can docker ps: {ps}"
    );
    let (code, _, err) = vcli.run(&["rm", "-f", &name]);
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("viewer")
            || err.contains("403")
            || err.to_lowercase().contains("forbidden"),
        "{err}"
    );
    assert_eq!(
        docker_get(&format!("/containers/{name}/json"))["State"]["Status"],
        "running",
        "still there"
    );

    // Without a token: refused.
    let anon = DockerCli::new(&s.server, &s.host_id, "not-a-token");
    let (code, _, _) = anon.run(&["ps"]);
    assert_ne!(code, 0);

    // Unknown or unlisted API paths are refused, and path tricks too.
    let base = format!("/api/v1/hosts/{}/docker", s.host_id);
    let (st, body) = s
        .server
        .api("POST", &format!("{base}/v1.41/swarm/init"), Some(json!({})));
    assert_eq!(st, 403, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    for tricky in [
        "/v1.41/containers/%2e%2e/%2e%2e/info",
        "/v1.41/containers/a%2fb/json",
    ] {
        let (st, body) = s.server.api("GET", &format!("{base}{tricky}"), None);
        assert!(st == 400 || st == 403 || st == 404, "{tricky}: {st} {body}");
    }

    // Mutating passthrough requests are in the audit log.
    s.cli.ok(&["stop", "-t", "1", &name]);
    let (st, audit) = s.server.api("GET", "/api/v1/audit?limit=200", None);
    assert_eq!(st, 200, "{audit}");
    let text = audit.to_string();
    assert!(
        text.contains("container.stop"),
        "the stop is audited: {text}"
    );
    assert!(
        text.contains("container.create"),
        "the run's create is audited"
    );
    let _ = &s.agent_id;
}

#[test]
fn the_agents_local_policy_refuses_exec_attach_and_privileged_with_a_clear_403() {
    let mut s = setup_with(
        "pt-policy",
        "policy:\n  deny_exec: true\n  deny_attach: true\n  deny_privileged: true\n",
    );
    let name = s.running("pt-pol", &["sleep", "300"]);
    let (code, _, err) = s.cli.run(&["exec", &name, "true"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("policy") && err.contains("exec"),
        "the CLI shows why: {err}"
    );
    let (code, _, err) = s
        .cli
        .run(&["run", "--rm", "--privileged", TEST_IMAGE, "true"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("policy") && err.to_lowercase().contains("privileged"),
        "{err}"
    );
    // The same policy holds for catalog operations.
    let (st, body) = s.server.op(
        &s.host_id,
        "container.exec",
        json!({"id": name, "cmd": ["true"]}),
    );
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
}

#[test]
fn the_agents_local_policy_holds_against_the_docker_cli() {
    let scope = unique("e2e-scope");
    let yaml = format!(
        "policy:\n  deny_privileged: true\n  deny_host_network: true\n  deny_host_mounts: true\n  container_labels: {{docker-ctl-e2e-scope: {scope}}}\n"
    );
    let mut s = setup_with("pt-escape", &yaml);
    // A container outside the scope, made behind the agent's back.
    let victim = unique("pt-victim");
    s.cleanup.container(&victim);
    let (ok, out) = docker_cli(&["run", "-d", "--name", &victim, TEST_IMAGE, "sleep", "300"]);
    assert!(ok, "{out}");
    // An ordinary `docker run` goes through: the CLI's whole create body is read and sent.
    let ours = s.running("pt-ours", &["sleep", "300"]);
    let ps = s.cli.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(ps.trim(), ours, "only the scope is listed");
    let labels = docker_get(&format!("/containers/{ours}/json"))["Config"]["Labels"].clone();
    assert_eq!(labels["docker-ctl-e2e-scope"], json!(scope));

    let missing = unique("pt-missing-vol");
    let victim_net = format!("container:{victim}");
    let missing_bind = format!("{missing}:/data");
    let escapes: Vec<Vec<&str>> = vec![
        vec!["--privileged"],
        vec!["--pid", "host"],
        vec!["--ipc", "host"],
        vec!["--uts", "host"],
        vec!["--userns", "host"],
        vec!["--cgroupns", "host"],
        vec!["--cap-add", "SYS_ADMIN"],
        vec!["--cap-add", "ALL"],
        vec!["--security-opt", "seccomp=unconfined"],
        vec!["--security-opt", "apparmor=unconfined"],
        vec!["--security-opt", "label=disable"],
        vec!["--security-opt", "systempaths=unconfined"],
        vec!["--device", "/dev/null:/dev/x"],
        vec!["--device-cgroup-rule", "a *:* rwm"],
        vec!["--network", "host"],
        vec!["--network", &victim_net],
        vec![
            "--log-driver",
            "syslog",
            "--log-opt",
            "syslog-address=tcp://127.0.0.1:1",
        ],
        vec!["-v", "/:/host"],
        vec!["--mount", "type=bind,src=/,dst=/host"],
        vec!["-v", &missing_bind],
        vec![
            "--mount",
            "type=volume,dst=/h,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/",
        ],
        vec!["--volumes-from", &victim],
        vec!["--pid", &victim_net],
    ];
    for flags in &escapes {
        let name = unique("pt-escape");
        let mut args = vec!["run", "--name", &name];
        args.extend(flags.iter().copied());
        args.extend([TEST_IMAGE, "true"]);
        let (code, _, err) = s.cli.run(&args);
        assert_ne!(code, 0, "{flags:?} must be refused");
        assert!(
            err.contains("forbidden by agent policy"),
            "{flags:?}: {err}"
        );
        let (exists, _) = docker_cli(&["inspect", "--type", "container", &name]);
        assert!(!exists, "{flags:?}: dockerd has a container {name}");
    }
    let (exists, _) = docker_cli(&["volume", "inspect", &missing]);
    assert!(!exists, "the missing volume was created on the spot");

    // Volumes with bind options, privileged exec, and the victim through other endpoints.
    let hostvol = unique("pt-hostvol");
    let (code, _, err) = s.cli.run(&[
        "volume",
        "create",
        "-o",
        "type=none",
        "-o",
        "o=bind",
        "-o",
        "device=/",
        &hostvol,
    ]);
    assert!(code != 0 && err.contains("deny_host_mounts"), "{err}");
    let (exists, _) = docker_cli(&["volume", "inspect", &hostvol]);
    assert!(!exists, "a bind-option volume was created");
    let (code, _, err) = s.cli.run(&["exec", "--privileged", &ours, "id"]);
    assert!(code != 0 && err.contains("deny_privileged"), "{err}");
    let repo = unique("pt-commit");
    for args in [
        vec!["commit", &victim, &repo],
        vec!["cp", &format!("{victim}:/etc/hostname"), "-"],
        vec!["exec", &victim, "true"],
        vec!["stop", &victim],
    ] {
        let (code, _, err) = s.cli.run(&args);
        assert!(
            code != 0 && err.contains("container_labels"),
            "{args:?}: {err}"
        );
    }
    let (exists, _) = docker_cli(&["image", "inspect", &repo]);
    assert!(!exists, "the victim was committed");
    let net = unique("pt-escape-net");
    s.cleanup.network(&net);
    s.cli.ok(&["network", "create", &net]);
    let (code, _, err) = s.cli.run(&["network", "connect", &net, &victim]);
    assert!(code != 0 && err.contains("container_labels"), "{err}");
    let v = docker_get(&format!("/containers/{victim}/json"));
    assert!(v["NetworkSettings"]["Networks"].get(&net).is_none());
    assert_eq!(v["State"]["Running"], true, "the victim runs on");
}
