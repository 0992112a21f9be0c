//! A checked, typed compose file to a [`StackPlan`]: compose's names and labels, the Engine
//! API create bodies, the config hash and the start order.
//!
//! Owns: the mapping from compose keys to Engine API fields. Must not: check which keys are
//! supported (see `schema`) or decide what to do on a host (see `reconcile`).

use super::convert;
use super::engine::*;
use super::error::{join, Problems};
use super::hash::sha256_hex;
use super::plan::*;
use super::structure::{self, dependencies, network_keys};
use docker_compose_types as dc;
use protocol::ops::{NetworkCreateParams, VolumeCreateParams};
use std::collections::BTreeMap;
use std::time::Duration;

/// Docker's healthcheck defaults, used to bound waiting for a dependency.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;
/// Added to the computed health wait, for the container's own start.
const WAIT_SLACK: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(3600);

pub(super) fn translate(project: &str, c: &dc::Compose, problems: &mut Problems) -> StackPlan {
    let all = structure::services(c);
    let networks = network_plans(project, c, &all);
    let volumes = volume_plans(project, c);
    let ctx = Ctx {
        project,
        networks: &networks,
        volumes: &volumes,
    };
    let services = structure::start_order(c)
        .into_iter()
        .filter_map(|name| {
            let svc = all.get(name.as_str())?;
            Some(service_plan(&ctx, &name, svc, problems))
        })
        .collect();
    StackPlan {
        project: project.to_string(),
        networks,
        volumes,
        services,
    }
}

struct Ctx<'a> {
    project: &'a str,
    networks: &'a [NetworkPlan],
    volumes: &'a [VolumePlan],
}

impl Ctx<'_> {
    fn network_name(&self, key: &str) -> String {
        self.networks
            .iter()
            .find(|n| n.key == key)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| scoped_name(self.project, key))
    }

    fn volume_name(&self, key: &str) -> String {
        self.volumes
            .iter()
            .find(|v| v.key == key)
            .map(|v| v.name.clone())
            .unwrap_or_else(|| scoped_name(self.project, key))
    }
}

fn labels_map(l: &dc::Labels) -> BTreeMap<String, String> {
    match l {
        dc::Labels::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        dc::Labels::List(list) => list
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect(),
    }
}

fn options_map<'a>(
    m: impl IntoIterator<Item = (&'a String, &'a Option<dc::SingleValue>)>,
) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

/// The declared networks, plus `default` when a service joins no network by name.
fn network_plans(
    project: &str,
    c: &dc::Compose,
    all: &BTreeMap<&str, dc::Service>,
) -> Vec<NetworkPlan> {
    let mut declared: BTreeMap<String, dc::NetworkSettings> = c
        .networks
        .0
        .iter()
        .map(|(k, v)| (k.clone(), Option::from(v.clone()).unwrap_or_default()))
        .collect();
    let needs_default = all
        .values()
        .any(|s| network_keys(s).iter().any(|k| k == "default"));
    if needs_default {
        declared.entry("default".into()).or_default();
    }
    declared
        .into_iter()
        .map(|(key, n)| {
            let external = structure::network_is_external(&n);
            let name = n.name.clone().unwrap_or_else(|| scoped_name(project, &key));
            let create = (!external).then(|| {
                let mut labels = labels_map(&n.labels);
                labels.insert(LABEL_PROJECT.into(), project.into());
                labels.insert(LABEL_NETWORK.into(), key.clone());
                NetworkCreateParams {
                    name: name.clone(),
                    driver: n.driver.clone(),
                    labels,
                    options: options_map(&n.driver_opts),
                    ..Default::default()
                }
            });
            NetworkPlan {
                key,
                name,
                external,
                create,
            }
        })
        .collect()
}

