//! Reconciling a [`StackPlan`] with what a host has, as pure functions: the ordered steps
//! that make the host match ([`reconcile`], with image pulls in [`pulls`]), the drift of each
//! service ([`drift`]), and the removal of a stack ([`teardown`]).
//!
//! Every step but one is a catalog operation ([`Step::operation`]); the exception,
//! [`Step::WaitHealthy`], is a wait its runner performs by polling `container.inspect` and
//! reading the answer with [`wait_verdict`]. Containers are named by name in every step, so
//! steps need no result of an earlier step.
//!
//! Owns: the decisions (keep, start, recreate, remove) and their order. Must not: do I/O.
//! Debug output of a step never shows a create body (it holds environment values).

use super::plan::*;
use protocol::ops::{
    ContainerCreateParams, ContainerRemoveParams, IdParams, ImagePullParams, NetworkConnectParams,
    NetworkCreateParams, Operation, StopParams, VolumeCreateParams, VolumeRemoveParams,
};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// What a host has, as far as a stack is concerned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The host's containers; those without the project's label are ignored.
    pub containers: Vec<ObservedContainer>,
    /// The host's networks (at least those the plan names).
    pub networks: Vec<ObservedObject>,
    /// The host's volumes (at least those the plan names).
    pub volumes: Vec<ObservedObject>,
    /// Image references the host has (`RepoTags` and `RepoDigests`).
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    /// The image as the container was created with it; Docker shows the image id instead once
    /// the reference points to another image.
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Docker's state: `running`, `exited`, `created`, `paused`, `restarting`, `dead`, ...
    pub state: String,
    /// `healthy`, `unhealthy` or `starting`, when the container has a healthcheck.
    pub health: Option<String>,
    /// The networks it is connected to, when the listing says.
    pub networks: Vec<String>,
}

impl ObservedContainer {
    fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }

    fn is_up(&self) -> bool {
        matches!(self.state.as_str(), "running" | "restarting" | "paused")
    }
}

/// A network or volume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedObject {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl Observed {
    /// Reads Docker's list answers (`GET /containers/json?all=1`, `/networks`, `/volumes`,
    /// `/images/json`), or the catalog's `container.list`, `network.list`, `volume.list` and
    /// `image.list` results, which keep Docker's fields. Entries it cannot read are skipped.
    pub fn from_docker(
        containers: &Value,
        networks: &Value,
        volumes: &Value,
        images: &Value,
    ) -> Observed {
        let items = |v: &Value| -> Vec<Value> {
            match v {
                Value::Array(a) => a.clone(),
                Value::Object(o) => o
                    .get("Volumes")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                _ => Vec::new(),
            }
        };
        Observed {
            containers: items(containers)
                .iter()
                .filter_map(read_container)
                .collect(),
            networks: items(networks).iter().filter_map(read_object).collect(),
            volumes: items(volumes).iter().filter_map(read_object).collect(),
            images: items(images)
                .iter()
                .flat_map(|i| strings(i.get("RepoTags")).chain(strings(i.get("RepoDigests"))))
                .collect(),
        }
    }
}

fn strings(v: Option<&Value>) -> impl Iterator<Item = String> + '_ {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
}

fn labels_of(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn read_container(v: &Value) -> Option<ObservedContainer> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let name = v.pointer("/Names/0").and_then(Value::as_str)?;
    let status = s("Status").unwrap_or_default();
    let health = ["(healthy)", "(unhealthy)", "(health: starting)"]
        .into_iter()
        .find(|h| status.contains(h))
        .map(|h| {
            h.trim_matches(|c| c == '(' || c == ')')
                .trim_start_matches("health: ")
                .to_string()
        });
    let networks = v
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    Some(ObservedContainer {
        id: s("Id")?,
        name: name.trim_start_matches('/').to_string(),
        image: s("Image").unwrap_or_default(),
        labels: labels_of(v.get("Labels")),
        state: s("State").unwrap_or_default(),
        health,
        networks,
    })
}

