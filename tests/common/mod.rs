//! Shared helpers for the end-to-end tests: start the real `docker-ctl-server` and
//! `docker-ctl-agent` processes, talk to the REST API, ask the daemon itself, and wait for
//! conditions with deadlines (never bare sleeps).
//!
//! A test that needs dockerd or PostgreSQL fails with a clear message when the service is
//! absent; nothing here skips.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod replicas;
pub use replicas::*;

pub const TEST_IMAGE: &str = "docker-ctl-test/busybox:latest";
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The workspace's target directory for this build profile (where cargo put our binaries).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/e2e-xxxx -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Path of a workspace binary. `cargo test --workspace` builds them before any test runs.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build --workspace --bins` (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A free loopback port: bound to 0 by the OS, then released for the child to bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("addr")
        .port()
}

/// Polls `cond` until it returns `Some` or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails the test with a clear message when dockerd is not reachable.
pub fn require_docker() {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "--unix-socket",
            DOCKER_SOCKET,
            "http://localhost/_ping",
        ])
        .output()
        .expect("curl must be installed (scripts/services.sh installs it)");
    assert!(
        out.status.success() && out.stdout == b"OK",
        "dockerd is not reachable at {DOCKER_SOCKET}: run scripts/services.sh ({})",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asks the daemon itself over its unix socket: `GET path`, JSON answer.
pub fn docker_get(path: &str) -> Value {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "--max-time",
            "30",
            "--unix-socket",
            DOCKER_SOCKET,
        ])
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "docker GET {path}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("daemon JSON")
}

/// Runs the docker CLI against the local daemon (for setup and cleanup only).
pub fn docker_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{DOCKER_SOCKET}"))
        .output()
        .expect("docker CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// A unique name for test objects, so parallel tests never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos
    )
}

/// Removes Docker objects whose names were registered, even when the test panics.
#[derive(Default)]
pub struct DockerCleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
    labels: Vec<String>,
}

impl DockerCleanup {
    /// Every container carrying the label `key=value` (made by the test, named or not).
    pub fn label(&mut self, key_value: &str) {
        self.labels.push(key_value.to_string());
    }
    pub fn container(&mut self, name: &str) {
        self.containers.push(name.to_string());
    }
    pub fn volume(&mut self, name: &str) {
        self.volumes.push(name.to_string());
    }
    pub fn network(&mut self, name: &str) {
        self.networks.push(name.to_string());
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker_cli(&["rm", "-f", c]);
        }
        for l in &self.labels {
            let (_, ids) = docker_cli(&["ps", "-aq", "--filter", &format!("label={l}")]);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            for chunk in ids.chunks(100) {
                let mut args = vec!["rm", "-f"];
                args.extend_from_slice(chunk);
                let _ = docker_cli(&args);
            }
        }
        for n in &self.networks {
            let _ = docker_cli(&["network", "rm", n]);
        }
        for v in &self.volumes {
            let _ = docker_cli(&["volume", "rm", "-f", v]);
        }
    }
}

/// Which store the server runs on.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite,
    /// A fresh PostgreSQL database, dropped when the test's server is dropped.
    Postgres(String),
}

fn pg_admin_url() -> String {
    std::env::var("DOCKER_CTL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://dockerctl:dockerctl@127.0.0.1:5432/dockerctl".to_string())
}

fn psql(sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .arg(pg_admin_url())
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Db {
    pub fn postgres() -> Db {
        let name = unique("e2e").replace('-', "_");
        psql(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {}: {e} (run scripts/services.sh)",
                pg_admin_url()
            )
        });
        let base = pg_admin_url();
        let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
        Db::Postgres(format!("{prefix}/{name}"))
    }

    pub fn both() -> Vec<Db> {
        vec![Db::Sqlite, Db::postgres()]
    }

    fn drop_database(&self) {
        if let Db::Postgres(url) = self {
            if let Some((_, name)) = url.rsplit_once('/') {
                let _ = psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

/// Collects a child's output lines so a failing test can show them.
#[derive(Clone, Default)]
pub struct Output(
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
);

impl Output {
    fn capture(&self, child: &mut Child) {
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = self.0.clone();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().map(|mut v| v.push(line)).ok();
                }
            });
            self.1.lock().map(|mut v| v.push(reader)).ok();
        }
    }

    /// Waits (at most 5 s) until the exited child's last lines are read: a process can exit
    /// before its final log line reaches us through the pipe.
    fn drain(&self) {
        let readers = self
            .1
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(5);
        for reader in readers {
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }

    pub fn text(&self) -> String {
        self.0.lock().map(|v| v.join("\n")).unwrap_or_default()
    }

    /// The address from the server's JSON log line `{"fields":{"message":"listening","addr":...}}`.
    pub fn listening_addr(&self) -> Option<String> {
        let lines = self.0.lock().ok()?;
        lines.iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "listening")
                .then(|| v["fields"]["addr"].as_str().map(str::to_string))?
        })
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.0
            .lock()
            .map(|v| v.iter().any(|l| l.contains(needle)))
            .unwrap_or(false)
    }
}