fn volume_plans(project: &str, c: &dc::Compose) -> Vec<VolumePlan> {
    let mut out: Vec<VolumePlan> = c
        .volumes
        .0
        .iter()
        .map(|(key, v)| {
            let v: dc::ComposeVolume = Option::from(v.clone()).unwrap_or(dc::ComposeVolume {
                driver: None,
                driver_opts: Default::default(),
                external: None,
                labels: Default::default(),
                name: None,
            });
            let external = structure::volume_is_external(&v);
            let name = v.name.clone().unwrap_or_else(|| scoped_name(project, key));
            let create = (!external).then(|| {
                let mut labels = labels_map(&v.labels);
                labels.insert(LABEL_PROJECT.into(), project.into());
                labels.insert(LABEL_VOLUME.into(), key.clone());
                VolumeCreateParams {
                    name: Some(name.clone()),
                    driver: v.driver.clone(),
                    driver_opts: options_map(&v.driver_opts),
                    labels,
                }
            });
            VolumePlan {
                key: key.clone(),
                name,
                external,
                create,
            }
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

fn service_plan(ctx: &Ctx, name: &str, svc: &dc::Service, problems: &mut Problems) -> ServicePlan {
    let path = join("services", name);
    let container = svc
        .container_name
        .clone()
        .unwrap_or_else(|| container_name(ctx.project, name));
    let (network_mode, endpoints, connect) = networking(ctx, name, &container, svc);
    let (exposed_ports, port_bindings) = ports(svc);
    let mut body = ContainerBody {
        image: svc.image.clone().unwrap_or_default(),
        cmd: svc.command.as_ref().map(command_words),
        entrypoint: svc.entrypoint.as_ref().map(entrypoint_words),
        env: environment(&svc.environment),
        labels: labels_map(&svc.labels),
        exposed_ports,
        user: svc.user.clone(),
        working_dir: svc.working_dir.clone(),
        hostname: svc.hostname.clone(),
        healthcheck: svc.healthcheck.as_ref().map(health_config),
        stop_timeout: svc
            .stop_grace_period
            .as_deref()
            .map(|d| duration(d).as_secs()),
        host_config: host_config(ctx, svc, &path, problems),
        networking_config: endpoints,
    };
    body.host_config.network_mode = network_mode;
    body.host_config.port_bindings = port_bindings;
    let depends_on: Vec<Dependency> = dependencies(svc)
        .into_iter()
        .map(|(service, condition)| Dependency { service, condition })
        .collect();
    let config_hash = config_hash(&container, &body, &connect);
    add_compose_labels(
        &mut body.labels,
        ctx.project,
        name,
        &config_hash,
        &depends_on,
    );
    ServicePlan {
        service: name.to_string(),
        container_name: container,
        image: body.image.clone(),
        pull_policy: pull_policy(svc.pull_policy.as_ref()),
        config_hash,
        health_wait: health_wait(svc.healthcheck.as_ref()),
        create: body,
        connect,
        depends_on,
    }
}

/// The hash of what makes the container: its name, its create body before compose's labels are
/// added, and the networks it is connected to afterwards.
fn config_hash(container: &str, body: &ContainerBody, connect: &[Attachment]) -> String {
    sha256_hex(&serde_json::json!({
        "name": container,
        "create": body,
        "connect": connect,
    }))
}

fn add_compose_labels(
    labels: &mut BTreeMap<String, String>,
    project: &str,
    service: &str,
    hash: &str,
    deps: &[Dependency],
) {
    let depends: Vec<String> = deps
        .iter()
        .map(|d| format!("{}:{}:false", d.service, d.condition.as_str()))
        .collect();
    for (k, v) in [
        (LABEL_PROJECT, project.to_string()),
        (LABEL_SERVICE, service.to_string()),
        (LABEL_NUMBER, "1".to_string()),
        (LABEL_ONEOFF, "False".to_string()),
        (LABEL_CONFIG_HASH, hash.to_string()),
        (LABEL_DEPENDS_ON, depends.join(",")),
    ] {
        labels.insert(k.to_string(), v);
    }
}

fn pull_policy(p: Option<&dc::PullPolicy>) -> PullPolicy {
    match p {
        Some(dc::PullPolicy::Always) => PullPolicy::Always,
        Some(dc::PullPolicy::Never) => PullPolicy::Never,
        _ => PullPolicy::Missing,
    }
}

/// A duration already checked by the schema walk.
fn duration(s: &str) -> Duration {
    Duration::from_nanos(convert::duration_ns(s).unwrap_or(0))
}

fn words(s: &str) -> Vec<String> {
    convert::shell_words(s).unwrap_or_default()
}

fn command_words(c: &dc::Command) -> Vec<String> {
    match c {
        dc::Command::Simple(s) => words(s),
        dc::Command::Args(a) => a.clone(),
    }
}

/// An empty entrypoint clears the image's, as `docker run --entrypoint ""` does.
fn entrypoint_words(e: &dc::Entrypoint) -> Vec<String> {
    let w = match e {
        dc::Entrypoint::Simple(s) => words(s),
        dc::Entrypoint::List(l) => l.clone(),
    };
    if w.is_empty() {
        vec![String::new()]
    } else {
        w
    }
}

/// `KEY=value`, one per key, sorted.
fn environment(e: &dc::Environment) -> Vec<String> {
    let map: BTreeMap<String, String> = match e {
        dc::Environment::KvPair(m) => options_map(m),
        dc::Environment::List(l) => l
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    map.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn health_config(h: &dc::Healthcheck) -> HealthConfig {
    if h.disable {
        return HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        };
    }
    let ns = |d: &Option<String>| d.as_deref().map(|d| duration(d).as_nanos() as u64);
    HealthConfig {
        test: match &h.test {
            Some(dc::HealthcheckTest::Single(s)) => vec!["CMD-SHELL".into(), s.clone()],
            Some(dc::HealthcheckTest::Multiple(v)) => v.clone(),
            None => Vec::new(),
        },
        interval: ns(&h.interval),
        timeout: ns(&h.timeout),
        retries: (h.retries > 0).then_some(h.retries.min(u32::MAX as i64) as u32),
        start_period: ns(&h.start_period),
    }
}

/// How long to wait for the service to become healthy: its start period plus one interval and
/// timeout per allowed failure, and some slack.
fn health_wait(h: Option<&dc::Healthcheck>) -> Duration {
    let d = |v: Option<&String>, dflt: Duration| v.map(|s| duration(s)).unwrap_or(dflt);
    let (interval, timeout, retries, start) = match h {
        Some(h) => (
            d(h.interval.as_ref(), DEFAULT_INTERVAL),
            d(h.timeout.as_ref(), DEFAULT_TIMEOUT),
            if h.retries > 0 {
                h.retries.min(1000) as u32
            } else {
                DEFAULT_RETRIES
            },
            d(h.start_period.as_ref(), Duration::ZERO),
        ),
        None => (
            DEFAULT_INTERVAL,
            DEFAULT_TIMEOUT,
            DEFAULT_RETRIES,
            Duration::ZERO,
        ),
    };
    let per_try = interval.saturating_add(timeout);
    let total = start
        .saturating_add(per_try.saturating_mul(retries + 1))
        .saturating_add(WAIT_SLACK);
    total.min(MAX_WAIT)
}

/// `ExposedPorts` and `PortBindings`.
fn ports(svc: &dc::Service) -> (BTreeMap<String, Empty>, BTreeMap<String, Vec<PortBinding>>) {
    let mut exposed = BTreeMap::new();
    let mut bindings: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
    if let dc::Ports::Long(list) = &svc.ports {
        for p in list {
            let key = format!("{}/{}", p.target, p.protocol.as_deref().unwrap_or("tcp"));
            exposed.insert(key.clone(), Empty {});
            let host_port = match &p.published {
                Some(dc::PublishedPort::Single(n)) => n.to_string(),
                Some(dc::PublishedPort::Range(r)) => r.clone(),
                None => String::new(),
            };
            bindings.entry(key).or_default().push(PortBinding {
                host_ip: p.host_ip.clone().unwrap_or_default(),
                host_port,
            });
        }
    }
    (exposed, bindings)
}

/// `NetworkMode`, the create endpoint, and the networks to connect afterwards. Every endpoint
/// has the aliases compose gives: the container name, the service name, then the file's.
fn networking(
    ctx: &Ctx,
    service: &str,
    container: &str,
    svc: &dc::Service,
) -> (String, Option<NetworkingConfig>, Vec<Attachment>) {
    if let Some(mode) = &svc.network_mode {
        return (mode.clone(), None, Vec::new());
    }
    let mut attachments: Vec<Attachment> = network_keys(svc)
        .into_iter()
        .map(|key| {
            let mut aliases = vec![container.to_string(), service.to_string()];
            for a in user_aliases(svc, &key) {
                if !aliases.contains(&a) {
                    aliases.push(a);
                }
            }
            Attachment {
                network: ctx.network_name(&key),
                aliases,
            }
        })
        .collect();
    let first = attachments.remove(0);
    let endpoints = NetworkingConfig {
        endpoints_config: BTreeMap::from([(
            first.network.clone(),
            EndpointSettings {
                aliases: first.aliases,
            },
        )]),
    };
    (first.network, Some(endpoints), attachments)
}

fn user_aliases(svc: &dc::Service, key: &str) -> Vec<String> {
    match &svc.networks {
        dc::Networks::Advanced(adv) => match adv.0.get(key) {
            Some(dc::MapOrEmpty::Map(s)) => s.aliases.clone(),
            _ => Vec::new(),
        },
        dc::Networks::Simple(_) => Vec::new(),
    }
}

fn host_config(ctx: &Ctx, svc: &dc::Service, path: &str, problems: &mut Problems) -> HostConfig {
    let limits = svc
        .deploy
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let (binds, mounts) = volumes(ctx, svc, path, problems);
    HostConfig {
        binds,
        mounts,
        tmpfs: tmpfs(svc.tmpfs.as_ref()),
        restart_policy: svc.restart.as_deref().map(restart_policy),
        cap_add: sorted(&svc.cap_add),
        cap_drop: sorted(&svc.cap_drop),
        devices: svc.devices.iter().map(|d| device(d)).collect(),
        privileged: svc.privileged,
        readonly_rootfs: svc.read_only,
        log_config: svc.logging.as_ref().map(|l| LogConfig {
            kind: l.driver.clone().unwrap_or_default(),
            config: l
                .options
                .as_ref()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
                .unwrap_or_default(),
        }),
        memory: limits
            .and_then(|l| l.memory.as_deref())
            .and_then(|m| convert::bytes(m).ok()),
        nano_cpus: limits
            .and_then(|l| l.cpus.as_deref())
            .and_then(|c| convert::nano_cpus(c).ok()),
        extra_hosts: svc.extra_hosts.clone(),
        dns: svc.dns.clone(),
        init: svc.init.then_some(true),
        ..Default::default()
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

fn restart_policy(s: &str) -> RestartPolicy {
    let (name, count) = match s.split_once(':') {
        Some((n, c)) => (n, c.parse().unwrap_or(0)),
        None => (s, 0),
    };
    RestartPolicy {
        name: name.to_string(),
        maximum_retry_count: count,
    }
}

fn device(s: &str) -> DeviceMapping {
    let mut parts = s.splitn(3, ':');
    let host = parts.next().unwrap_or_default().to_string();
    let container = parts
        .next()
        .map(str::to_string)
        .unwrap_or_else(|| host.clone());
    DeviceMapping {
        path_on_host: host,
        path_in_container: container,
        cgroup_permissions: parts.next().unwrap_or("rwm").to_string(),
    }
}

fn tmpfs(t: Option<&dc::Tmpfs>) -> BTreeMap<String, String> {
    let list = match t {
        Some(dc::Tmpfs::Simple(s)) => vec![s.clone()],
        Some(dc::Tmpfs::List(l)) => l.clone(),
        None => Vec::new(),
    };
    list.into_iter()
        .map(|e| match e.split_once(':') {
            Some((p, o)) => (p.to_string(), o.to_string()),
            None => (e, String::new()),
        })
        .collect()
}

/// `Binds` (bind mounts, which create a missing host path as compose does) and `Mounts`
/// (named volumes, tmpfs, and binds with `create_host_path: false`), each sorted by target.
fn volumes(
    ctx: &Ctx,
    svc: &dc::Service,
    path: &str,
    problems: &mut Problems,
) -> (Vec<String>, Vec<Mount>) {
    let mut binds: Vec<(String, String)> = Vec::new();
    let mut mounts: Vec<Mount> = Vec::new();
    let mut targets = std::collections::BTreeSet::new();
    for v in &svc.volumes {
        let dc::Volumes::Advanced(v) = v else {
            continue;
        };
        if !targets.insert(v.target.clone()) {
            problems.invalid(
                &join(path, "volumes"),
                format!("two volumes are mounted on {:?}", v.target),
            );
            continue;
        }
        match mount(ctx, v) {
            Ok(m) => mounts.push(m),
            Err(b) => binds.push((v.target.clone(), b)),
        }
    }
    binds.sort();
    mounts.sort_by(|a, b| a.target.cmp(&b.target));
    (binds.into_iter().map(|(_, b)| b).collect(), mounts)
}

/// A `Mount`, or `Err` with the `Binds` entry for a bind that may create its host path.
fn mount(ctx: &Ctx, v: &dc::AdvancedVolumes) -> Result<Mount, String> {
    let source = v.source.clone().unwrap_or_default();
    let mut m = Mount {
        kind: v._type.clone(),
        source: String::new(),
        target: v.target.clone(),
        read_only: v.read_only,
        volume_options: None,
        bind_options: None,
        tmpfs_options: None,
    };
    match v._type.as_str() {
        "bind" => {
            let b = v.bind.clone().unwrap_or_default();
            if b.create_host_path != Some(false) {
                let mut opts: Vec<String> = Vec::new();
                if v.read_only {
                    opts.push("ro".into());
                }
                opts.extend(b.selinux.clone());
                opts.extend(b.propagation.clone());
                let opts = if opts.is_empty() {
                    String::new()
                } else {
                    format!(":{}", opts.join(","))
                };
                return Err(format!("{source}:{}{opts}", v.target));
            }
            m.source = source;
            m.bind_options = b.propagation.map(|propagation| BindOptions { propagation });
        }
        "volume" => {
            m.source = ctx.volume_name(&source);
            if v.volume.as_ref().and_then(|o| o.nocopy) == Some(true) {
                m.volume_options = Some(VolumeOptions { no_copy: true });
            }
        }
        _ => {
            m.tmpfs_options = v.tmpfs.as_ref().map(|t| TmpfsOptions {
                size_bytes: t.size.min(i64::MAX as u64) as i64,
            });
        }
    }
    Ok(m)
}