fn read_object(v: &Value) -> Option<ObservedObject> {
    Some(ObservedObject {
        name: v.get("Name")?.as_str()?.to_string(),
        labels: labels_of(v.get("Labels")),
    })
}

/// One step towards the plan.
#[derive(Clone, PartialEq)]
pub enum Step {
    /// `network.inspect` of an external network: fails with `not_found` when it is missing.
    RequireNetwork {
        network: String,
    },
    /// `volume.inspect` of an external volume: fails with `not_found` when it is missing.
    RequireVolume {
        volume: String,
    },
    CreateNetwork {
        key: String,
        params: NetworkCreateParams,
    },
    CreateVolume {
        key: String,
        params: VolumeCreateParams,
    },
    PullImage {
        image: String,
        params: ImagePullParams,
    },
    StopContainer {
        service: String,
        params: StopParams,
    },
    RemoveContainer {
        service: String,
        params: ContainerRemoveParams,
    },
    CreateContainer {
        service: String,
        params: ContainerCreateParams,
    },
    ConnectNetwork {
        service: String,
        params: NetworkConnectParams,
    },
    StartContainer {
        service: String,
        params: IdParams,
    },
    UnpauseContainer {
        service: String,
        params: IdParams,
    },
    /// Wait until `container` (of `service`) reports `healthy`: poll `container.inspect` and
    /// read each answer with [`wait_verdict`]; fail on `unhealthy`, when the container is not
    /// running or has no healthcheck, or after `timeout`.
    WaitHealthy {
        service: String,
        container: String,
        timeout: Duration,
    },
    RemoveNetwork {
        network: String,
        params: IdParams,
    },
    RemoveVolume {
        volume: String,
        params: VolumeRemoveParams,
    },
}

impl Step {
    /// The catalog operation to run, or `None` for [`Step::WaitHealthy`].
    pub fn operation(&self) -> Option<Operation> {
        use Step::*;
        let id = |s: &str| IdParams { id: s.to_string() };
        Some(match self {
            RequireNetwork { network } => Operation::NetworkInspect(id(network)),
            RequireVolume { volume } => Operation::VolumeInspect(id(volume)),
            CreateNetwork { params, .. } => Operation::NetworkCreate(params.clone()),
            CreateVolume { params, .. } => Operation::VolumeCreate(params.clone()),
            PullImage { params, .. } => Operation::ImagePull(params.clone()),
            StopContainer { params, .. } => Operation::ContainerStop(params.clone()),
            RemoveContainer { params, .. } => Operation::ContainerRemove(params.clone()),
            CreateContainer { params, .. } => Operation::ContainerCreate(params.clone()),
            ConnectNetwork { params, .. } => Operation::NetworkConnect(params.clone()),
            StartContainer { params, .. } => Operation::ContainerStart(params.clone()),
            UnpauseContainer { params, .. } => Operation::ContainerUnpause(params.clone()),
            WaitHealthy { .. } => return None,
            RemoveNetwork { params, .. } => Operation::NetworkRemove(params.clone()),
            RemoveVolume { params, .. } => Operation::VolumeRemove(params.clone()),
        })
    }

    /// The service the step is for, if any.
    pub fn service(&self) -> Option<&str> {
        use Step::*;
        match self {
            StopContainer { service, .. }
            | RemoveContainer { service, .. }
            | CreateContainer { service, .. }
            | ConnectNetwork { service, .. }
            | StartContainer { service, .. }
            | UnpauseContainer { service, .. }
            | WaitHealthy { service, .. } => Some(service),
            _ => None,
        }
    }

