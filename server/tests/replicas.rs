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
        replica_ca: None,
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
    replica_with(db, id, |c, addr| {
        c.advertise_url = Some(format!("http://{addr}"))
    })
    .await
}

/// A replica on a real port, its config tuned by `tune` (given the port's address).
async fn replica_with(
    db: &TestDb,
    id: &str,
    tune: impl FnOnce(&mut server::config::Config, std::net::SocketAddr),
) -> (AppState, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let mut c = replica_config(db, id, "eu");
    tune(&mut c, addr);
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

/// Replicas on real ports, each seeing the others as live peers and hearing their wake-ups.
async fn cluster_of(db: &TestDb, ids: &[&str]) -> Vec<(AppState, Running)> {
    let mut rs = Vec::new();
    for id in ids {
        rs.push(replica_on_port(db, id).await);
    }
    let ready = |rs: &Vec<(AppState, Running)>| {
        rs.iter().all(|(s, _)| {
            s.cluster.notifier().is_listening() && s.cluster.peers().len() == ids.len() - 1
        })
    };
    wait_until(
        Duration::from_secs(10),
        "every replica sees the others and listens for their wake-ups",
        || {
            let r = ready(&rs);
            async move { r }
        },
    )
    .await;
    rs
}

async fn stop_all(rs: Vec<(AppState, Running)>) {
    for (_, r) in rs {
        r.shutdown().await;
    }
}

/// The close code of `feed`, when it closes within `within`.
async fn feed_closed_within(feed: &mut Ws, within: Duration) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as WsMsg;
    let end = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(end, feed.next()).await.ok()?;
        match next {
            Some(Ok(WsMsg::Close(f))) => return Some(f.map(|f| u16::from(f.code)).unwrap_or(0)),
            None | Some(Err(_)) => return Some(0),
            Some(Ok(_)) => continue,
        }
    }
}

/// The next feed message that `pick` selects within `within`; every message before it is
/// handed to `seen`.
async fn feed_until(
    feed: &mut Ws,
    within: Duration,
    pick: impl Fn(&Value) -> bool,
    mut seen: impl FnMut(&Value),
) -> Option<Value> {
    let end = tokio::time::Instant::now() + within;
    loop {
        let v = tokio::time::timeout_at(end, feed_next(feed)).await.ok()?;
        if pick(&v) {
            return Some(v);
        }
        seen(&v);
    }
}

fn docker_event(actor: &str) -> protocol::Envelope {
    protocol::Envelope::new(
        format!("ev-{actor}"),
        protocol::Message::Event(protocol::EventPayload {
            kind: "container".into(),
            action: "start".into(),
            actor_id: actor.into(),
            attributes: Default::default(),
            time_nano: 1,
        }),
    )
}

async fn answer_success(agent: &mut FakeAgent, id: String) {
    use protocol::{CommandResponsePayload, Envelope, Message};
    agent
        .send(&Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Success { data: json!({}) }),
        ))
        .await;
}

/// Revoking an agent on replica C ends its WebSocket session on replica A, which holds it,
/// within a second; the agent is refused when it connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agent_on_one_replica_ends_its_session_on_the_holder() {
    let db = TestDb::postgres().await;
    let rs = cluster_of(&db, &["a", "c"]).await;
    let ((a, ra), (c, _)) = (&rs[0], &rs[1]);
    let admin = token(a, "admin", Role::Admin).await;
    let (_, agent_token) = enrol(a, &admin, "h1", "h1-agent").await;
    let (mut agent, resp) = FakeAgent::auth(ra.addr, "h1-agent", &agent_token).await;
    assert_eq!(resp.status, protocol::AuthStatus::Authenticated);

    let (s, v) = call(c, "DELETE", "/api/v1/agents/h1-agent", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["disconnected"], false, "C does not hold the session: {v}");
    let closed = tokio::time::timeout(Duration::from_secs(1), agent.closed()).await;
    assert!(
        closed.is_ok(),
        "A did not close the revoked agent's session within 1 s"
    );

    let (_again, resp) = FakeAgent::auth(ra.addr, "h1-agent", &agent_token).await;
    assert_eq!(resp.status, protocol::AuthStatus::Rejected);
    stop_all(rs).await;
}

