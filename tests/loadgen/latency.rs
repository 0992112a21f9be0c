//! `docker-ctl-loadgen latency`: what the tunnel adds to a call, against the Docker socket.
//!
//! One run measures, interleaved call by call (so the machine's noise hits every path alike):
//! - `direct`: `GET /v1.41/containers/json?all=1` on the Docker socket, keep-alive;
//! - `relay`: the same through a plain TCP relay in front of the socket, inside this process
//!   (what one more socket pair costs, without a hand-over to another process);
//! - `two_hops`: the same through two relay processes in a row (`hop.rs`), in the server's
//!   and the agent's place and doing no work: what two more processes cost here;
//! - `floor`: the same through a minimal WebSocket tunnel built from our stack (`floor.rs`:
//!   axum and tokio in the server's place, synchronous tungstenite in the agent's, no checks,
//!   no policy, no flow control): what the stack itself costs, under `passthrough`;
//! - `passthrough`: the same through `GET /api/v1/hosts/{id}/docker/v1.41/containers/json?all=1`
//!   (server + agent);
//! - `operation`: `POST /api/v1/hosts/{id}/operations` with `container.list` `{"all": true}`.
//!
//! Every HTTP client keeps its connection alive and sets `TCP_NODELAY`. There are `--rounds`
//! rounds (default 2) of a warm-up and `--calls` calls per path; the figures of each round
//! are printed, and the `METRIC` lines carry the better round (the lower added figure).
//! The run tops the daemon up to `--containers` containers (default 6, labelled and removed
//! afterwards). The agent is `--agent PATH` (or `AGENT_BIN`), by default the static
//! x86_64-musl build in `dist/agent/`, else the `docker-ctl-agent` beside this binary.

use crate::{bin, die, enrol_many, mib, percentile, rss_bytes, Api, Args, Fail, ServerProc};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use docker_ctl_tests::DOCKER_SOCKET as DOCKER_SOCK;
const LIST: &str = "/v1.41/containers/json?all=1";
const WARMUP: usize = 50;

/// The paths, in the order they are printed.
const PATHS: [&str; 6] = [
    "direct",
    "relay",
    "two_hops",
    "floor",
    "passthrough",
    "operation",
];

