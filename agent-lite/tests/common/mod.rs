//! Shared helpers for agent-lite's integration tests.
#![allow(dead_code)]

pub mod docker;

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, failing the test after `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
