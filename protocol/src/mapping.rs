//! The one mapping between catalog operations and the Docker Engine API.
//!
//! Owns: which Docker requests an operation makes, in which order, and how the daemon's
//! answers become the seed's result shapes and our error codes. It is sans-I/O: a [`Plan`]
//! yields [`Step::Call`]s and is fed the [`DockerResponse`]s, so the agent (blocking unix
//! socket) and the server's direct mode (async hyper) drive the same code.
//! Must not: open sockets, sleep, or read the clock.

use crate::error::{ErrorBody, ErrorCode};
use crate::ops::*;
use serde_json::{json, Map, Value};

/// The newest Docker Engine API version this build speaks.
pub const API_VERSION: &str = "1.45";
/// The oldest daemon API version we accept.
pub const MIN_API_VERSION: &str = "1.24";
/// Logs and exec output larger than this are cut, keeping the end, so an answer always fits
/// in one message.
pub const MAX_OUTPUT_BYTES: usize = 2 * 1024 * 1024;

/// The API version to use with a daemon: the lower of the daemon's and ours.
/// Returns `None` when the daemon's version is unparsable or older than [`MIN_API_VERSION`].
pub fn negotiate_api_version(daemon: &str) -> Option<String> {
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (a, b) = v.trim().split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let theirs = parse(daemon)?;
    let ours = parse(API_VERSION)?;
    if theirs < parse(MIN_API_VERSION)? {
        return None;
    }
    let v = theirs.min(ours);
    Some(format!("{}.{}", v.0, v.1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// One request to the Docker Engine API.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerRequest {
    pub method: Method,
    /// The path without the `/vX.Y` prefix, e.g. `/containers/json`. Already escaped.
    pub path: String,
    /// Query pairs, not yet escaped.
    pub query: Vec<(String, String)>,
    /// A JSON body, sent with `Content-Type: application/json`.
    pub body: Option<Value>,
    /// The answer is a JSON-lines progress stream (`image.pull`): the transport calls its
    /// `on_line` callback for each line as it arrives, and still returns the whole body.
    pub progress: bool,
    /// The `X-Registry-Auth` header (`image.pull` with credentials); transports send it.
    pub registry_auth: Option<crate::Secret>,
}

impl DockerRequest {
    fn new(method: Method, path: impl Into<String>) -> Self {
        DockerRequest {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            progress: false,
            registry_auth: None,
        }
    }

    fn q(mut self, k: &str, v: impl Into<String>) -> Self {
        self.query.push((k.to_string(), v.into()));
        self
    }

    fn q_bool(self, k: &str, v: bool) -> Self {
        if v {
            self.q(k, "1")
        } else {
            self
        }
    }

    fn q_filters(self, f: &Filters) -> Self {
        if f.is_empty() {
            self
        } else {
            let s = f.to_query();
            self.q("filters", s)
        }
    }

    fn q_opt(self, k: &str, v: Option<impl ToString>) -> Self {
        match v {
            Some(v) => self.q(k, v.to_string()),
            None => self,
        }
    }

    fn body(mut self, v: Value) -> Self {
        self.body = Some(v);
        self
    }

    fn progress(mut self) -> Self {
        self.progress = true;
        self
    }

    fn auth(mut self, a: Option<&RegistryAuth>) -> Self {
        self.registry_auth = a.map(RegistryAuth::header_value);
        self
    }

    /// The request target: `/v1.41/containers/json?all=1`. Without a version the path is
    /// unversioned (only `/_ping` and `/version` are used that way).
    pub fn uri(&self, api_version: Option<&str>) -> String {
        let mut s = String::new();
        if let Some(v) = api_version {
            s.push_str("/v");
            s.push_str(v);
        }
        s.push_str(&self.path);
        for (i, (k, v)) in self.query.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(&percent_encode(k));
            s.push('=');
            s.push_str(&percent_encode(v));
        }
        s
    }

    /// The JSON body as bytes.
    pub fn body_bytes(&self) -> Option<Vec<u8>> {
        self.body.as_ref().map(|b| b.to_string().into_bytes())
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encodes an object reference for a path: keeps `/` `:` `@` (image references use them),
/// escapes the rest. Ids were already checked by [`check_id`].
fn path_id(id: &str) -> String {
    id.split('/')
        .map(percent_encode)
        .collect::<Vec<_>>()
        .join("/")
        .replace("%3A", ":")
        .replace("%40", "@")
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DockerResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl DockerResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// 2xx, or 101 from a daemon that upgraded an exec/attach stream.
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status) || self.status == 101
    }

    fn json(&self) -> Result<Value, ErrorBody> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ErrorBody::new(
                ErrorCode::DockerError,
                format!("the daemon answered invalid JSON: {e}"),
            )
        })
    }
}

