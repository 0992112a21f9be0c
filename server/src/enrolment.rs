//! Enrolment tokens: what an admin may ask for when creating one, what an agent may present
//! when enrolling itself, and why an enrolment is refused.
//!
//! Owns: the bounds of every input (checked before any database work), the token's usability
//! (revoked, expired, used up), the host names an enrolment tries and the new agent's id, the
//! refusal reasons with their wire codes, the duration syntax of `expires_in` (`7d`), and the
//! install lines `enrol-token create --print-install` prints. Must not: touch the database,
//! the network or a session (the store runs the enrolment transaction, the agents' endpoint
//! talks to the agent, the API answers admins).

use protocol::{EnrolPayload, ErrorBody, ErrorCode};
use std::time::Duration;

use crate::labels::{self, Labels};
use crate::store::EnrolmentToken;

/// The longest host name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// The longest token name, in bytes.
pub const MAX_TOKEN_NAME_LEN: usize = 255;
/// The longest enrolment token an agent may present, in bytes (ours are 50).
pub const MAX_TOKEN_LEN: usize = 128;
/// The longest agent version string accepted, in bytes.
pub const MAX_VERSION_LEN: usize = 64;
/// The largest `max_uses`.
pub const MAX_USES: i64 = 1_000_000;
/// The longest `expires_in`: ten years.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Why an enrolment was refused. Each is answered with its code and reason; none writes a
/// host, an agent or a use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The `enrol` message is malformed or out of bounds (the reason says which field).
    Invalid(String),
    /// No token has this value.
    UnknownToken,
    Revoked,
    Expired,
    UsedUp,
    /// The host name belongs to a host of another machine.
    NameTaken(String),
    /// Too many failed enrolments from this address.
    RateLimited,
    /// Agent mode is off on this server.
    Disabled,
    /// The database failed: retry later.
    Unavailable,
}

impl Refusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::Invalid(_) => ErrorCode::InvalidParams,
            Refusal::UnknownToken | Refusal::Revoked | Refusal::Expired | Refusal::UsedUp => {
                ErrorCode::Unauthorized
            }
            Refusal::NameTaken(_) => ErrorCode::Conflict,
            Refusal::RateLimited => ErrorCode::RateLimited,
            Refusal::Disabled => ErrorCode::Unsupported,
            Refusal::Unavailable => ErrorCode::Internal,
        }
    }

    /// What the agent is told (and logs).
    pub fn reason(&self) -> String {
        match self {
            Refusal::Invalid(why) => format!("invalid enrol message: {why}"),
            Refusal::UnknownToken => "invalid enrolment token".into(),
            Refusal::Revoked => "the enrolment token was revoked".into(),
            Refusal::Expired => "the enrolment token expired".into(),
            Refusal::UsedUp => "the enrolment token reached its max_uses".into(),
            Refusal::NameTaken(name) => format!(
                "a host named {name:?} already exists and belongs to another machine: choose another --name"
            ),
            Refusal::RateLimited => "too many failed enrolments; retry later".into(),
            Refusal::Disabled => "agent mode is disabled on this server".into(),
            Refusal::Unavailable => "the enrolment could not be recorded; retry later".into(),
        }
    }

    /// The short name for the audit log and the agent's events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid",
            Refusal::UnknownToken => "unknown_token",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
            Refusal::UsedUp => "used_up",
            Refusal::NameTaken(_) => "name_taken",
            Refusal::RateLimited => "rate_limited",
            Refusal::Disabled => "disabled",
            Refusal::Unavailable => "unavailable",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.reason())
    }
}

/// Whether `token` may enrol a host at `now` (Unix ms): the first reason it may not.
pub fn usable(token: &EnrolmentToken, now: i64) -> Result<(), Refusal> {
    if token.revoked_at.is_some() {
        return Err(Refusal::Revoked);
    }
    if token.expires_at.is_some_and(|e| e <= now) {
        return Err(Refusal::Expired);
    }
    if token.max_uses.is_some_and(|m| token.uses >= m) {
        return Err(Refusal::UsedUp);
    }
    Ok(())
}

/// A host name: 1 to [`MAX_NAME_LEN`] bytes, not blank, without control characters.
pub fn check_host_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("name must be 1 to {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(())
}

/// Checks an `enrol` message before anything is looked up.
pub fn check_request(p: &EnrolPayload) -> Result<(), Refusal> {
    let t = p.enrol_token.expose();
    if t.is_empty() || t.len() > MAX_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::Invalid(format!(
            "enrol_token must be 1 to {MAX_TOKEN_LEN} printable characters"
        )));
    }
    check_host_name(&p.name).map_err(Refusal::Invalid)?;
    let m = &p.machine_id;
    if m.len() != 64 || !m.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Refusal::Invalid(
            "machine_id must be 64 lowercase hex digits (a SHA-256)".into(),
        ));
    }
    if p.version.len() > MAX_VERSION_LEN || p.version.chars().any(char::is_control) {
        return Err(Refusal::Invalid(format!(
            "version must be at most {MAX_VERSION_LEN} characters"
        )));
    }
    Ok(())
}

