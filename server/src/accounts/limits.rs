//! Limits on failed sign-ins, per client address and per user name, that never lock out the
//! person who owns the account.
//!
//! A failure counts against the address it came from (a window of one minute) and against
//! the user name it tried (a window of fifteen minutes). Once either budget is used up, the
//! next attempts are refused with `rate_limited` *before* the password is checked, so
//! guessing stops; except for a browser that holds a device cookie of that user (given at an
//! earlier successful sign-in): its attempts are always checked, so a correct password from
//! a good client still works while someone else hammers the account or shares the address.
//!
//! Owns: the counters. Must not: check passwords or know HTTP.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures per key in fixed windows.
#[derive(Debug)]
struct Window<K> {
    budget: u32,
    length: Duration,
    map: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Eq + Hash + Clone> Window<K> {
    fn new(budget: u32, length: Duration) -> Self {
        Window {
            budget,
            length,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn used_up(&self, key: &K) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .is_some_and(|(start, n)| start.elapsed() < self.length && *n >= self.budget)
    }

    fn fail(&self, key: &K) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            let length = self.length;
            map.retain(|_, (s, _)| s.elapsed() < length);
        }
        let e = map.entry(key.clone()).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= self.length {
            *e = (Instant::now(), 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

/// Why an attempt was not even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Address,
    User,
}

impl Limited {
    pub fn message(self) -> &'static str {
        match self {
            Limited::Address => "too many failed sign-ins from this address; retry in a minute",
            Limited::User => {
                "too many failed sign-ins for this user; retry later, or sign in from a browser \
                 that signed in as this user before"
            }
        }
    }
}

#[derive(Debug)]
pub struct SigninLimiter {
    address: Window<IpAddr>,
    user: Window<String>,
}

impl SigninLimiter {
    /// `per_address` failures a minute per client address, `per_user` failures per fifteen
    /// minutes per user name.
    pub fn new(per_address: u32, per_user: u32) -> Self {
        SigninLimiter {
            address: Window::new(per_address, Duration::from_secs(60)),
            user: Window::new(per_user, Duration::from_secs(15 * 60)),
        }
    }

    /// Whether an attempt for `user` from `ip` may be checked. `trusted`: the browser holds
    /// a device cookie of this user.
    pub fn admit(&self, user: &str, ip: Option<IpAddr>, trusted: bool) -> Result<(), Limited> {
        if trusted {
            return Ok(());
        }
        if ip.is_some_and(|ip| self.address.used_up(&ip)) {
            return Err(Limited::Address);
        }
        if self.user.used_up(&user.to_string()) {
            return Err(Limited::User);
        }
        Ok(())
    }

    /// Whether an attempt without a user name (a sign-in link) from `ip` may be checked.
    pub fn admit_address(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        match ip {
            Some(ip) if self.address.used_up(&ip) => Err(Limited::Address),
            _ => Ok(()),
        }
    }

    /// A checked attempt without a user name failed.
    pub fn failed_address(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.address.fail(&ip);
        }
    }

    /// A checked attempt failed.
    pub fn failed(&self, user: &str, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.address.fail(&ip);
        }
        self.user.fail(&user.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_per_address_and_per_user_and_a_trusted_device_passes() {
        let l = SigninLimiter::new(3, 5);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.admit("alice", Some(a), false).is_ok());
            l.failed("alice", Some(a));
        }
        assert_eq!(l.admit("bob", Some(a), false), Err(Limited::Address));
        assert!(l.admit("alice", Some(b), false).is_ok(), "another address");
        l.failed("alice", Some(b));
        l.failed("alice", Some(b));
        assert_eq!(l.admit("alice", Some(b), false), Err(Limited::User));
        assert!(l.admit("carol", Some(b), false).is_ok(), "another user");
        assert!(l.admit("alice", Some(a), true).is_ok(), "a trusted device");
    }
}
