//! The agent's own figures for heartbeats: bytes on the link, commands in flight, uptime.
//!
//! Owns: the counters. Must not: send them (the session puts them in heartbeats).

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Instant;

/// Counters reported in heartbeats, shared by the threads that count.
#[derive(Debug)]
pub struct Stats {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub in_flight: AtomicU64,
    /// Which of `server.url`'s servers the link last connected to: downloads go there too.
    pub server: AtomicUsize,
    /// When the agent started (its uptime).
    pub started: Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            server: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }
}
