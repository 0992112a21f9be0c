//! The rules across keys of a typed compose file: every service has an image, references
//! name things that exist, `depends_on` has no cycle, and names do not collide. Also the
//! dependency order.
//!
//! Owns: cross-key checks and the start order. Must not: check single values (see `schema`).

use super::error::{index, join, ErrorKind, Problems};
use super::plan::{container_name, Condition};
use docker_compose_types::{
    Compose, ComposeNetwork, DependsOnOptions, ExternalVolume, Networks, Service, Volumes,
};
use std::collections::{BTreeMap, BTreeSet};

/// The services of a file by name (services written as `null` count as empty).
pub(super) fn services(c: &Compose) -> BTreeMap<&str, Service> {
    c.services
        .0
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone().unwrap_or_default()))
        .collect()
}

/// The dependencies of a service, sorted by name.
pub(super) fn dependencies(svc: &Service) -> Vec<(String, Condition)> {
    let mut out: Vec<(String, Condition)> = match &svc.depends_on {
        DependsOnOptions::Simple(list) => list
            .iter()
            .map(|s| (s.clone(), Condition::ServiceStarted))
            .collect(),
        DependsOnOptions::Conditional(map) => map
            .iter()
            .map(|(s, c)| {
                let cond = if c.condition == "service_healthy" {
                    Condition::ServiceHealthy
                } else {
                    Condition::ServiceStarted
                };
                (s.clone(), cond)
            })
            .collect(),
    };
    out.sort();
    out
}

/// The network keys a service joins, sorted; `default` when it names none.
pub(super) fn network_keys(svc: &Service) -> Vec<String> {
    if svc.network_mode.is_some() {
        return Vec::new();
    }
    let mut keys: Vec<String> = match &svc.networks {
        Networks::Simple(list) => list.clone(),
        Networks::Advanced(adv) => adv.0.keys().cloned().collect(),
    };
    if keys.is_empty() {
        keys.push("default".into());
    }
    keys.sort();
    keys.dedup();
    keys
}

pub(super) fn network_is_external(n: &docker_compose_types::NetworkSettings) -> bool {
    matches!(
        n.external,
        Some(ComposeNetwork::Bool(true)) | Some(ComposeNetwork::Detailed(_))
    )
}

pub(super) fn volume_is_external(v: &docker_compose_types::ComposeVolume) -> bool {
    matches!(
        v.external,
        Some(ExternalVolume::Bool(true)) | Some(ExternalVolume::Name { .. })
    )
}

/// Pushes every cross-key problem of `c`, skipping paths that already have one.
pub(super) fn check(project: &str, c: &Compose, problems: &mut Problems) {
    let mut found = Problems::default();
    if let Some(name) = &c.name {
        if name != project {
            found.push(
                "name",
                ErrorKind::Name,
                format!("the file names project {name:?} but the stack is {project:?}"),
            );
        }
    }
    let all = services(c);
    for (name, svc) in &all {
        check_service(c, &all, name, svc, &mut found);
    }
    check_container_names(project, &all, &mut found);
    check_cycles(&all, &mut found);
    for e in found.0 {
        if !problems.0.iter().any(|p| p.path == e.path) {
            problems.0.push(e);
        }
    }
}

fn check_service(
    c: &Compose,
    all: &BTreeMap<&str, Service>,
    name: &str,
    svc: &Service,
    found: &mut Problems,
) {
    let path = join("services", name);
    if svc.image.as_deref().unwrap_or_default().is_empty() {
        found.push(
            &join(&path, "image"),
            ErrorKind::Missing,
            "a service needs an image (building images is not supported)",
        );
    }
    for (dep, cond) in dependencies(svc) {
        let p = join(&join(&path, "depends_on"), &dep);
        match all.get(dep.as_str()) {
            None => found.push(&p, ErrorKind::Reference, format!("no service {dep:?}")),
            Some(_) if dep == name => {
                found.push(&p, ErrorKind::Cycle, "a service cannot depend on itself")
            }
            Some(d) if cond == Condition::ServiceHealthy && health_disabled(d) => found.invalid(
                &p,
                format!("{dep:?} has its healthcheck disabled, so it never becomes healthy"),
            ),
            Some(_) => {}
        }
    }
    let has_networks = match &svc.networks {
        Networks::Simple(l) => !l.is_empty(),
        Networks::Advanced(a) => !a.0.is_empty(),
    };
    if svc.network_mode.is_some() && has_networks {
        found.invalid(
            &join(&path, "networks"),
            "networks and network_mode cannot be combined",
        );
    }
    for key in network_keys(svc) {
        if key != "default" && !c.networks.0.contains_key(&key) {
            let p = join(&join(&path, "networks"), &key);
            found.push(
                &p,
                ErrorKind::Reference,
                format!("network {key:?} is not defined under the top-level networks"),
            );
        }
    }
    check_volume_refs(c, &path, svc, found);
}

