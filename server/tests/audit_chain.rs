//! The tamper-evident audit log: a hash chain, concurrent appends, and `audit verify` (the
//! store function, the admin endpoint and the CLI) catching rows changed or deleted with SQL.

mod common;

use axum::http::StatusCode;
use common::{call, state, test_config, token, TestDb};
use server::store::{NewAudit, Role};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_docker-ctl-server");

fn entry(i: usize) -> NewAudit {
    NewAudit {
        actor_kind: "user".into(),
        actor: format!("user-{i}"),
        host_id: None,
        action: "test.action".into(),
        target: Some(format!("t{i}")),
        outcome: "success".into(),
        error_code: None,
        detail: Some(serde_json::json!({ "i": i })),
        source_ip: Some("192.0.2.1".into()),
    }
}

fn verify_cli(db: &TestDb) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["audit", "verify", "--data-dir"])
        .arg(db.dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("DOCKER_CTL_CONFIG");
    if !db.url.starts_with("sqlite:") {
        cmd.args(["--database-url", &db.url]);
    }
    let out = cmd.output().expect("run docker-ctl-server audit verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Tampering as an attacker with database access would: plain SQL, outside the server.
async fn exec(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    sqlx::query(sql).execute(&pool).await.expect(sql);
    pool.close().await;
}

async fn suite(db: &TestDb) {
    let st = state(db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    // Concurrent appends from many tasks: one unbroken chain.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = st.store.clone();
        tasks.push(tokio::spawn(
            async move { store.add_audit(&entry(i)).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().expect("append");
    }
    let r = st.store.verify_audit_chain().await.unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.verified, 40);
    let (ok, out) = verify_cli(db);
    assert!(ok, "{out}");
    assert!(out.contains("audit log OK"), "{out}");
    let (s, v) = call(&st, "GET", "/api/v1/audit/verify", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let (s, _) = call(&st, "GET", "/api/v1/audit/verify", Some(&viewer), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Change one entry.
    exec(
        &db.url,
        "UPDATE audit_log SET outcome = 'denied' WHERE seq = 10",
    )
    .await;
    let r = st.store.verify_audit_chain().await.unwrap();
    assert_eq!(r.changed, vec![10], "{r:?}");
    assert!(r.deleted.is_empty(), "{r:?}");
    let (ok, out) = verify_cli(db);
    assert!(!ok, "verify must fail: {out}");
    assert!(out.contains("CHANGED entry 10"), "{out}");

    // Delete another one.
    exec(&db.url, "DELETE FROM audit_log WHERE seq = 20").await;
    let r = st.store.verify_audit_chain().await.unwrap();
    assert_eq!(r.changed, vec![10], "{r:?}");
    assert_eq!(r.deleted, vec![20], "{r:?}");
    let (ok, out) = verify_cli(db);
    assert!(!ok);
    assert!(out.contains("DELETED entry 20"), "{out}");

    // Delete the newest one (the head still names it).
    exec(
        &db.url,
        "DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)",
    )
    .await;
    let r = st.store.verify_audit_chain().await.unwrap();
    assert!(r.deleted.contains(&40), "{r:?}");
    let (s, v) = call(&st, "GET", "/api/v1/audit/verify", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ok"], false, "{v}");
    st.store.close().await;
}

#[tokio::test]
async fn audit_chain_on_sqlite() {
    suite(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn audit_chain_on_postgres() {
    suite(&TestDb::postgres().await).await;
}

#[tokio::test]
async fn rewriting_a_field_in_detail_is_caught() {
    let db = TestDb::sqlite();
    let _ = test_config(&db);
    let store = db.store().await;
    for i in 0..3 {
        store.add_audit(&entry(i)).await.unwrap();
    }
    exec(
        &db.url,
        "UPDATE audit_log SET detail = '{\"i\":99}' WHERE seq = 2",
    )
    .await;
    let r = store.verify_audit_chain().await.unwrap();
    assert_eq!(r.changed, vec![2]);
    store.close().await;
}
