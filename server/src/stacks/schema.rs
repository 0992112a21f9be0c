//! The supported subset of the compose file, as a table of keys, and a walk over the YAML
//! tree that checks it: every key outside the table is reported with its path (nothing is
//! silently dropped), values of the wrong type are reported, and the short syntaxes are
//! rewritten into one long form each (ports, volumes, networks, depends_on, environment,
//! labels, extra_hosts), so the typed model reads one shape per key. Scalars given as strings
//! (after interpolation) are cast to the type the key takes, as compose does.
//!
//! Owns: what is supported, and the short-syntax parsers. Must not: build Engine API bodies.
//! Extension keys (`x-...`) are accepted and ignored at the top level and in services,
//! networks and volumes, as the compose specification says.

use super::convert;
use super::error::{index, join, Problems};
use super::plan::RESERVED_LABEL_PREFIX;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Checks and rewrites one key's value; `None` drops it (a problem was reported, or the
/// value means "unset").
type Norm = fn(&mut Walk, &str, Value) -> Option<Value>;

/// The state of one walk over a file.
pub(super) struct Walk<'a> {
    pub problems: &'a mut Problems,
    /// The stack's variables, for `environment` entries given without a value.
    pub env: &'a BTreeMap<String, String>,
    pub warnings: &'a mut Vec<String>,
}

const TOP: &[(&str, Norm)] = &[
    ("name", string),
    ("version", version),
    ("services", services),
    ("networks", networks),
    ("volumes", volumes),
];

const SERVICE: &[(&str, Norm)] = &[
    ("image", image),
    ("command", command),
    ("entrypoint", command),
    ("environment", environment),
    ("ports", ports),
    ("volumes", service_volumes),
    ("tmpfs", tmpfs),
    ("networks", service_networks),
    ("restart", restart),
    ("labels", labels),
    ("depends_on", depends_on),
    ("healthcheck", healthcheck),
    ("user", string),
    ("working_dir", absolute_path),
    ("cap_add", string_list),
    ("cap_drop", string_list),
    ("devices", devices),
    ("privileged", boolean),
    ("network_mode", network_mode),
    ("read_only", boolean),
    ("logging", logging),
    ("deploy", deploy),
    ("mem_limit", size),
    ("cpus", cpus),
    ("extra_hosts", extra_hosts),
    ("dns", string_or_list),
    ("hostname", string),
    ("stop_grace_period", duration),
    ("init", boolean),
    ("container_name", container_name),
    ("pull_policy", pull_policy),
];

const NETWORK: &[(&str, Norm)] = &[
    ("driver", string),
    ("driver_opts", string_map),
    ("labels", labels),
    ("external", external),
    ("name", docker_name),
];

const VOLUME: &[(&str, Norm)] = &[
    ("driver", string),
    ("driver_opts", string_map),
    ("labels", labels),
    ("external", external),
    ("name", docker_name),
];

const HEALTHCHECK: &[(&str, Norm)] = &[
    ("test", health_test),
    ("interval", duration),
    ("timeout", duration),
    ("retries", integer),
    ("start_period", duration),
    ("disable", boolean),
];

const LOGGING: &[(&str, Norm)] = &[("driver", string), ("options", string_map)];
const DEPLOY: &[(&str, Norm)] = &[("resources", resources)];
const RESOURCES: &[(&str, Norm)] = &[("limits", limits)];
const LIMITS: &[(&str, Norm)] = &[("cpus", cpus), ("memory", size)];
const SERVICE_NETWORK: &[(&str, Norm)] = &[("aliases", string_list)];
const DEPENDENCY: &[(&str, Norm)] = &[("condition", condition)];
const PORT: &[(&str, Norm)] = &[
    ("target", port_number),
    ("published", published),
    ("host_ip", ip),
    ("protocol", protocol),
    ("mode", port_mode),
];
const MOUNT: &[(&str, Norm)] = &[
    ("type", mount_type),
    ("source", string),
    ("target", absolute_path),
    ("read_only", boolean),
    ("bind", bind_options),
    ("volume", volume_options),
    ("tmpfs", tmpfs_options),
];
const BIND: &[(&str, Norm)] = &[
    ("propagation", propagation),
    ("create_host_path", boolean),
    ("selinux", selinux),
];
const VOLUME_OPTS: &[(&str, Norm)] = &[("nocopy", boolean)];
const TMPFS_OPTS: &[(&str, Norm)] = &[("size", size_number)];

