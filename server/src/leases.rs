//! Live user sessions that outlast the request that opened them: hijacked exec and attach
//! connections, followed Docker API streams (`logs -f`, `events`) and the live feed
//! `/api/v1/stream`. Each holds a [`Lease`] for as long as it runs.
//!
//! Owns: the registry of leases by principal (the API token, its user, the host), and ending
//! them when that principal loses access: a revoked token, a role lowered below what the
//! session needs, a deleted host. A lease is confirmed against the database once it is
//! registered, so a revocation that landed between the request's token check and the
//! registration still ends it (whatever lands after the registration finds the lease), and
//! every lease is confirmed again when revocations may have been missed
//! ([`Leases::recheck_all`]: another replica's wake-ups were lost).
//! Must not: know HTTP, or decide who may do what (callers say what changed).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use crate::auth::Principal;
use crate::store::{now_ms, Role, Store};

struct Entry {
    token_id: String,
    user: String,
    host_id: Option<String>,
    needs: Role,
    end: watch::Sender<Option<String>>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    map: HashMap<u64, Entry>,
}

/// The registry of live user sessions. Cheap to clone.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Mutex<Registry>>,
    store: Store,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("open", &self.open())
            .finish()
    }
}

/// A live session's hold on its principal's access. Dropping it unregisters the session.
pub struct Lease {
    id: u64,
    leases: Leases,
    rx: watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

impl Lease {
    /// Completes with the reason once the session must end.
    pub fn ended(&self) -> impl Future<Output = String> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_default(),
                // The registry went away with the server: end too.
                Err(_) => "the server is shutting down".to_string(),
            }
        }
    }

    /// [`Lease::ended`], boxed for a poll-based owner (a response body).
    pub fn ended_boxed(&self) -> Pin<Box<dyn Future<Output = String> + Send>> {
        Box::pin(self.ended())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.registry().map.remove(&self.id);
    }
}

impl Leases {
    pub fn new(store: Store) -> Leases {
        Leases {
            inner: Arc::default(),
            store,
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a live session of `caller` (on `host_id`, when it belongs to one) that needs
    /// `needs`, then confirms in the background that the token, its role and the host are
    /// still as the request saw them.
    pub fn take(&self, caller: &Principal, host_id: Option<&str>, needs: Role) -> Lease {
        let (tx, rx) = watch::channel(None);
        let id = {
            let mut r = self.registry();
            r.next += 1;
            let id = r.next;
            r.map.insert(
                id,
                Entry {
                    token_id: caller.token_id.clone(),
                    user: caller.user.clone(),
                    host_id: host_id.map(str::to_owned),
                    needs,
                    end: tx,
                },
            );
            id
        };
        let leases = self.clone();
        let token_id = caller.token_id.clone();
        let host = host_id.map(str::to_owned);
        tokio::spawn(async move {
            if let Some(reason) = leases
                .still_allowed(&token_id, host.as_deref(), needs)
                .await
            {
                leases.end_where(reason, |eid, _| eid == id);
            }
        });
        Lease {
            id,
            leases: self.clone(),
            rx,
        }
    }

    /// Reads the token and the host from the database (not the cache): `Some(reason)` when
    /// the session may not go on.
    async fn still_allowed(
        &self,
        token_id: &str,
        host: Option<&str>,
        needs: Role,
    ) -> Option<String> {
        if let Some(session) = token_id.strip_prefix(crate::auth::SESSION_PRINCIPAL_PREFIX) {
            if let Some(reason) = self.session_still_allowed(session, needs).await {
                return Some(reason);
            }
        } else if let Some(reason) = self.token_still_allowed(token_id, needs).await {
            return Some(reason);
        }
        if let Some(h) = host {
            if let Ok(None) = self.store.get_host(h).await {
                return Some("host deleted".into());
            }
        }
        None
    }

    /// A browser session: signed out, expired or demoted below `needs`.
    async fn session_still_allowed(&self, id: &str, needs: Role) -> Option<String> {
        match self.store.get_session(id).await {
            Ok(None) => Some("signed out".into()),
            Ok(Some(s)) if s.revoked_at.is_some() => Some("signed out".into()),
            Ok(Some(s)) if s.expires_at <= now_ms() => Some("session expired".into()),
            Ok(Some(s)) if s.role < needs => {
                Some(format!("the user's role is now {}", s.role.as_str()))
            }
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not confirm a live session's sign-in");
                None
            }
        }
    }

    /// An API token: revoked, expired or demoted below `needs`.
    async fn token_still_allowed(&self, token_id: &str, needs: Role) -> Option<String> {
        match self.store.get_api_token(token_id).await {
            Ok(None) => Some("token revoked".into()),
            Ok(Some(t)) if t.revoked_at.is_some() => Some("token revoked".into()),
            Ok(Some(t)) if t.expires_at.is_some_and(|e| e <= now_ms()) => {
                Some("token expired".into())
            }
            Ok(Some(t)) if t.role < needs => {
                Some(format!("the token's role is now {}", t.role.as_str()))
            }
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not confirm a live session's token");
                None
            }
        }
    }

    /// Confirms every live session against the database again (as at registration): what
    /// a revocation this process did not hear of would have ended, ends.
    pub async fn recheck_all(&self) {
        let all: Vec<(u64, String, Option<String>, Role)> = self
            .registry()
            .map
            .iter()
            .map(|(id, e)| (*id, e.token_id.clone(), e.host_id.clone(), e.needs))
            .collect();
        for (id, token_id, host, needs) in all {
            if let Some(reason) = self.still_allowed(&token_id, host.as_deref(), needs).await {
                self.end_where(reason, |eid, _| eid == id);
            }
        }
    }

    /// Ends every lease `pick` selects; returns how many.
    fn end_where(&self, reason: String, pick: impl Fn(u64, &Entry) -> bool) -> usize {
        let r = self.registry();
        let mut n = 0;
        for (id, e) in r.map.iter() {
            if pick(*id, e) {
                e.end.send_if_modified(|v| {
                    if v.is_none() {
                        *v = Some(reason.clone());
                        true
                    } else {
                        false
                    }
                });
                n += 1;
            }
        }
        n
    }

    /// The token was revoked: every session it opened ends.
    pub fn end_token(&self, token_id: &str, reason: &str) -> usize {
        self.end_where(reason.to_string(), |_, e| e.token_id == token_id)
    }

    /// The user's role is now `role`: sessions that need more end.
    pub fn end_role_below(&self, user: &str, role: Role, reason: &str) -> usize {
        self.end_where(reason.to_string(), |_, e| e.user == user && e.needs > role)
    }

    /// The user was deleted: every session of theirs ends, whatever opened it.
    pub fn end_user(&self, user: &str, reason: &str) -> usize {
        self.end_where(reason.to_string(), |_, e| e.user == user)
    }

    /// The browser sessions `ids` were revoked: what they opened ends.
    pub fn end_sessions(&self, ids: &[String], reason: &str) -> usize {
        self.end_where(reason.to_string(), |_, e| {
            e.token_id
                .strip_prefix(crate::auth::SESSION_PRINCIPAL_PREFIX)
                .is_some_and(|id| ids.iter().any(|x| x == id))
        })
    }

    /// The host was deleted: every session on it ends.
    pub fn end_host(&self, host_id: &str, reason: &str) -> usize {
        self.end_where(reason.to_string(), |_, e| {
            e.host_id.as_deref() == Some(host_id)
        })
    }

    /// Live sessions right now.
    pub fn open(&self) -> usize {
        self.registry().map.len()
    }
}
