//! Persistence: one [`Store`] over PostgreSQL (production) or an SQLite file in WAL mode
//! (the embedded default), both through sqlx's `Any` driver.
//!
//! Owns: connecting, applying the embedded migrations (`server/migrations/{postgres,sqlite}`),
//! and every SQL statement of the server. Must not: decide policy (auth, roles) or hold
//! secrets in clear: tokens arrive here already hashed and TLS keys already encrypted.
//!
//! Portability rules: runtime `sqlx::query` with `$N` binds only, ids are TEXT, times are
//! BIGINT Unix milliseconds, JSON is TEXT, integers are BIGINT (decoded as `i64`).

mod audit_chain;
mod cache;
mod commands;
mod journal;
mod records;

pub use records::*;

use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
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
    /// Serialises audit appends within this process (see `audit_chain`).
    audit_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Audit entries waiting for the next group commit (see `audit_chain.rs`).
    audit_pending: std::sync::Arc<std::sync::Mutex<Vec<audit_chain::Pending>>>,
    /// A task will commit the queued background audit entries (see `audit_chain.rs`).
    audit_flush_scheduled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Records of direct commands, written behind the request (see `journal.rs`).
    journal: journal::Journal,
    /// API tokens by hash, read on every request (see `cache.rs`).
    tokens: std::sync::Arc<cache::TtlCache<ApiToken>>,
    /// Hosts by id, for routing commands and Docker API requests.
    hosts: std::sync::Arc<cache::TtlCache<Host>>,
}