fn health_disabled(svc: &Service) -> bool {
    svc.healthcheck.as_ref().is_some_and(|h| {
        h.disable
            || matches!(&h.test, Some(docker_compose_types::HealthcheckTest::Multiple(t)) if t.first().map(String::as_str) == Some("NONE"))
    })
}

fn check_volume_refs(c: &Compose, path: &str, svc: &Service, found: &mut Problems) {
    for (i, v) in svc.volumes.iter().enumerate() {
        let Volumes::Advanced(v) = v else { continue };
        if v._type != "volume" {
            continue;
        }
        let source = v.source.as_deref().unwrap_or_default();
        if !c.volumes.0.contains_key(source) {
            found.push(
                &index(&join(path, "volumes"), i),
                ErrorKind::Reference,
                format!("volume {source:?} is not defined under the top-level volumes"),
            );
        }
    }
}

fn check_container_names(project: &str, all: &BTreeMap<&str, Service>, found: &mut Problems) {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (name, svc) in all {
        let cname = svc
            .container_name
            .clone()
            .unwrap_or_else(|| container_name(project, name));
        if let Some(other) = seen.insert(cname.clone(), name) {
            found.push(
                &join(&join("services", name), "container_name"),
                ErrorKind::Name,
                format!(
                    "container name {cname:?} is also the name of service {other:?}'s container"
                ),
            );
        }
    }
}

/// Reports each `depends_on` cycle once, at the first service of the cycle.
fn check_cycles(all: &BTreeMap<&str, Service>, found: &mut Problems) {
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in all.keys() {
        if let Some(mut cycle) = find_cycle(all, start) {
            let first = cycle.iter().min().cloned().unwrap_or_default();
            let pos = cycle.iter().position(|s| *s == first).unwrap_or(0);
            cycle.rotate_left(pos);
            if cycle.len() > 1 && reported.insert(cycle.clone()) {
                let mut shown = cycle.clone();
                shown.push(first.clone());
                found.push(
                    &join(&join("services", &first), "depends_on"),
                    ErrorKind::Cycle,
                    format!("depends_on forms a cycle: {}", shown.join(" -> ")),
                );
            }
        }
    }
}

/// A cycle through `start`, as the list of services on it, if there is one.
fn find_cycle(all: &BTreeMap<&str, Service>, start: &str) -> Option<Vec<String>> {
    // Depth-first search with an explicit stack: (service, index of the next dependency).
    let deps = |s: &str| -> Vec<String> {
        all.get(s)
            .map(|svc| dependencies(svc).into_iter().map(|(d, _)| d).collect())
            .unwrap_or_default()
    };
    let mut path: Vec<(String, Vec<String>, usize)> = vec![(start.to_string(), deps(start), 0)];
    let mut done: BTreeSet<String> = BTreeSet::new();
    while let Some((node, children, next)) = path.last_mut() {
        if *next >= children.len() {
            done.insert(node.clone());
            path.pop();
            continue;
        }
        let child = children[*next].clone();
        *next += 1;
        if child == start {
            return Some(path.iter().map(|(n, _, _)| n.clone()).collect());
        }
        if done.contains(&child) || path.iter().any(|(n, _, _)| *n == child) {
            continue;
        }
        let grandchildren = deps(&child);
        path.push((child, grandchildren, 0));
    }
    None
}

/// Service names in start order: dependencies first, otherwise by name. Services on a cycle
/// (which [`check`] refuses) come last, by name.
pub(super) fn start_order(c: &Compose) -> Vec<String> {
    let all = services(c);
    let mut pending: BTreeMap<&str, BTreeSet<String>> = all
        .iter()
        .map(|(name, svc)| {
            let deps = dependencies(svc)
                .into_iter()
                .map(|(d, _)| d)
                .filter(|d| all.contains_key(d.as_str()) && d != name)
                .collect();
            (*name, deps)
        })
        .collect();
    let mut order = Vec::new();
    loop {
        let ready: Vec<&str> = pending
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(n, _)| *n)
            .collect();
        let Some(next) = ready.first().copied() else {
            break;
        };
        pending.remove(next);
        for deps in pending.values_mut() {
            deps.remove(next);
        }
        order.push(next.to_string());
    }
    order.extend(pending.keys().map(|s| s.to_string()));
    order
}