/// What a [`Plan`] wants next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this request and feed the answer to [`Plan::next`].
    Call(DockerRequest),
    /// The operation is finished.
    Done(Result<Value, ErrorBody>),
}

/// Performs Docker requests. Implemented by the agent (unix socket) and by tests.
pub trait Transport {
    /// Sends one request and returns the whole answer. For `req.progress` requests, calls
    /// `on_line` with each line of the body as it arrives.
    ///
    /// Errors: `docker_unreachable` when the socket cannot be reached, `timeout` when the
    /// daemon does not answer in time.
    fn call(
        &mut self,
        req: &DockerRequest,
        on_line: &mut dyn FnMut(&[u8]),
    ) -> Result<DockerResponse, ErrorBody>;
}

/// Runs an operation to completion over a blocking transport. `progress` receives
/// `image.pull` progress updates.
pub fn run_blocking(
    op: Operation,
    transport: &mut dyn Transport,
    progress: &mut dyn FnMut(Value),
) -> Result<Value, ErrorBody> {
    let mut plan = Plan::new(op);
    let mut answer = None;
    loop {
        match plan.next(answer.take()) {
            Step::Done(result) => return result,
            Step::Call(req) => {
                let mut on_line = |line: &[u8]| {
                    if let Some(p) = progress_from_line(line) {
                        progress(p)
                    }
                };
                answer = Some(transport.call(&req, &mut on_line)?);
            }
        }
    }
}

/// Turns one line of Docker's pull output into a progress update, or `None` for blank lines.
pub fn progress_from_line(line: &[u8]) -> Option<Value> {
    let line = trim_ascii(line);
    if line.is_empty() {
        return None;
    }
    let v: Value = serde_json::from_slice(line).ok()?;
    let mut out = Map::new();
    for (from, to) in [
        ("status", "status"),
        ("id", "layer"),
        ("progress", "progress"),
        ("error", "error"),
    ] {
        if let Some(x) = v.get(from) {
            out.insert(to.to_string(), x.clone());
        }
    }
    if let Some(d) = v.get("progressDetail") {
        if let Some(c) = d.get("current") {
            out.insert("current".into(), c.clone());
        }
        if let Some(t) = d.get("total") {
            out.insert("total".into(), t.clone());
        }
    }
    Some(Value::Object(out))
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// The error for a daemon that cannot be reached.
pub fn unreachable(detail: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::DockerUnreachable,
        format!("Docker daemon unreachable: {detail}"),
    )
}

/// Maps a non-2xx daemon answer to our error, keeping the daemon's message.
pub fn error_from_response(resp: &DockerResponse) -> ErrorBody {
    let message = serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(trim_ascii(&resp.body)).into_owned();
            if text.is_empty() {
                format!("the daemon answered HTTP {}", resp.status)
            } else {
                text
            }
        });
    let code = match resp.status {
        400 => ErrorCode::InvalidParams,
        401 | 403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        _ => ErrorCode::DockerError,
    };
    ErrorBody::new(code, message)
}

