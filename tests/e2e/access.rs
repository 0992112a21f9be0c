//! Access that must end, and access that must not: the real server, the real agent and the
//! real dockerd. A moved agent never answers for its old host; bad clients never lock out
//! good ones (with and without a trusted reverse proxy); revoking a token, lowering its role
//! or deleting a host ends the live sessions it opened within a second.

use docker_ctl_tests::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

on_both_stores!(a_moved_agent_never_answers_for_its_old_host);
on_both_stores!(revocation_ends_live_sessions_within_a_second);

const ONLINE: Duration = Duration::from_secs(20);
/// What the issue promises: live access ends within a second of the revocation.
const ONE_SECOND: Duration = Duration::from_secs(1);

fn create_host(server: &Server, name: &str) -> String {
    let (st, h) = server.api(
        "POST",
        "/api/v1/hosts",
        Some(json!({"name": name, "connection_mode": "agent"})),
    );
    assert_eq!(st, 201, "{h}");
    json_id(&h)
}

/// A user token made through the API: (id, token).
fn user_token(server: &Server, name: &str, role: &str) -> (String, String) {
    let (st, t) = server.api(
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": name, "role": role})),
    );
    assert_eq!(st, 201, "{t}");
    (json_id(&t), t["token"].as_str().unwrap().to_string())
}

