//! The server's side of agent self-update, in process: releases checked and stored on the
//! shelf, listed, downloaded by an agent (Basic auth, `Range`, `If-Range`), and one agent's
//! update sent over a real WebSocket to a fake agent of protocol 3 and followed through its
//! reports (`agent_update_progress`, and `update` at its next `auth`).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use protocol::{
    AgentUpdateProgressPayload, AuthPayload, Envelope, ErrorBody, ErrorCode, Message, Secret,
    UpdateState,
};
use serde_json::{json, Value};
use server::releases::{self, Shelf};
use server::store::Role;
use std::time::Duration;
use tower::ServiceExt;

const TARGET: &str = "aarch64-unknown-linux-musl";

async fn get(
    state: &server::AppState,
    uri: &str,
    headers: &[(&str, String)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut b = Request::builder().method("GET").uri(uri);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let resp = server::app(state.clone())
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 30).await.unwrap();
    (parts.status, parts.headers, bytes.to_vec())
}

fn basic(agent_id: &str, token: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{agent_id}:{token}"))
    )
}

#[test]
fn the_shelf_takes_only_releases_signed_with_its_key_for_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _, _) = releases::write_key_pair(&dir.path().join("k"), false).unwrap();
    let (other, _, _) = releases::write_key_pair(&dir.path().join("o"), false).unwrap();
    let shelf = Shelf::new(&dir.path().join("data"));
    let pubkey = key.public_key();
    let f = signed_release(dir.path(), &other, "1.0.0", TARGET);
    let e = shelf.add(&pubkey, &f, &releases::signature_path(&f), TARGET, "1.0.0");
    assert!(
        e.unwrap_err().to_string().contains("key"),
        "another key is refused"
    );
    let f = signed_release(dir.path(), &key, "1.0.1", TARGET);
    let e = shelf.add(&pubkey, &f, &releases::signature_path(&f), TARGET, "1.0.2");
    assert!(
        e.unwrap_err().to_string().contains("version"),
        "a mislabelled version is refused"
    );
    let e = shelf.add(
        &pubkey,
        &f,
        &releases::signature_path(&f),
        "x86_64-unknown-linux-musl",
        "1.0.1",
    );
    assert!(
        e.unwrap_err().to_string().contains("target"),
        "another target is refused"
    );
    let e = shelf.add(
        &pubkey,
        &f,
        &releases::signature_path(&f),
        TARGET,
        "../1.0.1",
    );
    assert!(e.is_err(), "a version that is not one word is refused");
    std::fs::write(&f, b"changed").unwrap();
    let e = shelf.add(&pubkey, &f, &releases::signature_path(&f), TARGET, "1.0.1");
    assert!(e.is_err(), "a changed file is refused");
    assert!(
        shelf.list().is_empty(),
        "nothing refused was kept: {:?}",
        shelf.list()
    );
    let f = signed_release(dir.path(), &key, "1.0.3", TARGET);
    let r = shelf
        .add(&pubkey, &f, &releases::signature_path(&f), TARGET, "1.0.3")
        .unwrap();
    assert_eq!(
        (r.version.as_str(), r.target.as_str(), r.size),
        ("1.0.3", TARGET, 200_000)
    );
    assert_eq!(shelf.list(), vec![r.clone()]);
    let again = shelf.add(&pubkey, &f, &releases::signature_path(&f), TARGET, "1.0.3");
    assert!(again.unwrap_err().to_string().contains("already exists"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("data/releases/1.0.3"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary directory left: {leftovers:?}"
    );
}

#[tokio::test]
async fn releases_are_listed_and_downloaded_with_ranges() {
    let db = TestDb::sqlite();
    let state = state(&db).await;
    let admin = token(&state, "admin", Role::Admin).await;
    let (_, agent_token) = enrol(&state, &admin, "h1", "edge-dl").await;
    let (key, _, _) = releases::write_key_pair(&db.dir.path().join("k"), false).unwrap();
    let f = signed_release(db.dir.path(), &key, "2.0.0", TARGET);
    Shelf::new(db.dir.path())
        .add(
            &key.public_key(),
            &f,
            &releases::signature_path(&f),
            TARGET,
            "2.0.0",
        )
        .unwrap();
    let whole = std::fs::read(&f).unwrap();

    let (st, list) = call(&state, "GET", "/api/v1/releases", Some(&admin), None).await;
    assert_eq!(st, StatusCode::OK, "{list}");
    assert_eq!(list["releases"][0]["version"], "2.0.0");
    assert_eq!(list["releases"][0]["size"], 200_000);
    let (st, _) = call(&state, "GET", "/api/v1/releases", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let uri = format!("/api/v1/releases/2.0.0/{TARGET}/binary");
    let auth = ("authorization", basic("edge-dl", &agent_token));
    let (st, h, body) = get(&state, &uri, std::slice::from_ref(&auth)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, whole);
    let etag = h["etag"].to_str().unwrap().to_string();
    let (st, h, body) = get(
        &state,
        &uri,
        &[
            auth.clone(),
            ("range", "bytes=150000-".into()),
            ("if-range", etag.clone()),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert_eq!(h["content-range"], "bytes 150000-199999/200000");
    assert_eq!(body, whole[150_000..]);
    let (st, _, body) = get(
        &state,
        &uri,
        &[
            auth.clone(),
            ("range", "bytes=150000-".into()),
            ("if-range", "\"other\"".into()),
        ],
    )
    .await;
    assert_eq!(
        (st, body.len()),
        (StatusCode::OK, 200_000),
        "another ETag: the whole file"
    );
    let (st, _, _) = get(
        &state,
        &uri,
        &[auth.clone(), ("range", "bytes=200000-".into())],
    )
    .await;
    assert_eq!(st, StatusCode::RANGE_NOT_SATISFIABLE);
    let (st, _, _) = get(
        &state,
        &uri,
        &[("authorization", basic("edge-dl", "wrong"))],
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, _) = get(&state, &uri, &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, body) = get(
        &state,
        &uri,
        &[("authorization", format!("Bearer {admin}"))],
    )
    .await;
    assert_eq!(
        (st, body.len()),
        (StatusCode::OK, 200_000),
        "a user token downloads too"
    );
    let (st, _, sig) = get(
        &state,
        &format!("/api/v1/releases/2.0.0/{TARGET}/signature"),
        std::slice::from_ref(&auth),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(sig, std::fs::read(releases::signature_path(&f)).unwrap());
    let (st, _, _) = get(
        &state,
        &format!("/api/v1/releases/9.9.9/{TARGET}/binary"),
        &[auth],
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

fn auth3(
    agent_id: &str,
    token: &str,
    version: &str,
    update: Option<AgentUpdateProgressPayload>,
) -> Envelope {
    Envelope::new(
        "auth-3",
        Message::Auth(AuthPayload {
            agent_id: agent_id.into(),
            auth_token: Secret::new(token),
            version: version.into(),
            capabilities: vec!["docker".into()],
            protocol_version: Some(3),
            signing_version: None,
            target: Some(TARGET.into()),
            update,
            labels: Default::default(),
        }),
    )
}

async fn agent_json(state: &server::AppState, admin: &str, id: &str) -> Value {
    let (st, a) = call(
        state,
        "GET",
        &format!("/api/v1/agents/{id}"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{a}");
    a
}

#[tokio::test]
async fn one_agent_is_updated_and_its_reports_are_kept() {
    let db = TestDb::sqlite();
    let state = state(&db).await;
    let admin = token(&state, "admin", Role::Admin).await;
    let (_, tok) = enrol(&state, &admin, "h-up", "edge-up").await;
    let (_, other_tok) = enrol(&state, &admin, "h-other", "edge-other").await;
    let (key, _, _) = releases::write_key_pair(&db.dir.path().join("k"), false).unwrap();
    let f = signed_release(db.dir.path(), &key, "3.0.0", TARGET);
    Shelf::new(db.dir.path())
        .add(
            &key.public_key(),
            &f,
            &releases::signature_path(&f),
            TARGET,
            "3.0.0",
        )
        .unwrap();
    let srv = spawn(&state).await;

    // Before the agent ever said its target: refused, nothing recorded.
    let (st, e) = call(
        &state,
        "POST",
        "/api/v1/agents/edge-up/update",
        Some(&admin),
        Some(json!({"version": "3.0.0"})),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_IMPLEMENTED, "{e}");

    let mut a = FakeAgent::connect(srv.addr, "edge-up").await;
    a.send(&auth3("edge-up", &tok, "2.9.0", None)).await;
    assert!(matches!(
        a.recv().await.unwrap().message,
        Message::AuthResponse(_)
    ));
    let mut other = FakeAgent::connect(srv.addr, "edge-other").await;
    other
        .send(&auth3("edge-other", &other_tok, "2.9.0", None))
        .await;
    assert!(matches!(
        other.recv().await.unwrap().message,
        Message::AuthResponse(_)
    ));
    assert_eq!(
        agent_json(&state, &admin, "edge-up").await["target"],
        TARGET
    );

    let (st, e) = call(
        &state,
        "POST",
        "/api/v1/agents/edge-up/update",
        Some(&admin),
        Some(json!({"version": "9.9.9"})),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{e}");
    let viewer = token(&state, "viewer", Role::Viewer).await;
    let (st, _) = call(
        &state,
        "POST",
        "/api/v1/agents/edge-up/update",
        Some(&viewer),
        Some(json!({"version": "3.0.0"})),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, row) = call(
        &state,
        "POST",
        "/api/v1/agents/edge-up/update",
        Some(&admin),
        Some(json!({"version": "3.0.0"})),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{row}");
    assert_eq!(row["state"], "pending");
    assert_eq!(row["from_version"], "2.9.0");
    let id = row["id"].as_str().unwrap().to_string();

    let msg = loop {
        let env = a.recv().await.expect("agent_update");
        if let Message::AgentUpdate(u) = env.message {
            break u;
        }
    };
    assert_eq!(msg.update_id, id);
    assert_eq!(msg.path, format!("/api/v1/releases/3.0.0/{TARGET}"));
    assert_eq!(
        (msg.version.as_str(), msg.target.as_str(), msg.size),
        ("3.0.0", TARGET, 200_000)
    );

    let report = |state: UpdateState, error: Option<ErrorBody>| AgentUpdateProgressPayload {
        update_id: id.clone(),
        state,
        version: "3.0.0".into(),
        bytes: Some(65536),
        error,
    };
    // Another agent cannot move this agent's update.
    other
        .send(&Envelope::new(
            "p0",
            Message::AgentUpdateProgress(report(UpdateState::Failed, None)),
        ))
        .await;
    a.send(&Envelope::new(
        "p1",
        Message::AgentUpdateProgress(report(UpdateState::Downloading, None)),
    ))
    .await;
    wait_until(Duration::from_secs(10), "downloading", || async {
        agent_json(&state, &admin, "edge-up").await["update"]["state"] == "downloading"
    })
    .await;
    assert_eq!(
        agent_json(&state, &admin, "edge-up").await["update"]["bytes"],
        65536
    );
    a.send(&Envelope::new(
        "p2",
        Message::AgentUpdateProgress(report(UpdateState::Restarting, None)),
    ))
    .await;
    drop(a);
    // The new version reports the outcome at its auth.
    let mut b = FakeAgent::connect(srv.addr, "edge-up").await;
    b.send(&auth3(
        "edge-up",
        &tok,
        "3.0.0",
        Some(report(UpdateState::Succeeded, None)),
    ))
    .await;
    assert!(matches!(
        b.recv().await.unwrap().message,
        Message::AuthResponse(_)
    ));
    wait_until(Duration::from_secs(10), "succeeded", || async {
        let a = agent_json(&state, &admin, "edge-up").await;
        a["update"]["state"] == "succeeded" && a["version"] == "3.0.0"
    })
    .await;
    // A final state stays.
    let late = report(
        UpdateState::RolledBack,
        Some(ErrorBody::new(ErrorCode::Timeout, "late")),
    );
    b.send(&Envelope::new("p3", Message::AgentUpdateProgress(late)))
        .await;
    let row = state.updates.get(&id).await.unwrap();
    assert_eq!(row.state, "succeeded");
    let moved = state
        .store
        .set_agent_update_state(&id, &row.agent_ref, "rolled_back", None, None)
        .await
        .unwrap();
    assert!(!moved, "a final state is never left");
    assert_eq!(
        state
            .updates
            .wait(&id, Duration::from_secs(1))
            .await
            .unwrap()
            .state,
        "succeeded"
    );

    // An agent that went away: the update fails with the reason at once.
    drop(b);
    wait_until(Duration::from_secs(10), "offline", || async {
        agent_json(&state, &admin, "edge-up").await["connected"] == false
    })
    .await;
    let (st, row) = call(
        &state,
        "POST",
        "/api/v1/agents/edge-up/update",
        Some(&admin),
        Some(json!({"version": "3.0.0"})),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{row}");
    assert_eq!(row["state"], "failed", "{row}");
    assert_eq!(row["error"]["code"], "agent_offline", "{row}");
    srv.shutdown().await;
}
