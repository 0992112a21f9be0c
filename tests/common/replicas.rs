//! Several server replicas on one PostgreSQL database, and a real HAProxy in front of them.
//!
//! - [`Replicas::start`] starts N real `docker-ctl-server serve` processes (ids `a`, `b`,
//!   `c`, ...) on a fresh database, with one at-rest key and one admin token; a replica can be
//!   killed with SIGKILL and restarted with the same id, address, data directory and database.
//!   [`Replicas::enrol`] starts an agent whose `server.url` list puts a chosen replica first.
//! - [`Haproxy::start`] runs Debian's `haproxy` in the foreground on a free port in front of
//!   the replicas: round-robin, HTTP mode with upgrades (WebSockets, docker hijacks), health
//!   checks, and JSON error bodies with a stable `code` for the answers HAProxy makes itself.
//!
//! Owns: the processes it starts (killed on drop) and the database (dropped last). Must not:
//! assert anything about the product (the tests do).

use super::*;
use base64::Engine;

/// A replica's id by its index: `a`, `b`, `c`, ...
pub fn replica_id(i: usize) -> String {
    assert!(i < 26, "at most 26 replicas");
    char::from(b'a' + i as u8).to_string()
}

/// A replica's region by its index.
pub fn replica_region(i: usize) -> String {
    format!("region-{}", replica_id(i))
}

/// N replicas of one cluster on a fresh PostgreSQL database.
pub struct Replicas {
    /// `servers[i]` is replica [`replica_id`]`(i)`.
    pub servers: Vec<Server>,
    pub db: Db,
    pub admin_token: String,
}

