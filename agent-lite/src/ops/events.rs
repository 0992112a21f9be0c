//! Following the daemon's `/events` stream and buffering events for the server.
//!
//! Owns: subscribing (container, image, volume and network events), resubscribing with
//! `since` after a break without duplicates, and the bounded buffer with its drop counter.
//! Must not: write to the WebSocket (the session drains the buffer while the link is up).

use crate::daemon::{http::LineSplitter, Closer, DockerClient};
use crate::shutdown::Shutdown;
use crate::waker::Waker;
use protocol::EventPayload;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Event kinds forwarded to the server.
pub const KINDS: [&str; 4] = ["container", "image", "volume", "network"];

/// Events waiting for the link. When full, the oldest is dropped and counted.
pub struct EventBuffer {
    queue: Mutex<VecDeque<EventPayload>>,
    capacity: usize,
    dropped: AtomicU64,
    /// Woken for every buffered event.
    waker: Option<Arc<Waker>>,
}

impl EventBuffer {
    pub fn new(capacity: usize) -> Self {
        EventBuffer {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            waker: None,
        }
    }

    /// Wakes `w` whenever an event is buffered.
    pub fn with_waker(mut self, w: Arc<Waker>) -> Self {
        self.waker = Some(w);
        self
    }

    pub fn push(&self, e: EventPayload) {
        if let Ok(mut q) = self.queue.lock() {
            while q.len() >= self.capacity {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(e);
        }
        if let Some(w) = &self.waker {
            w.wake();
        }
    }

    /// Takes up to `max` events, oldest first.
    pub fn take(&self, max: usize) -> Vec<EventPayload> {
        match self.queue.lock() {
            Ok(mut q) => {
                let n = q.len().min(max);
                q.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Puts events back at the front (a send failed).
    pub fn put_back(&self, events: Vec<EventPayload>) {
        if let Ok(mut q) = self.queue.lock() {
            for e in events.into_iter().rev() {
                if q.len() >= self.capacity {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                q.push_front(e);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Turns one line of Docker's event stream into our payload.
pub fn parse_event(line: &[u8]) -> Option<EventPayload> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let kind = v.get("Type").and_then(Value::as_str)?.to_string();
    let action = v
        .get("Action")
        .or_else(|| v.get("status"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let actor = v.get("Actor");
    let actor_id = actor
        .and_then(|a| a.get("ID"))
        .or_else(|| v.get("id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut attributes = BTreeMap::new();
    if let Some(attrs) = actor
        .and_then(|a| a.get("Attributes"))
        .and_then(Value::as_object)
    {
        for (k, val) in attrs {
            if let Some(s) = val.as_str() {
                attributes.insert(k.clone(), s.to_string());
            }
        }
    }
    let time_nano = v
        .get("timeNano")
        .and_then(Value::as_i64)
        .or_else(|| {
            v.get("time")
                .and_then(Value::as_i64)
                .map(|t| t * 1_000_000_000)
        })
        .unwrap_or(0);
    Some(EventPayload {
        kind,
        action,
        actor_id,
        attributes,
        time_nano,
    })
}

/// Remembers where the stream got to, so a resubscription with `since` neither loses nor
/// repeats events.
#[derive(Debug, Default)]
pub struct Cursor {
    /// Nanoseconds of the newest event seen (or of the first subscription).
    pub since_nano: i64,
    /// Events seen at exactly `since_nano` (Docker's `since` is inclusive).
    seen_at_since: Vec<(String, String, String)>,
}

impl Cursor {
    /// Whether the event is new; records it.
    pub fn accept(&mut self, e: &EventPayload) -> bool {
        let key = (e.kind.clone(), e.action.clone(), e.actor_id.clone());
        if e.time_nano < self.since_nano {
            return false;
        }
        if e.time_nano == self.since_nano {
            if self.seen_at_since.contains(&key) {
                return false;
            }
        } else {
            self.since_nano = e.time_nano;
            self.seen_at_since.clear();
        }
        self.seen_at_since.push(key);
        true
    }

    /// The `since` query value: `seconds.nanoseconds`.
    pub fn since_param(&self) -> String {
        format!(
            "{}.{:09}",
            self.since_nano / 1_000_000_000,
            self.since_nano % 1_000_000_000
        )
    }
}

fn now_nano() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The running events follower.
pub struct Follower {
    closer: Arc<Mutex<Option<Closer>>>,
}

impl Follower {
    /// Breaks the follower's blocked read (after shutdown was triggered, it then returns).
    pub fn stop(&self) {
        if let Ok(slot) = self.closer.lock() {
            if let Some(c) = slot.as_ref() {
                c.close();
            }
        }
    }
}

/// Starts the thread that follows `/events` into `buffer` until shutdown.
pub fn spawn_follower(
    daemon: DockerClient,
    buffer: Arc<EventBuffer>,
    shutdown: Shutdown,
) -> std::io::Result<Follower> {
    let closer: Arc<Mutex<Option<Closer>>> = Arc::default();
    let c = closer.clone();
    std::thread::Builder::new()
        .name("events".into())
        .stack_size(256 * 1024)
        .spawn(move || follow(daemon, buffer, c, shutdown))?;
    Ok(Follower { closer })
}

/// Follows `/events` until shutdown. `closer` lets the owner break a blocked read.
pub fn follow(
    docker: DockerClient,
    buffer: Arc<EventBuffer>,
    closer: Arc<Mutex<Option<Closer>>>,
    shutdown: Shutdown,
) {
    let filters = serde_json::json!({ "type": KINDS }).to_string();
    let filters = protocol::mapping::percent_encode(&filters);
    let mut cursor = Cursor::default();
    let mut delay = Duration::from_secs(1);
    while !shutdown.is_set() {
        let mut path = format!("/events?filters={filters}");
        if cursor.since_nano > 0 {
            path.push_str(&format!("&since={}", cursor.since_param()));
        }
        let opened = Instant::now();
        match docker.stream(&path) {
            Ok((mut stream, c)) => {
                if cursor.since_nano == 0 {
                    // Everything from now on; a later break resubscribes from here.
                    cursor.since_nano = now_nano();
                }
                if let Ok(mut slot) = closer.lock() {
                    *slot = Some(c);
                }
                if shutdown.is_set() {
                    break;
                }
                log::debug!("following Docker events (since {})", cursor.since_param());
                let mut lines = LineSplitter::default();
                let res = stream.read_to_end(&mut |d| {
                    lines.feed(d, &mut |line| {
                        if let Some(e) = parse_event(line) {
                            if KINDS.contains(&e.kind.as_str()) && cursor.accept(&e) {
                                buffer.push(e);
                            }
                        }
                    })
                });
                if let Ok(mut slot) = closer.lock() {
                    *slot = None;
                }
                if shutdown.is_set() {
                    break;
                }
                match res {
                    Ok(()) => log::warn!("the Docker event stream ended; resubscribing"),
                    Err(e) => log::warn!("the Docker event stream broke ({e}); resubscribing"),
                }
            }
            Err(e) => log::warn!("cannot follow Docker events: {e}"),
        }
        if opened.elapsed() > Duration::from_secs(30) {
            delay = Duration::from_secs(1);
        }
        if shutdown.wait(delay) {
            break;
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: i64, id: &str) -> EventPayload {
        EventPayload {
            kind: "container".into(),
            action: "start".into(),
            actor_id: id.into(),
            attributes: Default::default(),
            time_nano: t,
        }
    }

    #[test]
    fn buffer_is_bounded_and_counts_drops() {
        let b = EventBuffer::new(3);
        for i in 0..5 {
            b.push(ev(i, "x"));
        }
        assert_eq!(b.dropped(), 2);
        let got = b.take(10);
        assert_eq!(
            got.iter().map(|e| e.time_nano).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn cursor_skips_replayed_events() {
        let mut c = Cursor::default();
        assert!(c.accept(&ev(10, "a")));
        assert!(c.accept(&ev(10, "b")));
        assert!(!c.accept(&ev(10, "a")), "same event replayed by since");
        assert!(!c.accept(&ev(9, "z")), "older than the cursor");
        assert!(c.accept(&ev(11, "a")));
        assert_eq!(c.since_param(), "0.000000011");
    }

    #[test]
    fn parses_docker_events() {
        let line = br#"{"status":"start","id":"abc","from":"img","Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"name":"web-1","image":"img"}},"scope":"local","time":1700000000,"timeNano":1700000000123456789}"#;
        let e = parse_event(line).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.action.as_str(), e.actor_id.as_str()),
            ("container", "start", "abc")
        );
        assert_eq!(e.attributes.get("name").map(String::as_str), Some("web-1"));
        assert_eq!(e.time_nano, 1_700_000_000_123_456_789);
        assert!(parse_event(b"not json").is_none());
    }
}
