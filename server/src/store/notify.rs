//! PostgreSQL `NOTIFY` and `LISTEN` for the cluster's wake-ups, and the report of this
//! store's cache drops that the wake-ups carry to the other replicas.
//!
//! Owns: the statement that sends a notification (`pg_notify`, on the pool, outside any
//! other transaction: it never rides on a command's commit), the one listening connection
//! ([`Listener`]), and applying a drop another replica reported ([`Store::drop_cached`]).
//! Must not: decide what a payload means (the cluster module does). On SQLite there is nobody
//! else to tell: [`Store::notify`] does nothing and [`Store::listener`] gives `None`.

use sqlx::postgres::PgListener;

use super::cache::CacheDrop;
use super::{Backend, Result, Store};

/// The one connection that listens on a channel. Lost with its connection: make a new one.
pub struct Listener(PgListener);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

impl Listener {
    /// The next notification's payload; `None` when the connection was lost (notifications
    /// sent meanwhile are gone: the caller catches up after it listens again).
    pub async fn recv(&mut self) -> Option<String> {
        match self.0.try_recv().await {
            Ok(Some(n)) => Some(n.payload().to_string()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "the listening connection failed");
                None
            }
        }
    }
}

impl Store {
    /// Sends `payload` on `channel` to every listener (this process's own included). Does
    /// nothing on SQLite.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A new connection listening on `channel`; `None` on SQLite.
    pub async fn listener(&self, channel: &str) -> Result<Option<Listener>> {
        let Some(url) = &self.listen_url else {
            return Ok(None);
        };
        let mut l = PgListener::connect(url.expose()).await?;
        l.listen(channel).await?;
        Ok(Some(Listener(l)))
    }

    /// Every cached row this store drops from now on because it wrote it (`None` when asked
    /// before: there is one receiver).
    pub fn cache_drops(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<CacheDrop>> {
        self.drops.take()
    }

    /// Drops what another replica reported changed (not reported again).
    pub fn drop_cached(&self, d: &CacheDrop) {
        match d {
            CacheDrop::Token(id) => self.tokens.remove_where(|t| t.id == *id),
            CacheDrop::Tokens => self.tokens.clear(),
            CacheDrop::Host(id) => self.hosts.remove(id),
            CacheDrop::Hosts => self.hosts.clear(),
        }
    }

    /// Drops `d` here and reports it.
    pub(super) fn forget(&self, d: CacheDrop) {
        self.drop_cached(&d);
        self.drops.report(d);
    }
}