/// Splits Docker's multiplexed stream (8-byte frame headers: stream, 0, 0, 0, u32 BE length)
/// into stdout and stderr. Bytes that do not start with a valid header are treated as a raw
/// (TTY) stream and go to stdout whole.
pub fn demux(body: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if !looks_multiplexed(body) {
        return (body.to_vec(), Vec::new());
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i + 8 <= body.len() {
        let stream = body[i];
        let len = u32::from_be_bytes([body[i + 4], body[i + 5], body[i + 6], body[i + 7]]) as usize;
        let start = i + 8;
        let end = start.saturating_add(len).min(body.len());
        match stream {
            2 => err.extend_from_slice(&body[start..end]),
            _ => out.extend_from_slice(&body[start..end]),
        }
        i = end;
    }
    (out, err)
}

fn looks_multiplexed(body: &[u8]) -> bool {
    body.len() >= 8 && body[0] <= 2 && body[1] == 0 && body[2] == 0 && body[3] == 0
}

/// Keeps the last `max` bytes of `b`, starting at a line boundary when one is near.
fn keep_tail(b: Vec<u8>, max: usize) -> (String, bool) {
    if b.len() <= max {
        return (String::from_utf8_lossy(&b).into_owned(), false);
    }
    let mut cut = b.len() - max;
    if let Some(nl) = b[cut..].iter().position(|&c| c == b'\n') {
        cut += nl + 1;
    }
    (String::from_utf8_lossy(&b[cut..]).into_owned(), true)
}

/// A running operation: yields the Docker requests to make and builds the result.
#[derive(Debug, Clone)]
pub struct Plan {
    op: Operation,
    stage: u8,
    memo: Value,
}

impl Plan {
    pub fn new(op: Operation) -> Plan {
        Plan {
            op,
            stage: 0,
            memo: Value::Null,
        }
    }

    pub fn operation(&self) -> &Operation {
        &self.op
    }

    /// Advances the plan. Pass `None` on the first call, then the answer to each
    /// [`Step::Call`].
    pub fn next(&mut self, answer: Option<DockerResponse>) -> Step {
        let stage = self.stage;
        self.stage = self.stage.saturating_add(1);
        match (stage, answer) {
            (0, _) => Step::Call(self.first_request()),
            (_, None) => Step::Done(Err(ErrorBody::internal("plan advanced without an answer"))),
            (_, Some(resp)) => self.on_answer(stage, resp),
        }
    }

    /// The first request of each operation: a table of one entry per operation.
    fn first_request(&self) -> DockerRequest {
        use DockerRequest as R;
        use Method::*;
        use Operation::*;
        let c = |id: &str, tail: &str| format!("/containers/{}{tail}", path_id(id));
        match &self.op {
            SystemPing(_) => R::new(Get, "/_ping"),
            SystemInfo(_) => R::new(Get, "/info"),
            SystemVersion(_) => R::new(Get, "/version"),
            SystemDf(_) => R::new(Get, "/system/df"),

            ContainerList(p) => R::new(Get, "/containers/json")
                .q_bool("all", p.all)
                .q_bool("size", p.size)
                .q_opt("limit", p.limit)
                .q_filters(&p.filters),
            ContainerInspect(p) => R::new(Get, c(&p.id, "/json")),
            ContainerCreate(p) => R::new(Post, "/containers/create")
                .q_opt("name", p.name.as_ref())
                .body(create_body(p)),
            ContainerStart(p) => R::new(Post, c(&p.id, "/start")),
            ContainerStop(p) => R::new(Post, c(&p.id, "/stop")).q_opt("t", p.t),
            ContainerRestart(p) => R::new(Post, c(&p.id, "/restart")).q_opt("t", p.t),
            ContainerKill(p) => R::new(Post, c(&p.id, "/kill")).q_opt("signal", p.signal.as_ref()),
            ContainerPause(p) => R::new(Post, c(&p.id, "/pause")),
            ContainerUnpause(p) => R::new(Post, c(&p.id, "/unpause")),
            ContainerRemove(p) => R::new(Delete, c(&p.id, ""))
                .q_bool("force", p.force)
                .q_bool("v", p.v),
            ContainerRename(p) => R::new(Post, c(&p.id, "/rename")).q("name", p.name.clone()),
            ContainerPrune(p) => R::new(Post, "/containers/prune").q_filters(&p.filters),
            ContainerTop(p) => R::new(Get, c(&p.id, "/top")).q_opt("ps_args", p.ps_args.as_ref()),
            // Logs and exec first inspect the container: logs need to know whether it has a TTY.
            ContainerLogs(p) => R::new(Get, c(&p.id, "/json")),
            ContainerStats(p) => R::new(Get, c(&p.id, "/stats")).q("stream", "0"),
            ContainerExec(p) => R::new(Post, c(&p.id, "/exec")).body(exec_body(p)),

            ImageList(p) => R::new(Get, "/images/json")
                .q_bool("all", p.all)
                .q_filters(&p.filters),
            ImageInspect(p) => R::new(Get, format!("/images/{}/json", path_id(&p.id))),
            ImagePull(p) => R::new(Post, "/images/create")
                .q("fromImage", p.image.clone())
                .q_opt("tag", p.tag.as_ref())
                .q_opt("platform", p.platform.as_ref())
                .progress()
                .auth(p.auth.as_ref()),
            ImageRemove(p) => R::new(Delete, format!("/images/{}", path_id(&p.id)))
                .q_bool("force", p.force)
                .q_bool("noprune", p.noprune),
            ImageTag(p) => R::new(Post, format!("/images/{}/tag", path_id(&p.id)))
                .q("repo", p.repo.clone())
                .q_opt("tag", p.tag.as_ref()),
            ImagePrune(p) => R::new(Post, "/images/prune").q_filters(&p.filters),

            VolumeList(p) => R::new(Get, "/volumes").q_filters(&p.filters),
            VolumeInspect(p) => R::new(Get, format!("/volumes/{}", path_id(&p.id))),
            VolumeCreate(p) => R::new(Post, "/volumes/create").body(volume_body(p)),
            VolumeRemove(p) => {
                R::new(Delete, format!("/volumes/{}", path_id(&p.id))).q_bool("force", p.force)
            }
            VolumePrune(p) => R::new(Post, "/volumes/prune").q_filters(&p.filters),

            NetworkList(p) => R::new(Get, "/networks").q_filters(&p.filters),
            NetworkInspect(p) => R::new(Get, format!("/networks/{}", path_id(&p.id))),
            NetworkCreate(p) => R::new(Post, "/networks/create").body(network_body(p)),
            NetworkRemove(p) => R::new(Delete, format!("/networks/{}", path_id(&p.id))),
            NetworkConnect(p) => {
                R::new(Post, format!("/networks/{}/connect", path_id(&p.id))).body(connect_body(p))
            }
            NetworkDisconnect(p) => {
                R::new(Post, format!("/networks/{}/disconnect", path_id(&p.id)))
                    .body(json!({ "Container": p.container, "Force": p.force }))
            }
            NetworkPrune(p) => R::new(Post, "/networks/prune").q_filters(&p.filters),

            SwarmInspect(_) => R::new(Get, "/swarm"),
            ServiceList(p) => R::new(Get, "/services").q_filters(&p.filters),
            NodeList(p) => R::new(Get, "/nodes").q_filters(&p.filters),
        }
    }

    fn on_answer(&mut self, stage: u8, resp: DockerResponse) -> Step {
        // 304 Not Modified: start on a running container, stop on a stopped one. The state
        // asked for already holds, so it is a success with `changed: false`.
        let not_modified = resp.status == 304;
        if !resp.is_success() && !not_modified {
            return Step::Done(Err(error_from_response(&resp)));
        }
        match (&self.op, stage) {
            (Operation::ContainerLogs(p), 1) => match logs_request(p, &resp) {
                Ok((tty, req)) => {
                    self.memo = json!({ "tty": tty });
                    Step::Call(req)
                }
                Err(e) => Step::Done(Err(e)),
            },
            (Operation::ContainerLogs(_), _) => {
                let tty = self.memo.get("tty").and_then(Value::as_bool) == Some(true);
                Step::Done(Ok(logs_result(tty, resp.body)))
            }
            (Operation::ContainerExec(_), 1) => match exec_id(&resp) {
                Ok(id) => {
                    let start = format!("/exec/{}/start", percent_encode(&id));
                    self.memo = json!({ "exec_id": id });
                    Step::Call(
                        DockerRequest::new(Method::Post, start)
                            .body(json!({ "Detach": false, "Tty": false })),
                    )
                }
                Err(e) => Step::Done(Err(e)),
            },
            (Operation::ContainerExec(_), 2) => {
                let id = self.memo["exec_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                self.memo = exec_output(&id, &resp.body);
                let inspect = format!("/exec/{}/json", percent_encode(&id));
                Step::Call(DockerRequest::new(Method::Get, inspect))
            }
            (Operation::ContainerExec(_), _) => Step::Done(resp.json().map(|v| {
                let mut m = std::mem::take(&mut self.memo);
                m["exit_code"] = v.get("ExitCode").cloned().unwrap_or(Value::Null);
                m
            })),
            (op, _) => Step::Done(result(op, &resp, !not_modified)),
        }
    }
}

/// The result of a one-request operation from the daemon's 2xx (or 304) answer: a table of
/// one entry per operation. `changed` is false for a 304.
fn result(op: &Operation, resp: &DockerResponse, changed: bool) -> Result<Value, ErrorBody> {
    use Operation::*;
    let json = || resp.json();
    match op {
        SystemPing(_) => Ok(json!({
            "ok": true,
            "api_version": resp.header("api-version"),
            "os_type": resp.header("ostype"),
        })),
        SystemInfo(_) | SystemVersion(_) | SystemDf(_) | SwarmInspect(_) => json(),

        ContainerList(_) => json().map(|v| map_list(v, container_summary)),
        ContainerInspect(_) => json().map(container_inspect),
        ContainerCreate(_) => json().map(|v| {
            json!({ "id": v.get("Id"), "warnings": v.get("Warnings").cloned().unwrap_or(json!([])) })
        }),
        ContainerStart(p) | ContainerPause(p) | ContainerUnpause(p) => {
            Ok(json!({ "id": p.id, "changed": changed }))
        }
        ContainerStop(p) | ContainerRestart(p) => Ok(json!({ "id": p.id, "changed": changed })),
        ContainerKill(p) => Ok(json!({
            "id": p.id,
            "signal": p.signal.as_deref().unwrap_or("SIGKILL"),
        })),
        ContainerRemove(p) => Ok(json!({ "id": p.id, "removed": true })),
        ContainerRename(p) => Ok(json!({ "id": p.id, "name": p.name })),
        ContainerPrune(_) => json().map(|v| pruned(&v, "ContainersDeleted")),
        ContainerTop(_) => json().map(|v| {
            let titles = v.get("Titles").cloned().unwrap_or(json!([]));
            let procs = v.get("Processes").cloned().unwrap_or(json!([]));
            json!({ "titles": titles, "processes": procs })
        }),
        ContainerStats(_) => json().map(stats_summary),
        // Several requests: answered in `Plan::on_answer`.
        ContainerLogs(_) | ContainerExec(_) => Err(ErrorBody::internal("a step out of order")),

        ImageList(_) => json().map(|v| map_list(v, image_summary)),
        ImageInspect(_) => json().map(|v| with_summary(v, &[("id", "Id")])),
        ImagePull(p) => pull_result(p, &resp.body),
        ImageRemove(_) => json().map(|v| {
            let items = v.as_array().cloned().unwrap_or_default();
            let pick = |k: &str| -> Vec<Value> {
                items.iter().filter_map(|i| i.get(k).cloned()).collect()
            };
            json!({ "untagged": pick("Untagged"), "deleted": pick("Deleted") })
        }),
        ImageTag(p) => Ok(json!({
            "id": p.id,
            "tagged": format!("{}:{}", p.repo, p.tag.as_deref().unwrap_or("latest")),
        })),
        ImagePrune(_) => json().map(|v| pruned(&v, "ImagesDeleted")),

        VolumeList(_) => json().map(|v| {
            let vols = v.get("Volumes").cloned().filter(|x| !x.is_null());
            map_list(vols.unwrap_or(json!([])), volume_summary)
        }),
        VolumeInspect(_) | VolumeCreate(_) => json().map(volume_summary),
        VolumeRemove(p) => Ok(json!({ "id": p.id, "removed": true })),
        VolumePrune(_) => json().map(|v| pruned(&v, "VolumesDeleted")),

        NetworkList(_) => json().map(|v| map_list(v, network_summary)),
        NetworkInspect(_) => json().map(network_summary),
        NetworkCreate(p) => json().map(|v| {
            let warning = v.get("Warning").cloned().unwrap_or(json!(""));
            json!({ "id": v.get("Id"), "name": p.name, "warning": warning })
        }),
        NetworkRemove(p) => Ok(json!({ "id": p.id, "removed": true })),
        NetworkConnect(p) => Ok(json!({ "id": p.id, "container": p.container, "connected": true })),
        NetworkDisconnect(p) => {
            Ok(json!({ "id": p.id, "container": p.container, "connected": false }))
        }
        NetworkPrune(_) => json().map(|v| json!({ "deleted": deleted(&v, "NetworksDeleted") })),

        ServiceList(_) | NodeList(_) => {
            json().map(|v| map_list(v, |x| with_summary(x, &[("id", "ID")])))
        }
    }
}

/// A prune's `{deleted, space_reclaimed}`.
fn pruned(v: &Value, list: &str) -> Value {
    json!({
        "deleted": deleted(v, list),
        "space_reclaimed": v.get("SpaceReclaimed").cloned().unwrap_or(json!(0)),
    })
}

/// The list of deleted objects of a prune (`null` when none).
fn deleted(v: &Value, list: &str) -> Value {
    v.get(list)
        .cloned()
        .filter(|x| !x.is_null())
        .unwrap_or(json!([]))
}

/// The logs request, once the inspect said whether the container has a TTY.
fn logs_request(
    p: &LogsParams,
    inspect: &DockerResponse,
) -> Result<(bool, DockerRequest), ErrorBody> {
    let v = inspect.json()?;
    let tty = v
        .pointer("/Config/Tty")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let req = DockerRequest::new(Method::Get, format!("/containers/{}/logs", path_id(&p.id)))
        .q_bool("stdout", p.stdout)
        .q_bool("stderr", p.stderr)
        .q_bool("timestamps", p.timestamps)
        .q_opt("tail", p.tail.as_ref().map(|t| &t.0))
        .q_opt("since", p.since.as_ref().map(|t| &t.0))
        .q_opt("until", p.until.as_ref().map(|t| &t.0));
    Ok((tty, req))
}

/// `container.logs`' result: a TTY's output is one raw stream, otherwise demultiplexed.
fn logs_result(tty: bool, body: Vec<u8>) -> Value {
    let (out, err) = if tty {
        (body, Vec::new())
    } else {
        demux(&body)
    };
    let (stdout, t1) = keep_tail(out, MAX_OUTPUT_BYTES);
    let (stderr, t2) = keep_tail(err, MAX_OUTPUT_BYTES);
    json!({ "stdout": stdout, "stderr": stderr, "tty": tty, "truncated": t1 || t2 })
}

/// The id of a created exec.
fn exec_id(resp: &DockerResponse) -> Result<String, ErrorBody> {
    match resp.json()?.get("Id").and_then(Value::as_str) {
        Some(id) => Ok(id.to_string()),
        None => Err(ErrorBody::new(
            ErrorCode::DockerError,
            "exec create gave no Id",
        )),
    }
}

/// An exec's demultiplexed output, kept until its exit code is known.
fn exec_output(exec_id: &str, body: &[u8]) -> Value {
    let (out, err) = demux(body);
    let (stdout, t1) = keep_tail(out, MAX_OUTPUT_BYTES);
    let (stderr, t2) = keep_tail(err, MAX_OUTPUT_BYTES);
    json!({ "exec_id": exec_id, "stdout": stdout, "stderr": stderr, "truncated": t1 || t2 })
}

/// Docker's exec create body.
fn exec_body(p: &ExecParams) -> Value {
    let mut body = json!({
        "AttachStdin": false, "AttachStdout": true, "AttachStderr": true, "Tty": false,
        "Cmd": p.cmd.0, "Privileged": p.privileged,
    });
    if !p.env.0.is_empty() {
        body["Env"] = json!(p.env.0);
    }
    if let Some(w) = &p.workdir {
        body["WorkingDir"] = json!(w);
    }
    if let Some(u) = &p.user {
        body["User"] = json!(u);
    }
    body
}

/// Docker's volume create body.
fn volume_body(p: &VolumeCreateParams) -> Value {
    json!({
        "Name": p.name.clone().unwrap_or_default(),
        "Driver": p.driver.clone().unwrap_or_else(|| "local".into()),
        "DriverOpts": p.driver_opts,
        "Labels": p.labels,
    })
}

/// Docker's network create body, with the params' `docker` object merged last.
fn network_body(p: &NetworkCreateParams) -> Value {
    let mut body = json!({
        "Name": p.name, "CheckDuplicate": true,
        "Driver": p.driver.clone().unwrap_or_else(|| "bridge".into()),
        "Internal": p.internal, "Attachable": p.attachable,
        "Labels": p.labels, "Options": p.options,
    });
    if let Some(extra) = &p.docker {
        merge(&mut body, extra);
    }
    body
}

/// Docker's network connect body.
fn connect_body(p: &NetworkConnectParams) -> Value {
    let mut body = json!({ "Container": p.container });
    if !p.aliases.is_empty() {
        body["EndpointConfig"] = json!({ "Aliases": p.aliases });
    }
    body
}

/// Merges `extra` into `base`: objects key by key (recursively), anything else replaces.
pub fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e.clone(),
    }
}

