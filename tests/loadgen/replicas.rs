//! `docker-ctl-loadgen replicas`: several `docker-ctl-server` replicas on one PostgreSQL
//! database, as `serve --replica-id ID --advertise-url URL` runs them (one shared at-rest key).
//!
//! Three parts (`--part hop|routed|failover`, all three by default), each on a database of
//! its own, created on the `--database-url` server before and dropped after:
//! - `hop`: what one forwarding hop adds. Two replicas A and B, one agent held by A (simulated,
//!   or the real agent with `--agent PATH`); `POST /api/v1/hosts/{id}/operations`
//!   (`container.list`) to A (`direct`) and to B (`forwarded` to A), interleaved call by call
//!   after a warm-up, with `GET /healthz` on A as the floor of one keep-alive HTTP exchange;
//!   `--rounds` rounds of `--calls` calls (the `METRIC` lines carry the better round), then
//!   each replica's CPU per call of each path alone.
//! - `routed`: commands at `--rate` per second for `--duration` seconds (open loop), sent to
//!   the replicas in turn, with `--agents` simulated agents spread over 1, 2 and 3 replicas.
//! - `failover`: `--failover-agents` simulated agents (3,000) held by A of three replicas,
//!   each knowing A, B, C in that order and failing over as the real agent does; A is killed
//!   with SIGKILL, and the time until all are back on B or C is measured, with the failed
//!   handshakes by cause.
//!
//! Every loop is bounded in count and time; all traffic stays on loopback.

use crate::latency::{self, Calls};
use crate::{
    cpu_secs, enrol_many, max_in_window, percentile, wait_online, Api, Args, Counters, Fail, Fleet,
    Load, Replica, ServerProc,
};
use base64::Engine;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The replicas' ids, in the order they start.
const IDS: [&str; 3] = ["a", "b", "c"];

/// How long the real agent's session must last to reset its backoff
/// (`reconnection.stable_after`, 30 s by default).
const STABLE_AFTER: Duration = Duration::from_secs(30);

pub(crate) async fn run(args: &Args) -> Result<(), Fail> {
    let part = args.part.as_deref().unwrap_or("all");
    if !matches!(part, "all" | "hop" | "routed" | "failover") {
        return Err(format!("--part must be hop, routed or failover, not {part:?}").into());
    }
    if matches!(part, "all" | "hop") {
        timed("hop", hop(args)).await?;
    }
    if matches!(part, "all" | "routed") {
        timed("routed", routed(args)).await?;
    }
    if matches!(part, "all" | "failover") {
        timed("failover", failover(args)).await?;
    }
    Ok(())
}

/// Runs one part, printing the machine's load average before and after it.
async fn timed(
    name: &str,
    part: impl std::future::Future<Output = Result<(), Fail>>,
) -> Result<(), Fail> {
    println!("--- replicas {name}: load average {} ---", loadavg());
    let t = Instant::now();
    let r = part.await;
    println!(
        "--- replicas {name}: done in {:.1} s, load average {} ---",
        t.elapsed().as_secs_f64(),
        loadavg()
    );
    r
}

/// The machine's CPU time so far: (busy, total) in clock ticks, all cores (`/proc/stat`).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    // idle and iowait
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The share of the machine's CPU busy since `before` (from [`machine_ticks`]), in percent.
fn machine_busy_since(before: (u64, u64)) -> f64 {
    let now = machine_ticks();
    let total = now.1.saturating_sub(before.1).max(1);
    now.0.saturating_sub(before.0) as f64 / total as f64 * 100.0
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" / ")
}

// ---------------------------------------------------------------------------------------
// A cluster on a database of its own

/// A database for one part, created on the server of `--database-url` and dropped with it.
struct ScratchDb {
    admin: String,
    name: String,
    url: String,
}

fn psql(url: &str, sql: &str) -> Result<(), Fail> {
    let out = std::process::Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("psql {sql:?}: {}", err.trim()).into());
    }
    Ok(())
}

impl ScratchDb {
    fn create(admin: &str, tag: &str) -> Result<ScratchDb, Fail> {
        let (without_query, query) = match admin.split_once('?') {
            Some((u, q)) => (u, format!("?{q}")),
            None => (admin, String::new()),
        };
        let (prefix, _) = without_query
            .rsplit_once('/')
            .filter(|(p, _)| p.contains("://"))
            .ok_or("--database-url must be postgres://USER:PASSWORD@HOST:PORT/DATABASE")?;
        let name = format!("dctl_bench_replicas_{}_{tag}", std::process::id());
        psql(admin, &format!("CREATE DATABASE {name}"))?;
        Ok(ScratchDb {
            admin: admin.to_string(),
            url: format!("{prefix}/{name}{query}"),
            name,
        })
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.admin, &sql) {
            eprintln!("could not drop the benchmark's database: {e}");
        }
    }
}

