//! Enrolment tokens: the admin API (create, list, revoke), agents enrolling themselves over a
//! real `/ws/enrol` socket (credentials, labels, the same machine taking its host back, every
//! refusal writing nothing, `max_uses` under concurrency, the address limiter), and hosts that
//! wait for approval (no command or stream reaches them until approved; reject removes them).
//! On SQLite and PostgreSQL.

mod common;

use axum::http::StatusCode;
use common::*;
use futures_util::{SinkExt, StreamExt};
use protocol::{
    AuthStatus, CommandResponsePayload, EnrolPayload, EnrolResponsePayload, EnrolStatus, Envelope,
    ErrorCode, Message, Secret,
};
use serde_json::{json, Value};
use server::store::{now_ms, NewEnrolmentToken, Role};
use server::AppState;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMsg;

/// A machine id hash (what an agent sends): 64 hex digits.
fn machine(n: u32) -> String {
    format!("{n:064x}")
}

fn enrol_msg(token: &str, name: &str, hostname: bool, machine_id: &str) -> Envelope {
    Envelope::new(
        "enrol-1",
        Message::Enrol(EnrolPayload {
            enrol_token: Secret::new(token),
            name: name.into(),
            name_is_hostname: hostname,
            machine_id: machine_id.into(),
            version: "test-agent/1".into(),
            protocol_version: Some(2),
        }),
    )
}

/// Sends `env` on a new `/ws/enrol` socket and returns the answer.
async fn enrol_with(addr: SocketAddr, env: &Envelope) -> EnrolResponsePayload {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/enrol"))
        .await
        .expect("connect /ws/enrol");
    ws.send(WsMsg::text(env.encode())).await.expect("send");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s")
            .expect("an answer before close")
            .expect("a frame");
        if let WsMsg::Text(t) = m {
            let env = Envelope::decode(t.as_bytes()).expect("a valid envelope");
            match env.message {
                Message::EnrolResponse(r) => return r,
                other => panic!("expected enrol_response, got {other:?}"),
            }
        }
    }
}

async fn enrol_as(
    addr: SocketAddr,
    token: &str,
    name: &str,
    machine_id: &str,
) -> EnrolResponsePayload {
    enrol_with(addr, &enrol_msg(token, name, false, machine_id)).await
}

fn refused(r: &EnrolResponsePayload, code: ErrorCode, words: &str) {
    assert_eq!(r.status, EnrolStatus::Rejected, "{r:?}");
    assert!(r.agent_id.is_none() && r.auth_token.is_none() && r.host_id.is_none());
    let e = r.error.as_ref().expect("a reason");
    assert_eq!(e.code, code, "{e:?}");
    assert!(e.message.contains(words), "{e:?}");
}

