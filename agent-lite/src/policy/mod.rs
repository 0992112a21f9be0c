//! The agent's local policy (`policy:` in agent.yaml): what this host allows, whatever the
//! server asks. Enforced for catalog operations (`command`) and passthrough streams alike;
//! a refusal names the rule that matched (`forbidden by agent policy: <rule> (<why>)`).
//!
//! Every Docker API request, a passthrough stream's or each step of a catalog operation,
//! goes through [`request::admit`]: bodies and queries are read the way dockerd reads them
//! ([`gojson`], [`query`]), decided on ([`create`], [`scope`]), and the agent sends its own
//! serialisation of what it checked.
//!
//! Owns: the `policy:` settings, the checks of an action name, and env redaction. Must not:
//! talk to the server. The only daemon requests it makes are inspects and lists of the
//! objects a request names (through [`scope::Daemon`]).

pub mod create;
pub mod gojson;
pub mod query;
pub mod request;
mod schema;
pub mod scope;

use protocol::passthrough::Route;
use protocol::{Access, ErrorBody, ErrorCode};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

fn d_patterns() -> Vec<String> {
    ["*PASSWORD*", "*SECRET*", "*TOKEN*", "*KEY*"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// The `policy:` section. Every key is optional; the default allows everything.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Only these actions (catalog operation names and passthrough route actions, e.g.
    /// `container.list`; `container.*` and `*` are wildcards). Absent: all.
    #[serde(default)]
    pub allowed_operations: Option<Vec<String>>,
    /// Refuse `container.exec` (exec create, start, resize).
    #[serde(default)]
    pub deny_exec: bool,
    /// Refuse attaching to containers (`docker attach`, `docker run -it`).
    #[serde(default)]
    pub deny_attach: bool,
    /// Allow only reads: passthrough routes and catalog operations of the read class.
    #[serde(default)]
    pub read_only: bool,
    /// Refuse what escapes the container's confinement: privileged containers and execs,
    /// host namespaces, capabilities beyond Docker's default set, unconfined security
    /// options, replaced masked paths, devices.
    #[serde(default)]
    pub deny_privileged: bool,
    /// Refuse the host's network: host network mode (also through another container's),
    /// log drivers that send to an address, and the daemon fetching URLs (`fromSrc`, build
    /// `remote`).
    #[serde(default)]
    pub deny_host_network: bool,
    /// Refuse host paths: binds, bind mounts, volumes with local-driver mount options or
    /// another driver, volumes that do not exist yet, and another container's host mounts.
    #[serde(default)]
    pub deny_host_mounts: bool,
    /// Namespace isolation: the agent only lists and touches containers carrying all of these
    /// labels, and adds them to every container it creates.
    #[serde(default)]
    pub container_labels: BTreeMap<String, String>,
    /// Replace env values whose names match `redact_env_patterns` by `***` in inspect output.
    #[serde(default)]
    pub redact_env: bool,
    /// Case-insensitive glob patterns (`*` matches anything) of env names to redact.
    #[serde(default = "d_patterns")]
    pub redact_env_patterns: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_operations: None,
            deny_exec: false,
            deny_attach: false,
            read_only: false,
            deny_privileged: false,
            deny_host_network: false,
            deny_host_mounts: false,
            container_labels: BTreeMap::new(),
            redact_env: false,
            redact_env_patterns: d_patterns(),
        }
    }
}

/// Case-insensitive glob match with `*` wildcards.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let n = name.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == n;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !n.starts_with(first) || n.len() < first.len() + last.len() || !n.ends_with(last) {
        return false;
    }
    let mut rest = &n[first.len()..n.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn forbidden(rule: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Forbidden,
        format!("forbidden by agent policy: {rule}"),
    )
}

impl Policy {
    /// Checks the rules of an action name, which need no daemon request:
    /// `allowed_operations`, `read_only`, `deny_exec`, `deny_attach`. `Err` names the rule.
    pub fn check_action(&self, action: &str, access: Access) -> Result<(), String> {
        if let Some(allowed) = &self.allowed_operations {
            if !allowed.iter().any(|p| glob(p, action)) {
                return Err(format!("allowed_operations ({action} is not listed)"));
            }
        }
        if self.read_only && access == Access::Write {
            return Err(format!("read_only ({action} changes something)"));
        }
        if self.deny_exec && matches!(action, "container.exec" | "container.exec.resize") {
            return Err("deny_exec".into());
        }
        if self.deny_attach && action == "container.attach" {
            return Err("deny_attach".into());
        }
        Ok(())
    }

