//! `docker-ctl-loadgen`: benchmarks for the server's capacity and the tunnel's latency.
//!
//! It starts its own `docker-ctl-server` (SQLite in a temp dir, or PostgreSQL), simulates
//! agents that authenticate, heartbeat and answer commands the way a real agent does, and
//! prints figures. Every loop is bounded in count and time; all traffic stays on loopback.
//!
//! ```text
//! docker-ctl-loadgen capacity --agents 1000 [--rate 1000] [--duration 10] [--heartbeat 5] [--sweep]
//! docker-ctl-loadgen storm    --agents 1000
//! docker-ctl-loadgen capacity|storm --tls ...   (the server's own TLS listener, a test CA)
//! docker-ctl-loadgen latency  --calls 1000 [--rounds 2] [--containers 6] [--agent PATH]
//! docker-ctl-loadgen hop      unix:PATH|tcp:ADDR   (a relay process of the latency mode)
//! docker-ctl-loadgen floor-server | floor-agent ADDR (the latency mode's minimal tunnel)
//! docker-ctl-loadgen bulk     --agents 1000 [--parallel 100] [--database-url URL]
//! docker-ctl-loadgen replicas --database-url URL [--part hop|routed|failover] [--calls 1000]
//!                             [--agents 1000] [--rate 1000] [--duration 10] [--failover-agents 3000]
//! ```
//!
//! `replicas` runs several server replicas on one PostgreSQL database (see `replicas.rs`).
//!
//! `bulk` times one bulk operation (`container.restart` on every simulated host, selected by
//! label) from its creation to its last result, with the server's CPU and memory, and on
//! PostgreSQL the rows written per host (from `pg_stat_user_tables`).

mod floor;
mod hop;
mod latency;
mod replicas;

use futures_util::{SinkExt, StreamExt};
use protocol::{
    AuthPayload, AuthStatus, CommandResponsePayload, Envelope, HeartbeatPayload, Message, Secret,
    PROTOCOL_VERSION,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

mod tls;

type Fail = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Debug)]
struct Args {
    mode: String,
    agents: usize,
    rate: u64,
    duration: u64,
    heartbeat: u64,
    calls: usize,
    sweep: bool,
    database_url: Option<String>,
    /// latency: rounds, containers on the daemon, the agent binary.
    rounds: usize,
    containers: usize,
    agent: Option<String>,
    parallel: u32,
    tls: bool,
    /// replicas: which part (`hop`, `routed`, `failover`; all when absent).
    part: Option<String>,
    /// replicas: agents held by the replica that dies.
    failover_agents: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        mode: String::new(),
        agents: 1000,
        rate: 1000,
        duration: 10,
        heartbeat: 5,
        calls: 1000,
        sweep: false,
        database_url: None,
        rounds: 2,
        containers: 6,
        agent: None,
        parallel: 100,
        tls: false,
        part: None,
        failover_agents: 3000,
    };
    let mut it = std::env::args().skip(1);
    a.mode = it.next().unwrap_or_default();
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--agents" => a.agents = val().parse().unwrap_or_else(|_| die("--agents: a number")),
            "--rate" => a.rate = val().parse().unwrap_or_else(|_| die("--rate: a number")),
            "--duration" => {
                a.duration = val().parse().unwrap_or_else(|_| die("--duration: seconds"))
            }
            "--heartbeat" => {
                a.heartbeat = val()
                    .parse()
                    .unwrap_or_else(|_| die("--heartbeat: seconds"))
            }
            "--calls" => a.calls = val().parse().unwrap_or_else(|_| die("--calls: a number")),
            "--database-url" => a.database_url = Some(val()),
            "--rounds" => a.rounds = val().parse().unwrap_or_else(|_| die("--rounds: a number")),
            "--containers" => {
                a.containers = val()
                    .parse()
                    .unwrap_or_else(|_| die("--containers: a number"))
            }
            "--agent" => a.agent = Some(val()),
            "--sweep" => a.sweep = true,
            "--parallel" => {
                a.parallel = val()
                    .parse()
                    .unwrap_or_else(|_| die("--parallel: 1 to 1000"))
            }
            "--tls" => a.tls = true,
            "--part" => a.part = Some(val()),
            "--failover-agents" => {
                a.failover_agents = val()
                    .parse()
                    .unwrap_or_else(|_| die("--failover-agents: a number"))
            }
            other => die(&format!("unknown option {other}")),
        }
    }
    // Bounds: these are benchmarks on a 2-core machine, not soak tests.
    a.agents = a.agents.clamp(1, 20_000);
    a.rate = a.rate.clamp(1, 20_000);
    a.duration = a.duration.clamp(1, 120);
    a.calls = a.calls.clamp(1, 100_000);
    a.rounds = a.rounds.clamp(1, 10);
    a.containers = a.containers.clamp(0, 100);
    a.parallel = a.parallel.clamp(1, 1000);
    a.failover_agents = a.failover_agents.clamp(1, 20_000);
    a
}

