//! People who sign in: passwords, browser sessions, one-time sign-in links, device cookies
//! and the limits on failed sign-ins.
//!
//! A session is a random 256-bit secret in an `HttpOnly`, `SameSite=Strict` cookie; the
//! database keeps only its SHA-256. It ends when it is idle for `sessions.idle_timeout`, at
//! `sessions.max_age` after sign-in, at sign-out, or when an admin revokes it (or deletes or
//! demotes its user: its role is read with the session on every request). Its CSRF token is
//! a MAC of the session secret under a key derived from the at-rest key, so nothing more is
//! stored and only a holder of the cookie's value can know it.
//!
//! Owns: [`Accounts`] (sign-in, authentication of a session secret, CSRF tokens, sign-in
//! links, device cookies) and its parts [`password`] and [`limits`]. Must not: know HTTP
//! (cookies are built by `api/`), or decide what a role may do.

pub mod limits;
pub mod password;

use base64::Engine;
use protocol::{ErrorCode, Secret};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{generate_token, hash_token, hashes_equal};
use crate::crypto::KeyBox;
use crate::error::ApiError;
use crate::store::{now_ms, NewSession, Store, User, UserSession};
use limits::SigninLimiter;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "dctl_session";
/// The device cookie's name: proof that this browser signed in as a user before.
pub const DEVICE_COOKIE: &str = "dctl_device";
/// Prefix of session secrets.
pub const SESSION_PREFIX: &str = "dctl_s_";
/// Prefix of one-time sign-in links.
pub const LINK_PREFIX: &str = "dctl_l_";
/// How long a device cookie is trusted.
pub const DEVICE_TRUST: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long sessions live, and the sign-in budgets.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub idle: Duration,
    pub max_age: Duration,
    pub failures_per_address: u32,
    pub failures_per_user: u32,
}

/// What the server knows of the client that signs in.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The device cookie the browser sent, if any.
    pub device: Option<String>,
}

/// A new session: its secret (for the cookie, shown once), the row, and a fresh device cookie.
pub struct SignedIn {
    pub secret: Secret,
    pub session: UserSession,
    pub device: String,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

/// The owner of sign-in and sessions. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    store: Store,
    keys: KeyBox,
    policy: Policy,
    limiter: Arc<SigninLimiter>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("policy", &self.policy)
            .finish()
    }
}

/// The same answer for an unknown name and a wrong password.
fn wrong() -> ApiError {
    ApiError::unauthorized("wrong user name or password")
}

