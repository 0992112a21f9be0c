//! Hostile input: oversized frames, invalid UTF-8, deeply nested JSON, unknown message types,
//! slowloris on the WebSocket and on the API, floods (agent and REST), SQL injection in
//! names and filters, encoded path tricks in passthrough, and message signing (altered,
//! replayed, stale). Each gets a clear error and other agents keep working.

mod common;

use axum::http::StatusCode;
use common::{call, enrol, spawn, state_with, test_config, token, FakeAgent, TestDb};
use futures_util::{SinkExt, StreamExt};
use protocol::{CommandResponsePayload, Envelope, ErrorCode, HeartbeatPayload, Message};
use serde_json::{json, Value};
use server::agents::signing::{Direction, Signer};
use server::config::Seconds;
use server::store::Role;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as WsMsg;

/// The next `error` message's body (skipping others).
async fn next_error(a: &mut FakeAgent) -> protocol::ErrorBody {
    loop {
        match a.recv().await.expect("an error before close").message {
            Message::Error(e) => return e.error,
            _ => continue,
        }
    }
}

/// A second agent still runs commands: the server serves other agents normally.
async fn still_works(st: &server::AppState, admin: &str, host: &str, other: &mut FakeAgent) {
    let (st2, a2, h2) = (st.clone(), admin.to_string(), host.to_string());
    let req = tokio::spawn(async move {
        call(
            &st2,
            "POST",
            &format!("/api/v1/hosts/{h2}/operations"),
            Some(&a2),
            Some(json!({"operation": "container.list"})),
        )
        .await
    });
    let (id, _) = other.next_command().await;
    other
        .send(&Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Success { data: json!([]) }),
        ))
        .await;
    let (s, v) = req.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn hostile_frames_get_errors_and_others_are_unaffected() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.auth_timeout = Seconds(Duration::from_millis(500));
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, bad_tok) = enrol(&st, &admin, "bad-host", "bad").await;
    let (good_host, good_tok) = enrol(&st, &admin, "good-host", "good").await;
    let srv = spawn(&st).await;
    let (mut good, _) = FakeAgent::auth(srv.addr, "good", &good_tok).await;
    let (mut bad, _) = FakeAgent::auth(srv.addr, "bad", &bad_tok).await;

    // Deeply nested JSON: an error, the link stays.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    bad.send_raw(WsMsg::text(format!(
        r#"{{"id":"d1","type":"heartbeat","timestamp":"2024-01-07T10:00:00Z","payload":{{"x":{deep}}}}}"#
    )))
    .await;
    let e = next_error(&mut bad).await;
    assert_eq!(e.code, ErrorCode::InvalidParams, "{e:?}");
    // Unknown type: unsupported, the link stays.
    bad.send_raw(WsMsg::text(
        r#"{"id":"u1","type":"launch_missiles","timestamp":"2024-01-07T10:00:00Z","payload":{}}"#,
    ))
    .await;
    let e = next_error(&mut bad).await;
    assert_eq!(e.code, ErrorCode::Unsupported, "{e:?}");
    assert!(e.message.contains("launch_missiles"), "{e:?}");
    // Not JSON at all.
    bad.send_raw(WsMsg::text("'; DROP TABLE docker_agents; --"))
        .await;
    assert_eq!(next_error(&mut bad).await.code, ErrorCode::InvalidParams);
    bad.send(&Envelope::new(
        "hb",
        Message::Heartbeat(HeartbeatPayload::default()),
    ))
    .await;
    still_works(&st, &admin, &good_host, &mut good).await;

    // Invalid UTF-8 in a text frame: the socket closes with 1007.
    let frame = Frame::message(vec![0xff, 0xfe, 0x7b], OpCode::Data(Data::Text), true);
    bad.send_raw(WsMsg::Frame(frame)).await;
    let code = bad.closed().await;
    assert!(matches!(code, Some(1007) | None), "{code:?}");
    still_works(&st, &admin, &good_host, &mut good).await;

    // Oversized frame: closed with 1009 (too big), others unaffected.
    let (mut bad, _) = FakeAgent::auth(srv.addr, "bad", &bad_tok).await;
    bad.send_raw(WsMsg::text("x".repeat(protocol::MAX_MESSAGE_SIZE + 10)))
        .await;
    let code = bad.closed().await;
    assert!(matches!(code, Some(1009) | None), "{code:?}");
    still_works(&st, &admin, &good_host, &mut good).await;

    // WebSocket slowloris: connect, never authenticate: closed after auth_timeout.
    let mut slow = FakeAgent::connect(srv.addr, "bad").await;
    let started = std::time::Instant::now();
    assert_eq!(slow.closed().await, Some(1008));
    assert!(started.elapsed() < Duration::from_secs(5));
    still_works(&st, &admin, &good_host, &mut good).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn agent_flood_is_limited_then_closed_while_others_work() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.max_messages_per_second = 5;
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, bad_tok) = enrol(&st, &admin, "flood-host", "flood").await;
    let (good_host, good_tok) = enrol(&st, &admin, "calm-host", "calm").await;
    let srv = spawn(&st).await;
    let (mut good, _) = FakeAgent::auth(srv.addr, "calm", &good_tok).await;
    let (bad, _) = FakeAgent::auth(srv.addr, "flood", &bad_tok).await;
    let (mut sink, mut stream) = bad.ws.split();
    let hb = Envelope::new("hb", Message::Heartbeat(HeartbeatPayload::default())).encode();
    let writer = tokio::spawn(async move {
        for _ in 0..2000 {
            if sink.send(WsMsg::text(hb.clone())).await.is_err() {
                return;
            }
        }
    });
    let mut limited = 0;
    let mut close = None;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the flood must end in a close");
        match m {
            Some(Ok(WsMsg::Text(t))) => {
                if let Ok(Envelope {
                    message: Message::Error(e),
                    ..
                }) = Envelope::decode(t.as_bytes())
                {
                    assert_eq!(e.error.code, ErrorCode::RateLimited);
                    limited += 1;
                }
            }
            Some(Ok(WsMsg::Close(f))) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    writer.abort();
    assert!(limited > 0, "rate_limited errors before the close");
    assert_eq!(close, Some(1008));
    still_works(&st, &admin, &good_host, &mut good).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn rest_flood_gets_429_and_other_tokens_are_unaffected() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.api_requests_per_second = 5;
    let st = state_with(&db, cfg).await;
    let flood = token(&st, "flooder", Role::Viewer).await;
    let calm = token(&st, "calm", Role::Viewer).await;
    let mut limited = 0;
    for _ in 0..50 {
        let (s, v) = call(&st, "GET", "/api/v1/hosts", Some(&flood), None).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(v["error"]["code"], "rate_limited", "{v}");
            limited += 1;
        }
    }
    assert!(limited >= 30, "{limited} of 50 limited");
    let (s, _) = call(&st, "GET", "/api/v1/hosts", Some(&calm), None).await;
    assert_eq!(s, StatusCode::OK);
}

