//! The Docker Engine API passthrough in direct mode, driven by the REAL docker CLI
//! (`/usr/local/bin/docker`, 28.x) against the real dockerd, over unix:///var/run/docker.sock
//! and tcp://127.0.0.1:23750. These tests fail (never skip) when dockerd or the CLI is missing.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use server::store::Role;
use std::io::{Read, Write};
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

    fn base_url(&self) -> String {
        format!("http://{}/api/v1/hosts/{}/docker", self.srv.addr, self.host)
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