impl Replicas {
    /// Starts `n` replicas one after the other (the first runs the migrations), each on a
    /// free port with `--replica-id`, `--advertise-url` and `--region`.
    pub fn start(n: usize) -> Replicas {
        assert!(n >= 1, "a cluster has replicas");
        let db = Db::postgres();
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        // The admin token is made once, on a data directory with the shared key.
        let setup = tempfile::tempdir().expect("tempdir");
        std::fs::write(setup.path().join("secret.key"), &key).expect("write secret.key");
        set_mode_0600(&setup.path().join("secret.key"));
        let admin_token = Server::token_create(&db, setup.path(), "e2e-admin", "admin");
        let mut r = Replicas {
            servers: Vec::new(),
            db,
            admin_token,
        };
        for i in 0..n {
            let s = Server::start_replica(
                &r.db,
                &key,
                &r.admin_token,
                &replica_id(i),
                &replica_region(i),
            );
            r.servers.push(s);
        }
        r
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The agent's `server.url` list: replica `first`'s WebSocket URL, then the others in
    /// order.
    pub fn ws_list(&self, first: usize) -> String {
        let mut order = vec![first];
        order.extend((0..self.len()).filter(|&i| i != first));
        self.ws_of(&order)
    }

    /// The WebSocket URLs of the replicas at `indexes`, comma-separated.
    pub fn ws_of(&self, indexes: &[usize]) -> String {
        indexes
            .iter()
            .map(|&i| self.servers[i].ws())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Creates a host and its agent (through replica 0) and starts the agent with the
    /// `server.url` list `urls`: (host id, agent id, agent).
    pub fn enrol(&self, name: &str, urls: &str) -> (String, String, Agent) {
        let (host_id, agent_id, token) = self.servers[0].enrol(name);
        let agent = Agent::start(urls, &agent_id, &token);
        (host_id, agent_id, agent)
    }

    /// SIGKILL of replica `i`: no goodbye to its agents, the database or its peers.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts replica `i` again with the same id, address, data directory and database.
    pub fn restart(&mut self, i: usize) {
        self.servers[i].restart();
    }

    /// `GET /api/v1/hosts` through replica `via`: every host.
    pub fn hosts_via(&self, via: usize) -> Vec<Value> {
        hosts_at(&self.servers[via].http(), &self.admin_token)
    }

    /// Where `host_id`'s agent is connected, as replica `via` sees it: the holding
    /// replica's id, or `None` when its agent is not connected anywhere.
    pub fn holder_via(&self, via: usize, host_id: &str) -> Option<String> {
        let (st, h) = self.servers[via].api("GET", &format!("/api/v1/hosts/{host_id}"), None);
        assert_eq!(st, 200, "get host through replica {}: {h}", replica_id(via));
        holder_of(&h)
    }

    /// Waits until every live replica shows `host_id` held by one of `ids`; the holder.
    pub fn wait_held_by(&self, host_id: &str, ids: &[&str], timeout: Duration) -> String {
        wait_for(
            &format!("host {host_id} held by one of {ids:?} on every replica"),
            timeout,
            || {
                let mut seen: Option<String> = None;
                for via in self.live() {
                    let h = self.holder_via(via, host_id)?;
                    if !ids.contains(&h.as_str()) || seen.as_ref().is_some_and(|s| *s != h) {
                        return None;
                    }
                    seen = Some(h);
                }
                seen
            },
        )
    }

    /// The indexes of the replicas whose process runs.
    pub fn live(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.servers[i].pid().is_some())
            .collect()
    }

    /// One SQL query on the cluster's database: psql's unaligned output (`|` between
    /// columns, one row a line).
    pub fn sql(&self, query: &str) -> String {
        let Db::Postgres(url) = &self.db else {
            unreachable!("replicas run on PostgreSQL")
        };
        let out = Command::new("psql")
            .arg(url)
            .args(["-v", "ON_ERROR_STOP=1", "-qAtc", query])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        // The servers first (each prints its output when the test failed), the database last.
        self.servers.clear();
        self.db.drop_database();
    }
}

/// `GET /api/v1/hosts` at `base`: every host (one page; the tests make few).
pub fn hosts_at(base: &str, token: &str) -> Vec<Value> {
    let (st, v) = api_call(base, Some(token), "GET", "/api/v1/hosts?limit=500", None);
    assert_eq!(st, 200, "list hosts at {base}: {v}");
    v["hosts"].as_array().cloned().unwrap_or_default()
}

/// The id of the replica holding a host's agent (from a host's JSON), when it is connected.
pub fn holder_of(host: &Value) -> Option<String> {
    if host["agent"]["connected"] != true {
        return None;
    }
    host["agent"]["replica"]["id"].as_str().map(str::to_string)
}

/// Debian's HAProxy in front of server replicas, in the foreground, killed on drop.
///
/// Two frontends: `port` in HTTP mode (the API, the web UI, agents' WebSockets, and the
/// docker CLI but for hijacks), and `cli_port` in TCP mode for the docker CLI. HAProxy from
/// 2.4 up to its fix in 3.1 (haproxy/haproxy#2684) does not upgrade a request that has a
/// body, and the Engine API's hijacks (`exec -it`, `attach`, `run -it`) are POSTs with one:
/// through an HTTP frontend the CLI gets `unable to upgrade to tcp, received 200`.
pub struct Haproxy {
    /// The HTTP frontend.
    pub port: u16,
    /// The TCP frontend (docker CLI contexts).
    pub cli_port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub output: Output,
}

impl Haproxy {
    /// Writes the configuration ([`Haproxy::config`]) and its error pages into a temporary
    /// directory, runs `haproxy -f CFG -db`, and waits until a request through it answers.
    pub fn start(backends: &[&Server]) -> Haproxy {
        assert!(!backends.is_empty(), "HAProxy needs backends");
        let dir = tempfile::tempdir().expect("tempdir");
        for (status, file, body) in ERROR_PAGES {
            std::fs::write(dir.path().join(file), error_page(*status, body)).expect("errorfile");
        }
        let port = free_port();
        let cli_port = free_port();
        let servers: Vec<(String, String)> = backends
            .iter()
            .enumerate()
            .map(|(i, s)| (replica_id(i), s.addr.clone()))
            .collect();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, Self::config(port, cli_port, &servers, dir.path()))
            .expect("haproxy.cfg");
        let mut child = Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("haproxy must be installed (scripts/services.sh installs it)");
        let output = Output::default();
        output.capture(&mut child);
        let mut h = Haproxy {
            port,
            cli_port,
            dir,
            child: Some(child),
            output,
        };
        let url = format!("{}/healthz", h.http());
        wait_for("HAProxy answers", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = h.child.as_mut().map(Child::try_wait) {
                h.output.drain();
                panic!("haproxy exited with {status}:\n{}", h.output.text());
            }
            ureq::get(&url)
                .call()
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        });
        h
    }

    /// The configuration the tests run, the one the README shows (plus logging to stdout,
    /// and paths and ports of the test's own).
    pub fn config(port: u16, cli_port: u16, servers: &[(String, String)], errors: &Path) -> String {
        format!(
            "global
    maxconn 4096
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 3s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 10s
    # Bounds a silent response: a command waits up to command_timeout (300 s), and
    # `docker logs -f` or `docker events` may stay quiet for long.
    timeout client 1h
    timeout server 1h
    # Upgraded connections (agents' WebSockets, docker exec/attach hijacks, the web UI's
    # terminal) live as long as their session.
    timeout tunnel 1h
    timeout client-fin 10s
    timeout server-fin 10s
    # Retry only when the connection to a replica failed (nothing was sent), on another
    # replica; a request a replica received is never sent twice.
    retries 3
    retry-on conn-failure
    option redispatch 1
    errorfile 502 {errors}/502.http
    errorfile 503 {errors}/503.http
    errorfile 504 {errors}/504.http

frontend docker_ctl
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
{servers}
# The docker CLI: its hijacks (exec -it, attach, run -it) are POSTs with a body, which
# HAProxy before 3.1 cannot upgrade in HTTP mode; in TCP mode they pass untouched.
frontend docker_ctl_cli
    mode tcp
    option tcplog
    bind 127.0.0.1:{cli_port}
    default_backend replicas_cli

backend replicas_cli
    mode tcp
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
{servers}",
            errors = errors.display(),
            servers = servers
                .iter()
                .map(|(name, addr)| format!("    server {name} {addr} check\n"))
                .collect::<String>(),
        )
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The TCP frontend for docker CLI contexts (`HOST:PORT`).
    pub fn cli_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cli_port)
    }

    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr())
    }

    /// Calls the API through HAProxy with `token`.
    pub fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        api_call(&self.http(), Some(token), method, path, body)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- haproxy output ---\n{}", self.output.text());
        }
    }
}

/// The answers HAProxy makes itself, with a JSON body in the API's error shape (and Docker's
/// `message`, which the docker CLI shows): (status, file, body).
const ERROR_PAGES: &[(u16, &str, &str)] = &[
    (
        502,
        "502.http",
        r#"{"status":"error","error":{"code":"outcome_unknown","message":"the replica that took the request went away before it answered: it may or may not have run"},"message":"the replica that took the request went away before it answered: it may or may not have run"}"#,
    ),
    (
        503,
        "503.http",
        r#"{"status":"error","error":{"code":"agent_offline","message":"no replica can be reached"},"message":"no replica can be reached"}"#,
    ),
    (
        504,
        "504.http",
        r#"{"status":"error","error":{"code":"timeout","message":"the replica did not answer in time"},"message":"the replica did not answer in time"}"#,
    ),
];

fn error_page(status: u16, body: &str) -> String {
    let reason = match status {
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Gateway Timeout",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
