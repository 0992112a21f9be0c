//! One Docker Engine API request through the policy, whoever made it: a passthrough stream
//! (the docker CLI through the server) or a step of a catalog operation (through
//! [`Guarded`]). Both arrive here as a route, decoded query pairs and body bytes, and leave
//! as the path, query and body the agent sends: the bytes it checked are the bytes dockerd
//! reads.
//!
//! Owns: the order of the checks for a request and what is rewritten (labels, label
//! filters, names resolved to ids, canonical bodies), and the answers the policy filters.
//! Must not: open connections itself (the daemon is asked through [`Daemon`]).

use super::create::{self, Obj, Origin};
use super::gojson;
use super::query::{self, Pairs};
use super::scope::{Daemon, Scope};
use super::{forbidden, schema};
use protocol::docker::{DockerRequest, DockerResponse, Transport};
use protocol::passthrough::{classify, Route};
use protocol::{ErrorBody, ErrorCode};
use serde_json::Value;

/// What to send as the body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// The request's own body (none, or one the policy does not read).
    Same,
    /// Our serialisation of what was checked.
    Json(Value),
    /// No body at all.
    Empty,
}

/// What the policy does to a 2xx answer before it leaves the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Env values matching `redact_env_patterns` become `***` (container inspect).
    Redact,
    /// Containers without our labels are removed (`system df`).
    Df,
    /// Containers without our labels are removed from networks' `Containers`.
    Networks,
}

/// The request as the agent sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The path without the version prefix, escaped.
    pub path: String,
    /// Decoded pairs; encode them with [`query::encode`].
    pub query: Pairs,
    pub body: Body,
    pub answer: Option<Answer>,
}

/// The oldest API version the agent forwards. Older ones let `start` take a `HostConfig`.
const MIN_VERSION: (u32, u32) = (1, 24);

fn invalid(message: impl Into<String>) -> ErrorBody {
    ErrorBody::invalid_params(message)
}

fn deny(rule: &str, why: impl std::fmt::Display) -> ErrorBody {
    forbidden(&format!("{rule} ({why})"))
}

