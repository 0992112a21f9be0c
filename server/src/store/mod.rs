//! Persistence: one [`Store`] over PostgreSQL (production) or an SQLite file in WAL mode
//! (the embedded default), both through sqlx's `Any` driver.
//!
//! Owns: connecting, applying the embedded migrations (`server/migrations/{postgres,sqlite}`),
//! and every SQL statement of the server, one file per table (`users`, `tokens`, `hosts`,
//! `agents`, `agent_events`, `agent_presence`, `replicas`, `docker_events`, `audit`, `commands` with its write-behind
//! `journal`, `groups`, `bulk_operations`, `bulk_targets`, `enrolment_tokens` with the
//! enrolment transaction, `sessions` with sign-in links, `stacks` with their versions, hosts
//! and registries), plus the read-through `cache` of tokens and hosts and `notify`
//! (PostgreSQL `NOTIFY`/`LISTEN` for the cluster's wake-ups). Must not: decide policy
//! (auth, roles) or hold
//! secrets in clear: tokens arrive here already hashed and TLS keys already encrypted.
//!
//! Portability rules: runtime `sqlx::query` with `$N` binds only, ids are TEXT, times are
//! BIGINT Unix milliseconds, JSON is TEXT, integers are BIGINT (decoded as `i64`).

mod agent_events;
mod agent_presence;
mod agent_updates;
mod agents;
mod audit;
mod bulk_operations;
mod bulk_targets;
mod cache;
mod cluster_secret;
mod commands;
mod docker_events;
mod enrolment_tokens;
mod groups;
mod hosts;
mod journal;
mod notify;
mod replicas;
mod sessions;
mod stacks;
mod tokens;
mod users;

pub use agent_events::AgentEvent;
pub use agent_presence::{ClaimRefused, Presence};
pub use agent_updates::{AgentUpdateRecord, NewAgentUpdate};
pub use agents::{Agent, AgentSettingsPatch, NewAgent};
pub use audit::{AuditEntry, AuditFilter, AuditVerifyReport, NewAudit, GENESIS};
pub use bulk_operations::{NewRollout, RolloutRecord, RolloutState};
pub use bulk_targets::{TargetRecord, TargetState, TargetUpdate};
pub use cache::CacheDrop;
pub use commands::{next_seq, CommandRecord, CommandState, DueCommand, NewCommand};
pub use docker_events::{DockerEventRecord, NewDockerEvent};
pub use enrolment_tokens::{Enrolled, Enrolment, EnrolmentToken, NewEnrolmentToken, NotEnrolled};
pub use groups::Group;
pub use hosts::{ConnectionMode, Host, NewHost};
pub use notify::Listener;
pub use replicas::{ReplicaRecord, MISSED_HEARTBEATS};
pub use sessions::{NewSession, UserSession};
pub use stacks::{NewStackVersion, RegistryRecord, StackHost, StackRecord, StackVersion};
pub use tokens::{ApiToken, NewApiToken};
pub use users::{Role, User};

use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Store errors. `NotFound` and `Conflict` are caller errors (404 / 409); `Db` is ours (500,
/// logged with its chain).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist: answer 404.
    #[error("not found")]
    NotFound,
    /// A unique or check constraint refused the write (a name already in use): answer 409.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database failed or is unreachable: answer 500 and log.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The migrations could not be applied: fatal at start.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn map_unique(e: sqlx::Error, what: &str) -> StoreError {
    if let sqlx::Error::Database(d) = &e {
        if d.is_unique_violation() {
            return StoreError::Conflict(format!("{what} already exists"));
        }
        if d.is_foreign_key_violation() {
            return StoreError::Conflict(format!("{what} refers to a missing row"));
        }
    }
    StoreError::Db(e)
}

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

fn parse_json(s: Option<String>) -> Value {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The pool's size: what callers that bound their own concurrency size it to.
    max_connections: u32,
    /// Serialises audit appends within this process (see `audit.rs`).
    audit_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Audit entries waiting for the next group commit (see `audit.rs`).
    audit_pending: std::sync::Arc<std::sync::Mutex<Vec<audit::Pending>>>,
    /// A task will commit the queued background audit entries (see `audit.rs`).
    audit_flush_scheduled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Records of direct commands, written behind the request (see `journal.rs`).
    journal: journal::Journal,
    /// API tokens by hash, read on every request (see `cache.rs`).
    tokens: std::sync::Arc<cache::TtlCache<ApiToken>>,
    /// Hosts by id, for routing commands and Docker API requests.
    hosts: std::sync::Arc<cache::TtlCache<Host>>,
    /// Where this store's own cache drops are reported, once someone asks (see `notify.rs`).
    drops: cache::DropReports,
    /// The PostgreSQL URL, for the one listening connection of `notify.rs`; `None` on SQLite.
    listen_url: Option<std::sync::Arc<protocol::Secret>>,
}

/// How long a cached token or host row is used before it is read again: how late another
/// server replica's revocation or host change shows here when its wake-up was lost (this
/// process's own writes, and the other replicas' that wake it, show at once).
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Entries at most per cache.
const CACHE_CAP: usize = 50_000;

