//! `docker-ctl-agent`: loads the config (see `agent_lite::config` for the precedence of
//! flags, environment and file), installs the logger and signal handling, and runs the
//! agent until SIGTERM or SIGINT.

use agent_lite::cli::{Args, Parsed};
use agent_lite::config::{check_permissions, Config, Overrides, ValidConfig};
use agent_lite::Shutdown;
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_CONFIG: &str = "/etc/docker-ctl/agent.yaml";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn load(args: &Args) -> Result<(ValidConfig, Option<PathBuf>), agent_lite::config::ConfigError> {
    let env = |k: &str| std::env::var(k).ok();
    let (mut config, path) = match &args.config {
        Some(p) => (Config::load(p, &env)?, Some(p.clone())),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            if p.exists() {
                (Config::load(&p, &env)?, Some(p))
            } else {
                (Config::empty(), None)
            }
        }
    };
    config.apply(&Overrides {
        server: args.server.clone(),
        agent_id: args.agent_id.clone(),
        token: args.token.clone().map(Into::into),
        docker_socket: args.docker_socket.clone(),
        // No flag for this one: a key on the command line shows in the process list.
        signing_key: env("DOCKER_CTL_SIGNING_KEY")
            .filter(|v| !v.is_empty())
            .map(Into::into),
        state_file: args.state_file.clone(),
        enrol_token: args.enrol_token.clone().map(Into::into),
        name: args.name.clone(),
    });
    Ok((config.into_valid()?, path))
}

fn main() -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    let args = match agent_lite::cli::parse(std::env::args().skip(1), &env) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (valid, path) = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("docker-ctl-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        match &path {
            Some(p) => println!("# config file: {}", p.display()),
            None => println!("# no config file; flags, environment and defaults only"),
        }
        print!("{}", valid.config.render());
        if let Some(w) = path.as_deref().and_then(check_permissions) {
            println!("# warning: {w}");
        }
        println!("# config OK");
        return ExitCode::SUCCESS;
    }
    let config = &valid.config;
    if let Err(e) = agent_lite::log::init(
        &config.logging.level,
        config.logging.file.as_deref(),
        &[
            config.agent.auth_token.expose(),
            config.agent.signing_key.as_ref().map_or("", |k| k.expose()),
            config.agent.enrol_token.as_ref().map_or("", |k| k.expose()),
        ],
    ) {
        let file = config
            .logging
            .file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        eprintln!("docker-ctl-agent: cannot open the log file {file}: {e}");
        return ExitCode::from(2);
    }
    match config.agent.enrol_token {
        Some(_) => log::info!("docker-ctl-agent {VERSION} starting with an enrolment token"),
        None => log::info!("docker-ctl-agent {VERSION} starting as {}", config.agent.id),
    }
    if let Some(w) = path.as_deref().and_then(check_permissions) {
        log::warn!("{w}");
    }
    let shutdown = Shutdown::new();
    if let Err(e) = watch_signals(&shutdown) {
        log::error!("{e}");
        return ExitCode::FAILURE;
    }
    match agent_lite::run_valid(valid, shutdown) {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e @ agent_lite::Error::EnrolRefused(_)) => {
            log::error!("{e}");
            // The service manager does not restart a refused enrolment (the unit's
            // RestartPreventExitStatus): the token will not become valid by itself.
            ExitCode::from(agent_lite::error::EXIT_ENROL_REFUSED)
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT trigger `shutdown` (from a small thread of their own).
fn watch_signals(shutdown: &Shutdown) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let sd = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("received signal {sig}; shutting down");
                sd.trigger();
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}
