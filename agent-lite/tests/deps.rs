//! The agent's dependency tree holds no async runtime (`cargo tree -p agent-lite -e normal`).

#[test]
fn no_async_runtime_in_the_agents_dependency_tree() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "agent-lite",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"tungstenite") && crates.contains(&"rustls"),
        "unexpected tree:\n{tree}"
    );
    let forbidden = [
        "tokio",
        "async-std",
        "smol",
        "async-io",
        "mio",
        "futures-executor",
        "hyper",
        "reqwest",
        "openssl",
        "openssl-sys",
    ];
    let found: Vec<&&str> = crates.iter().filter(|c| forbidden.contains(c)).collect();
    assert!(
        found.is_empty(),
        "the agent must stay synchronous and rustls-only, found {found:?}"
    );
}
