//! The command queue for offline agents, idempotency keys, and a definite outcome for
//! commands in flight when the link drops. Each scenario runs on SQLite and on PostgreSQL.

mod common;

use axum::http::StatusCode;
use common::{call, enrol, spawn, state, token, FakeAgent, TestDb};
use protocol::{CommandResponsePayload, Envelope, ErrorBody, ErrorCode, Message};
use serde_json::{json, Value};
use server::store::Role;
use std::time::Duration;

async fn op(st: &server::AppState, tok: &str, host: &str, body: Value) -> (StatusCode, Value) {
    call(
        st,
        "POST",
        &format!("/api/v1/hosts/{host}/operations"),
        Some(tok),
        Some(body),
    )
    .await
}

async fn command(st: &server::AppState, tok: &str, id: &str) -> Value {
    let (s, v) = call(
        st,
        "GET",
        &format!("/api/v1/commands/{id}"),
        Some(tok),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn answer(a: &mut FakeAgent, id: &str, data: Value) {
    a.send(&Envelope::new(
        id,
        Message::CommandResponse(CommandResponsePayload::Success { data }),
    ))
    .await;
}

async fn wait_state(st: &server::AppState, tok: &str, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            last = command(st, tok, id).await;
            if last["state"] == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "command {id} never reached {want}: {last}");
    last
}

/// Queued while offline, delivered in order on connect, expired ones never sent, results
/// stored; listing with filters; roles; audit.
async fn queue_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let (host, agent_token) = enrol(&st, &admin, "q-host", "q-agent").await;

    // A viewer may not queue a write operation.
    let (s, v) = op(
        &st,
        &viewer,
        &host,
        json!({"operation": "container.start", "params": {"id": "web"}, "queue": true}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Bounds.
    let (s, v) = op(
        &st,
        &admin,
        &host,
        json!({"operation": "container.list", "queue": true, "expires_in": 0}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_params");

    // One that expires before the agent comes.
    let (s, v) = op(
        &st,
        &admin,
        &host,
        json!({"operation": "container.inspect", "params": {"id": "gone"},
        "queue": true, "expires_in": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let expired = v["command_id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for name in ["first", "second", "third"] {
        let (s, v) = op(
            &st,
            &admin,
            &host,
            json!({"operation": "container.start", "params": {"id": name}, "queue": true}),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        assert_eq!(v["state"], "queued");
        ids.push(v["command_id"].as_str().unwrap().to_string());
    }
    let c = command(&st, &viewer, &ids[0]).await;
    assert_eq!(c["state"], "queued", "{c}");
    assert_eq!(c["created_by"], "admin");
    assert_eq!(c["queued"], true);
    wait_state(&st, &admin, &expired, "expired").await;

    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host}/commands?state=queued"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["commands"].as_array().unwrap().len(), 3, "{v}");
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host}/commands?limit=1"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["commands"].as_array().unwrap().len(), 1);
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host}/commands?state=bogus"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // The agent connects: the three arrive in order, each with its idempotency key; the
    // expired one never.
    let srv = spawn(&st).await;
    let (mut agent, _) = FakeAgent::auth(srv.addr, "q-agent", &agent_token).await;
    for (i, want) in ids.iter().enumerate() {
        let (id, cmd) = agent.next_command().await;
        assert_eq!(&id, want, "command {i} out of order");
        assert_eq!(cmd.operation, "container.start");
        assert_eq!(cmd.idempotency_key.as_deref(), Some(want.as_str()));
        assert_eq!(command(&st, &admin, &id).await["state"], "sent");
        if i == 1 {
            agent
                .send(&Envelope::new(
                    id.as_str(),
                    Message::CommandResponse(CommandResponsePayload::Error {
                        error: ErrorBody::new(ErrorCode::NotFound, "No such container: second"),
                    }),
                ))
                .await;
        } else {
            answer(&mut agent, &id, json!({"started": i})).await;
        }
    }
    let c = wait_state(&st, &admin, &ids[0], "succeeded").await;
    assert_eq!(c["result"], json!({"started": 0}), "{c}");
    let c = wait_state(&st, &admin, &ids[1], "failed").await;
    assert_eq!(c["error"]["code"], "not_found", "{c}");
    wait_state(&st, &admin, &ids[2], "succeeded").await;
    // A viewer sees the state of a write command but not its result.
    let c = command(&st, &viewer, &ids[0]).await;
    assert_eq!(c["result"], Value::Null);

    // Queued while online: it simply runs, and is recorded.
    let st2 = st.clone();
    let admin2 = admin.clone();
    let host2 = host.clone();
    let req = tokio::spawn(async move {
        op(
            &st2,
            &admin2,
            &host2,
            json!({"operation": "container.list", "queue": true}),
        )
        .await
    });
    let (id, cmd) = agent.next_command().await;
    assert_eq!(cmd.operation, "container.list");
    answer(&mut agent, &id, json!([{"id": "abc"}])).await;
    let (s, v) = req.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["id"], "abc");
    wait_state(&st, &admin, &id, "succeeded").await;

    // Audit: the queueing and the delivery.
    let (_, a) = call(
        &st,
        "GET",
        "/api/v1/audit?action=operation.container.start&outcome=queued",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(a["entries"].as_array().unwrap().len(), 3, "{a}");
    let (_, a) = call(
        &st,
        "GET",
        "/api/v1/audit?action=command.container.start",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(a["entries"].as_array().unwrap().len(), 3, "{a}");
    srv.shutdown().await;
}

/// The same client key returns the same command and result and never runs twice.
async fn idempotency_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host, agent_token) = enrol(&st, &admin, "i-host", "i-agent").await;
    let srv = spawn(&st).await;

    // Offline and queued: the repeat is the same queued command.
    let body = json!({"operation": "container.create", "params": {"image": "busybox", "name": "once"},
        "queue": true, "idempotency_key": "create-once"});
    let (s, v1) = op(&st, &admin, &host, body.clone()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v1}");
    let (s, v2) = op(&st, &admin, &host, body.clone()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v2}");
    assert_eq!(v1["command_id"], v2["command_id"]);
    let id = v1["command_id"].as_str().unwrap().to_string();

    let (mut agent, _) = FakeAgent::auth(srv.addr, "i-agent", &agent_token).await;
    let (got, cmd) = agent.next_command().await;
    assert_eq!(got, id);
    assert_eq!(cmd.idempotency_key.as_deref(), Some("create-once"));
    answer(&mut agent, &id, json!({"id": "c0ffee"})).await;
    wait_state(&st, &admin, &id, "succeeded").await;
    // Now the repeat answers with the stored result.
    let (s, v3) = op(&st, &admin, &host, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v3}");
    assert_eq!(v3["data"]["id"], "c0ffee");
    // The same key for another operation is a conflict.
    let (s, v) = op(
        &st,
        &admin,
        &host,
        json!({"operation": "container.list", "idempotency_key": "create-once"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // Online, not queued: the first runs; the second (same key) does not reach the agent.
    let body = json!({"operation": "container.list", "idempotency_key": "list-1"});
    let (st2, a2, h2, b2) = (st.clone(), admin.clone(), host.clone(), body.clone());
    let first = tokio::spawn(async move { op(&st2, &a2, &h2, b2).await });
    let (cid, cmd) = agent.next_command().await;
    assert_eq!(cmd.idempotency_key.as_deref(), Some("list-1"));
    answer(&mut agent, &cid, json!([{"id": "one"}])).await;
    let (s, v) = first.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = op(&st, &admin, &host, body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"][0]["id"], "one");
    // Prove the agent got nothing more: the next command it sees is a new one.
    let (st2, a2, h2) = (st.clone(), admin.clone(), host.clone());
    let marker = tokio::spawn(async move {
        op(
            &st2,
            &a2,
            &h2,
            json!({"operation": "container.inspect", "params": {"id": "marker"}}),
        )
        .await
    });
    let (mid, cmd) = agent.next_command().await;
    assert_eq!(
        cmd.operation, "container.inspect",
        "the repeated key ran again"
    );
    answer(&mut agent, &mid, json!({})).await;
    marker.await.unwrap();
    srv.shutdown().await;
}

/// Link drops while a command is in flight: the request waits, the command is sent again
/// with the same key on reconnection and the real answer returns; without reconnection the
/// requester gets outcome_unknown (504), and the record says so.
async fn outcome_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host, agent_token) = enrol(&st, &admin, "o-host", "o-agent").await;
    let srv = spawn(&st).await;
    let (mut agent, _) = FakeAgent::auth(srv.addr, "o-agent", &agent_token).await;

    let (st2, a2, h2) = (st.clone(), admin.clone(), host.clone());
    let req = tokio::spawn(async move {
        op(
            &st2,
            &a2,
            &h2,
            json!({"operation": "container.create", "params": {"image": "busybox"},
            "idempotency_key": "mk-1", "timeout": 20}),
        )
        .await
    });
    let (id1, c1) = agent.next_command().await;
    // The link drops before the answer.
    drop(agent);
    let (mut agent, _) = FakeAgent::auth(srv.addr, "o-agent", &agent_token).await;
    let (id2, c2) = agent.next_command().await;
    assert_eq!(id1, id2);
    assert_eq!(c1.idempotency_key, c2.idempotency_key);
    assert_eq!(c2.idempotency_key.as_deref(), Some("mk-1"));
    answer(&mut agent, &id2, json!({"id": "made-once"})).await;
    let (s, v) = req.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["id"], "made-once");
    wait_state(&st, &admin, &id1, "succeeded").await;

    // No reconnection within the timeout: outcome_unknown, never success, never a hang.
    let (st2, a2, h2) = (st.clone(), admin.clone(), host.clone());
    let req = tokio::spawn(async move {
        op(
            &st2,
            &a2,
            &h2,
            json!({"operation": "container.stop", "params": {"id": "x"}, "timeout": 2}),
        )
        .await
    });
    let (id, _) = agent.next_command().await;
    drop(agent);
    let (s, v) = tokio::time::timeout(Duration::from_secs(10), req)
        .await
        .expect("the request must end")
        .unwrap();
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["code"], "outcome_unknown", "{v}");
    let c = command(&st, &admin, &id).await;
    assert_eq!(
        (c["state"].as_str(), c["error_code"].as_str()),
        (Some("failed"), Some("outcome_unknown")),
        "{c}"
    );

    // The link stays up but the agent is silent: timeout (not outcome_unknown).
    let (mut agent, _) = FakeAgent::auth(srv.addr, "o-agent", &agent_token).await;
    let (st2, a2, h2) = (st.clone(), admin.clone(), host.clone());
    let req = tokio::spawn(async move {
        op(
            &st2,
            &a2,
            &h2,
            json!({"operation": "container.list", "timeout": 1}),
        )
        .await
    });
    let _ = agent.next_command().await;
    let (s, v) = req.await.unwrap();
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["code"], "timeout", "{v}");
    srv.shutdown().await;
}

/// Queued rows survive a restart; a row left `sent` is sent again with the same key.
async fn restart_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host, agent_token) = enrol(&st, &admin, "r-host", "r-agent").await;
    let mut ids = Vec::new();
    for n in ["a", "b"] {
        let (s, v) = op(
            &st,
            &admin,
            &host,
            json!({"operation": "container.restart", "params": {"id": n}, "queue": true}),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        ids.push(v["command_id"].as_str().unwrap().to_string());
    }
    // First server: the agent receives "a" and the server goes away before the answer.
    let srv = spawn(&st).await;
    let (mut agent, _) = FakeAgent::auth(srv.addr, "r-agent", &agent_token).await;
    let (got, first) = agent.next_command().await;
    assert_eq!(got, ids[0]);
    assert_eq!(command(&st, &admin, &ids[0]).await["state"], "sent");
    srv.shutdown().await;
    assert!(agent
        .recv()
        .await
        .is_none_or(|e| matches!(e.message, Message::Disconnect(_))));
    drop(agent);
    drop(st);

    // Second server on the same database.
    let st = state(db).await;
    assert_eq!(command(&st, &admin, &ids[0]).await["state"], "sent");
    assert_eq!(command(&st, &admin, &ids[1]).await["state"], "queued");
    let srv = spawn(&st).await;
    let (mut agent, _) = FakeAgent::auth(srv.addr, "r-agent", &agent_token).await;
    let (again, cmd) = agent.next_command().await;
    assert_eq!(again, ids[0], "the sent row goes out again first");
    assert_eq!(cmd.idempotency_key, first.idempotency_key);
    answer(&mut agent, &again, json!({"restarted": "a"})).await;
    let (next, _) = agent.next_command().await;
    assert_eq!(next, ids[1]);
    answer(&mut agent, &next, json!({"restarted": "b"})).await;
    let c = wait_state(&st, &admin, &ids[0], "succeeded").await;
    assert_eq!(c["attempts"], 2, "{c}");
    wait_state(&st, &admin, &ids[1], "succeeded").await;
    srv.shutdown().await;
}

#[tokio::test]
async fn queue_on_sqlite() {
    queue_suite(&TestDb::sqlite()).await;
}
#[tokio::test]
async fn queue_on_postgres() {
    queue_suite(&TestDb::postgres().await).await;
}
#[tokio::test]
async fn idempotency_on_sqlite() {
    idempotency_suite(&TestDb::sqlite()).await;
}
#[tokio::test]
async fn idempotency_on_postgres() {
    idempotency_suite(&TestDb::postgres().await).await;
}
#[tokio::test]
async fn outcome_on_sqlite() {
    outcome_suite(&TestDb::sqlite()).await;
}
#[tokio::test]
async fn outcome_on_postgres() {
    outcome_suite(&TestDb::postgres().await).await;
}
#[tokio::test]
async fn restart_on_sqlite() {
    restart_suite(&TestDb::sqlite()).await;
}
#[tokio::test]
async fn restart_on_postgres() {
    restart_suite(&TestDb::postgres().await).await;
}