/// An API token revoked on replica B is refused by replica A at once (not when A's cached
/// copy expires, 2 s later), and the live feed it opened on A closes within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_replica_is_refused_at_once_by_another() {
    let db = TestDb::postgres().await;
    let rs = cluster_of(&db, &["a", "b"]).await;
    let ((a, ra), (b, _)) = (&rs[0], &rs[1]);
    let admin = token(a, "admin", Role::Admin).await;
    let (viewer, viewer_id) = token_and_id(a, "watcher", Role::Viewer).await;
    let mut feed = open_feed(ra.addr, &viewer, "").await;
    // A has the token in its cache now.
    let (s, v) = call(a, "GET", "/api/v1/hosts", Some(&viewer), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (s, v) = call(
        b,
        "DELETE",
        &format!("/api/v1/tokens/{viewer_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let revoked_at = tokio::time::Instant::now();
    wait_until(
        Duration::from_secs(1),
        "A refuses the revoked token",
        || async {
            call(a, "GET", "/api/v1/hosts", Some(&viewer), None).await.0 == StatusCode::UNAUTHORIZED
        },
    )
    .await;
    assert!(revoked_at.elapsed() < server::store::CACHE_TTL);
    let code = feed_closed_within(&mut feed, Duration::from_secs(1)).await;
    assert_eq!(code, Some(1008), "the revoked token's feed on A ends");
    stop_all(rs).await;
}

/// A command queued on replica B for an offline host is delivered once, by replica A, when
/// the agent connects to A; a command queued on B while A holds the agent is delivered by A
/// and answered through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_queued_on_one_replica_are_delivered_once_by_the_holder() {
    let db = TestDb::postgres().await;
    let rs = cluster_of(&db, &["a", "b"]).await;
    let ((a, ra), (b, _)) = (&rs[0], &rs[1]);
    let admin = token(a, "admin", Role::Admin).await;
    let (host_id, agent_token) = enrol(a, &admin, "h1", "h1-agent").await;
    let ops = format!("/api/v1/hosts/{host_id}/operations");

    let queued = json!({"operation": "container.start", "params": {"id": "first"}, "queue": true});
    let (s, v) = call(b, "POST", &ops, Some(&admin), Some(queued)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "queued", "{v}");
    let first = v["command_id"].as_str().unwrap().to_string();

    let (mut agent, _) = FakeAgent::auth(ra.addr, "h1-agent", &agent_token).await;
    let (id, cmd) = tokio::time::timeout(Duration::from_secs(10), agent.next_command())
        .await
        .expect("A delivers the command queued on B");
    assert_eq!(
        (id.as_str(), cmd.operation.as_str()),
        (first.as_str(), "container.start")
    );
    answer_success(&mut agent, id).await;
    let uri = format!("/api/v1/commands/{first}");
    wait_until(
        Duration::from_secs(10),
        "the first command succeeded",
        || async { call(b, "GET", &uri, Some(&admin), None).await.1["state"] == "succeeded" },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "B sees the agent held by A",
        || async { host_of(b, &admin, &host_id).await["agent"]["replica"]["id"] == "a" },
    )
    .await;

    let (b2, admin2, ops2) = (b.clone(), admin.clone(), ops.clone());
    let api = tokio::spawn(async move {
        let body =
            json!({"operation": "container.stop", "params": {"id": "second"}, "queue": true});
        call(&b2, "POST", &ops2, Some(&admin2), Some(body)).await
    });
    // The next command the agent sees is the second one: the first was not sent again.
    let (id, cmd) = tokio::time::timeout(Duration::from_secs(10), agent.next_command())
        .await
        .expect("A delivers the command queued on B while it holds the agent");
    assert_eq!(cmd.operation, "container.stop");
    answer_success(&mut agent, id.clone()).await;
    let (s, v) = tokio::time::timeout(Duration::from_secs(5), api)
        .await
        .expect("B answers once A delivered it")
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "success", "{v}");
    let (_, second) = call(
        b,
        "GET",
        &format!("/api/v1/commands/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(second["state"], "succeeded", "{second}");
    assert_eq!(second["operation"], "container.stop", "{second}");
    let (_, c) = call(b, "GET", &uri, Some(&admin), None).await;
    assert_eq!(c["attempts"], 1, "sent once: {c}");
    stop_all(rs).await;
}

/// The live feed on replica B carries the events of an agent held by replica A; a feed on
/// B filtered to another host does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_of_one_replica_carries_the_events_of_another() {
    let db = TestDb::postgres().await;
    let rs = cluster_of(&db, &["a", "b"]).await;
    let ((a, ra), (_, rb)) = (&rs[0], &rs[1]);
    let admin = token(a, "admin", Role::Admin).await;
    let viewer = token(a, "viewer", Role::Viewer).await;
    let (h1, t1) = enrol(a, &admin, "h1", "h1-agent").await;
    let (h2, t2) = enrol(a, &admin, "h2", "h2-agent").await;
    let mut all = open_feed(rb.addr, &viewer, "").await;
    let mut only_h2 = open_feed(rb.addr, &viewer, &format!("?host_id={h2}")).await;
    let (mut ag1, _) = FakeAgent::auth(ra.addr, "h1-agent", &t1).await;

    // B follows A's feed from its next look at the live replicas: probe until it shows.
    let mut shown = None;
    for i in 0..50 {
        let actor = format!("probe-{i}");
        ag1.send(&docker_event(&actor)).await;
        let is_probe = |v: &Value| v["type"] == "docker_event" && v["event"]["actor_id"] == actor;
        shown = feed_until(&mut all, Duration::from_millis(200), is_probe, |_| {}).await;
        if shown.is_some() {
            break;
        }
    }
    let ev = shown.expect("B's feed shows an event of the agent A holds");
    assert_eq!(ev["host_id"], h1.as_str(), "{ev}");
    assert_eq!(ev["agent_id"], "h1-agent", "{ev}");

    // Events travel from A in order: an h1 event leaking through the filter would come
    // before this h2 event.
    let (mut ag2, _) = FakeAgent::auth(ra.addr, "h2-agent", &t2).await;
    ag2.send(&docker_event("probe-h2")).await;
    let mut before = Vec::new();
    let is_h2 = |v: &Value| v["type"] == "docker_event" && v["event"]["actor_id"] == "probe-h2";
    let ev = feed_until(&mut only_h2, Duration::from_secs(10), is_h2, |v| {
        before.push(v.clone())
    })
    .await
    .expect("the filtered feed on B shows h2's event");
    assert_eq!(ev["host_id"], h2.as_str());
    assert!(
        before.iter().all(|v| v["host_id"] == h2.as_str()),
        "only h2's events: {before:?}"
    );
    // B follows A's feed: A's shutdown ends that stream instead of waiting for it (or for
    // B to notice that A stopped heartbeating).
    drop((ag1, ag2));
    wait_until(
        Duration::from_secs(10),
        "A's agent sessions closed",
        || async { a.agents.live_count() == 0 },
    )
    .await;
    let mut rs = rs;
    let (_, ra) = rs.remove(0);
    let began = tokio::time::Instant::now();
    ra.shutdown().await;
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "A's shutdown waited {:?} for the feed B follows",
        began.elapsed()
    );
    stop_all(rs).await;
}