/// Connections in the pool unless `database_max_connections` says otherwise. PostgreSQL's
/// default `max_connections` is 100, shared by every replica and tool.
pub const DEFAULT_PG_CONNECTIONS: u32 = 16;
/// SQLite has one writer whatever the pool; readers beside it in WAL mode.
pub const DEFAULT_SQLITE_CONNECTIONS: u32 = 8;
/// How long a statement waits for a free connection before it fails with a pool timeout,
/// unless `database_acquire_timeout` says otherwise.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pool's settings (`database_max_connections`, `database_acquire_timeout`); `None`
/// takes the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolSettings {
    pub max_connections: Option<u32>,
    pub acquire_timeout: Option<Duration>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// The SQLite URL of the embedded default: `DATA_DIR/docker-ctl.db`.
    pub fn sqlite_url_in(data_dir: &Path) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("docker-ctl.db").display()
        )
    }

    /// Opens `database_url`, or the SQLite file in `data_dir` when it is `None`, and applies
    /// the migrations.
    pub async fn open(database_url: Option<&str>, data_dir: &Path) -> Result<Store> {
        Store::open_with(database_url, data_dir, PoolSettings::default()).await
    }

    /// [`Store::open`] with the pool's settings.
    pub async fn open_with(
        database_url: Option<&str>,
        data_dir: &Path,
        pool: PoolSettings,
    ) -> Result<Store> {
        match database_url {
            Some(url) => Store::connect_with(url, pool).await,
            None => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(data_dir)
                    .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
                Store::connect_with(&Store::sqlite_url_in(data_dir), pool).await
            }
        }
    }

    /// The SQLite file `open` uses for `database_url` and `data_dir`; `None` for PostgreSQL
    /// or an in-memory database.
    pub fn sqlite_file_of(
        database_url: Option<&str>,
        data_dir: &Path,
    ) -> Option<std::path::PathBuf> {
        match database_url {
            None => Some(data_dir.join("docker-ctl.db")),
            Some(url) => Store::sqlite_file(url).map(Path::to_path_buf),
        }
    }

    /// The file of an SQLite URL (`sqlite://PATH?...`, `sqlite:PATH`), unless in memory.
    fn sqlite_file(url: &str) -> Option<&Path> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or("");
        (!path.is_empty() && !path.starts_with(":memory:")).then(|| Path::new(path))
    }

    /// Creates the SQLite file readable by its owner only (0600), or narrows an existing
    /// one to that. SQLite gives its `-wal` and `-shm` files the main file's mode.
    fn private_sqlite_file(path: &Path) -> Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e| StoreError::Db(sqlx::Error::Io(e));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        Ok(())
    }

    /// Connects to `url` (`postgres://...` or `sqlite://...`) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, PoolSettings::default()).await
    }

    /// [`Store::connect`] with the pool's settings (by default [`DEFAULT_PG_CONNECTIONS`] or
    /// [`DEFAULT_SQLITE_CONNECTIONS`], and [`DEFAULT_ACQUIRE_TIMEOUT`]).
    pub async fn connect_with(url: &str, pool: PoolSettings) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Db(sqlx::Error::Configuration(
                "DATABASE_URL must start with postgres:// or sqlite:".into(),
            )));
        };
        // Validate the URL before connecting so the error names it.
        sqlx::any::AnyConnectOptions::from_str(url)?;
        if backend == Backend::Sqlite {
            if let Some(file) = Store::sqlite_file(url) {
                Store::private_sqlite_file(file)?;
            }
        }
        let max_connections = pool.max_connections.unwrap_or(match backend {
            Backend::Postgres => DEFAULT_PG_CONNECTIONS,
            Backend::Sqlite => DEFAULT_SQLITE_CONNECTIONS,
        });
        if max_connections == 0 {
            return Err(StoreError::Db(sqlx::Error::Configuration(
                "database_max_connections must be at least 1".into(),
            )));
        }
        let opts = AnyPoolOptions::new()
            .acquire_timeout(pool.acquire_timeout.unwrap_or(DEFAULT_ACQUIRE_TIMEOUT))
            .max_connections(max_connections);
        let opts = match backend {
            Backend::Postgres => opts,
            Backend::Sqlite => opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the one writer; the busy timeout makes
                    // concurrent writers wait instead of failing.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            }),
        };
        let pool = opts.connect(url).await?;
        let store = Store {
            journal: journal::Journal::start(pool.clone()),
            pool,
            backend,
            max_connections,
            audit_lock: Default::default(),
            audit_pending: Default::default(),
            audit_flush_scheduled: Default::default(),
            tokens: std::sync::Arc::new(cache::TtlCache::new(CACHE_TTL, CACHE_CAP)),
            hosts: std::sync::Arc::new(cache::TtlCache::new(CACHE_TTL, CACHE_CAP)),
            drops: cache::DropReports::default(),
            listen_url: (backend == Backend::Postgres)
                .then(|| std::sync::Arc::new(protocol::Secret::new(url))),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Postgres => PG_MIGRATOR.run(&self.pool).await?,
            Backend::Sqlite => SQLITE_MIGRATOR.run(&self.pool).await?,
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool's size (connections at most).
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Checks the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// Writes what the command journal holds, then closes the pool.
    pub async fn close(&self) {
        self.journal.flush().await;
        self.pool.close().await
    }
}

pub(crate) enum Bind {
    Text(String),
    Int(i64),
}
