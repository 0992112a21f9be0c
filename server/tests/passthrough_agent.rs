//! The Docker API passthrough for agent hosts, against a fake agent speaking protocol 2 over
//! a real WebSocket: what the server sends (headers, frames, credit, cancel), what it does
//! with what the agent answers, HTTP upgrade, and control traffic next to a saturated stream.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use protocol::{
    AuthPayload, CommandResponsePayload, Envelope, Message, Secret, StreamCreditPayload,
    StreamEndPayload, StreamOpenPayload, StreamResponsePayload, STREAM_CHUNK, STREAM_WINDOW,
};
use serde_json::json;
use server::store::Role;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMsg;

/// What the fake agent receives.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum In {
    Text(Envelope),
    Data(u32, Vec<u8>),
}

struct Agent {
    ws: Ws,
}

impl Agent {
    async fn connect(addr: SocketAddr, agent_id: &str, token: &str, version: u32) -> Agent {
        let mut a = FakeAgent::connect(addr, agent_id).await;
        a.send(&Envelope::new(
            "auth-1",
            Message::Auth(AuthPayload {
                agent_id: agent_id.into(),
                auth_token: Secret::new(token),
                version: "fake/2".into(),
                capabilities: vec!["docker".into()],
                protocol_version: Some(version),
                signing_version: None,
                target: None,
                update: None,
                labels: Default::default(),
            }),
        ))
        .await;
        match a.recv().await.expect("auth response").message {
            Message::AuthResponse(r) => {
                assert_eq!(r.protocol_version, Some(version.min(2)), "{r:?}");
            }
            other => panic!("{other:?}"),
        }
        Agent { ws: a.ws }
    }

    async fn next(&mut self) -> In {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a message within 10 s")
                .expect("the socket is open")
                .expect("a frame");
            match m {
                WsMsg::Text(t) => return In::Text(Envelope::decode(t.as_bytes()).unwrap()),
                WsMsg::Binary(b) => {
                    let (id, d) = protocol::decode_data_frame(&b).expect("a valid data frame");
                    return In::Data(id, d.to_vec());
                }
                WsMsg::Close(_) => panic!("the server closed the socket"),
                _ => continue,
            }
        }
    }

    /// The next message that is not a ping or credit of another kind; panics on data.
    async fn next_text(&mut self) -> Message {
        match self.next().await {
            In::Text(e) => e.message,
            In::Data(id, d) => panic!("unexpected data on stream {id}: {} bytes", d.len()),
        }
    }

    async fn open(&mut self) -> StreamOpenPayload {
        match self.next_text().await {
            Message::StreamOpen(o) => o,
            other => panic!("expected stream_open, got {other:?}"),
        }
    }

    async fn send(&mut self, m: Message) {
        let env = Envelope::new(uuid::Uuid::new_v4().to_string(), m);
        self.ws.send(WsMsg::text(env.encode())).await.unwrap();
    }

    async fn data(&mut self, id: u32, d: &[u8]) {
        self.ws
            .send(WsMsg::binary(protocol::encode_data_frame(id, d)))
            .await
            .unwrap();
    }

    async fn respond(&mut self, id: u32, status: u16, headers: &[(&str, &str)]) {
        self.send(Message::StreamResponse(StreamResponsePayload {
            stream_id: id,
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }))
        .await;
    }

    async fn end(&mut self, id: u32) {
        self.send(Message::StreamEnd(StreamEndPayload {
            stream_id: id,
            error: None,
        }))
        .await;
    }
}

struct Env {
    st: server::AppState,
    srv: Running,
    host: String,
    admin: String,
    agent_token: String,
    _db: TestDb,
}

