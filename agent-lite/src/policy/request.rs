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
use protocol::mapping::{DockerRequest, DockerResponse, Transport};
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
    out.body = admit_body(scope, route, body)?;
    admit_query(scope, route, &mut out.query)?;
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

/// The body rules of a route: what to send instead of the body.
fn admit_body(scope: &Scope, route: &Route, body: Option<&[u8]>) -> Result<Body, ErrorBody> {
    let p = scope.policy;
    let json = |o: Obj| Ok(Body::Json(Value::Object(o)));
    match route.action {
        "container.create" if p.reads_creates() => Ok(Body::Json(admit_create(scope, body)?)),
        "container.update" if p.deny_privileged => {
            let upd = read(&schema::UPDATE, body)?;
            match create::privileged(&upd, Origin::Request) {
                Some(why) => Err(deny("deny_privileged", why)),
                None => json(upd),
            }
        }
        "container.exec" if route.path.ends_with("/exec") && p.deny_privileged => {
            let exec = read(&schema::EXEC, body)?;
            match exec.get("Privileged").and_then(Value::as_bool) {
                Some(true) => Err(deny("deny_privileged", "a privileged exec")),
                _ => json(exec),
            }
        }
        "network.connect" | "network.disconnect" if !p.container_labels.is_empty() => {
            Ok(Body::Json(admit_connect(scope, body)?))
        }
        "volume.create" if p.deny_host_mounts => {
            let vol = read(&schema::VOLUME, body)?;
            let empty = Obj::new();
            let opts = vol
                .get("DriverOpts")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            create::volume_options(create::s(&vol, "Driver"), opts)
                .map_err(|e| deny("deny_host_mounts", e))?;
            json(vol)
        }
        "container.start" => Ok(Body::Empty),
        _ => Ok(Body::Same),
    }
}

