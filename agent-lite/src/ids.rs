//! Ids of the messages the agent sends: `{kind}-{prefix}-{n}`, where the prefix is random per
//! start so ids stay unique across restarts.
//!
//! Owns: the prefix and the counter. Must not: be used for anything secret.

use std::sync::atomic::{AtomicU64, Ordering};

/// Fresh message ids.
#[derive(Debug)]
pub struct MessageIds {
    prefix: String,
    counter: AtomicU64,
}

impl Default for MessageIds {
    fn default() -> Self {
        let r = crate::random::random_unit() * f64::from(u32::MAX);
        MessageIds {
            prefix: format!("{:08x}", r as u32),
            counter: AtomicU64::new(1),
        }
    }
}

impl MessageIds {
    /// A fresh message id: `{kind}-{prefix}-{n}`.
    pub fn next(&self, kind: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{kind}-{}-{n}", self.prefix)
    }
}