/// A running `docker-ctl-server`.
pub struct Server {
    pub db: Db,
    pub data_dir: tempfile::TempDir,
    pub addr: String,
    pub admin_token: String,
    child: Option<Child>,
    pub output: Output,
    pub extra_env: Vec<(String, String)>,
    /// Flags added to `serve` (a replica's `--replica-id`, `--advertise-url`, `--region`).
    pub serve_args: Vec<String>,
    /// Whether dropping this server drops its PostgreSQL database (not for one replica of
    /// several: the [`Replicas`] that started them drops it last).
    owns_db: bool,
}

impl Server {
    /// Starts a server on a free port with a short heartbeat interval, and makes an admin token.
    pub fn start(db: Db) -> Server {
        Self::start_with(db, &[])
    }

    pub fn start_with(db: Db, env: &[(&str, &str)]) -> Server {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let admin_token = Self::token_create(&db, data_dir.path(), "e2e-admin", "admin");
        let mut s = Server {
            db,
            data_dir,
            // Port 0 on the first start: the server logs the address it bound, and restarts
            // reuse it so agents find the server again.
            addr: "127.0.0.1:0".to_string(),
            admin_token,
            child: None,
            output: Output::default(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            serve_args: Vec::new(),
            owns_db: true,
        };
        s.spawn();
        s
    }

    /// Starts one replica of several on `db`: `--replica-id ID --advertise-url
    /// http://127.0.0.1:PORT --region REGION` on a free port, with `at_rest_key` (base64 of 32
    /// bytes, the same for every replica) as its `DATA_DIR/secret.key`. The database is not
    /// dropped with this server.
    pub fn start_replica(
        db: &Db,
        at_rest_key: &str,
        admin_token: &str,
        id: &str,
        region: &str,
    ) -> Server {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let key = data_dir.path().join("secret.key");
        std::fs::write(&key, at_rest_key).expect("write secret.key");
        set_mode_0600(&key);
        let addr = format!("127.0.0.1:{}", free_port());
        let mut s = Server {
            db: db.clone(),
            data_dir,
            serve_args: vec![
                "--replica-id".into(),
                id.into(),
                "--advertise-url".into(),
                format!("http://{addr}"),
                "--region".into(),
                region.into(),
            ],
            addr,
            admin_token: admin_token.to_string(),
            child: None,
            output: Output::default(),
            extra_env: Vec::new(),
            owns_db: false,
        };
        s.spawn();
        s
    }

    fn db_args(db: &Db, data_dir: &Path) -> Vec<String> {
        let mut a = vec!["--data-dir".to_string(), data_dir.display().to_string()];
        if let Db::Postgres(url) = db {
            a.push("--database-url".into());
            a.push(url.clone());
        }
        a
    }

    /// `docker-ctl-server token create`: prints only the token.
    pub fn token_create(db: &Db, data_dir: &Path, name: &str, role: &str) -> String {
        let out = Command::new(bin("docker-ctl-server"))
            .args(["token", "create", "--name", name, "--role", role])
            .args(Self::db_args(db, data_dir))
            .env_remove("DATABASE_URL")
            .output()
            .expect("run docker-ctl-server token create");
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string();
        assert!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "token create printed {token:?}"
        );
        token
    }

