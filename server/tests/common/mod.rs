//! Helpers shared by the server's integration tests: databases (a temporary SQLite file, or
//! a uniquely named PostgreSQL database dropped afterwards), state and router builders,
//! a real listener on port 0, a fake agent over a real WebSocket, and waiting with a deadline.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use protocol::{AuthPayload, AuthResponsePayload, Envelope, Message, Secret};
use serde_json::{json, Value};
use server::config::Config;
use server::store::{Role, Store};
use server::AppState;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

pub const PG_DEFAULT: &str = "postgres://dockerctl:dockerctl@127.0.0.1:5432/dockerctl";

/// A database for one test. PostgreSQL databases are dropped when this is dropped.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_admin: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = Store::sqlite_url_in(dir.path());
        TestDb {
            url,
            dir,
            pg_admin: None,
        }
    }

    /// A fresh PostgreSQL database. Fails (never skips) when PostgreSQL is not reachable.
    pub async fn postgres() -> TestDb {
        use sqlx::Connection;
        let admin = std::env::var("DOCKER_CTL_TEST_DATABASE_URL")
            .unwrap_or_else(|_| PG_DEFAULT.to_string());
        let mut conn = match sqlx::postgres::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => panic!(
                "this test needs PostgreSQL at DOCKER_CTL_TEST_DATABASE_URL ({admin}); start it with \
                 scripts/services.sh. Connection error: {e}"
            ),
        };
        let name = format!("dctl_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .expect("database URL with a path");
        TestDb {
            url: format!("{base}/{name}"),
            dir: tempfile::tempdir().expect("tempdir"),
            pg_admin: Some((admin, name)),
        }
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.url).await.expect("open store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_admin.take() {
            // Async drop is not possible; a short-lived runtime on another thread does it.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async move {
                    use sqlx::Connection;
                    let mut c = sqlx::postgres::PgConnection::connect(&admin).await.ok()?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await
                        .ok()?;
                    c.close().await.ok()
                })
            })
            .join();
        }
    }
}

/// A config for tests: short timeouts, data in `db.dir`.
pub fn test_config(db: &TestDb) -> Config {
    let mut c = Config::from_layers(None, json!({ "data_dir": db.dir.path() })).expect("config");
    c.database_url = Some(Secret::new(db.url.clone()));
    c.agent.command_timeout = server::config::Seconds(Duration::from_secs(10));
    c.shutdown_timeout = server::config::Seconds(Duration::from_secs(5));
    c
}