impl Accounts {
    pub fn new(store: Store, keys: KeyBox, policy: Policy) -> Accounts {
        Accounts {
            store,
            keys,
            limiter: Arc::new(SigninLimiter::new(
                policy.failures_per_address,
                policy.failures_per_user,
            )),
            policy,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Checks a password sign-in and opens a session. Errors: `rate_limited` (before the
    /// password is checked), `unauthorized` (unknown name, no password, wrong password: one
    /// message for all).
    pub async fn sign_in(
        &self,
        name: &str,
        password: &str,
        client: &Client,
    ) -> Result<SignedIn, ApiError> {
        let found = self.store.user_with_password(name).await?;
        let trusted = found
            .as_ref()
            .is_some_and(|(u, _)| self.trusted_device(client.device.as_deref(), &u.id));
        if let Err(l) = self.limiter.admit(name, client.ip, trusted) {
            return Err(ApiError::new(ErrorCode::RateLimited, l.message()));
        }
        let phc = found
            .as_ref()
            .and_then(|(_, h)| h.clone())
            .unwrap_or_else(|| password::decoy().to_string());
        let ok = verify_password(password.to_string(), phc).await && found.is_some();
        match found {
            Some((user, Some(_))) if ok => self.open_session(&user, client).await,
            _ => {
                self.limiter.failed(name, client.ip);
                Err(wrong())
            }
        }
    }

    /// Uses up a one-time sign-in link and opens a session for its user.
    pub async fn sign_in_with_link(
        &self,
        link: &str,
        client: &Client,
    ) -> Result<SignedIn, ApiError> {
        let refused = || ApiError::unauthorized("the sign-in link is unknown, used or expired");
        if let Err(l) = self.limiter.admit_address(client.ip) {
            return Err(ApiError::new(ErrorCode::RateLimited, l.message()));
        }
        let Some(user_id) = self.store.take_signin_link(&hash_token(link)).await? else {
            self.limiter.failed_address(client.ip);
            return Err(refused());
        };
        let users = self.store.list_users().await?;
        let user = users
            .into_iter()
            .find(|u| u.id == user_id)
            .ok_or_else(refused)?;
        self.open_session(&user, client).await
    }

    async fn open_session(&self, user: &User, client: &Client) -> Result<SignedIn, ApiError> {
        let secret = generate_token(SESSION_PREFIX);
        let id = self
            .store
            .insert_session(&NewSession {
                user_id: user.id.clone(),
                session_hash: hash_token(secret.expose()),
                expires_at: now_ms() + self.policy.max_age.as_millis() as i64,
                source_ip: client.ip.map(|i| i.to_string()),
                user_agent: client
                    .user_agent
                    .as_ref()
                    .map(|s| s.chars().take(256).collect()),
            })
            .await?;
        let session = self
            .store
            .get_session(&id)
            .await?
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the new session vanished")))?;
        Ok(SignedIn {
            secret,
            session,
            device: self.device_cookie(&user.id),
        })
    }

    /// The live session of a cookie's secret. Errors: `unauthorized` with why.
    pub async fn authenticate(&self, secret: &str) -> Result<UserSession, ApiError> {
        let Some(s) = self.store.find_session_by_hash(&hash_token(secret)).await? else {
            return Err(ApiError::unauthorized("not signed in"));
        };
        self.check_live(&s)?;
        let now = now_ms();
        if now - s.last_seen_at > 60_000 {
            if let Err(e) = self.store.touch_session(&s.id).await {
                tracing::warn!(error = %e, "could not record a session's use");
            }
        }
        Ok(s)
    }

    /// Refuses a revoked or expired (idle or absolute) session.
    pub fn check_live(&self, s: &UserSession) -> Result<(), ApiError> {
        let now = now_ms();
        if s.revoked_at.is_some() {
            return Err(ApiError::unauthorized("signed out"));
        }
        if s.expires_at <= now || s.last_seen_at + self.policy.idle.as_millis() as i64 <= now {
            return Err(ApiError::unauthorized("the session expired; sign in again"));
        }
        Ok(())
    }

    /// The CSRF token of a session secret (hex).
    pub fn csrf_token(&self, secret: &str) -> String {
        hex::encode(self.keys.mac("csrf", secret.as_bytes()))
    }

    /// Whether `presented` is the CSRF token of `secret`, in constant time.
    pub fn csrf_ok(&self, secret: &str, presented: &str) -> bool {
        hashes_equal(&self.csrf_token(secret), presented)
    }

    /// A device cookie for `user_id`: `user_id.issued_ms.mac`.
    pub fn device_cookie(&self, user_id: &str) -> String {
        let body = format!("{user_id}.{}", now_ms());
        let mac = self.keys.mac("device", body.as_bytes());
        format!(
            "{body}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
        )
    }

    /// Whether `cookie` is a device cookie of `user_id` that is still trusted.
    fn trusted_device(&self, cookie: Option<&str>, user_id: &str) -> bool {
        let Some((body, mac)) = cookie.and_then(|c| c.rsplit_once('.')) else {
            return false;
        };
        let want = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.keys.mac("device", body.as_bytes()));
        let Some((uid, issued)) = body.rsplit_once('.') else {
            return false;
        };
        let fresh = issued
            .parse::<i64>()
            .is_ok_and(|t| now_ms() - t < DEVICE_TRUST.as_millis() as i64);
        hashes_equal(&want, mac) && uid == user_id && fresh
    }

    /// A one-time sign-in link for `user_id`, valid for `ttl`.
    pub async fn create_link(&self, user_id: &str, ttl: Duration) -> Result<Secret, ApiError> {
        let link = generate_token(LINK_PREFIX);
        let expires = now_ms() + ttl.as_millis() as i64;
        self.store
            .insert_signin_link(user_id, &hash_token(link.expose()), expires)
            .await?;
        Ok(link)
    }
}

/// The argon2id hash of a new password, off the async threads. Errors: `invalid_params`
/// when the password breaks the rules.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    password::check_new(&password).map_err(ApiError::bad_request)?;
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("hashing task: {e}")))?
        .map_err(ApiError::internal)
}

/// Whether `password` matches `phc`, off the async threads.
pub async fn verify_password(password: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || password::verify(&password, &phc))
        .await
        .unwrap_or(false)
}