/// Checks and rewrites a whole file.
pub(super) fn normalize(walk: &mut Walk, root: Mapping) -> Mapping {
    let mut out = object(walk, "", root, TOP, true);
    if !out.contains_key("services") {
        walk.problems.push(
            "services",
            super::error::ErrorKind::Missing,
            "a stack needs at least one service",
        );
    }
    out.remove("version");
    out
}

/// Checks a mapping's keys against `table` and rewrites each value.
fn object(
    walk: &mut Walk,
    path: &str,
    map: Mapping,
    table: &[(&str, Norm)],
    extensions: bool,
) -> Mapping {
    let mut out = Mapping::new();
    for (k, v) in map {
        let Some(key) = key_str(walk, path, &k) else {
            continue;
        };
        let p = join(path, &key);
        if extensions && key.starts_with("x-") {
            continue;
        }
        match table.iter().find(|(name, _)| *name == key) {
            Some((_, norm)) => {
                if let Some(v) = norm(walk, &p, v) {
                    out.insert(Value::String(key), v);
                }
            }
            None => walk.problems.unsupported(&p),
        }
    }
    out
}

fn key_str(walk: &mut Walk, path: &str, k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => {
            walk.problems.invalid(path, "keys must be strings");
            None
        }
    }
}

/// A mapping (null counts as empty), or a reported problem.
fn mapping(walk: &mut Walk, path: &str, v: Value) -> Option<Mapping> {
    match v {
        Value::Mapping(m) => Some(m),
        Value::Null => Some(Mapping::new()),
        other => {
            walk.problems
                .invalid(path, format!("expected a mapping, found {}", kind(&other)));
            None
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn sub(walk: &mut Walk, path: &str, v: Value, table: &[(&str, Norm)]) -> Option<Value> {
    let m = mapping(walk, path, v)?;
    Some(Value::Mapping(object(walk, path, m, table, false)))
}

// ---- scalars ----

/// A scalar as text: strings as they are, numbers and booleans written out.
fn text(walk: &mut Walk, path: &str, v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => {
            walk.problems
                .invalid(path, format!("expected a string, found {}", kind(&other)));
            None
        }
    }
}

/// Like [`text`], then checked by `check`.
fn checked(
    walk: &mut Walk,
    path: &str,
    v: Value,
    check: impl FnOnce(&str) -> Result<String, String>,
) -> Option<Value> {
    let s = text(walk, path, v)?;
    match check(&s) {
        Ok(s) => Some(Value::String(s)),
        Err(m) => {
            walk.problems.invalid(path, m);
            None
        }
    }
}

fn string(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    match v {
        Value::Bool(_) => {
            walk.problems
                .invalid(path, "expected a string, found a boolean");
            None
        }
        v => text(walk, path, v).map(Value::String),
    }
}

fn version(walk: &mut Walk, _path: &str, _v: Value) -> Option<Value> {
    walk.warnings
        .push("the top-level `version` key is obsolete and ignored".into());
    None
}

fn boolean(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let b = match &v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "true" | "True" | "TRUE" | "1" | "t" | "T" => Some(true),
            "false" | "False" | "FALSE" | "0" | "f" | "F" => Some(false),
            _ => None,
        },
        _ => None,
    };
    if b.is_none() {
        walk.problems.invalid(path, "expected true or false");
    }
    b.map(Value::Bool)
}

fn integer(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let n = match &v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n <= u32::MAX as u64 => Some(Value::Number(n.into())),
        _ => {
            walk.problems
                .invalid(path, "expected a whole number (0 to 4294967295)");
            None
        }
    }
}

fn duration(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    checked(walk, path, v, |s| {
        convert::duration_ns(s).map(|_| s.to_string())
    })
}

/// A byte size, rewritten as a number of bytes in a string.
fn size(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    checked(walk, path, v, |s| convert::bytes(s).map(|b| b.to_string()))
}

/// A byte size, rewritten as a number.
fn size_number(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let s = text(walk, path, v)?;
    match convert::bytes(&s) {
        Ok(b) => Some(Value::Number((b as u64).into())),
        Err(m) => {
            walk.problems.invalid(path, m);
            None
        }
    }
}

fn cpus(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    checked(walk, path, v, |s| {
        convert::nano_cpus(s).map(|_| s.trim().to_string())
    })
}

fn absolute_path(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    checked(walk, path, v, |s| {
        if s.starts_with('/') {
            Ok(s.to_string())
        } else {
            Err(format!("{s:?} must be an absolute path"))
        }
    })
}

