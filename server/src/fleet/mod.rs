//! The fleet: which hosts a label selector and a status pick, page by page, and the saved
//! groups that name a selector.
//!
//! Selection is a keyset scan of the hosts in name order, in batches of [`SCAN_BATCH`] rows:
//! the store narrows each batch in SQL with the substrings the selector needs
//! ([`Selector::must_contain`]), and the selector itself decides on what comes back, against
//! the host's admin labels over its agent's ([`labels::effective`]: the admin wins on a shared
//! key). A name search narrows each batch in SQL too. Memory stays bounded by the batch and the page, whatever the fleet's size.
//!
//! A host's status is its adapter's view ([`HostAdapter::route`](crate::hosts::HostAdapter)):
//! an agent host is `online` while an agent of it has a live session, a direct host is
//! always `online` (the server dials it on demand). `pending` is a host that enrolled with a
//! token that needs approval and waits for an admin's ([`Host::is_pending`]), whatever its
//! agent does; [`Fleet::status`] is the one place that reads it.
//!
//! The hosts of a rollout are named one of three ways ([`Targets`]): a selector, a saved
//! group (its stored selector, by id or name), or a list of host ids (in the order given).
//!
//! Owns: matching hosts against a query, the status a query filters on, finding a group by
//! id or name, and resolving a rollout's targets. Must not: write hosts or groups (the API
//! does, through the store), or reach a host.

use std::collections::HashSet;
use std::fmt;

use crate::error::ApiError;
use crate::hosts::Adapters;
use crate::labels::{self, Selector};
use crate::store::{Group, Host, Result, Store};

/// Hosts read per batch of the scan.
pub const SCAN_BATCH: i64 = 500;

/// The status a query may filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    Online,
    Offline,
    /// Waiting for an admin's approval.
    Pending,
}

impl HostStatus {
    pub fn parse(s: &str) -> Option<HostStatus> {
        match s {
            "online" => Some(HostStatus::Online),
            "offline" => Some(HostStatus::Offline),
            "pending" => Some(HostStatus::Pending),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Online => "online",
            HostStatus::Offline => "offline",
            HostStatus::Pending => "pending",
        }
    }
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which hosts to pick: those the selector matches and, when given, in that status and
/// whose name contains `name` (case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostQuery {
    pub selector: Selector,
    pub status: Option<HostStatus>,
    /// A substring of the host's name, lowercase (see [`HostQuery::with_name`]).
    pub name: Option<String>,
}

impl HostQuery {
    /// The same query, also asking that the name contain `q` in any case. An empty `q`
    /// asks nothing.
    pub fn with_name(mut self, q: Option<&str>) -> HostQuery {
        self.name = q.filter(|q| !q.is_empty()).map(str::to_lowercase);
        self
    }
}

/// One page of hosts, and the name to continue after when more may match.
#[derive(Debug, Clone)]
pub struct Page {
    pub hosts: Vec<Host>,
    pub next: Option<String>,
}

/// More hosts matched than the caller can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {max} hosts match")]
pub struct TooMany {
    pub max: usize,
}

/// Host selection over the store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fleet {
    store: Store,
    adapters: Adapters,
}

impl Fleet {
    pub fn new(store: Store, adapters: Adapters) -> Fleet {
        Fleet { store, adapters }
    }

    /// The host's status now (see the module docs).
    pub fn status(&self, h: &Host) -> HostStatus {
        if h.is_pending() {
            return HostStatus::Pending;
        }
        match self.adapters.for_host(h) {
            Ok(a) if a.route().online => HostStatus::Online,
            _ => HostStatus::Offline,
        }
    }

    /// Whether `h` is picked by `q`.
    pub fn matches(&self, q: &HostQuery, h: &Host) -> bool {
        q.selector
            .matches(&labels::effective(&h.labels, &h.agent_labels))
            && q.status.is_none_or(|s| self.status(h) == s)
            && q.name
                .as_deref()
                .is_none_or(|n| h.name.to_lowercase().contains(n))
    }

    /// Up to `limit` matching hosts whose names sort after `after`, in name order; `next`
    /// is set only when another match follows.
    pub async fn page(&self, q: &HostQuery, after: Option<String>, limit: usize) -> Result<Page> {
        let limit = limit.max(1);
        let mut hosts = Vec::new();
        let mut more = false;
        self.scan(q, after, |h| {
            if hosts.len() == limit {
                more = true;
                return false;
            }
            hosts.push(h);
            true
        })
        .await?;
        let next = more.then(|| hosts.last().map(|h| h.name.clone())).flatten();
        Ok(Page { hosts, next })
    }