    /// A short description for logs and progress: `create container app-web-1`.
    pub fn describe(&self) -> String {
        use Step::*;
        match self {
            RequireNetwork { network } => format!("check external network {network}"),
            RequireVolume { volume } => format!("check external volume {volume}"),
            CreateNetwork { params, .. } => format!("create network {}", params.name),
            CreateVolume { params, .. } => {
                format!(
                    "create volume {}",
                    params.name.as_deref().unwrap_or_default()
                )
            }
            PullImage { image, .. } => format!("pull image {image}"),
            StopContainer { params, .. } => format!("stop container {}", params.id),
            RemoveContainer { params, .. } => format!("remove container {}", params.id),
            CreateContainer { params, .. } => format!(
                "create container {}",
                params.name.as_deref().unwrap_or_default()
            ),
            ConnectNetwork { params, .. } => {
                format!(
                    "connect container {} to network {}",
                    params.container, params.id
                )
            }
            StartContainer { params, .. } => format!("start container {}", params.id),
            UnpauseContainer { params, .. } => format!("unpause container {}", params.id),
            WaitHealthy {
                container, timeout, ..
            } => format!(
                "wait up to {}s for container {container} to be healthy",
                timeout.as_secs()
            ),
            RemoveNetwork { network, .. } => format!("remove network {network}"),
            RemoveVolume { volume, .. } => format!("remove volume {volume}"),
        }
    }
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// How a service's container compares with the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftState {
    /// Created from the current config, and running.
    InSync,
    /// Created from another config (the hash differs), or changed by hand since (renamed,
    /// another image, other networks): a redeploy recreates it.
    Changed,
    /// No container: a redeploy creates it.
    Missing,
    /// Current config, but not running (exited, created or paused): a redeploy starts it.
    Stopped,
    /// A container of the project that the plan does not have: a redeploy removes it.
    Extra,
}

/// One line of the drift report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceDrift {
    pub service: String,
    pub state: DriftState,
    /// The container's name and id, when there is one.
    pub container: Option<String>,
    pub container_id: Option<String>,
    /// Docker's state and health of the container.
    pub status: Option<String>,
    pub health: Option<String>,
    /// Why, in words (`config-hash differs`).
    pub detail: String,
}

/// Each service's drift, in plan order, then the extra containers.
pub fn drift(plan: &StackPlan, observed: &Observed) -> Vec<ServiceDrift> {
    let (primaries, extras) = match_containers(plan, observed);
    let mut out: Vec<ServiceDrift> = plan
        .services
        .iter()
        .map(|s| classify(s, primaries.get(&s.service).copied()))
        .collect();
    out.extend(extras.into_iter().map(|c| ServiceDrift {
        service: c.label(LABEL_SERVICE).unwrap_or_default().to_string(),
        state: DriftState::Extra,
        container: Some(c.name.clone()),
        container_id: Some(c.id.clone()),
        status: Some(c.state.clone()),
        health: c.health.clone(),
        detail: "not in the compose file".into(),
    }));
    out
}

fn classify(s: &ServicePlan, c: Option<&ObservedContainer>) -> ServiceDrift {
    let (state, detail) = match c {
        None => (DriftState::Missing, "no container".to_string()),
        Some(c) => match changed(s, c) {
            Some(why) => (DriftState::Changed, why),
            None if matches!(c.state.as_str(), "running" | "restarting") => {
                (DriftState::InSync, String::new())
            }
            None => (DriftState::Stopped, format!("the container is {}", c.state)),
        },
    };
    ServiceDrift {
        service: s.service.clone(),
        state,
        container: c.map(|c| c.name.clone()),
        container_id: c.map(|c| c.id.clone()),
        status: c.map(|c| c.state.clone()),
        health: c.and_then(|c| c.health.clone()),
        detail,
    }
}

