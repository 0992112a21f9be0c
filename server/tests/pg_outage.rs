//! PostgreSQL goes away under load and comes back. The server reaches PostgreSQL through a
//! TCP proxy this test controls (so the shared PostgreSQL is never disturbed): cutting the
//! proxy kills every database connection and refuses new ones. Agent sessions must stay up,
//! commands keep working, heartbeats are skipped without crashing, `/readyz` reports the
//! outage with its reason, and everything recovers when the proxy lets traffic through again
//! (sqlx's pool reconnects by itself).

mod common;

use axum::http::StatusCode;
use common::{call, enrol, spawn, state_with, test_config, token, FakeAgent, TestDb};
use protocol::{CommandResponsePayload, Envelope, HeartbeatPayload, Message};
use serde_json::json;
use server::store::Role;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to `upstream` that can be switched off (kills live connections, refuses new).
struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

async fn proxy(upstream: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (up, up_rx) = watch::channel(true);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if !*up_rx.borrow() {
                drop(client);
                continue;
            }
            let mut rx = up_rx.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = rx.wait_for(|v| !*v) => {}
                }
            });
        }
    });
    Proxy { addr, up }
}

#[tokio::test]
async fn postgres_outage_keeps_sessions_and_recovers() {
    let db = TestDb::postgres().await;
    // The server's URL goes through the proxy.
    let (prefix, rest) = db.url.split_once('@').unwrap();
    let (hostport, dbname) = rest.split_once('/').unwrap();
    let upstream: SocketAddr = hostport.replace("localhost", "127.0.0.1").parse().unwrap();
    let px = proxy(upstream).await;
    let mut cfg = test_config(&db);
    cfg.database_url = Some(protocol::Secret::new(format!(
        "{prefix}@{}/{dbname}",
        px.addr
    )));
    let st = state_with(&db, cfg).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host, agent_tok) = enrol(&st, &admin, "pg-host", "pg-agent").await;
    let srv = spawn(&st).await;
    let (mut agent, _) = FakeAgent::auth(srv.addr, "pg-agent", &agent_tok).await;
    let (s, _) = call(&st, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);

    let host_row = st.store.get_host(&host).await.unwrap().expect("host");

    // The database goes away.
    px.up.send_replace(false);
    let (s, v) = call(&st, "GET", "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["database"], "unreachable", "{v}");
    assert!(v["database_error"].is_string(), "{v}");
    assert_eq!(v["agents_connected"], 1, "{v}");

    // Heartbeats keep coming (their writes fail or are skipped); the session stays.
    for i in 0..5 {
        agent
            .send(&Envelope::new(
                format!("hb-{i}"),
                Message::Heartbeat(HeartbeatPayload::default()),
            ))
            .await;
    }
    // A command still round-trips through the live session (the record is best effort).
    // The API token check and the host lookup need the database, so the command is run
    // through the host's adapter, with the host row read before the outage.
    let adapter = st.adapters.for_host(&host_row).expect("agent adapter");
    let run = tokio::spawn(async move {
        let op = protocol::Operation::parse("container.list", &json!({})).unwrap();
        let call = server::hosts::Call {
            id: "during-outage".into(),
            idempotency_key: "during-outage".into(),
            timeout: Duration::from_secs(10),
            caller: None,
        };
        adapter.run(&op, &call).await
    });
    let (id, _) = agent.next_command().await;
    agent
        .send(&Envelope::new(
            id,
            Message::CommandResponse(CommandResponsePayload::Success {
                data: json!(["ok"]),
            }),
        ))
        .await;
    assert_eq!(run.await.unwrap().unwrap(), json!(["ok"]));
    assert_eq!(
        st.agents.live_count(),
        1,
        "the agent session survived the outage"
    );

    // The database comes back: ready again, and writes work (a heartbeat is stored).
    px.up.send_replace(true);
    let mut ready = false;
    for _ in 0..100 {
        let (s, _) = call(&st, "GET", "/readyz", None, None).await;
        if s == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz recovers when PostgreSQL is back");
    let before = st
        .store
        .get_agent("pg-agent")
        .await
        .unwrap()
        .unwrap()
        .last_heartbeat;
    let mut stored = false;
    for i in 0..100 {
        agent
            .send(&Envelope::new(
                format!("hb-after-{i}"),
                Message::Heartbeat(HeartbeatPayload {
                    docker_reachable: Some(true),
                    ..Default::default()
                }),
            ))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = st
            .store
            .get_agent("pg-agent")
            .await
            .unwrap()
            .unwrap()
            .last_heartbeat;
        if now > before {
            stored = true;
            break;
        }
    }
    assert!(stored, "heartbeats are stored again after recovery");
    let (s, v) = call(&st, "GET", "/api/v1/agents/pg-agent", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "online", "{v}");
    srv.shutdown().await;
}
