//! The command line of `docker-ctl-agent`: a small hand-written parser (clap cost ~250 KB
//! of the edge binary). Each option may come from its flag or its environment variable;
//! the flag wins, and an empty variable counts as unset. `--opt value` and `--opt=value`
//! both work.
//!
//! Owns: flags, environment fallbacks, `--help` and `--version`. Must not: read the config
//! file (see [`crate::config`] for the precedence with the file).

use std::path::PathBuf;

/// Parsed arguments.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args {
    pub config: Option<PathBuf>,
    pub server: Option<String>,
    pub agent_id: Option<String>,
    pub token: Option<String>,
    pub docker_socket: Option<String>,
    pub enrol_token: Option<String>,
    pub name: Option<String>,
    pub state_file: Option<PathBuf>,
    pub check_config: bool,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Args),
    /// Print this on stdout and exit 0 (`--help`, `--version`).
    Print(String),
}

/// A usage error: print it on stderr and exit 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "error: {}\n\nUsage: docker-ctl-agent [OPTIONS]\n\nFor more information, try '--help'.",
            self.0
        )
    }
}

struct Opt {
    long: &'static str,
    value: &'static str,
    env: &'static str,
    /// The env value is not shown in `--help` (the token).
    hide_env_value: bool,
    help: &'static str,
}

const OPTS: [Opt; 8] = [
    Opt {
        long: "config",
        value: "FILE",
        env: "DOCKER_CTL_CONFIG",
        hide_env_value: false,
        help: "Config file (YAML). Optional when everything is given by flags or environment",
    },
    Opt {
        long: "server",
        value: "URL",
        env: "DOCKER_CTL_SERVER",
        hide_env_value: false,
        help: "Server URL, e.g. wss://control.example.com, or several comma-separated (overrides server.url)",
    },
    Opt {
        long: "agent-id",
        value: "ID",
        env: "DOCKER_CTL_AGENT_ID",
        hide_env_value: false,
        help: "Agent id (overrides agent.id)",
    },
    Opt {
        long: "token",
        value: "TOKEN",
        env: "DOCKER_CTL_TOKEN",
        hide_env_value: true,
        help: "Auth token (overrides agent.auth_token). Prefer the environment or the file: flags are visible in the process list",
    },
    Opt {
        long: "docker-socket",
        value: "ENDPOINT",
        env: "DOCKER_CTL_DOCKER_SOCKET",
        hide_env_value: false,
        help: "Docker endpoint: unix:///var/run/docker.sock or tcp://host:port (overrides docker.socket)",
    },
    Opt {
        long: "enrol-token",
        value: "TOKEN",
        env: "DOCKER_CTL_ENROL_TOKEN",
        hide_env_value: true,
        help: "Enrol this host with an enrolment token on first start, instead of --agent-id and --token (overrides agent.enrol_token; needs a writable state file)",
    },
    Opt {
        long: "name",
        value: "NAME",
        env: "DOCKER_CTL_NAME",
        hide_env_value: false,
        help: "The host name to enrol as [default: the machine's hostname] (overrides agent.name)",
    },
    Opt {
        long: "state-file",
        value: "FILE",
        env: "DOCKER_CTL_STATE_FILE",
        hide_env_value: false,
        help: "The state file: idempotency keys and enrolled credentials (overrides agent.state_file)",
    },
];

/// The `--help` text; `env` gives the current values shown next to each variable.
pub fn help(env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut s = String::from(
        "The docker-ctl edge agent: dials out to the control server and runs Docker commands\n\n\
         Usage: docker-ctl-agent [OPTIONS]\n\nOptions:\n",
    );
    let mut rows: Vec<(String, String)> = OPTS
        .iter()
        .map(|o| {
            let env_note = if o.hide_env_value {
                format!("[env: {}]", o.env)
            } else {
                format!("[env: {}={}]", o.env, env(o.env).unwrap_or_default())
            };
            (
                format!("      --{} <{}>", o.long, o.value),
                format!("{} {env_note}", o.help),
            )
        })
        .collect();
    rows.push((
        "      --check-config".into(),
        "Validate the config, print the effective values (secrets masked) and exit".into(),
    ));
    rows.push(("  -h, --help".into(), "Print help".into()));
    rows.push(("  -V, --version".into(), "Print version".into()));
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 2;
    for (l, r) in rows {
        s.push_str(&format!("{l:<width$}{r}\n"));
    }
    s
}

