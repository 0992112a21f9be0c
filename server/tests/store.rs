//! The store test-suite, run against a real SQLite file and a real PostgreSQL database.

mod common;

use common::TestDb;
use serde_json::json;
use server::store::*;

async fn suite(db: &TestDb) {
    let store = db.store().await;
    store.ping().await.unwrap();
    // Migrations are idempotent: opening again applies nothing and fails nothing.
    let again = db.store().await;
    again.close().await;

    // users and tokens
    let u = store.upsert_user("alice", Role::Operator).await.unwrap();
    let u2 = store.upsert_user("alice", Role::Admin).await.unwrap();
    assert_eq!(u.id, u2.id);
    assert_eq!(
        store.find_user("alice").await.unwrap().unwrap().role,
        Role::Admin
    );
    let tid = store
        .insert_api_token(&NewApiToken {
            user_id: u.id.clone(),
            token_hash: "h1".into(),
            prefix: "dctl_u_ab".into(),
            allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            expires_at: Some(now_ms() + 1000),
        })
        .await
        .unwrap();
    let t = store.find_api_token_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(
        (t.id.as_str(), t.user_name.as_str(), t.role),
        (tid.as_str(), "alice", Role::Admin)
    );
    assert_eq!(t.allowed_cidrs.len(), 1);
    assert!(store
        .find_api_token_by_hash("nope")
        .await
        .unwrap()
        .is_none());
    let dup = store
        .insert_api_token(&NewApiToken {
            user_id: u.id.clone(),
            token_hash: "h1".into(),
            prefix: "x".into(),
            allowed_cidrs: vec![],
            expires_at: None,
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    store.revoke_api_token(&tid).await.unwrap();
    // The token was read (and cached) above: the revocation shows at once all the same.
    assert!(store
        .find_api_token_by_hash("h1")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert!(store
        .get_api_token(&tid)
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert!(matches!(
        store.revoke_api_token("missing").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.list_api_tokens().await.unwrap().len(), 1);

    // hosts
    let h = store
        .create_host(&NewHost {
            name: "h1".into(),
            connection_mode: ConnectionMode::Direct,
            docker_url: Some("tcp://127.0.0.1:2375".into()),
            tls_ca: None,
            tls_cert: None,
            tls_key_enc: Some("v1:cipher".into()),
            tls_server_name: None,
            labels: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(h.connection_mode, ConnectionMode::Direct);
    assert_eq!(h.tls_key_enc.as_deref(), Some("v1:cipher"));
    let dup = store
        .create_host(&NewHost {
            name: "h1".into(),
            connection_mode: ConnectionMode::Agent,
            docker_url: None,
            tls_ca: None,
            tls_cert: None,
            tls_key_enc: None,
            tls_server_name: None,
            labels: Default::default(),
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))));
    let mut h2 = h.clone();
    h2.connection_mode = ConnectionMode::Agent;
    let h2 = store.update_host(&h2).await.unwrap();
    assert_eq!(h2.connection_mode, ConnectionMode::Agent);
    assert_eq!(store.list_hosts().await.unwrap().len(), 1);

    // agents
    let a = store
        .create_agent(&NewAgent {
            agent_id: "edge-1".into(),
            host_id: h.id.clone(),
            token_hash: "ah1".into(),
            token_expires_at: None,
            allowed_cidrs: vec![],
        })
        .await
        .unwrap();
    assert_eq!(a.status, "disconnected");
    let h3 = store.get_host(&h.id).await.unwrap().unwrap();
    assert_eq!(h3.agent_id.as_deref(), Some("edge-1"));
    assert_eq!(h3.agent_ref.as_deref(), Some(a.id.as_str()));
    assert_eq!(store.count_active_agents(&h.id).await.unwrap(), 1);
    let dup = store
        .create_agent(&NewAgent {
            agent_id: "edge-1".into(),
            host_id: h.id.clone(),
            token_hash: "x".into(),
            token_expires_at: None,
            allowed_cidrs: vec![],
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))));

    store
        .agent_connected(&a.id, "s1", "srv", "1.0", &["docker".to_string()], None)
        .await
        .unwrap();
    store
        .agent_heartbeat(&a.id, "s1", &json!({"docker_reachable": true}), Some(1.5))
        .await
        .unwrap();
    let got = store.get_agent("edge-1").await.unwrap().unwrap();
    assert_eq!(got.status, "online");
    assert_eq!(got.capabilities, vec!["docker".to_string()]);
    assert_eq!(got.health["docker_reachable"], true);
    assert_eq!(got.rtt_ms, Some(1.5));
    assert!(got.last_heartbeat.is_some() && got.connected_at.is_some());
    // A stale session cannot overwrite the current one.
    store
        .agent_disconnected(&a.id, "old-session")
        .await
        .unwrap();
    assert_eq!(
        store.get_agent("edge-1").await.unwrap().unwrap().status,
        "online"
    );
    store
        .agent_session_status(&a.id, "s1", "offline")
        .await
        .unwrap();
    assert_eq!(
        store.get_agent("edge-1").await.unwrap().unwrap().status,
        "offline"
    );
    store.agent_disconnected(&a.id, "s1").await.unwrap();
    let got = store.get_agent("edge-1").await.unwrap().unwrap();
    assert_eq!(got.status, "disconnected");
    assert!(got.disconnected_at.is_some() && got.session_id.is_none());

    store
        .rotate_agent_token("edge-1", "ah2", None, Some(now_ms() + 60_000))
        .await
        .unwrap();
    let got = store.get_agent("edge-1").await.unwrap().unwrap();
    assert_eq!(
        (got.auth_token_hash.as_str(), got.prev_token_hash.as_deref()),
        ("ah2", Some("ah1"))
    );
    store
        .rotate_agent_token("edge-1", "ah3", Some(now_ms() + 5), None)
        .await
        .unwrap();
    let got = store.get_agent("edge-1").await.unwrap().unwrap();
    assert_eq!(
        (got.auth_token_hash.as_str(), got.prev_token_hash.as_deref()),
        ("ah3", None)
    );
    assert!(got.token_expires_at.is_some());

    store
        .update_agent_settings(
            "edge-1",
            &AgentSettingsPatch {
                allowed_cidrs: Some(vec!["192.168.0.0/16".parse().unwrap()]),
                heartbeat_interval: Some(Some(5)),
                command_timeout: None,
            },
        )
        .await
        .unwrap();
    let got = store.get_agent("edge-1").await.unwrap().unwrap();
    assert_eq!(got.heartbeat_interval, Some(5));
    assert_eq!(got.allowed_cidrs.len(), 1);

    store.revoke_agent("edge-1").await.unwrap();
    assert!(matches!(
        store.revoke_agent("edge-1").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.get_agent("edge-1").await.unwrap().unwrap().status,
        "revoked"
    );
    assert_eq!(store.count_active_agents(&h.id).await.unwrap(), 0);
    // A revoked agent can be enrolled again.
    let re = store
        .create_agent(&NewAgent {
            agent_id: "edge-1".into(),
            host_id: h.id.clone(),
            token_hash: "ah4".into(),
            token_expires_at: None,
            allowed_cidrs: vec![],
        })
        .await
        .unwrap();
    assert_eq!(re.id, a.id);
    assert!(re.revoked_at.is_none());
    assert_eq!(store.list_agents().await.unwrap().len(), 1);
    assert_eq!(store.agents_of_host(&h.id).await.unwrap().len(), 1);

    // sessions left by a crashed run
    store
        .agent_connected(&a.id, "s9", "srv", "1.0", &[], None)
        .await
        .unwrap();
    assert_eq!(store.reset_sessions_of("srv").await.unwrap(), 1);
    assert_eq!(
        store.get_agent("edge-1").await.unwrap().unwrap().status,
        "disconnected"
    );

    // agent events
    store
        .add_agent_event(Some(&a.id), "connected", &json!({"x": 1}))
        .await
        .unwrap();
    store
        .add_agent_event(None, "auth_failed", &json!({"agent_id": "ghost"}))
        .await
        .unwrap();
    let ev = store.list_agent_events(Some(&a.id), 10).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].agent_id.as_deref(), Some("edge-1"));
    assert_eq!(store.list_agent_events(None, 10).await.unwrap().len(), 2);

    // Docker events with bounded retention
    for i in 0..5 {
        store
            .add_docker_event(&NewDockerEvent {
                host_id: h.id.clone(),
                agent_id: Some("edge-1".into()),
                kind: "container".into(),
                action: format!("a{i}"),
                actor_id: "c1".into(),
                attributes: json!({"name": "web"}),
                time_nano: i,
            })
            .await
            .unwrap();
    }
    let all = store.list_docker_events(&h.id, 0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].action, "a4", "newest first");
    assert_eq!(
        store
            .list_docker_events(&h.id, all[1].seq, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.prune_docker_events(3, 3_600_000).await.unwrap(), 2);
    let kept = store.list_docker_events(&h.id, 0, 100).await.unwrap();
    assert_eq!(
        kept.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        vec!["a4", "a3", "a2"]
    );
    assert_eq!(
        store.prune_docker_events(100, -1).await.unwrap(),
        3,
        "age limit"
    );

    // audit log with filters
    for (actor, action, outcome) in [
        ("alice", "host.create", "success"),
        ("bob", "operation.container.list", "error"),
        ("alice", "agent.revoke", "success"),
    ] {
        store
            .add_audit(&NewAudit {
                actor_kind: "user".into(),
                actor: actor.into(),
                host_id: Some(h.id.clone()),
                action: action.into(),
                target: None,
                outcome: outcome.into(),
                error_code: None,
                detail: Some(json!({"k": 1})),
                source_ip: Some("127.0.0.1".into()),
            })
            .await
            .unwrap();
    }
    let f = |actor: Option<&str>, outcome: Option<&str>| AuditFilter {
        actor: actor.map(String::from),
        outcome: outcome.map(String::from),
        ..Default::default()
    };
    assert_eq!(store.list_audit(&f(None, None)).await.unwrap().len(), 3);
    assert_eq!(
        store
            .list_audit(&f(Some("alice"), None))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .list_audit(&f(Some("alice"), Some("error")))
            .await
            .unwrap()
            .len(),
        0
    );
    let page = store
        .list_audit(&AuditFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page[0].action, "agent.revoke");
    let older = store
        .list_audit(&AuditFilter {
            before_seq: Some(page[0].seq),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(older.len(), 2);
    let since = store
        .list_audit(&AuditFilter {
            since: Some(now_ms() + 60_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(since.is_empty());

    // commands: recorded queued (legacy status pending), sent, finished with the state, the
    // legacy status and error code, the result document and the duration; an expiry applies
    // only to a command that was never sent; the origin finds them again.
    let c1 = store
        .create_command(&NewCommand {
            id: "c1".into(),
            idempotency_key: "c1".into(),
            agent_id: Some("edge-1".into()),
            origin: Some("bulk:b1".into()),
            ..c_template(&h.id)
        })
        .await
        .unwrap();
    assert_eq!(
        (c1.state, c1.status.as_str(), c1.attempts),
        (CommandState::Queued, "pending", 0)
    );
    store.mark_command_sent("c1", "direct").await.unwrap();
    let timeout = protocol::ErrorBody::new(protocol::ErrorCode::Timeout, "too slow");
    assert!(
        !store
            .finish_command("c1", CommandState::Expired, &Err(timeout.clone()), None)
            .await
            .unwrap(),
        "a sent command does not expire as never sent"
    );
    assert!(store
        .finish_command("c1", CommandState::Failed, &Err(timeout), Some(42))
        .await
        .unwrap());
    let c = store.get_command("c1").await.unwrap().unwrap();
    assert_eq!(
        (c.status.as_str(), c.error_code.as_deref(), c.duration_ms),
        ("error", Some("timeout"), Some(42))
    );
    assert_eq!((c.state, c.attempts), (CommandState::Failed, 1));
    assert_eq!(c.result["error"]["message"], "too slow");
    assert_eq!(
        c.outcome().unwrap().unwrap_err().code,
        protocol::ErrorCode::Timeout
    );
    let by_origin = store.list_commands_by_origin("bulk:b1", 10).await.unwrap();
    assert_eq!(by_origin.len(), 1);
    assert_eq!(by_origin[0].origin.as_deref(), Some("bulk:b1"));

    // The command journal: a direct command's record is written behind the request, and a
    // read of it right after sees the final state (reads flush the journal).
    let jid = uuid::Uuid::new_v4().to_string();
    store.journal_command_sent(
        NewCommand {
            id: jid.clone(),
            host_id: h.id.clone(),
            agent_id: None,
            agent_ref: None,
            operation: "container.list".into(),
            params_enc: None,
            requested_by: "alice".into(),
            queued: false,
            timeout_secs: 30,
            expires_at: now_ms() + 30_000,
            idempotency_key: jid.clone(),
            client_key: false,
            origin: None,
        },
        "direct",
    );
    store.journal_command_finished(
        &jid,
        CommandState::Succeeded,
        &Ok(json!([{"Id": "abc"}])),
        Some(7),
    );
    let c = store
        .get_command(&jid)
        .await
        .unwrap()
        .expect("journaled command");
    assert_eq!(c.state, CommandState::Succeeded);
    assert_eq!((c.attempts, c.duration_ms, c.queued), (1, Some(7), false));
    assert_eq!(c.agent_ref.as_deref(), Some("direct"));
    assert_eq!(c.result["data"][0]["Id"], "abc");
    // Its start and finish came in one batch (one row written with its final record); a
    // start committed before its finish comes is updated by it.
    let slow = uuid::Uuid::new_v4().to_string();
    store.journal_command_sent(
        NewCommand {
            id: slow.clone(),
            idempotency_key: slow.clone(),
            ..c_template(&h.id)
        },
        "agent-ref",
    );
    let s = store.get_command(&slow).await.unwrap().expect("started");
    assert_eq!((s.state, s.attempts), (CommandState::Sent, 1));
    assert!(s.completed_at.is_none());
    store.journal_command_finished(
        &slow,
        CommandState::Succeeded,
        &Ok(json!({"ok": true})),
        Some(9),
    );
    let s = store.get_command(&slow).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.status.as_str(), s.duration_ms),
        (CommandState::Succeeded, c.status.as_str(), Some(9))
    );
    assert_eq!(s.result["data"]["ok"], true);
    assert!(s.completed_at.is_some() && c.completed_at.is_some());
    let unknown = uuid::Uuid::new_v4().to_string();
    store.journal_command_sent(
        NewCommand {
            id: unknown.clone(),
            idempotency_key: unknown.clone(),
            ..c_template(&h.id)
        },
        "agent-ref",
    );
    store.journal_command_finished(
        &unknown,
        CommandState::Failed,
        &Err(protocol::ErrorBody::new(
            protocol::ErrorCode::OutcomeUnknown,
            "link lost",
        )),
        None,
    );
    let u = store.get_command(&unknown).await.unwrap().unwrap();
    assert_eq!(
        (u.state, u.error_code.as_deref()),
        (CommandState::Failed, Some("outcome_unknown"))
    );

    // The host cache: a change through this store shows at once.
    let cached = store.get_host_cached(&h.id).await.unwrap().unwrap();
    let renamed = store
        .update_host(&Host {
            name: "renamed-for-cache".into(),
            ..cached
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_host_cached(&h.id).await.unwrap().unwrap().name,
        renamed.name
    );

    // Deleting the host keeps its agent (host_id set to NULL) and drops its events.
    store.delete_host(&h.id).await.unwrap();
    assert!(matches!(
        store.delete_host(&h.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(store
        .get_agent("edge-1")
        .await
        .unwrap()
        .unwrap()
        .host_id
        .is_none());
    store.close().await;
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    let db = TestDb::sqlite();
    suite(&db).await;
    // WAL mode on the file.
    let store = db.store().await;
    assert_eq!(store.backend(), Backend::Sqlite);
    assert!(db.dir.path().join("docker-ctl.db").exists());
    assert!(
        db.dir.path().join("docker-ctl.db-wal").exists(),
        "the SQLite file runs in WAL mode"
    );
}

#[tokio::test]
async fn store_suite_on_postgres() {
    let db = TestDb::postgres().await;
    suite(&db).await;
    assert_eq!(db.store().await.backend(), Backend::Postgres);
}

fn c_template(host_id: &str) -> NewCommand {
    NewCommand {
        id: String::new(),
        host_id: host_id.to_string(),
        agent_id: None,
        agent_ref: None,
        operation: "container.inspect".into(),
        params_enc: None,
        requested_by: "alice".into(),
        queued: false,
        timeout_secs: 30,
        expires_at: now_ms() + 30_000,
        idempotency_key: String::new(),
        client_key: false,
        origin: None,
    }
}