fn docker_name(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    checked(walk, path, v, |s| {
        protocol::ops::check_name(s)
            .map(|_| s.to_string())
            .map_err(|e| e.message)
    })
}

fn image(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    checked(walk, path, v, |s| {
        protocol::ops::check_id(s)
            .map(|_| s.to_string())
            .map_err(|_| format!("invalid image reference {s:?}"))
    })
}

fn container_name(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    docker_name(walk, path, v)
}

fn one_of(
    walk: &mut Walk,
    path: &str,
    v: Value,
    allowed: &'static [&'static str],
) -> Option<Value> {
    checked(walk, path, v, |s| {
        if allowed.contains(&s) {
            Ok(s.to_string())
        } else {
            Err(format!(
                "{s:?} is not supported here; use one of: {}",
                allowed.join(", ")
            ))
        }
    })
}

fn restart(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let v = if v == Value::Bool(false) {
        Value::from("no")
    } else {
        v
    };
    checked(walk, path, v, |s| {
        protocol::ops::parse_restart_policy(s)
            .map(|_| s.to_string())
            .map_err(|_| format!("invalid restart policy {s:?}: use no, always, unless-stopped, on-failure or on-failure:N"))
    })
}

fn pull_policy(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let v = if v == "if_not_present" {
        Value::from("missing")
    } else {
        v
    };
    one_of(walk, path, v, &["missing", "always", "never"])
}

fn condition(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    one_of(walk, path, v, &["service_started", "service_healthy"])
}

fn protocol(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    one_of(walk, path, v, &["tcp", "udp", "sctp"])
}

fn port_mode(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    one_of(walk, path, v, &["host", "ingress"])?;
    None
}

fn mount_type(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    one_of(walk, path, v, &["bind", "volume", "tmpfs"])
}

fn propagation(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    one_of(walk, path, v, &PROPAGATIONS)
}

fn selinux(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    one_of(walk, path, v, &["z", "Z"])
}

const PROPAGATIONS: [&str; 6] = [
    "shared", "slave", "private", "rshared", "rslave", "rprivate",
];

fn ip(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    checked(walk, path, v, |s| {
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>()
            .map(|_| bare.to_string())
            .map_err(|_| format!("invalid IP address {s:?}"))
    })
}

fn network_mode(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    checked(walk, path, v, |s| {
        match s {
        "bridge" | "host" | "none" | "default" => Ok(s.to_string()),
        _ => match s.strip_prefix("container:") {
            Some(c) if protocol::ops::check_id(c).is_ok() => Ok(s.to_string()),
            _ if s.starts_with("service:") => Err("network_mode service:<name> is not supported; put the services on a shared network instead".into()),
            _ => Err(format!("invalid network_mode {s:?}: use bridge, host, none or container:<name>")),
        },
    }
    })
}

// ---- lists and maps ----

fn string_list(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let Value::Sequence(list) = v else {
        walk.problems
            .invalid(path, format!("expected a list, found {}", kind(&v)));
        return None;
    };
    let out = list
        .into_iter()
        .enumerate()
        .filter_map(|(i, x)| string(walk, &index(path, i), x))
        .collect();
    Some(Value::Sequence(out))
}

fn string_or_list(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    match v {
        Value::Sequence(_) => string_list(walk, path, v),
        v => string(walk, path, v).map(|s| Value::Sequence(vec![s])),
    }
}

/// A mapping of names to scalars, written out as strings (`driver_opts`, `logging.options`).
fn string_map(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let m = mapping(walk, path, v)?;
    let mut out = Mapping::new();
    for (k, x) in m {
        let Some(key) = key_str(walk, path, &k) else {
            continue;
        };
        if let Some(s) = text(walk, &join(path, &key), x) {
            out.insert(Value::String(key), Value::String(s));
        }
    }
    Some(Value::Mapping(out))
}

fn command(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Sequence(_) => string_list(walk, path, v),
        Value::String(s) => match convert::shell_words(&s) {
            Ok(_) => Some(Value::String(s)),
            Err(m) => {
                walk.problems.invalid(path, m);
                None
            }
        },
        other => string(walk, path, other),
    }
}

fn health_test(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let v = command(walk, path, v)?;
    if let Value::Sequence(list) = &v {
        let first = list.first().and_then(Value::as_str).unwrap_or_default();
        let ok = match first {
            "NONE" => true,
            "CMD" | "CMD-SHELL" => list.len() >= 2,
            _ => false,
        };
        if !ok {
            walk.problems.invalid(
                path,
                "a test list starts with CMD or CMD-SHELL followed by the command, or is [NONE]",
            );
            return None;
        }
    }
    Some(v)
}

