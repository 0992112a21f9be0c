//! Docker API passthrough streams through the real agent (in-process) against the real
//! dockerd, with the test WebSocket server playing the server. Fails (never skips) without
//! dockerd.

mod common;

use common::docker::{client, op, unique, Cleanup};
use common::tunnel::{Request, StreamState, Tunnel};
use common::ws_server::TestServer;
use common::{agent_config, spawn_agent};
use protocol::{Envelope, Message, STREAM_WINDOW};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker-ctl-test/busybox:latest";
const S30: Duration = Duration::from_secs(30);

struct Setup {
    tunnel: Tunnel,
    shutdown: agent_lite::Shutdown,
    _server: TestServer,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn setup(name: &str, tweak: impl FnOnce(&mut agent_lite::config::Config)) -> Setup {
    common::docker::require_docker();
    let server = TestServer::start();
    let mut cfg = agent_config(&server.url(), &unique(name));
    tweak(&mut cfg);
    let (shutdown, _t) = spawn_agent(cfg);
    let mut conn = server.next_conn(Duration::from_secs(10));
    conn.accept_auth(1);
    Setup {
        tunnel: Tunnel::new(conn),
        shutdown,
        _server: server,
    }
}

fn body_json(s: &StreamState) -> Value {
    serde_json::from_slice(&s.data)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&s.data)))
}

/// A one-file ustar archive.
fn tar_one(name: &str, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// Splits Docker's multiplexed stdout/stderr stream.
fn demux(raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut rest = raw;
    while rest.len() >= 8 {
        let n = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        assert!(rest.len() >= 8 + n, "truncated multiplexed frame");
        match rest[0] {
            1 => out.extend_from_slice(&rest[8..8 + n]),
            2 => err.extend_from_slice(&rest[8..8 + n]),
            s => panic!("unexpected stream type {s}"),
        }
        rest = &rest[8 + n..];
    }
    assert!(rest.is_empty(), "trailing bytes in the multiplexed stream");
    (out, err)
}

fn running_container<'a>(
    cleanup: &mut Cleanup<'a>,
    c: &'a agent_lite::daemon::DockerClient,
    cmd: &[&str],
) -> String {
    let created = op(
        c,
        "container.create",
        json!({"name": unique("pt-ctr"), "image": IMAGE, "cmd": cmd}),
    )
    .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    cleanup.container(&id);
    op(c, "container.start", json!({"id": id})).unwrap();
    id
}

#[test]
fn ping_version_and_listing() {
    let mut s = setup("pt-list", |_| {});
    let t = &mut s.tunnel;
    let ping = t.request(Request::new("HEAD", "/_ping"));
    assert_eq!(ping.status, Some(200));
    assert_eq!(
        ping.header("Api-Version"),
        Some("1.41"),
        "{:?}",
        ping.headers
    );
    assert!(ping.header("Ostype").is_some() && ping.header("Docker-Experimental").is_some());
    assert!(ping.data.is_empty() && ping.end_error.is_none());
    // Hop-by-hop headers are not forwarded.
    assert!(ping.header("Connection").is_none() && ping.header("Content-Length").is_none());

    let ping = t.request(Request::get("/_ping"));
    assert_eq!(ping.data, b"OK");

    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let id = running_container(&mut cleanup, &c, &["sleep", "300"]);
    let list = t.request(Request::get("/v1.41/containers/json?all=1"));
    assert_eq!(list.status, Some(200));
    assert_eq!(list.header("Content-Type"), Some("application/json"));
    let v = body_json(&list);
    assert!(
        v.as_array().unwrap().iter().any(|c| c["Id"] == json!(id)),
        "{v}"
    );
    // A daemon error keeps its status and JSON message.
    let missing = t.request(Request::get("/v1.41/containers/no-such-ctr-xyz/json"));
    assert_eq!(missing.status, Some(404));
    assert!(body_json(&missing)["message"]
        .as_str()
        .unwrap()
        .contains("No such container"));
}

