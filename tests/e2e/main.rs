//! End-to-end tests: the real `docker-ctl-server` and `docker-ctl-agent` processes against
//! the real dockerd, on SQLite and on PostgreSQL (fleets: labels, selectors, bulk operations).

mod access;
mod arm;
mod dist;
mod enrol;
mod fleet;
mod lifecycle;
mod passthrough;
mod servers;
mod stacks;
mod update;