    /// Runs `docker-ctl-server ARGS` on this server's database: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("docker-ctl-server"))
            .args(args)
            .args(Self::db_args(&self.db, self.data_dir.path()))
            .env_remove("DATABASE_URL")
            .env_remove("DOCKER_CTL_PUBLIC_URL")
            .output()
            .expect("run docker-ctl-server");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn new_token(&self, name: &str, role: &str) -> String {
        Self::token_create(&self.db, self.data_dir.path(), name, role)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(bin("docker-ctl-server"));
        cmd.arg("serve")
            .args([
                "--listen",
                &self.addr,
                "--log-format",
                "json",
                "--heartbeat-interval",
                "1",
            ])
            .args(Self::db_args(&self.db, self.data_dir.path()))
            .args(&self.serve_args)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn docker-ctl-server");
        self.output = Output::default();
        self.output.capture(&mut child);
        self.child = Some(child);
        let out = self.output.clone();
        if self.addr.ends_with(":0") {
            self.addr = wait_for(
                "the server's listening address",
                Duration::from_secs(30),
                || {
                    if let Some(c) = self.child.as_mut() {
                        if let Ok(Some(status)) = c.try_wait() {
                            {
                                out.drain();
                                panic!("server exited with {status}:\n{}", out.text());
                            }
                        }
                    }
                    out.listening_addr()
                },
            );
        }
        let url = format!("{}/healthz", self.http());
        wait_for(
            &format!("server healthz at {url}"),
            Duration::from_secs(30),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        {
                            out.drain();
                            panic!("server exited with {status}:\n{}", out.text());
                        }
                    }
                }
                ureq::get(&url)
                    .call()
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| ())
            },
        );
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same address and database.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Calls the API with the admin token.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(&self.admin_token, method, path, body)
    }

    pub fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        api_call(&self.http(), Some(token), method, path, body)
    }

    /// Creates an agent-mode host and an agent for it; returns (host_id, agent_id, token).
    pub fn enrol(&self, name: &str) -> (String, String, String) {
        let (st, host) = self.api(
            "POST",
            "/api/v1/hosts",
            Some(json!({"name": name, "connection_mode": "agent"})),
        );
        assert_eq!(st, 201, "create host: {host}");
        let host_id = json_id(&host);
        let agent_id = format!("{name}-agent");
        let (st, agent) = self.api(
            "POST",
            "/api/v1/agents",
            Some(json!({"agent_id": agent_id, "host_id": host_id})),
        );
        assert_eq!(st, 201, "create agent: {agent}");
        let token = agent["token"]
            .as_str()
            .expect("token shown once")
            .to_string();
        (host_id, agent_id, token)
    }

    /// Runs an operation on a host: (HTTP status, body).
    pub fn op(&self, host_id: &str, operation: &str, params: Value) -> (u16, Value) {
        self.api(
            "POST",
            &format!("/api/v1/hosts/{host_id}/operations"),
            Some(json!({"operation": operation, "params": params})),
        )
    }

    /// Runs an operation that must succeed and returns its `data`.
    pub fn op_ok(&self, host_id: &str, operation: &str, params: Value) -> Value {
        let (st, body) = self.op(host_id, operation, params.clone());
        assert_eq!(st, 200, "{operation} {params}: {body}");
        assert_eq!(body["status"], "success", "{operation}: {body}");
        body["data"].clone()
    }

    pub fn host_status(&self, host_id: &str) -> String {
        let (st, h) = self.api("GET", &format!("/api/v1/hosts/{host_id}"), None);
        assert_eq!(st, 200, "get host: {h}");
        h["status"].as_str().unwrap_or("").to_string()
    }

    pub fn wait_status(&self, host_id: &str, want: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        wait_for(&format!("host {host_id} {want}"), timeout, || {
            (self.host_status(host_id) == want).then_some(())
        });
        t0.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- server output ---\n{}", self.output.text());
        }
        if self.owns_db {
            self.db.drop_database();
        }
    }
}

/// The id field of a created resource, whatever its JSON type.
pub fn json_id(v: &Value) -> String {
    match &v["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("no id in {v} ({other})"),
    }
}

