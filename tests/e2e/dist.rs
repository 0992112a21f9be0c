//! Release packaging: the agent tarball, built with a version and signed with a release key,
//! carries a signature that both our verifier and `minisign` accept; it installs offline into
//! a temporary root with the release public key, and the installed agent validates its
//! configuration.

use docker_ctl_tests::{bin, repo_root};
use protocol::minisign::{PublicKey, Signature, Verifier};
use std::path::Path;
use std::process::Command;

/// The version the tarball is built with (`DOCKER_CTL_VERSION`).
const VERSION: &str = "0.1.0-dist.1";

fn keygen(dir: &Path) {
    let out = Command::new(bin("docker-ctl-server"))
        .args(["release", "keygen", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "release keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks the signature with our streaming verifier and with `minisign` (which must be
/// installed), and that it names the version, target and file.
fn check_signature(dir: &Path, public: &Path, target: &str) {
    let key = PublicKey::parse(&std::fs::read(public).unwrap()).unwrap();
    let sig =
        Signature::parse(&std::fs::read(dir.join("docker-ctl-agent.minisig")).unwrap()).unwrap();
    let mut v = Verifier::new(&key, &sig).expect("signed with the release key");
    let body = std::fs::read(dir.join("docker-ctl-agent")).unwrap();
    assert!(body.len() > 100_000, "{} bytes", body.len());
    for chunk in body.chunks(64 * 1024) {
        v.update(chunk);
    }
    let comment = v.finish().expect("the signature matches the binary");
    comment.expect_field("version", VERSION).unwrap();
    comment.expect_field("target", target).unwrap();
    comment.expect_field("file", "docker-ctl-agent").unwrap();
    assert!(comment.field("timestamp").is_some(), "{comment:?}");
    let mini = Command::new("minisign")
        .args(["-V", "-H", "-p"])
        .arg(public)
        .arg("-m")
        .arg(dir.join("docker-ctl-agent"))
        .output()
        .expect("minisign must be installed (scripts/services.sh installs it)");
    assert!(
        mini.status.success(),
        "minisign -V: {}",
        String::from_utf8_lossy(&mini.stderr)
    );
}

fn install(dir: &Path, root: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new("sh")
        .arg(dir.join("install.sh"))
        .arg("--root")
        .arg(root)
        .args(["--init", "none"])
        .args(extra)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn agent_tarball_installs_offline_and_the_installed_agent_checks_its_config() {
    let out = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    keygen(keys.path());
    let public = keys.path().join("release.pub");
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
        .env_remove("DOCKER_CTL_RELEASE_PUB")
        .env("DOCKER_CTL_VERSION", VERSION)
        .env("DOCKER_CTL_RELEASE_KEY", keys.path().join("release.key"))
        .env("DOCKER_CTL_SIGNER", bin("docker-ctl-server"))
        .status()
        .expect("run scripts/dist.sh");
    assert!(st.success(), "scripts/dist.sh failed");
    let name = format!("docker-ctl-agent-{VERSION}-{target}");
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
        "docker-ctl-agent.minisig",
        "release.pub",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing from the tarball");
    }
    let inner_sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert!(
        inner_sums.contains("docker-ctl-agent.minisig") && inner_sums.contains("release.pub"),
        "{inner_sums}"
    );
    assert_eq!(
        std::fs::read(dir.join("release.pub")).unwrap(),
        std::fs::read(&public).unwrap()
    );
    check_signature(&dir, &public, target);

    // A public key of another key pair: install.sh refuses the binary and installs nothing.
    let other = tempfile::tempdir().unwrap();
    keygen(other.path());
    let refused = tempfile::tempdir().unwrap();
    let other_pub = other.path().join("release.pub");
    let (ok, log) = install(
        &dir,
        refused.path(),
        &["--release-pub", other_pub.to_str().unwrap()],
    );
    assert!(!ok, "{log}");
    assert!(log.contains("not signed by the release key"), "{log}");
    assert!(!refused
        .path()
        .join("usr/local/bin/docker-ctl-agent")
        .exists());
    assert!(!refused.path().join("etc/docker-ctl/release.pub").exists());
    let junk = other.path().join("junk.pub");
    std::fs::write(&junk, "not a key\n").unwrap();
    let (ok, log) = install(
        &dir,
        refused.path(),
        &["--release-pub", junk.to_str().unwrap()],
    );
    assert!(!ok && log.contains("is not a minisign public key"), "{log}");

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
    assert!(log.contains("signature verified"), "{log}");

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
    // The tarball's public key, for the agent's update.public_key.
    let installed_pub = root.path().join("etc/docker-ctl/release.pub");
    assert_eq!(
        std::fs::read(&installed_pub).unwrap(),
        std::fs::read(&public).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&installed_pub)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
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

    // Re-running keeps the existing config and public key; --release-pub replaces the key
    // (here with the same one, which still verifies the binary).
    let (ok, log) = install(&dir, root.path(), &[]);
    assert!(ok, "{log}");
    assert!(
        log.contains("release.pub (pass --release-pub FILE to replace it)"),
        "{log}"
    );
    let (ok, log) = install(
        &dir,
        root.path(),
        &["--release-pub", public.to_str().unwrap()],
    );
    assert!(
        ok && log.contains("installed") && log.contains("signature verified"),
        "{log}"
    );
}
