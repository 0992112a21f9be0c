//! Release signing as a real process, cross-checked with the real `minisign` tool: what
//! `release sign` writes, `minisign -V` accepts; what `minisign -S` writes with our key,
//! our verifier accepts; a key made by `minisign -G -W` signs here. `minisign` must be
//! installed (scripts/services.sh installs it): these tests fail without it.

use protocol::minisign::{MinisignError, PublicKey, Signature, Verifier};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_docker-ctl-server");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("start the command");
    eprintln!(
        "{:?}: {}\n{}{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn server(args: &[&str]) -> Output {
    run(Command::new(BIN)
        .args(args)
        .env_remove("DOCKER_CTL_RELEASE_KEY"))
}

/// The real minisign; a missing tool fails the test rather than skipping it.
fn minisign(args: &[&str]) -> Output {
    match Command::new("minisign").arg("-v").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "minisign is not installed: apt-get install minisign (scripts/services.sh installs it)"
        ),
    }
    run(Command::new("minisign").args(args))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 2 MB pseudo-random "binary".
fn binary(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let body: Vec<u8> = (0..2_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let path = dir.join("docker-ctl-agent");
    std::fs::write(&path, &body).unwrap();
    (path, body)
}

fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let out = server(&["release", "keygen", "--out", s(dir)]);
    assert!(out.status.success());
    (dir.join("release.key"), dir.join("release.pub"))
}

/// Our streaming verifier over the file on disk, in 64 KiB chunks.
fn our_verify(public: &Path, file: &Path, minisig: &Path) -> Result<String, MinisignError> {
    let key = PublicKey::parse(&std::fs::read(public).unwrap())?;
    let sig = Signature::parse(&std::fs::read(minisig).unwrap())?;
    let mut v = Verifier::new(&key, &sig)?;
    let body = std::fs::read(file).unwrap();
    for chunk in body.chunks(64 * 1024) {
        v.update(chunk);
    }
    Ok(v.finish()?.as_str().to_owned())
}

#[test]
fn minisign_verifies_what_release_sign_writes_and_refuses_it_when_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&dir.path().join("keys"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (file, mut body) = binary(dir.path());
    let comment = "timestamp:1700000000 file:docker-ctl-agent version:1.2.3 target:aarch64-unknown-linux-musl";
    let out = server(&[
        "release",
        "sign",
        "--key",
        s(&key),
        "--file",
        s(&file),
        "--trusted-comment",
        comment,
    ]);
    assert!(out.status.success());
    let minisig = dir.path().join("docker-ctl-agent.minisig");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        s(&minisig),
        "prints the signature's path"
    );

    // -H: minisign itself refuses anything but a prehashed signature.
    let ok = minisign(&["-V", "-H", "-m", s(&file), "-p", s(&public)]);
    assert!(ok.status.success(), "minisign -V refused our signature");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains(&format!("Trusted comment: {comment}")),
        "minisign shows our trusted comment"
    );
    assert_eq!(our_verify(&public, &file, &minisig).unwrap(), comment);

    // One flipped bit: both refuse.
    body[1_234_567] ^= 0x10;
    std::fs::write(&file, &body).unwrap();
    assert!(!minisign(&["-V", "-m", s(&file), "-p", s(&public)])
        .status
        .success());
    assert_eq!(
        our_verify(&public, &file, &minisig),
        Err(MinisignError::FileMismatch)
    );

    // Another key pair's public key: both refuse, naming the key ids.
    body[1_234_567] ^= 0x10;
    std::fs::write(&file, &body).unwrap();
    let (_, other_public) = keygen(&dir.path().join("other"));
    let refused = minisign(&["-V", "-m", s(&file), "-p", s(&other_public)]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("key id"));
    assert!(matches!(
        our_verify(&other_public, &file, &minisig),
        Err(MinisignError::KeyIdMismatch { .. })
    ));
}

#[test]
fn our_verifier_accepts_what_minisign_signs_with_our_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let (file, _) = binary(dir.path());
    let minisig = dir.path().join("by-minisign.minisig");
    // Our key file is unencrypted: minisign reads it without asking for a password.
    let out = minisign(&[
        "-S",
        "-s",
        s(&key),
        "-m",
        s(&file),
        "-x",
        s(&minisig),
        "-t",
        "version:2.0.0 target:x86_64-unknown-linux-musl",
    ]);
    assert!(out.status.success(), "minisign -S could not use our key");
    let comment = our_verify(&public, &file, &minisig).unwrap();
    assert_eq!(comment, "version:2.0.0 target:x86_64-unknown-linux-musl");

    // minisign's default comment, and a legacy signature, which we refuse by name.
    let out = minisign(&["-S", "-s", s(&key), "-m", s(&file), "-x", s(&minisig)]);
    assert!(out.status.success());
    let comment = our_verify(&public, &file, &minisig).unwrap();
    assert!(comment.contains("file:docker-ctl-agent"), "{comment}");
    let out = minisign(&["-S", "-l", "-s", s(&key), "-m", s(&file), "-x", s(&minisig)]);
    assert!(out.status.success());
    assert_eq!(
        our_verify(&public, &file, &minisig),
        Err(MinisignError::LegacySignature)
    );
}

#[test]
fn release_sign_uses_a_key_made_by_minisign() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mini.key");
    let public = dir.path().join("mini.pub");
    let out = minisign(&["-G", "-W", "-p", s(&public), "-s", s(&key)]);
    assert!(out.status.success());
    let (file, _) = binary(dir.path());
    let out = run(Command::new(BIN)
        .args(["release", "sign", "--file", s(&file)])
        .env("DOCKER_CTL_RELEASE_KEY", &key));
    assert!(
        out.status.success(),
        "the key comes from DOCKER_CTL_RELEASE_KEY"
    );
    assert!(minisign(&["-V", "-H", "-m", s(&file), "-p", s(&public)])
        .status
        .success());
    let comment = our_verify(&public, &file, &dir.path().join("docker-ctl-agent.minisig")).unwrap();
    assert!(
        comment.ends_with("\tfile:docker-ctl-agent\thashed"),
        "{comment}"
    );
}

#[test]
fn bad_keys_and_comments_are_clear_errors_that_never_show_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let (file, _) = binary(dir.path());
    let secret_line = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();

    let again = server(&["release", "keygen", "--out", s(dir.path())]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    for (key_arg, comment, want) in [
        (s(&public), "c", "not a minisign secret key"),
        ("/nonexistent/release.key", "c", "/nonexistent/release.key"),
        (s(&key), "two\nlines", "invalid trusted comment"),
    ] {
        let out = server(&[
            "release",
            "sign",
            "--key",
            key_arg,
            "--file",
            s(&file),
            "--trusted-comment",
            comment,
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        assert!(!err.contains(&secret_line[60..100]), "{err}");
    }
    assert!(!dir.path().join("docker-ctl-agent.minisig").exists());
}

#[test]
fn version_prints_the_build_version() {
    let out = server(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("docker-ctl-server {}", protocol::VERSION)
    );
}