async fn env() -> Env {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host, agent_token) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    Env {
        st,
        srv,
        host,
        admin,
        agent_token,
        _db: db,
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

impl Env {
    fn url(&self, below: &str) -> String {
        format!(
            "http://{}/api/v1/hosts/{}/docker{below}",
            self.srv.addr, self.host
        )
    }

    fn request(&self, method: &str, below: &str, body: Vec<u8>) -> hyper::Request<Full<Bytes>> {
        hyper::Request::builder()
            .method(method)
            .uri(self.url(below))
            .header("authorization", format!("Bearer {}", self.admin))
            .header("x-registry-auth", "e30=")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "must-not-pass")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    async fn agent(&self) -> Agent {
        Agent::connect(self.srv.addr, "edge-1", &self.agent_token, 2).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_request_headers_and_body() {
    let e = env().await;
    let mut agent = e.agent().await;
    let req = e.request("GET", "/v1.41/containers/json?all=1", Vec::new());
    let pending = tokio::spawn(client().request(req));
    let open = agent.open().await;
    assert_eq!(open.method, "GET");
    assert_eq!(open.path, "/v1.41/containers/json?all=1");
    assert!(!open.body && !open.upgrade, "{open:?}");
    let names: Vec<String> = open
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    assert!(names.contains(&"x-registry-auth".to_string()), "{names:?}");
    for hop in ["authorization", "host", "connection", "te", "x-hop"] {
        assert!(
            !names.contains(&hop.to_string()),
            "{hop} was forwarded: {names:?}"
        );
    }
    agent
        .respond(
            open.stream_id,
            200,
            &[
                ("Api-Version", "1.41"),
                ("Content-Type", "application/json"),
                ("Ostype", "linux"),
                ("Transfer-Encoding", "chunked"),
                ("Connection", "close"),
            ],
        )
        .await;
    agent.data(open.stream_id, b"[{\"Id\":").await;
    agent.data(open.stream_id, b"\"abc\"}]").await;
    agent.end(open.stream_id).await;
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["api-version"], "1.41");
    assert_eq!(resp.headers()["ostype"], "linux");
    assert!(resp.headers().get("connection").is_none());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"[{\"Id\":\"abc\"}]");

    // An error status passes through with its body; the agent's error before the head is a
    // Docker-style message with the code's status.
    let pending =
        tokio::spawn(client().request(e.request("DELETE", "/v1.41/containers/x", vec![])));
    let open = agent.open().await;
    agent
        .send(Message::StreamEnd(StreamEndPayload {
            stream_id: open.stream_id,
            error: Some(protocol::ErrorBody::new(
                protocol::ErrorCode::Forbidden,
                "local policy of the agent denies container.remove",
            )),
        }))
        .await;
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("local policy"),
        "{v}"
    );
    e.srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_respects_credit_and_commands_pass_a_saturated_stream() {
    let e = env().await;
    let mut agent = e.agent().await;
    let total = 1024 * 1024 + 123;
    let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let req = e.request("POST", "/v1.41/images/load?quiet=1", payload.clone());
    let pending = tokio::spawn(client().request(req));
    let open = agent.open().await;
    assert!(open.body, "{open:?}");
    let id = open.stream_id;
    // Withhold credit: exactly one window arrives, in frames of at most 32 KiB.
    let mut got = Vec::new();
    while got.len() < STREAM_WINDOW as usize {
        match agent.next().await {
            In::Data(sid, d) => {
                assert_eq!(sid, id);
                assert!(!d.is_empty() && d.len() <= STREAM_CHUNK, "{}", d.len());
                got.extend_from_slice(&d);
            }
            In::Text(t) => panic!("unexpected {t:?}"),
        }
    }
    assert_eq!(
        got.len(),
        STREAM_WINDOW as usize,
        "no frame crosses the window"
    );
    // The stream is stalled; a command still gets through, and nothing of the stream
    // arrives before it.
    let st = e.st.clone();
    let (host, admin) = (e.host.clone(), e.admin.clone());
    let op = tokio::spawn(async move {
        call(
            &st,
            "POST",
            &format!("/api/v1/hosts/{host}/operations"),
            Some(&admin),
            Some(json!({"operation": "system.ping"})),
        )
        .await
    });
    let cmd_id = match agent.next().await {
        In::Text(env) => match env.message {
            Message::Command(c) => {
                assert_eq!(c.operation, "system.ping");
                env.id
            }
            other => panic!("expected the command, got {other:?}"),
        },
        In::Data(_, d) => panic!(
            "the server sent {} bytes beyond the window without credit",
            d.len()
        ),
    };
    let answer = Envelope::new(
        cmd_id,
        Message::CommandResponse(CommandResponsePayload::Success {
            data: json!({"ok": true}),
        }),
    );
    agent.ws.send(WsMsg::text(answer.encode())).await.unwrap();
    let (s, v) = op.await.unwrap();
    assert_eq!(s, 200, "{v}");
    // Grant credit as we go; the rest arrives, then stream_end.
    agent
        .send(Message::StreamCredit(StreamCreditPayload {
            stream_id: id,
            bytes: STREAM_WINDOW,
        }))
        .await;
    let mut since_credit = 0usize;
    loop {
        match agent.next().await {
            In::Data(sid, d) => {
                assert_eq!(sid, id);
                assert!(d.len() <= STREAM_CHUNK);
                got.extend_from_slice(&d);
                since_credit += d.len();
                assert!(since_credit <= STREAM_WINDOW as usize, "credit overrun");
                if since_credit >= 64 * 1024 {
                    agent
                        .send(Message::StreamCredit(StreamCreditPayload {
                            stream_id: id,
                            bytes: since_credit as u32,
                        }))
                        .await;
                    since_credit = 0;
                }
            }
            In::Text(env) => match env.message {
                Message::StreamEnd(end) => {
                    assert_eq!(end.stream_id, id);
                    assert!(end.error.is_none());
                    break;
                }
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    assert!(got == payload, "the body arrived intact and in order");
    agent
        .respond(id, 200, &[("Content-Type", "application/json")])
        .await;
    agent.data(id, b"{\"stream\":\"Loaded\"}").await;
    agent.end(id).await;
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"stream\":\"Loaded\"}");
    e.srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_credit_is_granted_as_the_client_reads_and_cancel_on_disconnect() {
    let e = env().await;
    let mut agent = e.agent().await;
    let req = e.request("GET", "/v1.41/containers/c1/logs?follow=1&stdout=1", vec![]);
    let pending = tokio::spawn(client().request(req));
    let open = agent.open().await;
    let id = open.stream_id;
    agent
        .respond(
            id,
            200,
            &[("Content-Type", "application/vnd.docker.multiplexed-stream")],
        )
        .await;
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.docker.multiplexed-stream"
    );
    let body = resp.into_body();
    // The client reads everything in the background.
    let (read_tx, mut read_rx) = tokio::sync::watch::channel(0usize);
    let consumer = tokio::spawn(async move {
        let mut body = body;
        let mut n = 0;
        while let Some(f) = body.frame().await {
            n += f.unwrap().data_ref().map(|d| d.len()).unwrap_or(0);
            let _ = read_tx.send(n);
        }
    });
    // Send 1 MiB, never more than the credit the server granted; the server must grant
    // credit as the client reads, or this stalls.
    let chunk = vec![7u8; STREAM_CHUNK];
    let mut window = STREAM_WINDOW as usize;
    let (mut sent, mut credited) = (0usize, 0usize);
    let goal = 1024 * 1024;
    while sent < goal {
        if window >= chunk.len() {
            agent.data(id, &chunk).await;
            window -= chunk.len();
            sent += chunk.len();
            continue;
        }
        match agent.next().await {
            In::Text(env) => match env.message {
                Message::StreamCredit(c) if c.stream_id == id => {
                    window += c.bytes as usize;
                    credited += c.bytes as usize;
                    assert!(credited <= sent, "credit for bytes never sent");
                }
                other => panic!("unexpected {other:?}"),
            },
            In::Data(..) => panic!("no request data expected"),
        }
    }
    read_rx
        .wait_for(|n| *n == goal)
        .await
        .expect("the client read everything");
    // The client goes away mid-stream: the agent is told to cancel.
    consumer.abort();
    let _ = consumer.await;
    loop {
        match agent.next().await {
            In::Text(env) => match env.message {
                Message::StreamCancel(c) => {
                    assert_eq!(c.stream_id, id);
                    break;
                }
                Message::StreamCredit(_) => continue,
                other => panic!("unexpected {other:?}"),
            },
            In::Data(..) => panic!("no request data expected"),
        }
    }
    // Frames of the cancelled stream still in flight are dropped silently; an id the
    // server never opened is answered with stream_cancel.
    agent.data(id, b"late").await;
    agent.data(9999, b"stray").await;
    match agent.next_text().await {
        Message::StreamCancel(c) => assert_eq!(c.stream_id, 9999),
        other => panic!("unexpected {other:?}"),
    }
    e.srv.shutdown().await;
}

/// Reads an HTTP response head from a raw stream (up to the blank line).
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("head in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed in the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hijacks_the_connection_both_ways_with_half_close() {
    let e = env().await;
    let mut agent = e.agent().await;
    let mut tcp = tokio::net::TcpStream::connect(e.srv.addr).await.unwrap();
    let body = br#"{"Detach":false,"Tty":true}"#;
    let req = format!(
        "POST /api/v1/hosts/{}/docker/v1.41/exec/abc123/start HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: Upgrade\r\nContent-Type: application/json\r\nUpgrade: tcp\r\n\r\n",
        e.host, e.srv.addr, e.admin, body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let open = agent.open().await;
    assert!(open.upgrade && open.body, "{open:?}");
    assert_eq!(open.path, "/v1.41/exec/abc123/start");
    let id = open.stream_id;
    let mut got = Vec::new();
    loop {
        match agent.next().await {
            In::Data(_, d) => got.extend_from_slice(&d),
            In::Text(env) => match env.message {
                Message::StreamEnd(_) => break,
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    assert_eq!(&got[..], body);
    agent
        .respond(
            id,
            101,
            &[
                ("Content-Type", "application/vnd.docker.raw-stream"),
                ("Connection", "Upgrade"),
                ("Upgrade", "tcp"),
                ("Api-Version", "1.41"),
            ],
        )
        .await;
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: tcp"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(
        lower.contains("content-type: application/vnd.docker.raw-stream"),
        "{head}"
    );
    // daemon -> client
    agent.data(id, b"$ ").await;
    let mut buf = [0u8; 2];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"$ ");
    // client -> daemon, then the client half-closes: stream_end
    tcp.write_all(b"echo hi\n").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut typed = Vec::new();
    loop {
        match agent.next().await {
            In::Data(sid, d) => {
                assert_eq!(sid, id);
                typed.extend_from_slice(&d);
            }
            In::Text(env) => match env.message {
                Message::StreamEnd(end) => {
                    assert_eq!(end.stream_id, id);
                    break;
                }
                Message::StreamCredit(_) => continue,
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    assert_eq!(&typed[..], b"echo hi\n");
    // the daemon still talks after the client's half-close, then ends: the client sees EOF
    agent.data(id, b"hi\r\n").await;
    agent.end(id).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .expect("EOF in time")
        .unwrap();
    assert_eq!(&rest[..], b"hi\r\n");
    e.srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_old_and_vanishing_agents() {
    let e = env().await;
    let ping = |e: &Env| e.request("GET", "/_ping", vec![]);
    // no agent connected: 409 with a message
    let resp = client().request(ping(&e)).await.unwrap();
    assert_eq!(resp.status(), 409);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["message"].as_str().unwrap().starts_with("agent offline:"),
        "{v}"
    );
    // a protocol-1 agent cannot carry streams: 501
    let old = Agent::connect(e.srv.addr, "edge-1", &e.agent_token, 1).await;
    let resp = client().request(ping(&e)).await.unwrap();
    assert_eq!(resp.status(), 501);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["message"].as_str().unwrap().contains("protocol"), "{v}");
    drop(old);
    // the agent vanishes mid-stream: a waiting request gets 502, a streaming body breaks
    let mut agent = e.agent().await;
    let waiting = tokio::spawn(client().request(e.request("GET", "/v1.41/info", vec![])));
    let open = agent.open().await;
    let streaming = tokio::spawn(client().request(e.request("GET", "/v1.41/events", vec![])));
    let open2 = agent.open().await;
    agent.respond(open2.stream_id, 200, &[]).await;
    agent.data(open2.stream_id, b"{}\n").await;
    let resp2 = streaming.await.unwrap().unwrap();
    let mut body2 = resp2.into_body();
    let f = body2.frame().await.unwrap().unwrap();
    assert_eq!(f.data_ref().unwrap().as_ref(), b"{}\n");
    let _ = open.stream_id;
    drop(agent);
    let resp = waiting.await.unwrap().unwrap();
    assert_eq!(resp.status(), 502);
    let rest = tokio::time::timeout(Duration::from_secs(10), body2.collect())
        .await
        .expect("the body ends");
    assert!(rest.is_err(), "a broken stream is not a clean end");
    e.srv.shutdown().await;
}
