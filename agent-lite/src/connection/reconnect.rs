//! The reconnect loop around sessions: the seed's ReconnectionStrategy (`reconnection.*`).
//!
//! Owns: when to dial again and when to give up. Must not: handle messages (that is
//! [`super::session`]).

use super::dial;
use super::session::{Outcome, Session};
use crate::agent::Agent;
use crate::config::ServerUrl;
use crate::error::Error;
use crate::ops::pool::Pool;
use crate::random::random_unit;
use crate::shutdown::Shutdown;
use rustls::ClientConfig;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Runs sessions until shutdown, reconnecting per `reconnection.*` (the seed's
/// ReconnectionStrategy). Returns an error when reconnecting is disabled or exhausted.
///
/// With several servers (`server.url` as a list), each round tries them in order, the next
/// at once when one cannot be reached, and backs off only when none could; every round
/// starts again with the first, so an agent returns to its own region's server.
pub fn keep_connected(
    agent: &Arc<Agent>,
    urls: &[ServerUrl],
    tls: Option<&Arc<ClientConfig>>,
    pool: &Pool,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    let rc = &agent.config.reconnection;
    let mut attempt: u32 = 0;
    let mut next = 0;
    loop {
        if shutdown.is_set() {
            return Ok(());
        }
        let i = next % urls.len().max(1);
        let url = &urls[i];
        let target = url.agent_url(&agent.config.agent.id);
        log::info!("connecting to {target}");
        let wait = match dial(&agent.config, url, &target, tls, agent.stats.clone()) {
            Err(e) => {
                log::warn!("cannot connect to {target}: {e}");
                next = i + 1;
                if next < urls.len() {
                    continue;
                }
                None
            }
            Ok(ws) => {
                agent.stats.server.store(i, Ordering::Relaxed);
                match Session::new(agent, ws, pool, shutdown).map_or_else(|o| o, Session::serve) {
                    Outcome::Shutdown => return Ok(()),
                    Outcome::Rejected(why) => {
                        let check = if agent.config.agent.enrol_token.is_some() {
                            "The credentials came from an enrolment and are kept in the state file; the host may have been rejected or its agent revoked (to enrol again, remove the state file's credentials)"
                        } else {
                            "Check agent.id and agent.auth_token"
                        };
                        log::error!(
                        "the server rejected this agent's credentials: {why}. {check}; retrying in {:?}",
                        rc.max()
                    );
                        Some(rc.max())
                    }
                    Outcome::Lost {
                        reason,
                        authenticated,
                        lasted,
                    } => {
                        log::warn!("connection to the server lost after {lasted:.1?}: {reason}");
                        if authenticated && lasted.as_secs_f64() >= rc.stable_after {
                            attempt = 0;
                        }
                        None
                    }
                }
            }
        };
        next = 0;
        if !rc.enabled {
            return Err(Error::GaveUp(
                "the connection ended and reconnection.enabled is false".into(),
            ));
        }
        if rc.max_attempts >= 0 && i64::from(attempt) >= rc.max_attempts {
            return Err(Error::GaveUp(format!(
                "gave up after {attempt} reconnection attempts (reconnection.max_attempts)"
            )));
        }
        let delay = wait.unwrap_or_else(|| rc.delay_for(attempt, random_unit()));
        attempt = attempt.saturating_add(1);
        log::info!(
            "reconnecting in {:.1}s (attempt {attempt})",
            delay.as_secs_f64()
        );
        if shutdown.wait(delay) {
            return Ok(());
        }
    }
}
