//! docker-ctl-agent as a library: `run(config, shutdown)` runs the real agent in-process.

pub mod docker;
