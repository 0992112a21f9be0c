//! The agent's local policy (`policy:` in agent.yaml): what this host allows, whatever the
//! server asks. Enforced for catalog operations (`command`) and passthrough streams alike;
//! a refusal names the rule that matched (`forbidden by agent policy: <rule>`).
//!
//! Owns: the rules and their checks, label filters and create-body inspection, and env
//! redaction in inspect output. Must not: talk to the server. The only daemon requests it
//! makes are inspects of the object a request names (for `container_labels`).

use crate::Agent;
use protocol::passthrough::Route;
use protocol::{ErrorBody, ErrorCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
    /// Refuse creating privileged containers.
    #[serde(default)]
    pub deny_privileged: bool,
    /// Refuse creating containers on the host network.
    #[serde(default)]
    pub deny_host_network: bool,
    /// Refuse creating containers with bind mounts of host paths.
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

/// Why a create body was refused.
#[derive(Debug, PartialEq)]
pub enum BodyRefusal {
    /// A rule matched: its name and why.
    Forbidden(String),
    /// The body is not a JSON object.
    Invalid(String),
}

fn forbidden(rule: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Forbidden,
        format!("forbidden by agent policy: {rule}"),
    )
}

/// Actions that touch one container named by the request's id.
const CONTAINER_ID_OPS: &[&str] = &[
    "container.inspect",
    "container.start",
    "container.stop",
    "container.restart",
    "container.kill",
    "container.pause",
    "container.unpause",
    "container.remove",
    "container.rename",
    "container.top",
    "container.logs",
    "container.stats",
    "container.exec",
];

