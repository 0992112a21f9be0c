//! Stacks and registries at rest and on the wire: the compose file, the env and registry
//! passwords are stored encrypted, and a stack's pull carries the stored registry
//! credentials to the daemon as `X-Registry-Auth` (a direct host on a recording daemon
//! stand-in: no registry can be reached here).

mod common;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use server::store::Role;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A stand-in daemon on port 0 that records each request's path and `X-Registry-Auth`, and
/// answers lists with `[]` and pulls with one progress line.
async fn recording_daemon() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let seen = s2.clone();
        async move {
            let path = req.uri().path().to_string();
            let auth = req
                .headers()
                .get("x-registry-auth")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            seen.lock().unwrap().push((path.clone(), auth));
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("api-version", "1.41".parse().unwrap());
            if path == "/_ping" {
                return (StatusCode::OK, headers, "OK".to_string()).into_response();
            }
            if path.ends_with("/images/create") {
                let body = "{\"status\":\"Downloaded newer image\"}\n".to_string();
                return (StatusCode::OK, headers, body).into_response();
            }
            if path.ends_with("/volumes") {
                return (StatusCode::OK, headers, "{\"Volumes\":[]}".to_string()).into_response();
            }
            if path.ends_with("/json") || path.ends_with("/networks") {
                return (StatusCode::OK, headers, "[]".to_string()).into_response();
            }
            let body = "{\"message\":\"not in this stand-in\"}".to_string();
            (StatusCode::NOT_FOUND, headers, body).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("tcp://{addr}"), seen)
}

#[tokio::test]
async fn compose_env_and_registry_passwords_are_encrypted_and_pulls_carry_the_credentials() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (daemon, seen) = recording_daemon().await;
    let (s, h) = call(
        &st,
        "POST",
        "/api/v1/hosts",
        Some(&admin),
        Some(json!({"name": "edge", "connection_mode": "direct", "docker_url": daemon})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    let host_id = h["id"].as_str().unwrap().to_string();

    let (s, r) = call(
        &st,
        "POST",
        "/api/v1/registries",
        Some(&admin),
        Some(
            json!({"server": "registry.example:5000", "username": "ci", "password": "hunter2-pw"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert!(!r.to_string().contains("hunter2"));
    let stored = st.store.list_registries().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].password_enc.starts_with("v1:"));
    assert!(!stored[0].password_enc.contains("hunter2"));
    assert!(!format!("{:?}", stored[0]).contains(&stored[0].password_enc));

    let compose = "services:\n  app:\n    image: registry.example:5000/team/app:1\n    environment:\n      TOKEN: inline-secret-value\n      KEY: ${KEY}\n";
    let (s, a) = call(
        &st,
        "POST",
        "/api/v1/stacks",
        Some(&admin),
        Some(
            json!({"name": "shop", "compose": compose, "env": {"KEY": "env-secret-value"},
                    "host_ids": [host_id]}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    assert_eq!(a["name"], "shop");
    assert_eq!(a["version"], 1);
    let v = st
        .store
        .get_stack_version("shop", 1)
        .await
        .unwrap()
        .unwrap();
    for enc in [&v.compose_enc, &v.env_enc] {
        assert!(enc.starts_with("v1:"));
        assert!(!enc.contains("secret-value"));
    }
    assert_eq!(
        st.keys.decrypt(&v.env_enc).unwrap().expose(),
        "{\"KEY\":\"env-secret-value\"}"
    );

    // The run pulls the image (the host lacks it) with the stored credentials, then fails
    // at its first create (the stand-in creates nothing): that host's failure, named.
    let deadline = Instant::now() + Duration::from_secs(30);
    let host = loop {
        let (_, s) = call(&st, "GET", "/api/v1/stacks/shop", Some(&admin), None).await;
        let h = s["hosts"][0].clone();
        if h["state"] == "failed" {
            break h;
        }
        assert!(Instant::now() < deadline, "the run did not end: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let msg = host["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("create network shop_default"), "{host}");
    let pulls: Vec<Option<String>> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.ends_with("/images/create"))
        .map(|(_, a)| a.clone())
        .collect();
    assert_eq!(pulls.len(), 1, "one pull");
    let header = pulls[0].clone().expect("X-Registry-Auth sent");
    let doc: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE
            .decode(header)
            .expect("base64url"),
    )
    .unwrap();
    assert_eq!(
        doc,
        json!({"username": "ci", "password": "hunter2-pw", "serveraddress": "registry.example:5000"})
    );
    // Other requests carry no credentials.
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| !p.ends_with("/images/create"))
        .all(|(_, a)| a.is_none()));

    // Every change is audited, and no secret reaches the audit log.
    let (_, audit) = call(&st, "GET", "/api/v1/audit?limit=200", Some(&admin), None).await;
    let text = audit.to_string();
    assert!(
        text.contains("stack.create") && text.contains("registry.create"),
        "{text}"
    );
    assert!(text.contains("stack:shop"), "the commands name the stack");
    for secret in ["hunter2", "secret-value"] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }

    // A viewer may read stacks but not change them.
    let viewer = token(&st, "viewer", Role::Viewer).await;
    let (s, _) = call(&st, "GET", "/api/v1/stacks", Some(&viewer), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &st,
        "POST",
        "/api/v1/stacks/shop/redeploy",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(&st, "GET", "/api/v1/stacks/nope", Some(&viewer), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
