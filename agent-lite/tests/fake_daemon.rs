//! The agent against a scripted fake daemon on a unix socket: `image.pull` progress
//! streamed as `command_progress` before the one `command_response`, and an old daemon
//! (API 1.41 without `Api-Version` on /_ping) negotiated through `/version`, and a pull's
//! registry credentials sent as `X-Registry-Auth`.

mod common;

use common::ws_server::TestServer;
use protocol::{CommandResponsePayload, Envelope, Message};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

/// Answers one request per connection; records request lines.
fn fake_daemon(path: &std::path::Path, log: std::sync::mpsc::Sender<String>) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || serve(s, log));
        }
    });
}

fn serve(mut s: UnixStream, log: std::sync::mpsc::Sender<String>) {
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut len = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if h.to_ascii_lowercase().starts_with("x-registry-auth:") {
            let _ = log.send(format!("auth {}", h["x-registry-auth:".len()..].trim()));
        }
    }
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let target = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let _ = log.send(target.clone());
    let json_resp = |s: &mut UnixStream, body: &str| {
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    };
    if target == "/_ping" {
        // An old daemon: no Api-Version header, so the agent asks /version.
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
    } else if target == "/version" {
        json_resp(&mut s, r#"{"ApiVersion":"1.41","Version":"20.10.24"}"#);
    } else if target.starts_with("/v1.41/info") {
        json_resp(
            &mut s,
            r#"{"Containers":3,"ContainersRunning":1,"ServerVersion":"20.10.24","Swarm":{"LocalNodeState":"inactive"}}"#,
        );
    } else if target.starts_with("/v1.41/events") {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        std::thread::sleep(Duration::from_secs(60));
    } else if target.starts_with("/v1.41/images/create?fromImage=busybox") {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        let lines = [
            r#"{"status":"Pulling from library/busybox","id":"latest"}"#,
            r#"{"status":"Downloading","progressDetail":{"current":100,"total":1000},"id":"abc"}"#,
            r#"{"status":"Download complete","id":"abc"}"#,
            r#"{"status":"Status: Downloaded newer image for busybox:latest"}"#,
        ];
        for l in lines {
            // Each line split across two chunks, sent apart.
            let full = format!("{l}\n");
            let (a, b) = full.split_at(full.len() / 2);
            for part in [a, b] {
                let _ = write!(s, "{:x}\r\n{part}\r\n", part.len());
                let _ = s.flush();
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let _ = s.write_all(b"0\r\n\r\n");
    } else {
        let msg = r#"{"message":"page not found"}"#;
        let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{msg}", msg.len());
    }
}

#[test]
fn image_pull_streams_progress_then_one_response_and_old_daemons_negotiate() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let (tx, requests) = std::sync::mpsc::channel();
    fake_daemon(&sock, tx);
    let server = TestServer::start();
    let mut cfg = common::agent_config(&server.url(), "fake-daemon-agent");
    cfg.docker.socket = format!("unix://{}", sock.display());
    let (shutdown, agent) = common::spawn_agent(cfg);
    let mut conn = server.next_conn(Duration::from_secs(10));
    conn.accept_auth(5);
    conn.send(&Envelope::new(
        "pull-1",
        Message::Command(protocol::CommandPayload {
            operation: "image.pull".into(),
            params: json!({"image": "busybox", "tag": "latest",
                "auth": {"username": "ci", "password": "pw", "serveraddress": "docker.io"}}),
            timeout: None,
            idempotency_key: None,
        }),
    ));
    let mut progress = Vec::new();
    let resp = loop {
        let env = conn.expect(Duration::from_secs(20), "pull progress or response", |e| {
            e.id == "pull-1"
        });
        match env.message {
            Message::CommandProgress(p) => progress.push(p.data),
            Message::CommandResponse(r) => break r,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        progress.len() >= 3,
        "progress must stream as the daemon sends it: {progress:?}"
    );
    assert_eq!(progress[1]["current"], 100);
    assert_eq!(progress[1]["layer"], "abc");
    let CommandResponsePayload::Success { data } = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(data["image"], "busybox:latest");
    assert_eq!(
        data["status"],
        "Status: Downloaded newer image for busybox:latest"
    );
    assert!(conn
        .next_frame(Duration::from_millis(300))
        .is_none_or(|f| !matches!(f, common::ws_server::Frame::Msg(ref e) if e.id == "pull-1")));

    let seen: Vec<String> = requests.try_iter().collect();
    assert!(
        seen.iter().any(|r| r == "/version"),
        "negotiation must fall back to /version: {seen:?}"
    );
    assert!(
        seen.iter().any(|r| r.starts_with("/v1.41/images/create")),
        "{seen:?}"
    );
    // The registry credentials went to the daemon as X-Registry-Auth.
    let auth = protocol::ops::RegistryAuth {
        username: "ci".into(),
        password: protocol::Secret::new("pw"),
        serveraddress: "docker.io".into(),
    };
    let want = format!("auth {}", auth.header_value().expose());
    assert!(seen.contains(&want), "{seen:?}");
    shutdown.trigger();
    common::join_within(agent, Duration::from_secs(5)).unwrap();
}
