//! Fleets: admin and agent labels on hosts, label selectors with paging, saved groups, and
//! bulk operations (queue_offline, max_failures, cancel, progress on the live feed, a server
//! restart mid-rollout with no host running its command twice). Each scenario runs on SQLite
//! and on PostgreSQL, with fake agents over real WebSockets.

mod common;

use axum::http::StatusCode;
use common::{call, enrol, spawn, state, token, wait_until, FakeAgent, TestDb};
use protocol::{
    AuthPayload, CommandResponsePayload, Envelope, ErrorBody, ErrorCode, Message, Secret,
};
use serde_json::{json, Value};
use server::store::Role;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(15);

/// An agent that reports `labels` when it authenticates.
async fn agent_with_labels(
    addr: SocketAddr,
    agent_id: &str,
    tok: &str,
    labels: &[(&str, &str)],
) -> FakeAgent {
    let mut a = FakeAgent::connect(addr, agent_id).await;
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    a.send(&Envelope::new(
        "auth-1",
        Message::Auth(AuthPayload {
            agent_id: agent_id.into(),
            auth_token: Secret::new(tok),
            version: "test-agent/1".into(),
            capabilities: vec!["docker".into()],
            protocol_version: Some(1),
            signing_version: None,
            labels,
            target: None,
            update: None,
        }),
    ))
    .await;
    match a.recv().await.map(|e| e.message) {
        Some(Message::AuthResponse(r)) => assert!(r.error.is_none(), "auth refused: {:?}", r.error),
        other => panic!("expected auth_response, got {other:?}"),
    }
    a
}

async fn answer(a: &mut FakeAgent, id: &str, result: Result<Value, ErrorBody>) {
    a.send(&Envelope::new(
        id,
        Message::CommandResponse(CommandResponsePayload::from_result(result)),
    ))
    .await;
}

async fn get(st: &server::AppState, tok: &str, uri: &str) -> Value {
    let (s, v) = call(st, "GET", uri, Some(tok), None).await;
    assert_eq!(s, StatusCode::OK, "GET {uri}: {v}");
    v
}

/// The names of the hosts a host list query returns (one page).
async fn names(st: &server::AppState, tok: &str, query: &str) -> Vec<String> {
    let v = get(st, tok, &format!("/api/v1/hosts?{query}")).await;
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect()
}