impl Policy {
    /// Checks the rules that need no daemon request: `allowed_operations`, `deny_exec`,
    /// `deny_attach`. `Err` names the rule.
    pub fn check_action(&self, action: &str) -> Result<(), String> {
        if let Some(allowed) = &self.allowed_operations {
            if !allowed.iter().any(|p| glob(p, action)) {
                return Err(format!("allowed_operations ({action} is not listed)"));
            }
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
    pub fn check_route(&self, route: &Route, _query: Option<&str>) -> Result<(), String> {
        self.check_action(route.action)
    }

    fn label_pairs(&self) -> Vec<String> {
        self.container_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
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

    /// Adds our label filters to a Docker `filters` JSON value (string, list or legacy map
    /// forms of `label` are all kept).
    pub fn add_label_filters(&self, filters: &mut Value) {
        if self.container_labels.is_empty() {
            return;
        }
        if !filters.is_object() {
            *filters = Value::Object(Map::new());
        }
        let Some(obj) = filters.as_object_mut() else {
            return;
        };
        let entry = obj.entry("label").or_insert(Value::Array(Vec::new()));
        match entry {
            Value::Object(m) => {
                for l in self.label_pairs() {
                    m.insert(l, Value::Bool(true));
                }
            }
            Value::Array(a) => a.extend(self.label_pairs().into_iter().map(Value::String)),
            other => {
                let mut a = vec![other.clone()];
                a.extend(self.label_pairs().into_iter().map(Value::String));
                *other = Value::Array(a);
            }
        }
    }

    /// The query to send instead of `query`, for routes that list containers or their
    /// events (label filters added). `None`: unchanged.
    pub fn rewrite_query(&self, route: &Route, query: Option<&str>) -> Option<String> {
        if self.container_labels.is_empty()
            || !matches!(
                route.action,
                "container.list" | "container.prune" | "system.events"
            )
        {
            return None;
        }
        let mut pairs: Vec<(String, String)> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), String::new()),
            })
            .collect();
        let i = match pairs.iter().position(|(k, _)| k == "filters") {
            Some(i) => i,
            None => {
                pairs.push(("filters".into(), String::new()));
                pairs.len() - 1
            }
        };
        let raw = percent_decode(&pairs[i].1);
        let mut filters: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
        self.add_label_filters(&mut filters);
        pairs[i].1 = protocol::docker::percent_encode(&filters.to_string());
        Some(
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
        )
    }

    /// Checks a Docker create body (`POST /containers/create`) for privileged, host network
    /// and host mounts, and adds our labels. `Ok(Some(body))`: send this body instead.
    pub fn check_create_body(&self, body: &[u8]) -> Result<Option<Vec<u8>>, BodyRefusal> {
        if !self.deny_privileged
            && !self.deny_host_network
            && !self.deny_host_mounts
            && self.container_labels.is_empty()
        {
            return Ok(None);
        }
        let mut v: Value = serde_json::from_slice(body)
            .map_err(|e| BodyRefusal::Invalid(format!("invalid container create body: {e}")))?;
        if !v.is_object() {
            return Err(BodyRefusal::Invalid(
                "the container create body must be a JSON object".into(),
            ));
        }
        self.check_create_value(&v)
            .map_err(BodyRefusal::Forbidden)?;
        if self.container_labels.is_empty() {
            return Ok(None);
        }
        self.add_labels(&mut v);
        Ok(Some(v.to_string().into_bytes()))
    }

    fn add_labels(&self, body: &mut Value) {
        if !body.get("Labels").is_some_and(Value::is_object) {
            body["Labels"] = Value::Object(Map::new());
        }
        if let Some(m) = body.get_mut("Labels").and_then(Value::as_object_mut) {
            for (k, v) in &self.container_labels {
                m.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }

    /// The rule a create body breaks, if any.
    pub fn check_create_value(&self, body: &Value) -> Result<(), String> {
        let host = body.get("HostConfig");
        let get = |k: &str| host.and_then(|h| h.get(k));
        if self.deny_privileged && get("Privileged").and_then(Value::as_bool) == Some(true) {
            return Err("deny_privileged".into());
        }
        if self.deny_host_network
            && get("NetworkMode")
                .and_then(Value::as_str)
                .is_some_and(|m| m.eq_ignore_ascii_case("host"))
        {
            return Err("deny_host_network".into());
        }
        if self.deny_host_mounts {
            // Binds: "src:dst[:opts]"; a source starting with / is a host path (else a volume).
            let host_bind = get("Binds")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|b| b.starts_with('/') || b.starts_with('.') || b.starts_with('~'));
            let bind_mount = get("Mounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|m| {
                    m.get("Type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.eq_ignore_ascii_case("bind"))
                });
            if host_bind || bind_mount {
                return Err("deny_host_mounts".into());
            }
        }
        Ok(())
    }

    /// `deny_privileged` for exec create bodies (`docker exec --privileged`).
    pub fn check_exec_body(&self, body: &[u8]) -> Result<(), String> {
        if !self.deny_privileged {
            return Ok(());
        }
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if v.get("Privileged").and_then(Value::as_bool) == Some(true) {
            return Err("deny_privileged".into());
        }
        Ok(())
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

    /// Whether answers of this passthrough route get env values redacted.
    pub fn redacts(&self, route: &Route) -> bool {
        self.redact_env && route.action == "container.inspect"
    }

    /// Checks a catalog command before it runs and rewrites its params (label filters,
    /// labels on create). `Err`: `forbidden` naming the rule.
    pub fn check_command(
        &self,
        agent: &Agent,
        operation: &str,
        params: &mut Value,
        deadline: Instant,
    ) -> Result<(), ErrorBody> {
        self.check_action(operation).map_err(|r| forbidden(&r))?;
        if self.deny_privileged
            && operation == "container.exec"
            && params.get("privileged").and_then(Value::as_bool) == Some(true)
        {
            return Err(forbidden("deny_privileged"));
        }
        if operation == "container.create" {
            if let Ok(protocol::Operation::ContainerCreate(p)) =
                protocol::Operation::parse(operation, params)
            {
                self.check_create_value(&protocol::docker::create_body(&p))
                    .map_err(|r| forbidden(&r))?;
            }
        }
        if self.container_labels.is_empty() || !params.is_object() {
            return Ok(());
        }
        match operation {
            "container.list" | "container.prune" => {
                let mut f = params.get("filters").cloned().unwrap_or(Value::Null);
                self.add_label_filters(&mut f);
                params["filters"] = f;
            }
            "container.create" => {
                let mut labels = params
                    .get("labels")
                    .cloned()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| Value::Object(Map::new()));
                for (k, v) in &self.container_labels {
                    labels[k] = Value::String(v.clone());
                }
                params["labels"] = labels;
            }
            op if CONTAINER_ID_OPS.contains(&op) => {
                if let Some(id) = params.get("id").and_then(Value::as_str) {
                    self.check_container(agent, id, Some(deadline))?;
                }
            }
            "network.connect" | "network.disconnect" => {
                if let Some(id) = params.get("container").and_then(Value::as_str) {
                    self.check_container(agent, id, Some(deadline))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Refuses a container outside `container_labels` (`forbidden`), or a missing one
    /// (`not_found`, Docker's message).
    pub fn check_container(
        &self,
        agent: &Agent,
        id: &str,
        deadline: Option<Instant>,
    ) -> Result<(), ErrorBody> {
        if self.container_labels.is_empty() {
            return Ok(());
        }
        let v = agent.docker.get_json(
            &format!("/containers/{}/json", protocol::docker::percent_encode(id)),
            deadline,
        )?;
        if self.labels_match(v.pointer("/Config/Labels")) {
            Ok(())
        } else {
            Err(forbidden(&format!(
                "container_labels (container {id} does not carry them)"
            )))
        }
    }

    /// Replaces matching env values in an inspect result (`Config.Env`) by `***`.
    pub fn redact(&self, v: &mut Value) {
        if self.redact_env {
            redact_value(v, &self.redact_env_patterns);
        }
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

/// Redacts an inspect answer's bytes; `None` when it is not JSON (sent as is).
pub fn redact_inspect_bytes(body: &[u8], patterns: &[String]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    redact_value(&mut v, patterns);
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    Some(out)
}

/// Decodes `%XX` escapes and `+` (a space in query strings).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(x) => {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The passthrough checks that need the daemon: the labels of the container (or the exec's
/// container) a route names. `Err((status, message))` answers the stream.
pub fn check_object(
    agent: &Agent,
    route: &Route,
    query: Option<&str>,
) -> Result<(), (u16, String)> {
    let policy = &agent.config.policy;
    if policy.container_labels.is_empty() {
        return Ok(());
    }
    let deadline = Some(Instant::now() + agent.docker.timeout().min(Duration::from_secs(30)));
    let container = if route.path.starts_with("/exec/") {
        // Exec ids: their container decides.
        let Some(exec) = &route.object else {
            return Ok(());
        };
        let v = agent
            .docker
            .get_json(
                &format!("/exec/{}/json", protocol::docker::percent_encode(exec)),
                deadline,
            )
            .map_err(|e| (status_of(&e), e.message))?;
        v.get("ContainerID")
            .and_then(Value::as_str)
            .map(str::to_string)
    } else if route.path.starts_with("/containers/") {
        route.object.clone()
    } else if route.action == "container.commit" {
        query.and_then(|q| {
            q.split('&')
                .find_map(|p| p.strip_prefix("container="))
                .map(percent_decode)
        })
    } else {
        None
    };
    match container {
        Some(id) => policy
            .check_container(agent, &id, deadline)
            .map_err(|e| (status_of(&e), e.message)),
        None => Ok(()),
    }
}

fn status_of(e: &ErrorBody) -> u16 {
    match e.code {
        ErrorCode::NotFound => 404,
        ErrorCode::Forbidden => 403,
        ErrorCode::Timeout => 504,
        _ => 502,
    }
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
    fn actions_and_bodies() {
        let mut p = Policy {
            allowed_operations: Some(vec!["container.*".into(), "system.ping".into()]),
            deny_exec: true,
            ..Policy::default()
        };
        assert!(p.check_action("container.list").is_ok());
        assert!(p
            .check_action("image.list")
            .unwrap_err()
            .contains("allowed_operations"));
        assert_eq!(p.check_action("container.exec").unwrap_err(), "deny_exec");
        p.deny_host_mounts = true;
        p.deny_privileged = true;
        p.deny_host_network = true;
        let body = |hc: Value| {
            json!({"Image": "x", "HostConfig": hc})
                .to_string()
                .into_bytes()
        };
        let refuse = |b: Vec<u8>| match p.check_create_body(&b) {
            Err(BodyRefusal::Forbidden(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(refuse(body(json!({"Privileged": true}))), "deny_privileged");
        assert_eq!(
            refuse(body(json!({"NetworkMode": "host"}))),
            "deny_host_network"
        );
        assert_eq!(
            refuse(body(json!({"Binds": ["/etc:/x"]}))),
            "deny_host_mounts"
        );
        assert_eq!(
            refuse(body(
                json!({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]})
            )),
            "deny_host_mounts"
        );
        assert!(p
            .check_create_body(&body(json!({"Binds": ["vol:/x"]})))
            .unwrap()
            .is_none());
        p.container_labels.insert("team".into(), "a".into());
        let out = p.check_create_body(&body(json!({}))).unwrap().unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["Labels"]["team"], "a");
    }

    #[test]
    fn label_filters_in_queries() {
        let mut p = Policy::default();
        p.container_labels.insert("team".into(), "a".into());
        let r = protocol::passthrough::classify("GET", "/v1.41/containers/json").unwrap();
        let q = p
            .rewrite_query(
                &r,
                Some("all=1&filters=%7B%22status%22%3A%5B%22running%22%5D%7D"),
            )
            .unwrap();
        let f = q
            .split('&')
            .find_map(|x| x.strip_prefix("filters="))
            .unwrap();
        let v: Value = serde_json::from_str(&percent_decode(f)).unwrap();
        assert_eq!(v, json!({"status": ["running"], "label": ["team=a"]}));
        assert!(q.starts_with("all=1&"));
        let q = p.rewrite_query(&r, None).unwrap();
        assert!(q.starts_with("filters="), "{q}");
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