/// Docker's create body from our params.
pub fn create_body(p: &ContainerCreateParams) -> Value {
    let mut body = json!({ "Image": p.image });
    let mut host = Map::new();
    if let Some(c) = &p.cmd {
        body["Cmd"] = json!(c.0);
    }
    if let Some(e) = &p.entrypoint {
        body["Entrypoint"] = json!(e.0);
    }
    if !p.env.0.is_empty() {
        body["Env"] = json!(p.env.0);
    }
    if !p.labels.is_empty() {
        body["Labels"] = json!(p.labels);
    }
    if let Some(u) = &p.user {
        body["User"] = json!(u);
    }
    if let Some(w) = &p.workdir {
        body["WorkingDir"] = json!(w);
    }
    if p.tty {
        body["Tty"] = json!(true);
        body["OpenStdin"] = json!(true);
    }
    if !p.ports.is_empty() {
        let mut exposed = Map::new();
        let mut bindings: Map<String, Value> = Map::new();
        for port in &p.ports {
            let key = format!("{}/{}", port.container_port, port.protocol);
            exposed.insert(key.clone(), json!({}));
            let entry = bindings.entry(key).or_insert_with(|| json!([]));
            if let Some(list) = entry.as_array_mut() {
                list.push(json!({
                    "HostIp": port.host_ip.clone().unwrap_or_default(),
                    "HostPort": port.host_port.map(|h| h.to_string()).unwrap_or_default(),
                }));
            }
        }
        body["ExposedPorts"] = Value::Object(exposed);
        host.insert("PortBindings".into(), Value::Object(bindings));
    }
    if !p.mounts.is_empty() {
        let mounts: Vec<Value> = p
            .mounts
            .iter()
            .map(|m| {
                let kind = match m.kind {
                    MountType::Bind => "bind",
                    MountType::Volume => "volume",
                    MountType::Tmpfs => "tmpfs",
                };
                let mut v = json!({ "Type": kind, "Target": m.target, "ReadOnly": m.read_only });
                if !m.source.is_empty() {
                    v["Source"] = json!(m.source);
                }
                v
            })
            .collect();
        host.insert("Mounts".into(), json!(mounts));
    }
    if let Some(net) = &p.network {
        host.insert("NetworkMode".into(), json!(net));
        if !matches!(net.as_str(), "host" | "none" | "bridge" | "default")
            && !net.starts_with("container:")
        {
            body["NetworkingConfig"] = json!({ "EndpointsConfig": { net.clone(): {} } });
        }
    }
    if let Some(rp) = &p.restart_policy {
        if let Ok(v) = parse_restart_policy(rp) {
            host.insert("RestartPolicy".into(), v);
        }
    }
    if p.privileged {
        host.insert("Privileged".into(), json!(true));
    }
    if !host.is_empty() {
        body["HostConfig"] = Value::Object(host);
    }
    if let Some(extra) = &p.docker {
        merge(&mut body, extra);
    }
    body
}

