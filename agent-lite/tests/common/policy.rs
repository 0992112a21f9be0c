//! An in-process agent with a local policy behind a test server, for policy tests against
//! the real dockerd: catalog commands, passthrough requests, and what their refusals say.
#![allow(dead_code)]

use super::tunnel::{Request, StreamState, Tunnel};
use super::ws_server::TestServer;
use super::{agent_config, spawn_agent};
use agent_lite::config::Config;
use protocol::{CommandResponsePayload, ErrorBody, ErrorCode};
use serde_json::Value;
use std::time::Duration;

pub const IMAGE: &str = "docker-ctl-test/busybox:latest";
pub const S30: Duration = Duration::from_secs(30);

pub struct PolicyAgent {
    pub t: Tunnel,
    shutdown: agent_lite::Shutdown,
    _server: TestServer,
}

impl Drop for PolicyAgent {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Starts an agent whose config `tweak` adjusts (its `policy:`, its Docker socket).
pub fn start(tweak: impl FnOnce(&mut Config)) -> PolicyAgent {
    super::docker::require_docker();
    let server = TestServer::start();
    let mut cfg = agent_config(&server.url(), &super::docker::unique("policy"));
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let (shutdown, _t) = spawn_agent(cfg);
    let mut conn = server.next_conn(Duration::from_secs(10));
    conn.accept_auth(5);
    PolicyAgent {
        t: Tunnel::new(conn),
        shutdown,
        _server: server,
    }
}

impl PolicyAgent {
    pub fn command(&mut self, operation: &str, params: Value) -> Result<Value, ErrorBody> {
        let id = super::docker::unique("cmd");
        match self.t.conn.command(&id, operation, params, S30) {
            CommandResponsePayload::Success { data } => Ok(data),
            CommandResponsePayload::Error { error } => Err(error),
        }
    }

    /// The command is refused as `forbidden`, naming `rule`.
    pub fn forbidden_op(&mut self, operation: &str, params: Value, rule: &str) {
        let e = self
            .command(operation, params.clone())
            .expect_err("the policy must refuse it");
        assert_eq!(e.code, ErrorCode::Forbidden, "{operation} {params}: {e}");
        assert!(
            e.message
                .contains(&format!("forbidden by agent policy: {rule}")),
            "{operation} {params}: {e}"
        );
    }

    /// The stream is answered 403 with a message naming `rule`.
    pub fn forbidden_stream(&mut self, req: Request<'_>, rule: &str) {
        let what = format!("{} {}", req.method, req.path);
        let r = self.t.request(req);
        let msg = message(&r);
        assert_eq!(r.status, Some(403), "{what}: {msg}");
        assert!(
            msg.contains(&format!("forbidden by agent policy: {rule}")),
            "{what}: {msg}"
        );
    }

    /// The stream is answered with `status` and a message containing `needle`.
    pub fn refused_stream(&mut self, req: Request<'_>, status: u16, needle: &str) {
        let what = format!("{} {}", req.method, req.path);
        let r = self.t.request(req);
        let msg = message(&r);
        assert_eq!(r.status, Some(status), "{what}: {msg}");
        assert!(msg.contains(needle), "{what}: {msg}");
    }
}

/// The `message` of a Docker-style JSON error answer (or the raw text).
pub fn message(s: &StreamState) -> String {
    serde_json::from_slice::<Value>(&s.data)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&s.data).into_owned())
}

pub fn json_of(s: &StreamState) -> Value {
    serde_json::from_slice(&s.data)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&s.data)))
}
