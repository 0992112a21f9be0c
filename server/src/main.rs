//! `docker-ctl-server`: `serve`, `token create`, `enrol-token create|list|revoke`,
//! `user create`, `audit verify`, `quickstart`, `release keygen|sign`.

use anyhow::Context;
use clap::Parser;
use server::config::{
    AuditCommand, Cli, Command, CommonArgs, Config, EnrolTokenCommand, EnrolTokenCreateArgs,
    LogFormat, ReleaseCommand, TokenCommand, UserCommand, UserCreateArgs,
};
use server::store::{NewAudit, Store};
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
        Command::EnrolToken(cmd) => enrol_token_command(cmd).await,
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

/// Opens the store of `serve` (beside a running server too: SQLite waits for its writer).
async fn open_store(common: &CommonArgs) -> anyhow::Result<(Config, Store)> {
    let config = Config::load_common(common)?;
    init_logging(config.log_format);
    let store = Store::open(config.database_url(), &config.data_dir)
        .await
        .context("opening the database")?;
    Ok((config, store))
}

/// An action of the command line, for the audit log.
async fn audit_cli(store: &Store, action: &str, target: &str, ok: bool, detail: serde_json::Value) {
    let entry = NewAudit {
        actor_kind: "system".into(),
        actor: "cli".into(),
        action: action.into(),
        target: Some(target.into()),
        outcome: if ok { "success" } else { "error" }.into(),
        detail: Some(detail),
        ..Default::default()
    };
    if let Err(e) = store.add_audit(&entry).await {
        tracing::error!(error = %e, "could not write the audit log");
    }
}

/// `enrol-token create|list|revoke`.
async fn enrol_token_command(cmd: EnrolTokenCommand) -> anyhow::Result<()> {
    use server::api::enrolment::{audit_detail, token_json};
    match cmd {
        EnrolTokenCommand::Create(args) => enrol_token_create(args).await,
        EnrolTokenCommand::List(args) => {
            let (_, store) = open_store(&args.common).await?;
            let tokens = store.list_enrolment_tokens().await;
            store.close().await;
            for t in tokens.context("reading the enrolment tokens")? {
                println!("{}", token_json(&t));
            }
            Ok(())
        }
        EnrolTokenCommand::Revoke(args) => {
            let (_, store) = open_store(&args.common).await?;
            let result = store.revoke_enrolment_token(&args.id).await;
            let detail = match &result {
                Ok(t) => audit_detail(t),
                Err(_) => serde_json::json!({ "token_id": args.id }),
            };
            let target = result
                .as_ref()
                .map_or(args.id.as_str(), |t| t.name.as_str());
            audit_cli(
                &store,
                "enrolment_token.revoke",
                target,
                result.is_ok(),
                detail,
            )
            .await;
            store.close().await;
            let t = result.with_context(|| format!("revoking enrolment token {:?}", args.id))?;
            println!("{}", token_json(&t));
            Ok(())
        }
    }
}

async fn enrol_token_create(args: EnrolTokenCreateArgs) -> anyhow::Result<()> {
    use server::api::enrolment::{audit_detail, issue, ExpiresIn, TokenRequest};
    let (config, store) = open_store(&args.common).await?;
    let (url, guessed) = match &args.public_url {
        Some(u) => {
            server::config::check_public_url(u)?;
            (u.trim_end_matches('/').to_string(), false)
        }
        None => config.agent_url(),
    };
    let req = TokenRequest {
        name: args.name.clone(),
        labels: args.labels.iter().cloned().collect(),
        expires_in: args.expires_in.map(|d| ExpiresIn::Secs(d.as_secs())),
        max_uses: args.max_uses,
        require_approval: args.require_approval,
    };
    let result = issue(&store, &req, "cli").await;
    let detail = match &result {
        Ok((t, _)) => audit_detail(t),
        Err(e) => serde_json::json!({ "error": e.body.message }),
    };
    audit_cli(
        &store,
        "enrolment_token.create",
        &args.name,
        result.is_ok(),
        detail,
    )
    .await;
    store.close().await;
    let (row, token) = result.map_err(|e| anyhow::anyhow!("{}", e.body.message))?;
    println!("{}", token.expose());
    if args.print_install {
        if guessed {
            eprintln!(
                "note: no public_url is configured; the install lines dial {url} (pass --public-url wss://HOST)"
            );
        }
        println!(
            "# enrolment token {} ({:?}); on each host, next to the release tarball of its CPU:",
            row.id, row.name
        );
        for (cpu, line) in server::enrolment::install_lines(&url, token.expose(), protocol::VERSION)
        {
            println!("# {cpu}\n{line}");
        }
    }
    Ok(())
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
