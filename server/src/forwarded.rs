//! The client address of a request: the TCP peer, or, when the peer is one of the configured
//! `trusted_proxies`, the address that proxy says it forwarded for.
//!
//! Owns: reading `X-Forwarded-For` (or, without it, `Forwarded: for=`) and picking the
//! right-most hop that is not a trusted proxy: every proxy appends the address it received
//! the request from, so hops to the right of that one were added by our own proxies and the
//! ones to its left were written by the client and prove nothing. The answer feeds the
//! failed-login limits, the tokens' `allowed_cidrs` and the audit's `source_ip`. The
//! [`resolve_client_ip`] middleware decides it once per request; handlers read it as the
//! [`ClientIp`] extractor (or [`source_ip`] of the request parts). The same middleware decides
//! whether the client reached the server over https ([`Https`]): the connection is TLS
//! ([`TlsConnection`], put there by the listener), or a trusted proxy says
//! `X-Forwarded-Proto: https` (session cookies are `Secure` then).
//! Must not: trust a header from a peer outside `trusted_proxies`, or fall back to a value
//! it could not parse (it answers the peer's own address instead).

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The client's address, when the server was started with connection info: the peer, or
/// the forwarded address when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

/// Whether the client reached the server over https.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Https(pub bool);

/// Marks a request that arrived on a TLS connection (the listener inserts it).
#[derive(Debug, Clone, Copy)]
pub struct TlsConnection;

/// Whether a request came over https: a TLS connection, or a trusted proxy's
/// `X-Forwarded-Proto: https` (its first value: the scheme the client used with the outermost
/// proxy).
pub fn is_https(tls: bool, peer: Option<IpAddr>, headers: &HeaderMap, proxies: &[IpNet]) -> bool {
    if tls {
        return true;
    }
    let Some(peer) = peer.map(canonical) else {
        return false;
    };
    trusted(peer, proxies)
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// The scheme decided by [`resolve_client_ip`] for the request of `parts`.
pub fn https_of(parts: &Parts) -> bool {
    parts.extensions.get::<Https>().is_some_and(|h| h.0)
}

/// Decides each request's client address once, before any handler runs.
pub async fn resolve_client_ip(
    State(proxies): State<Arc<Vec<IpNet>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let ip = client_ip(peer, req.headers(), &proxies);
    let tls = req.extensions().get::<TlsConnection>().is_some();
    let https = is_https(tls, peer, req.headers(), &proxies);
    req.extensions_mut().insert(ClientIp(ip));
    req.extensions_mut().insert(Https(https));
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(ClientIp(source_ip(parts)))
    }
}

/// The client address of a request, when the server knows it: as decided once per request
/// by [`resolve_client_ip`], else the TCP peer.
pub fn source_ip(parts: &Parts) -> Option<IpAddr> {
    if let Some(ClientIp(ip)) = parts.extensions.get::<ClientIp>() {
        return *ip;
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| canonical(c.0.ip()))
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so v4 lists match mapped addresses.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// One hop as proxies write it: `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1`, `[2001:db8::1]:567`,
/// optionally quoted (RFC 7239). Obfuscated names (`unknown`, `_hidden`) are `None`.
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse().ok();
    }
    let (addr, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The hops of `X-Forwarded-For` (every header line, in order), or else the `for=` values of
/// `Forwarded`. `None` when neither header is present.
fn hops(headers: &HeaderMap) -> Option<Vec<String>> {
    let join = |name: &str| -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut any = false;
        for v in headers.get_all(name) {
            any = true;
            let text = v.to_str().unwrap_or("");
            out.extend(text.split(',').map(|s| s.trim().to_string()));
        }
        any.then_some(out)
    };
    if let Some(x) = join("x-forwarded-for") {
        return Some(x);
    }
    let fwd = join("forwarded")?;
    Some(
        fwd.iter()
            .map(|element| {
                element
                    .split(';')
                    .find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then(|| v.to_string())
                    })
                    .unwrap_or_default()
            })
            .collect(),
    )
}

/// The client's address: `peer` itself unless `peer` is a trusted proxy; then the right-most
/// forwarded hop that is not a trusted proxy (the left-most when all are trusted). A hop that
/// cannot be parsed stops the walk and the peer's address is used.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, proxies: &[IpNet]) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !trusted(peer, proxies) {
        return Some(peer);
    }
    let Some(hops) = hops(headers) else {
        return Some(peer);
    };
    let mut last = peer;
    for raw in hops.iter().rev() {
        let Some(ip) = parse_hop(raw).map(canonical) else {
            return Some(peer);
        };
        if !trusted(ip, proxies) {
            return Some(ip);
        }
        last = ip;
    }
    Some(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let hdr = h(&[("x-forwarded-for", "192.0.2.7")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &hdr, &proxies), ip("127.0.0.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), &hdr, &[]), ip("127.0.0.1"));
        assert_eq!(client_ip(None, &hdr, &proxies), None);
    }

    #[test]
    fn the_right_most_untrusted_hop_wins() {
        let proxies: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        // The client forged the first hop; our proxies appended the rest.
        let hdr = h(&[("x-forwarded-for", "203.0.113.9, 198.51.100.4, 10.1.1.1")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &hdr, &proxies),
            ip("198.51.100.4")
        );
        // Several header lines are one list, in order.
        let hdr = h(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.4:5555, 10.1.1.1"),
        ]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &hdr, &proxies),
            ip("198.51.100.4")
        );
        // Only trusted hops: the left-most.
        let hdr = h(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &hdr, &proxies), ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &proxies),
            ip("127.0.0.1")
        );
        // Garbage where the client's hop should be: the proxy's address, not a guess.
        let hdr = h(&[("x-forwarded-for", "198.51.100.4, unknown")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &hdr, &proxies), ip("127.0.0.1"));
    }

    #[test]
    fn https_is_tls_or_a_trusted_proxys_word() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let https = h(&[("x-forwarded-proto", "https")]);
        assert!(is_https(true, ip("192.0.2.1"), &HeaderMap::new(), &proxies));
        assert!(is_https(false, ip("10.0.0.1"), &https, &proxies));
        assert!(!is_https(false, ip("192.0.2.1"), &https, &proxies));
        assert!(!is_https(
            false,
            ip("10.0.0.1"),
            &h(&[("x-forwarded-proto", "http")]),
            &proxies
        ));
        assert!(!is_https(false, None, &https, &proxies));
    }

    #[test]
    fn forwarded_is_read_when_x_forwarded_for_is_absent() {
        let proxies: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let hdr = h(&[(
            "forwarded",
            "for=203.0.113.9;proto=https, for=\"[2001:db8::7]:443\";by=127.0.0.1",
        )]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &hdr, &proxies),
            ip("2001:db8::7")
        );
        let both = h(&[
            ("forwarded", "for=203.0.113.9"),
            ("x-forwarded-for", "198.51.100.4"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &both, &proxies),
            ip("198.51.100.4")
        );
    }
}