fn map_list(v: Value, f: fn(Value) -> Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(f).collect()),
        Value::Null => json!([]),
        other => other,
    }
}

/// Adds our snake_case keys next to Docker's own fields: `pairs` are (our key, Docker key).
fn with_summary(v: Value, pairs: &[(&str, &str)]) -> Value {
    let Value::Object(mut m) = v else { return v };
    for (ours, theirs) in pairs {
        let x = m.get(*theirs).cloned().unwrap_or(Value::Null);
        m.insert((*ours).to_string(), x);
    }
    Value::Object(m)
}

fn strip_slash(v: Option<&Value>) -> Value {
    match v.and_then(Value::as_str) {
        Some(s) => json!(s.trim_start_matches('/')),
        None => Value::Null,
    }
}

/// `container.list` item: `{id, name, image, status, ...}` where `status` is Docker's state
/// (`running`) and `status_text` Docker's human status (`Up 5 minutes`); Docker's own fields
/// (`Id`, `Names`, `State`, ...) are kept beside them.
pub fn container_summary(v: Value) -> Value {
    let name = strip_slash(v.get("Names").and_then(|n| n.get(0)));
    let mut out = with_summary(
        v,
        &[
            ("id", "Id"),
            ("image", "Image"),
            ("image_id", "ImageID"),
            ("status", "State"),
            ("status_text", "Status"),
            ("created", "Created"),
            ("labels", "Labels"),
        ],
    );
    out["name"] = name;
    out
}