/// When PostgreSQL drops a replica's listening connection, the replica listens again, and
/// a revocation on another replica still ends the session it holds within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_listens_again_after_postgresql_drops_its_connection() {
    let db = TestDb::postgres().await;
    let rs = cluster_of(&db, &["a", "c"]).await;
    let ((a, ra), (c, _)) = (&rs[0], &rs[1]);
    let admin = token(a, "admin", Role::Admin).await;
    let (_, agent_token) = enrol(a, &admin, "h1", "h1-agent").await;
    let (mut agent, _) = FakeAgent::auth(ra.addr, "h1-agent", &agent_token).await;

    let before = a.cluster.notifier().listens();
    let dropped = drop_listening_connections(&db).await;
    assert!(
        dropped >= 2,
        "both replicas' listening connections were dropped"
    );
    wait_until(Duration::from_secs(10), "A listens again", || async {
        a.cluster.notifier().listens() > before && a.cluster.notifier().is_listening()
    })
    .await;

    let (s, v) = call(c, "DELETE", "/api/v1/agents/h1-agent", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let closed = tokio::time::timeout(Duration::from_secs(1), agent.closed()).await;
    assert!(
        closed.is_ok(),
        "A did not close the revoked agent's session within 1 s"
    );
    stop_all(rs).await;
}