/// Parses `args` (without the program name); `env` looks up the fallbacks.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, UsageError> {
    let mut values: [Option<String>; 8] = Default::default();
    let mut check_config = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Parsed::Print(help(env))),
            "-V" | "--version" => {
                return Ok(Parsed::Print(format!(
                    "docker-ctl-agent {}\n",
                    protocol::VERSION
                )))
            }
            "--check-config" => {
                if check_config {
                    return Err(UsageError(
                        "the argument '--check-config' cannot be used multiple times".into(),
                    ));
                }
                check_config = true;
                continue;
            }
            _ => {}
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(UsageError(format!("unexpected argument '{arg}' found")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(i) = OPTS.iter().position(|o| o.long == name) else {
            return Err(UsageError(format!("unexpected argument '{arg}' found")));
        };
        let o = &OPTS[i];
        let value = match inline {
            Some(v) => v,
            None => match it.next() {
                Some(v) if !v.starts_with("--") => v,
                _ => {
                    return Err(UsageError(format!(
                        "a value is required for '--{} <{}>' but none was supplied",
                        o.long, o.value
                    )))
                }
            },
        };
        if values[i].is_some() {
            return Err(UsageError(format!(
                "the argument '--{} <{}>' cannot be used multiple times",
                o.long, o.value
            )));
        }
        values[i] = Some(value);
    }
    for (i, o) in OPTS.iter().enumerate() {
        if values[i].is_none() {
            values[i] = env(o.env).filter(|v| !v.is_empty());
        }
    }
    let [config, server, agent_id, token, docker_socket, enrol_token, name, state_file] = values;
    Ok(Parsed::Run(Args {
        config: config.map(PathBuf::from),
        server,
        agent_id,
        token,
        docker_socket,
        enrol_token,
        name,
        state_file: state_file.map(PathBuf::from),
        check_config,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Parsed, UsageError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        parse(args.iter().map(|s| s.to_string()), &move |k| {
            env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
        })
    }

    #[test]
    fn flags_beat_env_and_both_forms_work() {
        let Ok(Parsed::Run(a)) = run(
            &["--server", "wss://cli", "--agent-id=a1", "--check-config"],
            &[
                ("DOCKER_CTL_SERVER", "wss://env"),
                ("DOCKER_CTL_TOKEN", "t"),
                ("DOCKER_CTL_DOCKER_SOCKET", ""),
            ],
        ) else {
            panic!()
        };
        assert_eq!(a.server.as_deref(), Some("wss://cli"));
        assert_eq!(a.agent_id.as_deref(), Some("a1"));
        assert_eq!(a.token.as_deref(), Some("t"));
        assert_eq!(a.docker_socket, None, "an empty variable is unset");
        assert!(a.check_config);
        let Ok(Parsed::Run(a)) = run(
            &["--enrol-token=dctl_e_x", "--state-file", "/tmp/s.json"],
            &[
                ("DOCKER_CTL_NAME", "pi-7"),
                ("DOCKER_CTL_STATE_FILE", "/env"),
            ],
        ) else {
            panic!()
        };
        assert_eq!(a.enrol_token.as_deref(), Some("dctl_e_x"));
        assert_eq!(a.name.as_deref(), Some("pi-7"));
        assert_eq!(a.state_file, Some(PathBuf::from("/tmp/s.json")));
    }

    #[test]
    fn usage_errors_and_help() {
        assert!(run(&["--bogus"], &[]).unwrap_err().0.contains("--bogus"));
        assert!(run(&["--server"], &[])
            .unwrap_err()
            .0
            .contains("a value is required"));
        assert!(run(&["--server", "a", "--server", "b"], &[])
            .unwrap_err()
            .0
            .contains("multiple times"));
        assert!(run(&["x"], &[]).is_err());
        let Ok(Parsed::Print(h)) = run(&["--help"], &[("DOCKER_CTL_TOKEN", "sekrit")]) else {
            panic!()
        };
        assert!(h.contains("--docker-socket <ENDPOINT>") && h.contains("[env: DOCKER_CTL_TOKEN]"));
        assert!(!h.contains("sekrit"));
        let Ok(Parsed::Print(h)) = run(&["--help"], &[("DOCKER_CTL_ENROL_TOKEN", "dctl_e_sekrit")])
        else {
            panic!()
        };
        assert!(h.contains("--enrol-token <TOKEN>") && h.contains("[env: DOCKER_CTL_ENROL_TOKEN]"));
        assert!(h.contains("--state-file <FILE>") && h.contains("--name <NAME>"));
        assert!(!h.contains("dctl_e_sekrit"));
        let Ok(Parsed::Print(v)) = run(&["-V"], &[]) else {
            panic!()
        };
        assert_eq!(v, format!("docker-ctl-agent {}\n", protocol::VERSION));
    }
}
