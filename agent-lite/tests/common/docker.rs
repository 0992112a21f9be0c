//! Real-daemon helpers: a client, running one operation, unique names, cleanup on drop.
#![allow(dead_code)]

use agent_lite::daemon::{DockerClient, Endpoint};
use protocol::ErrorBody;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const SOCKET: &str = "/var/run/docker.sock";

/// Fails the test with a clear message when dockerd is not there.
pub fn require_docker() {
    if let Err(e) = std::os::unix::net::UnixStream::connect(SOCKET) {
        panic!(
            "this test needs dockerd at unix://{SOCKET} ({e}); start it with scripts/services.sh"
        );
    }
}

pub fn client() -> DockerClient {
    require_docker();
    DockerClient::new(Endpoint::Unix(SOCKET.into()), Duration::from_secs(60))
}

pub fn op(c: &DockerClient, name: &str, params: Value) -> Result<Value, ErrorBody> {
    let parsed = protocol::Operation::parse(name, &params)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    protocol::mapping::run_blocking(parsed, &mut c.transport(Some(deadline)), &mut |_| {})
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes what a test created, even when the test panics.
pub struct Cleanup<'a> {
    c: &'a DockerClient,
    items: Vec<(&'static str, Value)>,
}

impl<'a> Cleanup<'a> {
    pub fn new(c: &'a DockerClient) -> Self {
        Cleanup {
            c,
            items: Vec::new(),
        }
    }
    pub fn container(&mut self, id: &str) {
        self.items.push((
            "container.remove",
            serde_json::json!({"id": id, "force": true, "v": true}),
        ));
    }
    pub fn image(&mut self, id: &str) {
        self.items
            .push(("image.remove", serde_json::json!({"id": id})));
    }
    pub fn volume(&mut self, id: &str) {
        self.items.push((
            "volume.remove",
            serde_json::json!({"id": id, "force": true}),
        ));
    }
    pub fn network(&mut self, id: &str) {
        self.items
            .push(("network.remove", serde_json::json!({"id": id})));
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        // Containers first (they hold networks and volumes).
        self.items
            .sort_by_key(|(n, _)| if *n == "container.remove" { 0 } else { 1 });
        for (name, params) in self.items.drain(..) {
            let _ = op(self.c, name, params);
        }
    }
}