/// Why the container does not match the plan, if it does not.
fn changed(s: &ServicePlan, c: &ObservedContainer) -> Option<String> {
    if c.label(LABEL_CONFIG_HASH) != Some(s.config_hash.as_str()) {
        return Some("config-hash differs: the service's configuration changed".into());
    }
    if c.name != s.container_name {
        return Some(format!(
            "the container is named {}, not {}",
            c.name, s.container_name
        ));
    }
    if c.image != s.image {
        return Some(format!("the container runs {}, not {}", c.image, s.image));
    }
    if matches!(c.state.as_str(), "dead" | "removing") {
        return Some(format!("the container is {}", c.state));
    }
    let planned: BTreeSet<&str> = s
        .create
        .networking_config
        .iter()
        .flat_map(|n| n.endpoints_config.keys())
        .chain(s.connect.iter().map(|a| &a.network))
        .map(String::as_str)
        .collect();
    let actual: BTreeSet<&str> = c.networks.iter().map(String::as_str).collect();
    if !planned.is_empty() && !actual.is_empty() && planned != actual {
        return Some(format!(
            "the container is on networks {actual:?}, not {planned:?}"
        ));
    }
    None
}

/// Each planned service's container, and the project's other containers.
fn match_containers<'a>(
    plan: &StackPlan,
    observed: &'a Observed,
) -> (
    BTreeMap<String, &'a ObservedContainer>,
    Vec<&'a ObservedContainer>,
) {
    let mut ours: Vec<&ObservedContainer> = observed
        .containers
        .iter()
        .filter(|c| c.label(LABEL_PROJECT) == Some(plan.project.as_str()))
        .collect();
    ours.sort_by(|a, b| a.name.cmp(&b.name));
    let mut primaries = BTreeMap::new();
    for s in &plan.services {
        let of_service = |c: &&&ObservedContainer| {
            c.label(LABEL_SERVICE) == Some(s.service.as_str())
                && c.label(LABEL_ONEOFF) != Some("True")
        };
        let pick = ours
            .iter()
            .filter(of_service)
            .find(|c| c.name == s.container_name)
            .or_else(|| {
                ours.iter()
                    .filter(of_service)
                    .find(|c| c.label(LABEL_NUMBER) == Some("1"))
            })
            .or_else(|| ours.iter().find(of_service))
            .copied();
        if let Some(c) = pick {
            primaries.insert(s.service.clone(), c);
        }
    }
    let chosen: BTreeSet<&str> = primaries.values().map(|c| c.id.as_str()).collect();
    let extras = ours
        .into_iter()
        .filter(|c| !chosen.contains(c.id.as_str()))
        .collect();
    (primaries, extras)
}

/// The steps that make the host match the plan: external networks and volumes checked,
/// missing ones created, the project's extra containers removed, then each service in
/// dependency order kept, started, or recreated (stop, remove, create, connect, start), with
/// a wait for every `service_healthy` dependency before a service is touched.
///
/// Images are not pulled here: run [`pulls`] first, then observe again, so a container whose
/// image reference now points to a newer image shows as changed and is recreated.
pub fn reconcile(plan: &StackPlan, observed: &Observed) -> Vec<Step> {
    let mut steps = Vec::new();
    ensure_networks(plan, observed, &mut steps);
    ensure_volumes(plan, observed, &mut steps);
    let (primaries, extras) = match_containers(plan, observed);
    for c in extras {
        remove_container(c, &mut steps);
    }
    let mut waited: BTreeSet<&str> = BTreeSet::new();
    for s in &plan.services {
        let c = primaries.get(&s.service).copied();
        let d = classify(s, c);
        if d.state == DriftState::InSync {
            continue;
        }
        wait_for_dependencies(plan, s, &mut waited, &mut steps);
        let id = |c: &ObservedContainer| IdParams { id: c.name.clone() };
        let service = s.service.clone();
        match (d.state, c) {
            (DriftState::Stopped, Some(c)) if c.state == "paused" => {
                steps.push(Step::UnpauseContainer {
                    service,
                    params: id(c),
                })
            }
            (DriftState::Stopped, Some(c)) => steps.push(Step::StartContainer {
                service,
                params: id(c),
            }),
            (_, old) => {
                if let Some(old) = old {
                    remove_container(old, &mut steps);
                }
                create_container(s, &mut steps);
            }
        }
    }
    steps
}