#[test]
fn refused_paths_get_docker_style_errors() {
    let mut s = setup("pt-refuse", |_| {});
    let t = &mut s.tunnel;
    let r = t.request(Request::new("POST", "/v1.41/swarm/init"));
    assert_eq!(r.status, Some(403));
    assert!(body_json(&r)["message"]
        .as_str()
        .unwrap()
        .contains("not an allowed Docker API endpoint"));
    assert!(r.end_error.is_none());
    let r = t.request(Request::get("/v1.41/containers/../../etc/passwd"));
    assert_eq!(r.status, Some(400));
    assert!(body_json(&r)["message"].as_str().unwrap().contains(".."));
    let r = t.request(Request::get("/v1.41/containers/%2e%2e/json"));
    assert_eq!(r.status, Some(400));
    let r = t.request(Request::get("/v1.41/containers/json?all=1%0d%0a\r\nX: y"));
    assert_eq!(r.status, Some(400));
    // A refused stream with a body: the body is ignored and the stream still answers.
    let r = t.request(Request::json("POST", "/v1.41/secrets/create", b"{}"));
    assert_eq!(r.status, Some(403));
}

#[test]
fn archive_upload_chunked_and_download_with_path_stat() {
    let mut s = setup("pt-archive", |_| {});
    let t = &mut s.tunnel;
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let id = running_container(&mut cleanup, &c, &["sleep", "300"]);
    // 600 KiB: more than two windows, so the agent must grant credit as it writes.
    let content: Vec<u8> = (0..600 * 1024u32).map(|i| (i % 251) as u8).collect();
    let tar = tar_one("big.bin", &content);
    let path = format!("/v1.41/containers/{id}/archive?path=%2Ftmp");
    let mut req = Request::new("PUT", &path);
    req.headers = vec![("Content-Type".into(), "application/x-tar".into())];
    req.body = Some(&tar);
    let put = t.request(req);
    assert_eq!(
        put.status,
        Some(200),
        "{}",
        String::from_utf8_lossy(&put.data)
    );
    assert!(
        t.agent_credit.values().sum::<usize>() >= tar.len(),
        "the agent credits what it wrote"
    );

    let get = t.request(Request::get(&format!(
        "/v1.41/containers/{id}/archive?path=%2Ftmp%2Fbig.bin"
    )));
    assert_eq!(get.status, Some(200));
    let stat = get
        .header("X-Docker-Container-Path-Stat")
        .expect("path stat header");
    assert!(!stat.is_empty());
    assert_eq!(get.header("Content-Type"), Some("application/x-tar"));
    // The archive holds our file back.
    let data = &get.data;
    assert!(data.len() >= 512 + content.len());
    let size = usize::from_str_radix(
        std::str::from_utf8(&data[124..135])
            .unwrap()
            .trim_matches('\0'),
        8,
    )
    .unwrap();
    assert_eq!(size, content.len());
    assert!(
        data[512..512 + content.len()] == content[..],
        "content differs"
    );
}

