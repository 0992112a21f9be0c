//! Authentication and authorisation.
//!
//! Owns: making tokens (256 random bits, shown once), hashing them (SHA-256: fine for
//! high-entropy tokens), constant-time comparison, checking an agent's token, the
//! [`Principal`] an action is taken for and the role it needs, CIDR allowlists, the per-IP
//! limiter for failed authentications and the per-token request rate. Must not: log or
//! return a token after it was shown once, or know HTTP (the bearer extractor is
//! `api::Caller`).

use base64::Engine;
use ipnet::IpNet;
use protocol::{ErrorCode, Secret};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::store::{now_ms, Agent, Role};

/// Prefix of user API tokens.
pub const USER_TOKEN_PREFIX: &str = "dctl_u_";
/// Prefix of agent tokens.
pub const AGENT_TOKEN_PREFIX: &str = "dctl_a_";
/// Prefix of enrolment tokens (an agent presents one once to enrol itself).
pub const ENROL_TOKEN_PREFIX: &str = "dctl_e_";

/// A new random token: `prefix` + base64url of 32 random bytes (256 bits).
pub fn generate_token(prefix: &str) -> Secret {
    let mut bytes = [0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut bytes);
    Secret::new(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The stored form of a token: hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The longest agent id, in bytes.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// Whether `id` can be an agent id: 1 to [`MAX_AGENT_ID_LEN`] of `[A-Za-z0-9._-]`.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The first characters of a token, safe to show in listings.
pub fn token_prefix(token: &str) -> String {
    token.chars().take(USER_TOKEN_PREFIX.len() + 4).collect()
}

/// Whether `ip` is allowed by `allow` (an empty list allows everyone).
pub fn ip_allowed(allow: &[IpNet], ip: Option<IpAddr>) -> bool {
    if allow.is_empty() {
        return true;
    }
    let Some(ip) = ip.map(crate::forwarded::canonical) else {
        return false;
    };
    allow.iter().any(|n| n.contains(&ip))
}

/// What a signing agent on the old canonical form is told (it fits a WebSocket close
/// reason, so the agent sees it even though it cannot verify an unsigned answer).
pub const OLD_SIGNING_REASON: &str =
    "upgrade the agent: it signs with signing version 1; this server needs version 2";

/// Why an agent's token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAuthFailure {
    UnknownAgent,
    BadToken,
    Expired,
    Revoked,
    NotAllowedFrom,
    RateLimited,
    /// The agent signs its messages and the `auth` message's signature was missing or bad.
    BadSignature,
    /// The agent signs with the old canonical form (without the direction).
    OldSigning,
    /// The token could not be checked again (the database failed).
    Unconfirmed,
}

impl AgentAuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AgentAuthFailure::UnknownAgent | AgentAuthFailure::BadToken => {
                "invalid agent id or token"
            }
            AgentAuthFailure::Expired => "token expired",
            AgentAuthFailure::Revoked => "agent revoked",
            AgentAuthFailure::NotAllowedFrom => "source address not allowed",
            AgentAuthFailure::RateLimited => "too many failed authentications; retry later",
            AgentAuthFailure::BadSignature => "missing, bad, replayed or stale message signature",
            AgentAuthFailure::OldSigning => OLD_SIGNING_REASON,
            AgentAuthFailure::Unconfirmed => "the token could not be checked; retry later",
        }
    }
    pub fn code(self) -> ErrorCode {
        match self {
            AgentAuthFailure::NotAllowedFrom => ErrorCode::Forbidden,
            AgentAuthFailure::RateLimited => ErrorCode::RateLimited,
            AgentAuthFailure::OldSigning => ErrorCode::Unsupported,
            AgentAuthFailure::Unconfirmed => ErrorCode::Internal,
            _ => ErrorCode::Unauthorized,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            AgentAuthFailure::UnknownAgent => "unknown_agent",
            AgentAuthFailure::BadToken => "bad_token",
            AgentAuthFailure::Expired => "expired",
            AgentAuthFailure::Revoked => "revoked",
            AgentAuthFailure::NotAllowedFrom => "not_allowed_from",
            AgentAuthFailure::RateLimited => "rate_limited",
            AgentAuthFailure::BadSignature => "bad_signature",
            AgentAuthFailure::OldSigning => "old_signing",
            AgentAuthFailure::Unconfirmed => "unconfirmed",
        }
    }
}