/// Paths measured side by side, call by call; path 0 is the reference the others are
/// compared with.
pub(crate) trait Calls {
    /// The paths' names, in the order they are printed.
    fn names(&self) -> &[&'static str];

    /// One call on path `i`.
    async fn call(&self, i: usize) -> Result<(), Fail>;

    /// Whether path `i` is printed with what it adds over path 0.
    fn compared(&self, i: usize) -> bool {
        i > 0
    }
}

pub(crate) async fn run(args: &Args) -> Result<(), Fail> {
    let server = ServerProc::start(args.database_url.clone(), 5)?;
    let api = Api::new(&server.addr, &server.token);
    let creds = enrol_many(&api, 1).await?;
    let (host_id, agent_id, token) = creds[0].clone();
    let dir = tempfile::tempdir()?;
    let agent_bin = agent_binary(args);
    let mut agent = start_agent(&agent_bin, dir.path(), &server.addr, &agent_id, &token)?;
    let label = format!("docker-ctl.loadgen=latency-{}", std::process::id());
    let result = async {
        wait_online(&api, &host_id).await?;
        let listed = top_up_containers(&label, args.containers)?;
        let relay = start_relay().await?;
        let near = ModeProc::start(&format!("unix:{DOCKER_SOCK}"))?;
        let far = ModeProc::start(&format!("tcp:{}", near.addr))?;
        let floor_server = ModeProc::start_mode("floor-server", None)?;
        let floor_agent = ModeProc::spawn_mode("floor-agent", &floor_server.addr)?;
        let floor = RelayHttp::new(&floor_server.addr);
        wait_floor_ready(&floor).await?;
        let floor_pids = (floor_server.pid(), floor_agent.pid());
        let paths = Paths {
            api: api.clone(),
            host_id: host_id.clone(),
            direct: UnixHttp::new(),
            relay: RelayHttp::new(&relay),
            two_hops: RelayHttp::new(&far.addr),
            floor,
            // Dropped in this order: the floor's agent goes before its server.
            _helpers: [near, far, floor_agent, floor_server],
        };
        println!(
            "--- latency: {} calls per path and round, {} rounds, {listed} containers listed, agent {}, server pid {}, agent pid {}, floor pids {} (server) {} (agent) ---",
            args.calls,
            args.rounds,
            agent_bin.display(),
            server.pid(),
            agent.id(),
            floor_pids.0,
            floor_pids.1,
        );
        let mut rounds = Vec::new();
        for r in 0..args.rounds {
            let samples = measure(&paths, args.calls, r).await?;
            print_round(&paths, r + 1, &samples);
            rounds.push(samples);
        }
        Ok::<_, Fail>((paths, rounds))
    }
    .await;
    remove_containers(&label);
    let agent_rss = rss_bytes(agent.id());
    let server_rss = rss_bytes(server.pid());
    let _ = agent.kill();
    let _ = agent.wait();
    let (paths, rounds) = result?;
    print_best(&paths, "", &rounds);
    println!(
        "RSS after the run: agent {:.2} MiB, server {:.1} MiB",
        mib(agent_rss),
        mib(server_rss)
    );
    Ok(())
}

fn agent_binary(args: &Args) -> PathBuf {
    if let Some(p) = &args.agent {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("AGENT_BIN") {
        return PathBuf::from(p);
    }
    let musl = PathBuf::from("dist/agent/x86_64-unknown-linux-musl/docker-ctl-agent");
    if musl.is_file() {
        return musl;
    }
    bin("docker-ctl-agent")
}

pub(crate) fn start_agent(
    agent_bin: &PathBuf,
    dir: &std::path::Path,
    addr: &str,
    agent_id: &str,
    token: &str,
) -> Result<std::process::Child, Fail> {
    if !agent_bin.is_file() {
        die(&format!("agent binary {} not found", agent_bin.display()));
    }
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  url: ws://{addr}\nagent:\n  id: {agent_id}\n  auth_token: {token}\ndocker:\n  socket: unix://{DOCKER_SOCK}\n  timeout: 30\nlogging:\n  level: warn\n"
        ),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(std::process::Command::new(agent_bin)
        .arg("--config")
        .arg(&cfg)
        .env("DOCKER_CTL_STATE_FILE", dir.join("state.json"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}

async fn wait_online(api: &Api, host_id: &str) -> Result<(), Fail> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, h) = api
            .call("GET", &format!("/api/v1/hosts/{host_id}"), None)
            .await?;
        if h["status"] == "online" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the agent did not come online within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn docker(args: &[&str]) -> Result<String, Fail> {
    let out = std::process::Command::new("docker").args(args).output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("docker {}: {}", args.join(" "), err.trim()).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates labelled containers until the daemon has `want` (created, not started); returns
/// how many the daemon lists.
fn top_up_containers(label: &str, want: usize) -> Result<usize, Fail> {
    let have = docker(&["ps", "-aq"])?.lines().count();
    for i in have..want {
        let name = format!("loadgen-lat-{}-{i}", std::process::id());
        let image = "docker-ctl-test/busybox:latest";
        docker(&["create", "--label", label, "--name", &name, image, "true"])?;
    }
    Ok(docker(&["ps", "-aq"])?.lines().count())
}

fn remove_containers(label: &str) {
    let filter = format!("label={label}");
    let ids = docker(&["ps", "-aq", "--filter", &filter]).unwrap_or_default();
    for id in ids.split_whitespace() {
        let _ = docker(&["rm", "-f", id]);
    }
}

// ---------------------------------------------------------------------------------------
// The clients

type Body = http_body_util::Full<bytes::Bytes>;

/// A keep-alive HTTP/1.1 client on the Docker socket.
struct UnixHttp {
    client: hyper_util::client::legacy::Client<hyperlocal::UnixConnector, Body>,
}

impl UnixHttp {
    fn new() -> UnixHttp {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(hyperlocal::UnixConnector);
        UnixHttp { client }
    }

    async fn get(&self, path: &str) -> Result<usize, Fail> {
        let uri: hyper::Uri = hyperlocal::Uri::new(DOCKER_SOCK, path).into();
        let req = hyper::Request::get(uri).body(Body::default())?;
        body_len(self.client.request(req).await?).await
    }
}

/// A keep-alive HTTP/1.1 client over TCP with `TCP_NODELAY`.
struct RelayHttp {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
    base: String,
}

impl RelayHttp {
    fn new(addr: &str) -> RelayHttp {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(http);
        RelayHttp {
            client,
            base: format!("http://{addr}"),
        }
    }

    async fn get(&self, path: &str) -> Result<usize, Fail> {
        let req = hyper::Request::get(format!("{}{path}", self.base))
            .header("Host", "docker")
            .body(Body::default())?;
        body_len(self.client.request(req).await?).await
    }
}

async fn body_len(resp: hyper::Response<hyper::body::Incoming>) -> Result<usize, Fail> {
    use http_body_util::BodyExt;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(format!("answered {status}: {}", String::from_utf8_lossy(&bytes)).into());
    }
    Ok(bytes.len())
}

/// A plain TCP relay in front of the Docker socket: each connection is copied both ways to
/// its own socket connection (`TCP_NODELAY` on the TCP side).
async fn start_relay() -> Result<String, Fail> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(DOCKER_SOCK).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    Ok(addr)
}

/// This binary in another mode (a relay: `hop TARGET`; the floor: `floor-server`,
/// `floor-agent ADDR`), killed on drop. It exits by itself when this process ends without
/// dropping it: its stdin is a pipe held here (`crate::exit_with_parent`).
struct ModeProc {
    child: std::process::Child,
    addr: String,
    _stdin: Option<std::process::ChildStdin>,
}

impl ModeProc {
    fn start(target: &str) -> Result<ModeProc, Fail> {
        ModeProc::start_mode("hop", Some(target))
    }

    fn spawn(mode: &str, arg: Option<&str>, stdout: std::process::Stdio) -> Result<ModeProc, Fail> {
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .arg(mode)
            .args(arg)
            .stdin(std::process::Stdio::piped())
            .stdout(stdout)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(ModeProc {
            child,
            addr: String::new(),
            _stdin: stdin,
        })
    }

    /// This binary in `mode` (with `arg`), once it prints `listening ADDR`.
    fn start_mode(mode: &str, arg: Option<&str>) -> Result<ModeProc, Fail> {
        use std::io::BufRead;
        let what = arg.map_or_else(|| mode.to_string(), |a| format!("{mode} {a}"));
        // Killed on drop from here on, whatever fails below.
        let mut p = ModeProc::spawn(mode, arg, std::process::Stdio::piped())?;
        let out = p.child.stdout.take().ok_or(format!("{what}: no stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        match line.trim().strip_prefix("listening ") {
            Some(addr) => {
                p.addr = addr.to_string();
                Ok(p)
            }
            None => Err(format!("{what}: did not start ({line:?})").into()),
        }
    }

    /// This binary in `mode` with `arg`, a client that prints nothing.
    fn spawn_mode(mode: &str, arg: &str) -> Result<ModeProc, Fail> {
        ModeProc::spawn(mode, Some(arg), std::process::Stdio::null())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Waits until the floor's agent is connected to the floor's server.
async fn wait_floor_ready(floor: &RelayHttp) -> Result<(), Fail> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while floor.get("/ready").await.is_err() {
        if Instant::now() > deadline {
            return Err("the floor's agent did not connect within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

impl Drop for ModeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Measuring

struct Paths {
    api: Api,
    host_id: String,
    direct: UnixHttp,
    relay: RelayHttp,
    two_hops: RelayHttp,
    floor: RelayHttp,
    /// The processes of `two_hops` and `floor` (relays, then the floor's agent and server),
    /// killed when the paths go.
    _helpers: [ModeProc; 4],
}

impl Calls for Paths {
    fn names(&self) -> &[&'static str] {
        &PATHS
    }

    async fn call(&self, i: usize) -> Result<(), Fail> {
        match i {
            0 => self.direct.get(LIST).await.map(drop),
            1 => self.relay.get(LIST).await.map(drop),
            2 => self.two_hops.get(LIST).await.map(drop),
            3 => self.floor.get(LIST).await.map(drop),
            4 => {
                let path = format!("/api/v1/hosts/{}/docker{LIST}", self.host_id);
                api_call(&self.api, "GET", &path, None).await.map(drop)
            }
            _ => {
                let path = format!("/api/v1/hosts/{}/operations", self.host_id);
                let body = r#"{"operation":"container.list","params":{"all":true}}"#;
                api_call(&self.api, "POST", &path, Some(body))
                    .await
                    .map(drop)
            }
        }
    }
}

/// A call on the REST API that keeps the body as bytes (no client-side JSON decoding, as on
/// the other paths).
pub(crate) async fn api_call(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<usize, Fail> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{path}", api.base))
        .header("Authorization", format!("Bearer {}", api.token));
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req.body(Body::from(body.unwrap_or_default().to_string()))?;
    body_len(api.client.request(req).await?).await
}

/// One round: a warm-up, then `calls` calls per path, interleaved (the order rotates every
/// call so no path always follows another). Returns each path's sorted latencies in ms.
///
/// `LATENCY_ONLY=passthrough` (a path's name) calls only that path after the warm-up, so a
/// profiler attached to the server or the agent sees one path alone.
pub(crate) async fn measure(
    paths: &impl Calls,
    calls: usize,
    round: usize,
) -> Result<Vec<Vec<f64>>, Fail> {
    let n = paths.names().len();
    for k in 0..WARMUP {
        for i in 0..n {
            paths.call((i + k) % n).await?;
        }
    }
    let only = std::env::var("LATENCY_ONLY").ok();
    let only = only.and_then(|o| paths.names().iter().position(|p| *p == o));
    let mut samples = vec![Vec::with_capacity(calls); n];
    for k in 0..calls {
        for j in 0..n {
            let i = (j + k + round) % n;
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let t = Instant::now();
            paths.call(i).await?;
            samples[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    for s in &mut samples {
        s.sort_by(|a, b| a.total_cmp(b));
    }
    Ok(samples)
}

/// (p50, p99) of a path, and what it adds over path 0.
fn figures(samples: &[Vec<f64>], i: usize) -> (f64, f64, f64, f64) {
    let (p50, p99) = (percentile(&samples[i], 50.0), percentile(&samples[i], 99.0));
    let (d50, d99) = (percentile(&samples[0], 50.0), percentile(&samples[0], 99.0));
    (p50, p99, p50 - d50, p99 - d99)
}

pub(crate) fn print_round(paths: &impl Calls, round: usize, samples: &[Vec<f64>]) {
    for (i, name) in paths.names().iter().enumerate() {
        let (p50, p99, a50, a99) = figures(samples, i);
        let max = samples[i].last().copied().unwrap_or(f64::NAN);
        let added = if paths.compared(i) {
            format!("  added p50 {a50:+.3} ms  p99 {a99:+.3} ms")
        } else {
            String::new()
        };
        println!(
            "round {round} {name:<12} p50 {p50:.3} ms  p99 {p99:.3} ms  max {max:.2} ms{added}"
        );
    }
}

/// The better of the rounds, per figure, as `METRIC` lines named `{prefix}{path}_...`.
pub(crate) fn print_best(paths: &impl Calls, prefix: &str, rounds: &[Vec<Vec<f64>>]) {
    for (i, name) in paths.names().iter().enumerate() {
        let best = |f: fn((f64, f64, f64, f64)) -> f64| {
            rounds
                .iter()
                .map(|s| f(figures(s, i)))
                .fold(f64::INFINITY, f64::min)
        };
        println!("METRIC {prefix}{name}_p50_ms {:.3}", best(|f| f.0));
        println!("METRIC {prefix}{name}_p99_ms {:.3}", best(|f| f.1));
        if paths.compared(i) {
            println!("METRIC {prefix}{name}_added_p50_ms {:.3}", best(|f| f.2));
            println!("METRIC {prefix}{name}_added_p99_ms {:.3}", best(|f| f.3));
        }
    }
}