/// `KEY=value` lines or a mapping, rewritten as a mapping of strings. A key without a value
/// takes the stack's variable of that name, or is left out when there is none.
fn environment(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let pairs = pairs(walk, path, v, '=')?;
    let mut out = Mapping::new();
    for (key, value, p) in pairs {
        if key.is_empty() || key.contains('=') {
            walk.problems.invalid(&p, "invalid variable name");
            continue;
        }
        let value = value.or_else(|| walk.env.get(&key).cloned());
        if let Some(value) = value {
            out.insert(Value::String(key), Value::String(value));
        }
    }
    Some(Value::Mapping(out))
}

/// `key=value` lines or a mapping, rewritten as a mapping of strings. compose's own labels
/// are reserved.
fn labels(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let pairs = pairs(walk, path, v, '=')?;
    let mut out = Mapping::new();
    for (key, value, p) in pairs {
        if key.starts_with(RESERVED_LABEL_PREFIX) {
            walk.problems.invalid(
                &p,
                format!("labels starting with {RESERVED_LABEL_PREFIX} are set by docker-ctl"),
            );
            continue;
        }
        if key.is_empty() {
            walk.problems.invalid(&p, "empty label name");
            continue;
        }
        out.insert(Value::String(key), Value::String(value.unwrap_or_default()));
    }
    Some(Value::Mapping(out))
}

