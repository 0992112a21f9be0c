//! `docker-ctl-agent`: loads the config (see `agent_lite::config` for the precedence of
//! flags, environment and file), installs the logger and signal handling, and runs the
//! agent until SIGTERM or SIGINT, or re-executes it after a self-update or a rollback.

use agent_lite::cli::{Args, Parsed};
use agent_lite::config::{check_permissions, Config, Overrides, ValidConfig};
use agent_lite::update::swap::Relaunch;
use agent_lite::update::{self as update, Start};
use agent_lite::Shutdown;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// dlmalloc instead of musl's allocator. musl's (mallocng) maps a group of slots for a size
/// class and unmaps it as soon as its last slot is free, so every command answer and passthrough
/// answer of a few KB cost `mmap`/`munmap` pairs, page faults and TLB shootdowns: a fifth of
/// the agent's CPU per `container.list` command went to them. dlmalloc keeps freed memory for
/// the next allocation and gives the top of its heap back above 2 MiB. Measured in
/// `docs/benchmarks.md` ("Latency overhead"); it costs 13 KB of the aarch64 binary.
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

const DEFAULT_CONFIG: &str = "/etc/docker-ctl/agent.yaml";

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
    // Before anything can replace the binary: afterwards /proc/self/exe names the old file.
    let relaunch = Relaunch::capture();
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
    // Before the config: a release that cannot even load it counts its starts too.
    let start = if args.check_config {
        Start::Normal
    } else {
        update::at_start(&relaunch)
    };
    if start == Start::Relaunch {
        return re_execute(&relaunch);
    }
    let (valid, path) = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("docker-ctl-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return check_config(&valid, path.as_deref());
    }
    if let Err(code) = init_logging(&valid.config) {
        return code;
    }
    let (version, target) = (protocol::VERSION, protocol::version::TARGET);
    match &valid.config.agent.enrol_token {
        Some(_) => {
            log::info!("docker-ctl-agent {version} ({target}) starting with an enrolment token")
        }
        None => log::info!(
            "docker-ctl-agent {version} ({target}) starting as {}",
            valid.config.agent.id
        ),
    }
    if let Some(w) = path.as_deref().and_then(check_permissions) {
        log::warn!("{w}");
    }
    #[cfg(feature = "fault-exit-at-start")]
    {
        // A release that dies at start, for the rollback tests; never in a release build.
        log::error!("built with fault-exit-at-start: exiting");
        return ExitCode::from(3);
    }
    #[allow(unreachable_code)]
    run(valid, relaunch, start)
}

/// Replaces this process with its binary; returns only when that failed.
fn re_execute(relaunch: &Relaunch) -> ExitCode {
    let binary = relaunch.binary.as_deref().unwrap_or(Path::new("?"));
    log::info!("re-executing {}", binary.display());
    eprintln!("docker-ctl-agent: re-executing {}", binary.display());
    let e = relaunch.exec();
    log::error!("cannot re-execute the agent: {e}");
    eprintln!("docker-ctl-agent: cannot re-execute the agent: {e}");
    ExitCode::FAILURE
}

fn check_config(valid: &ValidConfig, path: Option<&Path>) -> ExitCode {
    match path {
        Some(p) => println!("# config file: {}", p.display()),
        None => println!("# no config file; flags, environment and defaults only"),
    }
    print!("{}", valid.config.render());
    if let Some(w) = path.and_then(check_permissions) {
        println!("# warning: {w}");
    }
    println!("# config OK");
    ExitCode::SUCCESS
}

fn init_logging(config: &Config) -> Result<(), ExitCode> {
    let secrets = [
        config.agent.auth_token.expose(),
        config.agent.signing_key.as_ref().map_or("", |k| k.expose()),
        config.agent.enrol_token.as_ref().map_or("", |k| k.expose()),
    ];
    agent_lite::log::init(
        &config.logging.level,
        config.logging.file.as_deref(),
        &secrets,
    )
    .map_err(|e| {
        let file = config
            .logging
            .file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        eprintln!("docker-ctl-agent: cannot open the log file {file}: {e}");
        ExitCode::from(2)
    })
}

/// Signal handling, then the agent until SIGTERM or SIGINT, or until an update or a
/// rollback asks to start again.
fn run(valid: ValidConfig, relaunch: Relaunch, start: Start) -> ExitCode {
    let shutdown = Shutdown::new();
    if let Err(e) = watch_signals(&shutdown) {
        log::error!("{e}");
        return ExitCode::FAILURE;
    }
    match agent_lite::run_started(valid, shutdown.clone(), relaunch.clone(), start) {
        Ok(()) if shutdown.restart_requested() => re_execute(&relaunch),
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