/// One API call with an optional bearer token. Non-2xx answers are returned, not errors.
pub fn api_call(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let url = format!("{base}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        ("DELETE", _) => {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        (m, b) => {
            let mut r = match m {
                "POST" => agent.post(&url),
                "PATCH" => agent.patch(&url),
                "PUT" => agent.put(&url),
                other => panic!("method {other}"),
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.header("Content-Type", "application/json")
                .send(b.unwrap_or(json!({})).to_string())
        }
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

/// A running `docker-ctl-agent` (or an ARM build of it under qemu).
pub struct Agent {
    child: Option<Child>,
    pub output: Output,
    pub config_dir: tempfile::TempDir,
    program: Vec<String>,
    /// Flags after `--config FILE`.
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    pub fn start(server_ws: &str, agent_id: &str, token: &str) -> Agent {
        Self::start_program(
            vec![bin("docker-ctl-agent").display().to_string()],
            server_ws,
            agent_id,
            token,
        )
    }

    /// Starts the agent with extra top-level YAML appended to its config (e.g. a `policy:`).
    pub fn start_with_config(
        server_ws: &str,
        agent_id: &str,
        token: &str,
        extra_yaml: &str,
    ) -> Agent {
        let mut a = Self::start(server_ws, agent_id, token);
        a.kill();
        let cfg = a.config_dir.path().join("agent.yaml");
        let mut text = std::fs::read_to_string(&cfg).expect("read agent.yaml");
        text.push_str(extra_yaml);
        std::fs::write(&cfg, text).expect("write agent.yaml");
        a.spawn();
        a
    }

    /// Starts `program` with extra top-level YAML appended to its config and extra
    /// environment variables.
    pub fn start_custom(
        program: Vec<String>,
        server_ws: &str,
        agent_id: &str,
        token: &str,
        extra_yaml: &str,
        env: &[(&str, &str)],
    ) -> Agent {
        let mut a = Self::start_program(program, server_ws, agent_id, token);
        a.kill();
        let cfg = a.config_dir.path().join("agent.yaml");
        let mut text = std::fs::read_to_string(&cfg).expect("read agent.yaml");
        text.push_str(extra_yaml);
        std::fs::write(&cfg, text).expect("write agent.yaml");
        a.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        a.spawn();
        a
    }

    /// Starts an agent binary through a runner such as `qemu-aarch64`.
    pub fn start_program(
        program: Vec<String>,
        server_ws: &str,
        agent_id: &str,
        token: &str,
    ) -> Agent {
        let config_dir = tempfile::tempdir().expect("tempdir");
        let cfg = config_dir.path().join("agent.yaml");
        std::fs::write(
            &cfg,
            "server:\n  url: ${DOCKER_CTL_E2E_SERVER}\nagent:\n  id: ${DOCKER_CTL_E2E_AGENT}\n  auth_token: ${DOCKER_CTL_E2E_TOKEN}\ndocker:\n  socket: unix:///var/run/docker.sock\n  timeout: 60\nlogging:\n  level: debug\nreconnection:\n  enabled: true\n  max_attempts: -1\n  base_delay: 0.2\n  max_delay: 2.0\n",
        )
        .expect("write agent.yaml");
        set_mode_0600(&cfg);
        let env = vec![
            // Each agent keeps its own idempotency memory.
            (
                "DOCKER_CTL_STATE_FILE".to_string(),
                config_dir.path().join("state.json").display().to_string(),
            ),
            ("DOCKER_CTL_E2E_SERVER".to_string(), server_ws.to_string()),
            ("DOCKER_CTL_E2E_AGENT".to_string(), agent_id.to_string()),
            ("DOCKER_CTL_E2E_TOKEN".to_string(), token.to_string()),
        ];
        let mut a = Agent {
            child: None,
            output: Output::default(),
            config_dir,
            program,
            args: Vec::new(),
            env,
        };
        a.spawn();
        a
    }

    /// Starts an agent that enrols itself: `--enrol-token TOKEN --name NAME --state-file
    /// CONFIG_DIR/state.json` and a config with the server URL and no id or token.
    pub fn start_enrolling(server_ws: &str, enrol_token: &str, name: &str) -> Agent {
        let config_dir = tempfile::tempdir().expect("tempdir");
        let state = config_dir.path().join("state.json").display().to_string();
        Self::start_enrolling_in(config_dir, server_ws, enrol_token, name, &state)
    }

    /// [`Agent::start_enrolling`] with the config directory and state file given.
    pub fn start_enrolling_in(
        config_dir: tempfile::TempDir,
        server_ws: &str,
        enrol_token: &str,
        name: &str,
        state_file: &str,
    ) -> Agent {
        let cfg = config_dir.path().join("agent.yaml");
        std::fs::write(
            &cfg,
            format!("server:\n  url: {server_ws}\ndocker:\n  socket: unix:///var/run/docker.sock\n  timeout: 60\nlogging:\n  level: debug\nreconnection:\n  enabled: true\n  max_attempts: -1\n  base_delay: 0.2\n  max_delay: 2.0\n"),
        )
        .expect("write agent.yaml");
        set_mode_0600(&cfg);
        let args = [
            "--enrol-token",
            enrol_token,
            "--name",
            name,
            "--state-file",
            state_file,
        ];
        let mut a = Agent {
            child: None,
            output: Output::default(),
            config_dir,
            program: vec![bin("docker-ctl-agent").display().to_string()],
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        };
        a.spawn();
        a
    }

    /// Waits for the agent to exit by itself; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("a started agent");
        let status = wait_for("the agent to exit", timeout, || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        self.output.drain();
        status.code()
    }

    fn spawn(&mut self) {
        let cfg = self.config_dir.path().join("agent.yaml");
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .arg("--config")
            .arg(&cfg)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = spawn_retrying_busy(&mut cmd).expect("spawn docker-ctl-agent");
        self.output = Output::default();
        self.output.capture(&mut child);
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- agent output ---\n{}", self.output.text());
        }
    }
}

fn set_mode_0600(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

/// The official docker CLI (28.x, `/usr/local/bin/docker`) pointed at a host's passthrough
/// endpoint, with the user's token in `HttpHeaders` of its own `config.json`.
pub struct DockerCli {
    pub host: String,
    pub config: tempfile::TempDir,
}

/// The docker CLI binary the passthrough tests drive.
pub fn docker_cli_path() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("DOCKER_CTL_TEST_DOCKER_CLI")
            .unwrap_or_else(|_| "/usr/local/bin/docker".into()),
    );
    assert!(p.is_file(), "the docker CLI is missing at {}", p.display());
    p
}

