//! A stack translated for one host: what to create, with compose's own names and labels, and
//! in which order. Built by [`super::compose::parse`]; read by [`super::reconcile`].
//!
//! Owns: the plan types and compose's naming and label conventions. Must not: do I/O.

use super::engine::ContainerBody;
use protocol::ops::{ContainerCreateParams, NetworkCreateParams, VolumeCreateParams};
use serde::Serialize;
use std::time::Duration;

/// The compose project a container, network or volume belongs to.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
/// The service a container runs.
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
/// The replica number (always `1`: stacks run one container per service).
pub const LABEL_NUMBER: &str = "com.docker.compose.container-number";
/// `False` for service containers (`True` marks `docker compose run` containers).
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";
/// The SHA-256 of the service's translated config; a change means recreate.
pub const LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";
/// `service:condition:restart` per dependency, comma-separated, as compose writes it.
pub const LABEL_DEPENDS_ON: &str = "com.docker.compose.depends_on";
/// The network's key in the file.
pub const LABEL_NETWORK: &str = "com.docker.compose.network";
/// The volume's key in the file.
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";
/// The label prefix reserved for the labels above; a file may not set such labels itself.
pub const RESERVED_LABEL_PREFIX: &str = "com.docker.compose.";

/// Everything to create for a stack on a host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackPlan {
    /// The compose project name.
    pub project: String,
    /// Sorted by key.
    pub networks: Vec<NetworkPlan>,
    /// Sorted by key.
    pub volumes: Vec<VolumePlan>,
    /// In dependency order: every service comes after the services it depends on.
    pub services: Vec<ServicePlan>,
}

impl StackPlan {
    pub fn service(&self, name: &str) -> Option<&ServicePlan> {
        self.services.iter().find(|s| s.service == name)
    }
}

/// A network of the stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkPlan {
    /// The key in the file (`default` for the implicit network).
    pub key: String,
    /// The Docker name: `<project>_<key>`, or the file's `name`.
    pub name: String,
    /// It must already exist on the host; it is never created or removed.
    pub external: bool,
    /// The catalog's `network.create` params with compose's labels; `None` when external.
    pub create: Option<NetworkCreateParams>,
}

/// A named volume of the stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumePlan {
    pub key: String,
    /// The Docker name: `<project>_<key>`, or the file's `name`.
    pub name: String,
    pub external: bool,
    /// The catalog's `volume.create` params with compose's labels; `None` when external.
    pub create: Option<VolumeCreateParams>,
}

/// When to pull a service's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Pull only when the host lacks the image.
    #[default]
    Missing,
    Always,
    Never,
}

/// What a service waits for before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The dependency's container has been started.
    ServiceStarted,
    /// The dependency's container reports `healthy`.
    ServiceHealthy,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::ServiceStarted => "service_started",
            Condition::ServiceHealthy => "service_healthy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
}

/// A network to connect after the container is created (create takes only one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// The network's Docker name.
    pub network: String,
    pub aliases: Vec<String>,
}

/// One service: its container and how to create it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePlan {
    pub service: String,
    /// `<project>-<service>-1`, or the file's `container_name`.
    pub container_name: String,
    pub image: String,
    pub pull_policy: PullPolicy,
    /// The SHA-256 (hex) of the translated config, also in the `config-hash` label.
    pub config_hash: String,
    /// The full `POST /containers/create` body, labels and hash included.
    pub create: ContainerBody,
    /// Further networks, in order, to connect before the container starts.
    pub connect: Vec<Attachment>,
    /// Sorted by service name.
    pub depends_on: Vec<Dependency>,
    /// How long a dependent should wait for this service to become healthy, derived from its
    /// healthcheck (Docker's defaults when the file sets none).
    #[serde(with = "secs")]
    pub health_wait: Duration,
}

impl ServicePlan {
    /// The create body as JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(&self.create).unwrap_or(serde_json::Value::Null)
    }

    /// The catalog's `container.create` params: the name, and the whole Engine body as `docker`.
    pub fn create_params(&self) -> ContainerCreateParams {
        ContainerCreateParams {
            name: Some(self.container_name.clone()),
            image: self.image.clone(),
            docker: Some(self.body()),
            ..Default::default()
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

/// The compose name of a service's container: `<project>-<service>-1`.
pub fn container_name(project: &str, service: &str) -> String {
    format!("{project}-{service}-1")
}

/// The compose name of a network or volume: `<project>_<key>`.
pub fn scoped_name(project: &str, key: &str) -> String {
    format!("{project}_{key}")
}

/// Checks a project name: 1 to 63 lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit (compose's rule).
pub fn check_project_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
    if !first_ok || !rest_ok || name.len() > 63 {
        return Err(format!(
            "invalid project name {name:?}: use 1 to 63 lowercase letters, digits, '-' and '_', starting with a letter or digit"
        ));
    }
    Ok(())
}