/// Terminates the connections that listen for wake-ups in the test's database (as a
/// PostgreSQL restart or a network cut would); returns how many.
async fn drop_listening_connections(db: &TestDb) -> usize {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::postgres::PgConnection::connect(&db.url)
        .await
        .expect("connect");
    let rows = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN %'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("terminate");
    conn.close().await.ok();
    rows.iter().filter(|r| r.get::<bool, _>(0)).count()
}

/// A bulk operation started on replica B reaches hosts whose agents replica A holds: each
/// step is queued on B and delivered by A, the host connected from the start and the one
/// that connects later alike, and the operation on B ends `succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_operation_on_one_replica_runs_on_agents_held_by_another() {
    let db = TestDb::postgres().await;
    let rs = cluster_of(&db, &["a", "b"]).await;
    let ((a, ra), (b, _)) = (&rs[0], &rs[1]);
    let admin = token(a, "admin", Role::Admin).await;
    let (h1, t1) = enrol(a, &admin, "h1", "h1-agent").await;
    let (h2, t2) = enrol(a, &admin, "h2", "h2-agent").await;
    let (mut ag1, _) = FakeAgent::auth(ra.addr, "h1-agent", &t1).await;
    wait_until(
        Duration::from_secs(10),
        "B sees h1's agent held by A",
        || async { host_of(b, &admin, &h1).await["agent"]["replica"]["id"] == "a" },
    )
    .await;

    let body = json!({ "host_ids": [h1, h2], "queue_offline": true, "steps": [
        { "operation": "container.start", "params": { "id": "web" } },
        { "operation": "container.restart", "params": { "id": "web" } } ] });
    let (s, v) = call(
        b,
        "POST",
        "/api/v1/bulk-operations",
        Some(&admin),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    for want in ["container.start", "container.restart"] {
        let (c, p) = tokio::time::timeout(Duration::from_secs(10), ag1.next_command())
            .await
            .expect("A delivers h1's step");
        assert_eq!(p.operation, want);
        answer_success(&mut ag1, c).await;
    }
    let (mut ag2, _) = FakeAgent::auth(ra.addr, "h2-agent", &t2).await;
    for want in ["container.start", "container.restart"] {
        let (c, p) = tokio::time::timeout(Duration::from_secs(10), ag2.next_command())
            .await
            .expect("A delivers h2's step once its agent connects");
        assert_eq!(p.operation, want);
        answer_success(&mut ag2, c).await;
    }
    let uri = format!("/api/v1/bulk-operations/{id}");
    wait_until(
        Duration::from_secs(10),
        "the bulk operation on B succeeded",
        || async { call(b, "GET", &uri, Some(&admin), None).await.1["state"] == "succeeded" },
    )
    .await;
    stop_all(rs).await;
}

