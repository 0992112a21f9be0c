//! Optional HMAC message signing (`agent.signing_key`): the agent signs every JSON message
//! and refuses (error `unauthorized`, not executed) altered, replayed, stale and unsigned ones;
//! after 5 refusals in a row it drops the link and reconnects. Needs dockerd.

mod common;

use common::docker::{client, op, require_docker, unique};
use common::ws_server::{ServerConn, TestServer};
use common::{agent_config, join_within, spawn_agent};
use protocol::signing::{sign, verify, Direction, NonceCache};
use protocol::{
    AgentSettings, AuthResponsePayload, AuthStatus, CommandPayload, CommandResponsePayload,
    Envelope, ErrorCode, Message,
};
use serde_json::json;
use std::time::{Duration, Instant};

const S10: Duration = Duration::from_secs(10);
const KEY: [u8; 32] = [7; 32];

fn now() -> i64 {
    protocol::time::parse_rfc3339(&protocol::time::now_rfc3339()).unwrap()
}

/// The server side of a signed link: checks every message from the agent.
struct Signed {
    conn: ServerConn,
    nonces: NonceCache,
    n: u64,
}

impl Signed {
    fn seal(&mut self, env: &Envelope) -> String {
        self.n += 1;
        sign(
            &KEY,
            Direction::ServerToAgent,
            &env.encode(),
            &format!("server-nonce-{:08}", self.n),
        )
        .unwrap()
    }

    fn send(&mut self, env: &Envelope) -> String {
        let text = self.seal(env);
        self.conn.send_text(&text);
        text
    }

    /// The next message from the agent, which must be validly signed.
    fn next(&mut self, limit: Duration) -> Envelope {
        let text = self
            .conn
            .next_text(limit)
            .unwrap_or_else(|f| panic!("connection ended: {f:?}"))
            .unwrap_or_else(|| panic!("no message within {limit:?}"));
        let t = now();
        let nonces = &mut self.nonces;
        verify(
            &KEY,
            Direction::AgentToServer,
            text.as_bytes(),
            t,
            &mut |n| nonces.check_and_insert(n, t),
        )
        .unwrap_or_else(|e| panic!("the agent's message does not verify ({e}): {text}"));
        Envelope::decode(text.as_bytes()).unwrap()
    }

    fn expect(&mut self, what: &str, mut pred: impl FnMut(&Envelope) -> bool) -> Envelope {
        let deadline = Instant::now() + S10;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} within {S10:?}");
            let env = self.next(left);
            if pred(&env) {
                return env;
            }
        }
    }

    fn accept_auth(&mut self) {
        let auth = self.expect("auth", |e| matches!(e.message, Message::Auth(_)));
        match &auth.message {
            Message::Auth(a) => assert_eq!(
                a.signing_version,
                Some(protocol::signing::SIGNING_VERSION),
                "a signing agent advertises its canonical form"
            ),
            _ => unreachable!(),
        }
        self.send(&Envelope::new(
            auth.id,
            Message::AuthResponse(AuthResponsePayload {
                status: AuthStatus::Authenticated,
                session_id: Some("signed".into()),
                config: Some(AgentSettings {
                    heartbeat_interval: Some(1),
                    command_timeout: Some(60),
                }),
                protocol_version: Some(protocol::PROTOCOL_VERSION),
                error: None,
            }),
        ));
    }

    /// The agent's answer to message `id`: a command_response or an error about it.
    fn answer(&mut self, id: &str) -> Message {
        self.expect(&format!("answer to {id}"), |e| match &e.message {
            Message::CommandResponse(_) => e.id == id,
            Message::Error(p) => p.ref_id.as_deref() == Some(id),
            _ => false,
        })
        .message
    }
}

fn command(id: &str, operation: &str, params: serde_json::Value) -> Envelope {
    Envelope::new(
        id,
        Message::Command(CommandPayload {
            operation: operation.into(),
            params,
            timeout: None,
            idempotency_key: Some(format!("key-{id}")),
        }),
    )
}

