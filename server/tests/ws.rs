//! Agent WebSocket tests: a real tokio-tungstenite client plays the agent against the real
//! server on a port-0 listener.

mod common;

use axum::http::StatusCode;
use common::*;
use futures_util::{SinkExt, StreamExt};
use protocol::{
    AuthStatus, CommandProgressPayload, CommandResponsePayload, Envelope, ErrorBody, ErrorCode,
    EventPayload, HeartbeatPayload, Message,
};
use serde_json::{json, Value};
use server::config::Seconds;
use server::store::Role;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMsg;

fn secs(s: f64) -> Seconds {
    Seconds(Duration::from_secs_f64(s))
}

async fn host_status(st: &server::AppState, admin: &str, host_id: &str) -> Value {
    call(
        st,
        "GET",
        &format!("/api/v1/hosts/{host_id}"),
        Some(admin),
        None,
    )
    .await
    .1
}

async fn op(st: &server::AppState, token: &str, host_id: &str, body: Value) -> (StatusCode, Value) {
    call(
        st,
        "POST",
        &format!("/api/v1/hosts/{host_id}/operations"),
        Some(token),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn agent_connects_and_runs_commands() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let (mut agent, resp) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    assert_eq!(resp.status, AuthStatus::Authenticated);
    assert!(resp.session_id.is_some());
    let cfg = resp.config.unwrap();
    assert_eq!(
        (cfg.heartbeat_interval, cfg.command_timeout),
        (Some(30), Some(10))
    );
    assert_eq!(resp.protocol_version, Some(1));
    agent
        .send(&Envelope::new(
            "hb-1",
            Message::Heartbeat(HeartbeatPayload {
                docker_reachable: Some(true),
                containers_running: Some(3),
                ..Default::default()
            }),
        ))
        .await;

    wait_until(
        Duration::from_secs(5),
        "the host shows online with health",
        || {
            let st = st.clone();
            let (admin, host_id) = (admin.clone(), host_id.clone());
            async move {
                let h = host_status(&st, &admin, &host_id).await;
                h["status"] == "online" && h["health"]["containers_running"] == 3
            }
        },
    )
    .await;
    let h = host_status(&st, &admin, &host_id).await;
    assert_eq!(h["version"], "test-agent/1");
    assert_eq!(h["capabilities"], json!(["docker"]));
    assert!(h["last_heartbeat"].is_string());

    // A command: progress first, then the response.
    let st2 = st.clone();
    let (admin2, host2) = (admin.clone(), host_id.clone());
    let api = tokio::spawn(async move {
        op(&st2, &admin2, &host2, json!({"operation": "container.list", "params": {"all": true, "filters": {"label": "app=web"}}})).await
    });
    let (id, cmd) = agent.next_command().await;
    assert_eq!(cmd.operation, "container.list");
    assert_eq!(cmd.params["all"], true);
    assert_eq!(cmd.params["filters"]["label"], json!(["app=web"]));
    agent
        .send(&Envelope::new(
            id.clone(),
            Message::CommandProgress(CommandProgressPayload {
                data: json!({"status": "working"}),
            }),
        ))
        .await;
    let data =
        json!([{"id": "abc123", "name": "web-1", "image": "nginx:latest", "status": "running"}]);
    agent
        .send(&Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Success { data: data.clone() }),
        ))
        .await;
    let (s, v) = api.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"status": "success", "data": data}));

    // The agent's error keeps its code: not_found -> 404.
    let st2 = st.clone();
    let (admin2, host2) = (admin.clone(), host_id.clone());
    let api = tokio::spawn(async move {
        op(
            &st2,
            &admin2,
            &host2,
            json!({"operation": "container.inspect", "params": {"id": "web-9"}}),
        )
        .await
    });
    let (id, _) = agent.next_command().await;
    let err = ErrorBody::new(ErrorCode::NotFound, "No such container: web-9");
    agent
        .send(&Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Error { error: err }),
        ))
        .await;
    let (s, v) = api.await.unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        v["error"],
        json!({"code": "not_found", "message": "No such container: web-9"})
    );

    // Metrics count the session, the commands and the traffic.
    let (_, m) = call(&st, "GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap().to_string();
    assert!(m.contains("docker_ctl_agents_connected 1"), "{m}");
    assert!(
        m.contains("docker_ctl_commands_total{operation=\"container.list\",outcome=\"success\"} 1")
    );
    assert!(m.contains("docker_ctl_command_duration_seconds_count{operation=\"container.inspect\",outcome=\"not_found\"} 1"));
    // The connection is in agent_events and the audit log.
    let (_, ev) = call(
        &st,
        "GET",
        "/api/v1/agents/edge-1/events",
        Some(&admin),
        None,
    )
    .await;
    assert!(ev.to_string().contains("\"connected\""));
    let (_, a) = call(
        &st,
        "GET",
        "/api/v1/audit?actor_kind=agent&action=agent.connect",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(a["entries"].as_array().unwrap().len(), 1);

    // Closing the socket makes the host offline at once.
    agent.ws.close(None).await.unwrap();
    wait_until(Duration::from_secs(5), "the host is offline", || {
        let st = st.clone();
        let (admin, host_id) = (admin.clone(), host_id.clone());
        async move { host_status(&st, &admin, &host_id).await["status"] == "offline" }
    })
    .await;
    let (s, v) = op(
        &st,
        &admin,
        &host_id,
        json!({"operation": "container.list"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_offline"))
    );
    // The session's end is written after the registry let it go: poll for the row.
    wait_until(
        Duration::from_secs(10),
        "the agent's row shows it disconnected",
        || async {
            let (_, a) = call(&st, "GET", "/api/v1/agents/edge-1", Some(&admin), None).await;
            a["status"] == "disconnected" && a["disconnected_at"].is_string()
        },
    )
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn auth_failures_are_rejected_recorded_and_rate_limited() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.auth_failures_per_minute = 4;
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let (_, tok2) = enrol(&st, &admin, "edge2", "edge-2").await;
    let srv = spawn(&st).await;

    // wrong token
    let (mut a, r) = FakeAgent::auth(srv.addr, "edge-1", "dctl_a_wrong").await;
    assert_eq!(r.status, AuthStatus::Rejected);
    assert_eq!(r.error.unwrap().code, ErrorCode::Unauthorized);
    assert_eq!(a.closed().await, Some(1008));
    // agent_id mismatch: edge-2's valid token on edge-1's path
    let mut a = FakeAgent::connect(srv.addr, "edge-1").await;
    a.send(&FakeAgent::auth_env("edge-2", &tok2)).await;
    match a.recv().await.unwrap().message {
        Message::AuthResponse(r) => assert_eq!(r.status, AuthStatus::Rejected),
        other => panic!("{other:?}"),
    }
    // first message is not auth
    let mut a = FakeAgent::connect(srv.addr, "edge-1").await;
    a.send(&Envelope::new(
        "hb",
        Message::Heartbeat(HeartbeatPayload::default()),
    ))
    .await;
    match a.recv().await.unwrap().message {
        Message::AuthResponse(r) => assert_eq!(r.status, AuthStatus::Rejected),
        other => panic!("{other:?}"),
    }
    // a binary frame first
    let mut a = FakeAgent::connect(srv.addr, "edge-1").await;
    a.send_raw(WsMsg::binary(vec![1u8, 2, 3])).await;
    assert!(matches!(
        a.recv().await.map(|e| e.message),
        Some(Message::AuthResponse(_))
    ));

    // recorded in agent_events and the audit log
    let (_, ev) = call(
        &st,
        "GET",
        "/api/v1/agents/edge-1/events",
        Some(&admin),
        None,
    )
    .await;
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "auth_failed"),
        "{ev}"
    );
    let (_, au) = call(
        &st,
        "GET",
        "/api/v1/audit?action=agent.auth&outcome=denied",
        Some(&admin),
        None,
    )
    .await;
    // Sampled: the first failure from this address is written, the next ones only counted
    // (the next row, after the sampling interval, says how many were skipped).
    assert_eq!(au["entries"].as_array().unwrap().len(), 1, "{au}");
    assert_eq!(au["entries"][0]["source_ip"], "127.0.0.1");

    // 4 failures from 127.0.0.1: further failures are refused as rate_limited...
    let (_, r) = FakeAgent::auth(srv.addr, "edge-1", "dctl_a_wrong-again").await;
    assert_eq!(r.status, AuthStatus::Rejected);
    assert_eq!(r.error.unwrap().code, ErrorCode::RateLimited);
    // ...while the right token still connects from the same address.
    let (_, r) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    assert_eq!(r.status, AuthStatus::Authenticated);
    let (_, m) = call(&st, "GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap();
    assert!(m.contains("docker_ctl_agent_auth_failures_total 5"), "{m}");
    assert!(
        m.contains("docker_ctl_agent_auth_failures_unrecorded_total 4"),
        "{m}"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn late_auth_is_closed() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.auth_timeout = secs(0.3);
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let mut a = FakeAgent::connect(srv.addr, "edge-1").await;
    // Say nothing: the server answers with a rejection and closes.
    match a.recv().await.map(|e| e.message) {
        Some(Message::AuthResponse(r)) => {
            assert_eq!(r.status, AuthStatus::Rejected);
            assert_eq!(r.error.unwrap().code, ErrorCode::Timeout);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.closed().await, Some(1008));
    // Auth after the deadline gets nowhere.
    a.send_raw(WsMsg::text(FakeAgent::auth_env("edge-1", &tok).encode()))
        .await;
    assert!(a.recv().await.is_none());
    srv.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversized_frames() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let (mut a, _) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    // malformed JSON: an error message, the session stays
    a.send_raw(WsMsg::text("{not json")).await;
    match a.recv().await.unwrap().message {
        Message::Error(e) => assert_eq!(e.error.code, ErrorCode::InvalidParams),
        other => panic!("{other:?}"),
    }
    // unknown type: unsupported
    a.send_raw(WsMsg::text(
        json!({"id": "x", "type": "teleport", "timestamp": "2024-01-07T10:00:00Z", "payload": {}})
            .to_string(),
    ))
    .await;
    match a.recv().await.unwrap().message {
        Message::Error(e) => assert_eq!(e.error.code, ErrorCode::Unsupported),
        other => panic!("{other:?}"),
    }
    // binary frames are refused but do not end the session
    a.send_raw(WsMsg::binary(vec![0u8; 16])).await;
    assert!(matches!(a.recv().await.unwrap().message, Message::Error(_)));
    // a second auth is an error
    a.send(&FakeAgent::auth_env("edge-1", &tok)).await;
    assert!(matches!(a.recv().await.unwrap().message, Message::Error(_)));
    assert_eq!(host_status(&st, &admin, &host_id).await["status"], "online");
    // oversized: the socket is closed with 1009
    let big = "x".repeat(protocol::MAX_MESSAGE_SIZE + 10);
    a.send_raw(WsMsg::text(big)).await;
    let code = a.closed().await;
    assert!(code == Some(1009) || code.is_none(), "{code:?}");
    wait_until(
        Duration::from_secs(5),
        "offline after the oversized frame",
        || {
            let st = st.clone();
            let (admin, host_id) = (admin.clone(), host_id.clone());
            async move { host_status(&st, &admin, &host_id).await["status"] == "offline" }
        },
    )
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_second_connection_replaces_the_first() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let (mut first, r1) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    let (mut second, r2) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    assert_ne!(r1.session_id, r2.session_id);
    match first.recv().await.map(|e| e.message) {
        Some(Message::Disconnect(d)) => assert!(d.reason.unwrap().contains("replaced")),
        other => panic!("{other:?}"),
    }
    assert_eq!(first.closed().await, Some(1000));
    // Commands go to the second session only.
    let st2 = st.clone();
    let (admin2, host2) = (admin.clone(), host_id.clone());
    let api = tokio::spawn(async move {
        op(&st2, &admin2, &host2, json!({"operation": "system.ping"})).await
    });
    let (id, _) = second.next_command().await;
    second
        .send(&Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Success {
                data: json!({"ok": true}),
            }),
        ))
        .await;
    let (s, v) = api.await.unwrap();
    assert_eq!((s, v["data"]["ok"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(host_status(&st, &admin, &host_id).await["status"], "online");
    let (_, a) = call(&st, "GET", "/api/v1/agents/edge-1", Some(&admin), None).await;
    assert_eq!(a["session_id"].as_str(), r2.session_id.as_deref());
    let (_, m) = call(&st, "GET", "/metrics", None, None).await;
    assert!(m
        .as_str()
        .unwrap()
        .contains("docker_ctl_agent_reconnections_total 1"));
    srv.shutdown().await;
}

#[tokio::test]
async fn revoke_closes_the_session_and_rotation_has_a_grace_period() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, old) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let (mut live, _) = FakeAgent::auth(srv.addr, "edge-1", &old).await;

    // rotation with a grace period: old and new both work; the live session stays
    let (_, r) = call(
        &st,
        "POST",
        "/api/v1/agents/edge-1/rotate-token",
        Some(&admin),
        Some(json!({"grace_period": 60})),
    )
    .await;
    let new = r["token"].as_str().unwrap().to_string();
    let (_, r) = FakeAgent::auth(srv.addr, "edge-1", &old).await;
    assert_eq!(
        r.status,
        AuthStatus::Authenticated,
        "old token within the grace period"
    );
    let (_, r) = FakeAgent::auth(srv.addr, "edge-1", &new).await;
    assert_eq!(r.status, AuthStatus::Authenticated);
    // rotation without grace: the previous token stops at once
    let (_, r) = call(
        &st,
        "POST",
        "/api/v1/agents/edge-1/rotate-token",
        Some(&admin),
        Some(json!({"grace_period": 0})),
    )
    .await;
    let newest = r["token"].as_str().unwrap().to_string();
    let (_, r) = FakeAgent::auth(srv.addr, "edge-1", &new).await;
    assert_eq!(r.status, AuthStatus::Rejected);
    let (mut live2, r) = FakeAgent::auth(srv.addr, "edge-1", &newest).await;
    assert_eq!(r.status, AuthStatus::Authenticated);
    drop(live);

    // revoke: the live session is closed at once and cannot come back
    let (s, v) = call(&st, "DELETE", "/api/v1/agents/edge-1", Some(&admin), None).await;
    assert_eq!(
        (s, v["disconnected"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    match live2.recv().await.map(|e| e.message) {
        Some(Message::Disconnect(d)) => assert_eq!(d.reason.as_deref(), Some("agent revoked")),
        other => panic!("{other:?}"),
    }
    assert_eq!(live2.closed().await, Some(1000));
    let (_, r) = FakeAgent::auth(srv.addr, "edge-1", &newest).await;
    assert_eq!(r.status, AuthStatus::Rejected);
    live = FakeAgent::connect(srv.addr, "edge-1").await;
    drop(live);
    srv.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_rejected() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let hash = server::auth::hash_token(&tok);
    st.store
        .rotate_agent_token("edge-1", &hash, Some(server::store::now_ms() - 1), None)
        .await
        .unwrap();
    let srv = spawn(&st).await;
    let (_, r) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    assert_eq!(r.status, AuthStatus::Rejected);
    assert_eq!(r.error.unwrap().message, "token expired");
    srv.shutdown().await;
}

#[tokio::test]
async fn allowlist_refuses_other_addresses() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, _) = enrol(&st, &admin, "edge", "edge-0").await;
    let (s, a) = call(
        &st,
        "POST",
        "/api/v1/agents",
        Some(&admin),
        Some(json!({"agent_id": "edge-1", "host_id": host_id, "allowed_cidrs": ["10.9.0.0/16"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let srv = spawn(&st).await;
    let (_, r) = FakeAgent::auth(srv.addr, "edge-1", a["token"].as_str().unwrap()).await;
    assert_eq!(r.status, AuthStatus::Rejected);
    assert_eq!(r.error.unwrap().code, ErrorCode::Forbidden);
    call(
        &st,
        "PATCH",
        "/api/v1/agents/edge-1",
        Some(&admin),
        Some(json!({"allowed_cidrs": ["127.0.0.0/8"]})),
    )
    .await;
    let (_, r) = FakeAgent::auth(srv.addr, "edge-1", a["token"].as_str().unwrap()).await;
    assert_eq!(r.status, AuthStatus::Authenticated);
    srv.shutdown().await;
}

#[tokio::test]
async fn silent_agent_goes_offline_and_comes_back() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.heartbeat_interval = secs(0.2);
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let (mut a, _) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    let started = std::time::Instant::now();
    wait_until(
        Duration::from_secs(5),
        "offline after 3 missed heartbeats",
        || {
            let st = st.clone();
            let (admin, host_id) = (admin.clone(), host_id.clone());
            async move { host_status(&st, &admin, &host_id).await["status"] == "offline" }
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "not before 3 intervals"
    );
    let (s, v) = op(
        &st,
        &admin,
        &host_id,
        json!({"operation": "container.list"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_offline"))
    );
    let (_, ag) = call(&st, "GET", "/api/v1/agents/edge-1", Some(&admin), None).await;
    assert_eq!(ag["status"], "offline");
    a.send(&Envelope::new(
        "hb",
        Message::Heartbeat(HeartbeatPayload::default()),
    ))
    .await;
    wait_until(
        Duration::from_secs(5),
        "online again after a heartbeat",
        || {
            let st = st.clone();
            let (admin, host_id) = (admin.clone(), host_id.clone());
            async move { host_status(&st, &admin, &host_id).await["status"] == "online" }
        },
    )
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn command_timeout_and_outcome_unknown() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.command_timeout = secs(0.3);
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let (mut a, _) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    let st2 = st.clone();
    let (admin2, host2) = (admin.clone(), host_id.clone());
    let api = tokio::spawn(async move {
        op(
            &st2,
            &admin2,
            &host2,
            json!({"operation": "container.list"}),
        )
        .await
    });
    let (id, _) = a.next_command().await;
    let (s, v) = api.await.unwrap();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("timeout"))
    );
    // A late answer is dropped quietly.
    a.send(&Envelope::new(
        id,
        Message::CommandResponse(CommandResponsePayload::Success { data: json!([]) }),
    ))
    .await;
    // The link drops while a command is in flight: outcome_unknown.
    let st2 = st.clone();
    let (admin2, host2) = (admin.clone(), host_id.clone());
    let api = tokio::spawn(async move {
        op(
            &st2,
            &admin2,
            &host2,
            json!({"operation": "container.list"}),
        )
        .await
    });
    let _ = a.next_command().await;
    drop(a);
    let (s, v) = api.await.unwrap();
    assert!(
        (s == StatusCode::GATEWAY_TIMEOUT)
            && matches!(
                v["error"]["code"].as_str(),
                Some("outcome_unknown") | Some("timeout")
            ),
        "{s} {v}"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn events_stream_and_config_update() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.ping_interval = secs(0.05);
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let (host_id, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let (other_host, tok2) = enrol(&st, &admin, "edge2", "edge-2").await;
    let srv = spawn(&st).await;

    // A web client subscribes to one host.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/api/v1/stream?host_id={host_id}", srv.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {viewer}").parse().unwrap());
    let (mut feed, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("stream connect");
    assert_eq!(feed_next(&mut feed).await["type"], "subscribed");

    let (_other, _) = FakeAgent::auth(srv.addr, "edge-2", &tok2).await;
    let (mut a, _) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    let ev = feed_next(&mut feed).await;
    assert_eq!(
        (ev["type"].as_str(), ev["agent_id"].as_str()),
        (Some("agent_online"), Some("edge-1")),
        "edge-2 is filtered out: {ev}"
    );
    assert_eq!(ev["host_id"], host_id.as_str());
    let docker_event = EventPayload {
        kind: "container".into(),
        action: "start".into(),
        actor_id: "abc".into(),
        attributes: [("name".to_string(), "web-1".to_string())].into(),
        time_nano: 1_704_621_600_000_000_000,
    };
    a.send(&Envelope::new("ev-1", Message::Event(docker_event)))
        .await;
    let ev = feed_next(&mut feed).await;
    assert_eq!(ev["type"], "docker_event");
    assert_eq!(ev["event"]["action"], "start");
    let (_, list) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host_id}/events"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(list["events"][0]["attributes"]["name"], "web-1");
    let (_, list) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{other_host}/events"),
        Some(&viewer),
        None,
    )
    .await;
    assert!(list["events"].as_array().unwrap().is_empty());
    a.send(&Envelope::new(
        "hb",
        Message::Heartbeat(HeartbeatPayload {
            docker_reachable: Some(true),
            ..Default::default()
        }),
    ))
    .await;
    let ev = feed_next(&mut feed).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["health"]["docker_reachable"].as_bool()
        ),
        (Some("health"), Some(true))
    );

    // Changing the agent's settings pushes config_update.
    let (s, _) = call(
        &st,
        "PATCH",
        "/api/v1/agents/edge-1",
        Some(&admin),
        Some(json!({"heartbeat_interval": 7})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    loop {
        match a.recv().await.expect("config_update").message {
            Message::ConfigUpdate(c) => {
                assert_eq!(c.config.heartbeat_interval, Some(7));
                break;
            }
            _ => continue,
        }
    }
    // RTT from ping/pong shows in the host status (reading drives the client's pongs).
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(100), a.ws.next()).await;
        if host_status(&st, &admin, &host_id).await["rtt_ms"].is_number() {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "no RTT measurement within 5 s"
        );
    }
    let (_, m) = call(&st, "GET", "/metrics", None, None).await;
    assert!(!m
        .as_str()
        .unwrap()
        .contains("docker_ctl_agent_rtt_seconds_count 0"));

    a.ws.close(None).await.unwrap();
    let ev = feed_next(&mut feed).await;
    assert_eq!(ev["type"], "agent_offline");
    feed.close(None).await.ok();
    srv.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_agents() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let (mut a, _) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    let addr = srv.addr;
    srv.shutdown().await;
    match a.recv().await.map(|e| e.message) {
        Some(Message::Disconnect(d)) => {
            assert_eq!(d.reason.as_deref(), Some("server shutting down"))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    // serve() closed the pool on the way out; the session's end was written before that.
    let row = db.store().await.get_agent("edge-1").await.unwrap().unwrap();
    assert_eq!(row.status, "disconnected");
}

#[tokio::test]
async fn agent_mode_can_be_disabled() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.enable_agent_mode = false;
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, _) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws/agents/edge-1", srv.addr)).await;
    assert!(err.is_err());
    let (s, v) = op(
        &st,
        &admin,
        &host_id,
        json!({"operation": "container.list"}),
    )
    .await;
    assert_eq!(v["error"]["code"], "unsupported", "{s}");
    srv.shutdown().await;
}

#[tokio::test]
async fn many_idle_agents() {
    // Sessions are cheap: 200 idle agents on one server.
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, _) = enrol(&st, &admin, "edge", "seed").await;
    let srv = spawn(&st).await;
    let mut tokens = Vec::new();
    for i in 0..200 {
        let (s, a) = call(
            &st,
            "POST",
            "/api/v1/agents",
            Some(&admin),
            Some(json!({"agent_id": format!("idle-{i}"), "host_id": host_id})),
        )
        .await;
        if s != StatusCode::CREATED {
            // max_agents_per_host defaults to 100; use a second host for the rest.
            let (_, h) = call(
                &st,
                "POST",
                "/api/v1/hosts",
                Some(&admin),
                Some(json!({"name": format!("h{i}"), "connection_mode": "agent"})),
            )
            .await;
            let (s, a) = call(
                &st,
                "POST",
                "/api/v1/agents",
                Some(&admin),
                Some(json!({"agent_id": format!("idle-{i}"), "host_id": h["id"]})),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{a}");
            tokens.push((
                format!("idle-{i}"),
                a["token"].as_str().unwrap().to_string(),
            ));
        } else {
            tokens.push((
                format!("idle-{i}"),
                a["token"].as_str().unwrap().to_string(),
            ));
        }
    }
    let mut agents = Vec::new();
    for (id, t) in &tokens {
        let (a, r) = FakeAgent::auth(srv.addr, id, t).await;
        assert_eq!(r.status, AuthStatus::Authenticated);
        agents.push(a);
    }
    assert_eq!(st.agents.live_count(), 200);
    drop(agents);
    wait_until(Duration::from_secs(10), "all sessions gone", || {
        let st = st.clone();
        async move { st.agents.live_count() == 0 }
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn user_stream_rejects_bad_tokens_on_a_real_socket() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let srv = spawn(&st).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/api/v1/stream", srv.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // and the WS of an unknown agent never authenticates
    let (mut a, r) = FakeAgent::auth(srv.addr, "ghost", "dctl_a_x").await;
    assert_eq!(r.status, AuthStatus::Rejected);
    assert_eq!(a.closed().await, Some(1008));
    let _ = a.ws.send(WsMsg::text("late")).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn per_agent_rate_limit() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.max_messages_per_second = 1;
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    let srv = spawn(&st).await;
    let (mut a, _) = FakeAgent::auth(srv.addr, "edge-1", &tok).await;
    // Burst of 2, then refused with rate_limited (the session stays).
    for i in 0..5 {
        a.send(&Envelope::new(
            format!("hb-{i}"),
            Message::Heartbeat(HeartbeatPayload::default()),
        ))
        .await;
    }
    match a.recv().await.map(|e| e.message) {
        Some(Message::Error(e)) => assert_eq!(e.error.code, ErrorCode::RateLimited),
        other => panic!("{other:?}"),
    }
    assert_eq!(st.agents.live_count(), 1);
    srv.shutdown().await;
}