#[test]
fn image_save_streams_within_the_window_and_resumes_on_credit() {
    let mut s = setup("pt-save", |_| {});
    let t = &mut s.tunnel;
    let path = "/v1.41/images/get?names=docker-ctl-test%2Fbusybox%3Alatest";
    let id = t.next_id();
    t.open_with_id(id, &Request::get(path), false);
    t.state(id).auto_credit = false;
    let w = STREAM_WINDOW as usize;
    t.until(S30, "a full window", |t| {
        t.streams.get(&id).is_some_and(|s| s.data.len() >= w)
    });
    assert_eq!(t.streams[&id].status, Some(200));
    // Nothing more comes without credit (the window is exactly 256 KiB).
    let quiet_until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < quiet_until {
        t.pump(Duration::from_millis(50));
    }
    assert_eq!(t.streams[&id].data.len(), w, "the agent overran the window");
    assert!(!t.streams[&id].ended);
    // Credit for 64 KiB: exactly that much more.
    t.credit(id, 64 * 1024);
    t.until(S30, "64 KiB more", |t| {
        t.streams[&id].data.len() >= w + 64 * 1024
    });
    let quiet_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < quiet_until {
        t.pump(Duration::from_millis(50));
    }
    assert_eq!(t.streams[&id].data.len(), w + 64 * 1024);
    // Then everything, crediting as it arrives.
    let pending = t.streams[&id].uncredited as u32;
    t.credit(id, pending);
    t.state(id).auto_credit = true;
    let done = t.finish(id, S30);
    assert!(
        done.ended && done.end_error.is_none(),
        "{:?}",
        done.end_error
    );
    // Same bytes as the daemon gives directly.
    let direct = client()
        .send(
            protocol::mapping::Method::Get,
            path,
            None,
            Some(Instant::now() + S30),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(done.data.len(), direct.body.len());
    assert!(done.data.len() > w * 2, "the image is big enough to test");
    assert!(done.frames >= done.data.len() / protocol::STREAM_CHUNK);
}

#[test]
fn exec_start_hijacks_with_half_close_and_exit_code() {
    let mut s = setup("pt-exec", |_| {});
    let t = &mut s.tunnel;
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let id = running_container(&mut cleanup, &c, &["sleep", "300"]);
    let create = json!({"AttachStdin": true, "AttachStdout": true, "AttachStderr": true,
        "Tty": false, "Cmd": ["sh", "-c", "cat; echo err >&2; exit 7"]})
    .to_string();
    let r = t.request(Request::json(
        "POST",
        &format!("/v1.41/containers/{id}/exec"),
        create.as_bytes(),
    ));
    assert_eq!(r.status, Some(201), "{}", String::from_utf8_lossy(&r.data));
    let exec_id = body_json(&r)["Id"].as_str().unwrap().to_string();

    let start_path = format!("/v1.41/exec/{exec_id}/start");
    let mut req = Request::json("POST", &start_path, br#"{"Detach":false,"Tty":false}"#);
    req.upgrade = true;
    let sid = t.open(req);
    t.until(S30, "101", |t| {
        t.streams.get(&sid).is_some_and(|s| s.status.is_some())
    });
    assert_eq!(t.streams[&sid].status, Some(101));
    assert_eq!(
        t.streams[&sid].header("Content-Type"),
        Some("application/vnd.docker.raw-stream")
    );
    t.send_data(sid, b"hello ");
    t.send_data(sid, b"through the tunnel\n");
    // Half-close: cat sees end of input, then the process exits.
    t.end(sid);
    let done = t.finish(sid, S30);
    assert!(
        done.ended && done.end_error.is_none(),
        "{:?}",
        done.end_error
    );
    let (out, err) = demux(&done.data);
    assert_eq!(String::from_utf8_lossy(&out), "hello through the tunnel\n");
    assert_eq!(String::from_utf8_lossy(&err), "err\n");

    let inspect = common::wait_for(Duration::from_secs(10), || {
        let r = t.request(Request::get(&format!("/v1.41/exec/{exec_id}/json")));
        let v = body_json(&r);
        (v["Running"] == json!(false)).then_some(v)
    });
    assert_eq!(inspect["ExitCode"], json!(7));
}

#[test]
fn tty_exec_echoes_keystrokes() {
    let mut s = setup("pt-tty", |_| {});
    let t = &mut s.tunnel;
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let id = running_container(&mut cleanup, &c, &["sleep", "300"]);
    let create = json!({"AttachStdin": true, "AttachStdout": true, "AttachStderr": true,
        "Tty": true, "Cmd": ["sh"]})
    .to_string();
    let r = t.request(Request::json(
        "POST",
        &format!("/v1.41/containers/{id}/exec"),
        create.as_bytes(),
    ));
    let exec_id = body_json(&r)["Id"].as_str().unwrap().to_string();
    let path = format!("/v1.41/exec/{exec_id}/start");
    let mut req = Request::json("POST", &path, br#"{"Detach":false,"Tty":true}"#);
    req.upgrade = true;
    let sid = t.open(req);
    t.until(S30, "101", |t| {
        t.streams.get(&sid).is_some_and(|s| s.status.is_some())
    });
    assert_eq!(t.streams[&sid].status, Some(101));
    t.send_data(sid, b"echo tty-$((40+2))\r");
    t.until(S30, "the command's output", |t| {
        String::from_utf8_lossy(&t.streams[&sid].data).contains("tty-42")
    });
    t.send_data(sid, b"exit 5\r");
    let done = t.finish(sid, S30);
    assert!(done.ended);
    let inspect = common::wait_for(Duration::from_secs(10), || {
        let r = t.request(Request::get(&format!("/v1.41/exec/{exec_id}/json")));
        let v = body_json(&r);
        (v["Running"] == json!(false)).then_some(v)
    });
    assert_eq!(inspect["ExitCode"], json!(5));
}

#[test]
fn heartbeats_and_commands_flow_while_a_stream_is_saturated() {
    let mut s = setup("pt-busy", |_| {});
    let t = &mut s.tunnel;
    let c = client();
    let mut cleanup = Cleanup::new(&c);
    let id = running_container(&mut cleanup, &c, &["sleep", "300"]);
    let create = json!({"AttachStdout": true, "AttachStderr": true, "Tty": false,
        "Cmd": ["cat", "/dev/zero"]})
    .to_string();
    let r = t.request(Request::json(
        "POST",
        &format!("/v1.41/containers/{id}/exec"),
        create.as_bytes(),
    ));
    let exec_id = body_json(&r)["Id"].as_str().unwrap().to_string();
    let path = format!("/v1.41/exec/{exec_id}/start");
    let mut req = Request::json("POST", &path, br#"{"Detach":false,"Tty":false}"#);
    req.upgrade = true;
    let sid = t.open(req);
    t.state(sid).discard = true;
    let start = Instant::now();
    let mut pinged = None;
    t.heartbeats.clear();
    while start.elapsed() < Duration::from_millis(3500) {
        t.pump(Duration::from_millis(20));
        if pinged.is_none() && start.elapsed() > Duration::from_secs(1) {
            t.conn.send(&Envelope::new(
                "cmd-ping",
                Message::Command(protocol::CommandPayload {
                    operation: "system.ping".into(),
                    params: json!({}),
                    timeout: None,
                    idempotency_key: None,
                }),
            ));
            pinged = Some(Instant::now());
        }
    }
    let moved = t.streams[&sid].total;
    eprintln!("saturated stream moved {moved} bytes in 3.5 s");
    assert!(moved > 8 << 20, "the stream moved only {moved} bytes");
    assert!(
        t.heartbeats.len() >= 2,
        "heartbeats while saturated: {}",
        t.heartbeats.len()
    );
    let answered = t
        .others
        .iter()
        .any(|e| e.id == "cmd-ping" && matches!(e.message, Message::CommandResponse(_)));
    assert!(
        answered,
        "the command was not answered while the stream was busy"
    );
    t.cancel(sid);
}

#[test]
fn at_most_max_streams_are_open() {
    let mut s = setup("pt-max", |_| {});
    let t = &mut s.tunnel;
    let mut ids = Vec::new();
    for _ in 0..protocol::MAX_STREAMS {
        ids.push(t.open(Request::get("/v1.41/events")));
    }
    t.until(Duration::from_secs(60), "every stream answered", |t| {
        ids.iter()
            .all(|id| t.streams.get(id).is_some_and(|s| s.status.is_some()))
    });
    let extra = t.open(Request::get("/v1.41/events"));
    let r = t.finish(extra, S30);
    assert!(r.status.is_none());
    let e = r.end_error.expect("an error");
    assert_eq!(e.code, protocol::ErrorCode::RateLimited, "{e}");
    // Once one ends, a new stream fits again.
    t.cancel(ids[0]);
    common::wait_for(S30, || {
        let id = t.open(Request::get("/_ping"));
        let r = t.finish(id, S30);
        (r.status == Some(200)).then_some(())
    });
    for id in ids {
        t.cancel(id);
    }
}

#[test]
fn a_small_request_adds_little_latency() {
    let mut s = setup("pt-latency", |_| {});
    let t = &mut s.tunnel;
    // Let the session settle into its idle read wait first.
    t.until(S30, "a heartbeat", |t| !t.heartbeats.is_empty());
    let mut times = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let r = t.request(Request::new("HEAD", "/_ping"));
        assert_eq!(r.status, Some(200));
        times.push(start.elapsed());
        // Idle again between requests, as a CLI command's requests are.
        let until = Instant::now() + Duration::from_millis(150);
        while Instant::now() < until {
            t.pump(Duration::from_millis(20));
        }
    }
    times.sort();
    eprintln!("HEAD /_ping through the agent: {times:?}");
    assert!(
        times[5] < Duration::from_millis(50),
        "median {:?}",
        times[5]
    );
}
