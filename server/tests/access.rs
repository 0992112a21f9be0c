//! Access checks that must hold against a hostile or unlucky sequence of events: a host's
//! traffic reaches only an agent bound to that host (even after the agent was moved), and a
//! token rotated or revoked while an agent authenticates leaves no session behind. A fake
//! agent over a real WebSocket plays the agent; SQLite and PostgreSQL.

mod common;

use axum::http::StatusCode;
use common::*;
use protocol::{AuthStatus, CommandResponsePayload, Envelope, Message};
use serde_json::{json, Value};
use server::store::Role;
use std::time::Duration;

async fn create_host(st: &server::AppState, admin: &str, name: &str) -> String {
    let (s, h) = call(
        st,
        "POST",
        "/api/v1/hosts",
        Some(admin),
        Some(json!({ "name": name, "connection_mode": "agent" })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    h["id"].as_str().unwrap().to_string()
}

async fn get(st: &server::AppState, token: &str, path: &str) -> Value {
    let (s, v) = call(st, "GET", path, Some(token), None).await;
    assert_eq!(s, StatusCode::OK, "{path}: {v}");
    v
}

/// Revoke agent edge-1 of host A, enrol edge-1 again for host B and connect it: host A's
/// operations and Docker API requests must not reach it (they used to be answered by B's
/// daemon, or time out because B's answer was refused), host B's must.
async fn a_moved_agent_serves_only_its_new_host(db: TestDb) {
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_a, tok_a) = enrol(&st, &admin, "host-a", "edge-1").await;
    let host_b = create_host(&st, &admin, "host-b").await;
    let srv = spawn(&st).await;
    let (mut first, r) = FakeAgent::auth(srv.addr, "edge-1", &tok_a).await;
    assert_eq!(r.status, AuthStatus::Authenticated);

    let (s, v) = call(&st, "DELETE", "/api/v1/agents/edge-1", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(first.closed().await, Some(1000));
    let a = get(&st, &admin, &format!("/api/v1/hosts/{host_a}")).await;
    assert_eq!(a["agent_id"], Value::Null, "revoking unbinds the host: {a}");

    let (s, moved) = call(
        &st,
        "POST",
        "/api/v1/agents",
        Some(&admin),
        Some(json!({ "agent_id": "edge-1", "host_id": host_b })),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "re-enrolling elsewhere is allowed: {moved}"
    );
    let audit = get(&st, &admin, "/api/v1/audit?action=agent.move").await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["target"], "edge-1");
    assert_eq!(entries[0]["host_id"], host_b.as_str());
    assert_eq!(entries[0]["detail"]["from_host_id"], host_a.as_str());
    let (mut agent, r) =
        FakeAgent::auth(srv.addr, "edge-1", moved["token"].as_str().unwrap()).await;
    assert_eq!(r.status, AuthStatus::Authenticated);

    // Host A: refused at once as offline, never sent to the moved agent.
    let (s, v) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{host_a}/operations"),
        Some(&admin),
        Some(json!({"operation": "container.list", "timeout": 3})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_offline")),
        "{v}"
    );
    let info = tokio::time::timeout(
        Duration::from_secs(5),
        call(
            &st,
            "GET",
            &format!("/api/v1/hosts/{host_a}/docker/v1.41/info"),
            Some(&admin),
            None,
        ),
    )
    .await
    .expect("host A's Docker API answers at once");
    assert_eq!(info.0, StatusCode::CONFLICT, "{:?}", info.1);
    assert!(
        info.1["message"]
            .as_str()
            .unwrap()
            .contains("agent offline"),
        "{:?}",
        info.1
    );
    let a = get(&st, &admin, &format!("/api/v1/hosts/{host_a}")).await;
    assert_eq!(a["status"], "offline", "{a}");

    // Host B: served by the moved agent; the first message it gets is B's command.
    let st2 = st.clone();
    let admin2 = admin.clone();
    let hb = host_b.clone();
    let run = tokio::spawn(async move {
        call(
            &st2,
            "POST",
            &format!("/api/v1/hosts/{hb}/operations"),
            Some(&admin2),
            Some(json!({"operation": "container.list"})),
        )
        .await
    });
    let (id, cmd) = agent.next_command().await;
    assert_eq!(cmd.operation, "container.list");
    agent
        .send(&Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Success { data: json!([]) }),
        ))
        .await;
    let (s, v) = run.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_moved_agent_serves_only_its_new_host_on_sqlite() {
    a_moved_agent_serves_only_its_new_host(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_moved_agent_serves_only_its_new_host_on_postgres() {
    a_moved_agent_serves_only_its_new_host(TestDb::postgres().await).await;
}

/// A rotation without grace that races an agent's authentication with the old token: the
/// rotation may land before the token check, between the check and the session's
/// registration, or after it. Whichever: no session with the old token is left.
async fn a_rotation_racing_authentication_leaves_no_session(db: TestDb) {
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, mut tok) = enrol(&st, &admin, "race", "race-1").await;
    let srv = spawn(&st).await;
    let mut connected_then_closed = 0;
    for round in 0..12 {
        let addr = srv.addr;
        let old = tok.clone();
        let auth = tokio::spawn(async move { FakeAgent::auth(addr, "race-1", &old).await });
        // Spread the rotation over the authentication's life.
        tokio::time::sleep(Duration::from_micros(300 * round)).await;
        let (s, r) = call(
            &st,
            "POST",
            "/api/v1/agents/race-1/rotate-token",
            Some(&admin),
            Some(json!({"grace_period": 0})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        tok = r["token"].as_str().unwrap().to_string();
        let (mut agent, resp) = auth.await.unwrap();
        if resp.status == AuthStatus::Authenticated {
            connected_then_closed += 1;
            // Told to go within a second.
            let closed = tokio::time::timeout(Duration::from_secs(1), agent.closed()).await;
            assert!(
                closed.is_ok(),
                "round {round}: the old token's session stayed"
            );
        }
        // Gone from the registry once the socket is.
        drop(agent);
        wait_until(Duration::from_secs(2), "no live session", || async {
            st.agents.live_count() == 0
        })
        .await;
    }
    // The new token still works.
    let (_, r) = FakeAgent::auth(srv.addr, "race-1", &tok).await;
    assert_eq!(r.status, AuthStatus::Authenticated);
    eprintln!("{connected_then_closed} of 12 rounds authenticated before the rotation landed");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_rotation_racing_authentication_leaves_no_session_on_sqlite() {
    a_rotation_racing_authentication_leaves_no_session(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_rotation_racing_authentication_leaves_no_session_on_postgres() {
    a_rotation_racing_authentication_leaves_no_session(TestDb::postgres().await).await;
}

/// One HTTP/1.1 request on a real socket (so the server sees a peer address). Returns the
/// status and the JSON body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("answered")
        .unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// 35 bad tokens from one address: the first 30 are answered 401 and the rest 429, yet a
/// valid token from that address is served throughout.
#[tokio::test]
async fn bad_tokens_never_lock_out_a_valid_token_from_the_same_address() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let srv = spawn(&st).await;
    let mut codes = Vec::new();
    for i in 0..35 {
        let bad = bearer(&format!("dctl_u_wrong-{i}"));
        let (s, _) = http(
            srv.addr,
            "GET",
            "/api/v1/hosts",
            &[("Authorization", &bad)],
            None,
        )
        .await;
        codes.push(s);
        if i % 10 == 9 {
            let (s, v) = http(
                srv.addr,
                "GET",
                "/api/v1/hosts",
                &[("Authorization", &bearer(&viewer))],
                None,
            )
            .await;
            assert_eq!(s, 200, "a valid token after {} failures: {v}", i + 1);
        }
    }
    assert_eq!(&codes[..30], &[401; 30][..]);
    assert_eq!(&codes[30..], &[429; 5][..]);
    let (s, _) = http(
        srv.addr,
        "GET",
        "/api/v1/agents",
        &[("Authorization", &bearer(&admin))],
        None,
    )
    .await;
    assert_eq!(s, 200);
    srv.shutdown().await;
}

/// With `trusted_proxies`, the right-most untrusted `X-Forwarded-For` hop is the client for
/// the failure limits, `allowed_cidrs` and the audit; without, the header is ignored.
#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, fenced, _) = server::api::tokens_issue(
        &st.store,
        "fenced",
        Role::Viewer,
        None,
        vec!["192.0.2.0/24".parse().unwrap()],
    )
    .await
    .unwrap();
    let fenced = bearer(fenced.expose());
    let srv = spawn(&st).await;

    // The client forged the first hop; the proxy appended the real one.
    let xff = ("X-Forwarded-For", "192.0.2.200, 198.51.100.9");
    let (s, _) = http(
        srv.addr,
        "GET",
        "/api/v1/hosts",
        &[("Authorization", &fenced), xff],
        None,
    )
    .await;
    assert_eq!(s, 403, "the forged hop is not the client");
    let ok = ("X-Forwarded-For", "203.0.113.5, 192.0.2.7");
    let (s, v) = http(
        srv.addr,
        "GET",
        "/api/v1/hosts",
        &[("Authorization", &fenced), ok],
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let fwd = ("Forwarded", "for=192.0.2.8;proto=https");
    let (s, v) = http(
        srv.addr,
        "GET",
        "/api/v1/hosts",
        &[("Authorization", &fenced), fwd],
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // The audit names the forwarded client.
    let (s, v) = http(
        srv.addr,
        "POST",
        "/api/v1/tokens",
        &[
            ("Authorization", &bearer(&admin)),
            ("X-Forwarded-For", "192.0.2.77"),
        ],
        Some(json!({"name": "audited", "role": "viewer"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let audit = get(&st, &admin, "/api/v1/audit?action=token.create").await;
    assert_eq!(audit["entries"][0]["source_ip"], "192.0.2.77", "{audit}");

    // Failures are counted per forwarded client, not per proxy.
    for i in 0..31 {
        let bad = bearer(&format!("dctl_u_wrong-{i}"));
        http(
            srv.addr,
            "GET",
            "/api/v1/hosts",
            &[("Authorization", &bad), ("X-Forwarded-For", "198.51.100.1")],
            None,
        )
        .await;
    }
    let bad = bearer("dctl_u_wrong");
    let (s, _) = http(
        srv.addr,
        "GET",
        "/api/v1/hosts",
        &[("Authorization", &bad), ("X-Forwarded-For", "198.51.100.1")],
        None,
    )
    .await;
    assert_eq!(s, 429, "the failing client is limited");
    let (s, _) = http(
        srv.addr,
        "GET",
        "/api/v1/hosts",
        &[("Authorization", &bad), ("X-Forwarded-For", "198.51.100.2")],
        None,
    )
    .await;
    assert_eq!(s, 401, "another client behind the same proxy is not");
    let (s, _) = http(
        srv.addr,
        "GET",
        "/api/v1/hosts",
        &[
            ("Authorization", &bearer(&admin)),
            ("X-Forwarded-For", "198.51.100.1"),
        ],
        None,
    )
    .await;
    assert_eq!(s, 200, "a valid token of the failing client still works");
    srv.shutdown().await;

    // A server that does not trust this peer ignores its header.
    let db2 = TestDb::sqlite();
    let mut cfg = test_config(&db2);
    cfg.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    let st2 = state_with(&db2, cfg).await;
    let admin2 = token(&st2, "admin", Role::Admin).await;
    let (_, fenced2, _) = server::api::tokens_issue(
        &st2.store,
        "fenced",
        Role::Viewer,
        None,
        vec!["192.0.2.0/24".parse().unwrap()],
    )
    .await
    .unwrap();
    let srv2 = spawn(&st2).await;
    let (s, _) = http(
        srv2.addr,
        "GET",
        "/api/v1/hosts",
        &[
            ("Authorization", &bearer(fenced2.expose())),
            ("X-Forwarded-For", "192.0.2.7"),
        ],
        None,
    )
    .await;
    assert_eq!(s, 403, "X-Forwarded-For from an untrusted peer is ignored");
    let (s, _) = http(
        srv2.addr,
        "POST",
        "/api/v1/tokens",
        &[
            ("Authorization", &bearer(&admin2)),
            ("X-Forwarded-For", "192.0.2.77"),
        ],
        Some(json!({"name": "audited", "role": "viewer"})),
    )
    .await;
    assert_eq!(s, 201);
    let audit = get(&st2, &admin2, "/api/v1/audit?action=token.create").await;
    assert_eq!(audit["entries"][0]["source_ip"], "127.0.0.1", "{audit}");
    srv2.shutdown().await;
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

/// A flood of failed handshakes is counted in the metrics, written as a few sampled rows
/// (not one per failure), and agent_events are pruned by age. An oversized path agent_id is
/// refused before any work.
async fn failed_handshakes_are_counted_sampled_and_pruned(db: TestDb) {
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    enrol(&st, &admin, "sampled", "sampled-1").await;
    let srv = spawn(&st).await;

    let long = "a".repeat(64 * 1024);
    let (s, v) = http(srv.addr, "GET", &format!("/ws/agents/{long}"), &[], None).await;
    assert!(s == 414 || s == 400, "{s} {v}");
    let mid = "a".repeat(4000);
    let (s, v) = http(srv.addr, "GET", &format!("/ws/agents/{mid}"), &[], None).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = http(
        srv.addr,
        "GET",
        &format!("/ws/agents/{}", "b".repeat(129)),
        &[],
        None,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("128"),
        "{v}"
    );

    for i in 0..60 {
        let (_, r) = FakeAgent::auth(srv.addr, "sampled-1", &format!("dctl_a_wrong-{i}")).await;
        assert_eq!(r.status, AuthStatus::Rejected);
    }
    for i in 0..20 {
        let (_, r) = FakeAgent::auth(srv.addr, &format!("nobody-{i}"), "dctl_a_wrong").await;
        assert_eq!(r.status, AuthStatus::Rejected);
    }
    let (_, m) = call(&st, "GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap();
    assert_eq!(metric(m, "docker_ctl_agent_auth_failures_total"), 82);
    assert_eq!(
        metric(m, "docker_ctl_agent_auth_failures_unrecorded_total"),
        81
    );
    let audit = get(&st, &admin, "/api/v1/audit?action=agent.auth&limit=1000").await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1, "{audit}");
    let events = st.store.list_agent_events(None, 1000).await.unwrap();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "auth_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert!(
        events.iter().all(|e| e.event_data.to_string().len() < 1024),
        "no row carries the long id"
    );

    // Retention by age: nothing older than the cut survives, newer rows stay.
    let before = st.store.list_agent_events(None, 1000).await.unwrap().len();
    assert!(before > 0);
    assert_eq!(st.store.prune_agent_events(0).await.unwrap(), 0);
    let cut = server::store::now_ms() + 1;
    assert_eq!(
        st.store.prune_agent_events(cut).await.unwrap(),
        before as u64
    );
    assert!(st
        .store
        .list_agent_events(None, 1000)
        .await
        .unwrap()
        .is_empty());
    srv.shutdown().await;
}

#[tokio::test]
async fn failed_handshakes_are_counted_sampled_and_pruned_on_sqlite() {
    failed_handshakes_are_counted_sampled_and_pruned(TestDb::sqlite()).await;
}

#[tokio::test]
async fn failed_handshakes_are_counted_sampled_and_pruned_on_postgres() {
    failed_handshakes_are_counted_sampled_and_pruned(TestDb::postgres().await).await;
}

/// Stream messages a well-behaved agent never sends (here: credit and ends for streams that
/// were never opened) count against the message budget: a flood of them closes the session.
#[tokio::test]
async fn a_flood_of_stream_messages_spends_the_message_budget() {
    use futures_util::StreamExt;
    use protocol::{StreamCreditPayload, StreamEndPayload};
    use tokio_tungstenite::tungstenite::Message as WsMsg;
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.max_messages_per_second = 5;
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, tok) = enrol(&st, &admin, "flood", "flood-1").await;
    let srv = spawn(&st).await;
    let mut a = FakeAgent::connect(srv.addr, "flood-1").await;
    let mut auth = FakeAgent::auth_env("flood-1", &tok);
    if let Message::Auth(p) = &mut auth.message {
        p.protocol_version = Some(protocol::STREAMS_PROTOCOL_VERSION);
    }
    a.send(&auth).await;
    match a.recv().await.map(|e| e.message) {
        Some(Message::AuthResponse(r)) => {
            assert_eq!(r.status, AuthStatus::Authenticated);
            assert_eq!(r.protocol_version, Some(protocol::STREAMS_PROTOCOL_VERSION));
        }
        other => panic!("{other:?}"),
    }
    for i in 0..300u32 {
        let m = if i % 2 == 0 {
            Message::StreamCredit(StreamCreditPayload {
                stream_id: 1000 + i,
                bytes: 1 << 20,
            })
        } else {
            Message::StreamEnd(StreamEndPayload {
                stream_id: 1000 + i,
                error: None,
            })
        };
        a.send_raw(WsMsg::text(Envelope::new(format!("f-{i}"), m).encode()))
            .await;
    }
    // The server closes with a policy violation once the agent kept going past its budget.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = a.ws.next().await {
            if let Ok(WsMsg::Close(f)) = m {
                return f.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(
        closed,
        Some((1008, "rate limit exceeded".to_string())),
        "stream messages are not free"
    );
    srv.shutdown().await;
}

/// A wrong token for a revoked agent gets what any wrong token gets: nothing about the agent.
#[tokio::test]
async fn a_wrong_token_for_a_revoked_agent_learns_nothing() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, tok) = enrol(&st, &admin, "gone", "gone-1").await;
    let (s, _) = call(&st, "DELETE", "/api/v1/agents/gone-1", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    let srv = spawn(&st).await;
    let (_, wrong) = FakeAgent::auth(srv.addr, "gone-1", "dctl_a_wrong").await;
    let (_, unknown) = FakeAgent::auth(srv.addr, "never-enrolled", "dctl_a_wrong").await;
    let wrong = wrong.error.unwrap();
    assert_eq!(wrong.code, protocol::ErrorCode::Unauthorized);
    assert_eq!(wrong.message, "invalid agent id or token");
    assert_eq!(
        wrong.message,
        unknown.error.unwrap().message,
        "the same as an agent that never existed"
    );
    let (_, right) = FakeAgent::auth(srv.addr, "gone-1", &tok).await;
    assert_eq!(right.error.unwrap().message, "agent revoked");
    srv.shutdown().await;
}

/// After a rotation with a grace period, a session on the old token ends when the grace
/// period does; a session on the new token stays.
#[tokio::test]
async fn the_old_tokens_session_ends_with_the_grace_period() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (_, old) = enrol(&st, &admin, "grace", "grace-1").await;
    let srv = spawn(&st).await;
    let (mut on_old, r) = FakeAgent::auth(srv.addr, "grace-1", &old).await;
    assert_eq!(r.status, AuthStatus::Authenticated);
    let (s, r) = call(
        &st,
        "POST",
        "/api/v1/agents/grace-1/rotate-token",
        Some(&admin),
        Some(json!({"grace_period": 0.5})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    match on_old.recv().await.map(|e| e.message) {
        Some(Message::Disconnect(d)) => {
            assert!(d.reason.unwrap_or_default().contains("rotated"))
        }
        other => panic!("the old token's session ends with the grace period: {other:?}"),
    }
    drop(on_old);
    let new = r["token"].as_str().unwrap().to_string();
    let (_, r) = call(
        &st,
        "POST",
        "/api/v1/agents/grace-1/rotate-token",
        Some(&admin),
        Some(json!({"grace_period": 0.2})),
    )
    .await;
    let newest = r["token"].as_str().unwrap().to_string();
    let (mut on_newest, r) = FakeAgent::auth(srv.addr, "grace-1", &newest).await;
    assert_eq!(r.status, AuthStatus::Authenticated);
    drop(new);
    // Well past the grace period, the session on the current token is still there.
    wait_until(
        Duration::from_secs(3),
        "the grace period passed",
        || async {
            st.store
                .get_agent("grace-1")
                .await
                .unwrap()
                .unwrap()
                .prev_token_valid_until
                .is_some_and(|t| t + 300 < server::store::now_ms())
        },
    )
    .await;
    on_newest
        .send(&Envelope::new(
            "hb",
            Message::Heartbeat(protocol::HeartbeatPayload::default()),
        ))
        .await;
    assert_eq!(
        st.agents.live_count(),
        1,
        "the current token's session stays"
    );
    srv.shutdown().await;
}