pub async fn state_with(db: &TestDb, config: Config) -> AppState {
    // `DOCKER_CTL_TEST_LOG=server=debug` shows the server's log in a test's output.
    if let Ok(filter) = std::env::var("DOCKER_CTL_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    AppState::new(config)
        .await
        .unwrap_or_else(|e| panic!("state for {}: {e:#}", db.url))
}

pub async fn state(db: &TestDb) -> AppState {
    state_with(db, test_config(db)).await
}

/// A user token with `role`.
pub async fn token(state: &AppState, name: &str, role: Role) -> String {
    token_and_id(state, name, role).await.0
}

/// A user token with `role`, and its id.
pub async fn token_and_id(state: &AppState, name: &str, role: Role) -> (String, String) {
    let (id, t, _) = server::api::tokens_issue(&state.store, name, role, None, Vec::new())
        .await
        .expect("token");
    (t.expose().to_string(), id)
}

/// One request through the router (no port). Returns the status and the JSON body (or the
/// text as a JSON string).
pub async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    }
    .expect("request");
    let resp = server::app(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
        .await
        .expect("body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

/// Creates an agent-mode host and an agent for it; returns (host_id, agent token).
pub async fn enrol(state: &AppState, admin: &str, host: &str, agent_id: &str) -> (String, String) {
    let (s, h) = call(
        state,
        "POST",
        "/api/v1/hosts",
        Some(admin),
        Some(json!({ "name": host, "connection_mode": "agent" })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    let host_id = h["id"].as_str().unwrap().to_string();
    let (s, a) = call(
        state,
        "POST",
        "/api/v1/agents",
        Some(admin),
        Some(json!({ "agent_id": agent_id, "host_id": host_id })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    (host_id, a["token"].as_str().unwrap().to_string())
}

/// A server on a real port-0 listener. Dropping `stop` (or sending) shuts it down.
pub struct Running {
    pub addr: SocketAddr,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("shutdown in time")
            .expect("join")
            .expect("serve");
    }
}

pub async fn spawn(state: &AppState) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A fake agent speaking the protocol over a real WebSocket.
pub struct FakeAgent {
    pub ws: Ws,
}

/// How long a fake agent waits for the server's next message. 40 s, not 10: after a
/// restart mid-rollout (tests/fleet.rs, `bulk_restart_suite`), a queued command to an agent
/// that just connected has been seen to arrive about 10 s late on PostgreSQL.
const RECV_DEADLINE: Duration = Duration::from_secs(40);

impl FakeAgent {
    pub async fn connect(addr: SocketAddr, path_agent_id: &str) -> FakeAgent {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws/agents/{path_agent_id}"))
                .await
                .expect("ws connect");
        FakeAgent { ws }
    }

    pub async fn send(&mut self, env: &Envelope) {
        self.ws.send(WsMsg::text(env.encode())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: WsMsg) {
        let _ = self.ws.send(m).await;
    }

    /// The next protocol message; `None` when the server closed. Panics after 10 s.
    pub async fn recv(&mut self) -> Option<Envelope> {
        loop {
            let m = tokio::time::timeout(RECV_DEADLINE, self.ws.next())
                .await
                .expect("no message in time");
            match m {
                None | Some(Err(_)) | Some(Ok(WsMsg::Close(_))) => return None,
                Some(Ok(WsMsg::Text(t))) => {
                    return Some(
                        Envelope::decode(t.as_bytes()).expect("server sent a valid envelope"),
                    )
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until the server closes; returns the close code (None for a bare EOF).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            let m = tokio::time::timeout(RECV_DEADLINE, self.ws.next())
                .await
                .expect("not closed in time");
            match m {
                None | Some(Err(_)) => return None,
                Some(Ok(WsMsg::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
            }
        }
    }

    pub fn auth_env(agent_id: &str, token: &str) -> Envelope {
        Envelope::new(
            "auth-1",
            Message::Auth(AuthPayload {
                agent_id: agent_id.into(),
                auth_token: Secret::new(token),
                version: "test-agent/1".into(),
                capabilities: vec!["docker".into()],
                protocol_version: Some(1),
                signing_version: None,
                target: None,
                update: None,
                labels: Default::default(),
            }),
        )
    }

    /// Connects and authenticates; returns the agent and the auth response.
    pub async fn auth(
        addr: SocketAddr,
        agent_id: &str,
        token: &str,
    ) -> (FakeAgent, AuthResponsePayload) {
        let mut a = FakeAgent::connect(addr, agent_id).await;
        a.send(&FakeAgent::auth_env(agent_id, token)).await;
        let resp = a.recv().await.expect("auth response");
        match resp.message {
            Message::AuthResponse(r) => (a, r),
            other => panic!("expected auth_response, got {other:?}"),
        }
    }

    /// Waits for the next `command` (skipping other messages).
    pub async fn next_command(&mut self) -> (String, protocol::CommandPayload) {
        loop {
            let env = self.recv().await.expect("a command before close");
            if let Message::Command(c) = env.message {
                return (env.id, c);
            }
        }
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens the live feed `/api/v1/stream{query}` on `addr` with `token`; its first message
/// (`subscribed`) is read.
pub async fn open_feed(addr: SocketAddr, token: &str, query: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/api/v1/stream{query}")
        .into_client_request()
        .expect("feed request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (mut feed, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("stream connect");
    assert_eq!(feed_next(&mut feed).await["type"], "subscribed");
    feed
}

/// The feed's next JSON message; panics when it ends or nothing comes within 10 s.
pub async fn feed_next(feed: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("feed message in time")
        {
            Some(Ok(WsMsg::Text(t))) => return serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("feed ended: {other:?}"),
        }
    }
}

/// Writes a fake agent binary and its signature by `key` (version and target in the
/// signature's comment); returns the binary's path.
pub fn signed_release(
    dir: &std::path::Path,
    key: &server::releases::SecretKey,
    version: &str,
    target: &str,
) -> std::path::PathBuf {
    let file = dir.join(format!("agent-{version}"));
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, bytes).unwrap();
    let comment = format!("file:docker-ctl-agent version:{version} target:{target}");
    server::releases::sign_file(key, &file, Some(&comment)).unwrap();
    file
}

pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("the openssl CLI is required for this test: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate.
pub fn make_pki(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=dctl-test-ca",
    ]);
    openssl(dir, &ca);
    for (name, ext) in [
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
        ("client", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let mut req = vec!["req"];
        req.extend(ec);
        let (key, csr, crt, extf) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
        openssl(dir, &req);
        openssl(dir, &["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", &crt, "-days", "2", "-extfile", &extf]);
    }
}