fn ensure_networks(plan: &StackPlan, observed: &Observed, steps: &mut Vec<Step>) {
    for n in &plan.networks {
        if observed.networks.iter().any(|o| o.name == n.name) {
            continue;
        }
        match &n.create {
            Some(params) => steps.push(Step::CreateNetwork {
                key: n.key.clone(),
                params: params.clone(),
            }),
            None => steps.push(Step::RequireNetwork {
                network: n.name.clone(),
            }),
        }
    }
}

fn ensure_volumes(plan: &StackPlan, observed: &Observed, steps: &mut Vec<Step>) {
    for v in &plan.volumes {
        if observed.volumes.iter().any(|o| o.name == v.name) {
            continue;
        }
        match &v.create {
            Some(params) => steps.push(Step::CreateVolume {
                key: v.key.clone(),
                params: params.clone(),
            }),
            None => steps.push(Step::RequireVolume {
                volume: v.name.clone(),
            }),
        }
    }
}

fn wait_for_dependencies<'a>(
    plan: &'a StackPlan,
    s: &ServicePlan,
    waited: &mut BTreeSet<&'a str>,
    steps: &mut Vec<Step>,
) {
    for d in &s.depends_on {
        if d.condition != Condition::ServiceHealthy {
            continue;
        }
        let Some(dep) = plan.service(&d.service) else {
            continue;
        };
        if waited.insert(dep.service.as_str()) {
            steps.push(Step::WaitHealthy {
                service: dep.service.clone(),
                container: dep.container_name.clone(),
                timeout: dep.health_wait,
            });
        }
    }
}

/// Stop (when up) and remove a container, by name.
fn remove_container(c: &ObservedContainer, steps: &mut Vec<Step>) {
    let service = c.label(LABEL_SERVICE).unwrap_or_default().to_string();
    if c.is_up() {
        steps.push(Step::StopContainer {
            service: service.clone(),
            params: StopParams {
                id: c.name.clone(),
                t: None,
            },
        });
    }
    steps.push(Step::RemoveContainer {
        service,
        params: ContainerRemoveParams {
            id: c.name.clone(),
            force: true,
            v: false,
        },
    });
}

fn create_container(s: &ServicePlan, steps: &mut Vec<Step>) {
    let service = s.service.clone();
    steps.push(Step::CreateContainer {
        service: service.clone(),
        params: s.create_params(),
    });
    for a in &s.connect {
        steps.push(Step::ConnectNetwork {
            service: service.clone(),
            params: NetworkConnectParams {
                id: a.network.clone(),
                container: s.container_name.clone(),
                aliases: a.aliases.clone(),
            },
        });
    }
    steps.push(Step::StartContainer {
        service,
        params: IdParams {
            id: s.container_name.clone(),
        },
    });
}

/// The image pulls the plan needs: `always` pulls every time, `missing` only when the host
/// lacks the reference, `never` never (creating then fails if the image is missing).
pub fn pulls(plan: &StackPlan, observed: &Observed) -> Vec<Step> {
    let have: BTreeSet<String> = observed.images.iter().map(|i| normalize_ref(i)).collect();
    let mut seen = BTreeSet::new();
    let mut steps = Vec::new();
    for s in &plan.services {
        let wanted = match s.pull_policy {
            PullPolicy::Always => true,
            PullPolicy::Missing => !have.contains(&normalize_ref(&s.image)),
            PullPolicy::Never => false,
        };
        if wanted && seen.insert(s.image.clone()) {
            let (image, tag) = split_ref(&s.image);
            steps.push(Step::PullImage {
                image: s.image.clone(),
                params: ImagePullParams {
                    image,
                    tag: Some(tag),
                    platform: None,
                    auth: None,
                },
            });
        }
    }
    steps
}

