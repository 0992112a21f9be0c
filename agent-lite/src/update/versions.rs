//! `update.allowed_versions`: which release versions this agent accepts.
//!
//! The syntax is a comma-separated list of comparators, all of which must hold:
//!
//! ```text
//! >=1.2.0, <2.0.0        any 1.x from 1.2.0 on
//! =1.3.4                 exactly 1.3.4 (a bare `1.3.4` means the same)
//! >1.2.0-rc.1, <=1.4.0
//! ```
//!
//! Operators: `>=`, `>`, `<=`, `<`, `=`. Versions are semantic versions
//! (`MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`) compared in semver order: numbers numerically,
//! a pre-release before its release (`1.3.0-rc.1 < 1.3.0`), pre-release identifiers
//! compared one by one (numeric ones numerically and below alphanumeric ones), build
//! metadata ignored. As with Cargo and npm, a pre-release satisfies a range only when a
//! comparator names a pre-release of the same `MAJOR.MINOR.PATCH` (`<2.0.0` does not take
//! `2.0.0-rc.1`; `>=2.0.0-rc.1, <2.0.0` does). A version that is not a semantic version
//! never satisfies a range.
//!
//! Owns: parsing versions and ranges, and the order. Must not: decide anything else about
//! an update.

use std::cmp::Ordering;
use std::fmt;

/// A semantic version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    /// Dot-separated pre-release identifiers; empty for a release.
    pre: Vec<Ident>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ident {
    Num(u64),
    Alpha(String),
}

impl Ord for Ident {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Ident::Num(a), Ident::Num(b)) => a.cmp(b),
            (Ident::Num(_), Ident::Alpha(_)) => Ordering::Less,
            (Ident::Alpha(_), Ident::Num(_)) => Ordering::Greater,
            (Ident::Alpha(a), Ident::Alpha(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Ident {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn number(s: &str) -> Option<u64> {
    // No sign, no leading zero (except 0 itself), digits only.
    let ok = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && !(s.len() > 1 && s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

impl Version {
    /// Parses `MAJOR.MINOR.PATCH[-PRE][+BUILD]`; `None` when it is not a semantic version.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.split_once('+').map_or(s, |(v, _)| v);
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (s, None),
        };
        let mut parts = core.split('.');
        let (major, minor, patch) = (
            number(parts.next()?)?,
            number(parts.next()?)?,
            number(parts.next()?)?,
        );
        if parts.next().is_some() {
            return None;
        }
        let pre = match pre {
            None => Vec::new(),
            Some(p) => p
                .split('.')
                .map(|id| {
                    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        None
                    } else if id.bytes().all(|b| b.is_ascii_digit()) {
                        number(id).map(Ident::Num)
                    } else {
                        Some(Ident::Alpha(id.to_string()))
                    }
                })
                .collect::<Option<Vec<_>>>()?,
        };
        Some(Version {
            major,
            minor,
            patch,
            pre,
        })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Eq => "=",
        }
    }
}

/// A parsed `update.allowed_versions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionReq {
    rules: Vec<(Op, Version, String)>,
}

impl VersionReq {
    /// Parses the comma-separated comparators; the error names the one that is wrong.
    pub fn parse(s: &str) -> Result<VersionReq, String> {
        let mut rules = Vec::new();
        for raw in s.split(',') {
            let c = raw.trim();
            if c.is_empty() {
                return Err(format!("{s:?} has an empty comparator"));
            }
            let (op, v) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("=", Op::Eq),
            ]
            .iter()
            .find_map(|(p, op)| c.strip_prefix(p).map(|rest| (*op, rest.trim())))
            .unwrap_or((Op::Eq, c));
            let version = Version::parse(v).ok_or_else(|| {
                format!("{c:?} does not compare with a semantic version (MAJOR.MINOR.PATCH)")
            })?;
            rules.push((op, version, v.to_string()));
        }
        Ok(VersionReq { rules })
    }

    /// Whether `version` satisfies every comparator.
    pub fn matches(&self, version: &str) -> bool {
        let Some(v) = Version::parse(version) else {
            return false;
        };
        let same_core = |b: &Version| (b.major, b.minor, b.patch) == (v.major, v.minor, v.patch);
        if !v.pre.is_empty()
            && !self
                .rules
                .iter()
                .any(|(_, b, _)| !b.pre.is_empty() && same_core(b))
        {
            return false;
        }
        self.rules.iter().all(|(op, bound, _)| {
            let o = v.cmp(bound);
            match op {
                Op::Ge => o != Ordering::Less,
                Op::Gt => o == Ordering::Greater,
                Op::Le => o != Ordering::Greater,
                Op::Lt => o == Ordering::Less,
                Op::Eq => o == Ordering::Equal,
            }
        })
    }
}

impl fmt::Display for VersionReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (op, _, text)) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}{text}", op.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_semver() {
        let order = [
            "0.9.9",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.2.0",
            "1.10.0",
            "2.0.0",
        ];
        for w in order.windows(2) {
            let (a, b) = (Version::parse(w[0]).unwrap(), Version::parse(w[1]).unwrap());
            assert!(a < b, "{} < {}", w[0], w[1]);
        }
        assert_eq!(
            Version::parse("1.2.3+build.7").unwrap(),
            Version::parse("1.2.3").unwrap(),
            "build metadata is ignored"
        );
        for bad in [
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "v1.2.3",
            "1.2.x",
            "1.2.3-",
            "1.2.3-a..b",
            "",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ranges_pin_versions() {
        let r = VersionReq::parse(">=1.2.0, <2.0.0").unwrap();
        assert!(r.matches("1.2.0") && r.matches("1.9.3"));
        assert!(!r.matches("1.1.9") && !r.matches("2.0.0") && !r.matches("2.0.0-rc.1"));
        assert!(
            !r.matches("1.2.0-rc.1"),
            "a pre-release comes before its release"
        );
        assert!(
            !r.matches("1.5.0-rc.1"),
            "pre-releases only when a comparator names one"
        );
        let rc = VersionReq::parse(">=2.0.0-rc.1, <2.0.0").unwrap();
        assert!(rc.matches("2.0.0-rc.2") && !rc.matches("2.0.0-alpha") && !rc.matches("2.0.0"));
        assert!(!r.matches("dev"), "not a semantic version");
        let exact = VersionReq::parse("=1.3.4").unwrap();
        assert!(exact.matches("1.3.4") && exact.matches("1.3.4+b1") && !exact.matches("1.3.5"));
        assert_eq!(VersionReq::parse("1.3.4").unwrap(), exact);
        let r = VersionReq::parse(" >1.0.0 , <= 1.4.0 ").unwrap();
        assert!(r.matches("1.4.0") && !r.matches("1.0.0"));
        assert_eq!(r.to_string(), ">1.0.0, <=1.4.0");
        for bad in ["", ">=1.2", "1.2.0,", "~1.2.0", ">= one"] {
            assert!(VersionReq::parse(bad).is_err(), "{bad}");
        }
    }
}
