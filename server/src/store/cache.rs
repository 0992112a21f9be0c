//! A small time-bounded cache for rows read on every request (API tokens, hosts).
//!
//! A hit saves a database round trip on the command path. Writes through this process's
//! [`super::Store`] drop the entries they change at once, and report each drop as a
//! [`CacheDrop`] to whoever asked for them ([`super::Store::cache_drops`]: the cluster's
//! wake-ups, which carry them to the other replicas, where [`super::Store::drop_cached`]
//! applies them). Without a wake-up (SQLite, or a lost one) a change made by another replica
//! shows here within the cache's time to live.
//!
//! Owns: entries and their expiry, and the report of drops. Must not: cache misses (an
//! unknown token must not fill memory), or decide anything about what it holds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Cached rows another replica must drop too: they changed in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheDrop {
    /// The API token with this id.
    Token(String),
    /// Every API token (a user's role changed, or the user went).
    Tokens,
    /// The host with this id.
    Host(String),
    /// Every host.
    Hosts,
}

/// Where drops are reported: set once, by the first who asks.
#[derive(Debug, Clone, Default)]
pub(crate) struct DropReports(
    std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<CacheDrop>>>,
);

impl DropReports {
    /// The receiver of every later drop; `None` when someone asked already.
    pub(crate) fn take(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<CacheDrop>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.0.set(tx).ok().map(|_| rx)
    }

    pub(crate) fn report(&self, d: CacheDrop) {
        if let Some(tx) = self.0.get() {
            let _ = tx.send(d);
        }
    }
}

#[derive(Debug)]
pub(crate) struct TtlCache<V> {
    ttl: Duration,
    cap: usize,
    map: Mutex<HashMap<String, (V, Instant)>>,
    /// Bumped by every removal: a read that started before a write dropped entries must not
    /// put back the row it read before that write (a revoked token would live on).
    generation: std::sync::atomic::AtomicU64,
}

impl<V: Clone> TtlCache<V> {
    pub(crate) fn new(ttl: Duration, cap: usize) -> Self {
        TtlCache {
            ttl,
            cap,
            map: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (V, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `key` when it was stored less than the time to live ago.
    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let map = self.map();
        let (v, at) = map.get(key)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    /// The fresh cached value of `key`, or else what `load` reads, kept when it found one.
    pub(crate) async fn read_through<E>(
        &self,
        key: &str,
        load: impl std::future::Future<Output = Result<Option<V>, E>>,
    ) -> Result<Option<V>, E> {
        if let Some(v) = self.get(key) {
            return Ok(Some(v));
        }
        let before = self.generation();
        let v = load.await?;
        if let Some(v) = &v {
            let mut map = self.map();
            // Checked under the lock that removals take: no removal can slip in between.
            if self.generation() == before {
                Self::insert(&mut map, self.ttl, self.cap, key, v.clone());
            }
        }
        Ok(v)
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn insert(map: &mut HashMap<String, (V, Instant)>, ttl: Duration, cap: usize, key: &str, v: V) {
        if map.len() >= cap && !map.contains_key(key) {
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= cap {
                map.clear();
            }
        }
        map.insert(key.to_string(), (v, Instant::now()));
    }

    #[cfg(test)]
    fn put(&self, key: &str, v: V) {
        let mut map = self.map();
        Self::insert(&mut map, self.ttl, self.cap, key, v);
    }

    pub(crate) fn remove(&self, key: &str) {
        let mut map = self.map();
        self.bump();
        map.remove(key);
    }

    /// Drops the entries whose value matches.
    pub(crate) fn remove_where(&self, f: impl Fn(&V) -> bool) {
        let mut map = self.map();
        self.bump();
        map.retain(|_, (v, _)| !f(v));
    }

    pub(crate) fn clear(&self) {
        let mut map = self.map();
        self.bump();
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_are_dropped_by_writes() {
        let c = TtlCache::new(Duration::from_millis(50), 3);
        c.put("a", 1);
        c.put("b", 2);
        assert_eq!(c.get("a"), Some(1));
        c.remove("a");
        assert_eq!(c.get("a"), None);
        c.remove_where(|v| *v == 2);
        assert_eq!(c.get("b"), None);
        c.put("c", 3);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("c"), None, "expired");
    }

    #[tokio::test]
    async fn a_read_that_raced_a_removal_is_not_cached() {
        let c = TtlCache::new(Duration::from_secs(60), 10);
        // The read saw the row before the write that removes it committed...
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let load = async {
            let _ = rx.await;
            Ok::<_, ()>(Some(1))
        };
        let read = c.read_through("t", load);
        tokio::pin!(read);
        assert!(futures_util::FutureExt::now_or_never(read.as_mut()).is_none());
        // ...the write drops the key meanwhile...
        c.remove("t");
        let _ = tx.send(());
        assert_eq!(read.await, Ok(Some(1)));
        // ...and the stale row is not put back.
        assert_eq!(c.get("t"), None);
        assert_eq!(
            c.read_through("t", async { Ok::<_, ()>(Some(2)) }).await,
            Ok(Some(2))
        );
        assert_eq!(c.get("t"), Some(2));
    }

    #[test]
    fn the_cap_bounds_memory() {
        let c = TtlCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            c.put(&i.to_string(), i);
        }
        assert!(c.map().len() <= 3);
        assert_eq!(c.get("9"), Some(9), "the newest entry is kept");
    }
}
