//! The Docker Engine API passthrough: which raw API requests may go through the tunnel, and
//! what each one is (read or write, upgrade or stream, which catalog action).
//!
//! Owns: the allowlist of Docker API routes and path hygiene. The server uses it for role
//! checks and audit; the agent uses it for its local policy. Unknown or unlisted routes are
//! refused. Must not: do I/O.

use crate::ops::Access;

/// How the response to a route behaves on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// An ordinary request and response.
    Plain,
    /// The daemon may answer `101` and hijack the connection (attach, exec start).
    Upgrade,
    /// The response streams until one side closes (logs -f, events, stats, pulls, builds).
    Stream,
}

/// A classified passthrough request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The catalog-style action, e.g. `container.list`, `container.exec`, `image.load`.
    pub action: &'static str,
    pub access: Access,
    pub shape: Shape,
    /// The object the request names (container, image, volume, network, exec id), if any.
    pub object: Option<String>,
    /// The path with the `/vX.Y` prefix removed.
    pub path: String,
    /// The API version of the prefix, if the path had one.
    pub version: Option<String>,
}

/// Why a passthrough request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The path is malformed or tries to escape (`..`, encoded slashes, control characters).
    BadPath(String),
    /// The method and path are not on the allowlist.
    NotAllowed { method: String, path: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::BadPath(why) => write!(f, "invalid Docker API path: {why}"),
            Refusal::NotAllowed { method, path } => {
                write!(f, "{method} {path} is not an allowed Docker API endpoint")
            }
        }
    }
}

/// Checks a raw request path (no query) for tricks before it is classified or forwarded.
pub fn check_path(path: &str) -> Result<(), Refusal> {
    let bad = |why: &str| Err(Refusal::BadPath(why.to_string()));
    if !path.starts_with('/') {
        return bad("the path must start with /");
    }
    if path.len() > 2048 {
        return bad("the path is too long");
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b'\\' || b == b' ' || b >= 0x80)
    {
        return bad("the path has control, space, backslash or non-ASCII characters");
    }
    if path.contains("//") {
        return bad("the path has an empty segment");
    }
    let lower = path.to_ascii_lowercase();
    // Encoded dots, slashes and percent signs could turn into traversal after decoding.
    for enc in ["%2e", "%2f", "%5c", "%25", "%00"] {
        if lower.contains(enc) {
            return bad("the path has an encoded '.', '/', '\\', '%' or NUL");
        }
    }
    if path.split('/').any(|s| s == ".." || s == ".") {
        return bad("the path has a '.' or '..' segment");
    }
    Ok(())
}

/// Checks a raw query string for characters that could split or smuggle a request.
pub fn check_query(query: &str) -> Result<(), Refusal> {
    if query.len() > 16 * 1024 {
        return Err(Refusal::BadPath("the query is too long".into()));
    }
    if query
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'#' || b >= 0x80)
    {
        return Err(Refusal::BadPath(
            "the query has control, space, '#' or non-ASCII characters".into(),
        ));
    }
    Ok(())
}

/// Splits `/v1.41/containers/json` into (`Some("1.41")`, `/containers/json`).
pub fn strip_version(path: &str) -> (Option<String>, &str) {
    if let Some(rest) = path.strip_prefix("/v") {
        let end = rest.find('/').unwrap_or(rest.len());
        let v = &rest[..end];
        let valid = v.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        });
        if valid {
            let tail = &rest[end..];
            return (
                Some(v.to_string()),
                if tail.is_empty() { "/" } else { tail },
            );
        }
    }
    (None, path)
}