    /// The cheap checks for a passthrough route (on the session thread).
    pub fn check_route(&self, route: &Route) -> Result<(), String> {
        self.check_action(route.action, route.access)
    }

    /// The cheap checks for a catalog operation, before it runs; each Docker request it
    /// makes then passes [`request::admit`] (see [`request::Guarded`]).
    pub fn check_command(&self, operation: &str) -> Result<(), ErrorBody> {
        self.check_action(operation, protocol::ops::access_of(operation))
            .map_err(|r| forbidden(&r))
    }

    /// Whether container create bodies are read and rewritten (a rule looks into them).
    pub fn reads_creates(&self) -> bool {
        self.deny_privileged
            || self.deny_host_network
            || self.deny_host_mounts
            || !self.container_labels.is_empty()
    }

    /// Whether a container's labels (`Config.Labels` of an inspect) carry ours.
    pub fn labels_match(&self, labels: Option<&Value>) -> bool {
        self.container_labels.iter().all(|(k, v)| {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .is_some_and(|x| x == v)
        })
    }

    /// Whether a Docker event may be pushed to the server: with `container_labels`, container
    /// events only of containers carrying them (Docker puts labels in the attributes).
    pub fn event_visible(&self, e: &protocol::EventPayload) -> bool {
        e.kind != "container"
            || self
                .container_labels
                .iter()
                .all(|(k, v)| e.attributes.get(k).is_some_and(|x| x == v))
    }
}

/// The HTTP status of a policy refusal on a passthrough stream.
pub fn status_of(e: &ErrorBody) -> u16 {
    match e.code {
        ErrorCode::InvalidParams => 400,
        ErrorCode::Forbidden => 403,
        ErrorCode::NotFound => 404,
        ErrorCode::Timeout => 504,
        _ => 502,
    }
}

fn redact_value(v: &mut Value, patterns: &[String]) -> bool {
    let Some(env) = v.pointer_mut("/Config/Env").and_then(Value::as_array_mut) else {
        return false;
    };
    let mut changed = false;
    for e in env.iter_mut() {
        let Some(s) = e.as_str() else { continue };
        let name = s.split_once('=').map_or(s, |(n, _)| n);
        if patterns.iter().any(|p| glob(p, name)) {
            *e = Value::String(format!("{name}=***"));
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob("*PASSWORD*", "db_password"));
        assert!(glob("*KEY*", "API_KEY_ID"));
        assert!(glob("container.*", "container.list"));
        assert!(glob("*", "image.save"));
        assert!(!glob("container.*", "image.list"));
        assert!(glob("system.ping", "SYSTEM.PING"));
        assert!(!glob("a*b*c", "acb"));
        assert!(glob("a*b*c", "axbyc"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn action_rules() {
        let mut p = Policy {
            allowed_operations: Some(vec!["container.*".into(), "system.ping".into()]),
            deny_exec: true,
            ..Policy::default()
        };
        assert!(p.check_action("container.list", Access::Read).is_ok());
        assert!(p
            .check_action("image.list", Access::Read)
            .unwrap_err()
            .contains("allowed_operations"));
        assert_eq!(
            p.check_action("container.exec", Access::Write).unwrap_err(),
            "deny_exec"
        );
        p.read_only = true;
        assert!(p
            .check_action("container.stop", Access::Write)
            .unwrap_err()
            .starts_with("read_only"));
        assert!(p.check_action("container.logs", Access::Read).is_ok());
        let e = p.check_command("container.remove").unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(e.message.contains("read_only"), "{e}");
        assert!(p.check_command("container.inspect").is_ok());
    }

    #[test]
    fn redaction() {
        let mut v = json!({"Config": {"Env": ["PATH=/bin", "DB_PASSWORD=hunter2", "api_token=x", "PLAIN"]}});
        assert!(redact_value(&mut v, &d_patterns()));
        assert_eq!(
            v["Config"]["Env"],
            json!(["PATH=/bin", "DB_PASSWORD=***", "api_token=***", "PLAIN"])
        );
    }
}
