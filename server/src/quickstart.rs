//! `docker-ctl-server quickstart`: one command from nothing to a managed local Docker.
//!
//! Starts the server on the embedded SQLite default in the data directory, creates an admin
//! token and, when the local Docker socket exists, a host `local` with the agent
//! `local-agent`, whose binary (`docker-ctl-agent`, next to this binary or on PATH) is
//! started connected to this server. Prints the web UI's address with a one-time sign-in link
//! for the admin (single use, valid for [`SIGNIN_LINK_TTL`]), the admin token and one curl
//! line that lists the containers through the agent, then serves until Ctrl-C.
//!
//! Owns: that first-run setup. Must not: be imported by anything but the binary (it is wiring).

use anyhow::Context;
use protocol::Secret;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;

use crate::api::tokens_issue;
use crate::auth::{generate_token, hash_token, AGENT_TOKEN_PREFIX};
use crate::config::{Config, QuickstartArgs};
use crate::state::AppState;
use crate::store::{ConnectionMode, Host, NewAgent, NewHost, Role};

pub const HOST_NAME: &str = "local";
pub const AGENT_ID: &str = "local-agent";
pub const ADMIN_NAME: &str = "quickstart-admin";
/// How long the printed sign-in link works.
pub const SIGNIN_LINK_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The agent binary: `explicit`, else next to this executable, else on PATH.
pub fn find_agent_binary(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_path_buf());
    }
    let name = "docker-ctl-agent";
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

pub async fn run(
    args: QuickstartArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = config_of(&args)?;
    let listen = config.listen;
    let data_dir = config.data_dir.clone();
    let _lock = crate::cluster::serve_lock(&config)?;
    let state = AppState::new(config).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let (_, admin, _) =
        tokens_issue(&state.store, ADMIN_NAME, Role::Admin, None, Vec::new()).await?;
    let admin_user = state
        .store
        .find_user(ADMIN_NAME)
        .await?
        .context("the admin user vanished")?;
    let link = state
        .accounts
        .create_link(&admin_user.id, SIGNIN_LINK_TTL)
        .await
        .map_err(|e| anyhow::anyhow!("creating the sign-in link: {}", e.body.message))?;
    let (child, host_id, note) = if args.docker_socket.exists() {
        let host = local_host(&state, &args.docker_socket).await?;
        let token = local_agent_token(&state, &host).await?;
        let env = agent_env(addr, &token, &args.docker_socket);
        let (child, note) = start_agent(args.agent_bin.as_deref(), &env);
        (child, Some(host.id), note)
    } else {
        let note = format!(
            "{} does not exist: no local host was created",
            args.docker_socket.display()
        );
        (None, None, note)
    };
    println!(
        "docker-ctl-server is listening on http://{addr} (data in {})",
        data_dir.display()
    );
    println!(
        "Web UI: http://{addr}/ - sign in as {ADMIN_NAME} with this one-time link (valid {} minutes):",
        SIGNIN_LINK_TTL.as_secs() / 60
    );
    println!("  http://{addr}/signin#link={}", link.expose());
    println!("Admin token: {}", admin.expose());
    if let Some(h) = &host_id {
        println!("List the containers through the agent:");
        println!(
            "curl -s -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' -d '{{\"operation\":\"container.list\",\"params\":{{\"all\":true}}}}' http://{addr}/api/v1/hosts/{h}/operations",
            admin.expose()
        );
    }
    if !note.is_empty() {
        println!("{note}");
    }
    println!("Press Ctrl-C to stop.");
    let result = crate::app::serve(listener, state, shutdown).await;
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    result
}

/// The server's configuration: the file and the flags, always on the embedded SQLite.
fn config_of(args: &QuickstartArgs) -> anyhow::Result<Config> {
    let mut overrides = serde_json::Map::new();
    if let Some(d) = &args.common.data_dir {
        overrides.insert("data_dir".into(), json!(d));
    }
    if let Some(l) = &args.listen {
        overrides.insert("listen".into(), json!(l));
    }
    if let Some(f) = &args.common.log_format {
        overrides.insert("log_format".into(), json!(f));
    }
    let mut config = Config::from_layers(
        args.common.config.as_deref(),
        serde_json::Value::Object(overrides),
    )?;
    if config.database_url.is_some() || args.common.database_url.is_some() {
        tracing::warn!(
            "quickstart always uses the embedded SQLite database; DATABASE_URL is ignored"
        );
    }
    config.database_url = None;
    Ok(config)
}

/// The host `local`, served by an agent (created, or switched to agent mode).
async fn local_host(state: &AppState, docker_socket: &Path) -> anyhow::Result<Host> {
    let existing = state
        .store
        .list_hosts()
        .await?
        .into_iter()
        .find(|h| h.name == HOST_NAME);
    Ok(match existing {
        Some(mut h) if h.connection_mode != ConnectionMode::Agent => {
            h.connection_mode = ConnectionMode::Agent;
            state.store.update_host(&h).await?
        }
        Some(h) => h,
        None => {
            state
                .store
                .create_host(&NewHost {
                    name: HOST_NAME.into(),
                    connection_mode: ConnectionMode::Agent,
                    docker_url: Some(format!("unix://{}", docker_socket.display())),
                    tls_ca: None,
                    tls_cert: None,
                    tls_key_enc: None,
                    tls_server_name: None,
                    labels: Default::default(),
                })
                .await?
        }
    })
}

/// A new token for the agent `local-agent` of `host` (enrolled, or its token rotated).
async fn local_agent_token(state: &AppState, host: &Host) -> anyhow::Result<Secret> {
    let token = generate_token(AGENT_TOKEN_PREFIX);
    match state.store.get_agent(AGENT_ID).await? {
        Some(a) if a.revoked_at.is_none() => {
            state
                .store
                .rotate_agent_token(AGENT_ID, &hash_token(token.expose()), None, None)
                .await?;
        }
        _ => {
            state
                .store
                .create_agent(&NewAgent {
                    agent_id: AGENT_ID.into(),
                    host_id: host.id.clone(),
                    token_hash: hash_token(token.expose()),
                    token_expires_at: None,
                    allowed_cidrs: Vec::new(),
                })
                .await?;
        }
    }
    Ok(token)
}

/// The environment the local agent starts with.
fn agent_env(
    addr: SocketAddr,
    token: &Secret,
    docker_socket: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("DOCKER_CTL_SERVER", format!("ws://{addr}")),
        ("DOCKER_CTL_AGENT_ID", AGENT_ID.to_string()),
        ("DOCKER_CTL_TOKEN", token.expose().to_string()),
        (
            "DOCKER_CTL_DOCKER_SOCKET",
            format!("unix://{}", docker_socket.display()),
        ),
    ]
}

/// Starts the agent binary with `env`; or says how to start it by hand.
fn start_agent(
    explicit: Option<&Path>,
    env: &[(&'static str, String)],
) -> (Option<std::process::Child>, String) {
    let Some(bin) = find_agent_binary(explicit) else {
        let cmdline: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let note = format!(
            "docker-ctl-agent was not found next to this binary or on PATH; build it \
             (cargo build --release -p agent-lite) and start it with:\n  {} docker-ctl-agent",
            cmdline.join(" ")
        );
        return (None, note);
    };
    let mut cmd = std::process::Command::new(&bin);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null());
    match cmd.spawn() {
        Ok(c) => {
            tracing::info!(bin = %bin.display(), pid = c.id(), "started the local agent");
            (Some(c), String::new())
        }
        Err(e) => (None, format!("could not start {}: {e}", bin.display())),
    }
}