/// Checks that hold whatever the policy: the API version, form-encoded bodies (dockerd
/// reads their parameters ahead of the query's), and a body on `start`.
fn always(
    route: &Route,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Result<(), ErrorBody> {
    if let Some(v) = &route.version {
        let parsed = v
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        if parsed.is_none_or(|p| p < MIN_VERSION) {
            return Err(invalid(format!(
                "Docker API version {v} is not forwarded: the oldest the agent accepts is {}.{}",
                MIN_VERSION.0, MIN_VERSION.1
            )));
        }
    }
    let form = headers.iter().any(|(k, v)| {
        let media = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        k.eq_ignore_ascii_case("content-type")
            && matches!(
                media.as_str(),
                "application/x-www-form-urlencoded" | "multipart/form-data"
            )
    });
    if form {
        return Err(invalid(
            "form-encoded request bodies are not forwarded: send parameters in the query",
        ));
    }
    if route.action == "container.start" {
        let b = body.unwrap_or_default();
        let text = std::str::from_utf8(b).unwrap_or("x").trim();
        if !matches!(text, "" | "{}" | "null") {
            return Err(invalid(
                "a body on container start (a HostConfig, API < 1.24) is not forwarded",
            ));
        }
    }
    Ok(())
}

/// Decodes `%XX` in a path segment (no `+` rule in paths), as dockerd's router does.
fn path_segment(s: &str) -> Result<String, ErrorBody> {
    query::unescape_path(s).map_err(invalid)
}

/// Runs every check on one request and returns what to send. `Err`: `forbidden` naming
/// the rule, `invalid_params`, or the daemon's error (`not_found`, ...).
pub fn admit(
    scope: &Scope,
    route: &Route,
    query: Pairs,
    headers: &[(String, String)],
    body: Option<&[u8]>,
) -> Result<Outgoing, ErrorBody> {
    let p = scope.policy;
    always(route, headers, body)?;
    let mut out = Outgoing {
        path: route.path.clone(),
        query,
        body: Body::Same,
        answer: None,
    };
    let labels = !p.container_labels.is_empty();
    match route.action {
        "container.create" if p.reads_creates() => {
            out.body = Body::Json(admit_create(scope, body)?);
        }
        "container.update" if p.deny_privileged => {
            let upd = read(schema::UPDATE, body)?;
            if let Some(why) = create::privileged(&upd, Origin::Request) {
                return Err(deny("deny_privileged", why));
            }
            out.body = Body::Json(Value::Object(upd));
        }
        "container.exec" if route.path.ends_with("/exec") && p.deny_privileged => {
            let exec = read(schema::EXEC, body)?;
            if exec.get("Privileged").and_then(Value::as_bool) == Some(true) {
                return Err(deny("deny_privileged", "a privileged exec"));
            }
            out.body = Body::Json(Value::Object(exec));
        }
        "network.connect" | "network.disconnect" if labels => {
            out.body = Body::Json(admit_connect(scope, body)?);
        }
        "volume.create" if p.deny_host_mounts => {
            let vol = read(schema::VOLUME, body)?;
            let empty = Obj::new();
            let opts = vol
                .get("DriverOpts")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            create::volume_options(create::s(&vol, "Driver"), opts)
                .map_err(|e| deny("deny_host_mounts", e))?;
            out.body = Body::Json(Value::Object(vol));
        }
        "image.pull" if p.deny_host_network => {
            let src = query::get(&out.query, "fromSrc").unwrap_or("");
            if !src.is_empty() && src != "-" {
                return Err(deny(
                    "deny_host_network",
                    "images/create fromSrc makes the daemon fetch a URL",
                ));
            }
        }
        "image.build" if p.deny_host_network => {
            if !query::get(&out.query, "remote").unwrap_or("").is_empty() {
                return Err(deny(
                    "deny_host_network",
                    "build remote makes the daemon fetch a URL",
                ));
            }
            let mode = query::get(&out.query, "networkmode").unwrap_or("");
            if mode.eq_ignore_ascii_case("host") || mode.starts_with("container:") {
                return Err(deny(
                    "deny_host_network",
                    format!("build networkmode {mode}"),
                ));
            }
        }
        "container.commit" if labels => {
            let name = query::get(&out.query, "container")
                .filter(|c| !c.is_empty())
                .ok_or_else(|| invalid("commit needs the container parameter"))?;
            let id = scope.container_id(name)?;
            query::set(&mut out.query, "container", id);
        }
        "container.list" | "container.prune" | "system.events" => {
            query::scope_filters(&mut out.query, &p.container_labels).map_err(invalid)?;
        }
        "container.start" => out.body = Body::Empty,
        _ => {}
    }
    if labels {
        scope_object(scope, route, &mut out)?;
    }
    out.answer = match route.action {
        "container.inspect" if p.redact_env => Some(Answer::Redact),
        "system.df" if labels => Some(Answer::Df),
        "network.inspect" | "network.list" if labels => Some(Answer::Networks),
        _ => None,
    };
    Ok(out)
}

/// The container (or exec) a path names: checked, and the path rewritten to the full id.
fn scope_object(scope: &Scope, route: &Route, out: &mut Outgoing) -> Result<(), ErrorBody> {
    let Some(object) = &route.object else {
        return Ok(());
    };
    if route.path.starts_with("/exec/") {
        return scope.exec(&path_segment(object)?);
    }
    let Some(rest) = route.path.strip_prefix("/containers/") else {
        return Ok(());
    };
    let id = scope.container_id(&path_segment(object)?)?;
    out.path = match rest.split_once('/') {
        Some((_, tail)) => format!("/containers/{id}/{tail}"),
        None => format!("/containers/{id}"),
    };
    Ok(())
}

fn read(s: gojson::S, body: Option<&[u8]>) -> Result<Obj, ErrorBody> {
    let b = body
        .filter(|b| !b.is_empty())
        .ok_or_else(|| invalid("the request needs a JSON body"))?;
    gojson::read(s, b).map_err(invalid)
}

/// A container create: read as dockerd reads it, checked, references resolved to ids, our
/// labels added.
fn admit_create(scope: &Scope, body: Option<&[u8]>) -> Result<Value, ErrorBody> {
    let p = scope.policy;
    let b = body
        .filter(|b| !b.is_empty())
        .ok_or_else(|| invalid("a container create needs a JSON body"))?;
    let mut c = create::read_create(b).map_err(|e| invalid(format!("container create: {e}")))?;
    let empty = Obj::new();
    let hc = c
        .get("HostConfig")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let net = c.get("NetworkingConfig").and_then(Value::as_object);
    if p.deny_privileged {
        if let Some(why) = create::privileged(hc, Origin::Request) {
            return Err(deny("deny_privileged", why));
        }
    }
    if p.deny_host_network {
        if let Some(why) = create::host_network(hc, net) {
            return Err(deny("deny_host_network", why));
        }
    }
    if p.deny_host_mounts {
        for name in create::mounts(hc).map_err(|e| deny("deny_host_mounts", e))? {
            scope.volume(&name)?;
        }
    }
    for r in create::refs(&c).map_err(invalid)? {
        let id = scope.referenced(&r)?;
        create::rewrite(&mut c, &r, &id);
    }
    create::add_labels(&mut c, &p.container_labels);
    Ok(Value::Object(c))
}

/// A network connect or disconnect: the container it names (and an endpoint's links) must
/// carry our labels, and are sent by id.
fn admit_connect(scope: &Scope, body: Option<&[u8]>) -> Result<Value, ErrorBody> {
    let mut c = read(schema::CONNECT, body)?;
    let name = create::s(&c, "Container").to_string();
    let id = scope.container_id(&name)?;
    c.insert("Container".into(), Value::String(id));
    if let Some(links) = c
        .get_mut("EndpointConfig")
        .and_then(|e| e.get_mut("Links"))
        .and_then(Value::as_array_mut)
    {
        for l in links.iter_mut() {
            let (name, suffix) = create::parse_link(l.as_str().unwrap_or("")).map_err(invalid)?;
            *l = Value::String(format!("{}{suffix}", scope.container_id(&name)?));
        }
    }
    Ok(Value::Object(c))
}

/// Applies an [`Answer`] filter to a 2xx answer's bytes (sent as they are when not JSON).
pub fn filter_answer(scope: &Scope, answer: Answer, bytes: &[u8]) -> Result<Vec<u8>, ErrorBody> {
    let Ok(mut v) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(bytes.to_vec());
    };
    let p = scope.policy;
    match answer {
        Answer::Redact => {
            super::redact_value(&mut v, &p.redact_env_patterns);
        }
        Answer::Df => {
            if let Some(list) = v.get_mut("Containers").and_then(Value::as_array_mut) {
                list.retain(|c| p.labels_match(c.get("Labels")));
            }
        }
        Answer::Networks => {
            let holds = |n: &Value| {
                n.get("Containers")
                    .and_then(Value::as_object)
                    .is_some_and(|c| !c.is_empty())
            };
            let any = match &v {
                Value::Array(a) => a.iter().any(holds),
                n => holds(n),
            };
            if any {
                let ours = scope.labelled_ids()?;
                let keep = |n: &mut Value| {
                    if let Some(c) = n.get_mut("Containers").and_then(Value::as_object_mut) {
                        c.retain(|id, _| ours.contains(id));
                    }
                };
                match &mut v {
                    Value::Array(a) => a.iter_mut().for_each(keep),
                    n => keep(n),
                }
            }
        }
    }
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    Ok(out)
}