/// Classifies a passthrough request, or refuses it.
///
/// `path` is the request path after the host's base path, without the query.
///
/// Longer than 100 lines on purpose: its `match` is the allowlist itself, one arm per Docker
/// API route with its action, access, shape and object, and is read and reviewed as one table.
pub fn classify(method: &str, path: &str) -> Result<Route, Refusal> {
    check_path(path)?;
    let (version, bare) = strip_version(path);
    let segs: Vec<&str> = bare.trim_start_matches('/').split('/').collect();
    let m = method.to_ascii_uppercase();
    let refuse = || Refusal::NotAllowed {
        method: m.clone(),
        path: path.to_string(),
    };
    use Access::{Read as R, Write as W};
    use Shape::*;
    let (action, access, shape, object): (&'static str, Access, Shape, Option<&str>) =
        match (m.as_str(), segs.as_slice()) {
            ("GET" | "HEAD", ["_ping"]) => ("system.ping", R, Plain, None),
            ("GET", ["version"]) => ("system.version", R, Plain, None),
            ("GET", ["info"]) => ("system.info", R, Plain, None),
            ("GET", ["system", "df"]) => ("system.df", R, Plain, None),
            ("GET", ["events"]) => ("system.events", R, Stream, None),

            ("GET", ["containers", "json"]) => ("container.list", R, Plain, None),
            ("POST", ["containers", "create"]) => ("container.create", W, Plain, None),
            ("POST", ["containers", "prune"]) => ("container.prune", W, Plain, None),
            ("GET", ["containers", id, "json"]) => ("container.inspect", R, Plain, Some(*id)),
            ("GET", ["containers", id, "top"]) => ("container.top", R, Plain, Some(*id)),
            ("GET", ["containers", id, "logs"]) => ("container.logs", R, Stream, Some(*id)),
            ("GET", ["containers", id, "changes"]) => ("container.changes", R, Plain, Some(*id)),
            ("GET", ["containers", id, "stats"]) => ("container.stats", R, Stream, Some(*id)),
            ("GET", ["containers", id, "export"]) => ("container.export", W, Stream, Some(*id)),
            ("POST", ["containers", id, "start"]) => ("container.start", W, Plain, Some(*id)),
            ("POST", ["containers", id, "stop"]) => ("container.stop", W, Plain, Some(*id)),
            ("POST", ["containers", id, "restart"]) => ("container.restart", W, Plain, Some(*id)),
            ("POST", ["containers", id, "kill"]) => ("container.kill", W, Plain, Some(*id)),
            ("POST", ["containers", id, "pause"]) => ("container.pause", W, Plain, Some(*id)),
            ("POST", ["containers", id, "unpause"]) => ("container.unpause", W, Plain, Some(*id)),
            ("POST", ["containers", id, "rename"]) => ("container.rename", W, Plain, Some(*id)),
            ("POST", ["containers", id, "update"]) => ("container.update", W, Plain, Some(*id)),
            ("POST", ["containers", id, "resize"]) => ("container.resize", W, Plain, Some(*id)),
            ("POST", ["containers", id, "wait"]) => ("container.wait", R, Stream, Some(*id)),
            ("POST", ["containers", id, "attach"]) => ("container.attach", W, Upgrade, Some(*id)),
            ("POST", ["containers", id, "exec"]) => ("container.exec", W, Plain, Some(*id)),
            ("DELETE", ["containers", id]) => ("container.remove", W, Plain, Some(*id)),
            ("HEAD", ["containers", id, "archive"]) => {
                ("container.archive.stat", W, Plain, Some(*id))
            }
            ("GET", ["containers", id, "archive"]) => {
                ("container.archive.get", W, Stream, Some(*id))
            }
            ("PUT", ["containers", id, "archive"]) => {
                ("container.archive.put", W, Stream, Some(*id))
            }

            ("POST", ["exec", id, "start"]) => ("container.exec", W, Upgrade, Some(*id)),
            ("POST", ["exec", id, "resize"]) => ("container.exec.resize", W, Plain, Some(*id)),
            ("GET", ["exec", id, "json"]) => ("container.exec.inspect", R, Plain, Some(*id)),

            ("GET", ["images", "json"]) => ("image.list", R, Plain, None),
            ("GET", ["images", "search"]) => ("image.search", R, Plain, None),
            ("POST", ["images", "create"]) => ("image.pull", W, Stream, None),
            ("POST", ["images", "load"]) => ("image.load", W, Stream, None),
            ("POST", ["images", "prune"]) => ("image.prune", W, Plain, None),
            ("GET", ["images", "get"]) => ("image.save", W, Stream, None),
            ("POST", ["build"]) => ("image.build", W, Stream, None),
            ("POST", ["build", "prune"]) => ("image.build.prune", W, Plain, None),
            ("POST", ["commit"]) => ("container.commit", W, Plain, None),
            ("GET", ["distribution", name @ ..])
                if name.last() == Some(&"json") && name.len() >= 2 =>
            {
                ("image.distribution", R, Plain, None)
            }
            // Image names contain slashes: /images/{name...}/{action}
            (_, ["images", name @ .., last]) if !name.is_empty() => match (m.as_str(), *last) {
                ("GET", "json") => ("image.inspect", R, Plain, None),
                ("GET", "history") => ("image.history", R, Plain, None),
                ("GET", "get") => ("image.save", W, Stream, None),
                ("POST", "tag") => ("image.tag", W, Plain, None),
                ("POST", "push") => ("image.push", W, Stream, None),
                ("DELETE", _) => ("image.remove", W, Plain, None),
                _ => return Err(refuse()),
            },
            ("DELETE", ["images", _name]) => ("image.remove", W, Plain, None),

            ("GET", ["volumes"]) => ("volume.list", R, Plain, None),
            ("POST", ["volumes", "create"]) => ("volume.create", W, Plain, None),
            ("POST", ["volumes", "prune"]) => ("volume.prune", W, Plain, None),
            ("GET", ["volumes", name]) => ("volume.inspect", R, Plain, Some(*name)),
            ("DELETE", ["volumes", name]) => ("volume.remove", W, Plain, Some(*name)),

            ("GET", ["networks"]) => ("network.list", R, Plain, None),
            ("POST", ["networks", "create"]) => ("network.create", W, Plain, None),
            ("POST", ["networks", "prune"]) => ("network.prune", W, Plain, None),
            ("GET", ["networks", id]) => ("network.inspect", R, Plain, Some(*id)),
            ("DELETE", ["networks", id]) => ("network.remove", W, Plain, Some(*id)),
            ("POST", ["networks", id, "connect"]) => ("network.connect", W, Plain, Some(*id)),
            ("POST", ["networks", id, "disconnect"]) => ("network.disconnect", W, Plain, Some(*id)),

            ("GET", ["swarm"]) => ("swarm.inspect", R, Plain, None),
            ("GET", ["services"]) => ("service.list", R, Plain, None),
            ("GET", ["services", id]) => ("service.inspect", R, Plain, Some(*id)),
            ("GET", ["tasks"]) => ("task.list", R, Plain, None),
            ("GET", ["nodes"]) => ("node.list", R, Plain, None),
            ("GET", ["nodes", id]) => ("node.inspect", R, Plain, Some(*id)),
            ("GET", ["plugins"]) => ("plugin.list", R, Plain, None),
            ("GET", ["plugins", name @ .., "json"]) if !name.is_empty() => {
                ("plugin.inspect", R, Plain, None)
            }
            _ => return Err(refuse()),
        };
    // Image routes name the object by everything between /images/ and the action.
    let object = match action {
        "image.inspect" | "image.history" | "image.tag" | "image.push" | "image.remove"
            if segs.len() >= 2 =>
        {
            let end = if action == "image.remove" {
                segs.len()
            } else {
                segs.len() - 1
            };
            Some(segs[1..end].join("/"))
        }
        _ => object.map(str::to_string),
    };
    if let Some(o) = &object {
        if o.is_empty() {
            return Err(refuse());
        }
    }
    Ok(Route {
        action,
        access,
        shape,
        object,
        path: bare.to_string(),
        version,
    })
}

/// Hop-by-hop headers that a proxy must not forward (RFC 9110 §7.6.1), plus `host`, which
/// each hop sets itself, `authorization` (the user's token stays on the server) and
/// `content-length` (bodies are re-framed per hop; the server forwards a request's
/// Content-Length explicitly so the agent can send the body exactly delimited).
/// `upgrade` and `connection` are rebuilt for hijacked streams.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
            | "content-length"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_the_cli_sends() {
        let cases = [
            ("HEAD", "/_ping", "system.ping", Access::Read, Shape::Plain),
            (
                "GET",
                "/v1.41/containers/json",
                "container.list",
                Access::Read,
                Shape::Plain,
            ),
            (
                "POST",
                "/v1.41/containers/create",
                "container.create",
                Access::Write,
                Shape::Plain,
            ),
            (
                "POST",
                "/v1.41/containers/cap-a/attach",
                "container.attach",
                Access::Write,
                Shape::Upgrade,
            ),
            (
                "POST",
                "/v1.41/exec/abc/start",
                "container.exec",
                Access::Write,
                Shape::Upgrade,
            ),
            (
                "GET",
                "/v1.41/containers/cap-a/logs",
                "container.logs",
                Access::Read,
                Shape::Stream,
            ),
            (
                "GET",
                "/v1.41/events",
                "system.events",
                Access::Read,
                Shape::Stream,
            ),
            (
                "PUT",
                "/v1.41/containers/cap-a/archive",
                "container.archive.put",
                Access::Write,
                Shape::Stream,
            ),
            // Reading a container's files or an image hands out their contents: operator.
            (
                "GET",
                "/v1.41/images/get",
                "image.save",
                Access::Write,
                Shape::Stream,
            ),
            (
                "GET",
                "/v1.41/images/docker-ctl-test/busybox:latest/get",
                "image.save",
                Access::Write,
                Shape::Stream,
            ),
            (
                "GET",
                "/v1.41/containers/cap-a/archive",
                "container.archive.get",
                Access::Write,
                Shape::Stream,
            ),
            (
                "HEAD",
                "/v1.41/containers/cap-a/archive",
                "container.archive.stat",
                Access::Write,
                Shape::Plain,
            ),
            (
                "GET",
                "/v1.41/containers/cap-a/export",
                "container.export",
                Access::Write,
                Shape::Stream,
            ),
            (
                "POST",
                "/v1.41/images/load",
                "image.load",
                Access::Write,
                Shape::Stream,
            ),
            (
                "POST",
                "/v1.41/build",
                "image.build",
                Access::Write,
                Shape::Stream,
            ),
            (
                "DELETE",
                "/v1.41/containers/cap-a",
                "container.remove",
                Access::Write,
                Shape::Plain,
            ),
            (
                "GET",
                "/v1.41/images/docker-ctl-test/busybox:latest/json",
                "image.inspect",
                Access::Read,
                Shape::Plain,
            ),
            (
                "DELETE",
                "/v1.41/images/docker-ctl-test/busybox:latest",
                "image.remove",
                Access::Write,
                Shape::Plain,
            ),
            (
                "GET",
                "/v1.41/plugins/no-such/json",
                "plugin.inspect",
                Access::Read,
                Shape::Plain,
            ),
        ];
        for (m, p, action, access, shape) in cases {
            let r = classify(m, p).unwrap_or_else(|e| panic!("{m} {p}: {e}"));
            assert_eq!(
                (r.action, r.access, r.shape),
                (action, access, shape),
                "{m} {p}"
            );
        }
        let r = classify("GET", "/v1.41/images/docker-ctl-test/busybox:latest/json").unwrap();
        assert_eq!(r.object.as_deref(), Some("docker-ctl-test/busybox:latest"));
        assert_eq!(r.version.as_deref(), Some("1.41"));
        assert_eq!(r.path, "/images/docker-ctl-test/busybox:latest/json");
        let r = classify("DELETE", "/v1.41/images/a/b:c").unwrap();
        assert_eq!(r.object.as_deref(), Some("a/b:c"));
    }

    #[test]
    fn refuses_unlisted_routes_and_path_tricks() {
        let refused = [
            ("POST", "/v1.41/swarm/init"),
            ("POST", "/v1.41/plugins/pull"),
            ("POST", "/v1.41/secrets/create"),
            ("GET", "/v1.41/containers/../../etc/passwd"),
            ("GET", "/v1.41/containers/%2e%2e/json"),
            ("GET", "/v1.41/containers/a%2Fb/json"),
            ("GET", "/v1.41//containers/json"),
            ("GET", "/v1.41/containers/x\\y/json"),
            ("GET", "v1.41/info"),
            ("GET", "/v1.41/info\r\nX-Evil: 1"),
            ("GET", "/v1.41/containers/a%252e/json"),
            ("TRACE", "/v1.41/info"),
            ("GET", "/v1.41/images//json"),
        ];
        for (m, p) in refused {
            assert!(classify(m, p).is_err(), "{m} {p} must be refused");
        }
        assert!(check_query("all=1&filters=%7B%7D").is_ok());
        assert!(check_query("a=1\r\nHost: x").is_err());
    }

    #[test]
    fn strips_versions_only_when_they_look_like_versions() {
        assert_eq!(strip_version("/v1.41/info"), (Some("1.41".into()), "/info"));
        assert_eq!(strip_version("/volumes"), (None, "/volumes"));
        assert_eq!(strip_version("/vx.y/info"), (None, "/vx.y/info"));
    }
}