fn a_moved_agent_never_answers_for_its_old_host(db: Db) {
    require_docker();
    let server = Server::start(db);
    let (host_a, agent_id, token) = server.enrol(&unique("route-a"));
    let mut agent = Agent::start(&server.ws(), &agent_id, &token);
    server.wait_status(&host_a, "online", ONLINE);
    let daemon_id = docker_get("/info")["ID"].clone();
    let (st, info) = server.api(
        "GET",
        &format!("/api/v1/hosts/{host_a}/docker/v1.41/info"),
        None,
    );
    assert_eq!((st, &info["ID"]), (200, &daemon_id), "{info}");

    // Revoke edge-1 of host A, enrol it again for host B, connect it.
    let (st, v) = server.api("DELETE", &format!("/api/v1/agents/{agent_id}"), None);
    assert_eq!(st, 200, "{v}");
    agent.kill();
    let host_b = create_host(&server, &unique("route-b"));
    let (st, moved) = server.api(
        "POST",
        "/api/v1/agents",
        Some(json!({"agent_id": agent_id, "host_id": host_b})),
    );
    assert_eq!(st, 201, "{moved}");
    let (_, audit) = server.api("GET", "/api/v1/audit?action=agent.move", None);
    let entries = audit["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["host_id"], host_b.as_str());
    assert_eq!(entries[0]["detail"]["from_host_id"], host_a.as_str());
    let _moved_agent = Agent::start(&server.ws(), &agent_id, moved["token"].as_str().unwrap());
    server.wait_status(&host_b, "online", ONLINE);

    // Host A is offline: its Docker API and its operations say so at once, and B's daemon
    // never answers for it.
    assert_eq!(server.host_status(&host_a), "offline");
    let (st, v) = server.api(
        "GET",
        &format!("/api/v1/hosts/{host_a}/docker/v1.41/info"),
        None,
    );
    assert_eq!(st, 409, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("agent offline"),
        "{v}"
    );
    let (st, v) = server.api(
        "POST",
        &format!("/api/v1/hosts/{host_a}/operations"),
        Some(json!({"operation": "system.info", "timeout": 5})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("agent_offline")),
        "{v}"
    );

    // Host B is served by the moved agent.
    let (st, info) = server.api(
        "GET",
        &format!("/api/v1/hosts/{host_b}/docker/v1.41/info"),
        None,
    );
    assert_eq!((st, &info["ID"]), (200, &daemon_id), "{info}");
    let data = server.op_ok(&host_b, "system.info", json!({}));
    assert!(data.is_object(), "{data}");
}

// ----- lockout ------------------------------------------------------------------------------

/// A GET with extra headers: (status, JSON body).
fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut r = agent.get(&format!("{}{path}", server.http()));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let mut resp = r.call().expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One agent handshake over a real WebSocket: the `auth_response`'s error code, `None` when
/// authenticated.
fn agent_handshake(server: &Server, agent_id: &str, token: &str) -> Option<String> {
    use tokio_tungstenite::tungstenite::{client, Message};
    let stream = TcpStream::connect(&server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("{}/ws/agents/{agent_id}", server.ws());
    let (mut ws, _) = client(url, stream).expect("ws handshake");
    let auth = protocol::Envelope::new(
        "auth-e2e",
        protocol::Message::Auth(protocol::AuthPayload {
            agent_id: agent_id.into(),
            auth_token: protocol::Secret::new(token),
            version: "e2e-probe".into(),
            capabilities: vec!["docker".into()],
            protocol_version: Some(2),
            signing_version: None,
            target: None,
            update: None,
            labels: Default::default(),
        }),
    );
    ws.send(Message::text(auth.encode())).expect("send auth");
    loop {
        match ws.read().expect("auth_response") {
            Message::Text(t) => {
                let env = protocol::Envelope::decode(t.as_bytes()).expect("envelope");
                if let protocol::Message::AuthResponse(r) = env.message {
                    let _ = ws.close(None);
                    return r.error.map(|e| e.code.as_str().to_string());
                }
            }
            Message::Close(_) => panic!("closed before auth_response"),
            _ => {}
        }
    }
}

#[test]
fn bad_clients_never_lock_out_good_ones() {
    require_docker();
    // The loopback peer is not a trusted proxy here: its forwarding headers mean nothing.
    let server = Server::start_with(Db::Sqlite, &[("DOCKER_CTL_TRUSTED_PROXIES", "10.0.0.0/8")]);
    let (host_id, agent_id, agent_token) = server.enrol(&unique("lockout"));
    let mut agent = Agent::start(&server.ws(), &agent_id, &agent_token);
    server.wait_status(&host_id, "online", ONLINE);
    let (_, operator) = user_token(&server, &unique("op"), "operator");

    // 35 bad tokens from one address: the limit answers 429 to the bad ones only.
    let mut codes = Vec::new();
    for i in 0..35 {
        let bad = format!("Bearer dctl_u_bad-{i}");
        codes.push(get_with(&server, "/api/v1/hosts", &[("Authorization", &bad)]).0);
    }
    assert_eq!(&codes[..30], &[401; 30][..], "{codes:?}");
    assert_eq!(&codes[30..], &[429; 5][..], "{codes:?}");
    let good = format!("Bearer {operator}");
    assert_eq!(
        get_with(&server, "/api/v1/hosts", &[("Authorization", &good)]).0,
        200
    );
    let cli = DockerCli::new(&server, &host_id, &operator);
    let version = cli.ok(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(
        version.trim(),
        docker_get("/version")["ApiVersion"].as_str().unwrap()
    );

    // Bad agent handshakes from the same address do not lock out the reconnecting agent.
    let mut refusals = Vec::new();
    for _ in 0..12 {
        refusals.push(agent_handshake(&server, &agent_id, "dctl_a_wrong"));
    }
    assert_eq!(
        refusals.last(),
        Some(&Some("rate_limited".to_string())),
        "{refusals:?}"
    );
    agent.kill();
    server.wait_status(&host_id, "offline", ONLINE);
    agent.restart();
    server.wait_status(&host_id, "online", ONLINE);

    // X-Forwarded-For from an untrusted peer is ignored: for allowed_cidrs...
    let (st, fenced) = server.api(
        "POST",
        "/api/v1/tokens",
        Some(
            json!({"name": unique("fenced"), "role": "viewer", "allowed_cidrs": ["192.0.2.0/24"]}),
        ),
    );
    assert_eq!(st, 201, "{fenced}");
    let fenced = format!("Bearer {}", fenced["token"].as_str().unwrap());
    let (st, _) = get_with(
        &server,
        "/api/v1/hosts",
        &[("Authorization", &fenced), ("X-Forwarded-For", "192.0.2.7")],
    );
    assert_eq!(
        st, 403,
        "a forged X-Forwarded-For does not pass the allowlist"
    );
    // ...and for the limits: the failures above were counted against the peer itself.
    let (st, _) = get_with(
        &server,
        "/api/v1/hosts",
        &[
            ("Authorization", "Bearer dctl_u_bad"),
            ("X-Forwarded-For", "198.51.100.9"),
        ],
    );
    assert_eq!(
        st, 429,
        "a forged X-Forwarded-For does not escape the limit"
    );
    drop(agent);
    drop(server);

    // Behind a trusted proxy (here: the loopback peer), each forwarded client is its own.
    let server = Server::start_with(Db::Sqlite, &[("DOCKER_CTL_TRUSTED_PROXIES", "127.0.0.1")]);
    let (_, viewer) = user_token(&server, &unique("viewer"), "viewer");
    for i in 0..31 {
        let bad = format!("Bearer dctl_u_bad-{i}");
        get_with(
            &server,
            "/api/v1/hosts",
            &[("Authorization", &bad), ("X-Forwarded-For", "198.51.100.1")],
        );
    }
    let bad = [
        ("Authorization", "Bearer dctl_u_bad"),
        ("X-Forwarded-For", "198.51.100.1"),
    ];
    assert_eq!(get_with(&server, "/api/v1/hosts", &bad).0, 429);
    let other = [
        ("Authorization", "Bearer dctl_u_bad"),
        ("X-Forwarded-For", "198.51.100.2"),
    ];
    assert_eq!(get_with(&server, "/api/v1/hosts", &other).0, 401);
    let good = format!("Bearer {viewer}");
    let (st, _) = get_with(
        &server,
        "/api/v1/hosts",
        &[
            ("Authorization", &good),
            ("X-Forwarded-For", "198.51.100.1"),
        ],
    );
    assert_eq!(st, 200, "a valid token of the failing client still works");
    let (st, t) = server.api(
        "POST",
        "/api/v1/tokens",
        Some(
            json!({"name": unique("fenced"), "role": "viewer", "allowed_cidrs": ["192.0.2.0/24"]}),
        ),
    );
    assert_eq!(st, 201, "{t}");
    let fenced = format!("Bearer {}", t["token"].as_str().unwrap());
    let (st, _) = get_with(
        &server,
        "/api/v1/hosts",
        &[
            ("Authorization", &fenced),
            ("X-Forwarded-For", "203.0.113.1, 192.0.2.7"),
        ],
    );
    assert_eq!(st, 200, "the proxy's hop passes the allowlist");
}

// ----- revocation ---------------------------------------------------------------------------

/// A CLI command that streams until it is cut (`logs -f`, `events`); its output lines arrive
/// on a channel.
struct Follow {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follow {
    fn start(cli: &DockerCli, args: &[&str]) -> Follow {
        let mut child = cli
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn docker CLI");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follow { child, lines }
    }

    fn wait_line(&self, what: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} line containing {want:?}");
            if let Ok(l) = self.lines.recv_timeout(left) {
                if l.contains(want) {
                    return;
                }
            }
        }
    }

    /// Whether a line containing `want` arrives within `limit`.
    fn saw_line(&self, want: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(want) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    fn ended(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads what is there: false while the connection is open (data or nothing yet), true once
/// the server closed or reset it.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// An `exec` hijacked through the Engine API without a terminal: the raw connection after
/// the `101 UPGRADED`.
fn exec_hijack(server: &Server, host_id: &str, token: &str, container: &str) -> TcpStream {
    let (st, created) = api_call(
        &server.http(),
        Some(token),
        "POST",
        &format!("/api/v1/hosts/{host_id}/docker/v1.41/containers/{container}/exec"),
        Some(json!({"AttachStdout": true, "AttachStderr": true,
                    "Cmd": ["sh", "-c", "while true; do echo exec-tick; sleep 0.2; done"]})),
    );
    assert_eq!(st, 201, "{created}");
    let exec_id = created["Id"].as_str().expect("exec id");
    let body = r#"{"Detach":false,"Tty":false}"#;
    let mut s = TcpStream::connect(&server.addr).expect("connect");
    write!(
        s,
        "POST /api/v1/hosts/{host_id}/docker/v1.41/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\nConnection: Upgrade\r\n\
         Upgrade: tcp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write exec start");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("exec-tick") {
        let n = s.read(&mut buf).expect("exec output");
        assert!(
            n > 0,
            "exec ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        assert!(seen.len() < 1 << 20, "no exec output");
    }
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

/// The live feed `/api/v1/stream` over a real WebSocket, after its `subscribed` message.
fn live_feed(server: &Server, token: &str) -> tokio_tungstenite::tungstenite::WebSocket<TcpStream> {
    use tokio_tungstenite::tungstenite::{client, client::IntoClientRequest, Message};
    let stream = TcpStream::connect(&server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("{}/api/v1/stream", server.ws())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = client(req, stream).expect("feed handshake");
    match ws.read().expect("subscribed") {
        Message::Text(t) => assert!(t.contains("subscribed"), "{t}"),
        other => panic!("{other:?}"),
    }
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    ws
}

fn feed_ended(ws: &mut tokio_tungstenite::tungstenite::WebSocket<TcpStream>) -> bool {
    use tokio_tungstenite::tungstenite::{Error, Message};
    match ws.read() {
        Ok(Message::Close(_)) => true,
        Ok(_) => false,
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(_) => true,
    }
}

/// Polls `ended` until it holds, at most a second after the revocation answered.
fn ends_within_a_second(what: &str, mut ended: impl FnMut() -> bool) {
    wait_for(&format!("{what} to end"), ONE_SECOND, || {
        ended().then_some(())
    });
}

fn revocation_ends_live_sessions_within_a_second(db: Db) {
    require_docker();
    let server = Server::start(db);
    let (host_id, agent_id, agent_token) = server.enrol(&unique("revoke"));
    let mut agent = Agent::start(&server.ws(), &agent_id, &agent_token);
    server.wait_status(&host_id, "online", ONLINE);
    let mut cleanup = DockerCleanup::default();
    let admin_cli = DockerCli::new(&server, &host_id, &server.admin_token);
    let ticker = unique("revoke-tick");
    cleanup.container(&ticker);
    admin_cli.ok(&[
        "run",
        "-d",
        "--name",
        &ticker,
        "--label",
        "docker-ctl-e2e=revoke",
        TEST_IMAGE,
        "sh",
        "-c",
        "while true; do echo tick; sleep 0.2; done",
    ]);

    // A user opens a followed log, the event stream, an exec hijack and the live feed.
    let (token_id, token) = user_token(&server, &unique("leaving"), "operator");
    let cli = DockerCli::new(&server, &host_id, &token);
    let mut logs = Follow::start(&cli, &["logs", "-f", &ticker]);
    logs.wait_line("logs -f", "tick");
    let mut events = Follow::start(&cli, &["events", "--filter", "label=docker-ctl-e2e=revoke"]);
    // An event the stream shows proves it is connected (the CLI subscribes in the
    // background, so markers are made until one shows up).
    let mut shown = false;
    for _ in 0..10 {
        let marker = unique("revoke-marker");
        cleanup.container(&marker);
        let (ok, _) = docker_cli(&[
            "create",
            "--name",
            &marker,
            "--label",
            "docker-ctl-e2e=revoke",
            TEST_IMAGE,
            "true",
        ]);
        assert!(ok, "docker create {marker}");
        if events.saw_line(&marker, Duration::from_secs(2)) {
            shown = true;
            break;
        }
    }
    assert!(shown, "docker events showed none of the markers");
    let mut exec = exec_hijack(&server, &host_id, &token, &ticker);
    let mut feed = live_feed(&server, &token);
    assert!(
        !logs.ended() && !events.ended() && !closed_by_peer(&mut exec) && !feed_ended(&mut feed)
    );

    // Revoke: each ends within a second of the answer.
    let (st, v) = server.api("DELETE", &format!("/api/v1/tokens/{token_id}"), None);
    assert_eq!(st, 200, "{v}");
    ends_within_a_second("logs -f", || logs.ended());
    ends_within_a_second("docker events", || events.ended());
    ends_within_a_second("the exec hijack", || closed_by_peer(&mut exec));
    ends_within_a_second("the live feed", || feed_ended(&mut feed));
    // And the token does nothing on the daemon any more.
    let refused = unique("revoke-refused");
    cleanup.container(&refused);
    let (code, _, err) = cli.run(&["create", "--name", &refused, TEST_IMAGE, "true"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("token revoked"), "{err}");
    let (exists, _) = docker_cli(&["container", "inspect", &refused]);
    assert!(
        !exists,
        "dockerd has no container made with the revoked token"
    );

    // A role lowered below what a session needs ends that session, not the others.
    let name = unique("lowered");
    let (_, lowered) = user_token(&server, &name, "operator");
    let mut exec = exec_hijack(&server, &host_id, &lowered, &ticker);
    let lowered_cli = DockerCli::new(&server, &host_id, &lowered);
    let mut logs = Follow::start(&lowered_cli, &["logs", "-f", &ticker]);
    logs.wait_line("logs -f", "tick");
    let (st, v) = server.api(
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": name, "role": "viewer"})),
    );
    assert_eq!(st, 201, "{v}");
    ends_within_a_second("the operator's exec hijack", || closed_by_peer(&mut exec));
    assert!(!logs.ended(), "a viewer may still follow logs");
    logs.wait_line("logs -f after the role change", "tick");

    // Rotating the agent's token without grace ends the agent's session.
    let (st, v) = server.api(
        "POST",
        &format!("/api/v1/agents/{agent_id}/rotate-token"),
        Some(json!({"grace_period": 0})),
    );
    assert_eq!(st, 200, "{v}");
    let rotated = v["token"].as_str().unwrap().to_string();
    ends_within_a_second("the agent session on the old token", || {
        ends_or_offline(&server, &agent_id)
    });
    agent.kill();
    let _agent = Agent::start(&server.ws(), &agent_id, &rotated);
    server.wait_status(&host_id, "online", ONLINE);

    // Deleting the host ends what is still open on it.
    let mut logs = Follow::start(&lowered_cli, &["logs", "-f", &ticker]);
    logs.wait_line("logs -f", "tick");
    let (st, v) = server.api("DELETE", &format!("/api/v1/hosts/{host_id}"), None);
    assert_eq!(st, 200, "{v}");
    ends_within_a_second("logs -f on the deleted host", || logs.ended());
}

/// The agent's session is gone (it was told to disconnect).
fn ends_or_offline(server: &Server, agent_id: &str) -> bool {
    let (_, a) = server.api("GET", &format!("/api/v1/agents/{agent_id}"), None);
    a["connected"] == false
}
