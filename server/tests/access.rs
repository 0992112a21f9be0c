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
            // Told to go within a second, and gone from the registry.
            let closed = tokio::time::timeout(Duration::from_secs(1), agent.closed()).await;
            assert!(
                closed.is_ok(),
                "round {round}: the old token's session stayed"
            );
        }
        wait_until(Duration::from_secs(1), "no live session", || async {
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