/// An image reference's repository and its tag or digest (`latest` when it has neither).
fn split_ref(r: &str) -> (String, String) {
    if let Some((name, digest)) = r.split_once('@') {
        return (name.to_string(), digest.to_string());
    }
    match r.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (r.to_string(), "latest".to_string()),
    }
}

/// `busybox`, `busybox:latest` and `docker.io/library/busybox:latest` are one reference.
fn normalize_ref(r: &str) -> String {
    let (name, tag) = split_ref(r);
    let name = name.strip_prefix("docker.io/").unwrap_or(&name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let sep = if tag.contains(':') { '@' } else { ':' };
    format!("{name}{sep}{tag}")
}

/// The removal of a stack: its containers (dependents first), then its networks, then, when
/// `remove_volumes`, its volumes. Only objects labelled with the project are removed, so
/// external networks and volumes stay.
pub fn teardown(plan: &StackPlan, observed: &Observed, remove_volumes: bool) -> Vec<Step> {
    let project = plan.project.as_str();
    let ours = |labels: &BTreeMap<String, String>| {
        labels.get(LABEL_PROJECT).map(String::as_str) == Some(project)
    };
    let rank = |c: &ObservedContainer| {
        let svc = c.label(LABEL_SERVICE).unwrap_or_default();
        let pos = plan.services.iter().position(|s| s.service == svc);
        // Services later in the start order stop first; unknown services before all.
        pos.map_or(0, |p| plan.services.len() - p)
    };
    let mut containers: Vec<&ObservedContainer> = observed
        .containers
        .iter()
        .filter(|c| ours(&c.labels))
        .collect();
    containers.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.name.cmp(&b.name)));
    let mut steps = Vec::new();
    for c in containers {
        remove_container(c, &mut steps);
    }
    let external = |name: &str, external_names: &[&str]| external_names.contains(&name);
    let ext_nets: Vec<&str> = plan
        .networks
        .iter()
        .filter(|n| n.external)
        .map(|n| n.name.as_str())
        .collect();
    for n in observed
        .networks
        .iter()
        .filter(|n| ours(&n.labels) && !external(&n.name, &ext_nets))
    {
        steps.push(Step::RemoveNetwork {
            network: n.name.clone(),
            params: IdParams { id: n.name.clone() },
        });
    }
    if remove_volumes {
        let ext_vols: Vec<&str> = plan
            .volumes
            .iter()
            .filter(|v| v.external)
            .map(|v| v.name.as_str())
            .collect();
        for v in observed
            .volumes
            .iter()
            .filter(|v| ours(&v.labels) && !external(&v.name, &ext_vols))
        {
            steps.push(Step::RemoveVolume {
                volume: v.name.clone(),
                params: VolumeRemoveParams {
                    id: v.name.clone(),
                    force: false,
                },
            });
        }
    }
    steps
}

/// How a [`Step::WaitHealthy`] stands, from a `container.inspect` answer (Docker's own, or
/// the catalog's, which keeps `State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitVerdict {
    /// Done: go on.
    Healthy,
    /// Poll again (until the step's timeout).
    Starting,
    /// Fail the step: the dependency reports `unhealthy`.
    Unhealthy,
    /// Fail the step: the container has no healthcheck, so it never becomes healthy.
    NoHealthcheck,
    /// Fail the step: the container is not running.
    NotRunning,
}

pub fn wait_verdict(inspect: &Value) -> WaitVerdict {
    let state = inspect.get("State");
    let status = state
        .and_then(|s| s.get("Status"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let health = state
        .and_then(|s| s.pointer("/Health/Status"))
        .and_then(Value::as_str);
    match (status, health) {
        (_, Some("healthy")) if status == "running" => WaitVerdict::Healthy,
        ("running" | "restarting" | "created", Some("unhealthy")) => WaitVerdict::Unhealthy,
        ("running", None | Some("none")) => WaitVerdict::NoHealthcheck,
        ("running" | "restarting", _) => WaitVerdict::Starting,
        _ => WaitVerdict::NotRunning,
    }
}
