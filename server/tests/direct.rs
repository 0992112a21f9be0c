//! Direct mode against the real dockerd: over unix:///var/run/docker.sock and over the
//! loopback TCP listener (tcp://127.0.0.1:23750, or DOCKER_CTL_TEST_DOCKER_TCP).
//! These tests fail (never skip) when dockerd is not there.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use server::store::Role;
use std::io::{Read, Write};
use std::time::Duration;

const SOCKET: &str = "/var/run/docker.sock";
const IMAGE: &str = "docker-ctl-test/busybox:latest";

fn tcp_addr() -> String {
    std::env::var("DOCKER_CTL_TEST_DOCKER_TCP").unwrap_or_else(|_| "127.0.0.1:23750".into())
}

/// What the daemon itself says, over a raw HTTP/1.0 request on its socket.
fn daemon_get(path: &str) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(SOCKET).unwrap_or_else(|e| {
        panic!("dockerd is required at {SOCKET} (run scripts/services.sh): {e}")
    });
    write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    let (_, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("daemon body for {path}: {e}: {body}"))
}

fn require_docker() {
    assert!(
        std::path::Path::new(SOCKET).exists(),
        "dockerd is required: {SOCKET} does not exist (run scripts/services.sh)"
    );
    let images = daemon_get("/images/json");
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["RepoTags"].to_string().contains(IMAGE)),
        "the test image {IMAGE} is missing (scripts/services.sh builds it)"
    );
}

async fn run_op(
    st: &server::AppState,
    tok: &str,
    host: &str,
    operation: &str,
    params: Value,
) -> (StatusCode, Value) {
    call(
        st,
        "POST",
        &format!("/api/v1/hosts/{host}/operations"),
        Some(tok),
        Some(json!({"operation": operation, "params": params})),
    )
    .await
}

async fn ok(st: &server::AppState, tok: &str, host: &str, operation: &str, params: Value) -> Value {
    let (s, v) = run_op(st, tok, host, operation, params).await;
    assert_eq!(s, StatusCode::OK, "{operation}: {v}");
    assert_eq!(v["status"], "success");
    v["data"].clone()
}