/// The names an enrolment tries, in order: the name asked for and, when it is only the
/// machine's hostname, the same name with the machine's first 8 digits (so a hundred boxes
/// flashed with one image and one hostname enrol as a hundred hosts).
pub fn candidate_names(p: &EnrolPayload) -> Vec<String> {
    let name = p.name.trim().to_string();
    let mut names = vec![name.clone()];
    if p.name_is_hostname {
        let suffix = &p.machine_id[..8.min(p.machine_id.len())];
        let base: String = name
            .chars()
            .scan(0usize, |len, c| {
                *len += c.len_utf8();
                (*len <= MAX_NAME_LEN - 9).then_some(c)
            })
            .collect();
        names.push(format!("{base}-{suffix}"));
    }
    names
}

/// A new agent's id: the host name's safe characters (at most 64) and 12 random hex digits.
pub fn agent_id_for(name: &str, random: &[u8; 6]) -> String {
    let mut base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let trimmed = base.trim_matches(|c| c == '-' || c == '.').to_string();
    base = if trimmed.is_empty() {
        "host".into()
    } else {
        trimmed
    };
    format!("{base}-{}", hex::encode(random))
}

/// The token's labels, checked as hosts' admin labels are (the `labels` module): they become
/// the admin labels of every host the token enrols.
pub fn check_labels(l: &Labels) -> Result<(), String> {
    labels::check(l).map_err(|e| e.0)
}

/// Parses `k=v` (the CLI's `--label`).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// A duration: whole seconds (`3600`), or a number with a unit: `s`, `m`, `h`, `d`, `w`
/// (`90m`, `7d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 3600, 90m, 12h, 7d or 2w)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h, d or w")),
    };
    let secs = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    check_expires_in(Duration::from_secs(secs))
}