fn refused(m: &Message, why: &str) {
    match m {
        Message::Error(p) => {
            assert_eq!(p.error.code, ErrorCode::Unauthorized, "{p:?}");
            assert!(p.error.message.contains(why), "{p:?}");
            assert!(p.error.message.contains("not executed"), "{p:?}");
        }
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
}

#[test]
fn signed_traffic_works_and_altered_replayed_stale_and_unsigned_messages_are_refused() {
    require_docker();
    let c = client();
    let label = unique("signed");
    let labels = json!({ "docker-ctl-test-signed": label });
    let count = || {
        op(
            &c,
            "container.list",
            json!({"all": true, "filters": {"label": [format!("docker-ctl-test-signed={label}")]}}),
        )
        .unwrap()
        .as_array()
        .unwrap()
        .len()
    };
    struct Remove<'a>(&'a agent_lite::daemon::DockerClient, String);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let l = format!("docker-ctl-test-signed={}", self.1);
            if let Ok(v) = op(
                self.0,
                "container.list",
                json!({"all": true, "filters": {"label": [l]}}),
            ) {
                for c in v.as_array().cloned().unwrap_or_default() {
                    let _ = op(
                        self.0,
                        "container.remove",
                        json!({"id": c["id"], "force": true}),
                    );
                }
            }
        }
    }
    let _cleanup = Remove(&c, label.clone());

    let server = TestServer::start();
    let mut cfg = agent_config(&server.url(), &unique("agent-signed"));
    cfg.agent.signing_key = Some(hex::encode(KEY).into());
    let (shutdown, agent) = spawn_agent(cfg);
    let mut s = Signed {
        conn: server.next_conn(S10),
        nonces: NonceCache::default(),
        n: 0,
    };
    // auth and heartbeats are signed (checked by `next`).
    s.accept_auth();
    s.expect("heartbeat", |e| matches!(e.message, Message::Heartbeat(_)));

    // A valid signed command runs and its signed answer comes back.
    let ping = command("s-ping", "system.ping", json!({}));
    let ping_text = s.send(&ping);
    assert!(matches!(
        s.answer("s-ping"),
        Message::CommandResponse(CommandResponsePayload::Success { .. })
    ));

    // Altered payload: the create's image is changed after signing.
    let create = command(
        "s-alt",
        "container.create",
        json!({"image": "docker-ctl-test/busybox:latest", "cmd": ["true"], "labels": labels}),
    );
    let text = s.seal(&create);
    let altered = text.replace("\"cmd\":[\"true\"]", "\"cmd\":[\"false\"]");
    assert_ne!(altered, text);
    s.conn.send_text(&altered);
    refused(&s.answer("s-alt"), "signature does not match");

    // Replayed: the exact text of the ping again.
    s.conn.send_text(&ping_text);
    refused(&s.answer("s-ping"), "replay");

    // Stale: signed correctly, an hour old.
    let mut old = command(
        "s-old",
        "container.create",
        json!({"image": "docker-ctl-test/busybox:latest", "cmd": ["true"], "labels": labels}),
    );
    old.timestamp = protocol::time::format_rfc3339(now() - 3600, 0);
    s.send(&old);
    refused(&s.answer("s-old"), "window");

    // Unsigned.
    let plain = command(
        "s-plain",
        "container.create",
        json!({"image": "docker-ctl-test/busybox:latest", "cmd": ["true"], "labels": labels}),
    );
    s.conn.send(&plain);
    refused(&s.answer("s-plain"), "not signed");
    assert_eq!(count(), 0, "no refused create ran");

    // A valid create still works on the same link: the refusals were not in a row of 5.
    let ok = command(
        "s-ok",
        "container.create",
        json!({"image": "docker-ctl-test/busybox:latest", "cmd": ["true"], "labels": labels}),
    );
    s.send(&ok);
    assert!(matches!(
        s.answer("s-ok"),
        Message::CommandResponse(CommandResponsePayload::Success { .. })
    ));
    assert_eq!(count(), 1);

    // Reflected: signed in the agent-to-server direction (as the agent's own messages are),
    // so it is refused even though the key is right.
    let reflected = sign(
        &KEY,
        Direction::AgentToServer,
        &command(
            "s-refl",
            "container.create",
            json!({"image": "docker-ctl-test/busybox:latest", "cmd": ["true"], "labels": labels}),
        )
        .encode(),
        "reflected-nonce-1",
    )
    .unwrap();
    s.conn.send_text(&reflected);
    refused(&s.answer("s-refl"), "signature does not match");
    assert_eq!(count(), 1, "the reflected create did not run");
    s.send(&command("s-ok2", "system.ping", json!({})));
    assert!(matches!(
        s.answer("s-ok2"),
        Message::CommandResponse(CommandResponsePayload::Success { .. })
    ));

    // Five bad messages in a row: the agent drops the link and reconnects.
    for i in 0..5 {
        s.conn
            .send(&command(&format!("bad-{i}"), "system.ping", json!({})));
    }
    let deadline = Instant::now() + S10;
    loop {
        match s.conn.next_text(Duration::from_millis(500)) {
            Err(_) => break,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the agent kept the link after 5 bad messages"
            ),
        }
    }
    let mut s = Signed {
        conn: server.next_conn(Duration::from_secs(20)),
        nonces: NonceCache::default(),
        n: 1000,
    };
    s.accept_auth();
    s.send(&command("s-after", "system.ping", json!({})));
    assert!(matches!(
        s.answer("s-after"),
        Message::CommandResponse(CommandResponsePayload::Success { .. })
    ));
    shutdown.trigger();
    join_within(agent, S10).unwrap();
}

#[test]
fn an_unsigned_auth_response_is_refused_when_a_key_is_configured() {
    require_docker();
    let server = TestServer::start();
    let mut cfg = agent_config(&server.url(), &unique("agent-signed-auth"));
    cfg.agent.signing_key = Some(hex::encode(KEY).into());
    let (shutdown, agent) = spawn_agent(cfg);
    let mut conn = server.next_conn(S10);
    // The plain helper answers unsigned: the agent refuses it and stays unauthenticated.
    conn.accept_auth(1);
    let env = conn.expect(S10, "refusal", |e| matches!(e.message, Message::Error(_)));
    let Message::Error(p) = env.message else {
        unreachable!()
    };
    assert_eq!(p.error.code, ErrorCode::Unauthorized);
    assert!(p.error.message.contains("not signed"), "{p:?}");
    // Commands are not run either (no auth, and unsigned).
    conn.send(&command("u-1", "system.ping", json!({})));
    let env = conn.expect(S10, "refusal of u-1", |e| {
        matches!(&e.message, Message::Error(p) if p.ref_id.as_deref() == Some("u-1"))
            || matches!(e.message, Message::CommandResponse(_))
    });
    assert!(matches!(env.message, Message::Error(_)), "{env:?}");
    shutdown.trigger();
    join_within(agent, S10).unwrap();
}