/// `n` replicas on one fresh database, sharing one at-rest key and one admin token.
struct Cluster {
    /// Dropped (killed) before the database.
    replicas: Vec<ServerProc>,
    _db: ScratchDb,
}

impl Cluster {
    fn start(args: &Args, n: usize, tag: &str) -> Result<Cluster, Fail> {
        let admin = args.database_url.as_deref().ok_or(
            "replicas needs --database-url postgres://... (each part makes a database of its own there)",
        )?;
        let db = ScratchDb::create(admin, tag)?;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let mut replicas: Vec<ServerProc> = Vec::with_capacity(n);
        for id in IDS.iter().take(n) {
            let replica = Replica {
                id: id.to_string(),
                key: key.clone(),
            };
            let token = replicas.first().map(|r| r.token.clone());
            replicas.push(ServerProc::start_replica(
                &db.url,
                args.heartbeat,
                replica,
                token,
            )?);
        }
        let pids: Vec<String> = replicas
            .iter()
            .zip(IDS)
            .map(|(r, id)| format!("{id} {} (pid {})", r.addr, r.pid()))
            .collect();
        println!(
            "{n} replica(s) on database {}: {}",
            db.name,
            pids.join(", ")
        );
        Ok(Cluster { replicas, _db: db })
    }

    fn apis(&self) -> Vec<Api> {
        self.replicas.iter().map(ServerProc::api).collect()
    }

    /// The agents' server list starting at replica `first`, the others after it in order;
    /// each entry is (the replica's index, its `ws://` base).
    fn servers_from(&self, first: usize) -> Vec<(usize, String)> {
        let n = self.replicas.len();
        (0..n)
            .map(|k| (first + k) % n)
            .map(|i| {
                let r = &self.replicas[i];
                (i, r.dialer().ws_base(&r.addr))
            })
            .collect()
    }

    fn cpu(&self) -> f64 {
        self.replicas.iter().map(|r| cpu_secs(r.pid())).sum()
    }
}

fn fleet(args: &Args, stable_after: Duration) -> Fleet {
    Fleet {
        dialer: crate::tls::Dialer::plain(),
        heartbeat: Duration::from_secs(args.heartbeat),
        stable_after,
    }
}

/// Hosts whose status is `online` in the API of `api` (every page).
async fn count_online(api: &Api) -> Result<usize, Fail> {
    let mut count = 0;
    let mut next: Option<String> = None;
    for _ in 0..100 {
        let mut path = "/api/v1/hosts?status=online&limit=1000".to_string();
        if let Some(c) = &next {
            path.push_str(&format!("&next={c}"));
        }
        let (st, v) = api.call("GET", &path, None).await?;
        if st != 200 {
            return Err(format!("GET /api/v1/hosts: {st} {v}").into());
        }
        count += v["hosts"].as_array().map_or(0, Vec::len);
        match v["next"].as_str() {
            Some(c) => next = Some(c.to_string()),
            None => break,
        }
    }
    Ok(count)
}