impl DockerCli {
    pub fn new(server: &Server, host_id: &str, token: &str) -> DockerCli {
        Self::at(&server.addr, host_id, token)
    }

    /// The CLI pointed at the server (or a proxy in front of servers) at `addr` (`HOST:PORT`).
    pub fn at(addr: &str, host_id: &str, token: &str) -> DockerCli {
        let config = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            config.path().join("config.json"),
            json!({"HttpHeaders": {"Authorization": format!("Bearer {token}")}}).to_string(),
        )
        .expect("write config.json");
        DockerCli {
            host: format!("tcp://{addr}/api/v1/hosts/{host_id}/docker"),
            config,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(docker_cli_path());
        c.arg("--config").arg(self.config.path()).args(args);
        c.env("DOCKER_HOST", &self.host)
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_CONTEXT");
        c
    }

    /// Runs the CLI: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(
            code,
            0,
            "docker {}: exit {code}\nstdout: {out}\nstderr: {err}",
            args.join(" ")
        );
        out
    }

    /// Runs a CLI command line under `script`, which gives it a pseudo-terminal (for `-it`),
    /// sized 45 rows by 123 columns. `stdin` lines are typed into the terminal.
    /// Returns (exit code, what the terminal showed).
    pub fn run_tty(&self, cmdline: &str, stdin: &str) -> (i32, String) {
        let full = format!(
            "stty cols 123 rows 45 2>/dev/null; {} --config {} {cmdline}",
            docker_cli_path().display(),
            self.config.path().display()
        );
        let mut child = Command::new("script")
            .args(["-qefc", &full, "/dev/null"])
            .env("DOCKER_HOST", &self.host)
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs the CLI in a pty");
        {
            use std::io::Write;
            let mut sin = child.stdin.take().expect("stdin");
            // Give the remote shell time to start before typing each line.
            for line in stdin.split_inclusive('\n') {
                std::thread::sleep(Duration::from_millis(400));
                let _ = sin.write_all(line.as_bytes());
                let _ = sin.flush();
            }
            std::thread::sleep(Duration::from_millis(400));
        }
        let out = child.wait_with_output().expect("script output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// A loopback TCP relay to `target` (for 10 minutes at most): the agent dials the relay, so
/// the test can cut it (its listener closes and every connection through it is shut down)
/// or partition its port, while the test's own calls still reach the server directly.
pub struct Relay {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Connections relayed so far.
    pub accepted: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("relay addr").port();
        let relay = Relay {
            port,
            stop: Arc::default(),
            accepted: Arc::default(),
            live: Arc::default(),
        };
        let (stop, accepted, live) = (
            relay.stop.clone(),
            relay.accepted.clone(),
            relay.live.clone(),
        );
        let target = target.to_string();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                client.set_nonblocking(false).expect("blocking");
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut guard = live.lock().unwrap();
                guard.push(client.try_clone().expect("clone"));
                guard.push(upstream.try_clone().expect("clone"));
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        upstream.try_clone().expect("clone"),
                    ),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        relay
    }

    pub fn cut(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Runs `docker-ctl-server ARGS` outside any server (no database or config from the
/// environment) and returns its stdout; panics with its stderr when it fails.
pub fn server_cli(args: &[&str]) -> String {
    let out = Command::new(bin("docker-ctl-server"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DOCKER_CTL_CONFIG")
        .output()
        .expect("run docker-ctl-server");
    assert!(
        out.status.success(),
        "docker-ctl-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Spawns `cmd`, trying again (at most 50 times, 20 ms apart) while its program is "busy":
/// a binary a test has just written can still be open for writing in a child that another
/// test thread forked at that moment (until that child's exec closes it), and exec then
/// fails with ETXTBSY.
pub fn spawn_retrying_busy(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
