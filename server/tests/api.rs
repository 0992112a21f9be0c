//! REST API tests through the router with `oneshot` (no port), on SQLite.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;
use server::store::{now_ms, Role};

#[tokio::test]
async fn probes_and_metrics() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let (s, v) = call(&st, "GET", "/healthz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, v) = call(&st, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["database"], "ok");
    let (s, v) = call(&st, "GET", "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(
        text.contains("# TYPE docker_ctl_agents_connected gauge"),
        "{text}"
    );
    assert!(text.contains("docker_ctl_ws_messages_total{direction=\"in\"} 0"));
    // readyz reports a dead database.
    st.store.close().await;
    let (s, v) = call(&st, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["database"], "unreachable");
    // The unauthenticated probe does not echo the database's own error text.
    assert_eq!(v["database_error"], "the database refused the check", "{v}");
}

#[tokio::test]
async fn the_sqlite_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::sqlite();
    let st = state(&db).await;
    token(&st, "admin", Role::Admin).await;
    let file = db.dir.path().join("docker-ctl.db");
    let wal = db.dir.path().join("docker-ctl.db-wal");
    assert!(wal.exists(), "WAL mode");
    for f in [&file, &wal] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    st.store.close().await;
    // An older file readable by others is narrowed on the next start.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let st = state(&db).await;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    st.store.close().await;
}