fn container_inspect(v: Value) -> Value {
    let name = strip_slash(v.get("Name"));
    let status = v.pointer("/State/Status").cloned().unwrap_or(Value::Null);
    let image = v.pointer("/Config/Image").cloned().unwrap_or(Value::Null);
    let mut out = with_summary(
        v,
        &[("id", "Id"), ("image_id", "Image"), ("created", "Created")],
    );
    out["name"] = name;
    out["status"] = status;
    out["image"] = image;
    out
}

fn image_summary(v: Value) -> Value {
    with_summary(
        v,
        &[
            ("id", "Id"),
            ("tags", "RepoTags"),
            ("size", "Size"),
            ("created", "Created"),
            ("labels", "Labels"),
        ],
    )
}

fn volume_summary(v: Value) -> Value {
    let mut out = with_summary(
        v,
        &[
            ("name", "Name"),
            ("driver", "Driver"),
            ("mountpoint", "Mountpoint"),
            ("labels", "Labels"),
            ("scope", "Scope"),
        ],
    );
    out["id"] = out["name"].clone();
    out
}

fn network_summary(v: Value) -> Value {
    with_summary(
        v,
        &[
            ("id", "Id"),
            ("name", "Name"),
            ("driver", "Driver"),
            ("scope", "Scope"),
            ("internal", "Internal"),
            ("labels", "Labels"),
        ],
    )
}