/// How long a cached token or host row is used before it is read again: how late another
/// server replica's revocation or host change shows here (this process's own writes show at
/// once).
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Entries at most per cache.
const CACHE_CAP: usize = 50_000;

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
        match database_url {
            Some(url) => Store::connect(url).await,
            None => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(data_dir)
                    .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
                Store::connect(&Store::sqlite_url_in(data_dir)).await
            }
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
        let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        opts = match backend {
            Backend::Postgres => opts.max_connections(16),
            Backend::Sqlite => opts.max_connections(8).after_connect(|conn, _meta| {
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
            audit_lock: Default::default(),
            audit_pending: Default::default(),
            audit_flush_scheduled: Default::default(),
            tokens: std::sync::Arc::new(cache::TtlCache::new(CACHE_TTL, CACHE_CAP)),
            hosts: std::sync::Arc::new(cache::TtlCache::new(CACHE_TTL, CACHE_CAP)),
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

    // ----- users and API tokens ---------------------------------------------------------

    /// Finds the user `name` or creates it with `role`. An existing user keeps its id; its
    /// role is set to `role`.
    pub async fn upsert_user(&self, name: &str, role: Role) -> Result<User> {
        let now = now_ms();
        if let Some(u) = self.find_user(name).await? {
            sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
                .bind(role.as_str())
                .bind(&u.id)
                .execute(&self.pool)
                .await?;
            self.tokens.clear();
            return Ok(User { role, ..u });
        }
        let id = new_id();
        sqlx::query("INSERT INTO users (id, name, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(name)
            .bind(role.as_str())
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| map_unique(e, "user"))?;
        Ok(User {
            id,
            name: name.to_string(),
            role,
            created_at: now,
        })
    }

    pub async fn find_user(&self, name: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT id, name, role, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(User {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: Role::parse(&r.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// Stores a new API token (already hashed) for `user_id`.
    pub async fn insert_api_token(&self, t: &NewApiToken) -> Result<String> {
        let id = new_id();
        let cidrs = if t.allowed_cidrs.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&t.allowed_cidrs).unwrap_or_default())
        };
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, token_hash, prefix, allowed_cidrs, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(&t.user_id)
        .bind(&t.token_hash)
        .bind(&t.prefix)
        .bind(cidrs)
        .bind(now_ms())
        .bind(t.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "token"))?;
        Ok(id)
    }

    const TOKEN_COLS: &'static str =
        "t.id, t.user_id, u.name, u.role, t.token_hash, t.prefix, t.allowed_cidrs, \
        t.created_at, t.expires_at, t.revoked_at, t.last_used_at";

    fn token_row(r: &AnyRow) -> Result<ApiToken> {
        let cidrs: Option<String> = r.try_get("allowed_cidrs")?;
        Ok(ApiToken {
            id: r.try_get("id")?,
            user_id: r.try_get("user_id")?,
            user_name: r.try_get("name")?,
            role: Role::parse(&r.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
            token_hash: r.try_get("token_hash")?,
            prefix: r.try_get("prefix")?,
            allowed_cidrs: cidrs
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default(),
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            revoked_at: r.try_get("revoked_at")?,
            last_used_at: r.try_get("last_used_at")?,
        })
    }

    /// The token with this hash; served from the cache for [`CACHE_TTL`] after a read.
    pub async fn find_api_token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>> {
        self.tokens
            .read_through(hash, self.read_api_token_by_hash(hash))
            .await
    }

    async fn read_api_token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>> {
        let sql = format!(
            "SELECT {} FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
            Self::TOKEN_COLS
        );
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::token_row).transpose()
    }

    pub async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>> {
        let sql = format!(
            "SELECT {} FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1",
            Self::TOKEN_COLS
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::token_row).transpose()
    }

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        let sql = format!(
            "SELECT {} FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.created_at, t.id",
            Self::TOKEN_COLS
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(Self::token_row).collect()
    }

    /// Marks a token revoked. Returns `NotFound` when there is no such token.
    pub async fn revoke_api_token(&self, id: &str) -> Result<()> {
        let r = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.tokens.remove_where(|t| t.id == id);
        if r.rows_affected() == 0 && self.get_api_token(id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn touch_api_token(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        // The cached copy's last use is old now: read it again next time.
        self.tokens.remove_where(|t| t.id == id);
        Ok(())
    }

    // ----- hosts ------------------------------------------------------------------------

    const HOST_COLS: &'static str = "h.id, h.name, h.connection_mode, h.docker_url, h.tls_ca, h.tls_cert, \
        h.tls_key_enc, h.tls_server_name, h.agent_id AS agent_ref, a.agent_id AS agent_name, h.created_at, h.updated_at";

    fn host_row(r: &AnyRow) -> Result<Host> {
        Ok(Host {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            connection_mode: ConnectionMode::parse(&r.try_get::<String, _>("connection_mode")?)
                .unwrap_or(ConnectionMode::Direct),
            docker_url: r.try_get("docker_url")?,
            tls_ca: r.try_get("tls_ca")?,
            tls_cert: r.try_get("tls_cert")?,
            tls_key_enc: r.try_get("tls_key_enc")?,
            tls_server_name: r.try_get("tls_server_name")?,
            agent_ref: r.try_get("agent_ref")?,
            agent_id: r.try_get("agent_name")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }

    pub async fn create_host(&self, h: &NewHost) -> Result<Host> {
        let id = new_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO docker_hosts (id, name, connection_mode, docker_url, tls_ca, tls_cert, tls_key_enc, \
             tls_server_name, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(&h.name)
        .bind(h.connection_mode.as_str())
        .bind(&h.docker_url)
        .bind(&h.tls_ca)
        .bind(&h.tls_cert)
        .bind(&h.tls_key_enc)
        .bind(&h.tls_server_name)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "a host with this name"))?;
        self.get_host(&id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn get_host(&self, id: &str) -> Result<Option<Host>> {
        let sql = format!(
            "SELECT {} FROM docker_hosts h LEFT JOIN docker_agents a ON a.id = h.agent_id WHERE h.id = $1",
            Self::HOST_COLS
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::host_row).transpose()
    }

    /// [`Store::get_host`] served from the cache for [`CACHE_TTL`] after a read: for the
    /// command and Docker API paths, which read the host on every request.
    pub async fn get_host_cached(&self, id: &str) -> Result<Option<Host>> {
        self.hosts.read_through(id, self.get_host(id)).await
    }

    pub async fn list_hosts(&self) -> Result<Vec<Host>> {
        let sql = format!(
            "SELECT {} FROM docker_hosts h LEFT JOIN docker_agents a ON a.id = h.agent_id ORDER BY h.name",
            Self::HOST_COLS
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(Self::host_row).collect()
    }

    /// Writes a whole host (after the caller applied a patch to what [`Store::get_host`]
    /// returned).
    pub async fn update_host(&self, h: &Host) -> Result<Host> {
        let r = sqlx::query(
            "UPDATE docker_hosts SET name = $1, connection_mode = $2, docker_url = $3, tls_ca = $4, tls_cert = $5, \
             tls_key_enc = $6, tls_server_name = $7, agent_id = $8, updated_at = $9 WHERE id = $10",
        )
        .bind(&h.name)
        .bind(h.connection_mode.as_str())
        .bind(&h.docker_url)
        .bind(&h.tls_ca)
        .bind(&h.tls_cert)
        .bind(&h.tls_key_enc)
        .bind(&h.tls_server_name)
        .bind(&h.agent_ref)
        .bind(now_ms())
        .bind(&h.id)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "a host with this name"))?;
        self.hosts.remove(&h.id);
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_host(&h.id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn delete_host(&self, id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM docker_hosts WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.hosts.remove(id);
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    // ----- agents -----------------------------------------------------------------------

    const AGENT_COLS: &'static str = "id, agent_id, host_id, auth_token_hash, token_expires_at, prev_token_hash, \
        prev_token_valid_until, revoked_at, allowed_cidrs, heartbeat_interval, command_timeout, status, session_id, \
        version, capabilities, health, rtt_ms, last_heartbeat, connected_at, disconnected_at, created_at, updated_at, signing_key_enc";

    fn agent_row(r: &AnyRow) -> Result<Agent> {
        let cidrs: Option<String> = r.try_get("allowed_cidrs")?;
        let caps = parse_json(r.try_get("capabilities")?);
        Ok(Agent {
            id: r.try_get("id")?,
            agent_id: r.try_get("agent_id")?,
            host_id: r.try_get("host_id")?,
            auth_token_hash: r.try_get("auth_token_hash")?,
            token_expires_at: r.try_get("token_expires_at")?,
            prev_token_hash: r.try_get("prev_token_hash")?,
            prev_token_valid_until: r.try_get("prev_token_valid_until")?,
            revoked_at: r.try_get("revoked_at")?,
            allowed_cidrs: cidrs
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default(),
            heartbeat_interval: r.try_get("heartbeat_interval")?,
            command_timeout: r.try_get("command_timeout")?,
            status: r.try_get("status")?,
            session_id: r.try_get("session_id")?,
            version: r.try_get("version")?,
            capabilities: serde_json::from_value(caps).unwrap_or_default(),
            health: parse_json(r.try_get("health")?),
            rtt_ms: r.try_get("rtt_ms")?,
            last_heartbeat: r.try_get("last_heartbeat")?,
            connected_at: r.try_get("connected_at")?,
            disconnected_at: r.try_get("disconnected_at")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            signing_key_enc: r.try_get("signing_key_enc")?,
        })
    }

    /// Enrols an agent for `host_id` and makes it the host's agent. A revoked agent with the
    /// same `agent_id` is replaced; a live one is a conflict.
    pub async fn create_agent(&self, a: &NewAgent) -> Result<Agent> {
        let now = now_ms();
        let cidrs = serde_json::to_string(&a.allowed_cidrs).unwrap_or_else(|_| "[]".into());
        // SQLite: take the write lock up front. A deferred transaction that reads and then
        // writes fails at once with SQLITE_BUSY when another writer committed meanwhile (the
        // busy timeout does not apply to that upgrade).
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        let existing: Option<(String, Option<i64>)> =
            sqlx::query("SELECT id, revoked_at FROM docker_agents WHERE agent_id = $1")
                .bind(&a.agent_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.try_get("id")?, r.try_get("revoked_at")?)))
                .transpose()?;
        let id = match existing {
            Some((_, None)) => {
                return Err(StoreError::Conflict(format!(
                    "agent {:?} already exists",
                    a.agent_id
                )))
            }
            Some((id, Some(_))) => {
                sqlx::query(
                    "UPDATE docker_agents SET host_id = $1, auth_token_hash = $2, token_expires_at = $3, \
                     prev_token_hash = NULL, prev_token_valid_until = NULL, revoked_at = NULL, allowed_cidrs = $4, \
                     status = 'disconnected', session_id = NULL, updated_at = $5 WHERE id = $6",
                )
                .bind(&a.host_id)
                .bind(&a.token_hash)
                .bind(a.token_expires_at)
                .bind(&cidrs)
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_unique(e, "agent"))?;
                id
            }
            None => {
                let id = new_id();
                sqlx::query(
                    "INSERT INTO docker_agents (id, agent_id, host_id, auth_token_hash, token_expires_at, allowed_cidrs, \
                     status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'disconnected', $7, $8)",
                )
                .bind(&id)
                .bind(&a.agent_id)
                .bind(&a.host_id)
                .bind(&a.token_hash)
                .bind(a.token_expires_at)
                .bind(&cidrs)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_unique(e, "agent"))?;
                id
            }
        };
        // A re-enrolment for another host is a move: no other host keeps naming this agent.
        sqlx::query(
            "UPDATE docker_hosts SET agent_id = NULL, updated_at = $1 WHERE agent_id = $2 AND id <> $3",
        )
        .bind(now)
        .bind(&id)
        .bind(&a.host_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE docker_hosts SET agent_id = $1, updated_at = $2 WHERE id = $3")
            .bind(&id)
            .bind(now)
            .bind(&a.host_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.hosts.clear();
        self.get_agent(&a.agent_id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// By the external `agent_id`.
    pub async fn get_agent(&self, agent_id: &str) -> Result<Option<Agent>> {
        let sql = format!(
            "SELECT {} FROM docker_agents WHERE agent_id = $1",
            Self::AGENT_COLS
        );
        let row = sqlx::query(&sql)
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::agent_row).transpose()
    }

    /// By the internal row id (what `docker_hosts.agent_id` refers to).
    pub async fn get_agent_by_ref(&self, id: &str) -> Result<Option<Agent>> {
        let sql = format!(
            "SELECT {} FROM docker_agents WHERE id = $1",
            Self::AGENT_COLS
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::agent_row).transpose()
    }

    pub async fn list_agents(&self) -> Result<Vec<Agent>> {
        let sql = format!(
            "SELECT {} FROM docker_agents ORDER BY agent_id",
            Self::AGENT_COLS
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(Self::agent_row).collect()
    }

    pub async fn agents_of_host(&self, host_id: &str) -> Result<Vec<Agent>> {
        let sql = format!(
            "SELECT {} FROM docker_agents WHERE host_id = $1 ORDER BY agent_id",
            Self::AGENT_COLS
        );
        let rows = sqlx::query(&sql)
            .bind(host_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::agent_row).collect()
    }

    /// Agents of a host that are not revoked (for `max_agents_per_host`).
    pub async fn count_active_agents(&self, host_id: &str) -> Result<i64> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n FROM docker_agents WHERE host_id = $1 AND revoked_at IS NULL",
        )
        .bind(host_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(r.try_get("n")?)
    }

    /// Replaces the token hash. The old hash stays valid until `grace_until` (if any).
    pub async fn rotate_agent_token(
        &self,
        agent_id: &str,
        new_hash: &str,
        expires_at: Option<i64>,
        grace_until: Option<i64>,
    ) -> Result<()> {
        let sql = if grace_until.is_some() {
            "UPDATE docker_agents SET prev_token_hash = auth_token_hash, prev_token_valid_until = $1, \
             auth_token_hash = $2, token_expires_at = $3, updated_at = $4 WHERE agent_id = $5 AND revoked_at IS NULL"
        } else {
            "UPDATE docker_agents SET prev_token_hash = NULL, prev_token_valid_until = $1, \
             auth_token_hash = $2, token_expires_at = $3, updated_at = $4 WHERE agent_id = $5 AND revoked_at IS NULL"
        };
        let r = sqlx::query(sql)
            .bind(grace_until)
            .bind(new_hash)
            .bind(expires_at)
            .bind(now_ms())
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Revokes an agent and unbinds it from its host: the host is served by another of its
    /// agents that is not revoked (the newest), or by none.
    pub async fn revoke_agent(&self, agent_id: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        let r = sqlx::query(
            "UPDATE docker_agents SET revoked_at = $1, status = 'revoked', prev_token_hash = NULL, \
             prev_token_valid_until = NULL, updated_at = $2 WHERE agent_id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(now)
        .bind(agent_id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "UPDATE docker_hosts SET agent_id = (SELECT a.id FROM docker_agents a \
             WHERE a.host_id = docker_hosts.id AND a.revoked_at IS NULL ORDER BY a.created_at DESC, a.id LIMIT 1), \
             updated_at = $1 WHERE agent_id = (SELECT id FROM docker_agents WHERE agent_id = $2)",
        )
        .bind(now)
        .bind(agent_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.hosts.clear();
        Ok(())
    }

    pub async fn update_agent_settings(
        &self,
        agent_id: &str,
        p: &AgentSettingsPatch,
    ) -> Result<()> {
        let current = self
            .get_agent(agent_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let cidrs = p.allowed_cidrs.as_ref().unwrap_or(&current.allowed_cidrs);
        let hb = p.heartbeat_interval.unwrap_or(current.heartbeat_interval);
        let ct = p.command_timeout.unwrap_or(current.command_timeout);
        sqlx::query(
            "UPDATE docker_agents SET allowed_cidrs = $1, heartbeat_interval = $2, command_timeout = $3, updated_at = $4 \
             WHERE agent_id = $5",
        )
        .bind(serde_json::to_string(cidrs).unwrap_or_else(|_| "[]".into()))
        .bind(hb)
        .bind(ct)
        .bind(now_ms())
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets (or with `None` clears) the agent's encrypted signing key.
    pub async fn set_agent_signing_key(&self, agent_id: &str, enc: Option<&str>) -> Result<()> {
        let r = sqlx::query(
            "UPDATE docker_agents SET signing_key_enc = $1, updated_at = $2 WHERE agent_id = $3 AND revoked_at IS NULL",
        )
        .bind(enc)
        .bind(now_ms())
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// An agent authenticated: a new session.
    pub async fn agent_connected(
        &self,
        id: &str,
        session_id: &str,
        server_id: &str,
        version: &str,
        capabilities: &[String],
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE docker_agents SET status = 'online', session_id = $1, server_id = $2, version = $3, \
             capabilities = $4, connected_at = $5, last_heartbeat = $6, updated_at = $7 WHERE id = $8",
        )
        .bind(session_id)
        .bind(server_id)
        .bind(version)
        .bind(serde_json::to_string(capabilities).unwrap_or_else(|_| "[]".into()))
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A heartbeat: the latest health and RTT.
    pub async fn agent_heartbeat(
        &self,
        id: &str,
        session_id: &str,
        health: &Value,
        rtt_ms: Option<f64>,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE docker_agents SET status = 'online', health = $1, rtt_ms = COALESCE($2, rtt_ms), \
             last_heartbeat = $3, updated_at = $4 WHERE id = $5 AND session_id = $6",
        )
        .bind(json_text(health))
        .bind(rtt_ms)
        .bind(now)
        .bind(now)
        .bind(id)
        .bind(session_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets the status of the session `session_id` (`offline` when silent). Does nothing when
    /// another session has replaced it.
    pub async fn agent_session_status(
        &self,
        id: &str,
        session_id: &str,
        status: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE docker_agents SET status = $1, updated_at = $2 WHERE id = $3 AND session_id = $4")
            .bind(status)
            .bind(now_ms())
            .bind(id)
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The session's socket closed. Does nothing when another session has replaced it.
    pub async fn agent_disconnected(&self, id: &str, session_id: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE docker_agents SET status = CASE WHEN revoked_at IS NULL THEN 'disconnected' ELSE 'revoked' END, \
             session_id = NULL, disconnected_at = $1, updated_at = $2 WHERE id = $3 AND session_id = $4",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .bind(session_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// At start: sessions this server left behind (a crash) are gone.
    pub async fn reset_sessions_of(&self, server_id: &str) -> Result<u64> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE docker_agents SET status = CASE WHEN revoked_at IS NULL THEN 'disconnected' ELSE 'revoked' END, \
             session_id = NULL, disconnected_at = $1, updated_at = $2 WHERE server_id = $3 AND session_id IS NOT NULL",
        )
        .bind(now)
        .bind(now)
        .bind(server_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    // ----- agent events -----------------------------------------------------------------

    /// Records a connection event. `agent_ref` is the internal id, `None` for unknown agents.
    pub async fn add_agent_event(
        &self,
        agent_ref: Option<&str>,
        event_type: &str,
        data: &Value,
    ) -> Result<()> {
        sqlx::query("INSERT INTO agent_events (id, agent_id, event_type, event_data, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(new_id())
            .bind(agent_ref)
            .bind(event_type)
            .bind(json_text(data))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Bounded retention: drops connection events recorded before `before` (Unix ms).
    /// Returns how many rows went.
    pub async fn prune_agent_events(&self, before: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM agent_events WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// The newest connection events, newest first; `agent_ref` `None` lists every agent's.
    pub async fn list_agent_events(
        &self,
        agent_ref: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AgentEvent>> {
        let rows = match agent_ref {
            Some(a) => sqlx::query(
                "SELECT e.id, d.agent_id, e.event_type, e.event_data, e.created_at FROM agent_events e \
                 LEFT JOIN docker_agents d ON d.id = e.agent_id WHERE e.agent_id = $1 \
                 ORDER BY e.created_at DESC, e.id LIMIT $2",
            )
            .bind(a)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
            None => sqlx::query(
                "SELECT e.id, d.agent_id, e.event_type, e.event_data, e.created_at FROM agent_events e \
                 LEFT JOIN docker_agents d ON d.id = e.agent_id ORDER BY e.created_at DESC, e.id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
        };
        rows.iter()
            .map(|r| {
                Ok(AgentEvent {
                    id: r.try_get("id")?,
                    agent_id: r.try_get("agent_id")?,
                    event_type: r.try_get("event_type")?,
                    event_data: parse_json(r.try_get("event_data")?),
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    // ----- Docker events ----------------------------------------------------------------

    pub async fn add_docker_event(&self, e: &NewDockerEvent) -> Result<()> {
        sqlx::query(
            "INSERT INTO docker_events (host_id, agent_id, kind, action, actor_id, attributes, time_nano, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&e.host_id)
        .bind(&e.agent_id)
        .bind(&e.kind)
        .bind(&e.action)
        .bind(&e.actor_id)
        .bind(json_text(&e.attributes))
        .bind(e.time_nano)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Events of a host with `seq > after`, newest first.
    pub async fn list_docker_events(
        &self,
        host_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DockerEventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, host_id, agent_id, kind, action, actor_id, attributes, time_nano, created_at \
             FROM docker_events WHERE host_id = $1 AND seq > $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(host_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DockerEventRecord {
                    seq: r.try_get("seq")?,
                    host_id: r.try_get("host_id")?,
                    agent_id: r.try_get("agent_id")?,
                    kind: r.try_get("kind")?,
                    action: r.try_get("action")?,
                    actor_id: r.try_get("actor_id")?,
                    attributes: parse_json(r.try_get("attributes")?),
                    time_nano: r.try_get("time_nano")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Bounded retention: drops events older than `max_age_ms` and keeps at most
    /// `max_per_host` per host. Returns how many rows went.
    pub async fn prune_docker_events(&self, max_per_host: i64, max_age_ms: i64) -> Result<u64> {
        let mut n = sqlx::query("DELETE FROM docker_events WHERE created_at < $1")
            .bind(now_ms() - max_age_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let hosts =
            sqlx::query("SELECT host_id, COUNT(*) AS n FROM docker_events GROUP BY host_id")
                .fetch_all(&self.pool)
                .await?;
        for h in hosts {
            let count: i64 = h.try_get("n")?;
            if count <= max_per_host {
                continue;
            }
            let host_id: String = h.try_get("host_id")?;
            let cut = sqlx::query("SELECT seq FROM docker_events WHERE host_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2")
                .bind(&host_id)
                .bind(max_per_host)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(cut) = cut {
                let seq: i64 = cut.try_get("seq")?;
                n += sqlx::query("DELETE FROM docker_events WHERE host_id = $1 AND seq <= $2")
                    .bind(&host_id)
                    .bind(seq)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
        }
        Ok(n)
    }

    // ----- audit log --------------------------------------------------------------------

    /// Audit entries matching every given filter, newest first.
    pub async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>> {
        if let Err(e) = self.flush_audit().await {
            tracing::error!(error = %e, "could not write queued audit entries");
        }
        let mut sql = String::from(
            "SELECT seq, at, actor_kind, actor, host_id, action, target, outcome, error_code, detail, source_ip \
             FROM audit_log WHERE 1 = 1",
        );
        let mut binds: Vec<Bind> = Vec::new();
        let mut add = |col: &str, op: &str, v: Bind, sql: &mut String| {
            binds.push(v);
            sql.push_str(&format!(" AND {col} {op} ${}", binds.len()));
        };
        if let Some(v) = &f.actor {
            add("actor", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = &f.actor_kind {
            add("actor_kind", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = &f.host_id {
            add("host_id", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = &f.action {
            add("action", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = &f.outcome {
            add("outcome", "=", Bind::Text(v.clone()), &mut sql);
        }
        if let Some(v) = f.since {
            add("at", ">=", Bind::Int(v), &mut sql);
        }
        if let Some(v) = f.until {
            add("at", "<", Bind::Int(v), &mut sql);
        }
        if let Some(v) = f.before_seq {
            add("seq", "<", Bind::Int(v), &mut sql);
        }
        binds.push(Bind::Int(f.limit.clamp(1, 1000)));
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", binds.len()));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor_kind: r.try_get("actor_kind")?,
                    actor: r.try_get("actor")?,
                    host_id: r.try_get("host_id")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    outcome: r.try_get("outcome")?,
                    error_code: r.try_get("error_code")?,
                    detail: parse_json(r.try_get("detail")?),
                    source_ip: r.try_get("source_ip")?,
                })
            })
            .collect()
    }

    // ----- commands ---------------------------------------------------------------------

    pub async fn insert_command(&self, c: &NewCommand) -> Result<()> {
        sqlx::query(
            "INSERT INTO commands (id, host_id, agent_id, operation, requested_by, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
        )
        .bind(&c.id)
        .bind(&c.host_id)
        .bind(&c.agent_id)
        .bind(&c.operation)
        .bind(&c.requested_by)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn finish_command(
        &self,
        id: &str,
        status: &str,
        error_code: Option<&str>,
        duration_ms: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE commands SET status = $1, error_code = $2, completed_at = $3, duration_ms = $4 WHERE id = $5")
            .bind(status)
            .bind(error_code)
            .bind(now_ms())
            .bind(duration_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

pub(crate) enum Bind {
    Text(String),
    Int(i64),
}
