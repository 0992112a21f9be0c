//! The Docker Engine API passthrough in direct mode, driven by the REAL docker CLI
//! (`/usr/local/bin/docker`, 28.x) against the real dockerd, over unix:///var/run/docker.sock
//! and tcp://127.0.0.1:23750. These tests fail (never skip) when dockerd or the CLI is missing.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use server::store::Role;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SOCKET: &str = "/var/run/docker.sock";
const DOCKER: &str = "/usr/local/bin/docker";
const IMAGE: &str = "docker-ctl-test/busybox:latest";

fn tcp_url() -> String {
    format!(
        "tcp://{}",
        std::env::var("DOCKER_CTL_TEST_DOCKER_TCP").unwrap_or_else(|_| "127.0.0.1:23750".into())
    )
}

fn require_docker() {
    assert!(
        Path::new(SOCKET).exists(),
        "dockerd is required: {SOCKET} does not exist (run scripts/services.sh)"
    );
    assert!(
        Path::new(DOCKER).exists(),
        "the docker CLI 28.x is required at {DOCKER}"
    );
}

/// A unique name for a test object.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A server with one direct host and a docker CLI configuration per role.
struct Setup {
    st: server::AppState,
    srv: Running,
    host: String,
    admin: String,
    admin_dir: tempfile::TempDir,
    viewer_dir: tempfile::TempDir,
    _db: TestDb,
}

fn cli_config(token: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("config.json"),
        json!({ "HttpHeaders": { "Authorization": format!("Bearer {token}") } }).to_string(),
    )
    .unwrap();
    dir
}