async fn lifecycle(docker_url: &str) {
    require_docker();
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let (s, h) = call(
        &st,
        "POST",
        "/api/v1/hosts",
        Some(&admin),
        Some(json!({"name": "local", "docker_url": docker_url})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    let host = h["id"].as_str().unwrap().to_string();
    let (_, h) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{host}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(h["status"], "online", "{h}");
    assert!(h["api_version"].is_string());

    let ping = ok(&st, &admin, &host, "system.ping", json!({})).await;
    assert_eq!(ping["ok"], true);
    let version = ok(&st, &admin, &host, "system.version", json!({})).await;
    assert_eq!(version["ApiVersion"], daemon_get("/version")["ApiVersion"]);

    let name = format!(
        "dctl-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let created = ok(&st, &admin, &host, "container.create", json!({"image": IMAGE, "name": name, "cmd": ["sh", "-c", "echo hello-from-test; sleep 60"], "labels": {"dctl.test": "1"}})).await;
    let id = created["id"].as_str().unwrap().to_string();
    let started = ok(&st, &admin, &host, "container.start", json!({"id": id})).await;
    assert_eq!(started["changed"], true);
    let again = ok(&st, &admin, &host, "container.start", json!({"id": name})).await;
    assert_eq!(again["changed"], false, "304 from the daemon");

    // container.list matches the daemon's own /containers/json: same ids, names and states.
    // Other tests create and remove containers meanwhile, so the two snapshots are taken
    // back to back and compared again (a bounded number of times) until none of that
    // happened between them.
    let key = |v: &Value, id: &str, name: &str, state: &str| -> Vec<(String, String, String)> {
        let mut out: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c[id].as_str().unwrap_or_default().to_string(),
                    c[name].to_string().replace('/', ""),
                    c[state].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let theirs_key = |theirs: &Value| -> Vec<(String, String, String)> {
        theirs
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["Id"].as_str().unwrap().to_string(),
                    format!(
                        "\"{}\"",
                        c["Names"][0].as_str().unwrap().trim_start_matches('/')
                    ),
                    c["State"].as_str().unwrap().to_string(),
                )
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let mut attempts = 0;
    let ours = loop {
        let ours = ok(&st, &admin, &host, "container.list", json!({"all": true})).await;
        let theirs = daemon_get("/containers/json?all=1");
        let (ours_k, theirs_k) = (key(&ours, "id", "name", "status"), theirs_key(&theirs));
        assert!(!ours_k.is_empty());
        attempts += 1;
        if ours_k == theirs_k {
            break ours;
        }
        assert!(
            attempts < 20,
            "container.list differs from the daemon's: {ours_k:?} vs {theirs_k:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(ours
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == id.as_str() && c["status"] == "running"));

    let exec = ok(
        &st,
        &admin,
        &host,
        "container.exec",
        json!({"id": id, "cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
    )
    .await;
    assert_eq!(
        (
            exec["stdout"].as_str(),
            exec["stderr"].as_str(),
            exec["exit_code"].as_i64()
        ),
        (Some("out\n"), Some("err\n"), Some(3))
    );
    let st2 = st.clone();
    let (a2, h2, i2) = (admin.clone(), host.clone(), id.clone());
    wait_until(
        Duration::from_secs(10),
        "the container's output is in its logs",
        move || {
            let (st, a, h, i) = (st2.clone(), a2.clone(), h2.clone(), i2.clone());
            async move {
                ok(&st, &a, &h, "container.logs", json!({"id": i})).await["stdout"]
                    .as_str()
                    .unwrap_or("")
                    .contains("hello-from-test")
            }
        },
    )
    .await;
    let inspect = ok(&st, &admin, &host, "container.inspect", json!({"id": name})).await;
    assert_eq!(inspect["id"], id.as_str());
    let stats = ok(&st, &admin, &host, "container.stats", json!({"id": id})).await;
    assert!(stats["memory_usage_bytes"].is_number());
    let stopped = ok(
        &st,
        &admin,
        &host,
        "container.stop",
        json!({"id": id, "t": 0}),
    )
    .await;
    assert_eq!(stopped["changed"], true);
    ok(
        &st,
        &admin,
        &host,
        "container.remove",
        json!({"id": id, "force": true}),
    )
    .await;
    let (s, v) = run_op(&st, &admin, &host, "container.inspect", json!({"id": id})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No such container"),
        "the daemon's message is kept: {v}"
    );

    let images = ok(&st, &admin, &host, "image.list", json!({})).await;
    assert!(images
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["tags"].to_string().contains(IMAGE)));
    let vol = format!("{name}-vol");
    let v = ok(&st, &admin, &host, "volume.create", json!({"name": vol})).await;
    assert_eq!(v["name"], vol.as_str());
    ok(&st, &admin, &host, "volume.remove", json!({"id": vol})).await;
    let net = format!("{name}-net");
    let n = ok(&st, &admin, &host, "network.create", json!({"name": net})).await;
    assert!(n["id"].is_string());
    ok(&st, &admin, &host, "network.remove", json!({"id": net})).await;
    // image.pull needs a registry, which this machine does not have: the error is mapped.
    let (s, v) = run_op(
        &st,
        &admin,
        &host,
        "image.pull",
        json!({"image": "127.0.0.1:1/none/such", "tag": "x"}),
    )
    .await;
    assert!(s.is_client_error() || s.is_server_error(), "{s} {v}");
    assert_eq!(v["status"], "error");
}

#[tokio::test]
async fn direct_over_unix_socket() {
    lifecycle(&format!("unix://{SOCKET}")).await;
}

#[tokio::test]
async fn direct_over_tcp() {
    let addr = tcp_addr();
    assert!(
        std::net::TcpStream::connect(&addr).is_ok(),
        "dockerd must listen on tcp://{addr} for this test (scripts/services.sh starts it so)"
    );
    lifecycle(&format!("tcp://{addr}")).await;
}

#[tokio::test]
async fn direct_unreachable_daemon() {
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    for url in ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"] {
        let (_, h) = call(
            &st,
            "POST",
            "/api/v1/hosts",
            Some(&admin),
            Some(json!({"name": url, "docker_url": url})),
        )
        .await;
        let (s, v) = run_op(
            &st,
            &admin,
            h["id"].as_str().unwrap(),
            "container.list",
            json!({}),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::BAD_GATEWAY, Some("docker_unreachable")),
            "{url}: {v}"
        );
    }
}
