//! The settings the server may change at any time (`auth_response` and `config_update`).
//!
//! Owns: their current values, starting from the config. Must not: check them (the session
//! accepts only values in range).

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds, read by the threads that use them whenever they need them.
#[derive(Debug)]
pub struct Settings {
    pub heartbeat: AtomicU64,
    pub command_timeout: AtomicU64,
}

impl Settings {
    pub fn new(heartbeat: u64, command_timeout: u64) -> Self {
        Settings {
            heartbeat: AtomicU64::new(heartbeat),
            command_timeout: AtomicU64::new(command_timeout),
        }
    }

    /// The heartbeat interval in seconds (at least 1).
    pub fn heartbeat_secs(&self) -> u64 {
        self.heartbeat.load(Ordering::Relaxed).max(1)
    }
}
