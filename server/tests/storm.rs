//! A reconnect storm on PostgreSQL with a tiny pool: hundreds of agents authenticate at the
//! same moment against a server whose pool has two connections and gives up on a free
//! connection after one second. Every agent must come back, none may be told that its
//! credentials are wrong, and nothing may fail with a pool timeout: handshakes take turns
//! (half the pool at a time) instead of queueing on the pool, and one that cannot be served
//! in time is closed with 1013 so that the agent retries.

mod common;

use common::*;
use futures_util::StreamExt;
use protocol::{AuthStatus, Message};
use server::config::Seconds;
use server::store::Role;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMsg;

/// Agents in the storm.
const AGENTS: usize = 300;
/// Attempts per agent (1013 closes are retried after a short pause).
const MAX_ATTEMPTS: u32 = 20;

/// How one agent's handshake ended.
enum Attempt {
    Authenticated(Box<common::Ws>),
    /// Closed with 1013: try again later.
    Deferred,
}

/// Connects, waits for every other agent to be connected too, sends `auth` and reads the
/// answer. Panics on anything but `authenticated` or a 1013 close.
async fn handshake(
    addr: SocketAddr,
    agent_id: &str,
    token: &str,
    start: Option<Arc<tokio::sync::Barrier>>,
) -> Attempt {
    let mut a = FakeAgent::connect(addr, agent_id).await;
    if let Some(b) = start {
        b.wait().await;
    }
    a.send(&FakeAgent::auth_env(agent_id, token)).await;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), a.ws.next())
            .await
            .unwrap_or_else(|_| panic!("{agent_id}: no answer to auth within 30 s"));
        match m {
            Some(Ok(WsMsg::Text(t))) => {
                let env = protocol::Envelope::decode(t.as_bytes()).expect("envelope");
                match env.message {
                    Message::AuthResponse(r) if r.status == AuthStatus::Authenticated => {
                        return Attempt::Authenticated(Box::new(a.ws))
                    }
                    other => panic!("{agent_id}: refused during the storm: {other:?}"),
                }
            }
            Some(Ok(WsMsg::Close(Some(f)))) if u16::from(f.code) == 1013 => {
                return Attempt::Deferred
            }
            Some(Ok(WsMsg::Close(f))) => panic!("{agent_id}: closed during the storm: {f:?}"),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => panic!("{agent_id}: connection lost during the storm"),
        }
    }
}

fn metric(state: &server::AppState, name: &str) -> f64 {
    state
        .metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_handshakes_on_a_two_connection_pool_all_authenticate() {
    let db = TestDb::postgres().await;
    let mut config = test_config(&db);
    config.database_max_connections = Some(2);
    // A statement that waits a second for a connection fails: queueing handshakes on the
    // pool would show as failures at once.
    config.database_acquire_timeout = Some(Seconds(Duration::from_secs(1)));
    let state = state_with(&db, config).await;
    assert_eq!(state.store.max_connections(), 2);
    let admin = token(&state, "admin", Role::Admin).await;
    let mut creds = Vec::with_capacity(AGENTS);
    for chunk in (0..AGENTS).collect::<Vec<_>>().chunks(25) {
        let made = futures_util::future::join_all(chunk.iter().map(|i| {
            let (state, admin) = (&state, &admin);
            async move {
                let agent_id = format!("storm-{i}");
                let (_, t) = enrol(state, admin, &format!("storm-host-{i}"), &agent_id).await;
                (agent_id, t)
            }
        }))
        .await;
        creds.extend(made);
    }
    let server = spawn(&state).await;
    let addr = server.addr;

    let started = Instant::now();
    let barrier = Arc::new(tokio::sync::Barrier::new(AGENTS));
    let tasks: Vec<_> = creds
        .into_iter()
        .map(|(agent_id, token)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut start = Some(barrier);
                for attempt in 1..=MAX_ATTEMPTS {
                    match handshake(addr, &agent_id, &token, start.take()).await {
                        Attempt::Authenticated(ws) => return (ws, attempt),
                        Attempt::Deferred => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                panic!("{agent_id}: deferred {MAX_ATTEMPTS} times");
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(AGENTS);
    let mut retried = 0;
    for t in tasks {
        let (ws, attempts) = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("the storm settles within 120 s")
            .expect("agent task");
        retried += usize::from(attempts > 1);
        sockets.push(ws);
    }
    let took = started.elapsed();
    eprintln!("{AGENTS} agents authenticated in {took:?} on a 2-connection pool; {retried} retried after 1013");
    assert!(took < Duration::from_secs(90), "storm took {took:?}");

    // Nobody was refused as an authentication failure, and every session is on record.
    assert_eq!(metric(&state, "docker_ctl_agent_auth_failures_total"), 0.0);
    assert_eq!(metric(&state, "docker_ctl_agents_connected"), AGENTS as f64);
    wait_until(
        Duration::from_secs(30),
        "every agent's row reads online",
        || {
            let store = state.store.clone();
            async move {
                let agents = store.list_agents().await.expect("list agents");
                agents.len() == AGENTS && agents.iter().all(|a| a.status == "online")
            }
        },
    )
    .await;

    for mut ws in sockets {
        let _ = ws.close(None).await;
    }
    let _ = ws_flush_closed(&state).await;
    server.shutdown().await;
}

/// Waits until the closed sockets' sessions are gone (bounded).
async fn ws_flush_closed(state: &server::AppState) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if state.agents.live_count() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn the_pool_size_is_configurable_and_checked() {
    let c = server::config::Config::from_layers(
        None,
        serde_json::json!({ "database_max_connections": 0 }),
    );
    let e = c.expect_err("0 connections refused");
    assert!(
        format!("{e:#}").contains("database_max_connections"),
        "{e:#}"
    );
    let c = server::config::Config::from_layers(
        None,
        serde_json::json!({ "database_max_connections": 3, "database_acquire_timeout": 2.5 }),
    )
    .expect("config");
    let p = c.pool_settings();
    assert_eq!(p.max_connections, Some(3));
    assert_eq!(p.acquire_timeout, Some(Duration::from_millis(2500)));
    let db = TestDb::sqlite();
    let store = server::store::Store::connect_with(&db.url, p)
        .await
        .expect("store");
    assert_eq!(store.max_connections(), 3);
}