/// The agent's daemon for the policy: versioned GETs on the Docker client, within the
/// request's deadline.
pub struct AgentDaemon<'a> {
    pub docker: &'a crate::docker::DockerClient,
    pub deadline: Option<std::time::Instant>,
}

impl Daemon for AgentDaemon<'_> {
    fn get(&self, path: &str) -> Result<Value, ErrorBody> {
        self.docker.get_json(path, self.deadline)
    }
}

/// A catalog operation's transport with the policy in front: every request the operation
/// makes passes [`admit`] and is sent as admitted; answers are filtered.
pub struct Guarded<'a> {
    pub scope: Scope<'a>,
    pub inner: &'a mut dyn Transport,
}

impl Transport for Guarded<'_> {
    fn call(
        &mut self,
        req: &DockerRequest,
        on_line: &mut dyn FnMut(&[u8]),
    ) -> Result<DockerResponse, ErrorBody> {
        let method = req.method.as_str();
        let route = classify(method, &req.path).map_err(|e| {
            ErrorBody::new(
                ErrorCode::InvalidParams,
                format!("the agent's policy cannot check this request: {e}"),
            )
        })?;
        let body = req.body_bytes();
        let headers = [("Content-Type".to_string(), "application/json".to_string())];
        let out = admit(
            &self.scope,
            &route,
            req.query.clone(),
            &headers,
            body.as_deref(),
        )?;
        let sent = DockerRequest {
            method: req.method,
            path: out.path,
            query: out.query,
            body: match out.body {
                Body::Same => req.body.clone(),
                Body::Json(v) => Some(v),
                Body::Empty => None,
            },
            progress: req.progress,
        };
        let mut resp = self.inner.call(&sent, on_line)?;
        if let Some(a) = out.answer {
            if (200..300).contains(&resp.status) {
                resp.body = filter_answer(&self.scope, a, &resp.body)?;
            }
        }
        Ok(resp)
    }
}