async fn create_token(st: &AppState, admin: &str, body: Value) -> Value {
    let (s, v) = call(
        st,
        "POST",
        "/api/v1/enrolment-tokens",
        Some(admin),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn token_row(st: &AppState, admin: &str, id: &str) -> Value {
    let (s, v) = call(
        st,
        "GET",
        &format!("/api/v1/enrolment-tokens/{id}"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn hosts(st: &AppState, admin: &str) -> Vec<Value> {
    let (s, v) = call(st, "GET", "/api/v1/hosts", Some(admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["hosts"].as_array().cloned().unwrap_or_default()
}

async fn host(st: &AppState, admin: &str, id: &str) -> (StatusCode, Value) {
    call(st, "GET", &format!("/api/v1/hosts/{id}"), Some(admin), None).await
}

async fn audit_actions(st: &AppState, admin: &str) -> Vec<Value> {
    let (s, v) = call(st, "GET", "/api/v1/audit?limit=1000", Some(admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["entries"].as_array().cloned().unwrap_or_default()
}

fn count(entries: &[Value], action: &str, outcome: &str) -> usize {
    entries
        .iter()
        .filter(|e| e["action"] == action && e["outcome"] == outcome)
        .count()
}

async fn api_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let operator = token(&st, "ops", Role::Operator).await;
    let body = json!({"name": "berlin", "labels": {"site": "berlin", "example.com/role": "edge"},
        "expires_in": "7d", "max_uses": 100, "require_approval": false});
    let (s, v) = call(
        &st,
        "POST",
        "/api/v1/enrolment-tokens",
        Some(&operator),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let created = create_token(&st, &admin, body).await;
    let secret = created["token"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("dctl_e_") && secret.len() == 50,
        "{secret}"
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["labels"]["site"], "berlin");
    assert_eq!(
        (created["max_uses"].as_i64(), created["uses"].as_i64()),
        (Some(100), Some(0))
    );
    assert_eq!(created["state"], "active");
    assert!(created["expires_at"].is_string());
    // Shown once: lists and reads never carry it.
    let (s, list) = call(&st, "GET", "/api/v1/enrolment-tokens", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    let listed = list["enrolment_tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].get("token").is_none());
    assert!(!list.to_string().contains(&secret));
    assert!(!token_row(&st, &admin, &id)
        .await
        .to_string()
        .contains(&secret));
    let (s, _) = call(
        &st,
        "GET",
        "/api/v1/enrolment-tokens",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Every input is bounded and checked.
    for (bad, words) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(256)}), "name"),
        (json!({"name": "n", "labels": {"bad key": "v"}}), "label"),
        (
            json!({"name": "n", "labels": {"k": "v".repeat(64)}}),
            "label",
        ),
        (json!({"name": "n", "expires_in": 0}), "expires_in"),
        (json!({"name": "n", "expires_in": "7y"}), "unit"),
        (json!({"name": "n", "max_uses": 0}), "max_uses"),
        (json!({"name": "n", "role": "admin"}), "unknown field"),
    ] {
        let (s, v) = call(
            &st,
            "POST",
            "/api/v1/enrolment-tokens",
            Some(&admin),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap_or("").contains(words),
            "{bad}: {v}"
        );
    }
    // A repeated label key means two things to two readers: refused.
    let twice = serde_json::from_str::<server::api::enrolment::TokenRequest>(
        r#"{"name": "n", "labels": {"site": "a", "site": "b"}}"#,
    );
    assert!(twice.unwrap_err().to_string().contains("appears twice"));
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/enrolment-tokens",
        Some(&admin),
        Some(json!({"name": "n", "labels": many})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Revoking: DELETE or POST .../revoke, as for user tokens.
    let (s, v) = call(
        &st,
        "DELETE",
        &format!("/api/v1/enrolment-tokens/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        (s, v["revoked"].as_bool(), v["state"].as_str()),
        (StatusCode::OK, Some(true), Some("revoked")),
        "{v}"
    );
    let other = create_token(&st, &admin, json!({"name": "other", "expires_in": 3600})).await;
    let oid = other["id"].as_str().unwrap();
    let (s, v) = call(
        &st,
        "POST",
        &format!("/api/v1/enrolment-tokens/{oid}/revoke"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("revoked")),
        "{v}"
    );
    let (s, v) = call(
        &st,
        "DELETE",
        "/api/v1/enrolment-tokens/nope",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    let audit = audit_actions(&st, &admin).await;
    assert_eq!(count(&audit, "enrolment_token.create", "success"), 2);
    assert!(count(&audit, "enrolment_token.create", "error") >= 8);
    assert_eq!(count(&audit, "enrolment_token.revoke", "success"), 2);
    assert!(
        !serde_json::to_string(&audit).unwrap().contains(&secret),
        "no token in the audit"
    );
}

#[tokio::test]
async fn token_api_sqlite() {
    api_suite(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn token_api_postgres() {
    api_suite(&TestDb::postgres().await).await;
}

/// Five agents with one token; a restart is no enrolment; the same machine takes its host
/// back; every refusal writes nothing.
async fn enrol_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let srv = spawn(&st).await;
    let t = create_token(
        &st,
        &admin,
        json!({"name": "fleet", "labels": {"site": "berlin"}, "max_uses": 10}),
    )
    .await;
    let (tok, tid) = (
        t["token"].as_str().unwrap().to_string(),
        t["id"].as_str().unwrap().to_string(),
    );

    let mut creds = Vec::new();
    for i in 0..5 {
        let r = enrol_as(srv.addr, &tok, &format!("edge-{i}"), &machine(1)).await;
        assert_eq!(r.status, EnrolStatus::Enrolled, "{r:?}");
        assert!(!r.pending);
        assert_eq!(r.host_name.as_deref(), Some(format!("edge-{i}").as_str()));
        creds.push(r);
    }
    let all = hosts(&st, &admin).await;
    assert_eq!(all.len(), 5, "one machine, five names: five hosts");
    for h in &all {
        assert_eq!(h["labels"], json!({"site": "berlin"}), "{h}");
        assert_eq!(h["connection_mode"], "agent");
        assert_eq!(h["enrolment"]["token_id"], tid.as_str());
        assert_eq!(h["enrolment"]["machine"].as_str().map(str::len), Some(8));
    }
    assert_eq!(token_row(&st, &admin, &tid).await["uses"], 5);
    // The token's labels are the hosts' admin labels: a selector picks them.
    let (s, v) = call(
        &st,
        "GET",
        "/api/v1/hosts?selector=site%3Dberlin",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hosts"].as_array().map(Vec::len), Some(5), "{v}");
    let (_, v) = call(
        &st,
        "GET",
        "/api/v1/hosts?selector=site%3Dmunich",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(v["hosts"].as_array().map(Vec::len), Some(0), "{v}");
    // The credentials work on the agents' endpoint.
    let c0 = &creds[0];
    let (mut a0, resp) = FakeAgent::auth(
        srv.addr,
        c0.agent_id.as_ref().unwrap(),
        c0.auth_token.as_ref().unwrap().expose(),
    )
    .await;
    assert_eq!(resp.status, AuthStatus::Authenticated);
    let h0 = c0.host_id.clone().unwrap();
    wait_until(Duration::from_secs(5), "edge-0 online", || {
        let (st, admin, h0) = (st.clone(), admin.clone(), h0.clone());
        async move { host(&st, &admin, &h0).await.1["status"] == "online" }
    })
    .await;

    // The same machine and name: the same host, a new agent; the old credentials stop.
    let again = enrol_as(srv.addr, &tok, "edge-0", &machine(1)).await;
    assert_eq!(again.status, EnrolStatus::Enrolled, "{again:?}");
    assert_eq!(
        again.host_id, c0.host_id,
        "the host is taken back, not duplicated"
    );
    assert_ne!(again.agent_id, c0.agent_id);
    let _closed = a0.closed().await; // panics unless the old session closes
    let (_, r) = FakeAgent::auth(
        srv.addr,
        c0.agent_id.as_ref().unwrap(),
        c0.auth_token.as_ref().unwrap().expose(),
    )
    .await;
    assert_eq!(r.status, AuthStatus::Rejected, "the old agent is revoked");
    let (_, r) = FakeAgent::auth(
        srv.addr,
        again.agent_id.as_ref().unwrap(),
        again.auth_token.as_ref().unwrap().expose(),
    )
    .await;
    assert_eq!(r.status, AuthStatus::Authenticated);
    assert_eq!(hosts(&st, &admin).await.len(), 5);
    assert_eq!(token_row(&st, &admin, &tid).await["uses"], 6);

    // Another machine with a name in use: refused, nothing written.
    let r = enrol_as(srv.addr, &tok, "edge-1", &machine(2)).await;
    refused(&r, ErrorCode::Conflict, "another machine");
    // ... unless the name is only its hostname: it gets the machine's suffix.
    let r = enrol_with(srv.addr, &enrol_msg(&tok, "edge-1", true, &machine(2))).await;
    assert_eq!(r.status, EnrolStatus::Enrolled, "{r:?}");
    assert_eq!(
        r.host_name.as_deref(),
        Some(format!("edge-1-{}", &machine(2)[..8]).as_str())
    );
    assert_eq!(hosts(&st, &admin).await.len(), 6);
    assert_eq!(token_row(&st, &admin, &tid).await["uses"], 7);

    // Expired, used up, revoked, unknown: refused with a clear reason, no host, no use.
    let expired = st
        .store
        .insert_enrolment_token(&NewEnrolmentToken {
            name: "old".into(),
            token_hash: server::auth::hash_token("dctl_e_expired-token"),
            prefix: "dctl_e_e".into(),
            labels: Default::default(),
            require_approval: false,
            max_uses: None,
            expires_at: Some(now_ms() - 1000),
            created_by: "test".into(),
        })
        .await
        .unwrap();
    refused(
        &enrol_as(srv.addr, "dctl_e_expired-token", "x-1", &machine(3)).await,
        ErrorCode::Unauthorized,
        "expired",
    );
    let once = create_token(&st, &admin, json!({"name": "once", "max_uses": 1})).await;
    let once_tok = once["token"].as_str().unwrap();
    assert_eq!(
        enrol_as(srv.addr, once_tok, "once-1", &machine(4))
            .await
            .status,
        EnrolStatus::Enrolled
    );
    refused(
        &enrol_as(srv.addr, once_tok, "once-2", &machine(5)).await,
        ErrorCode::Unauthorized,
        "max_uses",
    );
    let (s, _) = call(
        &st,
        "DELETE",
        &format!("/api/v1/enrolment-tokens/{tid}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    refused(
        &enrol_as(srv.addr, &tok, "after-revoke", &machine(6)).await,
        ErrorCode::Unauthorized,
        "revoked",
    );
    // Revoking stops enrolments only: the hosts it enrolled keep their agents.
    let (_, r) = FakeAgent::auth(
        srv.addr,
        again.agent_id.as_ref().unwrap(),
        again.auth_token.as_ref().unwrap().expose(),
    )
    .await;
    assert_eq!(r.status, AuthStatus::Authenticated);
    refused(
        &enrol_as(srv.addr, "dctl_e_no-such-token", "x-2", &machine(7)).await,
        ErrorCode::Unauthorized,
        "invalid enrolment token",
    );
    let names: Vec<String> = hosts(&st, &admin)
        .await
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 7, "{names:?}");
    for n in ["x-1", "once-2", "after-revoke", "x-2"] {
        assert!(
            !names.contains(&n.to_string()),
            "{n} must not exist: {names:?}"
        );
    }
    assert_eq!(
        token_row(&st, &admin, &tid).await["uses"],
        7,
        "refusals do not count"
    );
    assert_eq!(
        token_row(&st, &admin, once["id"].as_str().unwrap()).await["uses"],
        1
    );
    assert_eq!(
        st.store
            .get_enrolment_token(&expired.id)
            .await
            .unwrap()
            .unwrap()
            .uses,
        0
    );

    // Bad input is refused before any lookup.
    refused(
        &enrol_as(srv.addr, &tok, &"n".repeat(300), &machine(8)).await,
        ErrorCode::InvalidParams,
        "name",
    );
    refused(
        &enrol_as(srv.addr, &"t".repeat(200), "ok", &machine(8)).await,
        ErrorCode::InvalidParams,
        "enrol_token",
    );
    refused(
        &enrol_as(srv.addr, &tok, "ok", "not-hex").await,
        ErrorCode::InvalidParams,
        "machine_id",
    );
    let auth_first = FakeAgent::auth_env("a", "b");
    refused(
        &enrol_with(srv.addr, &auth_first).await,
        ErrorCode::InvalidParams,
        "must be enrol",
    );

    let audit = audit_actions(&st, &admin).await;
    assert_eq!(count(&audit, "host.enrol", "success"), 8);
    assert!(
        count(&audit, "host.enrol", "denied") >= 1,
        "refusals are audited (sampled)"
    );
    let text = serde_json::to_string(&audit).unwrap();
    assert!(
        !text.contains(&tok) && !text.contains("dctl_a_"),
        "no token in the audit"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn enrolment_sqlite() {
    enrol_suite(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn enrolment_postgres() {
    enrol_suite(&TestDb::postgres().await).await;
}

/// Concurrent enrolments never pass `max_uses`: the use is counted in the enrolment's own
/// transaction.
async fn concurrency_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let srv = spawn(&st).await;
    let t = create_token(&st, &admin, json!({"name": "three", "max_uses": 3})).await;
    let tok = t["token"].as_str().unwrap().to_string();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let tok = tok.clone();
            let addr = srv.addr;
            tokio::spawn(async move {
                enrol_as(addr, &tok, &format!("race-{i}"), &machine(100 + i)).await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let r = task.await.unwrap();
        match r.status {
            EnrolStatus::Enrolled => ok += 1,
            EnrolStatus::Rejected => refused(&r, ErrorCode::Unauthorized, "max_uses"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(hosts(&st, &admin).await.len(), 3);
    assert_eq!(
        token_row(&st, &admin, t["id"].as_str().unwrap()).await["uses"],
        3
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn max_uses_under_concurrency_sqlite() {
    concurrency_suite(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn max_uses_under_concurrency_postgres() {
    concurrency_suite(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn failed_enrolments_are_limited_per_address_but_a_good_token_still_enrols() {
    let db = TestDb::sqlite();
    let mut config = test_config(&db);
    config.agent.auth_failures_per_minute = 3;
    let st = state_with(&db, config).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let srv = spawn(&st).await;
    for i in 0..3 {
        let r = enrol_as(srv.addr, "dctl_e_wrong", &format!("w{i}"), &machine(1)).await;
        refused(&r, ErrorCode::Unauthorized, "invalid enrolment token");
    }
    let r = enrol_as(srv.addr, "dctl_e_wrong", "w4", &machine(1)).await;
    refused(&r, ErrorCode::RateLimited, "too many failed enrolments");
    let t = create_token(&st, &admin, json!({"name": "good"})).await;
    let r = enrol_as(
        srv.addr,
        t["token"].as_str().unwrap(),
        "good-1",
        &machine(1),
    )
    .await;
    assert_eq!(r.status, EnrolStatus::Enrolled, "{r:?}");
    srv.shutdown().await;
}

/// Answers the next command with an empty list, as an agent would.
async fn answer_one(agent: &mut FakeAgent) -> String {
    let (id, cmd) = agent.next_command().await;
    agent
        .send(&Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Success { data: json!([]) }),
        ))
        .await;
    cmd.operation
}

async fn approval_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let srv = spawn(&st).await;
    let t = create_token(
        &st,
        &admin,
        json!({"name": "gated", "labels": {"tier": "edge"}, "require_approval": true}),
    )
    .await;
    let tok = t["token"].as_str().unwrap().to_string();
    let r = enrol_as(srv.addr, &tok, "gated-1", &machine(1)).await;
    assert_eq!(r.status, EnrolStatus::Enrolled, "{r:?}");
    assert!(r.pending);
    let host_id = r.host_id.clone().unwrap();
    let (mut agent, resp) = FakeAgent::auth(
        srv.addr,
        r.agent_id.as_ref().unwrap(),
        r.auth_token.as_ref().unwrap().expose(),
    )
    .await;
    assert_eq!(
        resp.status,
        AuthStatus::Authenticated,
        "a pending host's agent connects"
    );
    let (_, h) = host(&st, &admin, &host_id).await;
    assert_eq!(
        (h["status"].as_str(), h["pending"].as_bool()),
        (Some("pending"), Some(true)),
        "{h}"
    );
    assert_eq!(h["labels"], json!({"tier": "edge"}));
    assert!(h["pending_since"].is_string());
    let (_, v) = call(
        &st,
        "GET",
        "/api/v1/hosts?status=pending",
        Some(&admin),
        None,
    )
    .await;
    let pending: Vec<&str> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(pending, [host_id.as_str()], "{v}");

    // No command and no stream reaches it.
    let ops = format!("/api/v1/hosts/{host_id}/operations");
    let (s, v) = call(
        &st,
        "POST",
        &ops,
        Some(&admin),
        Some(json!({"operation": "container.list"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "host_pending", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("approve"),
        "{v}"
    );
    let (s, v) = call(
        &st,
        "POST",
        &ops,
        Some(&admin),
        Some(json!({"operation": "container.list", "queue": true})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("host_pending")),
        "{v}"
    );
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host_id}/docker/v1.41/containers/json"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("waiting for approval"),
        "{v}"
    );
    // Only admins approve; approving a host that is not pending is a conflict.
    let ops_token = token(&st, "ops", Role::Operator).await;
    let (s, _) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{host_id}/approve"),
        Some(&ops_token),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{host_id}/approve"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pending"], false);
    let (s, _) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{host_id}/approve"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{host_id}/reject"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "only a pending host is rejected");
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/hosts/nope/approve",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Approved: the command works.
    let (st2, admin2, ops2) = (st.clone(), admin.clone(), ops.clone());
    let api = tokio::spawn(async move {
        call(
            &st2,
            "POST",
            &ops2,
            Some(&admin2),
            Some(json!({"operation": "container.list"})),
        )
        .await
    });
    assert_eq!(answer_one(&mut agent).await, "container.list");
    let (s, v) = api.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_until(Duration::from_secs(5), "the host shows online", || {
        let (st, admin, h) = (st.clone(), admin.clone(), host_id.clone());
        async move { host(&st, &admin, &h).await.1["status"] == "online" }
    })
    .await;

    // Reject: another pending host is removed and its agent revoked.
    let r2 = enrol_as(srv.addr, &tok, "gated-2", &machine(2)).await;
    assert!(r2.pending);
    let (mut agent2, resp) = FakeAgent::auth(
        srv.addr,
        r2.agent_id.as_ref().unwrap(),
        r2.auth_token.as_ref().unwrap().expose(),
    )
    .await;
    assert_eq!(resp.status, AuthStatus::Authenticated);
    let h2 = r2.host_id.clone().unwrap();
    let (s, v) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{h2}/reject"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["agents_revoked"], json!([r2.agent_id.clone().unwrap()]));
    assert!(
        agent2.closed().await.is_some(),
        "the rejected agent's session closes"
    );
    assert_eq!(host(&st, &admin, &h2).await.0, StatusCode::NOT_FOUND);
    let (_, resp) = FakeAgent::auth(
        srv.addr,
        r2.agent_id.as_ref().unwrap(),
        r2.auth_token.as_ref().unwrap().expose(),
    )
    .await;
    assert_eq!(resp.status, AuthStatus::Rejected);

    // The same machine taking back an approved host with a gated token waits again.
    let back = enrol_as(srv.addr, &tok, "gated-1", &machine(1)).await;
    assert_eq!(back.host_id.as_deref(), Some(host_id.as_str()));
    assert!(
        back.pending,
        "a take-back with a gated token needs approval again"
    );
    assert_eq!(host(&st, &admin, &host_id).await.1["status"], "pending");

    let audit = audit_actions(&st, &admin).await;
    assert_eq!(count(&audit, "host.approve", "success"), 1);
    assert_eq!(count(&audit, "host.reject", "success"), 1);
    assert_eq!(count(&audit, "host.enrol", "success"), 3);
    srv.shutdown().await;
}

#[tokio::test]
async fn approval_sqlite() {
    approval_suite(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn approval_postgres() {
    approval_suite(&TestDb::postgres().await).await;
}

/// `POST /api/v1/enrolment-tokens` with a `Host` header (or none): the install lines.
async fn install_lines(st: &AppState, admin: &str, host: Option<&str>) -> (String, Vec<Value>) {
    use tower::ServiceExt;
    let mut b = axum::http::Request::builder()
        .method("POST")
        .uri("/api/v1/enrolment-tokens")
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json");
    if let Some(h) = host {
        b = b.header("host", h);
    }
    let req = b
        .body(axum::body::Body::from(json!({"name": "lines"}).to_string()))
        .expect("request");
    let resp = server::app(st.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    let lines = v["install_lines"]
        .as_array()
        .expect("install_lines")
        .clone();
    (v["token"].as_str().expect("token").to_string(), lines)
}

#[tokio::test]
async fn a_created_token_comes_with_one_install_line_per_cpu() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (secret, lines) = install_lines(&st, &admin, Some("ctl.example:8080")).await;
    let cpus: Vec<&str> = lines.iter().map(|l| l["cpu"].as_str().unwrap()).collect();
    assert_eq!(cpus, ["x86_64", "aarch64", "armv7"]);
    for l in &lines {
        let line = l["line"].as_str().unwrap();
        assert!(line.contains(&format!("'{secret}'")), "{line}");
        assert!(line.contains("--server 'ws://ctl.example:8080'"), "{line}");
        assert!(line.contains("--enrol-token-file enrol.token"), "{line}");
    }
    // A Host a shell could misread is not used: the listen address is.
    let listen = format!("--server 'ws://{}'", st.config.listen);
    for bad in ["x';rm -rf /;'", "a b", "h/p?q"] {
        let (_, lines) = install_lines(&st, &admin, Some(bad)).await;
        let line = lines[0]["line"].as_str().unwrap();
        assert!(line.contains(&listen), "{bad}: {line}");
    }
    let (_, lines) = install_lines(&st, &admin, None).await;
    assert!(lines[0]["line"].as_str().unwrap().contains(&listen));
    // Lists never carry them.
    let (_, list) = call(&st, "GET", "/api/v1/enrolment-tokens", Some(&admin), None).await;
    assert!(!list.to_string().contains("install_lines"), "{list}");

    // A configured public_url wins over the Host.
    let db2 = TestDb::sqlite();
    let mut c = test_config(&db2);
    c.public_url = Some("wss://ctl.example".into());
    let st2 = state_with(&db2, c).await;
    let admin2 = token(&st2, "admin", Role::Admin).await;
    let (_, lines) = install_lines(&st2, &admin2, Some("other.example")).await;
    assert!(lines[2]["line"]
        .as_str()
        .unwrap()
        .contains("--server 'wss://ctl.example'"));
}
