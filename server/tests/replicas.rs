//! Several replicas on one PostgreSQL database: presence (which replica holds each agent's
//! session), epochs, heartbeats, and the cluster-wide `connected`/`status` of the API.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use server::cluster::{ClaimError, Cluster, Identity};
use server::config::Seconds;
use server::store::Role;
use server::AppState;
use std::time::Duration;

/// Long enough that a loaded test machine never misses 3 in a row by accident.
const BEAT: Duration = Duration::from_millis(1000);

fn replica_config(db: &TestDb, id: &str, region: &str) -> server::config::Config {
    let mut c = test_config(db);
    c.server_id = Some(id.into());
    c.region = Some(region.into());
    c.advertise_url = Some(format!("http://{id}.invalid:8080"));
    c.replica_heartbeat_interval = Seconds(BEAT);
    c
}

fn identity(id: &str) -> Identity {
    Identity {
        id: id.into(),
        advertise_url: format!("http://{id}.invalid:8080"),
        region: None,
    }
}

async fn host_of(state: &AppState, token: &str, host_id: &str) -> Value {
    let (s, h) = call(
        state,
        "GET",
        &format!("/api/v1/hosts/{host_id}"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    h
}

/// An agent connected to replica A shows as connected, online and held by A (with A's
/// region) when asked through replica B; when A stops, B shows it disconnected at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_held_by_one_replica_is_online_through_another() {
    let db = TestDb::postgres().await;
    let a = state_with(&db, replica_config(&db, "a", "eu")).await;
    let b = state_with(&db, replica_config(&db, "b", "us")).await;
    let admin = token(&a, "admin", Role::Admin).await;
    let (host_id, agent_token) = enrol(&a, &admin, "h1", "h1-agent").await;
    let ra = spawn(&a).await;
    let rb = spawn(&b).await;

    let h = host_of(&b, &admin, &host_id).await;
    assert_eq!(h["status"], "offline", "{h}");
    assert_eq!(h["agent"]["connected"], false, "{h}");
    assert_eq!(h["agent"]["replica"], Value::Null, "{h}");

    let (_agent, resp) = FakeAgent::auth(ra.addr, "h1-agent", &agent_token).await;
    assert_eq!(resp.status, protocol::AuthStatus::Authenticated);
    wait_until(
        Duration::from_secs(5),
        "B sees the agent held by A",
        || async { host_of(&b, &admin, &host_id).await["status"] == "online" },
    )
    .await;
    let h = host_of(&b, &admin, &host_id).await;
    assert_eq!(h["agent"]["connected"], true, "{h}");
    assert_eq!(h["agent"]["status"], "online", "{h}");
    assert_eq!(
        h["agent"]["replica"],
        json!({"id": "a", "region": "eu"}),
        "{h}"
    );
    let h = host_of(&a, &admin, &host_id).await;
    assert_eq!(
        h["agent"]["replica"],
        json!({"id": "a", "region": "eu"}),
        "{h}"
    );
    let (s, list) = call(&b, "GET", "/api/v1/hosts?status=online", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let (s, agents) = call(&b, "GET", "/api/v1/agents", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{agents}");
    let listed = agents
        .as_array()
        .or_else(|| agents["agents"].as_array())
        .expect("a list of agents")
        .iter()
        .find(|x| x["agent_id"] == "h1-agent")
        .cloned()
        .expect("the agent is listed");
    assert_eq!(listed["connected"], true, "{listed}");
    assert_eq!(listed["replica"]["id"], "a", "{listed}");

    // PATCH region through B.
    let (s, h) = call(
        &b,
        "PATCH",
        &format!("/api/v1/hosts/{host_id}"),
        Some(&admin),
        Some(json!({"region": "eu-west"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    assert_eq!(h["region"], "eu-west");
    let (s, e) = call(
        &b,
        "PATCH",
        &format!("/api/v1/hosts/{host_id}"),
        Some(&admin),
        Some(json!({"region": "not a region"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(host_of(&a, &admin, &host_id).await["region"], "eu-west");

    // A stops cleanly: it counts as gone at once, so B no longer shows the agent connected.
    ra.shutdown().await;
    wait_until(Duration::from_secs(10), "B sees the agent gone", || async {
        let h = host_of(&b, &admin, &host_id).await;
        h["status"] == "offline" && h["agent"]["connected"] == false
    })
    .await;
    rb.shutdown().await;
}

/// A replica restarted with the same id gets a new epoch: the previous life's claims are
/// dropped, its sessions reset, and a claim in the old epoch is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_reclaims_nothing_stale() {
    let db = TestDb::postgres().await;
    let s = state(&db).await;
    let admin = token(&s, "admin", Role::Admin).await;
    enrol(&s, &admin, "h1", "h1-agent").await;
    let agent_ref = s.store.get_agent("h1-agent").await.unwrap().unwrap().id;
    s.store
        .agent_connected(&agent_ref, "sess-1", "r1", "1", &[], None)
        .await
        .unwrap();

    let first = Cluster::join(s.store.clone(), &s.keys, identity("r1"), BEAT)
        .await
        .unwrap();
    first.claim(&agent_ref, None, "sess-1").await.unwrap();
    assert_eq!(s.store.list_presence(None).await.unwrap().len(), 1);

    let second = Cluster::join(s.store.clone(), &s.keys, identity("r1"), BEAT)
        .await
        .unwrap();
    assert_eq!(second.epoch(), first.epoch() + 1);
    assert!(
        s.store.list_presence(None).await.unwrap().is_empty(),
        "the previous life's claim is gone"
    );
    let row = s.store.get_agent("h1-agent").await.unwrap().unwrap();
    assert_eq!(row.session_id, None, "the previous life's session is reset");
    assert_eq!(row.status, "disconnected");

    let refused = first.claim(&agent_ref, None, "sess-2").await;
    assert!(
        matches!(refused, Err(ClaimError::Replaced(_))),
        "{refused:?}"
    );
    assert!(s.store.list_presence(None).await.unwrap().is_empty());
    second.claim(&agent_ref, None, "sess-3").await.unwrap();
    let claims = s.store.list_presence(None).await.unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].session_id, "sess-3");
    assert_eq!(claims[0].replica.epoch, second.epoch());

    // A late release of an older session leaves the newer claim alone.
    first.release(&agent_ref, "sess-1").await;
    assert_eq!(s.store.list_presence(None).await.unwrap().len(), 1);
    second.release(&agent_ref, "sess-3").await;
    assert!(s.store.list_presence(None).await.unwrap().is_empty());
}

/// A replica that stops heartbeating (a kill -9) loses its claims after 3 intervals: the
/// others stop counting them, drop them and reset the sessions it recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_loses_its_claims() {
    let db = TestDb::postgres().await;
    let s = state(&db).await;
    let admin = token(&s, "admin", Role::Admin).await;
    let (host_id, _) = enrol(&s, &admin, "h1", "h1-agent").await;
    let agent_ref = s.store.get_agent("h1-agent").await.unwrap().unwrap().id;

    // `dead` joins and claims, and never heartbeats again.
    let dead = Cluster::join(s.store.clone(), &s.keys, identity("dead"), BEAT)
        .await
        .unwrap();
    s.store
        .agent_connected(&agent_ref, "sess-1", "dead", "1", &[], None)
        .await
        .unwrap();
    dead.claim(&agent_ref, Some(&host_id), "sess-1")
        .await
        .unwrap();

    let live = Cluster::join(s.store.clone(), &s.keys, identity("live"), BEAT)
        .await
        .unwrap();
    let seen = live.holder_of_host(&host_id, Some(&agent_ref));
    assert_eq!(
        seen.map(|h| h.replica.id),
        Some("dead".to_string()),
        "held while its heartbeat is recent"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let beat = tokio::spawn(live.clone().run(stop_rx));
    wait_until(
        Duration::from_secs(5),
        "the silent replica's claim is dropped",
        || {
            let store = s.store.clone();
            async move { store.list_presence(None).await.unwrap().is_empty() }
        },
    )
    .await;
    assert!(live.holder_of_agent(&agent_ref).is_none());
    assert!(live.holder_of_host(&host_id, None).is_none());
    let row = s.store.get_agent("h1-agent").await.unwrap().unwrap();
    assert_eq!(row.session_id, None);
    assert_eq!(row.status, "disconnected");
    let _ = stop_tx.send(true);
    beat.await.unwrap();
    let replicas = s.store.list_replicas().await.unwrap();
    let me = replicas.iter().find(|r| r.id == "live").unwrap();
    assert!(
        !me.alive_at(server::store::now_ms()),
        "a replica that stopped cleanly counts as gone at once"
    );
}

/// A replica listening on a real port, its config advertising that address.
async fn replica_on_port(db: &TestDb, id: &str) -> (AppState, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let mut c = replica_config(db, id, "eu");
    c.advertise_url = Some(format!("http://{addr}"));
    let state = state_with(db, c).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    (
        state,
        Running {
            addr,
            stop: Some(tx),
            task,
        },
    )
}

/// An operation sent to replica B for a host whose agent is held by replica A is forwarded
/// to A (with the cluster credential) and answered through B; A's internal endpoint refuses
/// a request without the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_through_another_replica_is_forwarded_to_the_holder() {
    use protocol::{CommandResponsePayload, Envelope, Message};
    let db = TestDb::postgres().await;
    let (a, ra) = replica_on_port(&db, "a").await;
    let (b, rb) = replica_on_port(&db, "b").await;
    let admin = token(&a, "admin", Role::Admin).await;
    let (host_id, agent_token) = enrol(&a, &admin, "h1", "h1-agent").await;
    let (mut agent, _) = FakeAgent::auth(ra.addr, "h1-agent", &agent_token).await;
    wait_until(
        Duration::from_secs(10),
        "B sees the agent held by A",
        || async { host_of(&b, &admin, &host_id).await["status"] == "online" },
    )
    .await;

    let (b2, admin2, host2) = (b.clone(), admin.clone(), host_id.clone());
    let api = tokio::spawn(async move {
        call(
            &b2,
            "POST",
            &format!("/api/v1/hosts/{host2}/operations"),
            Some(&admin2),
            Some(json!({"operation": "container.list", "params": {"all": true}})),
        )
        .await
    });
    let (id, cmd) = agent.next_command().await;
    assert_eq!(cmd.operation, "container.list");
    let data = json!([{"id": "abc123", "name": "web-1"}]);
    agent
        .send(&Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Success { data: data.clone() }),
        ))
        .await;
    let (s, v) = api.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["data"], data, "{v}");

    // Without the credential, the internal endpoint runs nothing.
    let body = json!({"operation": {"operation": "container.list", "params": {}},
        "command_id": "x", "idempotency_key": "x", "timeout_ms": 1000});
    let (s, v) = call(
        &a,
        "POST",
        &format!("/internal/v1/hosts/{host_id}/run"),
        Some(&admin),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = call(
        &a,
        "GET",
        &format!("/internal/v1/hosts/{host_id}/docker/v1.41/containers/json"),
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    rb.shutdown().await;
    ra.shutdown().await;
}
