//! The checks that ask the daemon: which container a name resolves to and whether it
//! carries the policy's labels, what an exec belongs to, whether a referenced container or
//! a named volume would let a create reach the host, and which containers an answer may
//! show.
//!
//! Names are resolved once (an inspect), and callers forward the returned full id, so a
//! rename between the check and the request cannot redirect it.
//!
//! Owns: those lookups, through the [`Daemon`] seam. Must not: read request bodies (that is
//! [`super::create`]) or send the request itself.

use super::create::{self, Obj, Origin, Ref, RefKind};
use super::{forbidden, Policy};
use protocol::mapping::percent_encode;
use protocol::{ErrorBody, ErrorCode};
use serde_json::Value;

/// The daemon as the policy sees it: versioned `GET`s answering JSON. The agent's Docker
/// client implements it; tests use canned answers.
pub trait Daemon {
    /// `GET /vX.Y{path}` (with its query): the JSON answer, or the daemon's error
    /// (`not_found` for 404).
    fn get(&self, path: &str) -> Result<Value, ErrorBody>;
}

/// The policy with a daemon to ask.
pub struct Scope<'a> {
    pub policy: &'a Policy,
    pub daemon: &'a dyn Daemon,
}

fn id_of(v: &Value) -> Result<String, ErrorBody> {
    v.get("Id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_string)
        .ok_or_else(|| ErrorBody::new(ErrorCode::DockerError, "the daemon's inspect has no Id"))
}

impl<'a> Scope<'a> {
    /// `policy` with a daemon to ask.
    pub fn new(policy: &'a Policy, daemon: &'a dyn Daemon) -> Scope<'a> {
        Scope { policy, daemon }
    }
}

impl Scope<'_> {
    /// Inspects the container `name` resolves to now, refusing it when it lacks our labels.
    pub fn container(&self, name: &str) -> Result<Value, ErrorBody> {
        let v = self
            .daemon
            .get(&format!("/containers/{}/json", percent_encode(name)))?;
        if !self.policy.labels_match(v.pointer("/Config/Labels")) {
            return Err(forbidden(&format!(
                "container_labels (container {name} does not carry them)"
            )));
        }
        Ok(v)
    }

    /// The full id of the container `name` resolves to, checked against our labels.
    pub fn container_id(&self, name: &str) -> Result<String, ErrorBody> {
        id_of(&self.container(name)?)
    }

    /// Checks the container an exec belongs to.
    pub fn exec(&self, exec_id: &str) -> Result<(), ErrorBody> {
        let v = self
            .daemon
            .get(&format!("/exec/{}/json", percent_encode(exec_id)))?;
        match v.get("ContainerID").and_then(Value::as_str) {
            Some(c) if !c.is_empty() => self.container(c).map(|_| ()),
            _ => Err(ErrorBody::new(
                ErrorCode::DockerError,
                format!("exec {exec_id} names no container"),
            )),
        }
    }

    /// Resolves a container a create refers to, and returns its id. Sharing its namespaces
    /// or volumes is refused unless it could itself be created under this policy.
    pub fn referenced(&self, r: &Ref) -> Result<String, ErrorBody> {
        let v = self.container(&r.name)?;
        if r.kind != RefKind::Link {
            self.existing_allowed(&r.name, &v)?;
        }
        id_of(&v)
    }

    fn existing_allowed(&self, name: &str, v: &Value) -> Result<(), ErrorBody> {
        let p = self.policy;
        let empty = Obj::new();
        let hc = v
            .get("HostConfig")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let shares = |k: &str| create::s(hc, k).starts_with("container:");
        let deny = |rule: &str, why: String| {
            Err(forbidden(&format!(
                "{rule} (container {name} is used by reference and {why})"
            )))
        };
        if p.deny_privileged {
            if let Some(why) = create::privileged(hc, Origin::Existing) {
                return deny("deny_privileged", why);
            }
            if let Some(k) = ["PidMode", "IpcMode", "Cgroup"]
                .into_iter()
                .find(|k| shares(k))
            {
                return deny(
                    "deny_privileged",
                    format!("its {k} shares another container's"),
                );
            }
        }
        if p.deny_host_network {
            let mode = create::s(hc, "NetworkMode");
            if mode.eq_ignore_ascii_case("host") || shares("NetworkMode") {
                return deny("deny_host_network", format!("its NetworkMode is {mode}"));
            }
        }
        if p.deny_host_mounts {
            self.existing_mounts(v)
                .or_else(|why| deny("deny_host_mounts", why))?;
        }
        Ok(())
    }

    /// What an existing container mounts: no bind, and only volumes that pass
    /// [`Scope::volume`].
    fn existing_mounts(&self, v: &Value) -> Result<(), String> {
        for m in v
            .get("Mounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let kind = m.get("Type").and_then(Value::as_str).unwrap_or("");
            let target = m.get("Destination").and_then(Value::as_str).unwrap_or("");
            match kind {
                "volume" => {
                    let name = m.get("Name").and_then(Value::as_str).unwrap_or("");
                    self.volume(name)
                        .map_err(|e| format!("its volume at {target}: {}", e.message))?;
                }
                "tmpfs" => {}
                other => return Err(format!("it has a {other} mount at {target}")),
            }
        }
        Ok(())
    }

    /// A named volume a create mounts: it must exist (dockerd would create a missing one on
    /// the spot), and its driver and options must not reach host paths.
    pub fn volume(&self, name: &str) -> Result<(), ErrorBody> {
        let v = match self
            .daemon
            .get(&format!("/volumes/{}", percent_encode(name)))
        {
            Ok(v) => v,
            Err(e) if e.code == ErrorCode::NotFound || e.code == ErrorCode::InvalidParams => {
                return Err(forbidden(&format!(
                    "deny_host_mounts (volume {name} does not exist; create it first)"
                )))
            }
            Err(e) => return Err(e),
        };
        let empty = Obj::new();
        let driver = v.get("Driver").and_then(Value::as_str).unwrap_or("");
        let opts = v
            .get("Options")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        create::volume_options(driver, opts)
            .map_err(|e| forbidden(&format!("deny_host_mounts (volume {name}: {e})")))
    }

    /// The ids of the containers that carry our labels.
    pub fn labelled_ids(&self) -> Result<Vec<String>, ErrorBody> {
        let mut filters = Value::Null;
        super::query::add_label_filters(&mut filters, &self.policy.container_labels);
        let v = self.daemon.get(&format!(
            "/containers/json?all=1&filters={}",
            percent_encode(&filters.to_string())
        ))?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("Id").and_then(Value::as_str).map(str::to_string))
            .collect())
    }
}