#[tokio::test]
async fn authentication_failures() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    // no token
    let (s, v) = call(&st, "GET", "/api/v1/hosts", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["code"], "unauthorized");
    // wrong token
    let (s, _) = call(&st, "GET", "/api/v1/hosts", Some("dctl_u_wrong"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // expired token
    let (s, t) = call(
        &st,
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(json!({"name": "tmp", "role": "viewer", "expires_in": 0})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let (s, v) = call(&st, "GET", "/api/v1/hosts", t["token"].as_str(), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["message"], "token expired");
    // revoked token
    let (_, t) = call(
        &st,
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(json!({"name": "bob", "role": "operator"})),
    )
    .await;
    let bob = t["token"].as_str().unwrap().to_string();
    let (s, _) = call(&st, "GET", "/api/v1/hosts", Some(&bob), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &st,
        "DELETE",
        &format!("/api/v1/tokens/{}", t["id"].as_str().unwrap()),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&st, "GET", "/api/v1/hosts", Some(&bob), None).await;
    assert_eq!(
        (s, v["error"]["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token revoked"))
    );
    // allowlisted token used from an unknown address
    let (_, t) = call(
        &st,
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(json!({"name": "net", "role": "viewer", "allowed_cidrs": ["10.0.0.0/8"]})),
    )
    .await;
    let (s, v) = call(&st, "GET", "/api/v1/hosts", t["token"].as_str(), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
}

#[tokio::test]
async fn roles_are_enforced() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let operator = token(&st, "operator", Role::Operator).await;
    let (host_id, _) = enrol(&st, &admin, "edge", "edge-1").await;
    let ops = format!("/api/v1/hosts/{host_id}/operations");
    // viewer: read ops only
    let (s, v) = call(
        &st,
        "POST",
        &ops,
        Some(&viewer),
        Some(json!({"operation": "container.remove", "params": {"id": "x"}})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (s, v) = call(
        &st,
        "POST",
        &ops,
        Some(&viewer),
        Some(json!({"operation": "container.list"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_offline")),
        "viewer may read: {v}"
    );
    // operator: mutating ops, but not hosts, agents or tokens
    let (s, _) = call(
        &st,
        "POST",
        &ops,
        Some(&operator),
        Some(json!({"operation": "container.remove", "params": {"id": "x"}})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    for (m, uri, body) in [
        (
            "POST",
            "/api/v1/hosts".to_string(),
            Some(json!({"name": "x", "connection_mode": "agent"})),
        ),
        (
            "POST",
            "/api/v1/agents".to_string(),
            Some(json!({"agent_id": "a", "host_id": host_id})),
        ),
        (
            "POST",
            "/api/v1/tokens".to_string(),
            Some(json!({"name": "x", "role": "admin"})),
        ),
        ("DELETE", format!("/api/v1/hosts/{host_id}"), None),
        ("GET", "/api/v1/audit".to_string(), None),
    ] {
        let (s, v) = call(&st, m, &uri, Some(&operator), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {uri}: {v}");
    }
    // the denial is audited
    let (_, a) = call(
        &st,
        "GET",
        "/api/v1/audit?outcome=denied",
        Some(&admin),
        None,
    )
    .await;
    let entries = a["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{a}");
    assert_eq!(entries[0]["actor"], "viewer");
    assert_eq!(entries[0]["action"], "operation.container.remove");
}

#[tokio::test]
async fn host_crud_and_mode_switch() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    // validation
    for bad in [
        json!({"name": "d", "connection_mode": "direct"}),
        json!({"name": "d", "docker_url": "ftp://x"}),
        json!({"name": "", "connection_mode": "agent"}),
        json!({"name": "d", "docker_url": "tcp://127.0.0.1:1", "tls_cert": "C", "tls_key": "K"}),
        json!({"name": "d", "connection_mode": "sideways"}),
        json!({"name": "d", "unknown_key": 1}),
    ] {
        let (s, v) = call(
            &st,
            "POST",
            "/api/v1/hosts",
            Some(&admin),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "invalid_params");
    }
    let (s, h) = call(
        &st,
        "POST",
        "/api/v1/hosts",
        Some(&admin),
        Some(json!({"name": "d", "docker_url": "tcp://127.0.0.1:1"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    assert_eq!(h["connection_mode"], "direct");
    let id = h["id"].as_str().unwrap().to_string();
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/hosts",
        Some(&admin),
        Some(json!({"name": "d", "connection_mode": "agent"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "names are unique");
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "offline", "nothing listens on port 1: {v}");
    let (s, v) = call(&st, "GET", "/api/v1/hosts", Some(&admin), None).await;
    assert_eq!(
        (s, v["hosts"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    // switch to agent mode and back (the seed's migration and rollback)
    let (s, v) = call(
        &st,
        "PATCH",
        &format!("/api/v1/hosts/{id}"),
        Some(&admin),
        Some(json!({"connection_mode": "agent"})),
    )
    .await;
    assert_eq!(
        (s, v["connection_mode"].as_str()),
        (StatusCode::OK, Some("agent")),
        "{v}"
    );
    assert_eq!(
        v["docker_url"], "tcp://127.0.0.1:1",
        "kept for the rollback"
    );
    let (s, v) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{id}/operations"),
        Some(&admin),
        Some(json!({"operation": "system.ping"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_offline"))
    );
    let (s, v) = call(
        &st,
        "PATCH",
        &format!("/api/v1/hosts/{id}"),
        Some(&admin),
        Some(json!({"connection_mode": "direct", "name": "d2"})),
    )
    .await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("d2")));
    let (s, v) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{id}/operations"),
        Some(&admin),
        Some(json!({"operation": "system.ping"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("docker_unreachable")),
        "{v}"
    );
    let (s, v) = call(
        &st,
        "PATCH",
        &format!("/api/v1/hosts/{id}"),
        Some(&admin),
        Some(json!({"docker_url": null})),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "a direct host needs a docker_url: {v}"
    );
    let (s, _) = call(
        &st,
        "DELETE",
        &format!("/api/v1/hosts/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn tls_keys_are_encrypted_and_never_returned() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let body = json!({"name": "tls", "docker_url": "https://docker.example:2376", "tls_ca": "CA-PEM",
        "tls_cert": "CERT-PEM", "tls_key": "VERY-SECRET-KEY-PEM"});
    let (s, h) = call(&st, "POST", "/api/v1/hosts", Some(&admin), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    assert!(!h.to_string().contains("VERY-SECRET"));
    assert_eq!(h["tls"]["client_key"], true);
    let id = h["id"].as_str().unwrap();
    let (_, one) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{id}"),
        Some(&admin),
        None,
    )
    .await;
    let (_, all) = call(&st, "GET", "/api/v1/hosts", Some(&admin), None).await;
    assert!(!one.to_string().contains("VERY-SECRET") && !all.to_string().contains("VERY-SECRET"));
    let row = st.store.get_host(id).await.unwrap().unwrap();
    let enc = row.tls_key_enc.unwrap();
    assert!(enc.starts_with("v1:") && !enc.contains("VERY-SECRET"));
    assert_eq!(
        st.keys.decrypt(&enc).unwrap().expose(),
        "VERY-SECRET-KEY-PEM"
    );
    // The audit log and Debug output do not carry it either.
    let (_, a) = call(&st, "GET", "/api/v1/audit", Some(&admin), None).await;
    assert!(!a.to_string().contains("VERY-SECRET"));
    assert!(!format!("{:?}", st.store.get_host(id).await.unwrap()).contains("v1:"));
}

#[tokio::test]
async fn agents_enrol_rotate_revoke() {
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.agent.max_agents_per_host = 2;
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, tok) = enrol(&st, &admin, "edge", "edge-1").await;
    assert!(
        tok.starts_with("dctl_a_") && tok.len() >= 7 + 43,
        "256-bit token: {tok}"
    );
    let (s, v) = call(
        &st,
        "POST",
        "/api/v1/agents",
        Some(&admin),
        Some(json!({"agent_id": "edge-1", "host_id": host_id})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/agents",
        Some(&admin),
        Some(json!({"agent_id": "x", "host_id": "nope"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/agents",
        Some(&admin),
        Some(json!({"agent_id": "bad id!", "host_id": host_id})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/agents",
        Some(&admin),
        Some(json!({"agent_id": "edge-2", "host_id": host_id})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = call(
        &st,
        "POST",
        "/api/v1/agents",
        Some(&admin),
        Some(json!({"agent_id": "edge-3", "host_id": host_id})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "max_agents_per_host: {v}");

    let (s, v) = call(&st, "GET", "/api/v1/agents", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[0]["status"], "disconnected");
    assert!(!v.to_string().contains(&tok), "no token in listings");
    assert!(!v.to_string().contains("token_hash"));

    let (s, v) = call(&st, "GET", "/api/v1/agents/edge-1", Some(&admin), None).await;
    assert_eq!(
        (s, v["agent_id"].as_str()),
        (StatusCode::OK, Some("edge-1"))
    );
    let (s, v) = call(
        &st,
        "POST",
        "/api/v1/agents/edge-1/rotate-token",
        Some(&admin),
        Some(json!({"grace_period": 60})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let new_tok = v["token"].as_str().unwrap();
    assert_ne!(new_tok, tok);
    assert!(v["previous_token_valid_until"].is_string());
    let (s, v) = call(
        &st,
        "PATCH",
        "/api/v1/agents/edge-1",
        Some(&admin),
        Some(json!({"heartbeat_interval": 5, "allowed_cidrs": ["127.0.0.0/8"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["heartbeat_interval"], 5);
    let (s, v) = call(
        &st,
        "GET",
        "/api/v1/agents/edge-1/events",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"enrolled") && kinds.contains(&"token_rotated"),
        "{kinds:?}"
    );
    let (s, v) = call(&st, "DELETE", "/api/v1/agents/edge-1", Some(&admin), None).await;
    assert_eq!((s, v["revoked"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, _) = call(&st, "DELETE", "/api/v1/agents/edge-1", Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/agents/edge-1/rotate-token",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(&st, "GET", "/api/v1/agents/ghost", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tokens_api() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (s, t) = call(
        &st,
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(json!({"name": "ci", "role": "viewer"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let ci = t["token"].as_str().unwrap();
    let (s, v) = call(&st, "GET", "/api/v1/tokens", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
    assert!(!v.to_string().contains(ci), "tokens are shown once");
    let (s, _) = call(&st, "GET", "/api/v1/tokens", Some(ci), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(json!({"name": "x", "role": "root"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&st, "DELETE", "/api/v1/tokens/nope", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn operations_validation() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host_id, _) = enrol(&st, &admin, "edge", "edge-1").await;
    let ops = format!("/api/v1/hosts/{host_id}/operations");
    let (s, v) = call(
        &st,
        "POST",
        &ops,
        Some(&admin),
        Some(json!({"operation": "container.inspect", "params": {"id": "../etc"}})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_params"))
    );
    let (s, v) = call(
        &st,
        "POST",
        &ops,
        Some(&admin),
        Some(json!({"operation": "container.list", "params": {"all": "yes"}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(
        &st,
        "POST",
        &ops,
        Some(&admin),
        Some(json!({"operation": "container.teleport"})),
    )
    .await;
    assert_eq!(v["error"]["code"], "unsupported", "{s}");
    let (s, _) = call(&st, "POST", &ops, Some(&admin), Some(json!({"params": {}}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/hosts/missing/operations",
        Some(&admin),
        Some(json!({"operation": "container.list"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // an offline agent: 409 agent_offline, recorded as a command and in the audit log
    let (s, v) = call(
        &st,
        "POST",
        &ops,
        Some(&admin),
        Some(json!({"operation": "container.list", "params": {"all": true}})),
    )
    .await;
    assert_eq!(
        (s, v["status"].as_str(), v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("error"), Some("agent_offline"))
    );
    let (_, a) = call(
        &st,
        "GET",
        &format!("/api/v1/audit?action=operation.container.list&host_id={host_id}"),
        Some(&admin),
        None,
    )
    .await;
    let e = &a["entries"][0];
    assert_eq!(
        (e["outcome"].as_str(), e["error_code"].as_str()),
        (Some("error"), Some("agent_offline")),
        "{a}"
    );
    let cmd = e["detail"]["command_id"].as_str().unwrap();
    let (s, c) = call(
        &st,
        "GET",
        &format!("/api/v1/commands/{cmd}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        (s, c["status"].as_str(), c["operation"].as_str()),
        (StatusCode::OK, Some("error"), Some("container.list"))
    );
    let (_, m) = call(&st, "GET", "/metrics", None, None).await;
    assert!(m.as_str().unwrap().contains(
        "docker_ctl_commands_total{operation=\"container.list\",outcome=\"agent_offline\"} 1"
    ));
}

#[tokio::test]
async fn audit_filters_and_host_events() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let start = now_ms();
    let (host_id, _) = enrol(&st, &admin, "edge", "edge-1").await;
    let (s, v) = call(
        &st,
        "GET",
        "/api/v1/audit?actor=admin&action=host.create",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let e = &v["entries"].as_array().unwrap()[0];
    assert_eq!(
        (
            e["actor"].as_str(),
            e["host_id"].as_str(),
            e["outcome"].as_str()
        ),
        (Some("admin"), Some(host_id.as_str()), Some("success"))
    );
    let (_, v) = call(
        &st,
        "GET",
        &format!("/api/v1/audit?since={start}&limit=1"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    let (_, v) = call(
        &st,
        "GET",
        "/api/v1/audit?until=2000-01-01T00:00:00Z",
        Some(&admin),
        None,
    )
    .await;
    assert!(v["entries"].as_array().unwrap().is_empty());
    let (s, _) = call(
        &st,
        "GET",
        "/api/v1/audit?since=yesterday",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&st, "GET", "/api/v1/audit", Some(&viewer), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host_id}/events"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["events"].as_array().unwrap().is_empty());
    st.store
        .add_docker_event(&server::store::NewDockerEvent {
            host_id: host_id.clone(),
            agent_id: Some("edge-1".into()),
            kind: "container".into(),
            action: "start".into(),
            actor_id: "abc".into(),
            attributes: json!({"name": "web-1"}),
            time_nano: 1,
        })
        .await
        .unwrap();
    let (_, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host_id}/events?limit=10"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(v["events"][0]["action"], "start");
    assert_eq!(v["events"][0]["attributes"]["name"], "web-1");
    let seq = v["events"][0]["seq"].as_i64().unwrap();
    let (_, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host_id}/events?after={seq}"),
        Some(&viewer),
        None,
    )
    .await;
    assert!(v["events"].as_array().unwrap().is_empty());
    let (s, _) = call(&st, "GET", "/api/v1/hosts/nope/events", Some(&viewer), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn stream_needs_a_token() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let (s, v) = call(&st, "GET", "/api/v1/stream", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
}
