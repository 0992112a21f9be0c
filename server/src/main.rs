//! `docker-ctl-server`: `serve`, `token create`, `user create`, `audit verify`, `quickstart`,
//! `release keygen|sign`.

use anyhow::Context;
use clap::Parser;
use server::config::{
    AuditCommand, Cli, Command, Config, LogFormat, ReleaseCommand, TokenCommand, UserCommand,
    UserCreateArgs,
};
use server::store::Store;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}

async fn main_inner(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(&args)?;
            init_logging(config.log_format);
            server::run(config, shutdown_signal()).await
        }
        Command::Token(TokenCommand::Create(args)) => {
            let config = Config::load_common(&args.common)?;
            init_logging(config.log_format);
            let store = Store::open(config.database_url(), &config.data_dir)
                .await
                .context("opening the database")?;
            let (_, token, _) = server::api::tokens_issue(
                &store,
                &args.name,
                args.role,
                args.expires_in,
                Vec::new(),
            )
            .await?;
            store.close().await;
            println!("{}", token.expose());
            Ok(())
        }
        Command::User(UserCommand::Create(args)) => user_create(args).await,
        Command::Audit(AuditCommand::Verify(args)) => {
            let config = Config::load_common(&args.common)?;
            init_logging(config.log_format);
            let store = Store::open(config.database_url(), &config.data_dir)
                .await
                .context("opening the database")?;
            let report = store.verify_audit_chain().await;
            store.close().await;
            let r = report.context("reading the audit log")?;
            println!(
                "verified {} entries ({} older entries without a hash); head seq {} hash {}",
                r.verified,
                r.unchained,
                r.head_seq,
                if r.head_hash.is_empty() {
                    "-"
                } else {
                    &r.head_hash
                }
            );
            for id in &r.changed {
                println!("CHANGED entry {id}");
            }
            for id in &r.deleted {
                println!("DELETED entry {id}");
            }
            for p in &r.problems {
                println!("PROBLEM {p}");
            }
            if r.ok() {
                println!("audit log OK");
                Ok(())
            } else {
                println!("audit log TAMPERED");
                std::process::exit(1)
            }
        }
        Command::Quickstart(args) => {
            init_logging(args.common.log_format.unwrap_or_default());
            server::quickstart::run(args, shutdown_signal()).await
        }
        Command::Release(cmd) => release_command(cmd),
    }
}

/// `user create`: the password comes from standard input, never from the command line.
async fn user_create(args: UserCreateArgs) -> anyhow::Result<()> {
    let config = Config::load_common(&args.common)?;
    init_logging(config.log_format);
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let p = line.trim_end_matches(['\r', '\n']).to_string();
        anyhow::ensure!(!p.is_empty(), "standard input held no password");
        Some(p)
    } else {
        None
    };
    let store = Store::open(config.database_url(), &config.data_dir)
        .await
        .context("opening the database")?;
    let result = server::api::create_user(&store, &args.name, args.role, password).await;
    store.close().await;
    let user = result.map_err(|e| anyhow::anyhow!("{}", e.body.message))?;
    println!("created user {} ({})", user.name, user.role.as_str());
    Ok(())
}

/// `release keygen` and `release sign`: files only, no database, no logging.
fn release_command(cmd: ReleaseCommand) -> anyhow::Result<()> {
    use server::releases;
    match cmd {
        ReleaseCommand::Keygen(args) => {
            let (key, key_path, pub_path) = releases::write_key_pair(&args.out, args.force)?;
            println!("key id {}", key.key_id());
            println!("secret key: {} (keep it offline)", key_path.display());
            println!("public key: {}", pub_path.display());
            println!("{}", key.public_key().to_base64());
        }
        ReleaseCommand::Sign(args) => {
            let key = releases::SecretKey::read(&args.key)?;
            let (path, _) = releases::sign_file(&key, &args.file, args.trusted_comment.as_deref())
                .with_context(|| format!("signing {}", args.file.display()))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_inner(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            tracing::error!(error = format!("{e:#}"), "fatal");
            std::process::ExitCode::FAILURE
        }
    }
}
