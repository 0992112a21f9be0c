//! The `docker-ctl-agent` binary's config handling: `--check-config`, `${VAR}` expansion,
//! unknown keys, precedence CLI > env > file, masked secrets, the log file's mode.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_docker-ctl-agent");
const SEED: &str = "/work/shared/fixtures/seed-agent.yaml";

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for k in [
        "DOCKER_CTL_CONFIG",
        "DOCKER_CTL_SERVER",
        "DOCKER_CTL_AGENT_ID",
        "DOCKER_CTL_TOKEN",
        "DOCKER_CTL_DOCKER_SOCKET",
        "DOCKER_CTL_SIGNING_KEY",
        "DOCKER_CTL_STATE_FILE",
        "AGENT_ID",
        "AGENT_AUTH_TOKEN",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run docker-ctl-agent")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn seed_config_checks_with_secrets_masked() {
    let o = agent(
        &["--config", SEED, "--check-config"],
        &[
            ("AGENT_ID", "agent-prod-01"),
            ("AGENT_AUTH_TOKEN", "seed-token-abcdef"),
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("agent.id: agent-prod-01"), "{out}");
    assert!(out.contains("agent.auth_token: ***"), "{out}");
    assert!(
        out.contains("server.url: wss://control-platform.com"),
        "{out}"
    );
    assert!(
        out.contains("logging.file: /var/log/docker-ctl-agent.log"),
        "{out}"
    );
    assert!(
        !out.contains("seed-token-abcdef"),
        "the token leaked: {out}"
    );
}

#[test]
fn unset_variable_and_unknown_key_fail_clearly() {
    let o = agent(&["--config", SEED, "--check-config"], &[("AGENT_ID", "a")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("AGENT_AUTH_TOKEN"), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("agent.yaml");
    std::fs::write(&p, "server:\n  url: wss://x.example\n  verfy_ssl: true\nagent:\n  id: a\n  auth_token: t0ken-xyz\n").unwrap();
    let o = agent(&["--config", p.to_str().unwrap(), "--check-config"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("server.verfy_ssl"), "{}", text(&o));

    std::fs::write(
        &p,
        "server:\n  url: http://x.example\nagent:\n  id: a\n  auth_token: t0ken-xyz\n",
    )
    .unwrap();
    let o = agent(&["--config", p.to_str().unwrap(), "--check-config"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("wss://"), "{}", text(&o));
}

#[test]
fn precedence_is_cli_then_env_then_file_and_loose_modes_warn() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("agent.yaml");
    std::fs::write(&p, "server:\n  url: wss://file.example\nagent:\n  id: from-file\n  auth_token: file-token-1\ndocker:\n  socket: unix:///file.sock\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = p.to_str().unwrap();

    let o = agent(&["--check-config"], &[("DOCKER_CTL_CONFIG", path)]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("server.url: wss://file.example") && out.contains("agent.id: from-file"),
        "{out}"
    );
    assert!(
        out.contains("chmod 600"),
        "a group/other-readable config must warn: {out}"
    );

    let env = [
        ("DOCKER_CTL_CONFIG", path),
        ("DOCKER_CTL_SERVER", "wss://env.example"),
        ("DOCKER_CTL_AGENT_ID", "from-env"),
        ("DOCKER_CTL_DOCKER_SOCKET", "tcp://127.0.0.1:2375"),
    ];
    let out = text(&agent(&["--check-config"], &env));
    assert!(
        out.contains("server.url: wss://env.example") && out.contains("agent.id: from-env"),
        "{out}"
    );
    assert!(out.contains("docker.socket: tcp://127.0.0.1:2375"), "{out}");

    let out = text(&agent(
        &[
            "--check-config",
            "--server",
            "wss://cli.example",
            "--agent-id",
            "from-cli",
            "--token",
            "cli-token-9",
        ],
        &env,
    ));
    assert!(
        out.contains("server.url: wss://cli.example") && out.contains("agent.id: from-cli"),
        "{out}"
    );
    assert!(
        !out.contains("cli-token-9") && !out.contains("file-token-1"),
        "{out}"
    );

    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = text(&agent(&["--check-config"], &[("DOCKER_CTL_CONFIG", path)]));
    assert!(!out.contains("chmod 600"), "{out}");
}

#[test]
fn signing_key_and_state_file_from_the_environment_are_masked_and_checked() {
    let key = "0f".repeat(32);
    let env = [
        ("DOCKER_CTL_SERVER", "wss://env.example"),
        ("DOCKER_CTL_AGENT_ID", "a1"),
        ("DOCKER_CTL_TOKEN", "tok-env-1"),
        ("DOCKER_CTL_SIGNING_KEY", key.as_str()),
        (
            "DOCKER_CTL_STATE_FILE",
            "/tmp/docker-ctl-cli-test/state.json",
        ),
    ];
    let o = agent(&["--check-config"], &env);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("agent.signing_key: ***"), "{out}");
    assert!(!out.contains(&key), "the signing key leaked: {out}");
    assert!(
        out.contains("agent.state_file: /tmp/docker-ctl-cli-test/state.json"),
        "{out}"
    );
    let mut bad = env;
    bad[3] = ("DOCKER_CTL_SIGNING_KEY", "not-a-key!");
    let o = agent(&["--check-config"], &bad);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("agent.signing_key"), "{out}");
    assert!(!out.contains("not-a-key!"), "{out}");
    let o = agent(&["--check-config"], &env[..3]);
    let out = text(&o);
    assert!(
        out.contains("agent.signing_key: (none") && out.contains("agent.state_file: (default"),
        "{out}"
    );
}

#[test]
fn log_file_is_private_and_never_holds_the_token() {
    common::docker::require_docker();
    let server = common::ws_server::TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  url: {}\nagent:\n  id: log-agent\n  auth_token: ${{LOG_TEST_TOKEN}}\n  state_file: {}\nlogging:\n  level: debug\n  file: {}\n",
            server.url(),
            dir.path().join("state.json").display(),
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .env("LOG_TEST_TOKEN", "log-secret-token-42")
        .spawn()
        .unwrap();
    let mut conn = server.next_conn(Duration::from_secs(10));
    assert_eq!(
        conn.accept_auth(1).auth_token.expose(),
        "log-secret-token-42"
    );
    conn.expect(Duration::from_secs(10), "heartbeat", |e| {
        matches!(e.message, protocol::Message::Heartbeat(_))
    });
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success());
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "log file mode {mode:o}");
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("authenticated") && logs.contains("DEBUG"),
        "{logs}"
    );
    assert!(
        !logs.contains("log-secret-token-42"),
        "the token leaked into the log file:\n{logs}"
    );
}
