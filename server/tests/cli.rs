//! The binary as a real process: `token create`, `serve` (SIGTERM), `quickstart`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_docker-ctl-server");

fn http(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, buf)
}

fn post_json(addr: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, buf)
}

/// Reads stderr lines until the JSON log line "listening" and returns its address.
fn listening_addr(stderr: impl Read + Send + 'static) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["fields"]["message"] == "listening" {
                    let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the server logs its address")
}

fn term_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < end,
            "the server did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn token_create_then_serve_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "token",
            "create",
            "--name",
            "root",
            "--role",
            "admin",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the token on stdout: {stdout:?}");
    let token = lines[0].to_string();
    assert!(token.starts_with("dctl_u_"));
    assert!(dir.path().join("docker-ctl.db").exists());

    let bad = Command::new(BIN)
        .args(["token", "create", "--name", "x", "--role", "root"])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--heartbeat-interval",
            "5",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(child.stderr.take().unwrap());
    let (s, _) = http(&addr, "/healthz", None);
    assert_eq!(s, 200);
    let (s, body) = http(&addr, "/api/v1/hosts", Some(&token));
    assert_eq!(s, 200, "{body}");
    let (s, _) = http(&addr, "/api/v1/hosts", None);
    assert_eq!(s, 401);
    let status = term_and_wait(&mut child);
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_refuses_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, "agent:\n  hearbeat_interval: 3\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hearbeat_interval"));
}

#[test]
fn quickstart_prints_the_token_a_sign_in_link_and_a_curl_line() {
    assert!(
        std::path::Path::new("/var/run/docker.sock").exists(),
        "dockerd is required (scripts/services.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "quickstart",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--agent-bin",
            "/nonexistent/docker-ctl-agent",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(child.stderr.take().unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let mut out = Vec::new();
    for l in lines.by_ref() {
        let done = l.starts_with("Press Ctrl-C");
        out.push(l);
        if done {
            break;
        }
    }
    let text = out.join("\n");
    let token = out
        .iter()
        .find_map(|l| l.strip_prefix("Admin token: "))
        .expect("admin token line")
        .to_string();
    let curl = out
        .iter()
        .find(|l| l.starts_with("curl "))
        .expect("a curl line");
    assert!(
        curl.contains(&token) && curl.contains(&addr) && curl.contains("container.list"),
        "{text}"
    );
    assert!(
        text.contains("DOCKER_CTL_TOKEN=") && text.contains("DOCKER_CTL_AGENT_ID=local-agent"),
        "{text}"
    );
    let (s, body) = http(&addr, "/api/v1/agents", Some(&token));
    assert_eq!(s, 200);
    assert!(body.contains("local-agent"));
    // The one-time sign-in link for the web UI signs the admin in, once.
    let link = out
        .iter()
        .find_map(|l| l.trim().split_once("/signin#link="))
        .map(|(base, link)| {
            assert_eq!(base, format!("http://{addr}"), "{text}");
            link.to_string()
        })
        .expect("a sign-in link line");
    let body = serde_json::json!({ "link": link }).to_string();
    let (s, answer) = post_json(&addr, "/api/v1/session", &body);
    assert_eq!(s, 200, "{answer}");
    assert!(
        answer.contains("\"role\":\"admin\"") && answer.contains("dctl_session="),
        "{answer}"
    );
    assert_eq!(
        post_json(&addr, "/api/v1/session", &body).0,
        401,
        "the link works once"
    );
    let status = term_and_wait(&mut child);
    assert!(status.success());
}

/// The packaged systemd unit runs the server as its own user, without new privileges, on a
/// read-only system.
#[test]
fn the_systemd_unit_runs_the_server_unprivileged() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts/dist/docker-ctl-server.service"),
    )
    .expect("the server unit");
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let user = value("User").expect("User=");
    assert!(!user.is_empty() && user != "root", "{user}");
    assert_eq!(value("NoNewPrivileges"), Some("yes"));
    assert_eq!(value("ProtectSystem"), Some("strict"));
    assert_eq!(value("StateDirectory"), Some("docker-ctl-server"));
    assert!(
        value("ExecStart").is_some_and(|e| e.contains("--data-dir /var/lib/docker-ctl-server")),
        "the data directory is the state directory"
    );
}

/// SQLite runs one server: a second `serve` on the same database refuses to start with a
/// clear error, while the short commands still run beside the first.
#[test]
fn a_second_serve_on_the_same_sqlite_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |replica: &str| {
        let mut c = Command::new(BIN);
        c.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--replica-id",
            replica,
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("DOCKER_CTL_REPLICA_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        c
    };
    let mut first = serve("one").spawn().unwrap();
    let addr = listening_addr(first.stderr.take().unwrap());
    assert_eq!(http(&addr, "/healthz", None).0, 200);

    let second = serve("two").output().unwrap();
    assert!(!second.status.success(), "the second serve must not start");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another server is already running on the SQLite database"),
        "{err}"
    );
    assert!(
        err.contains("PostgreSQL"),
        "the error names the way out: {err}"
    );

    let run = |args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("DATABASE_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} beside a running server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let token = run(
        &["token", "create", "--name", "beside", "--role", "admin"],
        None,
    );
    run(
        &[
            "user",
            "create",
            "--name",
            "ann",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        Some("a long enough password 1\n"),
    );
    run(&["enrol-token", "create", "--name", "site"], None);
    assert!(run(&["audit", "verify"], None).contains("audit log OK"));
    // The running server sees the token made beside it.
    let (s, body) = http(&addr, "/api/v1/hosts", Some(token.trim()));
    assert_eq!(s, 200, "{body}");

    assert!(term_and_wait(&mut first).success());
    // Once the first has stopped, the lock is free again.
    let mut again = serve("one").spawn().unwrap();
    let addr = listening_addr(again.stderr.take().unwrap());
    assert_eq!(http(&addr, "/healthz", None).0, 200);
    assert!(term_and_wait(&mut again).success());
}