/// The entries of a `KEY<sep>value` list or a mapping, with each entry's path. Later entries
/// win over earlier ones with the same key.
fn pairs(
    walk: &mut Walk,
    path: &str,
    v: Value,
    sep: char,
) -> Option<Vec<(String, Option<String>, String)>> {
    let mut out: Vec<(String, Option<String>, String)> = Vec::new();
    match v {
        Value::Sequence(list) => {
            for (i, x) in list.into_iter().enumerate() {
                let p = index(path, i);
                let Some(line) = text(walk, &p, x) else {
                    continue;
                };
                let (k, val) = match line.split_once(sep) {
                    Some((k, val)) => (k.to_string(), Some(val.to_string())),
                    None => (line, None),
                };
                out.push((k, val, p));
            }
        }
        other => {
            for (k, x) in mapping(walk, path, other)? {
                let Some(key) = key_str(walk, path, &k) else {
                    continue;
                };
                let p = join(path, &key);
                let val = match x {
                    Value::Null => None,
                    x => text(walk, &p, x),
                };
                out.push((key, val, p));
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut deduped: Vec<_> = out
        .into_iter()
        .rev()
        .filter(|(k, _, _)| seen.insert(k.clone()))
        .collect();
    deduped.reverse();
    Some(deduped)
}

/// `host:ip` or `host=ip` lines, or a mapping of hosts to addresses; rewritten as `host:ip`.
fn extra_hosts(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let entries = match v {
        Value::Sequence(_) => {
            let mut out = Vec::new();
            let Value::Sequence(list) = string_list(walk, path, v)? else {
                return None;
            };
            for (i, x) in list.into_iter().enumerate() {
                let line = x.as_str().unwrap_or_default().to_string();
                let split = line.split_once('=').or_else(|| line.split_once(':'));
                match split {
                    Some((h, a)) => out.push((h.to_string(), a.to_string(), index(path, i))),
                    None => walk
                        .problems
                        .invalid(&index(path, i), "expected host:ip or host=ip"),
                }
            }
            out
        }
        other => pairs(walk, path, other, '=')?
            .into_iter()
            .map(|(h, a, p)| (h, a.unwrap_or_default(), p))
            .collect(),
    };
    let mut out = Vec::new();
    for (host, addr, p) in entries {
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || (addr != "host-gateway" && addr.parse::<IpAddr>().is_err()) {
            walk.problems.invalid(
                &p,
                format!("expected a host name and an IP address, got {host:?} and {addr:?}"),
            );
            continue;
        }
        out.push(Value::String(format!("{host}:{addr}")));
    }
    Some(Value::Sequence(out))
}

/// `/dev/host[:/dev/container[:rwm]]`.
fn devices(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let Value::Sequence(list) = string_list(walk, path, v)? else {
        return None;
    };
    let mut out = Vec::new();
    for (i, x) in list.into_iter().enumerate() {
        let s = x.as_str().unwrap_or_default();
        let parts: Vec<&str> = s.split(':').collect();
        let ok = parts.len() <= 3
            && parts.iter().take(2).all(|p| p.starts_with('/'))
            && parts
                .get(2)
                .is_none_or(|m| !m.is_empty() && m.chars().all(|c| "rwm".contains(c)));
        if ok {
            out.push(x);
        } else {
            walk.problems.invalid(
                &index(path, i),
                format!("invalid device {s:?}: use /dev/host[:/dev/container[:rwm]]"),
            );
        }
    }
    Some(Value::Sequence(out))
}

/// `tmpfs: /run` or a list of `/path[:options]`.
fn tmpfs(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let Value::Sequence(list) = string_or_list(walk, path, v)? else {
        return None;
    };
    let mut out = Vec::new();
    for (i, x) in list.into_iter().enumerate() {
        if x.as_str().is_some_and(|s| s.starts_with('/')) {
            out.push(x);
        } else {
            walk.problems.invalid(
                &index(path, i),
                "a tmpfs entry is an absolute path with optional :options",
            );
        }
    }
    Some(Value::Sequence(out))
}

// ---- sections ----

/// The most services, networks or volumes a stack may define.
pub const MAX_ENTRIES: usize = 256;

fn too_many(walk: &mut Walk, path: &str, m: &Mapping) -> bool {
    if m.len() > MAX_ENTRIES {
        walk.problems
            .invalid(path, format!("at most {MAX_ENTRIES} entries are supported"));
        return true;
    }
    false
}

fn services(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let m = mapping(walk, path, v)?;
    if too_many(walk, path, &m) {
        return None;
    }
    let mut out = Mapping::new();
    for (k, x) in m {
        let Some(name) = key_str(walk, path, &k) else {
            continue;
        };
        let p = join(path, &name);
        if !valid_key(&name) {
            walk.problems.push(
                &p,
                super::error::ErrorKind::Name,
                "a service name uses letters, digits, '.', '_' and '-'",
            );
            continue;
        }
        let Some(svc) = mapping(walk, &p, x) else {
            continue;
        };
        let mut svc = object(walk, &p, svc, SERVICE, true);
        fold_limits(walk, &p, &mut svc);
        out.insert(Value::String(name), Value::Mapping(svc));
    }
    Some(Value::Mapping(out))
}

/// Names of services, networks and volumes: letters, digits, `.`, `_`, `-`.
pub(super) fn valid_key(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Moves `cpus` and `mem_limit` into `deploy.resources.limits`, where the model reads them;
/// when both places are set they must agree.
fn fold_limits(walk: &mut Walk, path: &str, svc: &mut Mapping) {
    for (short, long) in [("cpus", "cpus"), ("mem_limit", "memory")] {
        let Some(v) = svc.remove(short) else { continue };
        let deploy = svc
            .entry(Value::from("deploy"))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        let Some(limits) = limits_of(deploy) else {
            continue;
        };
        match limits.get(long) {
            Some(existing) if !same_limit(short, existing, &v) => walk.problems.invalid(
                &join(path, short),
                format!("disagrees with deploy.resources.limits.{long}"),
            ),
            _ => {
                limits.insert(Value::from(long), v);
            }
        }
    }
}

fn limits_of(deploy: &mut Value) -> Option<&mut Mapping> {
    let resources = deploy
        .as_mapping_mut()?
        .entry(Value::from("resources"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    resources
        .as_mapping_mut()?
        .entry(Value::from("limits"))
        .or_insert_with(|| Value::Mapping(Mapping::new()))
        .as_mapping_mut()
}

fn same_limit(key: &str, a: &Value, b: &Value) -> bool {
    let (a, b) = (
        a.as_str().unwrap_or_default(),
        b.as_str().unwrap_or_default(),
    );
    if key == "cpus" {
        convert::nano_cpus(a).ok() == convert::nano_cpus(b).ok()
    } else {
        a == b
    }
}

fn healthcheck(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    sub(walk, path, v, HEALTHCHECK)
}

fn logging(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    sub(walk, path, v, LOGGING)
}

fn deploy(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    sub(walk, path, v, DEPLOY)
}

fn resources(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    sub(walk, path, v, RESOURCES)
}

fn limits(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    sub(walk, path, v, LIMITS)
}

fn bind_options(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    sub(walk, path, v, BIND)
}

fn volume_options(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    sub(walk, path, v, VOLUME_OPTS)
}

fn tmpfs_options(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let opts = sub(walk, path, v, TMPFS_OPTS)?;
    if opts.get("size").is_none() {
        walk.problems.push(
            &join(path, "size"),
            super::error::ErrorKind::Missing,
            "tmpfs options take a size",
        );
        return None;
    }
    Some(opts)
}

/// A list of names, or a mapping of names to `null` or `{aliases}`; rewritten as a mapping.
fn service_networks(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let mut out = Mapping::new();
    match v {
        Value::Sequence(_) => {
            let Value::Sequence(list) = string_list(walk, path, v)? else {
                return None;
            };
            for name in list {
                out.insert(name, Value::Null);
            }
        }
        other => {
            for (k, x) in mapping(walk, path, other)? {
                let Some(name) = key_str(walk, path, &k) else {
                    continue;
                };
                let p = join(path, &name);
                let settings = match x {
                    Value::Null => Value::Null,
                    x => match sub(walk, &p, x, SERVICE_NETWORK) {
                        Some(s) => s,
                        None => continue,
                    },
                };
                out.insert(Value::String(name), settings);
            }
        }
    }
    Some(Value::Mapping(out))
}

/// A list of service names, or a mapping of names to `{condition}`; rewritten as a mapping
/// with the condition always set.
fn depends_on(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let started = || {
        let mut m = Mapping::new();
        m.insert(Value::from("condition"), Value::from("service_started"));
        Value::Mapping(m)
    };
    let mut out = Mapping::new();
    match v {
        Value::Sequence(_) => {
            let Value::Sequence(list) = string_list(walk, path, v)? else {
                return None;
            };
            for name in list {
                out.insert(name, started());
            }
        }
        other => {
            for (k, x) in mapping(walk, path, other)? {
                let Some(name) = key_str(walk, path, &k) else {
                    continue;
                };
                let p = join(path, &name);
                let Some(Value::Mapping(mut dep)) = sub(walk, &p, x, DEPENDENCY) else {
                    continue;
                };
                if !dep.contains_key("condition") {
                    dep.insert(Value::from("condition"), Value::from("service_started"));
                }
                out.insert(Value::String(name), Value::Mapping(dep));
            }
        }
    }
    Some(Value::Mapping(out))
}

fn networks(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    top_objects(walk, path, v, NETWORK)
}

fn volumes(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    top_objects(walk, path, v, VOLUME)
}

/// Top-level `networks` or `volumes`: names to `null` or settings.
fn top_objects(walk: &mut Walk, path: &str, v: Value, table: &[(&str, Norm)]) -> Option<Value> {
    let m = mapping(walk, path, v)?;
    if too_many(walk, path, &m) {
        return None;
    }
    let mut out = Mapping::new();
    for (k, x) in m {
        let Some(name) = key_str(walk, path, &k) else {
            continue;
        };
        let p = join(path, &name);
        if !valid_key(&name) {
            walk.problems.push(
                &p,
                super::error::ErrorKind::Name,
                "a name uses letters, digits, '.', '_' and '-'",
            );
            continue;
        }
        let Some(m) = mapping(walk, &p, x) else {
            continue;
        };
        let mut m = object(walk, &p, m, table, true);
        fold_external(walk, &p, &mut m);
        out.insert(Value::String(name), Value::Mapping(m));
    }
    Some(Value::Mapping(out))
}

/// `external: true`, or the old `external: {name: x}`.
fn external(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    match v {
        Value::Mapping(m) => {
            let m = object(walk, path, m, &[("name", docker_name)], false);
            Some(Value::Mapping(m))
        }
        v => boolean(walk, path, v),
    }
}

/// Rewrites the old `external: {name}` as `external: true` plus `name`, and refuses settings
/// that an external object cannot have.
fn fold_external(walk: &mut Walk, path: &str, m: &mut Mapping) {
    if let Some(Value::Mapping(ext)) = m.get("external").cloned() {
        m.insert(Value::from("external"), Value::Bool(true));
        if let Some(name) = ext.get("name") {
            match m.get("name") {
                Some(n) if n != name => walk
                    .problems
                    .invalid(&join(path, "external.name"), "disagrees with name"),
                _ => {
                    m.insert(Value::from("name"), name.clone());
                }
            }
        }
    }
    if m.get("external") == Some(&Value::Bool(true)) {
        for key in ["driver", "driver_opts", "labels"] {
            if m.contains_key(key) {
                walk.problems.invalid(
                    &join(path, key),
                    "an external object is not created, so it takes no settings",
                );
            }
        }
    }
}

// ---- ports ----

fn port_number(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let s = text(walk, path, v)?;
    match parse_port(&s) {
        Ok(p) => Some(Value::Number(p.into())),
        Err(m) => {
            walk.problems.invalid(path, m);
            None
        }
    }
}

/// A published port or range, as a string.
fn published(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    checked(walk, path, v, |s| parse_range(s).map(|_| s.to_string()))
}

/// The most ports one short-syntax range may publish.
const MAX_RANGE: u16 = 1024;

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port {s:?}: use 1 to 65535")),
    }
}

/// `80` or `8000-8010`, as the first port and the count.
fn parse_range(s: &str) -> Result<(u16, u16), String> {
    match s.split_once('-') {
        None => Ok((parse_port(s)?, 1)),
        Some((a, b)) => {
            let (a, b) = (parse_port(a)?, parse_port(b)?);
            if b < a {
                return Err(format!("invalid port range {s:?}"));
            }
            Ok((a, b - a + 1))
        }
    }
}

fn ports(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let Value::Sequence(list) = v else {
        walk.problems
            .invalid(path, format!("expected a list, found {}", kind(&v)));
        return None;
    };
    let mut out = Vec::new();
    for (i, x) in list.into_iter().enumerate() {
        let p = index(path, i);
        match x {
            Value::Mapping(m) => {
                let m = object(walk, &p, m, PORT, false);
                if m.contains_key("target") {
                    out.push(Value::Mapping(m));
                } else {
                    walk.problems.push(
                        &join(&p, "target"),
                        super::error::ErrorKind::Missing,
                        "a port needs a target",
                    );
                }
            }
            x => {
                let Some(s) = text(walk, &p, x) else { continue };
                match short_port(&s) {
                    Ok(entries) => out.extend(entries.into_iter().map(Value::Mapping)),
                    Err(m) => walk.problems.invalid(&p, m),
                }
            }
        }
    }
    Some(Value::Sequence(out))
}

/// `[ip:][host[-end]:]container[-end][/protocol]`, as one long-syntax entry per container port.
pub(super) fn short_port(s: &str) -> Result<Vec<Mapping>, String> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) if ["tcp", "udp", "sctp"].contains(&p) => (r, p),
        Some(_) => {
            return Err(format!(
                "invalid port {s:?}: the protocol is tcp, udp or sctp"
            ))
        }
        None => (s, "tcp"),
    };
    let (ip, rest) = match rest.strip_prefix('[') {
        Some(r) => {
            let (ip, r) = r
                .split_once("]:")
                .ok_or_else(|| format!("invalid port {s:?}"))?;
            (Some(ip), r)
        }
        None => (None, rest),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip, parts.as_slice()) {
        (None, [c]) => (None, "", *c),
        (None, [h, c]) => (None, *h, *c),
        (None, [ip, h, c]) => (Some(*ip), *h, *c),
        (Some(ip), [h, c]) => (Some(ip), *h, *c),
        _ => {
            return Err(format!(
                "invalid port {s:?}: use [ip:][host:]container[/protocol]"
            ))
        }
    };
    if let Some(ip) = ip {
        ip.parse::<IpAddr>()
            .map_err(|_| format!("invalid IP address {ip:?} in {s:?}"))?;
    }
    let (first, count) = parse_range(container)?;
    if count > MAX_RANGE {
        return Err(format!(
            "invalid port {s:?}: a range covers at most {MAX_RANGE} ports"
        ));
    }
    let host_range = if host.is_empty() {
        None
    } else {
        Some(parse_range(host)?)
    };
    let published = |i: u16| -> Option<String> {
        match host_range {
            None => None,
            Some((h, 1)) if count == 1 => Some(h.to_string()),
            Some((h, n)) if count == 1 => Some(format!("{h}-{}", h + (n - 1))),
            Some((h, _)) => Some((h + i).to_string()),
        }
    };
    if let Some((_, n)) = host_range {
        if count > 1 && n != count {
            return Err(format!(
                "invalid port {s:?}: the host and container ranges differ in size"
            ));
        }
    }
    Ok((0..count)
        .map(|i| {
            let mut m = Mapping::new();
            m.insert(Value::from("target"), Value::from(first + i));
            if let Some(p) = published(i) {
                m.insert(Value::from("published"), Value::from(p));
            }
            if let Some(ip) = ip {
                m.insert(Value::from("host_ip"), Value::from(ip));
            }
            m.insert(Value::from("protocol"), Value::from(proto));
            m
        })
        .collect())
}

// ---- volumes ----

fn service_volumes(walk: &mut Walk, path: &str, v: Value) -> Option<Value> {
    let Value::Sequence(list) = v else {
        walk.problems
            .invalid(path, format!("expected a list, found {}", kind(&v)));
        return None;
    };
    let mut out = Vec::new();
    for (i, x) in list.into_iter().enumerate() {
        let p = index(path, i);
        let long = match x {
            Value::Mapping(m) => object(walk, &p, m, MOUNT, false),
            x => {
                let Some(s) = text(walk, &p, x) else { continue };
                match short_volume(&s) {
                    Ok(m) => m,
                    Err(m) => {
                        walk.problems.invalid(&p, m);
                        continue;
                    }
                }
            }
        };
        if let Err(m) = check_mount(&long) {
            walk.problems.invalid(&p, m);
            continue;
        }
        out.push(Value::Mapping(long));
    }
    Some(Value::Sequence(out))
}

/// `source:target[:options]`, with options among `ro`, `rw`, `z`, `Z`, `nocopy` and the bind
/// propagations.
pub(super) fn short_volume(s: &str) -> Result<Mapping, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [_] => {
            return Err(format!(
            "anonymous volume {s:?} is not supported: give it a name (name:{s}) or use a bind path"
        ))
        }
        [src, dst] => (*src, *dst, ""),
        [src, dst, o] => (*src, *dst, *o),
        _ => return Err(format!("invalid volume {s:?}: use source:target[:options]")),
    };
    let bind = source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
    let mut m = Mapping::new();
    m.insert(
        Value::from("type"),
        Value::from(if bind { "bind" } else { "volume" }),
    );
    m.insert(Value::from("source"), Value::from(source));
    m.insert(Value::from("target"), Value::from(target));
    let mut bind_opts = Mapping::new();
    let mut vol_opts = Mapping::new();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => {
                m.insert(Value::from("read_only"), Value::Bool(true));
            }
            "rw" => {}
            "z" | "Z" if bind => {
                bind_opts.insert(Value::from("selinux"), Value::from(o));
            }
            "nocopy" if !bind => {
                vol_opts.insert(Value::from("nocopy"), Value::Bool(true));
            }
            o if bind && PROPAGATIONS.contains(&o) => {
                bind_opts.insert(Value::from("propagation"), Value::from(o));
            }
            o => return Err(format!("invalid volume option {o:?} in {s:?}")),
        }
    }
    if !bind_opts.is_empty() {
        m.insert(Value::from("bind"), Value::Mapping(bind_opts));
    }
    if !vol_opts.is_empty() {
        m.insert(Value::from("volume"), Value::Mapping(vol_opts));
    }
    Ok(m)
}