/// Checks an agent's presented token: the current one (unless expired), or the previous one
/// within its grace period. Both comparisons always run, in constant time.
pub fn verify_agent_token(
    agent: &Agent,
    presented: &str,
    ip: Option<IpAddr>,
) -> Result<(), AgentAuthFailure> {
    let now = now_ms();
    let h = hash_token(presented);
    let current = hashes_equal(&h, &agent.auth_token_hash);
    let previous = agent
        .prev_token_hash
        .as_deref()
        .is_some_and(|p| hashes_equal(&h, p))
        && agent.prev_token_valid_until.is_some_and(|t| t > now);
    // A wrong token learns nothing about the agent, not even that it was revoked.
    if !current && !previous {
        return Err(AgentAuthFailure::BadToken);
    }
    if agent.revoked_at.is_some() {
        return Err(AgentAuthFailure::Revoked);
    }
    if current && agent.token_expires_at.is_some_and(|t| t <= now) {
        return Err(AgentAuthFailure::Expired);
    }
    if !ip_allowed(&agent.allowed_cidrs, ip) {
        return Err(AgentAuthFailure::NotAllowedFrom);
    }
    Ok(())
}

/// Counts failed authentications per source IP in one-minute windows.
#[derive(Debug)]
pub struct FailureLimiter {
    per_minute: u32,
    window: Duration,
    map: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(per_minute: u32) -> Self {
        FailureLimiter {
            per_minute,
            window: Duration::from_secs(60),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has used up its failures for the current window.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((start, n)) => start.elapsed() < self.window && *n >= self.per_minute,
            None => false,
        }
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, (s, _)| s.elapsed() < window);
        }
        let e = map.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= self.window {
            *e = (Instant::now(), 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

/// Token buckets per key (an API token): `rate` per second, a burst of twice that.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    map: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            rate: per_second.max(1) as f64,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; false when its bucket is empty.
    pub fn take(&self, key: &str) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        let burst = self.rate * 2.0;
        let now = Instant::now();
        let e = map.entry(key.to_string()).or_insert((burst, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * self.rate).min(burst);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What `Principal::token_id` starts with when the principal signed in with a browser
/// session: `session:ID`.
pub const SESSION_PRINCIPAL_PREFIX: &str = "session:";

/// Who acts: a user's API token or browser session, and the user's role. The REST API builds
/// it from the request's bearer token or session cookie (`api::Caller`); an in-process
/// runner (a bulk run, a stack) acting for the user who started it builds it from what it
/// stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The credential's id: the API token's id, or `session:ID` for a browser session (its
    /// live sessions end when it is revoked).
    pub token_id: String,
    pub user: String,
    pub role: Role,
    /// The client's address, when the action came over the network.
    pub ip: Option<IpAddr>,
}

impl Principal {
    /// The browser session's id, when the principal signed in with one.
    pub fn session_id(&self) -> Option<&str> {
        self.token_id.strip_prefix(SESSION_PRINCIPAL_PREFIX)
    }

    /// Refuses with `forbidden` unless the principal has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; the token has {}",
                role.as_str(),
                self.role.as_str()
            )))
        }
    }
}

/// The role an action of `access` needs: reading needs a viewer, changing an operator.
pub fn role_for(access: protocol::Access) -> Role {
    match access {
        protocol::Access::Read => Role::Viewer,
        protocol::Access::Write => Role::Operator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_256_bits_and_differ() {
        let a = generate_token(AGENT_TOKEN_PREFIX);
        let b = generate_token(AGENT_TOKEN_PREFIX);
        assert_ne!(a.expose(), b.expose());
        let body = a.expose().strip_prefix(AGENT_TOKEN_PREFIX).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert_eq!(hash_token(a.expose()).len(), 64);
    }

    #[test]
    fn allowlist_matches_v4_and_mapped_v6() {
        let allow: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(ip_allowed(&allow, Some("10.1.2.3".parse().unwrap())));
        assert!(ip_allowed(&allow, Some("::ffff:10.1.2.3".parse().unwrap())));
        assert!(!ip_allowed(&allow, Some("127.0.0.1".parse().unwrap())));
        assert!(!ip_allowed(&allow, None));
        assert!(ip_allowed(&[], None));
    }

    #[test]
    fn limiter_blocks_after_the_budget() {
        let l = FailureLimiter::new(2);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!l.blocked(ip));
        l.record_failure(ip);
        l.record_failure(ip);
        assert!(l.blocked(ip));
        assert!(!l.blocked("127.0.0.8".parse().unwrap()));
    }
}