/// Writes `bytes` one at a time, `gap` apart, until the server closes (bounded).
async fn drip(addr: std::net::SocketAddr, bytes: &[u8], gap: Duration) -> std::time::Duration {
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    for b in bytes.iter().cycle().take(400) {
        if s.write_all(&[*b]).await.is_err() {
            return started.elapsed();
        }
        // Closed by the server? A read of 0 (or an error) says so.
        let mut buf = [0u8; 256];
        match tokio::time::timeout(gap, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => return started.elapsed(),
            Err(_) => {}
        }
    }
    panic!("a slowloris client was never cut off");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("a normal request is answered at once")
        .unwrap();
    out
}

#[tokio::test]
async fn http_slowloris_is_cut_off_and_does_not_block_others() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.http_header_timeout = Seconds(Duration::from_secs(1));
    let st = state_with(&db, cfg).await;
    let srv = spawn(&st).await;
    let addr = srv.addr;
    let slow = tokio::spawn(async move {
        drip(
            addr,
            b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            Duration::from_millis(100),
        )
        .await
    });
    let slow2 = tokio::spawn(async move {
        drip(
            addr,
            b"GET /readyz HTTP/1.1\r\nX-Slow: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            Duration::from_millis(100),
        )
        .await
    });
    for _ in 0..5 {
        let r = http_get(addr, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    for t in [slow, slow2] {
        let took = t.await.unwrap();
        assert!(took < Duration::from_secs(10), "cut off after {took:?}");
    }
    srv.shutdown().await;
}

async fn sql_injection(db: &TestDb) {
    let st = state_with(db, test_config(db)).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let evil = "'; DROP TABLE docker_agents; --";
    // As a host name: stored as data.
    let (s, h) = call(
        &st,
        "POST",
        "/api/v1/hosts",
        Some(&admin),
        Some(json!({"name": evil, "connection_mode": "agent"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    assert_eq!(h["name"], evil);
    let host = h["id"].as_str().unwrap().to_string();
    // As an agent id: refused with a clear error.
    let (s, v) = call(
        &st,
        "POST",
        "/api/v1/agents",
        Some(&admin),
        Some(json!({"agent_id": evil, "host_id": host})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_params");
    let enc = "%27%3B%20DROP%20TABLE%20docker_agents%3B%20--";
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/agents/{enc}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // In audit filters: no match, no harm.
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/audit?actor={enc}&action=%27%20OR%201%3D1%20--"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["entries"].as_array().unwrap().len(), 0, "{v}");
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host}/commands?state={enc}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // As an idempotency key and as a passthrough object name.
    let (s, v) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{host}/operations"),
        Some(&admin),
        Some(json!({"operation": "container.list", "queue": true, "idempotency_key": evil})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host}/docker/v1.41/containers/{enc}/json"),
        Some(&admin),
        None,
    )
    .await;
    assert!(s.is_client_error() || s.is_server_error(), "{s} {v}");
    assert!(
        v["error"]["code"].is_string() || v["message"].is_string(),
        "{v}"
    );
    // Every table is intact.
    let (s, v) = call(&st, "GET", "/api/v1/agents", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(&st, "GET", "/api/v1/hosts", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == evil),
        "{v}"
    );
    assert!(st.store.verify_audit_chain().await.unwrap().ok());
}

#[tokio::test]
async fn sql_injection_is_data_on_sqlite() {
    sql_injection(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn sql_injection_is_data_on_postgres() {
    sql_injection(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn encoded_path_tricks_in_passthrough_are_refused() {
    let db = TestDb::sqlite();
    let st = state_with(&db, test_config(&db)).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host, _) = enrol(&st, &admin, "p-host", "p-agent").await;
    let base = format!("/api/v1/hosts/{host}/docker");
    for p in [
        "/v1.41/containers/%2e%2e/json",
        "/v1.41/containers/%2E%2E%2Finfo/json",
        "/v1.41/containers/%252e%252e/json",
        "/v1.41/containers/.%2e/json",
        "/v1.41/containers/..%5cinfo/json",
        "/v1.41/containers/a%00b/json",
    ] {
        let (s, v) = call(&st, "GET", &format!("{base}{p}"), Some(&admin), None).await;
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::FORBIDDEN,
            "{p}: {s} {v}"
        );
    }
}

// ----- message signing --------------------------------------------------------------------

fn signed(signer: &Signer, env: &Envelope) -> Value {
    let mut v = env.to_value();
    signer.sign_envelope(Direction::AgentToServer, &mut v);
    v
}

/// The `auth` of an agent that signs with the current canonical form.
fn signing_auth(agent_id: &str, token: &str) -> Envelope {
    let mut env = FakeAgent::auth_env(agent_id, token);
    if let Message::Auth(p) = &mut env.message {
        p.signing_version = Some(server::agents::signing::SIGNING_VERSION);
    }
    env
}

async fn recv_raw(a: &mut FakeAgent) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), a.ws.next())
            .await
            .expect("a message within 10 s");
        match m {
            Some(Ok(WsMsg::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(WsMsg::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn signed_agent_traffic_and_rejections() {
    let db = TestDb::sqlite();
    let st = state_with(&db, test_config(&db)).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (s, h) = call(
        &st,
        "POST",
        "/api/v1/hosts",
        Some(&admin),
        Some(json!({"name": "s-host", "connection_mode": "agent"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let host = h["id"].as_str().unwrap().to_string();
    let (s, a) = call(
        &st,
        "POST",
        "/api/v1/agents",
        Some(&admin),
        Some(json!({"agent_id": "s-agent", "host_id": host, "signing": true})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    let key = a["signing_key"].as_str().unwrap().to_string();
    let tok = a["token"].as_str().unwrap().to_string();
    let (_, g) = call(&st, "GET", "/api/v1/agents/s-agent", Some(&admin), None).await;
    assert_eq!(g["signing"], true);
    assert!(!g.to_string().contains(&key), "the key is shown once");
    let signer = Signer::from_hex(&key).unwrap();
    let nonces = server::agents::signing::AgentNonces::default();
    let srv = spawn(&st).await;

    // Unsigned auth is refused.
    let mut a = FakeAgent::connect(srv.addr, "s-agent").await;
    a.send(&FakeAgent::auth_env("s-agent", &tok)).await;
    let r = recv_raw(&mut a).await.unwrap();
    assert_eq!(r["payload"]["status"], "rejected", "{r}");

    // An agent that signs with the old form (no signing_version) is told to upgrade.
    let mut a = FakeAgent::connect(srv.addr, "s-agent").await;
    a.send_raw(WsMsg::text(
        signed(&signer, &FakeAgent::auth_env("s-agent", &tok)).to_string(),
    ))
    .await;
    let r = recv_raw(&mut a).await.unwrap();
    assert_eq!(r["payload"]["status"], "rejected", "{r}");
    assert_eq!(r["payload"]["error"]["code"], "unsupported", "{r}");
    assert!(
        r["payload"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upgrade the agent"),
        "{r}"
    );
    match a.ws.next().await {
        Some(Ok(WsMsg::Close(Some(f)))) => {
            assert!(f.reason.contains("upgrade the agent"), "{f:?}")
        }
        other => panic!("expected a close naming the upgrade, got {other:?}"),
    }

    // Signed auth works; the server signs its answers.
    let mut a = FakeAgent::connect(srv.addr, "s-agent").await;
    a.send_raw(WsMsg::text(
        signed(&signer, &signing_auth("s-agent", &tok)).to_string(),
    ))
    .await;
    let r = recv_raw(&mut a).await.unwrap();
    assert_eq!(r["payload"]["status"], "authenticated", "{r}");
    signer
        .verify_from(
            Direction::ServerToAgent,
            r.to_string().as_bytes(),
            &nonces,
            "server",
        )
        .expect("auth_response signed");

    // A command round trip, both directions signed.
    let (st2, a2, h2) = (st.clone(), admin.clone(), host.clone());
    let req = tokio::spawn(async move {
        call(
            &st2,
            "POST",
            &format!("/api/v1/hosts/{h2}/operations"),
            Some(&a2),
            Some(json!({"operation": "container.list"})),
        )
        .await
    });
    let cmd = recv_raw(&mut a).await.unwrap();
    assert_eq!(cmd["type"], "command");
    signer
        .verify_from(
            Direction::ServerToAgent,
            cmd.to_string().as_bytes(),
            &nonces,
            "server",
        )
        .expect("command signed");
    // The server's own signed message, reflected back at it, is refused.
    a.send_raw(WsMsg::text(cmd.to_string())).await;
    let e = recv_raw(&mut a).await.unwrap();
    assert_eq!(e["payload"]["code"], "unauthorized", "{e}");
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("bad message signature"),
        "{e}"
    );
    let id = cmd["id"].as_str().unwrap().to_string();
    let resp = Envelope::new(
        id.as_str(),
        Message::CommandResponse(CommandResponsePayload::Success {
            data: json!([{"id": "s1"}]),
        }),
    );
    a.send_raw(WsMsg::text(signed(&signer, &resp).to_string()))
        .await;
    let (s, v) = req.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["id"], "s1");

    // Altered payload: rejected.
    let hb = Envelope::new(
        "hb-1",
        Message::Heartbeat(HeartbeatPayload {
            docker_reachable: Some(true),
            ..Default::default()
        }),
    );
    let mut altered = signed(&signer, &hb);
    altered["payload"]["docker_reachable"] = json!(false);
    a.send_raw(WsMsg::text(altered.to_string())).await;
    let e = recv_raw(&mut a).await.unwrap();
    assert_eq!(e["payload"]["code"], "unauthorized", "{e}");
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("bad message signature"),
        "{e}"
    );
    // Replayed: the first copy passes, the second is rejected.
    let good = signed(&signer, &hb);
    a.send_raw(WsMsg::text(good.to_string())).await;
    a.send_raw(WsMsg::text(good.to_string())).await;
    let e = recv_raw(&mut a).await.unwrap();
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("replayed"),
        "{e}"
    );
    // Stale timestamp: rejected.
    let mut old = hb.clone();
    old.timestamp = "2020-01-01T00:00:00Z".into();
    a.send_raw(WsMsg::text(signed(&signer, &old).to_string()))
        .await;
    let e = recv_raw(&mut a).await.unwrap();
    assert!(
        e["payload"]["message"].as_str().unwrap().contains("window"),
        "{e}"
    );
    // Unsigned: rejected; after max_bad_signatures (5) the socket closes.
    a.send(&hb).await;
    a.send(&hb).await;
    let mut closed = false;
    for _ in 0..10 {
        match recv_raw(&mut a).await {
            None => {
                closed = true;
                break;
            }
            Some(v) => assert_eq!(v["payload"]["code"], "unauthorized", "{v}"),
        }
    }
    assert!(closed, "closed after too many bad signatures");

    // Rotation: a new key; the old one no longer authenticates.
    let (s, r) = call(
        &st,
        "POST",
        "/api/v1/agents/s-agent/rotate-signing-key",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_ne!(r["signing_key"], key);
    let mut a = FakeAgent::connect(srv.addr, "s-agent").await;
    a.send_raw(WsMsg::text(
        signed(&signer, &FakeAgent::auth_env("s-agent", &tok)).to_string(),
    ))
    .await;
    let r = recv_raw(&mut a).await.unwrap();
    assert_eq!(r["payload"]["status"], "rejected", "{r}");
    srv.shutdown().await;
}