/// Waits until every replica's API shows `n` hosts online (each replica reads the others'
/// claims every `replica_heartbeat_interval`); returns how long each took.
async fn wait_seen(apis: &[Api], n: usize, timeout: Duration) -> Result<Vec<Duration>, Fail> {
    let t0 = Instant::now();
    let mut seen: Vec<Option<Duration>> = vec![None; apis.len()];
    while seen.iter().any(Option::is_none) {
        for (i, api) in apis.iter().enumerate() {
            if seen[i].is_none() && count_online(api).await? >= n {
                seen[i] = Some(t0.elapsed());
            }
        }
        if t0.elapsed() > timeout {
            return Err(
                format!("not every replica showed {n} hosts online within {timeout:?}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(seen.into_iter().flatten().collect())
}

fn stop_agents(c: &Counters, handles: Vec<tokio::task::JoinHandle<()>>) {
    c.stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.abort();
    }
}

// ---------------------------------------------------------------------------------------
// hop: what one forwarding hop adds

/// The paths of `hop`: the same operation to the holder and to the other replica, and the
/// holder's health check.
struct Hop {
    a: Api,
    b: Api,
    host_id: String,
}

impl Calls for Hop {
    fn names(&self) -> &[&'static str] {
        &["direct", "forwarded", "healthz"]
    }

    async fn call(&self, i: usize) -> Result<(), Fail> {
        let op = format!("/api/v1/hosts/{}/operations", self.host_id);
        let body = r#"{"operation":"container.list","params":{"all":true}}"#;
        match i {
            0 => latency::api_call(&self.a, "POST", &op, Some(body)).await,
            1 => latency::api_call(&self.b, "POST", &op, Some(body)).await,
            _ => latency::api_call(&self.a, "GET", "/healthz", None).await,
        }
        .map(drop)
    }

    fn compared(&self, i: usize) -> bool {
        i == 1
    }
}

async fn hop(args: &Args) -> Result<(), Fail> {
    let cluster = Cluster::start(args, 2, "hop")?;
    let apis = cluster.apis();
    let creds = enrol_many(&apis[0], 1).await?;
    let (host_id, agent_id, token) = creds[0].clone();
    let c = Arc::new(Counters::default());
    let dir = tempfile::tempdir()?;
    let (mut real, handles) = match &args.agent {
        Some(p) => {
            let a = &cluster.replicas[0].addr;
            let child = latency::start_agent(&PathBuf::from(p), dir.path(), a, &agent_id, &token)?;
            (Some(child), Vec::new())
        }
        None => {
            let servers = cluster.servers_from(0)[..1].to_vec();
            let f = fleet(args, Duration::ZERO);
            (
                None,
                f.start(&creds, &c, Instant::now(), |_| servers.clone())
                    .await,
            )
        }
    };
    let result = async {
        wait_held_by(&apis[1], &host_id, IDS[0]).await?;
        let paths = Hop {
            a: apis[0].clone(),
            b: apis[1].clone(),
            host_id: host_id.clone(),
        };
        println!(
            "--- hop: {} calls per path and round, {} rounds, agent {} held by a ---",
            args.calls,
            args.rounds,
            args.agent.as_deref().unwrap_or("simulated")
        );
        let mut rounds = Vec::new();
        for r in 0..args.rounds {
            let samples = latency::measure(&paths, args.calls, r).await?;
            latency::print_round(&paths, r + 1, &samples);
            rounds.push(samples);
        }
        latency::print_best(&paths, "replicas_hop_", &rounds);
        cpu_per_call(&paths, &cluster, args.calls.max(2000)).await
    }
    .await;
    if let Some(child) = real.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    stop_agents(&c, handles);
    result
}

/// Waits until `api`'s replica shows the host online and held by replica `holder`.
async fn wait_held_by(api: &Api, host_id: &str, holder: &str) -> Result<(), Fail> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, h) = api
            .call("GET", &format!("/api/v1/hosts/{host_id}"), None)
            .await?;
        if h["status"] == "online" && h["agent"]["replica"]["id"] == holder {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "replica b did not see the agent held by {holder} within 30 s: {h}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A process's work so far: CPU seconds and context switches (all threads).
fn work(pid: u32) -> (f64, u64) {
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (cpu_secs(pid), switches)
}

/// Each replica's CPU time and context switches per call, for each operation path run alone
/// (`calls` calls).
async fn cpu_per_call(paths: &Hop, cluster: &Cluster, calls: usize) -> Result<(), Fail> {
    for (i, name) in paths.names().iter().enumerate().take(2) {
        let before: Vec<_> = cluster.replicas.iter().map(|r| work(r.pid())).collect();
        let t = Instant::now();
        for _ in 0..calls {
            paths.call(i).await?;
        }
        let wall = t.elapsed().as_secs_f64() * 1000.0 / calls as f64;
        let per: Vec<String> = cluster
            .replicas
            .iter()
            .zip(&before)
            .zip(IDS)
            .map(|((r, b), id)| {
                let a = work(r.pid());
                let k = calls as f64;
                let ms = (a.0 - b.0) * 1000.0 / k;
                let switches = a.1.saturating_sub(b.1) as f64 / k;
                println!("METRIC replicas_hop_{name}_cpu_ms_{id} {ms:.3}");
                format!("{id} {ms:.3} ms CPU, {switches:.1} context switches")
            })
            .collect();
        println!(
            "{name} alone, {calls} calls: {wall:.3} ms a call (mean); per call: {}",
            per.join("; ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// routed: commands at a fixed rate through 1, 2 and 3 replicas

async fn routed(args: &Args) -> Result<(), Fail> {
    for n in 1..=IDS.len() {
        let cluster = Cluster::start(args, n, &format!("routed{n}"))?;
        let apis = cluster.apis();
        let t_enrol = Instant::now();
        let creds = enrol_many(&apis[0], args.agents).await?;
        println!(
            "enrolled {} hosts in {:.1} s",
            args.agents,
            t_enrol.elapsed().as_secs_f64()
        );
        let c = Arc::new(Counters::default());
        let lists: Vec<_> = (0..n).map(|i| cluster.servers_from(i)).collect();
        let f = fleet(args, Duration::ZERO);
        let handles = f
            .start(&creds, &c, Instant::now(), |i| lists[i % n].clone())
            .await;
        let result = async {
            let timeout = Duration::from_secs(120 + args.agents as u64 / 100);
            let up = wait_online(&c, args.agents as u64, timeout).await?;
            let spread: Vec<String> = (0..n)
                .map(|i| format!("{} {}", IDS[i], c.online_at(i)))
                .collect();
            println!(
                "{} agents online in {:.1} s ({})",
                args.agents,
                up.as_secs_f64(),
                spread.join(", ")
            );
            let seen = wait_seen(&apis, args.agents, Duration::from_secs(60)).await?;
            println!(
                "every replica shows them online after {:.1} s",
                seen.iter().max().unwrap_or(&Duration::ZERO).as_secs_f64()
            );
            let hosts: Vec<String> = creds.iter().map(|(h, _, _)| h.clone()).collect();
            // Warm-up: connections from the load generator and between the replicas.
            let warm = crate::command_load(&apis, &hosts, args.rate, 1).await;
            let me = std::process::id();
            let (cpu0, own0, machine0) = (cluster.cpu(), cpu_secs(me), machine_ticks());
            let t = Instant::now();
            let load = crate::command_load(&apis, &hosts, args.rate, args.duration).await;
            let secs = t.elapsed().as_secs_f64();
            let cpu = Cpu {
                replicas: (cluster.cpu() - cpu0) / secs * 100.0,
                loadgen: (cpu_secs(me) - own0) / secs * 100.0,
                machine: machine_busy_since(machine0),
            };
            print_routed(args, n, &load, &cpu, warm.errors);
            Ok::<_, Fail>(())
        }
        .await;
        stop_agents(&c, handles);
        drop(cluster);
        result?;
    }
    Ok(())
}

/// CPU over a run: the replicas' and the load generator's (percent of one core), and the
/// whole machine's busy share (percent of all cores).
struct Cpu {
    replicas: f64,
    loadgen: f64,
    machine: f64,
}

fn print_routed(args: &Args, n: usize, load: &Load, cpu: &Cpu, warm_errors: u64) {
    let lat = &load.lat;
    let (p50, p99) = (percentile(lat, 50.0), percentile(lat, 99.0));
    let max = lat.last().copied().unwrap_or(f64::NAN);
    println!(
        "routed, {n} replica(s), {}/s for {} s, sent round-robin ({:.0} % forwarded): {} ok, {} errors ({}), p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; warm-up errors {warm_errors}",
        args.rate,
        args.duration,
        (n - 1) as f64 / n as f64 * 100.0,
        lat.len(),
        load.errors,
        load.causes,
    );
    println!(
        "  CPU: replicas {:.0} % of one core (all together), load generator {:.0} %, machine busy {:.0} % of its cores",
        cpu.replicas, cpu.loadgen, cpu.machine
    );
    if n > 1 {
        // Agent k is held by replica k % n (hosts in enrolment order); command i went to
        // replica i % n.
        for (name, forwarded) in [("direct", false), ("forwarded", true)] {
            let mut v: Vec<f64> = load
                .calls
                .iter()
                .filter(|(a, h, _)| (a != &(h % n)) == forwarded)
                .map(|c| c.2)
                .collect();
            v.sort_by(|a, b| a.total_cmp(b));
            println!(
                "  of them {name}: {}, p50 {:.2} ms, p99 {:.2} ms",
                v.len(),
                percentile(&v, 50.0),
                percentile(&v, 99.0)
            );
        }
    }
    println!("METRIC replicas_routed_p50_ms_n{n} {p50:.3}");
    println!("METRIC replicas_routed_p99_ms_n{n} {p99:.3}");
    println!("METRIC replicas_routed_max_ms_n{n} {max:.3}");
    println!("METRIC replicas_routed_errors_n{n} {}", load.errors);
}

// ---------------------------------------------------------------------------------------
// failover: the replica holding every agent dies

async fn failover(args: &Args) -> Result<(), Fail> {
    let n = args.failover_agents;
    let mut cluster = Cluster::start(args, IDS.len(), "failover")?;
    let apis = cluster.apis();
    let t_enrol = Instant::now();
    let creds = enrol_many(&apis[0], n).await?;
    println!(
        "enrolled {n} hosts in {:.1} s",
        t_enrol.elapsed().as_secs_f64()
    );
    let c = Arc::new(Counters::default());
    let servers = cluster.servers_from(0);
    // As the real agent: the backoff resets only after a session of 30 s.
    let f = fleet(args, STABLE_AFTER);
    let t_start = Instant::now();
    let handles = f.start(&creds, &c, t_start, |_| servers.clone()).await;
    let result = async {
        let up = wait_online(&c, n as u64, Duration::from_secs(120 + n as u64 / 50)).await?;
        println!(
            "{n} agents online in {:.1} s (a {}, b {}, c {}); holding them {} s, as a settled fleet",
            up.as_secs_f64(),
            c.online_at(0),
            c.online_at(1),
            c.online_at(2),
            STABLE_AFTER.as_secs() + 1
        );
        tokio::time::sleep(STABLE_AFTER + Duration::from_secs(1)).await;
        if c.online_at(0) != n as i64 {
            return Err(format!("only {} of {n} agents on replica a before the kill", c.online_at(0)).into());
        }
        let (failed0, refused0) = (
            c.failed_handshakes.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
        );
        c.failures.clear();
        if let Ok(mut v) = c.arrivals.lock() {
            v.clear();
        }
        let t0 = Instant::now();
        let since_kill = t0.duration_since(t_start);
        cluster.replicas[0].kill();
        println!("replica a killed (SIGKILL)");
        let back = wait_back(&c, n as i64, Duration::from_secs(180)).await?;
        let mut arrivals = c.arrivals.lock().map(|v| v.clone()).unwrap_or_default();
        let first = arrivals.iter().min().copied().unwrap_or(0);
        let first = Duration::from_millis(first).saturating_sub(since_kill);
        arrivals.sort_unstable();
        let failed = c.failed_handshakes.load(Ordering::Relaxed) - failed0;
        let refused = c.refused.load(Ordering::Relaxed) - refused0;
        let seen = wait_seen(&apis[1..], n, Duration::from_secs(60)).await;
        println!("--- failover: {n} agents, replica a killed ---");
        println!(
            "all {n} agents online again on b ({}) and c ({}) {:.2} s after the kill (first back after {:.2} s)",
            c.online_at(1),
            c.online_at(2),
            back.as_secs_f64(),
            first.as_secs_f64()
        );
        println!("failed handshakes: {failed} (connections refused by the dead replica a: {refused})");
        println!("failed handshakes by cause: {}", c.failures.summary());
        for (api, id) in apis[1..].iter().zip(&IDS[1..]) {
            let deferred = api.metric("docker_ctl_agent_handshakes_deferred_total").await;
            let auth = api.metric("docker_ctl_agent_auth_failures_total").await;
            println!("replica {id}: handshakes deferred with 1013: {deferred}, refused as authentication failures: {auth}");
        }
        println!(
            "largest number of arrivals in any 100 ms window: {}",
            max_in_window(&arrivals, 100)
        );
        match &seen {
            Ok(s) => println!(
                "the API of b and c showed all {n} hosts online {:.2} / {:.2} s after that",
                s[0].as_secs_f64(),
                s[1].as_secs_f64()
            ),
            Err(e) => println!("the API of b and c: {e}"),
        }
        println!("METRIC replicas_failover_all_online_secs {:.3}", back.as_secs_f64());
        println!("METRIC replicas_failover_failed_handshakes {failed}");
        println!(
            "METRIC replicas_failover_max_arrivals_100ms {}",
            max_in_window(&arrivals, 100)
        );
        seen.map(drop)
    }
    .await;
    stop_agents(&c, handles);
    result
}

/// Waits until `n` agents are online on replicas b and c (slots 1 and 2).
async fn wait_back(c: &Counters, n: i64, timeout: Duration) -> Result<Duration, Fail> {
    let t0 = Instant::now();
    while c.online_at(1) + c.online_at(2) < n {
        if t0.elapsed() > timeout {
            return Err(format!(
                "only {} of {n} agents back on b or c after {timeout:?}",
                c.online_at(1) + c.online_at(2)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(t0.elapsed())
}
