//! Where a Docker daemon listens: the one parser of the agent's `docker.socket` and of a
//! direct host's `docker_url` on the server.
//!
//! The rules, in order:
//!
//! | written as | is | default port |
//! |---|---|---|
//! | `unix:///an/absolute/path` | a unix socket | – |
//! | `/an/absolute/path` (no scheme) | a unix socket | – |
//! | `tcp://host[:port]`, `http://host[:port]` | plain HTTP over TCP | 2375 (Docker's) |
//! | `https://host[:port]` | HTTP over TLS | 2376 (Docker's) |
//!
//! A host is a name, an IPv4 address or an IPv6 address in brackets (`tcp://[::1]:2375`). One
//! trailing `/` is ignored. User info (`@`), a path, a query or a fragment are refused, as are
//! an empty host, an empty or zero port, and whitespace or control characters anywhere. Any
//! other scheme is refused. Which kinds a side can dial is its own business: the agent has no
//! TLS client towards the daemon and refuses `https://` when it validates its config.
//!
//! Owns: the syntax and its parsed form. Must not: resolve names or open sockets.

use std::fmt;

/// Docker's default port for plain TCP.
pub const DEFAULT_TCP_PORT: u16 = 2375;
/// Docker's default port for TLS.
pub const DEFAULT_TLS_PORT: u16 = 2376;

/// A host and port of a TCP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host:port`, with an IPv6 address in brackets: what HTTP's `Host` header and URLs
    /// take.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A parsed Docker endpoint (see the module docs for the rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The path of a unix socket.
    Unix(String),
    /// Plain HTTP over TCP.
    Tcp(HostPort),
    /// HTTP over TLS.
    Https(HostPort),
}

impl Endpoint {
    /// Parses an endpoint. The error names the input and the rule it broke.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let bad = |why: &str| Err(format!("Docker endpoint {s:?}: {why}"));
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("whitespace and control characters are not allowed");
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') || path.len() < 2 {
                return bad("unix:// needs an absolute path, e.g. unix:///var/run/docker.sock");
            }
            return Ok(Endpoint::Unix(path.to_string()));
        }
        if s.starts_with('/') {
            if s.len() < 2 {
                return bad("a socket path needs a file name");
            }
            return Ok(Endpoint::Unix(s.to_string()));
        }
        let (rest, tls) = if let Some(r) = s.strip_prefix("tcp://") {
            (r, false)
        } else if let Some(r) = s.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = s.strip_prefix("https://") {
            (r, true)
        } else {
            return bad("use unix:///path, tcp://host:port or https://host:port");
        };
        let default_port = if tls {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_TCP_PORT
        };
        let hp = match host_port(rest.strip_suffix('/').unwrap_or(rest), default_port) {
            Ok(hp) => hp,
            Err(why) => return bad(why),
        };
        Ok(if tls {
            Endpoint::Https(hp)
        } else {
            Endpoint::Tcp(hp)
        })
    }
}

/// `host[:port]` with an optional bracketed IPv6 host.
fn host_port(a: &str, default_port: u16) -> Result<HostPort, &'static str> {
    const SHAPE: &str = "expected scheme://host[:port] without user, path, query or fragment";
    if a.is_empty() || a.contains(['/', '@', '?', '#']) {
        return Err(SHAPE);
    }
    let (host, port) = match a.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']').ok_or("an unclosed [ in the host")?;
            match after {
                "" => (h, None),
                _ => (h, Some(after.strip_prefix(':').ok_or(SHAPE)?)),
            }
        }
        None => match a.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        },
    };
    if host.is_empty() || host.contains(['[', ']']) || (host.contains(':') && !a.starts_with('[')) {
        return Err("the host is missing or malformed (an IPv6 address goes in brackets)");
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err("the port must be a number from 1 to 65535"),
        },
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{p}"),
            Endpoint::Tcp(hp) => write!(f, "tcp://{}", hp.authority()),
            Endpoint::Https(hp) => write!(f, "https://{}", hp.authority()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn the_accepted_forms() {
        let cases = [
            (
                "unix:///var/run/docker.sock",
                Endpoint::Unix("/var/run/docker.sock".into()),
            ),
            (
                "/run/docker.sock",
                Endpoint::Unix("/run/docker.sock".into()),
            ),
            ("tcp://127.0.0.1:2375", Endpoint::Tcp(hp("127.0.0.1", 2375))),
            (
                "tcp://127.0.0.1:2375/",
                Endpoint::Tcp(hp("127.0.0.1", 2375)),
            ),
            ("http://docker:23750", Endpoint::Tcp(hp("docker", 23750))),
            ("tcp://docker", Endpoint::Tcp(hp("docker", 2375))),
            ("tcp://[::1]:2375", Endpoint::Tcp(hp("::1", 2375))),
            ("tcp://[fe80::1]", Endpoint::Tcp(hp("fe80::1", 2375))),
            (
                "https://docker.example:2376/",
                Endpoint::Https(hp("docker.example", 2376)),
            ),
            ("https://10.0.0.5", Endpoint::Https(hp("10.0.0.5", 2376))),
        ];
        for (text, want) in cases {
            assert_eq!(Endpoint::parse(text), Ok(want.clone()), "{text}");
            // What Display writes parses back to the same endpoint.
            assert_eq!(Endpoint::parse(&want.to_string()), Ok(want), "{text}");
        }
        assert_eq!(hp("::1", 1).authority(), "[::1]:1");
        assert_eq!(hp("h", 2).authority(), "h:2");
    }

    #[test]
    fn the_refused_forms_name_the_input() {
        for bad in [
            "",
            "/",
            "docker.sock",
            "unix://relative",
            "unix://",
            "ftp://x",
            "ssh://me@host",
            "tcp://",
            "tcp://:2375",
            "tcp://a:1/path",
            "tcp://u@h:1",
            "tcp://h:1?x=1",
            "tcp://h:1#f",
            "tcp://h:",
            "tcp://h:0",
            "tcp://h:65536",
            "tcp://h:+1",
            "tcp://::1:2375",
            "tcp://[::1",
            "tcp://[::1]x",
            "tcp://h 1:2",
            "unix:///a\nb",
            "https://",
        ] {
            let err = Endpoint::parse(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
