//! Release packaging: the agent tarball installs offline into a temporary root, and the
//! installed agent validates its configuration.

use docker_ctl_tests::repo_root;
use std::process::Command;

#[test]
fn agent_tarball_installs_offline_and_the_installed_agent_checks_its_config() {
    let out = tempfile::tempdir().unwrap();
    let target = "x86_64-unknown-linux-musl";
    let st = Command::new("bash")
        .arg(repo_root().join("scripts/dist.sh"))
        .args(["--targets", target, "--no-server", "--out"])
        .arg(out.path())
        // cargo test sets CARGO_* variables that would make the nested build start over.
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| {
            !k.starts_with("CARGO_") || k == "CARGO_HOME" || k == "CARGO_TARGET_DIR"
        }))
        .env_remove("CARGO")
        .env_remove("OUT_DIR")
        .env_remove("RUSTC_BOOTSTRAP")
        .status()
        .expect("run scripts/dist.sh");
    assert!(st.success(), "scripts/dist.sh failed");
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("docker-ctl-agent-{version}-{target}");
    let tarball = out.path().join(format!("{name}.tar.gz"));
    assert!(tarball.is_file(), "{} missing", tarball.display());
    let sums = std::fs::read_to_string(out.path().join("SHA256SUMS")).unwrap();
    assert!(
        sums.contains(&format!("{name}.tar.gz")),
        "SHA256SUMS lists the tarball: {sums}"
    );

    let x = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap();
    assert!(st.success());
    let dir = x.path().join(&name);
    for f in [
        "docker-ctl-agent",
        "agent.yaml.example",
        "docker-ctl-agent.service",
        "docker-ctl-agent.init",
        "install.sh",
        "SHA256SUMS",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing from the tarball");
    }

    // Install into a temporary root, with no network and a systemd layout.
    let root = tempfile::tempdir().unwrap();
    let token_file = x.path().join("token");
    std::fs::write(&token_file, "e2e-secret-token-value").unwrap();
    let out = Command::new("sh")
        .arg(dir.join("install.sh"))
        .arg("--root")
        .arg(root.path())
        .args([
            "--init",
            "systemd",
            "--server",
            "wss://ctl.example.test",
            "--agent-id",
            "edge-7",
            "--token-file",
        ])
        .arg(&token_file)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "install.sh failed: {log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("checksums verified"), "{log}");

    let bin = root.path().join("usr/local/bin/docker-ctl-agent");
    let conf = root.path().join("etc/docker-ctl/agent.yaml");
    let envf = root.path().join("etc/docker-ctl/agent.env");
    assert!(root
        .path()
        .join("etc/systemd/system/docker-ctl-agent.service")
        .is_file());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&envf).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let env_text = std::fs::read_to_string(&envf).unwrap();
    assert!(
        env_text.contains("AGENT_ID=edge-7")
            && env_text.contains("AGENT_AUTH_TOKEN=e2e-secret-token-value")
    );

    // The installed agent reads the installed config with the env file's values.
    let check = Command::new(&bin)
        .arg("--config")
        .arg(&conf)
        .arg("--check-config")
        .env_clear()
        .env("AGENT_ID", "edge-7")
        .env("AGENT_AUTH_TOKEN", "e2e-secret-token-value")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "--check-config failed: {text}");
    assert!(
        text.contains("wss://ctl.example.test"),
        "effective server url shown: {text}"
    );
    assert!(text.contains("edge-7"), "agent id shown: {text}");
    assert!(
        !text.contains("e2e-secret-token-value"),
        "the token must be masked: {text}"
    );

    // Without the token variable the config is invalid, and the error names the variable.
    let bad = Command::new(&bin)
        .arg("--config")
        .arg(&conf)
        .arg("--check-config")
        .env_clear()
        .env("AGENT_ID", "x")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("AGENT_AUTH_TOKEN"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Re-running keeps the existing config.
    let again = Command::new("sh")
        .arg(dir.join("install.sh"))
        .arg("--root")
        .arg(root.path())
        .args(["--init", "none"])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("kept existing"));
}