/// The query rules of a route: parameters refused, scoped or resolved to ids.
fn admit_query(scope: &Scope, route: &Route, q: &mut Pairs) -> Result<(), ErrorBody> {
    let p = scope.policy;
    let net = |why: String| Err(deny("deny_host_network", why));
    match route.action {
        "image.pull" if p.deny_host_network => {
            let src = query::get(q, "fromSrc").unwrap_or("");
            if !src.is_empty() && src != "-" {
                return net("images/create fromSrc makes the daemon fetch a URL".into());
            }
        }
        "image.build" if p.deny_host_network => {
            if !query::get(q, "remote").unwrap_or("").is_empty() {
                return net("build remote makes the daemon fetch a URL".into());
            }
            let mode = query::get(q, "networkmode").unwrap_or("");
            if mode.eq_ignore_ascii_case("host") || mode.starts_with("container:") {
                return net(format!("build networkmode {mode}"));
            }
        }
        "container.commit" if !p.container_labels.is_empty() => {
            let name = query::get(q, "container")
                .filter(|c| !c.is_empty())
                .ok_or_else(|| invalid("commit needs the container parameter"))?;
            let id = scope.container_id(name)?;
            query::set(q, "container", id);
        }
        "container.list" | "container.prune" | "system.events" => {
            query::scope_filters(q, &p.container_labels).map_err(invalid)?;
        }
        _ => {}
    }
    Ok(())
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

fn read(s: &'static gojson::S, body: Option<&[u8]>) -> Result<Obj, ErrorBody> {
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
    let mut c = read(&schema::CONNECT, body)?;
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
    pub client: &'a crate::daemon::DockerClient,
    pub deadline: Option<std::time::Instant>,
}

impl Daemon for AgentDaemon<'_> {
    fn get(&self, path: &str) -> Result<Value, ErrorBody> {
        self.client.get_json(path, self.deadline)
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
            registry_auth: req.registry_auth.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use serde_json::json;
    use std::collections::HashMap;

    /// Canned daemon answers by path; anything else is 404.
    struct Canned(HashMap<String, Value>);

    impl Daemon for Canned {
        fn get(&self, path: &str) -> Result<Value, ErrorBody> {
            self.0.get(path).cloned().ok_or_else(|| {
                ErrorBody::new(ErrorCode::NotFound, format!("No such object: {path}"))
            })
        }
    }

    const ID_IN: &str = "aaaa1111";
    const ID_OUT: &str = "bbbb2222";
    const ID_HOSTNET: &str = "cccc3333";
    const ID_BINDS: &str = "dddd4444";

    fn daemon() -> Canned {
        let ctr = |id: &str, team: &str, hc: Value, mounts: Value| json!({"Id": id, "Config": {"Labels": {"team": team}}, "HostConfig": hc, "Mounts": mounts});
        let mut m = HashMap::new();
        m.insert(
            "/containers/web/json".into(),
            ctr(ID_IN, "a", json!({"NetworkMode": "bridge"}), json!([])),
        );
        m.insert(
            "/containers/victim/json".into(),
            ctr(ID_OUT, "b", json!({}), json!([])),
        );
        m.insert(
            "/containers/hostnet/json".into(),
            ctr(ID_HOSTNET, "a", json!({"NetworkMode": "host"}), json!([])),
        );
        m.insert(
            "/containers/binds/json".into(),
            ctr(
                ID_BINDS,
                "a",
                json!({}),
                json!([{"Type": "bind", "Source": "/", "Destination": "/h"}]),
            ),
        );
        m.insert(
            "/volumes/plain".into(),
            json!({"Name": "plain", "Driver": "local", "Options": null}),
        );
        m.insert(
            "/volumes/hostvol".into(),
            json!({"Name": "hostvol", "Driver": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}),
        );
        m.insert("/exec/e1/json".into(), json!({"ContainerID": "victim"}));
        Canned(m)
    }

    fn strict() -> Policy {
        Policy {
            deny_privileged: true,
            deny_host_network: true,
            deny_host_mounts: true,
            container_labels: [("team".to_string(), "a".to_string())].into(),
            ..Policy::default()
        }
    }

    fn run(
        p: &Policy,
        method: &str,
        path: &str,
        query: &str,
        body: Option<&str>,
    ) -> Result<Outgoing, ErrorBody> {
        let d = daemon();
        let route = classify(method, path).unwrap();
        let q = query::parse(Some(query)).map_err(ErrorBody::invalid_params)?;
        let headers = [("Content-Type".to_string(), "application/json".to_string())];
        admit(
            &Scope::new(p, &d),
            &route,
            q,
            &headers,
            body.map(str::as_bytes),
        )
    }

    fn refused(r: Result<Outgoing, ErrorBody>, rule: &str) {
        let e = r.expect_err("refused");
        assert!(e.message.contains(rule), "{rule}: {e}");
    }

    #[test]
    fn creates_are_checked_rewritten_and_labelled() {
        let p = strict();
        let create = |b: &str| run(&p, "POST", "/v1.41/containers/create", "", Some(b));
        refused(
            create(r#"{"Image":"x","HostConfig":{"Privileged":true},"HostConfig":{}}"#),
            "deny_privileged",
        );
        refused(
            create(r#"{"Image":"x","hostconfig":{"binds":["/:/h"]}}"#),
            "deny_host_mounts",
        );
        refused(
            create(r#"{"Image":"x","Binds":["/:/h"]}"#),
            "deny_host_mounts",
        );
        refused(
            create(r#"{"Image":"x","HostConfig":{"Binds":["missing:/d"]}}"#),
            "does not exist",
        );
        refused(
            create(r#"{"Image":"x","HostConfig":{"Binds":["hostvol:/d"]}}"#),
            "deny_host_mounts",
        );
        refused(
            create(r#"{"Image":"x","HostConfig":{"NetworkMode":"container:hostnet"}}"#),
            "deny_host_network",
        );
        refused(
            create(r#"{"Image":"x","HostConfig":{"PidMode":"container:victim"}}"#),
            "container_labels",
        );
        refused(
            create(r#"{"Image":"x","HostConfig":{"VolumesFrom":["binds:ro"]}}"#),
            "deny_host_mounts",
        );
        refused(
            create(r#"{"Image":"x","HostConfig":{"Links":["victim:v"]}}"#),
            "container_labels",
        );
        refused(
            create(r#"{"Image":"x","HostConfig":{"Privileged":"1"}}"#),
            "expected a boolean",
        );
        let ok = create(
            r#"{"image":"x","Labels":{"team":"b","own":"1"},"HOSTCONFIG":{"binds":["plain:/d"],"networkmode":"container:web","VolumesFrom":["web:ro"],"Links":["web"]}}"#,
        )
        .unwrap();
        let Body::Json(v) = ok.body else {
            panic!("{ok:?}")
        };
        assert_eq!(v["Image"], "x");
        assert_eq!(v["Labels"], json!({"team": "a", "own": "1"}));
        assert_eq!(v["HostConfig"]["NetworkMode"], format!("container:{ID_IN}"));
        assert_eq!(
            v["HostConfig"]["VolumesFrom"],
            json!([format!("{ID_IN}:ro")])
        );
        assert_eq!(v["HostConfig"]["Links"], json!([format!("{ID_IN}:web")]));
        assert_eq!(v["HostConfig"]["Binds"], json!(["plain:/d"]));
        // Without a rule that reads creates, the body is sent as it came.
        let open = Policy::default();
        let r = run(
            &open,
            "POST",
            "/v1.41/containers/create",
            "",
            Some(r#"{"Image":"x"}"#),
        )
        .unwrap();
        assert_eq!(r.body, Body::Same);
    }

    #[test]
    fn updates_execs_and_volume_creates() {
        let p = strict();
        refused(
            run(
                &p,
                "POST",
                "/v1.41/containers/web/update",
                "",
                Some(r#"{"devices":[{"PathOnHost":"/dev/sda"}]}"#),
            ),
            "deny_privileged",
        );
        refused(
            run(
                &p,
                "POST",
                "/v1.41/containers/web/exec",
                "",
                Some(r#"{"Cmd":["id"],"privileged":true}"#),
            ),
            "deny_privileged",
        );
        refused(
            run(
                &p,
                "POST",
                "/v1.41/containers/web/exec",
                "",
                Some(r#"{"Cmd":["id"],"Privileged":true,"Privileged":null}"#),
            ),
            "deny_privileged",
        );
        let ok = run(
            &p,
            "POST",
            "/v1.41/containers/web/exec",
            "",
            Some(r#"{"cmd":["id"],"PRIVILEGED":false}"#),
        )
        .unwrap();
        assert_eq!(
            ok.body,
            Body::Json(json!({"Cmd": ["id"], "Privileged": false}))
        );
        assert_eq!(ok.path, format!("/containers/{ID_IN}/exec"));
        refused(
            run(
                &p,
                "POST",
                "/v1.41/volumes/create",
                "",
                Some(r#"{"Name":"v","driveropts":{"type":"none","o":"bind","device":"/"}}"#),
            ),
            "deny_host_mounts",
        );
        refused(
            run(
                &p,
                "POST",
                "/v1.41/volumes/create",
                "",
                Some(r#"{"Name":"v","Driver":"x-plugin"}"#),
            ),
            "deny_host_mounts",
        );
        assert!(run(
            &p,
            "POST",
            "/v1.41/volumes/create",
            "",
            Some(r#"{"Name":"v","Driver":"local"}"#)
        )
        .is_ok());
    }

    #[test]
    fn names_resolve_once_and_requests_go_by_id() {
        let p = strict();
        let r = run(&p, "POST", "/v1.41/containers/web/stop", "t=1", None).unwrap();
        assert_eq!(r.path, format!("/containers/{ID_IN}/stop"));
        refused(
            run(
                &p,
                "GET",
                "/v1.41/containers/victim/archive",
                "path=/etc",
                None,
            ),
            "container_labels",
        );
        refused(
            run(
                &p,
                "HEAD",
                "/v1.41/containers/victim/archive",
                "path=/etc",
                None,
            ),
            "container_labels",
        );
        refused(
            run(&p, "GET", "/v1.41/containers/victim/export", "", None),
            "container_labels",
        );
        refused(
            run(&p, "POST", "/v1.41/exec/e1/start", "", Some("{}")),
            "container_labels",
        );
        // Commit names its container in the query, in any encoding Go decodes.
        refused(
            run(
                &p,
                "POST",
                "/v1.41/commit",
                "%63ontainer=victim&repo=x",
                None,
            ),
            "container_labels",
        );
        refused(
            run(
                &p,
                "POST",
                "/v1.41/commit",
                "container=web&container=victim",
                None,
            ),
            "repeated",
        );
        let r = run(&p, "POST", "/v1.41/commit", "%63ontainer=web&repo=x", None).unwrap();
        assert_eq!(query::get(&r.query, "container"), Some(ID_IN));
        // Network connect names the container in its body.
        refused(
            run(
                &p,
                "POST",
                "/v1.41/networks/n/connect",
                "",
                Some(r#"{"container":"victim"}"#),
            ),
            "container_labels",
        );
        let r = run(
            &p,
            "POST",
            "/v1.41/networks/n/disconnect",
            "",
            Some(r#"{"Container":"web","Force":true}"#),
        )
        .unwrap();
        assert_eq!(
            r.body,
            Body::Json(json!({"Container": ID_IN, "Force": true}))
        );
        // Lists, prunes and events get the label filter, whatever key encoding came.
        let r = run(
            &p,
            "GET",
            "/v1.41/containers/json",
            "all=1&%66ilters=%7B%7D",
            None,
        )
        .unwrap();
        assert_eq!(
            query::get(&r.query, "filters"),
            Some(r#"{"label":["team=a"]}"#)
        );
        refused(
            run(
                &p,
                "POST",
                "/v1.41/containers/prune",
                "filters=%7B%7D&filters=%7B%7D",
                None,
            ),
            "repeated",
        );
        assert_eq!(
            run(&p, "GET", "/v1.41/system/df", "", None).unwrap().answer,
            Some(Answer::Df)
        );
    }

    #[test]
    fn what_holds_for_every_policy() {
        let p = Policy::default();
        refused(
            run(&p, "POST", "/v1.23/containers/web/start", "", None),
            "oldest",
        );
        refused(
            run(&p, "GET", "/v1.023/containers/json", "", None),
            "oldest",
        );
        refused(
            run(
                &p,
                "POST",
                "/v1.41/containers/web/start",
                "",
                Some(r#"{"Privileged":true,"Binds":["/:/h"]}"#),
            ),
            "start",
        );
        assert_eq!(
            run(&p, "POST", "/v1.41/containers/web/start", "", Some(" {} "))
                .unwrap()
                .body,
            Body::Empty
        );
        let d = daemon();
        let route = classify("POST", "/v1.41/containers/prune").unwrap();
        let headers = [(
            "content-type".to_string(),
            "Application/X-WWW-Form-Urlencoded; charset=utf-8".to_string(),
        )];
        refused(
            admit(
                &Scope::new(&p, &d),
                &route,
                Pairs::new(),
                &headers,
                Some(b"filters={}"),
            ),
            "form-encoded",
        );
        let h = strict();
        refused(
            run(
                &h,
                "POST",
                "/v1.41/images/create",
                "fromSrc=http%3A%2F%2F169.254.169.254%2F&repo=x",
                None,
            ),
            "deny_host_network",
        );
        assert!(run(&h, "POST", "/v1.41/images/create", "fromSrc=-&repo=x", None).is_ok());
        refused(
            run(
                &h,
                "POST",
                "/v1.41/build",
                "remote=http://10.0.0.1/x.tar",
                None,
            ),
            "deny_host_network",
        );
        refused(
            run(&h, "POST", "/v1.41/build", "networkmode=host", None),
            "deny_host_network",
        );
    }

    #[test]
    fn answers_are_filtered_to_the_scope() {
        let p = strict();
        let d = daemon();
        let s = Scope::new(&p, &d);
        let df = json!({"Containers": [{"Id": "1", "Labels": {"team": "a"}}, {"Id": "2", "Labels": {}}]});
        let out = filter_answer(&s, Answer::Df, df.to_string().as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["Containers"].as_array().unwrap().len(), 1);
        let mut canned = daemon();
        canned.0.insert(
            format!(
                "/containers/json?all=1&filters={}",
                protocol::mapping::percent_encode(r#"{"label":["team=a"]}"#)
            ),
            json!([{"Id": ID_IN}]),
        );
        let s = Scope::new(&p, &canned);
        let net = json!({"Containers": {ID_IN: {"Name": "web"}, ID_OUT: {"Name": "victim"}}});
        let out = filter_answer(&s, Answer::Networks, net.to_string().as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["Containers"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec![ID_IN]
        );
    }
}
