//! Which failed agent handshakes are written down.
//!
//! Every failure is counted in the metrics. A flood of them must not become a flood of
//! `agent_events` and audit rows, so they are sampled: per source address at most one row
//! every [`PER_SOURCE_INTERVAL`], and at most [`ROWS_PER_MINUTE`] rows a minute over all
//! sources. A written row carries how many failures from its source were skipped since the
//! previous one, so nothing is hidden, only summarised.
//!
//! Owns: that decision and its bounded memory. Must not: write anything itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one written failure per source address in this interval.
pub const PER_SOURCE_INTERVAL: Duration = Duration::from_secs(10);
/// At most this many written failures a minute, over all sources.
pub const ROWS_PER_MINUTE: u32 = 60;
/// Sources remembered at most; beyond, unknown sources share one entry.
const MAX_SOURCES: usize = 10_000;

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// Write it, with the number of failures of its source skipped since the last row.
    Write { skipped: u64 },
    /// Count it only.
    Skip,
}

#[derive(Debug)]
struct Source {
    written_at: Instant,
    skipped: u64,
}

#[derive(Debug)]
struct State {
    minute_start: Instant,
    written_this_minute: u32,
    sources: HashMap<Option<IpAddr>, Source>,
}

#[derive(Debug)]
pub struct FailureSampler {
    state: Mutex<State>,
}

impl Default for FailureSampler {
    fn default() -> Self {
        FailureSampler {
            state: Mutex::new(State {
                minute_start: Instant::now(),
                written_this_minute: 0,
                sources: HashMap::new(),
            }),
        }
    }
}

impl FailureSampler {
    /// Decides about one failure from `source`.
    pub fn sample(&self, source: Option<IpAddr>) -> Sample {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(st.minute_start) >= Duration::from_secs(60) {
            st.minute_start = now;
            st.written_this_minute = 0;
        }
        let key = if st.sources.len() >= MAX_SOURCES && !st.sources.contains_key(&source) {
            st.sources
                .retain(|_, s| now.duration_since(s.written_at) < PER_SOURCE_INTERVAL);
            if st.sources.len() >= MAX_SOURCES {
                None
            } else {
                source
            }
        } else {
            source
        };
        let global_room = st.written_this_minute < ROWS_PER_MINUTE;
        let entry = st.sources.entry(key);
        let due = match &entry {
            std::collections::hash_map::Entry::Occupied(o) => {
                now.duration_since(o.get().written_at) >= PER_SOURCE_INTERVAL
            }
            std::collections::hash_map::Entry::Vacant(_) => true,
        };
        if due && global_room {
            let skipped = match entry {
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let s = o.get_mut();
                    s.written_at = now;
                    std::mem::take(&mut s.skipped)
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Source {
                        written_at: now,
                        skipped: 0,
                    });
                    0
                }
            };
            st.written_this_minute += 1;
            Sample::Write { skipped }
        } else {
            let s = entry.or_insert(Source {
                // Never written: due as soon as the global budget allows.
                written_at: now - PER_SOURCE_INTERVAL,
                skipped: 0,
            });
            s.skipped += 1;
            Sample::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_source_and_interval_with_the_skipped_count() {
        let s = FailureSampler::default();
        let a: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        let b: Option<IpAddr> = Some("192.0.2.2".parse().unwrap());
        assert_eq!(s.sample(a), Sample::Write { skipped: 0 });
        for _ in 0..500 {
            assert_eq!(s.sample(a), Sample::Skip);
        }
        assert_eq!(s.sample(b), Sample::Write { skipped: 0 }, "another source");
        // Once the interval passed, the next row says what was skipped.
        s.state
            .lock()
            .unwrap()
            .sources
            .get_mut(&a)
            .unwrap()
            .written_at -= PER_SOURCE_INTERVAL;
        assert_eq!(s.sample(a), Sample::Write { skipped: 500 });
    }

    #[test]
    fn many_sources_are_bounded_per_minute() {
        let s = FailureSampler::default();
        let written = (0..5000u32)
            .map(|i| Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))))
            .filter(|ip| matches!(s.sample(*ip), Sample::Write { .. }))
            .count();
        assert_eq!(written, ROWS_PER_MINUTE as usize);
        assert!(s.state.lock().unwrap().sources.len() <= MAX_SOURCES);
    }
}
