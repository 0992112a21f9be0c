//! The cross-built edge binaries (aarch64-musl and armv7-gnueabihf, static) run under
//! qemu-user against the real dockerd and a test server, and answer `container.list`.
//!
//! Slow on a fresh checkout: builds missing or stale binaries with scripts/build-agent.sh
//! (in a separate target directory). Fails with a clear message when qemu, a Rust target or
//! a cross linker is missing; it never skips.

mod common;

use common::docker::{client, op, require_docker, unique, Cleanup};
use common::ws_server::{Frame, TestServer};
use protocol::{CommandResponsePayload, Message};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn newest_source(dir: &Path, newest: &mut SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            newest_source(&p, newest);
        } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
            *newest = (*newest).max(m);
        }
    }
}

/// The binary for `target`, built when missing or older than the sources.
fn binary(target: &str) -> PathBuf {
    let ws = workspace();
    let bin = ws.join("dist/agent").join(target).join("docker-ctl-agent");
    let mut newest = SystemTime::UNIX_EPOCH;
    for d in ["agent-lite/src", "protocol/src"] {
        newest_source(&ws.join(d), &mut newest);
    }
    for f in [
        "Cargo.lock",
        "Cargo.toml",
        "agent-lite/Cargo.toml",
        ".cargo/config.toml",
    ] {
        if let Ok(m) = std::fs::metadata(ws.join(f)).and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
    }
    let fresh = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .is_ok_and(|m| m >= newest);
    if !fresh {
        let target_dir = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| ws.join("target"));
        let out = Command::new(ws.join("scripts/build-agent.sh"))
            .arg(target)
            .env("CARGO_TARGET_DIR", target_dir.join("edge-build"))
            .current_dir(&ws)
            .output()
            .expect("run scripts/build-agent.sh");
        assert!(
            out.status.success(),
            "building {target} failed (is the Rust target installed and its linker from .cargo/config.toml present? see scripts/services.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

fn require_qemu(qemu: &str) {
    match Command::new(qemu).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!("{qemu} is required to run the cross-built agent (Debian: apt-get install qemu-user); not skipping"),
    }
}

fn run_under_qemu(qemu: &str, target: &str) {
    require_docker();
    require_qemu(qemu);
    let bin = binary(target);
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let label = unique("qemu");
    let name = unique(&format!(
        "agent-qemu-{}",
        target.split('-').next().unwrap_or("x")
    ));
    let id = op(
        &c,
        "container.create",
        json!({"name": name, "image": "docker-ctl-test/busybox:latest", "cmd": ["sleep", "300"], "labels": {"docker-ctl-qemu": label}}),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cleanup.container(&id);

    let server = TestServer::start();
    let agent_id = unique("qemu-agent");
    let mut child = Command::new(qemu)
        .arg(&bin)
        .args([
            "--server",
            &server.url(),
            "--agent-id",
            &agent_id,
            "--docker-socket",
            "unix:///var/run/docker.sock",
        ])
        .env("DOCKER_CTL_TOKEN", "qemu-token-123456")
        .env_remove("DOCKER_CTL_CONFIG")
        .spawn()
        .unwrap_or_else(|e| panic!("running {} under {qemu}: {e}", bin.display()));
    let mut conn = server.next_conn(Duration::from_secs(30));
    let auth = conn.accept_auth(2);
    assert_eq!(auth.agent_id, agent_id);
    let r = conn.command(
        "qemu-list",
        "container.list",
        json!({"all": true, "filters": {"label": [format!("docker-ctl-qemu={label}")]}}),
        Duration::from_secs(30),
    );
    let CommandResponsePayload::Success { data } = r else {
        panic!("{target}: container.list failed: {r:?}")
    };
    let items = data.as_array().expect("a list");
    assert_eq!(items.len(), 1, "{target}: {data}");
    assert_eq!(items[0]["id"], json!(id));
    assert_eq!(items[0]["name"], json!(name));
    assert_eq!(items[0]["status"], "created");
    // The same answer as the mapping over the host's own client.
    let direct = op(
        &c,
        "container.list",
        json!({"all": true, "filters": {"label": [format!("docker-ctl-qemu={label}")]}}),
    )
    .unwrap();
    assert_eq!(direct[0]["id"], items[0]["id"]);
    assert_eq!(direct[0]["image"], items[0]["image"]);

    conn.expect(Duration::from_secs(10), "heartbeat", |e| {
        matches!(e.message, Message::Heartbeat(_))
    });
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let sent = Instant::now();
    conn.expect(Duration::from_secs(10), "disconnect", |e| {
        matches!(e.message, Message::Disconnect(_))
    });
    loop {
        match conn.next_frame(Duration::from_secs(10)) {
            Some(Frame::Close(code)) => {
                assert_eq!(code, Some(1000));
                break;
            }
            Some(Frame::Msg(_)) => {}
            other => panic!("{target}: expected a close frame, got {other:?}"),
        }
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "{target}: no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{target}: exit {status:?}");
}

#[test]
fn aarch64_musl_under_qemu_answers_container_list() {
    run_under_qemu("qemu-aarch64", "aarch64-unknown-linux-musl");
}

#[test]
fn armv7_under_qemu_answers_container_list() {
    run_under_qemu("qemu-arm", "armv7-unknown-linux-gnueabihf");
}
