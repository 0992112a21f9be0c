//! docker-ctl-server: the control server. Agents dial in over WebSocket; operators use the
//! REST API to manage every host, whether its agent dials in or the server dials its daemon.
//!
//! Entry points: [`app`] builds the router from an [`AppState`] (tests drive it with
//! `oneshot`), [`serve`] runs it on a listener until a shutdown future completes, and [`run`]
//! does both from a [`config::Config`].
//!
//! Layers, each using only itself and the ones below it (`docs/architecture.md` draws them;
//! `scripts/check-structure.py` checks them):
//! - the wiring and HTTP: [`app`], [`state`], [`quickstart`], and [`api`] (REST handlers,
//!   the Docker API passthrough, the live feed);
//! - rollouts over many hosts: [`rollouts`] (the engine, and the bulk operation);
//! - a command's life: [`commands`]; one agent's self-update: [`updates`];
//! - which hosts a selector picks: [`fleet`];
//! - kinds of host: [`hosts`] (the `HostAdapter` seam);
//! - agent sessions: [`agents`];
//! - this server as one replica of several: [`cluster`] (identity, heartbeat, presence, the
//!   SQLite serve lock);
//! - the parts every layer uses: [`store`], [`audit`], [`auth`], [`accounts`], [`leases`], [`metrics`],
//!   [`feed`], [`crypto`], [`forwarded`], [`reply`], [`error`], [`config`], [`labels`]
//!   (labels and selectors), [`enrolment`] (what enrolment tokens allow) and [`stacks`]
//!   (pure compose logic).

pub mod accounts;
pub mod agents;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod connector;
pub mod crypto;
pub mod deploy;
pub mod enrolment;
pub mod error;
pub mod feed;
pub mod fleet;
pub mod forwarded;
pub mod hosts;
pub mod labels;
pub mod leases;
pub mod metrics;
pub mod quickstart;
pub mod releases;
pub mod reply;
pub mod rollouts;
pub mod stacks;
pub mod state;
pub mod store;
pub mod tls;
pub mod updates;

pub use app::{app, run, serve};
pub use forwarded::ClientIp;
pub use state::AppState;