fn die(msg: &str) -> ! {
    eprintln!("docker-ctl-loadgen: {msg}\nusage: docker-ctl-loadgen capacity|storm|latency|bulk|replicas [--agents N] [--rate R] [--duration S] [--heartbeat S] [--calls N] [--rounds N] [--containers N] [--agent PATH] [--sweep] [--parallel P] [--tls] [--database-url URL] [--part hop|routed|failover] [--failover-agents N]");
    std::process::exit(2)
}

fn main() {
    // The latency mode's helper processes, before any runtime: a relay (plain threads), and
    // the floor's server (its own runtime) and agent (one thread).
    let arg = || std::env::args().nth(2).unwrap_or_default();
    match std::env::args().nth(1).as_deref() {
        Some("hop") => {
            exit_with_parent();
            hop::run(&arg())
        }
        Some("floor-server") => {
            exit_with_parent();
            floor::server()
        }
        Some("floor-agent") => {
            exit_with_parent();
            floor::agent(&arg())
        }
        _ => {}
    }
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(async {
        match args.mode.as_str() {
            "capacity" => capacity(&args).await,
            "storm" => storm(&args).await,
            "latency" => latency::run(&args).await,
            "bulk" => bulk(&args).await,
            "replicas" => replicas::run(&args).await,
            _ => die("mode must be capacity, storm, latency, bulk or replicas"),
        }
    });
    if let Err(e) = r {
        eprintln!("docker-ctl-loadgen: {e}");
        std::process::exit(1);
    }
}

/// A helper process exits when the load generator that started it does, however that ends (a
/// destructor, a signal, a crash): its stdin is a pipe the load generator holds
/// (`latency::ModeProc`), which reads as ended once the load generator is gone.
fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// The server under test

struct ServerProc {
    child: std::process::Child,
    addr: String,
    data_dir: tempfile::TempDir,
    database_url: Option<String>,
    token: String,
    env: Vec<(String, String)>,
    /// With `--tls`: the test CA and certificate the server serves.
    tls: Option<tls::Pki>,
    /// As one replica of several on one PostgreSQL database.
    replica: Option<Replica>,
}

/// What makes a server one replica of a cluster: its id, and the at-rest key every replica
/// of the cluster shares (base64 of 32 bytes, written to its config file).
#[derive(Clone)]
struct Replica {
    id: String,
    key: String,
}

/// A workspace binary: beside this one, or in `LOADGEN_BIN_DIR` (to compare builds).
fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("LOADGEN_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent().expect("bin dir").to_path_buf()
        }
    };
    let p = dir.join(name);
    if !p.is_file() {
        die(&format!(
            "{} not found: build the workspace binaries first",
            p.display()
        ));
    }
    p
}

impl ServerProc {
    fn start(database_url: Option<String>, heartbeat: u64) -> Result<ServerProc, Fail> {
        ServerProc::start_with(database_url, heartbeat, None)
    }

    /// `start`, serving https/wss with `tls` when given.
    fn start_with(
        database_url: Option<String>,
        heartbeat: u64,
        tls: Option<tls::Pki>,
    ) -> Result<ServerProc, Fail> {
        let mut s = ServerProc::prepare(database_url, heartbeat, tls, None)?;
        s.token = s.token_create()?;
        s.spawn()?;
        Ok(s)
    }

    /// Replica `replica` of a cluster on the PostgreSQL database `database_url`, reached
    /// with `token` (made by the first replica: tokens live in the shared database).
    fn start_replica(
        database_url: &str,
        heartbeat: u64,
        replica: Replica,
        token: Option<String>,
    ) -> Result<ServerProc, Fail> {
        let mut s = ServerProc::prepare(
            Some(database_url.to_string()),
            heartbeat,
            None,
            Some(replica),
        )?;
        s.token = match token {
            Some(t) => t,
            None => s.token_create()?,
        };
        s.spawn()?;
        Ok(s)
    }

    /// A server not started yet: its data directory, its config file and a free port.
    fn prepare(
        database_url: Option<String>,
        heartbeat: u64,
        tls: Option<tls::Pki>,
        replica: Option<Replica>,
    ) -> Result<ServerProc, Fail> {
        let data_dir = tempfile::tempdir()?;
        // The load comes from one admin token: lift the per-token API rate limit.
        let mut config = "api_requests_per_second: 1000000\n".to_string();
        if let Some(r) = &replica {
            config.push_str(&format!("encryption_key: {}\n", r.key));
        }
        std::fs::write(data_dir.path().join("server.yaml"), config)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(ServerProc {
            child: std::process::Command::new("true").spawn()?,
            addr: format!("127.0.0.1:{port}"),
            data_dir,
            database_url,
            token: String::new(),
            env: vec![(
                "DOCKER_CTL_HEARTBEAT_INTERVAL".into(),
                heartbeat.to_string(),
            )],
            tls,
            replica,
        })
    }

