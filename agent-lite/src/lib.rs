//! docker-ctl-agent as a library. [`run`] runs the real agent in-process (the binary and the
//! tests both call it).
//!
//! Threads: the session thread (the caller of `run`: WebSocket I/O, heartbeats, reconnects),
//! a pool of command workers, one Docker events follower, and one health prober. No async
//! runtime.
//!
//! Modules, from the top: [`runtime`] starts and stops everything; [`connection`] holds the
//! link to the server; [`ops`] runs commands and [`passthrough`] Docker API streams, both
//! through [`policy`] to the daemon client ([`daemon`]); [`agent`] is the state they share;
//! [`enrol`] gets the credentials of an agent that enrols itself (with [`machine`]);
//! [`config`], [`signing`], [`health`], [`state`] and the small ones below them own one thing
//! each; [`update`] installs signed releases and rolls back one that does not come up.
//! This file only declares them and names the entry points.

pub mod agent;
pub mod cli;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod direct;
pub mod enrol;
pub mod error;
pub mod health;
pub mod ids;
pub mod log;
pub mod machine;
pub mod ops;
pub mod passthrough;
pub mod policy;
pub mod random;
pub mod runtime;
pub mod settings;
pub mod shutdown;
pub mod signing;
pub mod state;
pub mod stats;
pub mod update;
pub mod waker;

pub use error::{Error, Result};
pub use runtime::{run, run_started, run_valid};
pub use shutdown::Shutdown;