/// `container.stats`: CPU percent and memory figures computed as `docker stats` does, plus
/// the daemon's raw sample under `raw`.
pub fn stats_summary(v: Value) -> Value {
    let f = |p: &str| v.pointer(p).and_then(Value::as_f64);
    let cpu_delta = f("/cpu_stats/cpu_usage/total_usage").unwrap_or(0.0)
        - f("/precpu_stats/cpu_usage/total_usage").unwrap_or(0.0);
    let sys_delta = f("/cpu_stats/system_cpu_usage").unwrap_or(0.0)
        - f("/precpu_stats/system_cpu_usage").unwrap_or(0.0);
    let cpus = f("/cpu_stats/online_cpus")
        .or_else(|| {
            v.pointer("/cpu_stats/cpu_usage/percpu_usage")
                .and_then(Value::as_array)
                .map(|a| a.len() as f64)
        })
        .unwrap_or(1.0);
    let cpu_percent = if sys_delta > 0.0 && cpu_delta >= 0.0 {
        cpu_delta / sys_delta * cpus * 100.0
    } else {
        0.0
    };
    let usage = f("/memory_stats/usage").unwrap_or(0.0);
    // cgroup v1 counts page cache in usage; docker stats subtracts it.
    let cache = f("/memory_stats/stats/total_inactive_file")
        .or_else(|| f("/memory_stats/stats/inactive_file"))
        .unwrap_or(0.0);
    let mem = (usage - cache).max(0.0);
    let limit = f("/memory_stats/limit").unwrap_or(0.0);
    let mem_percent = if limit > 0.0 {
        mem / limit * 100.0
    } else {
        0.0
    };
    let (mut rx, mut tx) = (0.0, 0.0);
    if let Some(nets) = v.get("networks").and_then(Value::as_object) {
        for n in nets.values() {
            rx += n.get("rx_bytes").and_then(Value::as_f64).unwrap_or(0.0);
            tx += n.get("tx_bytes").and_then(Value::as_f64).unwrap_or(0.0);
        }
    }
    let (mut blk_r, mut blk_w) = (0.0, 0.0);
    if let Some(items) = v
        .pointer("/blkio_stats/io_service_bytes_recursive")
        .and_then(Value::as_array)
    {
        for i in items {
            let val = i.get("value").and_then(Value::as_f64).unwrap_or(0.0);
            match i
                .get("op")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("read") => blk_r += val,
                Some("write") => blk_w += val,
                _ => {}
            }
        }
    }
    json!({
        "id": v.get("id"),
        "name": strip_slash(v.get("name")),
        "read": v.get("read"),
        "cpu_percent": round2(cpu_percent),
        "memory_usage_bytes": mem as u64,
        "memory_limit_bytes": limit as u64,
        "memory_percent": round2(mem_percent),
        "network_rx_bytes": rx as u64,
        "network_tx_bytes": tx as u64,
        "block_read_bytes": blk_r as u64,
        "block_write_bytes": blk_w as u64,
        "pids": v.pointer("/pids_stats/current"),
        "raw": v,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn pull_result(p: &ImagePullParams, body: &[u8]) -> Result<Value, ErrorBody> {
    let mut last_status = Value::Null;
    for line in body.split(|&c| c == b'\n') {
        let line = trim_ascii(line);
        if line.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            let code = if err.contains("not found")
                || err.contains("does not exist")
                || err.contains("manifest unknown")
            {
                ErrorCode::NotFound
            } else {
                ErrorCode::DockerError
            };
            return Err(ErrorBody::new(code, err.to_string()));
        }
        if let Some(s) = v.get("status") {
            last_status = s.clone();
        }
    }
    let reference = match &p.tag {
        Some(t) => format!("{}:{}", p.image, t),
        None if p.image.contains(':') || p.image.contains('@') => p.image.clone(),
        None => format!("{}:latest", p.image),
    };
    Ok(json!({ "image": reference, "status": last_status }))
}