/// `expires_in` between 1 s and [`MAX_EXPIRES_IN`].
pub fn check_expires_in(d: Duration) -> Result<Duration, String> {
    if d < Duration::from_secs(1) || d > MAX_EXPIRES_IN {
        return Err(format!(
            "expires_in must be 1 second to {} days",
            MAX_EXPIRES_IN.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// `max_uses` between 1 and [`MAX_USES`].
pub fn check_max_uses(n: i64) -> Result<i64, String> {
    if !(1..=MAX_USES).contains(&n) {
        return Err(format!("max_uses must be 1 to {MAX_USES}"));
    }
    Ok(n)
}

/// The agent builds the tarballs are made for: (CPU, Rust target).
pub const AGENT_TARGETS: [(&str, &str); 3] = [
    ("x86_64", "x86_64-unknown-linux-musl"),
    ("aarch64", "aarch64-unknown-linux-musl"),
    ("armv7", "armv7-unknown-linux-gnueabihf"),
];

/// One shell line per CPU that installs the agent from its release tarball
/// (`docker-ctl-agent-VERSION-TARGET.tar.gz`, next to the shell) with this enrolment token.
/// The token goes through a 0600 file, never the command line of a process.
pub fn install_lines(server_url: &str, token: &str, version: &str) -> Vec<(String, String)> {
    AGENT_TARGETS
        .iter()
        .map(|(cpu, target)| {
            let dir = format!("docker-ctl-agent-{version}-{target}");
            let line = format!(
                "umask 077 && printf '%s\\n' '{token}' >enrol.token && tar -xzf {dir}.tar.gz && \
                 sudo sh {dir}/install.sh --server '{server_url}' --enrol-token-file enrol.token; rm -f enrol.token"
            );
            (cpu.to_string(), line)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Secret;

    fn payload(name: &str, hostname: bool) -> EnrolPayload {
        EnrolPayload {
            enrol_token: Secret::new("dctl_e_abc"),
            name: name.into(),
            name_is_hostname: hostname,
            machine_id: "0123456789abcdef".repeat(4),
            version: "0.1.0".into(),
            protocol_version: Some(2),
        }
    }

    #[test]
    fn requests_are_bounded_before_any_lookup() {
        assert!(check_request(&payload("edge-1", false)).is_ok());
        let mut p = payload("edge-1", false);
        p.enrol_token = Secret::new("x".repeat(MAX_TOKEN_LEN + 1));
        assert!(matches!(check_request(&p), Err(Refusal::Invalid(m)) if m.contains("enrol_token")));
        p.enrol_token = Secret::new("with space");
        assert!(check_request(&p).is_err());
        let mut p = payload(&"n".repeat(MAX_NAME_LEN + 1), false);
        assert!(matches!(check_request(&p), Err(Refusal::Invalid(m)) if m.contains("name")));
        p.name = "bad\nname".into();
        assert!(check_request(&p).is_err());
        p.name = "   ".into();
        assert!(check_request(&p).is_err());
        let mut p = payload("ok", false);
        p.machine_id = "ABCDEF".repeat(10);
        assert!(matches!(check_request(&p), Err(Refusal::Invalid(m)) if m.contains("machine_id")));
        let mut p = payload("ok", false);
        p.version = "v".repeat(MAX_VERSION_LEN + 1);
        assert!(check_request(&p).is_err());
    }

    #[test]
    fn hostnames_get_a_machine_suffix_as_second_choice() {
        assert_eq!(candidate_names(&payload("edge-1", false)), vec!["edge-1"]);
        assert_eq!(
            candidate_names(&payload("raspberrypi", true)),
            vec!["raspberrypi", "raspberrypi-01234567"]
        );
        let long = "é".repeat(200);
        let names = candidate_names(&payload(&long, true));
        assert!(names[1].len() <= MAX_NAME_LEN, "{}", names[1].len());
        assert!(names[1].ends_with("-01234567"));
    }

    #[test]
    fn agent_ids_are_valid_for_any_name() {
        let r = [1, 2, 3, 4, 5, 0xff];
        assert_eq!(agent_id_for("pi-berlin-7", &r), "pi-berlin-7-0102030405ff");
        assert_eq!(agent_id_for("Büro 3/A", &r), "B-ro-3-A-0102030405ff");
        assert_eq!(agent_id_for("///", &r), "host-0102030405ff");
        for name in ["x".repeat(300), "ü".repeat(100), String::from(".")] {
            assert!(
                crate::auth::valid_agent_id(&agent_id_for(&name, &r)),
                "{name}"
            );
        }
    }

    #[test]
    fn token_labels_are_checked_as_host_labels() {
        let ok: Labels = [("site".to_string(), "berlin".to_string())].into();
        check_labels(&ok).unwrap();
        let bad: Labels = [("bad key".to_string(), "v".to_string())].into();
        assert!(check_labels(&bad).unwrap_err().contains("bad key"));
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_label("=x").is_err() && parse_label("nokey").is_err());
    }

    #[test]
    fn durations_and_bounds() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("3600").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        for bad in ["", "0", "7x", "d", "-1d", "99999999999999999999d", "5000w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(check_max_uses(0).is_err() && check_max_uses(MAX_USES + 1).is_err());
        assert_eq!(check_max_uses(100), Ok(100));
    }

    #[test]
    fn a_token_is_usable_until_revoked_expired_or_used_up() {
        let mut t = EnrolmentToken {
            id: "t".into(),
            name: "n".into(),
            token_hash: String::new(),
            prefix: String::new(),
            labels: Labels::new(),
            require_approval: false,
            max_uses: Some(2),
            uses: 1,
            created_by: "admin".into(),
            created_at: 0,
            expires_at: Some(1000),
            revoked_at: None,
            last_used_at: None,
        };
        assert_eq!(usable(&t, 999), Ok(()));
        assert_eq!(usable(&t, 1000), Err(Refusal::Expired));
        t.uses = 2;
        assert_eq!(usable(&t, 0), Err(Refusal::UsedUp));
        t.revoked_at = Some(5);
        assert_eq!(usable(&t, 0), Err(Refusal::Revoked));
        assert_eq!(Refusal::Revoked.code(), ErrorCode::Unauthorized);
        assert_eq!(Refusal::NameTaken("x".into()).code(), ErrorCode::Conflict);
    }

    #[test]
    fn install_lines_name_each_tarball_and_keep_the_token_off_argv() {
        let lines = install_lines("wss://ctl.example", "dctl_e_TOKEN", "1.2.3");
        let cpus: Vec<&str> = lines.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(cpus, ["x86_64", "aarch64", "armv7"]);
        for (_, l) in &lines {
            assert!(l.contains("--enrol-token-file enrol.token"), "{l}");
            assert!(
                l.contains("printf '%s\\n' 'dctl_e_TOKEN' >enrol.token"),
                "{l}"
            );
            assert!(l.contains("--server 'wss://ctl.example'"), "{l}");
        }
        assert!(lines[1]
            .1
            .contains("docker-ctl-agent-1.2.3-aarch64-unknown-linux-musl.tar.gz"));
    }
}