async fn setup(docker_url: &str) -> Setup {
    require_docker();
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    // `docker stop` may wait for its grace period before the daemon answers.
    cfg.agent.command_timeout = server::config::Seconds(Duration::from_secs(60));
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer-user", Role::Viewer).await;
    let (s, h) = call(
        &st,
        "POST",
        "/api/v1/hosts",
        Some(&admin),
        Some(json!({"name": "local", "docker_url": docker_url})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    let host = h["id"].as_str().unwrap().to_string();
    let srv = spawn(&st).await;
    Setup {
        admin_dir: cli_config(&admin),
        viewer_dir: cli_config(&viewer),
        st,
        srv,
        host,
        admin,
        _db: db,
    }
}

impl Setup {
    fn docker_host(&self) -> String {
        format!("tcp://{}/api/v1/hosts/{}/docker", self.srv.addr, self.host)
    }

    fn cmd(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", config)
            .env("DOCKER_HOST", self.docker_host())
            .env("DOCKER_BUILDKIT", "0")
            .arg("--config")
            .arg(config)
            .args(args);
        c
    }

    /// Runs the CLI as admin (blocking, off the runtime's worker threads).
    async fn docker(&self, args: &[&str]) -> Output {
        self.docker_as(self.admin_dir.path().to_path_buf(), args, None)
            .await
    }

    async fn docker_as(&self, config: PathBuf, args: &[&str], stdin: Option<Vec<u8>>) -> Output {
        let mut c = self.cmd(&config, args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let what = format!("docker {}", args.join(" "));
        tokio::task::spawn_blocking(move || {
            let mut child = c.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
            if let Some(data) = stdin {
                let mut si = child.stdin.take().unwrap();
                std::thread::spawn(move || {
                    let _ = si.write_all(&data);
                });
            }
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    /// Runs the CLI as admin and asserts success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args).await;
        assert!(
            out.status.success(),
            "docker {} failed ({:?}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn audit(&self) -> Vec<Value> {
        let (s, v) = call(
            &self.st,
            "GET",
            "/api/v1/audit?limit=500",
            Some(&self.admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["entries"]
            .as_array()
            .or_else(|| v["audit"].as_array())
            .or_else(|| v.as_array())
            .cloned()
            .unwrap_or_else(|| panic!("audit listing: {v}"))
    }
}

/// Removes a container through the daemon's own socket, whatever happens in the test.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new(DOCKER)
                .env("DOCKER_HOST", format!("unix://{SOCKET}"))
                .args(["rm", "-f", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn everyday_commands(docker_url: &str) {
    let s = setup(docker_url).await;
    let name = unique("dctl-pt");
    let _cleanup = Cleanup(vec![name.clone()]);

    let version = s
        .ok(&["version", "--format", "{{.Server.APIVersion}}"])
        .await;
    assert_eq!(
        version.trim(),
        "1.41",
        "the CLI negotiated the daemon's API version"
    );
    s.ok(&["ps", "-a"]).await;
    s.ok(&["images"]).await;
    s.ok(&["info", "--format", "{{.OSType}}"]).await;

    let id = s
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "dctl.test=1",
            IMAGE,
            "sh",
            "-c",
            "echo hello-out; echo hello-err >&2; sleep 300",
        ])
        .await;
    assert_eq!(id.trim().len(), 64, "container id: {id}");
    let ps = s
        .ok(&[
            "ps",
            "--filter",
            &format!("name={name}"),
            "--format",
            "{{.Names}}",
        ])
        .await;
    assert_eq!(ps.trim(), name);
    let inspect = s
        .ok(&["inspect", "--format", "{{.State.Running}}", &name])
        .await;
    assert_eq!(inspect.trim(), "true");
    let stats = s
        .ok(&["stats", "--no-stream", "--format", "{{.Name}}", &name])
        .await;
    assert_eq!(stats.trim(), name);

    // logs keeps stdout and stderr apart (multiplexed stream through the proxy)
    let mut logs = None;
    for _ in 0..100 {
        let out = s.docker(&["logs", &name]).await;
        assert!(out.status.success());
        if !out.stdout.is_empty() && !out.stderr.is_empty() {
            logs = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = logs.expect("the container wrote its lines");
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hello-out\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "hello-err\n");

    // exec: hijacked, multiplexed output, exit code
    let out = s
        .docker(&["exec", &name, "sh", "-c", "echo in-exec; exit 7"])
        .await;
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-exec\n");
    // exec -i with stdin piped: the client's half-close reaches the process
    let out = s
        .docker_as(
            s.admin_dir.path().to_path_buf(),
            &["exec", "-i", &name, "sh", "-c", "cat; echo done"],
            Some(b"from-stdin\n".to_vec()),
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-stdin\ndone\n");

    s.ok(&["stop", "-t", "1", &name]).await;
    let inspect = s
        .ok(&["inspect", "--format", "{{.State.Running}}", &name])
        .await;
    assert_eq!(inspect.trim(), "false");
    s.ok(&["rm", &name]).await;
    let out = s.docker(&["inspect", &name]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No such object"),
        "{out:?}"
    );

    // volumes and networks
    let vol = unique("dctl-vol");
    s.ok(&["volume", "create", &vol]).await;
    assert!(s
        .ok(&["volume", "ls", "-q"])
        .await
        .lines()
        .any(|l| l == vol));
    s.ok(&["volume", "rm", &vol]).await;
    assert!(!s
        .ok(&["volume", "ls", "-q"])
        .await
        .lines()
        .any(|l| l == vol));
    let net = unique("dctl-net");
    s.ok(&["network", "create", &net]).await;
    assert!(s
        .ok(&["network", "ls", "--format", "{{.Name}}"])
        .await
        .lines()
        .any(|l| l == net));
    s.ok(&["network", "rm", &net]).await;

    // every mutating request is in the audit log, with who, host, action, object, outcome
    let audit = s.audit().await;
    let has = |action: &str, target: Option<&str>| {
        audit.iter().any(|e| {
            e["action"] == action
                && e["host_id"] == s.host.as_str()
                && e["actor"] == "admin"
                && target.is_none_or(|t| e["target"] == t)
        })
    };
    for (action, target) in [
        ("docker.container.create", None),
        ("docker.container.start", Some(id.trim())),
        ("docker.container.exec", Some(name.as_str())),
        ("docker.container.stop", Some(name.as_str())),
        ("docker.container.remove", Some(name.as_str())),
        ("docker.volume.create", None),
        ("docker.volume.remove", Some(vol.as_str())),
        ("docker.network.create", None),
    ] {
        assert!(
            has(action, target),
            "audit lacks {action} {target:?}: {audit:#?}"
        );
    }
    assert!(
        !audit.iter().any(|e| e["action"] == "docker.container.list"),
        "reads are not audited"
    );
    s.srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everyday_commands_over_the_unix_socket() {
    everyday_commands(&format!("unix://{SOCKET}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everyday_commands_over_tcp() {
    everyday_commands(&tcp_url()).await;
}

/// One raw HTTP/1.1 request (the path exactly as given, like `curl --path-as-is`); returns
/// the status and the body.
fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_allowlist_and_path_hygiene() {
    let s = setup(&format!("unix://{SOCKET}")).await;
    let name = unique("dctl-pol");
    let _cleanup = Cleanup(vec![name.clone()]);
    s.ok(&["create", "--name", &name, IMAGE, "sleep", "1"])
        .await;

    // a viewer reads...
    let out = s
        .docker_as(s.viewer_dir.path().to_path_buf(), &["ps", "-a"], None)
        .await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&name));
    // ...but may not remove, and the CLI says why
    let out = s
        .docker_as(s.viewer_dir.path().to_path_buf(), &["rm", &name], None)
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains("viewer") && err.contains("operator"),
        "{err}"
    );
    s.ok(&["inspect", &name]).await;
    // ...nor read a container's files or an image: that hands out their contents.
    let file = format!("{name}:/etc/hostname");
    for args in [
        vec!["cp", file.as_str(), "-"],
        vec!["export", name.as_str()],
        vec!["save", IMAGE],
    ] {
        let out = s
            .docker_as(s.viewer_dir.path().to_path_buf(), &args, None)
            .await;
        assert!(!out.status.success(), "docker {args:?}");
        assert!(out.stdout.is_empty(), "nothing of it reached the viewer");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("permission denied") && err.contains("operator"),
            "docker {args:?}: {err}"
        );
    }
    // An operator (here the admin) may, and the daemon's tar comes through.
    let tar = s.docker(&["cp", &file, "-"]).await;
    assert!(tar.status.success(), "{tar:?}");
    assert!(tar.stdout.windows(8).any(|w| w == b"hostname"), "a tar");

    // no token: 401 with a message
    let ping = format!("/api/v1/hosts/{}/docker/_ping", s.host);
    let (st, body) = tokio::task::spawn_blocking({
        let addr = s.srv.addr;
        move || raw_request(addr, "GET", &ping, None)
    })
    .await
    .unwrap();
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("\"message\""), "{body}");

    // unlisted endpoints: 403; path tricks: 400
    let base = format!("/api/v1/hosts/{}/docker", s.host);
    let cases = [
        ("POST", format!("{base}/v1.41/swarm/init"), 403),
        ("POST", format!("{base}/v1.41/plugins/pull"), 403),
        ("GET", format!("{base}/v1.41/containers/%2e%2e/json"), 400),
        ("GET", format!("{base}/v1.41/containers/../../../info"), 400),
        ("GET", format!("{base}/v1.41/containers/a%2Fb/json"), 400),
        ("GET", format!("{base}/v1.41/containers/json?all=1"), 200),
        (
            "GET",
            "/api/v1/hosts/no-such-host/docker/_ping".to_string(),
            404,
        ),
    ];
    for (m, p, want) in cases {
        let addr = s.srv.addr;
        let tok = s.admin.clone();
        let (m2, p2) = (m.to_string(), p.clone());
        let (st, body) =
            tokio::task::spawn_blocking(move || raw_request(addr, &m2, &p2, Some(&tok)))
                .await
                .unwrap();
        assert_eq!(st, want, "{m} {p}: {body}");
        if want != 200 {
            let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
        }
    }

    let audit = s.audit().await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "docker.container.remove"
                && e["outcome"] == "denied"
                && e["actor"] == "viewer-user"
                && e["target"] == name.as_str()),
        "{audit:#?}"
    );
    assert!(
        audit.iter().any(|e| e["outcome"] == "denied"
            && e["detail"]["method"] == "POST"
            && e["action"] == "docker.unknown"),
        "refused unlisted writes are audited: {audit:#?}"
    );
    let (_, metrics) = call(&s.st, "GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains(
            "docker_ctl_passthrough_requests_total{action=\"container.list\",outcome=\"success\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("docker_ctl_passthrough_requests_total{action=\"container.remove\",outcome=\"denied\"} 1"),
        "{metrics}"
    );
    s.srv.shutdown().await;
}

/// Reads lines from a child's stdout on a thread, forwarding them with their arrival time.
fn line_reader(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

fn open_gauge(metrics: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("docker_ctl_passthrough_open "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no open gauge in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_follow_and_events_stream_live_and_stop_when_the_cli_goes() {
    let s = setup(&format!("unix://{SOCKET}")).await;
    let name = unique("dctl-follow");
    let other = unique("dctl-ev");
    let _cleanup = Cleanup(vec![name.clone(), other.clone()]);
    s.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        IMAGE,
        "sh",
        "-c",
        "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.1; done",
    ])
    .await;

    // logs -f: lines keep arriving, each soon after the previous one
    let mut child = s
        .cmd(s.admin_dir.path(), &["logs", "-f", "--tail", "1", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = line_reader(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a followed log line");
        assert!(line.starts_with("tick-"), "{line}");
        seen.push(at);
    }
    let gaps: Vec<_> = seen.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter()
            .filter(|g| **g < Duration::from_millis(200))
            .count()
            >= 7,
        "lines arrive as written (every 0.1 s): {gaps:?}"
    );
    // events: a create and a start appear while the stream is open
    let mut events = s
        .cmd(
            s.admin_dir.path(),
            &[
                "events",
                "--filter",
                &format!("container={other}"),
                "--format",
                "{{.Action}}",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ev = line_reader(events.stdout.take().unwrap());
    // the events stream is open once the server counts it
    wait_until(
        Duration::from_secs(10),
        "the events stream is open",
        || async {
            let (_, m) = call(&s.st, "GET", "/metrics", None, None).await;
            open_gauge(m.as_str().unwrap()) >= 2
        },
    )
    .await;
    s.ok(&["run", "-d", "--name", &other, IMAGE, "true"]).await;
    let mut actions = Vec::new();
    while !actions.iter().any(|a: &String| a == "start") {
        let (_, a) = ev
            .recv_timeout(Duration::from_secs(10))
            .expect("a live event");
        actions.push(a);
    }
    assert!(actions.iter().any(|a| a == "create"), "{actions:?}");

    // the CLIs go away: the server drops both daemon connections
    child.kill().unwrap();
    events.kill().unwrap();
    let _ = child.wait();
    let _ = events.wait();
    wait_until(
        Duration::from_secs(10),
        "both streams are closed",
        || async {
            let (_, m) = call(&s.st, "GET", "/metrics", None, None).await;
            open_gauge(m.as_str().unwrap()) == 0
        },
    )
    .await;
    s.srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cp_both_ways_save_load_and_build_stream_bodies() {
    let s = setup(&tcp_url()).await;
    let name = unique("dctl-cp");
    let tag = format!("dctl-test/saved:{}", unique("t"));
    let built = format!("dctl-test/built:{}", unique("b"));
    let _cleanup = Cleanup(vec![name.clone()]);
    let work = tempfile::tempdir().unwrap();
    s.ok(&["run", "-d", "--name", &name, IMAGE, "sleep", "300"])
        .await;

    // cp to and from the container: 3 MiB of pseudo-random bytes survive the round trip
    let mut data = vec![0u8; 3 * 1024 * 1024 + 17];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let src = work.path().join("payload.bin");
    std::fs::write(&src, &data).unwrap();
    s.ok(&[
        "cp",
        src.to_str().unwrap(),
        &format!("{name}:/tmp/payload.bin"),
    ])
    .await;
    let size = s
        .ok(&["exec", &name, "stat", "-c", "%s", "/tmp/payload.bin"])
        .await;
    assert_eq!(size.trim(), data.len().to_string());
    let back = work.path().join("back.bin");
    s.ok(&[
        "cp",
        &format!("{name}:/tmp/payload.bin"),
        back.to_str().unwrap(),
    ])
    .await;
    assert!(
        std::fs::read(&back).unwrap() == data,
        "cp round trip changed the bytes"
    );

    // save and load
    s.ok(&["tag", IMAGE, &tag]).await;
    let tar = work.path().join("image.tar");
    s.ok(&["save", "-o", tar.to_str().unwrap(), &tag]).await;
    assert!(std::fs::metadata(&tar).unwrap().len() > 100_000);
    s.ok(&["rmi", &tag]).await;
    assert!(!s.docker(&["image", "inspect", &tag]).await.status.success());
    let loaded = s.ok(&["load", "-i", tar.to_str().unwrap()]).await;
    assert!(loaded.contains(&tag), "{loaded}");
    s.ok(&["image", "inspect", &tag]).await;
    s.ok(&["rmi", &tag]).await;

    // build FROM scratch: an 8 MiB context streams up
    let ctx = work.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY big.bin /big.bin\n",
    )
    .unwrap();
    let big: Vec<u8> = data.iter().cycle().take(8 * 1024 * 1024).copied().collect();
    std::fs::write(ctx.join("big.bin"), &big).unwrap();
    s.ok(&["build", "-q", "-t", &built, ctx.to_str().unwrap()])
        .await;
    let size = s
        .ok(&["image", "inspect", "--format", "{{.Size}}", &built])
        .await;
    assert!(
        size.trim().parse::<u64>().unwrap() >= 8 * 1024 * 1024,
        "{size}"
    );
    s.ok(&["rmi", &built]).await;

    let (_, m) = call(&s.st, "GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap().to_string();
    let up: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("docker_ctl_passthrough_bytes_total{direction=\"up\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(up > 11 * 1024 * 1024, "bytes up counted: {up}");
    s.srv.shutdown().await;
}

/// Runs `docker ARGS` under `script` so the CLI has a real TTY.
async fn with_tty(s: &Setup, args: &str, input: &[u8]) -> Output {
    let mut c = Command::new("script");
    c.env("DOCKER_HOST", s.docker_host())
        .env("HOME", s.admin_dir.path())
        .args([
            "-qec",
            &format!("{DOCKER} --config {} {args}", s.admin_dir.path().display()),
            "/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = input.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = c.spawn().expect("script(1) is required");
        let mut si = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = si.write_all(&input);
            // keep stdin open briefly so the TTY is not hung up before the CLI attaches
            std::thread::sleep(Duration::from_secs(3));
        });
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_it_and_run_it_rm_through_a_real_tty() {
    let s = setup(&format!("unix://{SOCKET}")).await;
    let name = unique("dctl-tty");
    let _cleanup = Cleanup(vec![name.clone()]);
    s.ok(&["run", "-d", "--name", &name, IMAGE, "sleep", "300"])
        .await;

    let out = with_tty(
        &s,
        &format!("exec -it {name} sh -c 'echo tty-ok; exit 5'"),
        b"",
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tty-ok"), "{out:?}");
    assert_eq!(out.status.code(), Some(5), "{out:?}");

    // keystrokes reach an interactive shell through the hijacked connection
    let out = with_tty(
        &s,
        &format!("exec -it {name} sh"),
        b"echo typed-$((6*7))\nexit 3\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("typed-42"), "{out:?}");
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // attach to a container's TTY: keystrokes in, output and exit code out
    let attached = unique("dctl-attach");
    let _cleanup2 = Cleanup(vec![attached.clone()]);
    s.ok(&["run", "-dit", "--name", &attached, IMAGE, "sh"])
        .await;
    let out = with_tty(
        &s,
        &format!("attach {attached}"),
        b"echo attached-$((2+2))\nexit 4\n",
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("attached-4"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    let out = with_tty(
        &s,
        &format!("run -it --rm {IMAGE} sh -c 'echo in-run; exit 2'"),
        b"",
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("in-run"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    s.srv.shutdown().await;
}