/// An agent update started on replica B for an agent that replica A holds is sent by A
/// (A's agent gets `agent_update` with the update's id), and B shows the agent online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_update_started_on_one_replica_is_sent_by_the_holder() {
    use protocol::Message;
    const TARGET: &str = "aarch64-unknown-linux-musl";
    let db = TestDb::postgres().await;
    // Both replicas use the test's data directory: one shelf of releases.
    let (key, _, _) = server::releases::write_key_pair(&db.dir.path().join("k"), false).unwrap();
    let f = signed_release(db.dir.path(), &key, "3.0.0", TARGET);
    server::releases::Shelf::new(db.dir.path())
        .add(
            &key.public_key(),
            &f,
            &server::releases::signature_path(&f),
            TARGET,
            "3.0.0",
        )
        .unwrap();
    let rs = cluster_of(&db, &["a", "b"]).await;
    let ((a, ra), (b, _)) = (&rs[0], &rs[1]);
    let admin = token(a, "admin", Role::Admin).await;
    let (host_id, tok) = enrol(a, &admin, "h1", "h1-agent").await;
    let mut agent = FakeAgent::connect(ra.addr, "h1-agent").await;
    let mut auth = FakeAgent::auth_env("h1-agent", &tok);
    if let Message::Auth(p) = &mut auth.message {
        p.protocol_version = Some(3);
        p.target = Some(TARGET.into());
    }
    agent.send(&auth).await;
    assert!(matches!(
        agent.recv().await.unwrap().message,
        Message::AuthResponse(_)
    ));
    wait_until(
        Duration::from_secs(10),
        "B sees the agent held by A",
        || async { host_of(b, &admin, &host_id).await["agent"]["replica"]["id"] == "a" },
    )
    .await;

    let (s, v) = call(
        b,
        "POST",
        "/api/v1/agents/h1-agent/update",
        Some(&admin),
        Some(json!({"version": "3.0.0"})),
    )
    .await;
    assert!(s.is_success(), "{s} {v}");
    let update_id = v["id"].as_str().expect("the update's id").to_string();
    assert_ne!(v["state"], "failed", "{v}");
    let sent = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match agent.recv().await.map(|e| e.message) {
                Some(Message::AgentUpdate(u)) => return u,
                Some(_) => continue,
                None => panic!("the session closed"),
            }
        }
    })
    .await
    .expect("A sends the update started on B");
    assert_eq!(sent.update_id, update_id);
    assert_eq!(sent.version, "3.0.0");
    stop_all(rs).await;
}

/// Replicas whose advertise URLs are https:// reach each other over TLS, trusting only
/// `replica_ca`: B (which has the CA) follows the feed of A (a TLS listener, an https URL)
/// and sees A's events; C (without the CA) cannot reach A at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_https_urls_reach_each_other_trusting_the_replica_ca() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let ca = pki.path().join("ca.crt");
    let db = TestDb::postgres().await;
    let (a, ra) = replica_with(&db, "a", |c, addr| {
        c.tls_cert = Some(pki.path().join("server.crt"));
        c.tls_key = Some(pki.path().join("server.key"));
        c.advertise_url = Some(format!("https://{addr}"));
        c.replica_ca = Some(ca.clone());
    })
    .await;
    let (b, rb) = replica_with(&db, "b", |c, addr| {
        c.advertise_url = Some(format!("http://{addr}"));
        c.replica_ca = Some(ca.clone());
    })
    .await;
    let (c, rc) = replica_on_port(&db, "c").await;
    let (mut at_b, mut at_c) = (b.feed.subscribe(), c.feed.subscribe());
    let seen_at_b = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            a.feed
                .publish("tls-probe", Some("h-tls"), json!({ "n": 1 }));
            let got = tokio::time::timeout(Duration::from_millis(200), at_b.recv()).await;
            if let Ok(Ok(ev)) = got {
                if ev.body["type"] == "tls-probe" {
                    return ev;
                }
            }
        }
    })
    .await
    .expect("B follows A's feed over https");
    assert_eq!(seen_at_b.origin.as_deref(), Some("a"));
    assert_eq!(seen_at_b.host_id.as_deref(), Some("h-tls"));
    // C has followed for as long: it never got through A's TLS (it trusts no CA for it).
    a.feed
        .publish("tls-probe", Some("h-tls"), json!({ "n": 2 }));
    let mut at_c_probe = false;
    while let Ok(ev) = at_c.try_recv() {
        at_c_probe |= ev.body["type"] == "tls-probe";
    }
    assert!(!at_c_probe, "C reached A's https URL without the CA");
    // A's listener serves TLS only: the plain client of C cannot use it as http://.
    let plain = server::cluster::transport::client(None).unwrap();
    let req = hyper::Request::get(format!("http://{}/healthz", ra.addr))
        .body(axum::body::Body::empty())
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), plain.request(req)).await;
    assert!(
        !matches!(answered, Ok(Ok(ref r)) if r.status().is_success()),
        "A answered plain HTTP"
    );
    stop_all(vec![(a, ra), (b, rb), (c, rc)]).await;
}
