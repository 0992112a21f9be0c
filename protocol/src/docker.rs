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
}

impl DockerRequest {
    fn new(method: Method, path: impl Into<String>) -> Self {
        DockerRequest {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            progress: false,
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

    fn body(mut self, v: Value) -> Self {
        self.body = Some(v);
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
pub fn run(
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

    fn first_request(&self) -> DockerRequest {
        use DockerRequest as R;
        use Method::*;
        use Operation::*;
        match &self.op {
            SystemPing(_) => R::new(Get, "/_ping"),
            SystemInfo(_) => R::new(Get, "/info"),
            SystemVersion(_) => R::new(Get, "/version"),
            SystemDf(_) => R::new(Get, "/system/df"),

            ContainerList(p) => {
                let r = R::new(Get, "/containers/json")
                    .q_bool("all", p.all)
                    .q_bool("size", p.size);
                let r = match p.limit {
                    Some(l) => r.q("limit", l.to_string()),
                    None => r,
                };
                r.q_filters(&p.filters)
            }
            ContainerInspect(p) => R::new(Get, format!("/containers/{}/json", path_id(&p.id))),
            ContainerCreate(p) => {
                let r = R::new(Post, "/containers/create");
                let r = match &p.name {
                    Some(n) => r.q("name", n.clone()),
                    None => r,
                };
                r.body(create_body(p))
            }
            ContainerStart(p) => R::new(Post, format!("/containers/{}/start", path_id(&p.id))),
            ContainerStop(p) => {
                let r = R::new(Post, format!("/containers/{}/stop", path_id(&p.id)));
                match p.t {
                    Some(t) => r.q("t", t.to_string()),
                    None => r,
                }
            }
            ContainerRestart(p) => {
                let r = R::new(Post, format!("/containers/{}/restart", path_id(&p.id)));
                match p.t {
                    Some(t) => r.q("t", t.to_string()),
                    None => r,
                }
            }
            ContainerKill(p) => {
                let r = R::new(Post, format!("/containers/{}/kill", path_id(&p.id)));
                match &p.signal {
                    Some(s) => r.q("signal", s.clone()),
                    None => r,
                }
            }
            ContainerPause(p) => R::new(Post, format!("/containers/{}/pause", path_id(&p.id))),
            ContainerUnpause(p) => R::new(Post, format!("/containers/{}/unpause", path_id(&p.id))),
            ContainerRemove(p) => R::new(Delete, format!("/containers/{}", path_id(&p.id)))
                .q_bool("force", p.force)
                .q_bool("v", p.v),
            ContainerRename(p) => R::new(Post, format!("/containers/{}/rename", path_id(&p.id)))
                .q("name", p.name.clone()),
            ContainerPrune(p) => R::new(Post, "/containers/prune").q_filters(&p.filters),
            ContainerTop(p) => {
                let r = R::new(Get, format!("/containers/{}/top", path_id(&p.id)));
                match &p.ps_args {
                    Some(a) => r.q("ps_args", a.clone()),
                    None => r,
                }
            }
            // Logs and exec first inspect the container: logs need to know whether it has a TTY.
            ContainerLogs(p) => R::new(Get, format!("/containers/{}/json", path_id(&p.id))),
            ContainerStats(p) => {
                R::new(Get, format!("/containers/{}/stats", path_id(&p.id))).q("stream", "0")
            }
            ContainerExec(p) => {
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
                R::new(Post, format!("/containers/{}/exec", path_id(&p.id))).body(body)
            }

            ImageList(p) => R::new(Get, "/images/json")
                .q_bool("all", p.all)
                .q_filters(&p.filters),
            ImageInspect(p) => R::new(Get, format!("/images/{}/json", path_id(&p.id))),
            ImagePull(p) => {
                let r = R::new(Post, "/images/create").q("fromImage", p.image.clone());
                let r = match &p.tag {
                    Some(t) => r.q("tag", t.clone()),
                    None => r,
                };
                let mut r = match &p.platform {
                    Some(pl) => r.q("platform", pl.clone()),
                    None => r,
                };
                r.progress = true;
                r
            }
            ImageRemove(p) => R::new(Delete, format!("/images/{}", path_id(&p.id)))
                .q_bool("force", p.force)
                .q_bool("noprune", p.noprune),
            ImageTag(p) => {
                let r = R::new(Post, format!("/images/{}/tag", path_id(&p.id)))
                    .q("repo", p.repo.clone());
                match &p.tag {
                    Some(t) => r.q("tag", t.clone()),
                    None => r,
                }
            }
            ImagePrune(p) => R::new(Post, "/images/prune").q_filters(&p.filters),

            VolumeList(p) => R::new(Get, "/volumes").q_filters(&p.filters),
            VolumeInspect(p) => R::new(Get, format!("/volumes/{}", path_id(&p.id))),
            VolumeCreate(p) => R::new(Post, "/volumes/create").body(json!({
                "Name": p.name.clone().unwrap_or_default(),
                "Driver": p.driver.clone().unwrap_or_else(|| "local".into()),
                "DriverOpts": p.driver_opts,
                "Labels": p.labels,
            })),
            VolumeRemove(p) => {
                R::new(Delete, format!("/volumes/{}", path_id(&p.id))).q_bool("force", p.force)
            }
            VolumePrune(p) => R::new(Post, "/volumes/prune").q_filters(&p.filters),

            NetworkList(p) => R::new(Get, "/networks").q_filters(&p.filters),
            NetworkInspect(p) => R::new(Get, format!("/networks/{}", path_id(&p.id))),
            NetworkCreate(p) => {
                let mut body = json!({
                    "Name": p.name, "CheckDuplicate": true,
                    "Driver": p.driver.clone().unwrap_or_else(|| "bridge".into()),
                    "Internal": p.internal, "Attachable": p.attachable,
                    "Labels": p.labels, "Options": p.options,
                });
                if let Some(extra) = &p.docker {
                    merge(&mut body, extra);
                }
                R::new(Post, "/networks/create").body(body)
            }
            NetworkRemove(p) => R::new(Delete, format!("/networks/{}", path_id(&p.id))),
            NetworkConnect(p) => {
                let mut body = json!({ "Container": p.container });
                if !p.aliases.is_empty() {
                    body["EndpointConfig"] = json!({ "Aliases": p.aliases });
                }
                R::new(Post, format!("/networks/{}/connect", path_id(&p.id))).body(body)
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
        use Operation::*;
        // 304 Not Modified: start on a running container, stop on a stopped one. The state
        // asked for already holds, so it is a success with `changed: false`.
        let not_modified = resp.status == 304;
        if !resp.is_success() && !not_modified {
            return Step::Done(Err(error_from_response(&resp)));
        }
        let done = |r: Result<Value, ErrorBody>| Step::Done(r);
        match (&self.op, stage) {
            (SystemPing(_), _) => done(Ok(json!({
                "ok": true,
                "api_version": resp.header("api-version"),
                "os_type": resp.header("ostype"),
            }))),
            (ContainerList(_), _) => done(resp.json().map(|v| map_list(v, container_summary))),
            (ContainerInspect(_), _) => done(resp.json().map(container_inspect)),
            (ContainerCreate(_), _) => done(resp.json().map(|v| {
                json!({ "id": v.get("Id"), "warnings": v.get("Warnings").cloned().unwrap_or(json!([])) })
            })),
            (ContainerStart(p), _) | (ContainerPause(p), _) | (ContainerUnpause(p), _) => {
                done(Ok(json!({ "id": p.id, "changed": !not_modified })))
            }
            (ContainerStop(p), _) | (ContainerRestart(p), _) => done(Ok(json!({ "id": p.id, "changed": !not_modified }))),
            (ContainerKill(p), _) => done(Ok(json!({ "id": p.id, "signal": p.signal.as_deref().unwrap_or("SIGKILL") }))),
            (ContainerRemove(p), _) => done(Ok(json!({ "id": p.id, "removed": true }))),
            (ContainerRename(p), _) => done(Ok(json!({ "id": p.id, "name": p.name }))),
            (ContainerPrune(_), _) => done(resp.json().map(|v| {
                json!({
                    "deleted": v.get("ContainersDeleted").cloned().filter(|x| !x.is_null()).unwrap_or(json!([])),
                    "space_reclaimed": v.get("SpaceReclaimed").cloned().unwrap_or(json!(0)),
                })
            })),
            (ContainerTop(_), _) => done(resp.json().map(|v| {
                let titles = v.get("Titles").cloned().unwrap_or(json!([]));
                let procs = v.get("Processes").cloned().unwrap_or(json!([]));
                json!({ "titles": titles, "processes": procs })
            })),
            (ContainerLogs(p), 1) => {
                let tty = match resp.json() {
                    Ok(v) => v.pointer("/Config/Tty").and_then(Value::as_bool).unwrap_or(false),
                    Err(e) => return done(Err(e)),
                };
                self.memo = json!({ "tty": tty });
                let mut r = DockerRequest::new(Method::Get, format!("/containers/{}/logs", path_id(&p.id)))
                    .q_bool("stdout", p.stdout)
                    .q_bool("stderr", p.stderr)
                    .q_bool("timestamps", p.timestamps);
                if let Some(t) = &p.tail {
                    r = r.q("tail", t.0.clone());
                }
                if let Some(s) = &p.since {
                    r = r.q("since", s.0.clone());
                }
                if let Some(u) = &p.until {
                    r = r.q("until", u.0.clone());
                }
                Step::Call(r)
            }
            (ContainerLogs(_), _) => {
                let tty = self.memo.get("tty").and_then(Value::as_bool).unwrap_or(false);
                let (out, err) = if tty { (resp.body, Vec::new()) } else { demux(&resp.body) };
                let (stdout, t1) = keep_tail(out, MAX_OUTPUT_BYTES);
                let (stderr, t2) = keep_tail(err, MAX_OUTPUT_BYTES);
                done(Ok(json!({ "stdout": stdout, "stderr": stderr, "tty": tty, "truncated": t1 || t2 })))
            }
            (ContainerStats(_), _) => done(resp.json().map(stats_summary)),
            (ContainerExec(_), 1) => {
                let exec_id = match resp.json() {
                    Ok(v) => match v.get("Id").and_then(Value::as_str) {
                        Some(id) => id.to_string(),
                        None => return done(Err(ErrorBody::new(ErrorCode::DockerError, "exec create gave no Id"))),
                    },
                    Err(e) => return done(Err(e)),
                };
                self.memo = json!({ "exec_id": exec_id });
                Step::Call(
                    DockerRequest::new(Method::Post, format!("/exec/{}/start", percent_encode(&exec_id)))
                        .body(json!({ "Detach": false, "Tty": false })),
                )
            }
            (ContainerExec(_), 2) => {
                let (out, err) = demux(&resp.body);
                let (stdout, t1) = keep_tail(out, MAX_OUTPUT_BYTES);
                let (stderr, t2) = keep_tail(err, MAX_OUTPUT_BYTES);
                let exec_id = self.memo.get("exec_id").and_then(Value::as_str).unwrap_or_default().to_string();
                self.memo = json!({ "exec_id": exec_id, "stdout": stdout, "stderr": stderr, "truncated": t1 || t2 });
                Step::Call(DockerRequest::new(Method::Get, format!("/exec/{}/json", percent_encode(&exec_id))))
            }
            (ContainerExec(_), _) => done(resp.json().map(|v| {
                let mut m = std::mem::take(&mut self.memo);
                m["exit_code"] = v.get("ExitCode").cloned().unwrap_or(Value::Null);
                m
            })),

            (ImageList(_), _) => done(resp.json().map(|v| map_list(v, image_summary))),
            (ImageInspect(_), _) => done(resp.json().map(|v| with_summary(v, &[("id", "Id")]))),
            (ImagePull(p), _) => done(pull_result(p, &resp.body)),
            (ImageRemove(_), _) => done(resp.json().map(|v| {
                let items = v.as_array().cloned().unwrap_or_default();
                let pick = |k: &str| -> Vec<Value> { items.iter().filter_map(|i| i.get(k).cloned()).collect() };
                json!({ "untagged": pick("Untagged"), "deleted": pick("Deleted") })
            })),
            (ImageTag(p), _) => done(Ok(json!({
                "id": p.id,
                "tagged": format!("{}:{}", p.repo, p.tag.as_deref().unwrap_or("latest")),
            }))),
            (ImagePrune(_), _) => done(resp.json().map(|v| {
                json!({
                    "deleted": v.get("ImagesDeleted").cloned().filter(|x| !x.is_null()).unwrap_or(json!([])),
                    "space_reclaimed": v.get("SpaceReclaimed").cloned().unwrap_or(json!(0)),
                })
            })),

            (VolumeList(_), _) => done(resp.json().map(|v| {
                let vols = v.get("Volumes").cloned().filter(|x| !x.is_null()).unwrap_or(json!([]));
                map_list(vols, volume_summary)
            })),
            (VolumeInspect(_), _) | (VolumeCreate(_), _) => done(resp.json().map(volume_summary)),
            (VolumeRemove(p), _) => done(Ok(json!({ "id": p.id, "removed": true }))),
            (VolumePrune(_), _) => done(resp.json().map(|v| {
                json!({
                    "deleted": v.get("VolumesDeleted").cloned().filter(|x| !x.is_null()).unwrap_or(json!([])),
                    "space_reclaimed": v.get("SpaceReclaimed").cloned().unwrap_or(json!(0)),
                })
            })),

            (NetworkList(_), _) => done(resp.json().map(|v| map_list(v, network_summary))),
            (NetworkInspect(_), _) => done(resp.json().map(network_summary)),
            (NetworkCreate(p), _) => done(resp.json().map(|v| {
                json!({ "id": v.get("Id"), "name": p.name, "warning": v.get("Warning").cloned().unwrap_or(json!("")) })
            })),
            (NetworkRemove(p), _) => done(Ok(json!({ "id": p.id, "removed": true }))),
            (NetworkConnect(p), _) => done(Ok(json!({ "id": p.id, "container": p.container, "connected": true }))),
            (NetworkDisconnect(p), _) => {
                done(Ok(json!({ "id": p.id, "container": p.container, "connected": false })))
            }
            (NetworkPrune(_), _) => done(resp.json().map(|v| {
                json!({ "deleted": v.get("NetworksDeleted").cloned().filter(|x| !x.is_null()).unwrap_or(json!([])) })
            })),

            (SystemInfo(_), _) | (SystemVersion(_), _) | (SystemDf(_), _) | (SwarmInspect(_), _) => done(resp.json()),
            (ServiceList(_), _) | (NodeList(_), _) => done(resp.json().map(|v| map_list(v, |x| with_summary(x, &[("id", "ID")])))),
        }
    }
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