/// The rules across a mount's keys.
fn check_mount(m: &Mapping) -> Result<(), String> {
    let get = |k: &str| m.get(k).and_then(Value::as_str);
    let (Some(kind), Some(target)) = (get("type"), get("target")) else {
        return Err("a volume needs a type and a target".into());
    };
    if !target.starts_with('/') {
        return Err(format!("the target {target:?} must be an absolute path"));
    }
    let source = get("source").unwrap_or_default();
    let bind = m.get("bind");
    let no_create = bind.and_then(|b| b.get("create_host_path")) == Some(&Value::Bool(false));
    if no_create && bind.and_then(|b| b.get("selinux")).is_some() {
        return Err("selinux relabelling needs create_host_path: true".into());
    }
    let wrong = |opt: &str| m.contains_key(opt) && opt != kind;
    if let Some(opt) = ["bind", "volume", "tmpfs"].into_iter().find(|o| wrong(o)) {
        return Err(format!("{opt} options do not apply to a {kind} mount"));
    }
    match kind {
        "bind" if source.starts_with('.') || source.starts_with('~') => Err(format!(
            "relative bind path {source:?} is not supported: stacks have no project directory on the host; use an absolute path"
        )),
        "bind" if !source.starts_with('/') => Err("a bind mount needs an absolute source path".into()),
        "volume" if source.is_empty() => Err("anonymous volumes are not supported: give the volume a source name".into()),
        "volume" if !valid_key(source) => Err(format!("invalid volume name {source:?}")),
        "tmpfs" if !source.is_empty() => Err("a tmpfs mount takes no source".into()),
        _ => Ok(()),
    }
}