async fn set_labels(st: &server::AppState, tok: &str, host: &str, labels: Value) -> Value {
    let (s, v) = call(
        st,
        "PATCH",
        &format!("/api/v1/hosts/{host}"),
        Some(tok),
        Some(json!({ "labels": labels })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn bulk(st: &server::AppState, tok: &str, id: &str) -> Value {
    get(st, tok, &format!("/api/v1/bulk-operations/{id}?limit=1000")).await
}

async fn wait_bulk(st: &server::AppState, tok: &str, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    let ok = tokio::time::timeout(DEADLINE, async {
        loop {
            last = bulk(st, tok, id).await;
            if last["state"] == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "bulk operation {id} never reached {want}: {last}"
    );
    last
}

/// The row of `host_id` in a bulk operation's document.
fn row<'a>(b: &'a Value, host_id: &str) -> &'a Value {
    b["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host_id"] == host_id)
        .unwrap_or_else(|| panic!("no row for {host_id} in {b}"))
}

async fn start_bulk(st: &server::AppState, tok: &str, body: Value) -> (String, Value) {
    let (s, v) = call(st, "POST", "/api/v1/bulk-operations", Some(tok), Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    (v["id"].as_str().unwrap().to_string(), v)
}

/// Admin labels by PATCH (validated, merge-patched), agent labels from the handshake shown
/// apart, selectors over both, status, paging.
async fn labels_suite(db: &TestDb) {
    let st = state(db).await;
    let srv = spawn(&st).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let (a, a_tok) = enrol(&st, &admin, "edge-a", "agent-a").await;
    let (b, _) = enrol(&st, &admin, "edge-b", "agent-b").await;
    let (c, _) = enrol(&st, &admin, "edge-c", "agent-c").await;

    // Bad keys and values are refused with a code, and nothing changes.
    for bad in [
        json!({ "-bad": "x" }),
        json!({ "site": "not valid!" }),
        json!({ "Example.com/x": "y" }),
        json!({ "site": 5 }),
    ] {
        let (s, v) = call(
            &st,
            "PATCH",
            &format!("/api/v1/hosts/{a}"),
            Some(&admin),
            Some(json!({ "labels": bad })),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "invalid_params", "{v}");
    }
    // A viewer may not label.
    let (s, _) = call(
        &st,
        "PATCH",
        &format!("/api/v1/hosts/{a}"),
        Some(&viewer),
        Some(json!({ "labels": { "x": "y" } })),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    set_labels(&st, &admin, &a, json!({ "site": "munich", "tier": "edge" })).await;
    set_labels(
        &st,
        &admin,
        &b,
        json!({ "site": "berlin", "role": "gateway", "tier": "core" }),
    )
    .await;
    set_labels(&st, &admin, &c, json!({ "site": "berlin", "legacy": "" })).await;
    // A merge patch: null removes one key, others stay.
    let v = set_labels(&st, &admin, &c, json!({ "legacy": null, "tier": "edge" })).await;
    assert_eq!(v["labels"], json!({ "site": "berlin", "tier": "edge" }));
    set_labels(&st, &admin, &c, json!({ "legacy": "yes" })).await;

    // The agent of edge-a reports its own labels; they are shown apart, and the admin's
    // value wins on a shared key.
    let _agent = agent_with_labels(
        srv.addr,
        "agent-a",
        &a_tok,
        &[("site", "berlin"), ("arch", "arm64")],
    )
    .await;
    wait_until(DEADLINE, "agent labels are stored", || async {
        get(&st, &viewer, &format!("/api/v1/hosts/{a}")).await["agent_labels"]["arch"] == "arm64"
    })
    .await;
    let h = get(&st, &viewer, &format!("/api/v1/hosts/{a}")).await;
    assert_eq!(h["labels"], json!({ "site": "munich", "tier": "edge" }));
    assert_eq!(
        h["agent_labels"],
        json!({ "site": "berlin", "arch": "arm64" })
    );

    assert_eq!(
        names(&st, &viewer, "selector=arch%3Darm64").await,
        ["edge-a"]
    );
    assert_eq!(
        names(&st, &viewer, "selector=site%3Dberlin").await,
        ["edge-b", "edge-c"]
    );
    assert_eq!(
        names(&st, &viewer, "selector=site%3Dberlin,role!%3Dgateway").await,
        ["edge-c"]
    );
    assert_eq!(
        names(&st, &viewer, "selector=tier%20in%20(edge,core)").await,
        ["edge-a", "edge-b", "edge-c"]
    );
    assert_eq!(
        names(&st, &viewer, "selector=!legacy").await,
        ["edge-a", "edge-b"]
    );
    assert_eq!(names(&st, &viewer, "status=online").await, ["edge-a"]);
    assert_eq!(
        names(&st, &viewer, "status=offline").await,
        ["edge-b", "edge-c"]
    );
    assert!(names(&st, &viewer, "status=pending").await.is_empty());
    assert_eq!(
        names(&st, &viewer, "selector=tier%3Dedge&status=offline").await,
        ["edge-c"]
    );

    // Paging: limit 1 walks every host once, in name order, and ends with next null.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/hosts?limit=1".to_string();
    for _ in 0..10 {
        let v = get(&st, &viewer, &uri).await;
        assert_eq!(v["hosts"].as_array().unwrap().len(), 1, "{v}");
        seen.push(v["hosts"][0]["name"].as_str().unwrap().to_string());
        match v["next"].as_str() {
            Some(n) => uri = format!("/api/v1/hosts?limit=1&next={n}"),
            None => break,
        }
    }
    assert_eq!(seen, ["edge-a", "edge-b", "edge-c"]);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "status=up",
        "selector=site%3D%3D%3D",
        "selector=tier%20in%20(edge",
        "next=garbage",
        "unknown=1",
    ] {
        let (s, v) = call(
            &st,
            "GET",
            &format!("/api/v1/hosts?{bad}"),
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    srv.shutdown().await;
}

/// Groups: a stored selector, admin writes, viewer reads, by id or name, its member hosts.
async fn groups_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let (a, _) = enrol(&st, &admin, "g-a", "g-agent-a").await;
    let (b, _) = enrol(&st, &admin, "g-b", "g-agent-b").await;
    set_labels(&st, &admin, &a, json!({ "gsite": "berlin" })).await;
    set_labels(&st, &admin, &b, json!({ "gsite": "paris" })).await;

    let body = json!({ "name": "berlin", "selector": "gsite=berlin", "description": "Berlin" });
    let (s, v) = call(
        &st,
        "POST",
        "/api/v1/groups",
        Some(&viewer),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, g) = call(
        &st,
        "POST",
        "/api/v1/groups",
        Some(&admin),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let id = g["id"].as_str().unwrap().to_string();
    let (s, v) = call(&st, "POST", "/api/v1/groups", Some(&admin), Some(body)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = call(
        &st,
        "POST",
        "/api/v1/groups",
        Some(&admin),
        Some(json!({ "name": "bad", "selector": "gsite in (" })),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let v = get(&st, &viewer, "/api/v1/groups/berlin").await;
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["hosts_total"], 1, "{v}");
    assert_eq!(v["hosts"][0]["name"], "g-a");
    let v = get(&st, &viewer, "/api/v1/groups").await;
    assert_eq!(v["groups"].as_array().unwrap().len(), 1);

    // A new selector (and name) keeps the id.
    let (s, v) = call(
        &st,
        "PATCH",
        &format!("/api/v1/groups/{id}"),
        Some(&admin),
        Some(json!({ "name": "paris", "selector": "gsite=paris" })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = get(&st, &viewer, &format!("/api/v1/groups/{id}")).await;
    assert_eq!(v["name"], "paris");
    assert_eq!(v["hosts"][0]["name"], "g-b");

    let (s, _) = call(
        &st,
        "DELETE",
        &format!("/api/v1/groups/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &st,
        "GET",
        &format!("/api/v1/groups/{id}"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let audit = get(&st, &admin, "/api/v1/audit?limit=500").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for want in ["group.create", "group.update", "group.delete"] {
        assert!(actions.contains(&want), "{want} not audited: {actions:?}");
    }
}

/// A bulk operation over a selector: online hosts run now, an offline one is queued and
/// runs when its agent comes; each host gets its own command through the command path;
/// progress on the feed; rows paged.
async fn bulk_queue_suite(db: &TestDb) {
    let st = state(db).await;
    let srv = spawn(&st).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let mut hosts = Vec::new();
    for i in 0..3 {
        let (h, t) = enrol(&st, &admin, &format!("b-{i}"), &format!("b-agent-{i}")).await;
        set_labels(&st, &admin, &h, json!({ "fleet": "test" })).await;
        hosts.push((h, t));
    }
    let mut a0 = FakeAgent::auth(srv.addr, "b-agent-0", &hosts[0].1).await.0;
    let mut a1 = FakeAgent::auth(srv.addr, "b-agent-1", &hosts[1].1).await.0;
    let mut feed = st.feed.subscribe();

    let body = json!({ "selector": "fleet=test", "operation": "container.start",
        "params": { "id": "web" }, "queue_offline": true });
    let (s, v) = call(
        &st,
        "POST",
        "/api/v1/bulk-operations",
        Some(&viewer),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    for bad in [
        json!({ "selector": "fleet=test", "host_ids": [], "operation": "container.start" }),
        json!({ "selector": "fleet=test", "operation": "container.start", "params": { "nope": 1 } }),
        json!({ "selector": "fleet=test", "operation": "container.start", "max_parallel": 0 }),
        json!({ "selector": "fleet=nobody", "operation": "container.start", "params": { "id": "x" } }),
        json!({ "selector": "fleet in (", "operation": "container.start" }),
    ] {
        let (s, v) = call(
            &st,
            "POST",
            "/api/v1/bulk-operations",
            Some(&admin),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (id, v) = start_bulk(&st, &admin, body).await;
    assert_eq!(v["hosts"], 3);

    for a in [&mut a0, &mut a1] {
        let (cid, c) = a.next_command().await;
        assert_eq!(c.operation, "container.start");
        assert_eq!(c.params["id"], "web");
        answer(a, &cid, Ok(json!({ "started": true }))).await;
    }
    wait_until(DEADLINE, "two hosts succeeded, one queued", || async {
        let b = bulk(&st, &viewer, &id).await;
        b["counts"]["succeeded"] == 2 && b["counts"]["queued"] == 1
    })
    .await;
    let b = bulk(&st, &viewer, &id).await;
    assert_eq!(
        b["state"], "running",
        "a queued command keeps it running: {b}"
    );
    assert_eq!(row(&b, &hosts[2].0)["state"], "queued");

    // The offline host's agent comes: its command arrives, once.
    let mut a2 = FakeAgent::auth(srv.addr, "b-agent-2", &hosts[2].1).await.0;
    let (cid, _) = a2.next_command().await;
    answer(&mut a2, &cid, Ok(json!({ "started": true }))).await;
    let b = wait_bulk(&st, &viewer, &id, "succeeded").await;
    assert!(
        row(&b, &hosts[0].0)["result"].is_null(),
        "a viewer sees no result: {b}"
    );
    let b = bulk(&st, &admin, &id).await;
    assert_eq!(b["counts"]["succeeded"], 3, "{b}");
    for (h, _) in &hosts {
        let r = row(&b, h);
        assert_eq!(r["state"], "succeeded");
        assert_eq!(r["command_ids"].as_array().unwrap().len(), 1);
        assert_eq!(r["result"], json!({ "started": true }));
    }
    // One command per host through the command path, with the bulk operation as origin.
    let cmds = st
        .commands
        .by_origin(&format!("bulk:{id}"), 100)
        .await
        .unwrap();
    assert_eq!(cmds.len(), 3);
    let mut per_host: Vec<_> = cmds.iter().filter_map(|c| c.host_id.clone()).collect();
    per_host.sort();
    per_host.dedup();
    assert_eq!(per_host.len(), 3);

    // Progress on the feed for the host that was offline: running, queued, succeeded.
    let mut states = Vec::new();
    while let Ok(e) = feed.try_recv() {
        if e.body["type"] == "bulk_progress" && e.body["host_id"] == hosts[2].0.as_str() {
            assert_eq!(e.body["bulk_id"], id.as_str());
            states.push(e.body["state"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(states, ["running", "queued", "succeeded"]);

    // Rows page with next.
    let p1 = get(
        &st,
        &viewer,
        &format!("/api/v1/bulk-operations/{id}?limit=2"),
    )
    .await;
    assert_eq!(p1["targets"].as_array().unwrap().len(), 2);
    let next = p1["next"].as_str().expect("a next cursor");
    let p2 = get(
        &st,
        &viewer,
        &format!("/api/v1/bulk-operations/{id}?limit=2&next={next}"),
    )
    .await;
    assert_eq!(p2["targets"].as_array().unwrap().len(), 1);
    assert!(p2["next"].is_null());
    let list = get(&st, &viewer, "/api/v1/bulk-operations").await;
    assert_eq!(list["bulk_operations"][0]["id"], id.as_str());

    // Without queue_offline an offline host is skipped, and the operation fails.
    drop(a2);
    wait_until(DEADLINE, "b-2 is offline", || async {
        names(&st, &viewer, "selector=fleet%3Dtest&status=offline").await == ["b-2"]
    })
    .await;
    let (id2, _) = start_bulk(
        &st,
        &admin,
        json!({ "host_ids": [hosts[2].0], "operation": "container.start",
            "params": { "id": "web" }, "queue_offline": false }),
    )
    .await;
    let b = wait_bulk(&st, &viewer, &id2, "failed").await;
    assert_eq!(row(&b, &hosts[2].0)["state"], "skipped", "{b}");
    assert_eq!(row(&b, &hosts[2].0)["error"]["code"], "agent_offline");
    srv.shutdown().await;
}

/// max_failures: the first failure past the budget stops the rollout; hosts not started are
/// cancelled and never get a command. A cancel withdraws queued commands.
async fn bulk_stop_suite(db: &TestDb) {
    let st = state(db).await;
    let srv = spawn(&st).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let mut ids = Vec::new();
    let mut agents = Vec::new();
    for i in 0..3 {
        let (h, t) = enrol(&st, &admin, &format!("f-{i}"), &format!("f-agent-{i}")).await;
        agents.push(
            FakeAgent::auth(srv.addr, &format!("f-agent-{i}"), &t)
                .await
                .0,
        );
        ids.push(h);
    }
    let (id, _) = start_bulk(
        &st,
        &admin,
        json!({ "host_ids": ids, "operation": "container.restart", "params": { "id": "web" },
            "max_parallel": 1, "max_failures": 0 }),
    )
    .await;
    let (cid, _) = agents[0].next_command().await;
    answer(
        &mut agents[0],
        &cid,
        Err(ErrorBody::new(
            ErrorCode::NotFound,
            "no such container: web",
        )),
    )
    .await;
    let b = wait_bulk(&st, &admin, &id, "failed").await;
    assert_eq!(row(&b, &ids[0])["state"], "failed");
    assert_eq!(row(&b, &ids[0])["error"]["code"], "not_found");
    for h in &ids[1..] {
        assert_eq!(row(&b, h)["state"], "cancelled", "{b}");
        assert!(row(&b, h)["command_ids"].as_array().unwrap().is_empty());
    }
    assert!(
        b["reason"].as_str().unwrap().contains("max_failures"),
        "{b}"
    );
    let cmds = st
        .commands
        .by_origin(&format!("bulk:{id}"), 100)
        .await
        .unwrap();
    assert_eq!(cmds.len(), 1, "only the first host got a command");

    // Cancel: two offline hosts with queued commands; both withdrawn, never sent.
    let (x, xt) = enrol(&st, &admin, "c-x", "c-agent-x").await;
    let (y, _) = enrol(&st, &admin, "c-y", "c-agent-y").await;
    let (id, _) = start_bulk(
        &st,
        &admin,
        json!({ "host_ids": [x, y], "operation": "container.stop", "params": { "id": "web" } }),
    )
    .await;
    wait_until(DEADLINE, "both queued", || async {
        bulk(&st, &admin, &id).await["counts"]["queued"] == 2
    })
    .await;
    let uri = format!("/api/v1/bulk-operations/{id}/cancel");
    let (s, v) = call(&st, "POST", &uri, Some(&admin), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let b = wait_bulk(&st, &admin, &id, "cancelled").await;
    assert_eq!(b["counts"]["cancelled"], 2, "{b}");
    let (s, v) = call(&st, "POST", &uri, Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    for c in st
        .commands
        .by_origin(&format!("bulk:{id}"), 100)
        .await
        .unwrap()
    {
        assert_eq!(c.state.as_str(), "cancelled");
    }
    // The host's agent comes: the first command it gets is a later one, not the withdrawn
    // one.
    let mut ax = FakeAgent::auth(srv.addr, "c-agent-x", &xt).await.0;
    let uri = format!("/api/v1/hosts/{x}/operations");
    let body = json!({ "operation": "container.list", "params": {}, "queue": true });
    let ((s, v), c) = tokio::join!(call(&st, "POST", &uri, Some(&admin), Some(body)), async {
        let (cid, c) = ax.next_command().await;
        answer(&mut ax, &cid, Ok(json!([]))).await;
        c
    });
    assert!(s.is_success(), "{v}");
    assert_eq!(
        c.operation, "container.list",
        "the cancelled command was sent"
    );
    srv.shutdown().await;
}

/// A server restart mid-rollout: the rollout continues where it was; the host whose command
/// was sent before the restart gets it again with the same key (answered once), the one not
/// started runs once, and no host has two commands.
async fn bulk_restart_suite(db: &TestDb) {
    let st = state(db).await;
    let srv = spawn(&st).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (h0, t0) = enrol(&st, &admin, "r-0", "r-agent-0").await;
    let (h1, t1) = enrol(&st, &admin, "r-1", "r-agent-1").await;
    let (h2, t2) = enrol(&st, &admin, "r-2", "r-agent-2").await;
    let mut a0 = FakeAgent::auth(srv.addr, "r-agent-0", &t0).await.0;
    let (id, _) = start_bulk(
        &st,
        &admin,
        json!({ "host_ids": [h0, h1, h2], "steps": [
            { "operation": "container.start", "params": { "id": "web" } },
            { "operation": "container.restart", "params": { "id": "web" } } ],
            "max_parallel": 1 }),
    )
    .await;
    // r-0 runs step 1 and gets step 2, which is left unanswered; r-1 and r-2 are offline.
    let (c, _) = a0.next_command().await;
    answer(&mut a0, &c, Ok(json!({}))).await;
    let (key_before, c2) = a0.next_command().await;
    assert_eq!(c2.operation, "container.restart");
    wait_until(DEADLINE, "r-0's second command is recorded", || async {
        let b = bulk(&st, &admin, &id).await;
        row(&b, &h0)["command_ids"].as_array().unwrap().len() == 2
    })
    .await;
    srv.shutdown().await;
    drop(a0);
    drop(st);

    let st = state(db).await;
    let srv = spawn(&st).await;
    let b = bulk(&st, &admin, &id).await;
    assert_eq!(b["state"], "running", "{b}");
    // r-0 reconnects: step 2 comes again (the same command), and is answered once.
    let mut a0 = FakeAgent::auth(srv.addr, "r-agent-0", &t0).await.0;
    let (key_after, c2) = a0.next_command().await;
    assert_eq!(c2.operation, "container.restart");
    assert_eq!(key_before, key_after, "the same command goes out again");
    answer(&mut a0, &key_after, Ok(json!({ "restarted": true }))).await;
    for (name, t, h) in [("r-agent-1", &t1, &h1), ("r-agent-2", &t2, &h2)] {
        let mut a = FakeAgent::auth(srv.addr, name, t).await.0;
        for want in ["container.start", "container.restart"] {
            let (c, p) = a.next_command().await;
            assert_eq!(p.operation, want);
            answer(&mut a, &c, Ok(json!({}))).await;
        }
        // The agent stays until its answers are recorded: a socket dropped with unread data
        // is reset, and a reset can take the last answer with it (it would then be sent again
        // at the next connection, which this test does not make).
        wait_until(DEADLINE, "the host's steps are recorded", || async {
            row(&bulk(&st, &admin, &id).await, h)["state"] == "succeeded"
        })
        .await;
    }
    let b = wait_bulk(&st, &admin, &id, "succeeded").await;
    assert_eq!(row(&b, &h0)["result"], json!({ "restarted": true }));
    let cmds = st
        .commands
        .by_origin(&format!("bulk:{id}"), 100)
        .await
        .unwrap();
    assert_eq!(cmds.len(), 6, "two steps on three hosts, each once");
    for h in [&h0, &h1, &h2] {
        let n = cmds
            .iter()
            .filter(|c| c.host_id.as_ref() == Some(h))
            .count();
        assert_eq!(n, 2, "{h}");
        assert_eq!(row(&b, h)["command_ids"].as_array().unwrap().len(), 2);
    }
    srv.shutdown().await;
}

/// `q=`: a case-insensitive substring of the name, with LIKE's wildcards taken literally,
/// combined with the selector, the status and paging.
async fn name_search_suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let mut ids = BTreeMap::new();
    for (name, agent) in [
        ("Shop-Berlin-1", "s-b1"),
        ("shop-berlin-2", "s-b2"),
        ("shop_munich", "s-m"),
        ("depot-berlin", "d-b"),
        ("shopXmunich", "s-x"),
    ] {
        let (id, _) = enrol(&st, &admin, name, agent).await;
        ids.insert(name, id);
    }
    set_labels(
        &st,
        &admin,
        &ids["shop-berlin-2"],
        json!({ "tier": "gold" }),
    )
    .await;
    set_labels(&st, &admin, &ids["depot-berlin"], json!({ "tier": "gold" })).await;

    // Name order is the database's collation; compare sorted.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(names(&st, &viewer, "q=BERLIN").await),
        ["Shop-Berlin-1", "depot-berlin", "shop-berlin-2"]
    );
    // `_` and `%` are literal, not LIKE's wildcards.
    assert_eq!(names(&st, &viewer, "q=p_m").await, ["shop_munich"]);
    assert_eq!(names(&st, &viewer, "q=%25").await, Vec::<String>::new());
    assert_eq!(
        names(&st, &viewer, "q=&limit=1000").await,
        names(&st, &viewer, "limit=1000").await,
        "an empty q asks nothing"
    );
    // With a selector and a status.
    assert_eq!(
        names(&st, &viewer, "q=shop&selector=tier%3Dgold").await,
        ["shop-berlin-2"]
    );
    assert_eq!(names(&st, &viewer, "q=shop&status=online").await.len(), 0);
    assert_eq!(names(&st, &viewer, "q=shop&status=offline").await.len(), 4);
    // Paging goes through every match once.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10 {
        let cursor = next
            .as_deref()
            .map(|c| format!("&next={c}"))
            .unwrap_or_default();
        let v = get(
            &st,
            &viewer,
            &format!("/api/v1/hosts?q=SHOP&limit=2{cursor}"),
        )
        .await;
        for h in v["hosts"].as_array().unwrap() {
            seen.push(h["name"].as_str().unwrap().to_string());
        }
        next = v["next"].as_str().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(
        sorted(seen),
        [
            "Shop-Berlin-1",
            "shop-berlin-2",
            "shopXmunich",
            "shop_munich"
        ]
    );
    let (s, v) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts?q={}", "x".repeat(300)),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_params", "{v}");
}

async fn all(db: TestDb) {
    labels_suite(&db).await;
    groups_suite(&db).await;
    bulk_queue_suite(&db).await;
    bulk_stop_suite(&db).await;
    bulk_restart_suite(&db).await;
    // Last: its hosts share the database with the suites above.
    name_search_suite(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_sqlite() {
    all(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_postgres() {
    all(TestDb::postgres().await).await;
}
