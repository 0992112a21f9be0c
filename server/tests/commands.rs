//! The command path for callers that are not HTTP requests (a bulk run, a stack): submitted
//! with a principal, tagged with an origin, followed through final-state events (including a
//! queued command delivered later), read back by origin, waited for, and replayed by key.
//! Each scenario runs on SQLite and on PostgreSQL.

mod common;

use axum::http::StatusCode;
use common::{call, enrol, spawn, state, token, FakeAgent, TestDb};
use protocol::{CommandResponsePayload, Envelope, ErrorCode, Message};
use serde_json::json;
use server::commands::{CommandState, Finished, Principal, Submission};
use server::store::Role;
use std::time::Duration;

fn principal(user: &str, role: Role) -> Principal {
    Principal {
        token_id: format!("{user}-token"),
        user: user.to_string(),
        role,
        ip: None,
    }
}

/// The next final-state event of command `id`, within 10 s.
async fn finished(events: &mut tokio::sync::broadcast::Receiver<Finished>, id: &str) -> Finished {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(f) if f.command_id == id => return f,
                Ok(_) => {}
                Err(e) => panic!("the event stream failed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no final state for command {id}"))
}

async fn suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (host, agent_token) = enrol(&st, &admin, "c-host", "c-agent").await;
    let runner = principal("alice", Role::Operator);
    let mut events = st.commands.subscribe();

    // Authority is the principal's: a viewer may not start a container.
    let start = Submission {
        host_id: host.clone(),
        operation: "container.start".into(),
        params: json!({"id": "web"}),
        queue: true,
        idempotency_key: Some("bulk-1:c-host".into()),
        origin: Some("bulk:1".into()),
        ..Default::default()
    };
    let denied = st
        .commands
        .submit(&principal("bob", Role::Viewer), start.clone())
        .await
        .expect_err("a viewer may not write");
    assert_eq!(denied.body.code, ErrorCode::Forbidden);

    // The agent is offline: the command waits in the queue.
    let queued = st.commands.submit(&runner, start.clone()).await.unwrap();
    assert_eq!(queued.state, CommandState::Queued);
    assert!(queued.outcome.is_none() && !queued.replay);
    let id = queued.command_id.clone();

    // The agent connects later: the command is delivered, answered, and finishes; the event
    // names its origin and host.
    let srv = spawn(&st).await;
    let (mut agent, _) = FakeAgent::auth(srv.addr, "c-agent", &agent_token).await;
    let (got, cmd) = agent.next_command().await;
    assert_eq!(got, id);
    assert_eq!(cmd.idempotency_key.as_deref(), Some("bulk-1:c-host"));
    agent
        .send(&Envelope::new(
            id.as_str(),
            Message::CommandResponse(CommandResponsePayload::Success {
                data: json!({"started": "web"}),
            }),
        ))
        .await;
    let fin = finished(&mut events, &id).await;
    assert_eq!(fin.state, CommandState::Succeeded);
    assert_eq!(fin.origin.as_deref(), Some("bulk:1"));
    assert_eq!(fin.host_id.as_deref(), Some(host.as_str()));

    // What a restarted bulk run reads back, and what a stack step waits for.
    let rows = st.commands.by_origin("bulk:1", 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].id.as_str(), rows[0].state),
        (id.as_str(), CommandState::Succeeded)
    );
    let waited = st.commands.wait(&id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(waited.outcome, Some(Ok(json!({"started": "web"}))));

    // The same key again: the first command's result, not a second run.
    let again = st.commands.submit(&runner, start).await.unwrap();
    assert!(again.replay);
    assert_eq!(again.command_id, id);
    assert_eq!(again.outcome, Some(Ok(json!({"started": "web"}))));

    // A command sent now also finishes with an event; the audit names the origin.
    let list = Submission {
        host_id: host.clone(),
        operation: "container.list".into(),
        params: json!({}),
        origin: Some("stack:s1".into()),
        ..Default::default()
    };
    let st2 = st.clone();
    let run = tokio::spawn(async move { st2.commands.submit(&runner, list).await });
    let (list_id, _) = agent.next_command().await;
    agent
        .send(&Envelope::new(
            list_id.as_str(),
            Message::CommandResponse(CommandResponsePayload::Success { data: json!([]) }),
        ))
        .await;
    let reply = run.await.unwrap().unwrap();
    assert_eq!(reply.outcome, Some(Ok(json!([]))));
    assert_eq!(
        finished(&mut events, &list_id).await.origin.as_deref(),
        Some("stack:s1")
    );
    let (s, a) = call(
        &st,
        "GET",
        "/api/v1/audit?action=operation.container.list",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let entries = a["entries"].as_array().unwrap();
    assert!(!entries.is_empty(), "{a}");
    assert_eq!(entries[0]["detail"]["origin"], "stack:s1", "{a}");
    assert_eq!(entries[0]["actor"], "alice", "{a}");
    let (s, c) = call(
        &st,
        "GET",
        &format!("/api/v1/commands/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["origin"], "bulk:1", "{c}");
    srv.shutdown().await;
}

#[tokio::test]
async fn in_process_callers_on_sqlite() {
    suite(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn in_process_callers_on_postgres() {
    suite(&TestDb::postgres().await).await;
}
