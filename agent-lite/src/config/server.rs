//! The validated forms of `server.url` and `server.pin_sha256`.
//!
//! Owns: their syntax. Must not: resolve names or connect (that is [`crate::connection`]).

use base64::Engine as _;

/// A parsed `ws://` or `wss://` server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub tls: bool,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (may be empty).
    pub base: String,
}

impl ServerUrl {
    pub fn parse(url: &str) -> Result<ServerUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err("the scheme must be wss:// or ws://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') || path.contains('?') || path.contains('#') {
            return Err("user info, query and fragment are not allowed".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
                None if after.is_empty() => default_port,
                None => return Err("junk after the IPv6 host".into()),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("bad port {p:?}"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err("the host is missing".into());
        }
        Ok(ServerUrl {
            tls,
            host,
            port,
            base: path.trim_end_matches('/').to_string(),
        })
    }

    /// `ws(s)://host:port/base/ws/agents/{agent_id}`.
    pub fn agent_url(&self, agent_id: &str) -> String {
        self.url_of(&format!(
            "/ws/agents/{}",
            protocol::mapping::percent_encode(agent_id)
        ))
    }

    /// `ws(s)://host:port/base/ws/enrol`: where an agent enrols itself once.
    pub fn enrol_url(&self) -> String {
        self.url_of("/ws/enrol")
    }

    fn url_of(&self, path: &str) -> String {
        format!(
            "{}://{}{}{path}",
            if self.tls { "wss" } else { "ws" },
            self.authority(),
            self.base,
        )
    }

    /// `host:port`, an IPv6 host in brackets: the URL's authority and the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A SHA-256 pin of the server's certificate or public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// Parses a pin given as 64 hex digits (colons allowed) or base64 of 32 bytes, optionally
    /// prefixed with `sha256/` or `sha256:`.
    pub fn parse(s: &str) -> Option<Pin> {
        let s = s
            .trim()
            .trim_start_matches("sha256/")
            .trim_start_matches("sha256:");
        let hexed: String = s.chars().filter(|c| *c != ':').collect();
        if let Ok(b) = hex::decode(&hexed) {
            return b.try_into().ok().map(Pin);
        }
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .ok()?
            .try_into()
            .ok()
            .map(Pin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ServerUrl::parse("wss://control-platform.com").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base.as_str()),
            (true, "control-platform.com", 443, "")
        );
        assert_eq!(
            u.agent_url("agent-prod-01"),
            "wss://control-platform.com:443/ws/agents/agent-prod-01"
        );
        let u = ServerUrl::parse("ws://127.0.0.1:8080/base/").unwrap();
        assert_eq!(u.agent_url("a"), "ws://127.0.0.1:8080/base/ws/agents/a");
        assert_eq!(u.enrol_url(), "ws://127.0.0.1:8080/base/ws/enrol");
        let u = ServerUrl::parse("wss://[::1]:9443").unwrap();
        assert_eq!(u.agent_url("a"), "wss://[::1]:9443/ws/agents/a");
        assert_eq!(u.enrol_url(), "wss://[::1]:9443/ws/enrol");
        for bad in [
            "http://x",
            "wss://",
            "wss://h:port",
            "wss://u@h",
            "wss://h/?q",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pins_parse_in_hex_and_base64() {
        let hexpin = "ab".repeat(32);
        assert_eq!(Pin::parse(&hexpin), Some(Pin([0xab; 32])));
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(Pin::parse(&colons.join(":")), Some(Pin([0xab; 32])));
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(Pin::parse(&format!("sha256/{b64}")), Some(Pin([7; 32])));
        assert_eq!(Pin::parse("nope"), None);
        assert_eq!(Pin::parse(&"ab".repeat(31)), None);
    }
}