    /// How many hosts match.
    pub async fn count(&self, q: &HostQuery) -> Result<u64> {
        let mut n = 0;
        self.scan(q, None, |_| {
            n += 1;
            true
        })
        .await?;
        Ok(n)
    }

    /// Every matching host, in name order; `Ok(Err(TooMany))` past `max`.
    pub async fn select(
        &self,
        q: &HostQuery,
        max: usize,
    ) -> Result<std::result::Result<Vec<Host>, TooMany>> {
        let mut hosts = Vec::new();
        let mut over = false;
        self.scan(q, None, |h| {
            if hosts.len() == max {
                over = true;
                return false;
            }
            hosts.push(h);
            true
        })
        .await?;
        Ok(if over {
            Err(TooMany { max })
        } else {
            Ok(hosts)
        })
    }

    /// Hands each matching host after `after` to `take`, in name order, until `take` returns
    /// false or the hosts end.
    async fn scan(
        &self,
        q: &HostQuery,
        mut after: Option<String>,
        mut take: impl FnMut(Host) -> bool,
    ) -> Result<()> {
        let must = q.selector.must_contain();
        loop {
            let batch = self
                .store
                .scan_hosts(after.as_deref(), &must, q.name.as_deref(), SCAN_BATCH)
                .await?;
            let last = batch.len() < SCAN_BATCH as usize;
            for h in batch {
                after = Some(h.name.clone());
                if self.matches(q, &h) && !take(h) {
                    return Ok(());
                }
            }
            if last {
                return Ok(());
            }
        }
    }

    /// The group with this id, else the one with this name.
    pub async fn group(&self, id_or_name: &str) -> Result<Option<Group>> {
        if let Some(g) = self.store.get_group(id_or_name).await? {
            return Ok(Some(g));
        }
        self.store.get_group_by_name(id_or_name).await
    }

    /// The hosts `targets` name, at most `max`, and the group it named.
    ///
    /// Errors: `not_found` (a group, or a host id), `invalid_params` (a bad selector, a host
    /// id listed twice, no host, more than `max`), `internal`.
    pub async fn resolve(
        &self,
        targets: &Targets,
        max: usize,
    ) -> std::result::Result<Resolved, ApiError> {
        let (hosts, group) = match targets {
            Targets::Selector(text) => (self.select_text(text, max).await?, None),
            Targets::Group(name) => {
                let g = self
                    .group(name)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("group {name:?} not found")))?;
                (self.select_text(&g.selector, max).await?, Some(g))
            }
            Targets::HostIds(ids) => (self.hosts_by_id(ids, max).await?, None),
        };
        if hosts.is_empty() {
            return Err(ApiError::bad_request("no host matches"));
        }
        Ok(Resolved { hosts, group })
    }

    async fn select_text(
        &self,
        text: &str,
        max: usize,
    ) -> std::result::Result<Vec<Host>, ApiError> {
        let selector = Selector::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let q = HostQuery {
            selector,
            ..HostQuery::default()
        };
        self.select(&q, max)
            .await?
            .map_err(|e| ApiError::bad_request(format!("{e} (at most {max} per rollout)")))
    }

    async fn hosts_by_id(
        &self,
        ids: &[String],
        max: usize,
    ) -> std::result::Result<Vec<Host>, ApiError> {
        if ids.len() > max {
            return Err(ApiError::bad_request(format!(
                "at most {max} host ids, got {}",
                ids.len()
            )));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(ApiError::bad_request(format!(
                "host {dup:?} is listed twice"
            )));
        }
        let mut found: std::collections::HashMap<String, Host> = self
            .store
            .get_hosts(ids)
            .await?
            .into_iter()
            .map(|h| (h.id.clone(), h))
            .collect();
        ids.iter()
            .map(|id| {
                found
                    .remove(id)
                    .ok_or_else(|| ApiError::not_found(format!("host {id:?} not found")))
            })
            .collect()
    }
}

/// How a rollout names its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// A label selector (text).
    Selector(String),
    /// A saved group, by id or name.
    Group(String),
    /// These hosts, in this order.
    HostIds(Vec<String>),
}

/// The hosts a [`Targets`] named.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub hosts: Vec<Host>,
    /// The group, when it named one.
    pub group: Option<Group>,
}