    /// The arguments every subcommand takes: config, data directory, database.
    fn store_args(&self) -> Vec<String> {
        let dir = self.data_dir.path();
        let mut a = vec![
            "--config".to_string(),
            dir.join("server.yaml").display().to_string(),
            "--data-dir".to_string(),
            dir.display().to_string(),
        ];
        if let Some(u) = &self.database_url {
            a.extend(["--database-url".to_string(), u.clone()]);
        }
        a
    }

    /// `token create` of an admin token for the load.
    fn token_create(&self) -> Result<String, Fail> {
        let out = std::process::Command::new(bin("docker-ctl-server"))
            .args(["token", "create", "--name", "loadgen", "--role", "admin"])
            .args(self.store_args())
            .output()?;
        if !out.status.success() {
            return Err(format!("token create: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    fn spawn(&mut self) -> Result<(), Fail> {
        let mut cmd = std::process::Command::new(bin("docker-ctl-server"));
        cmd.arg("serve")
            .args(["--listen", &self.addr])
            .args(self.store_args());
        if let Some(pki) = &self.tls {
            cmd.args(pki.server_args());
        }
        if let Some(r) = &self.replica {
            cmd.args(["--replica-id", &r.id, "--advertise-url"])
                .arg(format!("http://{}", self.addr));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.path().join("server.log"))?;
        cmd.env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("server did not start listening within 30 s".into())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How clients reach this server: plain, or TLS trusting the test CA.
    fn dialer(&self) -> tls::Dialer {
        self.tls.as_ref().map(|p| p.dialer()).unwrap_or_default()
    }

    fn api(&self) -> Api {
        Api::with_dialer(self.dialer(), &self.addr, &self.token)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("LOADGEN_SHOW_SERVER_LOG").is_some() {
            let log = std::fs::read_to_string(self.data_dir.path().join("server.log"))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- server log (last lines) ---");
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// Resident set size of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/PID/stat; here index 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

// ---------------------------------------------------------------------------------------
// The REST API

#[derive(Clone)]
struct Api {
    client: hyper_util::client::legacy::Client<tls::Dialer, http_body_util::Full<bytes::Bytes>>,
    base: String,
    token: String,
}

impl Api {
    fn new(addr: &str, token: &str) -> Api {
        Api::with_dialer(tls::Dialer::plain(), addr, token)
    }

    /// A plain-text answer (`/metrics`).
    async fn text(&self, path: &str) -> Result<String, Fail> {
        use http_body_util::BodyExt;
        let req = hyper::Request::builder()
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .body(http_body_util::Full::new(bytes::Bytes::new()))?;
        let resp =
            tokio::time::timeout(Duration::from_secs(30), self.client.request(req)).await??;
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// One unlabelled counter or gauge of the server's `/metrics` (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        let text = self.text("/metrics").await.unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn with_dialer(dialer: tls::Dialer, addr: &str, token: &str) -> Api {
        let base = dialer.http_base(addr);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(512)
                .build(dialer);
        Api {
            client,
            base,
            token: token.to_string(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Fail> {
        use http_body_util::BodyExt;
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))?;
        let resp =
            tokio::time::timeout(Duration::from_secs(30), self.client.request(req)).await??;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, v))
    }
}

fn id_of(v: &Value) -> String {
    match &v["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Hosts being enrolled at once (two API calls each): enough to keep the server's pool
/// busy, few enough that no request waits long.
const ENROL_PARALLEL: usize = 64;

/// Creates N hosts with one agent each through the API, [`ENROL_PARALLEL`] at a time;
/// returns (host_id, agent_id, token).
async fn enrol_many(api: &Api, n: usize) -> Result<Vec<(String, String, String)>, Fail> {
    let sem = Arc::new(Semaphore::new(ENROL_PARALLEL));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let api = api.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            let (st, host) = api
                .call(
                    "POST",
                    "/api/v1/hosts",
                    Some(
                        json!({"name": format!("sim-{i}"), "connection_mode": "agent",
                        "labels": {"sim": "yes"}}),
                    ),
                )
                .await
                .map_err(|e| e.to_string())?;
            if st != 201 {
                return Err(format!("create host: {st} {host}"));
            }
            let host_id = id_of(&host);
            let agent_id = format!("sim-agent-{i}");
            let (st, agent) = api
                .call(
                    "POST",
                    "/api/v1/agents",
                    Some(json!({"agent_id": agent_id, "host_id": host_id})),
                )
                .await
                .map_err(|e| e.to_string())?;
            if st != 201 {
                return Err(format!("create agent: {st} {agent}"));
            }
            Ok((
                host_id,
                agent_id,
                agent["token"].as_str().unwrap_or_default().to_string(),
            ))
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await?.map_err(Fail::from)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Simulated agents

#[derive(Default)]
struct Counters {
    online: AtomicU64,
    auth_ok: AtomicU64,
    failed_handshakes: AtomicU64,
    failures: tls::Failures,
    refused: AtomicU64,
    commands: AtomicU64,
    heartbeats: AtomicU64,
    /// Milliseconds since the storm's start of each successful authentication.
    arrivals: Mutex<Vec<u64>>,
    /// Set to end every simulated agent.
    stop: AtomicBool,
    /// Sessions online per server slot (see [`SimAgent::servers`]).
    online_on: [AtomicI64; 4],
}

impl Counters {
    fn on(&self, slot: usize, delta: i64) {
        if let Some(n) = self.online_on.get(slot) {
            n.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Sessions online on server slot `slot`.
    fn online_at(&self, slot: usize) -> i64 {
        self.online_on
            .get(slot)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    fn fail(&self, cause: impl Into<String>) {
        self.failed_handshakes.fetch_add(1, Ordering::Relaxed);
        self.failures.add(cause);
    }
}

fn canned_containers() -> Value {
    json!([
        {"id": "4f1c0e0b5a2d", "name": "web-1", "image": "nginx:latest", "status": "running"},
        {"id": "9a8b7c6d5e4f", "name": "db-1", "image": "postgres:16", "status": "running"},
        {"id": "0123456789ab", "name": "job-7", "image": "busybox:latest", "status": "exited"}
    ])
}

struct SimAgent {
    dialer: tls::Dialer,
    /// The servers it knows, in order: `(slot, ws base URL)`; the slot counts its sessions
    /// in [`Counters::online_on`].
    servers: Vec<(usize, String)>,
    agent_id: String,
    token: String,
    heartbeat: Duration,
    /// How long a session must last to reset the backoff (the agent's
    /// `reconnection.stable_after`); zero resets it at every authentication.
    stable_after: Duration,
}

/// One simulated agent: connects, authenticates, heartbeats, answers commands, and
/// reconnects with the seed's backoff (base 1 s, factor 2, max 60 s, +10% jitter).
///
/// With several servers it does what the real agent does (`connection/reconnect.rs`): each
/// round tries them in order, the next at once when one cannot be reached (no TCP, TLS or
/// WebSocket connection), and backs off only when none could or after a session ended;
/// every round starts again with the first.
async fn run_sim_agent(a: SimAgent, c: Arc<Counters>, t0: Instant) {
    let mut attempt: u32 = 0;
    let mut next = 0;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20);
    while !c.stop.load(Ordering::Relaxed) {
        let i = next % a.servers.len().max(1);
        let (slot, base) = &a.servers[i];
        let url = format!("{base}/ws/agents/{}", a.agent_id);
        let connected = a
            .dialer
            .websocket(&url, Some(cfg), Duration::from_secs(20))
            .await;
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(e) => {
                if e.refused() {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.fail(e.label());
                }
                next = i + 1;
                if next < a.servers.len() {
                    continue;
                }
                next = 0;
                backoff(&mut attempt).await;
                continue;
            }
        };
        next = 0;
        let auth = Envelope::new(
            format!("auth-{}", a.agent_id),
            Message::Auth(AuthPayload {
                agent_id: a.agent_id.clone(),
                auth_token: Secret::new(a.token.clone()),
                version: "loadgen".into(),
                capabilities: vec!["docker".into()],
                protocol_version: Some(PROTOCOL_VERSION),
                signing_version: None,
                target: None,
                update: None,
                labels: Default::default(),
            }),
        );
        if ws.send(WsMessage::text(auth.encode())).await.is_err() {
            c.fail("auth: send failed");
            backoff(&mut attempt).await;
            continue;
        }
        let authed = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(Ok(m)) = ws.next().await {
                if let WsMessage::Text(t) = m {
                    if let Ok(env) = Envelope::decode(t.as_bytes()) {
                        if let Message::AuthResponse(r) = env.message {
                            return (r.status == AuthStatus::Authenticated)
                                .then_some(())
                                .ok_or("auth: rejected");
                        }
                    }
                }
            }
            Err("auth: connection closed before the answer")
        })
        .await
        .unwrap_or(Err("auth: no answer within 20 s"));
        if let Err(cause) = authed {
            c.fail(cause);
            backoff(&mut attempt).await;
            continue;
        }
        let since = Instant::now();
        c.auth_ok.fetch_add(1, Ordering::Relaxed);
        c.online.fetch_add(1, Ordering::Relaxed);
        c.on(*slot, 1);
        if let Ok(mut v) = c.arrivals.lock() {
            v.push(t0.elapsed().as_millis() as u64);
        }
        // Spread heartbeats over the interval.
        let offset =
            Duration::from_millis(rand::random::<u64>() % a.heartbeat.as_millis().max(1) as u64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, a.heartbeat);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    n += 1;
                    let hb = Envelope::new(format!("hb-{n}"), Message::Heartbeat(HeartbeatPayload {
                        docker_reachable: Some(true),
                        containers_running: Some(2),
                        containers_total: Some(3),
                        agent_uptime_secs: Some(n),
                        ..Default::default()
                    }));
                    if ws.send(WsMessage::text(hb.encode())).await.is_err() { break; }
                    c.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                m = ws.next() => {
                    match m {
                        Some(Ok(WsMessage::Text(t))) => {
                            if let Ok(env) = Envelope::decode(t.as_bytes()) {
                                if let Message::Command(cmd) = env.message {
                                    let data = match cmd.operation.as_str() {
                                        "container.list" => canned_containers(),
                                        "system.ping" => json!({"ok": true, "api_version": "1.41"}),
                                        _ => json!({}),
                                    };
                                    let resp = Envelope::new(env.id, Message::CommandResponse(CommandResponsePayload::Success { data }));
                                    if ws.send(WsMessage::text(resp.encode())).await.is_err() { break; }
                                    c.commands.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    }
                }
            }
            if c.stop.load(Ordering::Relaxed) {
                let _ = ws.close(None).await;
                c.online.fetch_sub(1, Ordering::Relaxed);
                c.on(*slot, -1);
                return;
            }
        }
        c.online.fetch_sub(1, Ordering::Relaxed);
        c.on(*slot, -1);
        if since.elapsed() >= a.stable_after {
            attempt = 0;
        }
        backoff(&mut attempt).await;
    }
}

async fn backoff(attempt: &mut u32) {
    let base = 1.0f64 * 2f64.powi((*attempt).min(16) as i32);
    let delay = base.min(60.0);
    let jitter = delay * 0.1 * rand::random::<f64>();
    *attempt += 1;
    tokio::time::sleep(Duration::from_secs_f64(delay + jitter)).await;
}

async fn start_agents(
    server: &ServerProc,
    creds: &[(String, String, String)],
    heartbeat: u64,
    c: &Arc<Counters>,
    t0: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let base = server.dialer().ws_base(&server.addr);
    let plan = Fleet {
        dialer: server.dialer(),
        heartbeat: Duration::from_secs(heartbeat),
        stable_after: Duration::ZERO,
    };
    plan.start(creds, c, t0, |_| vec![(0, base.clone())]).await
}

/// How a group of simulated agents is started.
struct Fleet {
    dialer: tls::Dialer,
    heartbeat: Duration,
    stable_after: Duration,
}

impl Fleet {
    /// Starts one simulated agent per credential; agent `i` knows the servers `servers(i)`.
    async fn start(
        &self,
        creds: &[(String, String, String)],
        c: &Arc<Counters>,
        t0: Instant,
        servers: impl Fn(usize) -> Vec<(usize, String)>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::with_capacity(creds.len());
        for (i, (_, agent_id, token)) in creds.iter().enumerate() {
            let a = SimAgent {
                dialer: self.dialer.clone(),
                servers: servers(i),
                agent_id: agent_id.clone(),
                token: token.clone(),
                heartbeat: self.heartbeat,
                stable_after: self.stable_after,
            };
            handles.push(tokio::spawn(run_sim_agent(a, c.clone(), t0)));
            // Ramp up: 1,000 connections per second at most while first connecting.
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        handles
    }
}

async fn wait_online(c: &Counters, n: u64, timeout: Duration) -> Result<Duration, Fail> {
    let t0 = Instant::now();
    while c.online.load(Ordering::Relaxed) < n {
        if t0.elapsed() > timeout {
            return Err(format!(
                "only {} of {n} agents online after {timeout:?}",
                c.online.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(t0.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// What a run of [`command_load`] saw.
struct Load {
    /// Latencies of the answered commands, ms, sorted.
    lat: Vec<f64>,
    /// Each answered command: (index in `apis`, index in `hosts`, latency ms), unsorted.
    calls: Vec<(usize, usize, f64)>,
    errors: u64,
    /// The errors by cause (`cause: count, ...`, or `none`).
    causes: String,
}

/// Sends commands to random hosts at `rate` per second for `secs`, to the servers of `apis`
/// in turn (round-robin).
async fn command_load(apis: &[Api], hosts: &[String], rate: u64, secs: u64) -> Load {
    let total = rate * secs;
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(AtomicU64::new(0));
    let causes = Arc::new(tls::Failures::default());
    let inflight = Arc::new(Semaphore::new(2048));
    let hosts = Arc::new(hosts.to_vec());
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        // Open loop: request i is due at start + i * period, whatever happened before.
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let a = i as usize % apis.len();
        let api = apis[a].clone();
        let lat = lat.clone();
        let errors = errors.clone();
        let causes = causes.clone();
        let h = rand::random::<u64>() as usize % hosts.len();
        let host = hosts[h].clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = api
                .call(
                    "POST",
                    &format!("/api/v1/hosts/{host}/operations"),
                    Some(json!({"operation": "container.list", "params": {"all": true}})),
                )
                .await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            match r {
                Ok((200, _)) => {
                    if let Ok(mut v) = lat.lock() {
                        v.push((a, h, ms))
                    }
                }
                Ok((status, body)) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    let code = body["error"]["code"].as_str().or(body["code"].as_str());
                    causes.add(format!("{status} {}", code.unwrap_or("-")));
                }
                Err(e) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    causes.add(format!("request failed: {e}"));
                }
            }
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let calls = lat.lock().map(|v| v.clone()).unwrap_or_default();
    let mut v: Vec<f64> = calls.iter().map(|c| c.2).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    Load {
        lat: v,
        calls,
        errors: errors.load(Ordering::Relaxed),
        causes: causes.summary(),
    }
}

/// Heartbeat processing lag: how long after a heartbeat is sent the server shows it.
async fn heartbeat_lag(
    api: &Api,
    server: &ServerProc,
    creds: &[(String, String, String)],
    samples: usize,
) -> Vec<f64> {
    let mut lags = Vec::new();
    let dialer = server.dialer();
    for (host_id, agent_id, token) in creds.iter().take(samples) {
        // A dedicated connection per sample, so the marker is ours.
        let url = format!("{}/ws/agents/{agent_id}", dialer.ws_base(&server.addr));
        let Ok(mut ws) = dialer.websocket(&url, None, Duration::from_secs(10)).await else {
            continue;
        };
        let auth = Envelope::new(
            "auth-lag",
            Message::Auth(AuthPayload {
                agent_id: agent_id.clone(),
                auth_token: Secret::new(token.clone()),
                version: "loadgen".into(),
                capabilities: vec!["docker".into()],
                protocol_version: Some(PROTOCOL_VERSION),
                signing_version: None,
                target: None,
                update: None,
                labels: Default::default(),
            }),
        );
        if ws.send(WsMessage::text(auth.encode())).await.is_err() {
            continue;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        let marker = 900_000_000 + rand::random::<u32>() as u64 % 1_000_000;
        let hb = Envelope::new(
            "hb-lag",
            Message::Heartbeat(HeartbeatPayload {
                agent_uptime_secs: Some(marker),
                ..Default::default()
            }),
        );
        let t = Instant::now();
        if ws.send(WsMessage::text(hb.encode())).await.is_err() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok((200, h)) = api
                .call("GET", &format!("/api/v1/hosts/{host_id}"), None)
                .await
            {
                if h.to_string().contains(&marker.to_string()) {
                    lags.push(t.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = ws.close(None).await;
    }
    lags.sort_by(|a, b| a.total_cmp(b));
    lags
}

// ---------------------------------------------------------------------------------------
// Modes

async fn capacity(args: &Args) -> Result<(), Fail> {
    let n = args.agents;
    let mut server =
        ServerProc::start_with(args.database_url.clone(), args.heartbeat, tls::pki(args)?)?;
    let api = server.api();
    tls::report(&server.dialer(), &server.addr).await;
    let t_enrol = Instant::now();
    // 20 more agents only for sampling the heartbeat lag, so sampling never replaces the
    // session of an agent that takes commands.
    let mut creds = enrol_many(&api, n + 20).await?;
    let lag_creds = creds.split_off(n);
    println!(
        "enrolled {} agents in {:.1} s",
        n + 20,
        t_enrol.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = rss_bytes(server.pid());

    let c = Arc::new(Counters::default());
    let t0 = Instant::now();
    let handles = start_agents(&server, &creds, args.heartbeat, &c, t0).await;
    let up = wait_online(&c, n as u64, Duration::from_secs(120 + n as u64 / 100)).await?;
    println!("{n} agents online in {:.1} s", up.as_secs_f64());
    // Let every agent heartbeat at least twice, then measure idle memory and CPU.
    tokio::time::sleep(Duration::from_secs(args.heartbeat * 2 + 1)).await;
    let rss1 = rss_bytes(server.pid());
    let cpu_a = cpu_secs(server.pid());
    let hb_a = c.heartbeats.load(Ordering::Relaxed);
    let idle_window = Duration::from_secs(args.heartbeat.max(5));
    tokio::time::sleep(idle_window).await;
    let idle_cpu = (cpu_secs(server.pid()) - cpu_a) / idle_window.as_secs_f64() * 100.0;
    let hb_rate = (c.heartbeats.load(Ordering::Relaxed) - hb_a) as f64 / idle_window.as_secs_f64();

    let lags = heartbeat_lag(&api, &server, &lag_creds, 20).await;
    let hosts: Vec<String> = creds.iter().map(|(h, _, _)| h.clone()).collect();

    let cpu_b = cpu_secs(server.pid());
    let tl = Instant::now();
    let Load { lat, errors, .. } =
        command_load(std::slice::from_ref(&api), &hosts, args.rate, args.duration).await;
    let load_cpu = (cpu_secs(server.pid()) - cpu_b) / tl.elapsed().as_secs_f64() * 100.0;
    let rss2 = rss_bytes(server.pid());

    println!(
        "--- capacity: N = {n}, heartbeat every {} s ---",
        args.heartbeat
    );
    println!(
        "server RSS: before agents {:.1} MiB, {n} idle agents {:.1} MiB, under load {:.1} MiB",
        mib(rss0),
        mib(rss1),
        mib(rss2)
    );
    println!(
        "server RSS per agent: {:.1} KiB",
        (rss1.saturating_sub(rss0)) as f64 / 1024.0 / n as f64
    );
    println!(
        "METRIC server_rss_per_agent_kib {:.2}",
        (rss1.saturating_sub(rss0)) as f64 / 1024.0 / n as f64
    );
    println!("server CPU: idle with heartbeats {:.1}% ({:.0} heartbeats/s), during commands {:.1}% (of one core)", idle_cpu, hb_rate, load_cpu);
    println!(
        "heartbeat processing lag (send -> visible in API, {} samples): p50 {:.1} ms, p99 {:.1} ms",
        lags.len(),
        percentile(&lags, 50.0),
        percentile(&lags, 99.0)
    );
    println!(
        "routed commands at {}/s for {} s: {} ok, {} errors, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.rate,
        args.duration,
        lat.len(),
        errors,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!("METRIC command_p50_ms {:.3}", percentile(&lat, 50.0));
    println!("METRIC command_p99_ms {:.3}", percentile(&lat, 99.0));
    println!("METRIC command_errors {errors}");
    if args.sweep {
        let mut rate = args.rate;
        let mut best = 0;
        for _ in 0..6 {
            let Load {
                lat: l, errors: e, ..
            } = command_load(std::slice::from_ref(&api), &hosts, rate, 5).await;
            let p99 = percentile(&l, 99.0);
            println!("sweep: {rate}/s -> p99 {p99:.2} ms, {e} errors");
            if p99 > 50.0 || e > 0 {
                break;
            }
            best = rate;
            rate *= 2;
        }
        println!("largest rate with p99 <= 50 ms: {best}/s");
    }
    c.stop.store(true, Ordering::Relaxed);
    server.kill();
    for h in handles {
        h.abort();
    }
    Ok(())
}

/// Rows inserted plus rows updated per table so far (PostgreSQL statistics).
fn pg_writes(url: &str) -> Vec<(String, i64)> {
    let out = std::process::Command::new("psql")
        .arg(url)
        .args(["-qAtF", " ", "-c"])
        .arg("SELECT relname, n_tup_ins + n_tup_upd FROM pg_stat_user_tables ORDER BY relname")
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (t, n) = l.split_once(' ')?;
            Some((t.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

/// One bulk operation over every simulated agent: time to the last result, server CPU and
/// memory, and (PostgreSQL) rows written per host.
async fn bulk(args: &Args) -> Result<(), Fail> {
    let n = args.agents;
    let mut server = ServerProc::start(args.database_url.clone(), args.heartbeat)?;
    let api = Api::new(&server.addr, &server.token);
    let t_enrol = Instant::now();
    let creds = enrol_many(&api, n).await?;
    println!(
        "{n} hosts enrolled through the API in {:.1} s ({ENROL_PARALLEL} at a time)",
        t_enrol.elapsed().as_secs_f64()
    );
    let c = Arc::new(Counters::default());
    let handles = start_agents(&server, &creds, args.heartbeat, &c, Instant::now()).await;
    let up = wait_online(&c, n as u64, Duration::from_secs(120 + n as u64 / 50)).await;
    let deferred = api
        .metric("docker_ctl_agent_handshakes_deferred_total")
        .await;
    let auth_failures = api.metric("docker_ctl_agent_auth_failures_total").await;
    let handshakes = format!(
        "authenticated {}, failed handshakes {} (of them deferred by the server with 1013: {deferred}; \
         refused as authentication failures: {auth_failures}), refused connections {}",
        c.auth_ok.load(Ordering::Relaxed),
        c.failed_handshakes.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed)
    );
    let up = up.inspect_err(|_| eprintln!("{handshakes}"))?;
    println!(
        "{n} agents online in {:.1} s; {handshakes}",
        up.as_secs_f64()
    );
    // Statistics reach pg_stat_user_tables within PostgreSQL's flush interval (10 s idle).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let before = args.database_url.as_deref().map(pg_writes);
    let (rss0, cpu0, cmds0) = (
        rss_bytes(server.pid()),
        cpu_secs(server.pid()),
        c.commands.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    let body = json!({ "selector": "sim=yes", "operation": "container.restart",
        "params": { "id": "web-1" }, "max_parallel": args.parallel });
    let (st, v) = api
        .call("POST", "/api/v1/bulk-operations", Some(body))
        .await?;
    if st != 202 {
        return Err(format!("bulk create: {st} {v}").into());
    }
    let accepted = t0.elapsed();
    let id = id_of(&v);
    let mut peak = rss0;
    let deadline = Duration::from_secs(600);
    let done = loop {
        let got = api
            .call(
                "GET",
                &format!("/api/v1/bulk-operations/{id}?limit=1"),
                None,
            )
            .await;
        peak = peak.max(rss_bytes(server.pid()));
        match got {
            Ok((200, d)) if d["state"].is_string() && d["state"] != "running" => break d,
            Ok((200, _)) => {}
            Ok((st, d)) => eprintln!("GET bulk operation: {st} {d}"),
            Err(e) => eprintln!("GET bulk operation: {e}"),
        }
        if t0.elapsed() > deadline {
            return Err(format!("bulk operation still running after {deadline:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = t0.elapsed();
    let cpu = cpu_secs(server.pid()) - cpu0;
    println!("--- bulk: N = {n}, max_parallel {} ---", args.parallel);
    println!(
        "202 after {:.0} ms; last result after {:.2} s ({:.0} hosts/s); state {}, counts {}",
        accepted.as_secs_f64() * 1000.0,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        done["state"],
        done["counts"]
    );
    println!(
        "commands answered by the agents: {}",
        c.commands.load(Ordering::Relaxed) - cmds0
    );
    println!(
        "server CPU: {:.1} s ({:.0}% of one core over the run); RSS before {:.1} MiB, peak {:.1} MiB",
        cpu,
        cpu / took.as_secs_f64() * 100.0,
        mib(rss0),
        mib(peak)
    );
    println!("METRIC bulk_seconds {:.3}", took.as_secs_f64());
    if let (Some(url), Some(before)) = (args.database_url.as_deref(), before) {
        tokio::time::sleep(Duration::from_secs(12)).await;
        let after = pg_writes(url);
        let mut total = 0;
        for (t, a) in &after {
            let b = before.iter().find(|(x, _)| x == t).map_or(0, |(_, b)| *b);
            if a - b > 0 {
                println!(
                    "rows written in {t}: {} ({:.2} per host)",
                    a - b,
                    (a - b) as f64 / n as f64
                );
                total += a - b;
            }
        }
        println!("rows written per host: {:.2}", total as f64 / n as f64);
    }
    c.stop.store(true, Ordering::Relaxed);
    server.kill();
    for h in handles {
        h.abort();
    }
    Ok(())
}

async fn storm(args: &Args) -> Result<(), Fail> {
    let n = args.agents;
    let mut server =
        ServerProc::start_with(args.database_url.clone(), args.heartbeat, tls::pki(args)?)?;
    let api = server.api();
    tls::report(&server.dialer(), &server.addr).await;
    let creds = enrol_many(&api, n).await?;
    let c = Arc::new(Counters::default());
    let handles = start_agents(&server, &creds, args.heartbeat, &c, Instant::now()).await;
    wait_online(&c, n as u64, Duration::from_secs(120 + n as u64 / 100)).await?;
    println!("{n} agents online; restarting the server");
    let failed_before = c.failed_handshakes.load(Ordering::Relaxed);
    c.failures.clear();

    server.kill();
    let t0 = Instant::now();
    // Agents notice the closed sockets at once and back off; restart while they wait.
    let c2 = c.clone();
    let drained = tokio::time::timeout(Duration::from_secs(30), async move {
        while c2.online.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok();
    if !drained {
        return Err("agents did not notice the server going away within 30 s".into());
    }
    if let Ok(mut v) = c.arrivals.lock() {
        v.clear();
    }
    let restart_at = t0.elapsed();
    server.spawn()?;
    let took = wait_online(&c, n as u64, Duration::from_secs(180)).await?;
    let mut arrivals = c.arrivals.lock().map(|v| v.clone()).unwrap_or_default();
    arrivals.sort_unstable();
    let max_window = max_in_window(&arrivals, 100);
    let failed = c.failed_handshakes.load(Ordering::Relaxed) - failed_before;
    println!("--- reconnect storm: N = {n} ---");
    println!(
        "server down for {:.2} s (kill to restart)",
        restart_at.as_secs_f64()
    );
    println!(
        "all {n} agents online again {:.2} s after the restart",
        took.as_secs_f64()
    );
    println!(
        "failed handshakes: {failed} (refused connections while down: {})",
        c.refused.load(Ordering::Relaxed)
    );
    println!("failed handshakes by cause: {}", c.failures.summary());
    println!("largest number of arrivals in any 100 ms window: {max_window}");
    println!("METRIC storm_failed_handshakes {failed}");
    println!("METRIC storm_all_online_secs {:.3}", took.as_secs_f64());
    println!("METRIC storm_max_arrivals_100ms {max_window}");
    c.stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.abort();
    }
    Ok(())
}

/// The largest number of the sorted times `arrivals` (ms) within any `window` ms.
fn max_in_window(arrivals: &[u64], window: u64) -> usize {
    let mut max = 0;
    let mut j = 0;
    for i in 0..arrivals.len() {
        while arrivals[i] - arrivals[j] >= window {
            j += 1;
        }
        max = max.max(i - j + 1);
    }
    max
}

fn mib(b: u64) -> f64 {
    b as f64 / 1024.0 / 1024.0
}
